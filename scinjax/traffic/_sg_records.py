"""Exact bytes per link of one reduce-scatter / all-gather call (docs/semantics.md,
"Reduce-scatter and all-gather"). Pure Python integers."""

from __future__ import annotations

import math

import jax.numpy as jnp

from scinjax.collectives import Collective
from scinjax.collectives._scatter_gather import KINDS, SGSpec
from scinjax.traffic._records import TrafficRecord

__all__ = ["scatter_gather_record", "sg_spec_record"]


def _wire(fmt, shape, b) -> tuple[int, int]:
    """(payload, scale) bytes of a ``shape`` buffer in ``fmt`` (None: the dtype itself)."""
    return (math.prod(shape) * b, 0) if fmt is None else fmt.wire_bytes(shape)


def _links(kind, coll: Collective, n_ranks, shape, b):
    """(up, down) (payload, scale) pairs, the same on every rank (equal slices)."""
    n = math.prod(shape)
    if n_ranks == 1:
        return (0, 0), (0, 0)
    alg = coll.algorithm
    if kind == "reduce_scatter":
        s = n // n_ranks
        if alg in ("ring", "one_shot", "two_shot"):
            return ((n_ranks - 1) * s * b, 0), ((n_ranks - 1) * s * b, 0)
        if alg == "nvls":
            return (n * b, 0), (s * b, 0)
        sliced = (shape[0] // n_ranks,) + tuple(shape[1:])
        return _wire(coll.uplink, shape, b), _wire(coll.downlink, sliced, b)
    if alg in ("ring", "one_shot", "two_shot"):
        return ((n_ranks - 1) * n * b, 0), ((n_ranks - 1) * n * b, 0)
    if alg == "nvls":
        return (n * b, 0), (n_ranks * n * b, 0)
    up = _wire(coll.uplink, shape, b)
    return up, (n_ranks * up[0], n_ranks * up[1])


def scatter_gather_record(
    kind: str,
    collective: str | Collective,
    *,
    n_ranks: int,
    shape,
    dtype="bfloat16",
    label: str | None = None,
    calls: int = 1,
    phase: str = "forward",
) -> TrafficRecord:
    """The traffic of ``calls`` reduce-scatters / all-gathers of a per-rank ``shape`` buffer.

    Same counting as :func:`count_traffic` uses for the calls it finds, without tracing.
    """
    if kind not in KINDS:
        raise ValueError(f"unknown kind {kind!r}; use one of {KINDS}")
    coll = Collective.parse(collective)
    if isinstance(n_ranks, bool) or not isinstance(n_ranks, int) or n_ranks < 1:
        raise ValueError(f"n_ranks must be an int >= 1, got {n_ranks!r}")
    if isinstance(calls, bool) or not isinstance(calls, int) or calls < 0:
        raise ValueError(f"calls must be an int >= 0, got {calls!r}")
    shape = tuple(int(d) for d in shape)
    if not shape or any(d < 0 for d in shape):
        raise ValueError(f"shape must have >= 1 axis of non-negative sizes, got {shape}")
    if kind == "reduce_scatter" and shape[0] % n_ranks:
        raise ValueError(f"reduce_scatter needs shape[0] divisible by {n_ranks}, got {shape}")
    dtype = jnp.dtype(dtype)
    up, down = _links(kind, coll, n_ranks, shape, dtype.itemsize)
    return TrafficRecord(
        algorithm=coll.algorithm,
        n_ranks=n_ranks,
        shape=shape,
        dtype=dtype.name,
        uplink=coll.uplink,
        downlink=coll.downlink,
        label=label,
        calls=calls,
        up_payload=(up[0],) * n_ranks,
        up_scale=(up[1],) * n_ranks,
        down_payload=(down[0],) * n_ranks,
        down_scale=(down[1],) * n_ranks,
        phase=phase,
        kind=kind,
    )


def sg_spec_record(spec: SGSpec, calls: int, phase: str) -> TrafficRecord:
    """The record of a marker found by the ledger."""
    coll = Collective(
        algorithm=spec.algorithm,
        uplink=spec.uplink,
        downlink=spec.downlink,
        order=spec.order,
        accumulate=spec.accumulate,
    )
    return scatter_gather_record(
        spec.kind,
        coll,
        n_ranks=spec.n_ranks,
        shape=spec.shape,
        dtype=spec.dtype,
        label=spec.label,
        calls=calls,
        phase=phase,
    )
