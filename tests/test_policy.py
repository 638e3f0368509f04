"""Per-call-site policies (selective quantization): spec strings, model numerics, bytes."""

from __future__ import annotations

import numpy as np
import pytest
from scinjax.models import build_model, get_config, model_traffic, random_weights

from scinjax import CallPolicy, CallRule, Collective


def test_policy_spec_round_trip_and_selection():
    for spec in (
        "scin:int8@mlp_out",
        "scin:int8@layers=2..27",
        "scin:int8@attn_out@layers=0..3@else=scin",
        "two_shot:int8+order=pairwise@mlp_out@else=nvls",
    ):
        p = CallPolicy.parse(spec)
        assert str(p) == spec and CallPolicy.parse(str(p)) == p
    p = CallPolicy.parse("scin:int8@mlp_out@layers=2..27")
    int8, exact = Collective.parse("scin:int8"), Collective(algorithm="exact")
    assert p.collective_for("mlp_out", 2) == int8 and p.collective_for("mlp_out", 27) == int8
    assert p.collective_for("mlp_out", 1) == exact and p.collective_for("mlp_out", 28) == exact
    assert p.collective_for("attn_out", 5) == exact
    two = CallPolicy(
        rules=(
            CallRule(collective="scin:int4", labels=("attn_out",), layers=(0, 0)),
            CallRule(collective="scin:int8", layers=(0, 9)),
        ),
        default="scin",
    )
    assert two.collective_for("attn_out", 0) == Collective.parse("scin:int4")  # first match
    assert two.collective_for("mlp_out", 0) == int8
    assert two.collective_for("mlp_out", 10) == Collective.parse("scin")


@pytest.mark.parametrize(
    "spec,match",
    [
        ("scin:int8@layers=3..1", "first <= last"),
        ("scin:int8@layers=x", "layers=FIRST..LAST"),
        ("scin:int8@bogus=1", "unknown selector"),
        ("warp@mlp_out", "unknown algorithm"),
        ("scin:int8@", "bad call-site label"),
    ],
)
def test_policy_errors(spec, match):
    with pytest.raises(ValueError, match=match):
        CallPolicy.parse(spec)


@pytest.fixture(scope="module")
def tiny():
    config = get_config("tiny")
    return config, random_weights(config, seed=4)


def test_split_runs_give_the_same_bits(tiny):
    """At N = 2, ``scin+order=pairwise`` adds the same two operands as ``scin``: a policy
    that switches between them splits the layer scan in two runs (separate parameter
    slices, KV caches concatenated) and must give the plain model's bits."""
    config, weights = tiny
    assert config.num_layers >= 2
    ids = np.random.default_rng(0).integers(0, config.vocab_size, 20)
    plain = build_model(config, weights, tp=2, collective="scin")
    split = plain.with_collective("scin+order=pairwise@layers=1..1@else=scin")
    np.testing.assert_array_equal(split.logits(ids), plain.logits(ids))
    assert split.greedy(ids[:6], 5) == plain.greedy(ids[:6], 5)  # KV cache through both runs
    # and a policy that quantizes one layer really changes the logits
    mixed = plain.with_collective("scin:int8@layers=1..1@else=scin")
    assert not np.array_equal(mixed.logits(ids), plain.logits(ids))


def test_policy_bytes_closed_form(tiny):
    config, _ = tiny
    n, t, d, layers = 2, 12, config.hidden_size, config.num_layers
    elems = t * d  # per All-Reduce, per rank
    int8 = elems + (d // 32) * t * 2  # 1 B codes + a float16 scale per block of 32
    exact = elems * 4  # float32 partials, scin-like counting
    rep = model_traffic(config, tp=n, collective="scin:int8@mlp_out", tokens=t)
    # mlp_out quantized on every layer, attn_out exact: per link
    assert rep.up == (layers * (int8 + exact),) * n and rep.down == rep.up
    rep = model_traffic(config, tp=n, collective="scin:int8@layers=1..1@else=scin", tokens=t)
    bf16 = elems * 2
    want = 2 * int8 + 2 * (layers - 1) * bf16  # layer 1: two int8 calls; the rest bf16
    assert rep.up == (want,) * n and rep.down == (want,) * n
    by_label = {(r.label, str(r.uplink)): r.calls for r in rep.records}
    assert by_label == {
        ("attn_out", "None"): layers - 1,
        ("mlp_out", "None"): layers - 1,
        ("attn_out", "int8"): 1,
        ("mlp_out", "int8"): 1,
    }
