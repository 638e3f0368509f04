"""Independent NumPy reference of reduce-scatter / all-gather (sequence parallelism).

Written from docs/semantics.md, "Reduce-scatter and all-gather", on top of the
float32/format primitives of ``reference_np`` (never from the JAX code).

- :func:`reduce_scatter` takes ``xs`` ``[N, m, ...]`` and returns ``[N, m/N, ...]``:
  row j is what rank j holds.
- :func:`all_gather` takes ``xs`` ``[N, m, ...]`` and returns ``[N m, ...]``, what every
  rank holds.
- Byte counts: :func:`rs_bytes` / :func:`ag_bytes` give ``(up, down)`` totals
  (payload + scales) of one rank's links, from the closed forms of the table.
- Noise: a callable ``noise(stage, index, shape)`` as in ``reference_np``.
"""

from __future__ import annotations

import math

import numpy as np
import reference_np as R


def _ring_slice(slices: list[np.ndarray], j: int, d, accumulate: str) -> np.ndarray:
    """Slice j summed x_{j+1}, ..., x_{j+N} (mod N), the partial rounded to d per hop."""
    n_ranks = len(slices)
    partial = slices[(j + 1) % n_ranks].copy()
    for step in range(2, n_ranks + 1):
        a = R._operand(R.to_f32(partial), accumulate)
        b = R._operand(R.to_f32(slices[(j + step) % n_ranks]), accumulate)
        partial = R.cast(R._add(a, b, accumulate), d)
    return partial


def reduce_scatter(
    xs, algorithm, *, uplink=None, downlink=None, order="rank", accumulate="float32", noise=None
):
    xs = np.asarray(xs)
    d = xs.dtype
    n_ranks, m = xs.shape[0], xs.shape[1]
    assert m % n_ranks == 0
    if n_ranks == 1:
        return xs.copy()
    s = m // n_ranks
    uplink, downlink = R.get(uplink), R.get(downlink)
    out = []
    if uplink is None:
        contributions = [R.to_f32(x) for x in xs]
    else:
        contributions = []
        for i in range(n_ranks):
            u = noise(0, i, xs.shape[1:]) if R._needs_noise(uplink) else None
            codes, scales = R.quantize(xs[i], uplink, noise=u)
            contributions.append(R.dequantize_f32(codes, scales, uplink))
    for j in range(n_ranks):
        rows = slice(j * s, (j + 1) * s)
        if algorithm == "ring":
            out.append(_ring_slice([x[rows] for x in xs], j, d, accumulate))
            continue
        total = R.reduce_f32([c[rows] for c in contributions], order, accumulate)
        if downlink is None:
            out.append(R.cast(total, d))
        else:
            u = noise(1, j, total.shape) if R._needs_noise(downlink) else None
            codes, scales = R.quantize(total, downlink, noise=u)
            out.append(R.cast(R.dequantize_f32(codes, scales, downlink), d))
    return np.stack(out)


def all_gather(xs, algorithm, *, fmt=None, noise=None):
    xs = np.asarray(xs)
    d = xs.dtype
    fmt = R.get(fmt)
    pieces = []
    for i, x in enumerate(xs):
        if fmt is None:
            pieces.append(x.copy())
        else:
            u = noise(0, i, x.shape) if R._needs_noise(fmt) else None
            codes, scales = R.quantize(x, fmt, noise=u)
            pieces.append(R.cast(R.dequantize_f32(codes, scales, fmt), d))
    return np.concatenate(pieces, axis=0)


def _wire(shape, fmt, b):
    if fmt is None:
        return math.prod(shape) * b
    return sum(R.wire_bytes(shape, R.get(fmt)))


def rs_bytes(algorithm, N, shape, b, uplink=None, downlink=None):
    """(up, down) bytes of one rank's links for one reduce-scatter of a ``shape`` buffer."""
    n = math.prod(shape)
    s = n // N
    if N == 1:
        return 0, 0
    if algorithm in ("ring", "one_shot", "two_shot"):
        return (N - 1) * s * b, (N - 1) * s * b
    if algorithm == "nvls":
        return n * b, s * b
    sliced = (shape[0] // N,) + tuple(shape[1:])
    return _wire(shape, uplink, b), _wire(sliced, downlink, b)


def ag_bytes(algorithm, N, shape, b, fmt=None):
    """(up, down) bytes of one rank's links for one all-gather of a ``shape`` buffer."""
    n = math.prod(shape)
    if N == 1:
        return 0, 0
    if algorithm in ("ring", "one_shot", "two_shot"):
        return (N - 1) * n * b, (N - 1) * n * b
    if algorithm == "nvls":
        return n * b, N * n * b
    return _wire(shape, fmt, b), N * _wire(shape, fmt, b)
