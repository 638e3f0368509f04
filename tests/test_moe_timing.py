"""MoE timing model vs closed forms written here (no timing measurement)."""

from __future__ import annotations

import numpy as np
import pytest

from scinjax.moe import EPTraffic, ep_traffic
from scinjax.timing import get_profile
from scinjax.timing.moe import moe_layer_time

PROF = get_profile("h100-nvswitch-8")
BW = PROF.link_bw * PROF.efficiency["one_shot"]


def synthetic(n, up_d, down_d, up_c, down_c):
    """Every rank alike; no metadata."""
    return EPTraffic(
        algorithm="x",
        n_ranks=n,
        dispatch_up=[up_d] * n,
        dispatch_down=[down_d] * n,
        combine_up=[up_c] * n,
        combine_down=[down_c] * n,
        meta_up=[0] * n,
        meta_down=[0] * n,
    )


@pytest.mark.parametrize("d", [1, 3, 7])
@pytest.mark.parametrize("chunks", [1, 4, 64])
def test_comm_bound_closed_forms(d, chunks):
    b = 10**6  # bytes per token-vector unit
    dedup = synthetic(4, d * b, d * b, d * b, d * b)
    dysharp = synthetic(4, b, d * b, d * b, b)
    kw = dict(profile=PROF, chunks=chunks, step_latency=0.0)
    # sequential: each phase is bound by its heavier direction: 2 d b for both
    for t in (dedup, dysharp):
        assert moe_layer_time(t, mode="sequential", **kw).seconds == pytest.approx(
            2 * d * b / BW, rel=1e-12
        )
    # fused dedup: links already busy both ways, still 2 d b
    assert moe_layer_time(dedup, mode="fused", **kw).seconds == pytest.approx(
        2 * d * b / BW, rel=1e-12
    )
    # fused dysharp, C chunks: fill/drain steps carry d b / C, the C - 2 middle steps
    # (d + 1) b / C:  [(C - 2)(d + 1) + 4 d] b / C   (C >= 2); C = 1: 2 d b
    c = chunks
    want = 2 * d * b if c == 1 else ((c - 2) * (d + 1) + 4 * d) * b / c
    got = moe_layer_time(dysharp, mode="fused", **kw).seconds
    assert got == pytest.approx(want / BW, rel=1e-12)


def test_fused_speedup_tends_to_2d_over_d_plus_1():
    d, b = 7, 1000
    dedup = synthetic(8, d * b, d * b, d * b, d * b)
    dysharp = synthetic(8, b, d * b, d * b, b)
    kw = dict(profile=PROF, chunks=4096, step_latency=0.0, mode="fused")
    ratio = moe_layer_time(dedup, **kw).seconds / moe_layer_time(dysharp, **kw).seconds
    assert ratio == pytest.approx(2 * d / (d + 1), rel=2e-3)


def test_compute_bound_pipeline():
    b = 1000
    t = synthetic(2, b, b, b, b)
    g = 1.0  # far above the link time: C steps of g / C plus the step latencies
    got = moe_layer_time(t, profile=PROF, gemm_seconds=g, chunks=8, step_latency=1e-6)
    fill = 2 * (b / 8) / BW  # step 0 (dispatch only) and step C+1 (combine only)
    assert got.seconds == pytest.approx(g + fill + 10 * 1e-6, rel=1e-9)
    seq = moe_layer_time(t, profile=PROF, gemm_seconds=g, mode="sequential", step_latency=0)
    assert seq.seconds == pytest.approx(g + 2 * b / BW, rel=1e-12)


def test_busiest_rank_sets_the_pace():
    rng = np.random.default_rng(0)
    n, e, k = 4, 8, 2
    experts = np.stack([rng.choice(e, k, replace=False) for _ in range(64)])
    experts[:32] = [0, 1]  # half the tokens hammer rank 0
    sources = np.repeat(np.arange(n), 16)
    t = ep_traffic(experts, sources, n_ranks=n, n_experts=e, hidden=64, algorithm="dedup")
    got = moe_layer_time(t, profile=PROF, mode="sequential", step_latency=0.0)
    d_max = max(max(np.add(t.dispatch_up, t.meta_up)), max(np.add(t.dispatch_down, t.meta_down)))
    c_max = max(max(t.combine_up), max(t.combine_down))
    assert got.seconds == pytest.approx((d_max + c_max) / BW, rel=1e-12)


@pytest.mark.parametrize(
    "kw, match",
    [(dict(mode="overlap"), "mode"), (dict(chunks=0), "chunks"), (dict(gemm_seconds=-1), ">= 0")],
)
def test_bad_input(kw, match):
    with pytest.raises(ValueError, match=match):
        moe_layer_time(synthetic(2, 1, 1, 1, 1), profile=PROF, **kw)
