"""Exact bytes on every directed link for one All-Reduce call (docs/semantics.md).

Pure Python integers: exact at any size, no tracing needed.
"""

from __future__ import annotations

import dataclasses
import math

import jax.numpy as jnp

from scinjax.collectives import Collective, block_runs, chunk_sizes
from scinjax.collectives._config import int_block_size
from scinjax.collectives._peers import PEER_ALGORITHMS, peer_link_bytes
from scinjax.formats import CastFormat, Format
from scinjax.formats._f32 import INPUT_DTYPES

__all__ = ["PHASES", "TrafficRecord", "collective_record"]

PHASES = ("forward", "backward", "recompute")


@dataclasses.dataclass(frozen=True, kw_only=True)
class TrafficRecord:
    """Bytes of ONE call of one All-Reduce on each rank's links, ``calls`` times over.

    Per-rank tuples (index i = rank i): ``up_payload``, ``up_scale`` (rank -> switch),
    ``down_payload``, ``down_scale`` (switch -> rank).
    """

    algorithm: str
    n_ranks: int
    shape: tuple[int, ...]
    dtype: str
    uplink: Format | None
    downlink: Format | None
    label: str | None
    calls: int
    up_payload: tuple[int, ...]
    up_scale: tuple[int, ...]
    down_payload: tuple[int, ...]
    down_scale: tuple[int, ...]
    # "forward", "backward" (the All-Reduce of cotangents under jax.grad) or "recompute"
    # (a forward call run again by jax.checkpoint in the backward pass)
    phase: str = "forward"
    # "allreduce", or "reduce_scatter" / "all_gather" (shape: the per-rank input)
    kind: str = "allreduce"

    @property
    def elements(self) -> int:
        return math.prod(self.shape)

    @property
    def message_bytes(self) -> int:
        """Bytes of one rank's input buffer (the nccl-tests message size)."""
        return self.elements * jnp.dtype(self.dtype).itemsize

    @property
    def up(self) -> tuple[int, ...]:
        return tuple(p + s for p, s in zip(self.up_payload, self.up_scale, strict=True))

    @property
    def down(self) -> tuple[int, ...]:
        return tuple(p + s for p, s in zip(self.down_payload, self.down_scale, strict=True))

    @property
    def total(self) -> int:
        """All links, all calls."""
        return self.calls * (sum(self.up) + sum(self.down))

    @property
    def collective(self) -> str:
        name = str(Collective(algorithm=self.algorithm, uplink=self.uplink, downlink=self.downlink))
        return name if self.kind == "allreduce" else f"{self.kind}[{name}]"

    def to_dict(self) -> dict:
        return dict(
            algorithm=self.algorithm,
            collective=self.collective,
            n_ranks=self.n_ranks,
            shape=list(self.shape),
            elements=self.elements,
            dtype=self.dtype,
            uplink=None if self.uplink is None else self.uplink.name,
            downlink=None if self.downlink is None else self.downlink.name,
            label=self.label,
            phase=self.phase,
            kind=self.kind,
            calls=self.calls,
            up_payload=list(self.up_payload),
            up_scale=list(self.up_scale),
            down_payload=list(self.down_payload),
            down_scale=list(self.down_scale),
        )


def _input_dtype(dtype) -> jnp.dtype:
    """``dtype`` if ``allreduce`` accepts it (bf16/f16/f32), else a TypeError naming it."""
    try:
        resolved = jnp.dtype(dtype)
    except TypeError:
        raise TypeError(
            f"dtype={dtype!r} is not a dtype; use 'bfloat16', 'float16' or 'float32'"
        ) from None
    if resolved not in INPUT_DTYPES:
        raise TypeError(
            f"dtype={resolved.name} cannot be All-Reduced (allreduce takes bfloat16, float16 or "
            "float32); count the buffer in the float dtype it is reduced in"
        )
    return resolved


def _wire(fmt: Format | None, elements: int, blocks: int, dtype_bytes: int) -> tuple[int, int]:
    """(payload, scale) bytes of a contiguous run of ``elements`` in ``blocks`` blocks."""
    if fmt is None:
        return elements * dtype_bytes, 0
    if isinstance(fmt, CastFormat):
        return elements * fmt.element_bytes, 0
    # nv's float32 tensor scale travels with every non-empty run (docs/semantics.md)
    tensor = getattr(fmt, "tensor_scale_bytes", 0) if elements else 0
    return math.ceil(elements * fmt.bits / 8), blocks * fmt.scale_bytes + tensor


def _link_pairs(n_ranks, up_fn, down_fn):
    ups = [up_fn(i) for i in range(n_ranks)]
    downs = [down_fn(i) for i in range(n_ranks)]
    return (
        tuple(p for p, _ in ups),
        tuple(s for _, s in ups),
        tuple(p for p, _ in downs),
        tuple(s for _, s in downs),
    )


def _per_link(algorithm, ranks, shape, b, uplink, downlink):
    n = math.prod(shape)
    if ranks == 1:
        zero = (0,)
        return zero, zero, zero, zero
    if algorithm in PEER_ALGORITHMS:  # each scheme's own layout (spec/peers.md)
        return peer_link_bytes(algorithm, ranks, n)
    s = chunk_sizes(n, ranks)
    if algorithm == "ring":
        return _link_pairs(
            ranks,
            lambda r: ((2 * n - s[r] - s[(r + 1) % ranks]) * b, 0),
            lambda r: ((2 * n - s[(r - 1) % ranks] - s[r]) * b, 0),
        )
    if algorithm == "one_shot":
        return _link_pairs(
            ranks, lambda i: ((ranks - 1) * n * b, 0), lambda i: ((ranks - 1) * n * b, 0)
        )
    if algorithm == "nvls":
        return _link_pairs(ranks, lambda i: ((n + s[i]) * b, 0), lambda i: ((n + s[i]) * b, 0))
    if algorithm in ("scin", "exact"):
        up = uplink.wire_bytes(shape) if uplink is not None else (n * b, 0)
        down = downlink.wire_bytes(shape) if downlink is not None else (n * b, 0)
        return _link_pairs(ranks, lambda i: up, lambda i: down)
    if algorithm != "two_shot":
        raise ValueError(f"no byte model for algorithm {algorithm!r}")
    block = int_block_size(uplink, downlink)
    if block is None:  # element slices
        runs = [(count, 0) for count in s]
    else:  # whole blocks per owner
        runs = block_runs(shape, block, ranks)
    w_up = [_wire(uplink, e, k, b) for e, k in runs]
    w_dn = [_wire(downlink, e, k, b) for e, k in runs]

    def others(w, i):  # (payload, scale) summed over every run but run i
        return tuple(sum(w[j][part] for j in range(ranks) if j != i) for part in (0, 1))

    def up(i):  # reduce-scatter: every run but its own; all-gather: its run to N-1 peers
        rest = others(w_up, i)
        return tuple(rest[part] + (ranks - 1) * w_dn[i][part] for part in (0, 1))

    def down(i):  # reduce-scatter: its run from N-1 peers; all-gather: every other run
        rest = others(w_dn, i)
        return tuple((ranks - 1) * w_up[i][part] + rest[part] for part in (0, 1))

    return _link_pairs(ranks, up, down)


def collective_record(
    algorithm: str | Collective,
    *,
    n_ranks: int,
    shape,
    dtype="bfloat16",
    uplink=None,
    downlink=None,
    label: str | None = None,
    calls: int = 1,
    phase: str = "forward",
) -> TrafficRecord:
    """The traffic of ``calls`` All-Reduces of a ``shape`` ``dtype`` buffer per rank.

    Same counting as :func:`count_traffic` uses for every call it finds, without tracing.
    """
    coll = (
        algorithm
        if isinstance(algorithm, Collective)
        else Collective(algorithm=algorithm, uplink=uplink, downlink=downlink)
    )
    if isinstance(n_ranks, bool) or not isinstance(n_ranks, int) or n_ranks < 1:
        raise ValueError(f"n_ranks must be an int >= 1, got {n_ranks!r}")
    if phase not in PHASES:
        raise ValueError(f"unknown phase {phase!r}; use one of {PHASES}")
    if isinstance(calls, bool) or not isinstance(calls, int) or calls < 0:
        raise ValueError(f"calls must be an int >= 0, got {calls!r}")
    shape = tuple(int(d) for d in shape) or (1,)
    if any(d < 0 for d in shape):
        raise ValueError(f"shape must have non-negative sizes, got {shape}")
    dtype = _input_dtype(dtype)
    links = _per_link(coll.algorithm, n_ranks, shape, dtype.itemsize, coll.uplink, coll.downlink)
    return TrafficRecord(
        algorithm=coll.algorithm,
        n_ranks=n_ranks,
        shape=shape,
        dtype=dtype.name,
        uplink=coll.uplink,
        downlink=coll.downlink,
        label=label,
        calls=calls,
        phase=phase,
        up_payload=links[0],
        up_scale=links[1],
        down_payload=links[2],
        down_scale=links[3],
    )
