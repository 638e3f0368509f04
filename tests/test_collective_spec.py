"""Spec strings of collectives round-trip every field: ``Collective.parse(str(c)) == c``."""

from __future__ import annotations

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from scinjax import Collective
from scinjax.collectives import ACCUMULATE_DTYPES, ALGORITHMS, ORDERS, PEER_ALGORITHMS
from scinjax.formats import ROUNDINGS, SCALE_DTYPES, CastFormat, FpFormat, IntFormat, names

int_formats = st.builds(
    IntFormat,
    bits=st.integers(2, 8),
    block_size=st.integers(1, 512),
    scale_dtype=st.sampled_from(SCALE_DTYPES),
    rounding=st.sampled_from(ROUNDINGS),
)
fp_formats = st.one_of(
    st.builds(
        FpFormat,
        element=st.sampled_from(("e4m3", "e5m2", "e3m2", "e2m3", "e2m1")),
        block_size=st.integers(1, 512),
        scale=st.sampled_from(("e8m0_floor", "e8m0_rceil", "float32", "float16", "bfloat16")),
        rounding=st.sampled_from(("nearest_even", "stochastic")),
    ),
    st.builds(
        FpFormat,
        element=st.just("e2m1"),
        block_size=st.integers(1, 64),
        scale=st.just("nv"),
        rounding=st.sampled_from(("nearest_even", "stochastic")),
    ),
)
link = st.one_of(
    st.none(),
    int_formats,
    fp_formats,
    st.sampled_from([CastFormat(dtype=d) for d in ("bfloat16", "float16", "float32")]),
    st.sampled_from(names()),
)


@st.composite
def collectives(draw):
    """Any valid Collective (invalid combinations are redrawn)."""
    kw = dict(
        algorithm=draw(st.sampled_from(ALGORITHMS + tuple(PEER_ALGORITHMS))),
        order=draw(st.sampled_from(ORDERS)),
        accumulate=draw(st.sampled_from(ACCUMULATE_DTYPES)),
    )
    if kw["algorithm"] in ("scin", "two_shot"):
        kw["uplink"], kw["downlink"] = draw(link), draw(link)
    try:
        return Collective(**kw)
    except ValueError:
        kw.update(order="rank", accumulate="float32", uplink=None, downlink=None)
        try:
            return Collective(**kw)
        except ValueError:  # e.g. a peer scheme that fixes its own order
            return Collective(algorithm=kw["algorithm"])


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(collectives())
def test_parse_str_round_trip(c):
    text = str(c)
    assert Collective.parse(text) == c, text
    assert str(Collective.parse(text)) == text


@pytest.mark.parametrize(
    "text",
    [
        "scin",
        "scin:int8",
        "scin:bf16/int8",
        "scin:none/int8",
        "two_shot:mxfp4",
        "scin:int6-b64-bfloat16-stochastic",
        "scin:fp-e3m2-b16-float16/nvfp4",
        "nvls+order=pairwise",
        "scin:int8+order=pairwise+accumulate=bfloat16",
        "quickreduce-q8",
    ],
)
def test_written_specs_are_canonical(text):
    assert str(Collective.parse(text)) == text


@pytest.mark.parametrize(
    "text,match",
    [
        ("scin:int8+order", "bad option"),
        ("scin:int8+speed=fast", "bad option"),
        ("scin+order=rank+order=pairwise", "given twice"),
        ("scin:int8/", "bad collective spec"),
        ("ring+order=pairwise", "ring's reduction order"),
        ("scin+accumulate=int8", "unknown accumulate"),
    ],
)
def test_bad_specs(text, match):
    with pytest.raises(ValueError, match=match):
        Collective.parse(text)
