"""All-Reduce time from the traffic ledger plus each algorithm's step structure.

For one call of one :class:`~scinjax.traffic.TrafficRecord` (N ranks, n elements):

    t = latency + max(streams) + fill + serial

- ``latency``: launch (+ eager overhead without CUDA graphs) + hops x ``hop_latency`` +
  syncs x ``sync_overhead[family]`` + in-switch reduce / quantize passes + GPU quantize
  stages, counted on the critical path of the algorithm (:func:`steps`).
- ``streams``: the pipelined data streams; the **link** stream is the bytes on the
  busiest directed link, read from the ledger (``max(record.up + record.down)``), over
  ``link_bw x efficiency[family]``. In-switch reduce/(de)quantize and fused GPU
  (de)quantize stages stream beside it at their own rates; the slowest one sets the pace.
- ``fill``: each dependent pipeline stage after the first waits for one chunk
  (``min(chunk_bytes, link bytes)`` at the link rate).
- ``serial``: GPU (de)quantize kernels that are not fused (``fused_quant=False``).

Nothing here restates how many bytes an algorithm moves: a format with fewer bytes
makes the link stream proportionally shorter because the ledger says so.
"""

from __future__ import annotations

import dataclasses

from scinjax.collectives import PEER_ALGORITHMS, Collective
from scinjax.formats import CastFormat
from scinjax.timing.profile import FabricProfile, get_profile
from scinjax.traffic import TrafficRecord, TrafficReport, collective_record

__all__ = [
    "Steps",
    "TimeBreakdown",
    "allreduce_time",
    "record_breakdown",
    "record_time",
    "report_time",
    "steps",
]

_INPUT_DTYPE = "bfloat16"


@dataclasses.dataclass(frozen=True, kw_only=True)
class Steps:
    """Critical-path structure of one All-Reduce call.

    Attributes:
      hops: one-way traversals rank <-> switch that the last rank waits for.
      syncs: software cross-rank synchronisations (flags, barriers).
      switch_reduces: passes through the in-switch reduction engine.
      stream_stages: dependent stages of the pipelined data stream (1 = one stream).
      switch_quant: elements of each in-switch (de)quantize stage (per port).
      gpu_quant: elements of each GPU-side (de)quantize stage (per rank).
      description: the steps in words.
    """

    hops: int
    syncs: int
    switch_reduces: int
    stream_stages: int
    switch_quant: tuple[int, ...] = ()
    gpu_quant: tuple[int, ...] = ()
    description: str = ""


@dataclasses.dataclass(frozen=True, kw_only=True)
class TimeBreakdown:
    """Seconds of one call, by term (``total`` = latency + stream + fill + serial).

    ``link_bytes``: bytes on the busiest directed link (ledger); ``link_time``: those bytes
    at the family's effective rate; ``bottleneck``: which stream sets the pace.
    """

    algorithm: str
    latency: float
    stream: float
    fill: float
    serial: float
    total: float
    link_bytes: int
    link_time: float
    bottleneck: str


def _converts(fmt, dtype: str) -> bool:
    """Whether a link format is a conversion stage (None or a same-dtype cast is not)."""
    return fmt is not None and not (isinstance(fmt, CastFormat) and fmt.dtype == dtype)


def steps(record: TrafficRecord) -> Steps:
    """The step structure of ``record``'s algorithm for its N, formats and size.

    Hop counts (one hop = rank -> switch or switch -> rank):

    - ring: 2(N-1) steps, each a send through the switch (2 hops) and a flag.
    - one_shot: barrier (2 hops), read every peer (request + response, 2 hops),
      barrier (2 hops): 6 hops, 2 syncs.
    - two_shot: barrier, reduce-scatter reads, barrier, all-gather reads, barrier:
      10 hops, 3 syncs (quantized: + quantize, owner dequantize, requantize, dequantize).
    - nvls: barrier (2), multimem.ld_reduce (request up, switch reads down, data up,
      reduced slice down: 4), multimem.st (up, multicast down: 2), barrier (2):
      10 hops, 2 syncs, one in-switch reduce, two dependent stream stages.
    - scin: trigger (1 hop up), switch reads every rank (request down, data up: 2),
      reduce, write the result to every rank (1 down): 4 hops, one completion poll;
      INQ adds a GPU quantize, in-switch dequantize + requantize, a GPU dequantize.
    """
    n_ranks, n, alg = record.n_ranks, record.elements, record.algorithm
    up_q = _converts(record.uplink, record.dtype)
    down_q = _converts(record.downlink, record.dtype)
    if alg in PEER_ALGORITHMS:  # spec/peers.md: a quantized two_shot with the ledger's bytes
        alg, up_q, down_q = "two_shot", True, True
    if alg == "ring":
        k = 2 * (n_ranks - 1)
        return Steps(
            hops=2 * k,
            syncs=k,
            switch_reduces=0,
            stream_stages=1,
            description=f"{k} ring steps (reduce-scatter + all-gather), each 2 hops + 1 flag",
        )
    if alg == "one_shot":
        return Steps(
            hops=6,
            syncs=2,
            switch_reduces=0,
            stream_stages=1,
            description="barrier, read all N-1 peers, barrier",
        )
    if alg == "two_shot":
        gpu = []
        if up_q:  # quantize x_i; owner dequantizes N runs of n/N (n in all)
            gpu += [n, n]
        if down_q:  # owner requantizes its run; everyone dequantizes the whole result
            gpu += [-(-n // n_ranks), n]
        return Steps(
            hops=10,
            syncs=3,
            switch_reduces=0,
            stream_stages=1,
            gpu_quant=tuple(gpu),
            description="barrier, reduce-scatter, barrier, all-gather, barrier"
            + (" (+ quantize/dequantize stages)" if gpu else ""),
        )
    if alg == "nvls":
        return Steps(
            hops=10,
            syncs=2,
            switch_reduces=1,
            stream_stages=2,
            description="barrier, multimem.ld_reduce (4 hops), multimem.st (2 hops), barrier",
        )
    if alg == "scin":
        return Steps(
            hops=4,
            syncs=1,
            switch_reduces=1,
            stream_stages=2,
            switch_quant=tuple(n for q in (up_q, down_q) if q),
            gpu_quant=tuple(n for q in (up_q, down_q) if q),
            description="trigger, switch reads all ranks, reduces, writes all ranks, poll"
            + (" (+ INQ stages)" if up_q or down_q else ""),
        )
    if alg == "exact":
        raise ValueError(
            "'exact' is the reference reduction, not a fabric algorithm, and has no time; "
            "time 'scin' (same bytes) or another algorithm"
        )
    raise ValueError(f"no step structure for algorithm {alg!r}")


def record_breakdown(record: TrafficRecord, profile: FabricProfile | str) -> TimeBreakdown:
    """Seconds of ONE call of ``record`` on ``profile``, term by term (ignores ``calls``)."""
    if not isinstance(record, TrafficRecord):
        raise ValueError(f"record must be a TrafficRecord, got {type(record).__name__}")
    p = get_profile(profile)
    alg = record.algorithm
    st = steps(record)
    link_bytes = max(record.up + record.down)
    if record.n_ranks == 1 or record.elements == 0 or link_bytes == 0:
        return TimeBreakdown(
            algorithm=alg,
            latency=0.0,
            stream=0.0,
            fill=0.0,
            serial=0.0,
            total=0.0,
            link_bytes=link_bytes,
            link_time=0.0,
            bottleneck="none",
        )
    fabric = "two_shot" if alg in PEER_ALGORITHMS else alg  # peers time as two_shot
    rate = p.link_bw * p.efficiency[fabric]
    link_time = link_bytes / rate
    streams = {"link": link_time}
    if st.switch_reduces:
        streams["switch reduce"] = record.elements / p.switch_reduce_rate
    for i, e in enumerate(st.switch_quant):
        streams[f"switch quant {i}"] = e / p.switch_quant_rate
    gpu_times = [e / p.gpu_quant_rate for e in st.gpu_quant]
    stages = st.stream_stages + len(st.switch_quant)
    serial = 0.0
    if p.fused_quant:
        streams.update({f"gpu quant {i}": t for i, t in enumerate(gpu_times)})
        stages += len(gpu_times)
    else:
        serial = sum(gpu_times)
    bottleneck = max(streams, key=streams.get)
    fill = (stages - 1) * min(p.chunk_bytes, link_bytes) / rate
    launch = (
        p.graph_launch_overhead if p.cuda_graphs else p.launch_overhead + p.eager_overhead[fabric]
    )
    latency = (
        launch
        + st.hops * p.hop_latency
        + st.syncs * p.sync_overhead[fabric]
        + st.switch_reduces * p.switch_reduce_latency
        + len(st.switch_quant) * p.switch_quant_latency
        + len(st.gpu_quant) * p.gpu_quant_latency
    )
    stream = streams[bottleneck]
    return TimeBreakdown(
        algorithm=alg,
        latency=latency,
        stream=stream,
        fill=fill,
        serial=serial,
        total=latency + stream + fill + serial,
        link_bytes=link_bytes,
        link_time=link_time,
        bottleneck=bottleneck,
    )


def record_time(record: TrafficRecord, profile: FabricProfile | str) -> float:
    """Seconds of ONE call of ``record`` on ``profile`` (multiply by ``record.calls``)."""
    return record_breakdown(record, profile).total


def report_time(report: TrafficReport, profile: FabricProfile | str) -> float:
    """Seconds of every All-Reduce in ``report``: sum of record time x ``calls``
    (collectives serialised, none overlapped with each other)."""
    if not isinstance(report, TrafficReport):
        raise ValueError(f"report must be a TrafficReport, got {type(report).__name__}")
    p = get_profile(profile)
    return sum(r.calls * record_time(r, p) for r in report.records)


def allreduce_time(
    algorithm: str | Collective,
    message_bytes: int,
    *,
    n_ranks: int,
    profile: FabricProfile | str,
    uplink=None,
    downlink=None,
) -> float:
    """Seconds of one All-Reduce of a bf16 buffer of ``message_bytes`` per rank.

    ``algorithm``: ``ring``, ``one_shot``, ``two_shot``, ``nvls``, ``scin``, a spec string
    such as ``scin:int8`` (then leave ``uplink``/``downlink`` out) or a
    :class:`~scinjax.Collective`. The buffer is ``[message_bytes // 2]`` bf16 elements
    (blocks of quantized formats tile it); its bytes on every link come from
    :func:`~scinjax.traffic.collective_record`.
    """
    mb = message_bytes
    if isinstance(mb, bool) or not isinstance(mb, int) or mb < 2 or mb % 2:
        raise ValueError(
            f"message_bytes must be a positive even int (bytes of a bf16 buffer), got {mb!r}"
        )
    if isinstance(algorithm, str) and ":" in algorithm:
        if uplink is not None or downlink is not None:
            raise ValueError(
                f"algorithm {algorithm!r} already names its link formats; "
                "pass uplink/downlink only with a bare algorithm name"
            )
        algorithm = Collective.parse(algorithm)
    record = collective_record(
        algorithm,
        n_ranks=n_ranks,
        shape=(mb // 2,),
        dtype=_INPUT_DTYPE,
        uplink=uplink,
        downlink=downlink,
    )
    return record_time(record, profile)
