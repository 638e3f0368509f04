"""Timing of one MoE layer: dispatch -> expert GEMM -> combine over per-direction links.

Model (docs/moe.md lists every assumption):
- Each rank has an uplink U (rank -> switch) and a downlink L (switch -> rank), each
  at ``link_bw * efficiency`` bytes/s, independent (full duplex), and one compute
  resource (the expert GEMMs). Bytes come from :func:`scinjax.moe.ep_traffic` (routing
  metadata travels with the dispatch); the busiest rank sets the pace.
- The tokens are cut into C equal chunks. ``sequential``: dispatch, GEMM and combine
  are barrier-separated phases (DeepEP normal mode); a phase lasts as long as its
  busiest link direction. ``fused`` (DySHARP's token-centric fusion): step i runs
  dispatch(i), GEMM(i-1) and combine(i-2) together; a step lasts as long as its most
  loaded resource (fluid sharing: loads on one direction add), plus a step latency.
With no compute and symmetric dedup traffic both modes take ``2 d b``; DySHARP moves
``b`` up and ``d b`` down in dispatch (the reverse in combine), so sequential stays at
``2 d b`` while fused approaches ``(d + 1) b``: a speedup of ``2d / (d + 1)``.
"""

from __future__ import annotations

import dataclasses

from scinjax.moe import EPTraffic
from scinjax.timing.profile import FabricProfile, get_profile

__all__ = ["MOE_MODES", "MoETiming", "expert_gemm_seconds", "moe_layer_time"]

MOE_MODES = ("sequential", "fused")


@dataclasses.dataclass(frozen=True, kw_only=True)
class MoETiming:
    """Seconds of one MoE layer and the per-phase parts (busiest rank and direction)."""

    mode: str
    chunks: int
    seconds: float
    dispatch_seconds: float  # phase alone (sequential) / all dispatch traffic alone
    gemm_seconds: float
    combine_seconds: float

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


def expert_gemm_seconds(
    pairs_per_rank: float, *, hidden: int, intermediate: int, profile, shared_tokens: int = 0
) -> float:
    """SwiGLU expert GEMMs of ``pairs_per_rank`` (token, expert) pairs on one rank:
    ``6 * H * I`` FLOPs per pair (gate, up, down) at ``peak_flops * flops_efficiency``;
    ``shared_tokens`` adds a shared expert's tokens."""
    prof = get_profile(profile)
    if prof.peak_flops is None:
        raise ValueError(f"profile {prof.name!r} has no peak_flops; give gemm seconds directly")
    flops = 6.0 * hidden * intermediate * (pairs_per_rank + shared_tokens)
    return flops / (prof.peak_flops * prof.flops_efficiency)


def moe_layer_time(
    traffic: EPTraffic,
    *,
    profile: str | FabricProfile = "h100-nvswitch-8",
    gemm_seconds: float = 0.0,
    chunks: int = 16,
    mode: str = "fused",
    family: str = "one_shot",
    step_latency: float | None = None,
) -> MoETiming:
    """Seconds of one MoE layer with ``traffic`` on ``profile``'s links.

    ``gemm_seconds``: expert compute of the busiest rank for the whole layer.
    ``family``: whose ``efficiency`` the MoE copies get (default ``one_shot``: SM-driven
    point-to-point writes). ``step_latency``: added per pipeline step (default: two hop
    latencies, rank -> switch -> rank).
    """
    if mode not in MOE_MODES:
        raise ValueError(f"unknown mode {mode!r}; use one of {MOE_MODES}")
    if isinstance(chunks, bool) or not isinstance(chunks, int) or chunks < 1:
        raise ValueError(f"chunks must be an int >= 1, got {chunks!r}")
    if not isinstance(traffic, EPTraffic):
        raise TypeError(f"traffic must be an EPTraffic from ep_traffic, got {type(traffic)}")
    if gemm_seconds < 0:
        raise ValueError(f"gemm_seconds must be >= 0, got {gemm_seconds}")
    prof = get_profile(profile)
    bw = prof.link_bw * prof.efficiency[family]
    lat = 2 * prof.hop_latency if step_latency is None else float(step_latency)
    n = traffic.n_ranks
    du = [traffic.dispatch_up[r] + traffic.meta_up[r] for r in range(n)]
    dl = [traffic.dispatch_down[r] + traffic.meta_down[r] for r in range(n)]
    cu, cl = traffic.combine_up, traffic.combine_down
    disp = max(max(du), max(dl)) / bw
    comb = max(max(cu), max(cl)) / bw
    if mode == "sequential":
        seconds = disp + lat + gemm_seconds + comb + lat
    else:
        c = chunks
        seconds = 0.0
        for step in range(c + 2):
            d_on, g_on, k_on = step < c, 0 <= step - 1 < c, 0 <= step - 2 < c
            busiest = 0.0
            for r in range(n):  # loads of this step on rank r's uplink and downlink
                up = (du[r] if d_on else 0) + (cu[r] if k_on else 0)
                down = (dl[r] if d_on else 0) + (cl[r] if k_on else 0)
                busiest = max(busiest, up / (c * bw), down / (c * bw))
            compute = gemm_seconds / c if g_on else 0.0
            seconds += max(busiest, compute) + lat
    return MoETiming(
        mode=mode,
        chunks=chunks,
        seconds=seconds,
        dispatch_seconds=disp,
        gemm_seconds=gemm_seconds,
        combine_seconds=comb,
    )
