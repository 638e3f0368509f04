"""Fabric profiles: the constants of the All-Reduce timing model (SI units throughout).

A :class:`FabricProfile` describes N ranks on one switch (a star, like an NVSwitch
system): link bandwidth per direction, how much of it each algorithm family gets
(protocol efficiency), latencies of hops, syncs and launches, the throughput of the
in-switch reduce and quantize engines and of GPU-side (de)quantization, the pipelining
chunk, and, for end-to-end models, the GPU's peak bf16 throughput and HBM bandwidth.

Every number in a preset is one of three kinds, recorded in :data:`PROVENANCE`:
``public`` (a published specification), ``fitted`` (by :mod:`scinjax.timing.calibrate`
against the public measurements stored in ``published.json``) or ``assumed`` (a
modelling choice with its reason). No value is tuned to a published SCIN speedup.
"""

from __future__ import annotations

import dataclasses
import math

__all__ = [
    "FAMILIES",
    "PROVENANCE",
    "FabricProfile",
    "PerAlgorithm",
    "get_profile",
    "profile_names",
]

FAMILIES = ("ring", "one_shot", "two_shot", "nvls", "scin")
"""Algorithm families that carry their own efficiency and sync cost."""


def _check_number(
    owner: str, name: str, value, *, lo: float, hi: float = math.inf, lo_open: bool = False
) -> None:
    bad = isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value)
    if not bad:
        bad = value <= lo if lo_open else value < lo
        bad = bad or value > hi
    if bad:
        low = f"> {lo}" if lo_open else f">= {lo}"
        high = "" if hi == math.inf else f" and <= {hi}"
        raise ValueError(f"{owner}.{name} must be a finite number {low}{high}, got {value!r}")


@dataclasses.dataclass(frozen=True, kw_only=True)
class PerAlgorithm:
    """One number per algorithm family (``profile.efficiency["nvls"]``)."""

    ring: float
    one_shot: float
    two_shot: float
    nvls: float
    scin: float

    def __getitem__(self, family: str) -> float:
        if family not in FAMILIES:
            raise ValueError(f"unknown algorithm family {family!r}; use one of {FAMILIES}")
        return getattr(self, family)

    def check(self, owner: str, *, lo: float, hi: float = math.inf, lo_open=False) -> None:
        for family in FAMILIES:
            _check_number(owner, family, getattr(self, family), lo=lo, hi=hi, lo_open=lo_open)

    def to_dict(self) -> dict[str, float]:
        return {family: getattr(self, family) for family in FAMILIES}


@dataclasses.dataclass(frozen=True, kw_only=True)
class FabricProfile:
    """Constants of one fabric (a switch with ``n_ranks`` ports) and its GPUs.

    Attributes (seconds, bytes/s, elements/s):
      name: preset name, informational.
      n_ranks: ranks of the system (the default N of the command-line tools).
      link_bw: raw line rate of one direction of one rank's link to the switch, bytes/s.
      efficiency: fraction of ``link_bw`` each algorithm family's data stream sustains
        (packet headers, protocol flags, read requests); in (0, 1].
      hop_latency: one traversal rank -> switch or switch -> rank, s.
      launch_overhead: per collective, launch without CUDA graphs (host enqueue + kernel
        start), s.
      graph_launch_overhead: per collective, launch inside a CUDA graph, s.
      sync_overhead: per family, software cost of one cross-rank synchronisation (flag
        write and poll, fences) beyond the hops it travels, s.
      eager_overhead: per family, extra per-call cost paid without CUDA graphs only (host
        work, staging copies), s.
      cuda_graphs: whether collectives run inside CUDA graphs (``graph_launch_overhead``,
        no ``eager_overhead``) or eagerly (``launch_overhead + eager_overhead``).
      switch_reduce_latency: one pass through the in-switch reduction pipeline, s.
      switch_reduce_rate: elements per second one switch port can feed into the
        reduction (per port, so it scales with N).
      switch_quant_latency: one in-switch (de)quantize stage, s.
      switch_quant_rate: elements per second of one in-switch (de)quantize stage.
      gpu_quant_latency: one GPU-side (de)quantize stage, s.
      gpu_quant_rate: elements per second of one GPU-side (de)quantize stage.
      fused_quant: GPU (de)quantization is fused into the transfer kernel and pipelined
        with it at ``chunk_bytes`` granularity; otherwise it runs as separate kernels
        whose time adds to the transfer.
      chunk_bytes: pipelining chunk; each dependent pipeline stage after the first adds
        one chunk time (pipeline fill).
      peak_flops: dense bf16 tensor throughput of one GPU, FLOP/s (None: no compute model).
      hbm_bw: HBM bandwidth of one GPU, bytes/s (None: no compute model).
      flops_efficiency: achievable fraction of ``peak_flops`` for large matmuls.
      hbm_efficiency: achievable fraction of ``hbm_bw`` for streaming kernels.
    """

    name: str
    n_ranks: int
    link_bw: float
    efficiency: PerAlgorithm
    hop_latency: float
    launch_overhead: float
    graph_launch_overhead: float
    sync_overhead: PerAlgorithm
    eager_overhead: PerAlgorithm
    cuda_graphs: bool = False
    switch_reduce_latency: float
    switch_reduce_rate: float
    switch_quant_latency: float
    switch_quant_rate: float
    gpu_quant_latency: float
    gpu_quant_rate: float
    fused_quant: bool = True
    chunk_bytes: int
    peak_flops: float | None = None
    hbm_bw: float | None = None
    flops_efficiency: float = 1.0
    hbm_efficiency: float = 1.0

    def __post_init__(self) -> None:
        owner = "FabricProfile"
        if not isinstance(self.name, str):
            raise ValueError(f"{owner}.name must be a str, got {self.name!r}")
        n = self.n_ranks
        if isinstance(n, bool) or not isinstance(n, int) or n < 1:
            raise ValueError(f"{owner}.n_ranks must be an int >= 1, got {n!r}")
        c = self.chunk_bytes
        if isinstance(c, bool) or not isinstance(c, int) or c < 1:
            raise ValueError(f"{owner}.chunk_bytes must be an int >= 1, got {c!r}")
        for field in ("cuda_graphs", "fused_quant"):
            if not isinstance(getattr(self, field), bool):
                raise ValueError(f"{owner}.{field} must be a bool, got {getattr(self, field)!r}")
        for field in ("efficiency", "sync_overhead", "eager_overhead"):
            if not isinstance(getattr(self, field), PerAlgorithm):
                raise ValueError(
                    f"{owner}.{field} must be a PerAlgorithm, got {getattr(self, field)!r}"
                )
        self.efficiency.check(f"{owner}.efficiency", lo=0.0, hi=1.0, lo_open=True)
        self.sync_overhead.check(f"{owner}.sync_overhead", lo=0.0)
        self.eager_overhead.check(f"{owner}.eager_overhead", lo=0.0)
        for field in ("link_bw", "switch_reduce_rate", "switch_quant_rate", "gpu_quant_rate"):
            _check_number(owner, field, getattr(self, field), lo=0.0, lo_open=True)
        for field in (
            "hop_latency",
            "launch_overhead",
            "graph_launch_overhead",
            "switch_reduce_latency",
            "switch_quant_latency",
            "gpu_quant_latency",
        ):
            _check_number(owner, field, getattr(self, field), lo=0.0)
        for field in ("peak_flops", "hbm_bw"):
            if getattr(self, field) is not None:
                _check_number(owner, field, getattr(self, field), lo=0.0, lo_open=True)
        for field in ("flops_efficiency", "hbm_efficiency"):
            _check_number(owner, field, getattr(self, field), lo=0.0, hi=1.0, lo_open=True)

    def replace(self, **changes) -> FabricProfile:
        """A validated copy with ``changes``, e.g. ``p.replace(cuda_graphs=True)``."""
        return dataclasses.replace(self, **changes)

    def to_dict(self) -> dict:
        out = {}
        for field in dataclasses.fields(self):
            value = getattr(self, field.name)
            out[field.name] = value.to_dict() if isinstance(value, PerAlgorithm) else value
        return out


_US = 1e-6
_GB = 1e9

# -- NVLink4 / NVSwitch (Hopper) -------------------------------------------------------
# Values marked "fitted" are the rounded output of scinjax.timing.calibrate.fit_nvswitch
# (tests/test_timing.py checks that they still agree with a fresh fit).
_NVLINK4_LINK_BW = 450 * _GB  # public: 18 links x 25 GB/s per direction
_RING_EFF = 0.8170  # fitted: ring busbw 367.5 GB/s (8xH100, NCCL issues 1455 / nccl-tests 212)
_NVLS_EFF_H100 = 0.6852  # fitted: NVLS busbw 478.9 GB/s at 8 GiB (nccl-tests sweep, 8xH100)
_NVLS_EFF_H200 = 0.6796  # fitted: NVLS busbw ~475 GB/s (nccl-tests issue 272, 8xH200)
_NVLS_SYNC = 0.645 * _US  # fitted: NVLS under CUDA graphs ~6 us on 2xH100 (NCCL issue 1259)
_NVLS_EAGER = 37.97 * _US  # fitted: plateau of the 8xH100 NVLS sweep, 64 KiB .. 8 GiB


def _nvswitch(name: str, *, nvls_eff: float, peak_flops: float, hbm_bw: float) -> FabricProfile:
    return FabricProfile(
        name=name,
        n_ranks=8,  # public: 8 GPUs on NVSwitch (HGX H100 / H200)
        link_bw=_NVLINK4_LINK_BW,
        efficiency=PerAlgorithm(
            ring=_RING_EFF,
            # assumed: SM-driven copies over the same NVLink packets as NCCL's ring, so the
            # same measured efficiency (vLLM custom all-reduce is a validation, not a fit).
            one_shot=_RING_EFF,
            two_shot=_RING_EFF,
            nvls=nvls_eff,
            # assumed: SCIN streams over NVLink like the best measured NVLink stream (ring);
            # alternatives (NVLS-like, 1.0 as the paper's "negligible protocol overhead")
            # are reported in docs/timing.md as a sensitivity, never chosen to fit a ratio.
            scin=_RING_EFF,
        ),
        hop_latency=0.25 * _US,  # assumed: one GPU<->NVSwitch traversal (NCCL's tuning model
        # charges ~0.5 us per NVLink ring step, i.e. two traversals)
        launch_overhead=4.0 * _US,  # assumed: eager host enqueue + kernel start
        graph_launch_overhead=2.0 * _US,  # assumed: kernel node start inside a CUDA graph
        sync_overhead=PerAlgorithm(
            ring=0.5 * _US,  # assumed: per-step flag write + poll of NCCL's protocols
            one_shot=1.0 * _US,  # assumed: barrier flags to N-1 peers + spin (vLLM-style)
            two_shot=1.0 * _US,  # assumed: as one_shot
            nvls=_NVLS_SYNC,
            scin=0.5 * _US,  # assumed: one completion-flag poll (the switch orders the flag)
        ),
        eager_overhead=PerAlgorithm(
            ring=0.0,  # assumed: NCCL ring needs no per-call host work beyond the launch
            one_shot=0.0,  # assumed: registered IPC buffers, no host work
            two_shot=0.0,
            nvls=_NVLS_EAGER,
            scin=0.0,  # assumed: switch-driven, no host work beyond the launch
        ),
        cuda_graphs=False,  # the public sweep ran without CUDA graphs
        switch_reduce_latency=0.2 * _US,  # assumed: NVSwitch reduction pipeline traversal
        # assumed: the in-switch reducer sustains the int8 wire rate per port (1 B/element),
        # so it never binds on NVLink4 (the NVLS gap is in `efficiency`).
        switch_reduce_rate=_NVLINK4_LINK_BW / 1.0,
        switch_quant_latency=0.1 * _US,  # assumed: a few pipeline cycles per block
        switch_quant_rate=_NVLINK4_LINK_BW / 1.0,  # assumed: as the reducer
        gpu_quant_latency=0.5 * _US,  # assumed: pipeline start of a fused (de)quantize stage
        # assumed: HBM-bound, 3.06 B/element (read bf16, write int8 + fp16 scale / 32),
        # at 80% of HBM bandwidth
        gpu_quant_rate=0.8 * hbm_bw / 3.0625,
        fused_quant=True,  # assumed: quantize/dequantize fused into the transfer kernel
        chunk_bytes=128 * 1024,  # assumed: NCCL's default NVLS chunk (NCCL_NVLS_CHUNKSIZE)
        peak_flops=peak_flops,
        hbm_bw=hbm_bw,
        flops_efficiency=0.7,  # assumed: achievable fraction of peak for large bf16 GEMMs
        hbm_efficiency=0.8,  # assumed: achievable fraction of HBM bandwidth when streaming
    )


_PRESETS: dict[str, FabricProfile] = {
    # public: H100 SXM 989 TFLOP/s dense bf16, HBM3 3.35 TB/s
    "h100-nvswitch-8": _nvswitch(
        "h100-nvswitch-8", nvls_eff=_NVLS_EFF_H100, peak_flops=989e12, hbm_bw=3.35e12
    ),
    # public: H200 989 TFLOP/s dense bf16, HBM3e 4.8 TB/s (reference file)
    "h200-nvswitch-8": _nvswitch(
        "h200-nvswitch-8", nvls_eff=_NVLS_EFF_H200, peak_flops=989e12, hbm_bw=4.8e12
    ),
    # The paper's prototype: 4 FPGA endpoints and 1 FPGA switch. Nothing about its links
    # or clocks is public here: EVERY value below is assumed (a 100 Gb/s-class serial link
    # per port, a 512-bit datapath at 250 MHz in the switch and endpoints).
    "scin-fpga-4": FabricProfile(
        name="scin-fpga-4",
        n_ranks=4,  # public: 4 endpoints, 1 switch (secondary summary of the paper)
        link_bw=12.5 * _GB,  # assumed: 100 Gb/s per direction per port
        efficiency=PerAlgorithm(  # assumed: 64b/66b-style framing + packet headers
            ring=0.9, one_shot=0.9, two_shot=0.9, nvls=0.9, scin=0.9
        ),
        hop_latency=1.0 * _US,  # assumed: SerDes + MAC/PCS one way
        launch_overhead=2.0 * _US,  # assumed: host doorbell + DMA descriptor fetch
        graph_launch_overhead=2.0 * _US,  # assumed: no graphs on FPGAs, same as eager
        sync_overhead=PerAlgorithm(  # assumed: one flag poll over PCIe-class latency
            ring=1.0 * _US,
            one_shot=1.0 * _US,
            two_shot=1.0 * _US,
            nvls=1.0 * _US,
            scin=1.0 * _US,
        ),
        eager_overhead=PerAlgorithm(ring=0.0, one_shot=0.0, two_shot=0.0, nvls=0.0, scin=0.0),
        switch_reduce_latency=0.5 * _US,  # assumed: ~128 cycles at 250 MHz
        switch_reduce_rate=16 * _GB / 2,  # assumed: 64 B/cycle at 250 MHz of bf16 operands
        switch_quant_latency=0.2 * _US,  # assumed: ~50 cycles
        switch_quant_rate=16 * _GB / 2,  # assumed: as the reducer
        gpu_quant_latency=0.2 * _US,  # assumed: endpoint quantizer pipeline
        gpu_quant_rate=16 * _GB / 2,  # assumed: endpoint datapath as the switch's
        chunk_bytes=4096,  # assumed: one DMA burst
    ),
}

PROVENANCE: dict[str, str] = {
    "link_bw": "public (NVLink4 450 GB/s per direction); assumed for scin-fpga-4",
    "efficiency.ring": "fitted: ring large-message busbw 367.5 GB/s on 8xH100",
    "efficiency.nvls": "fitted: NVLS busbw at 8 GiB, 478.9 GB/s (H100 sweep) / 475 GB/s (H200)",
    "efficiency.one_shot/two_shot/scin": "assumed: equal to the ring's NVLink efficiency",
    "sync_overhead.nvls": "fitted: NVLS with CUDA graphs ~6 us on 2xH100",
    "eager_overhead.nvls": "fitted: minimax over the 8xH100 NVLS sweep, 64 KiB and up",
    "everything else": "assumed (see the comment beside each value in profile.py)",
    "peak_flops, hbm_bw": "public (reference file; H100 SXM datasheet)",
}
"""Where each preset value comes from (docs/timing.md has the full table)."""


def profile_names() -> tuple[str, ...]:
    """Names accepted by :func:`get_profile`."""
    return tuple(_PRESETS)


def get_profile(name: str | FabricProfile) -> FabricProfile:
    """The preset ``name`` (``h100-nvswitch-8``, ``h200-nvswitch-8``, ``scin-fpga-4``);
    a :class:`FabricProfile` is returned unchanged."""
    if isinstance(name, FabricProfile):
        return name
    try:
        return _PRESETS[name]
    except (KeyError, TypeError):
        raise ValueError(f"unknown fabric profile {name!r}; use one of {profile_names()}") from None
