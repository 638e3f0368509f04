"""Deployed software quantized All-Reduces (spec/peers.md): QuickReduce, FlashInfer, TRT-LLM.

Each scheme is a two-shot over the rank's buffer flattened to ``[n]``: segment j (whole
units of the scheme's layout: 64, 256 or 496 elements) is owned by rank j. Every rank
quantizes its whole buffer, the quantized buffers are gathered over the named axis, and
the owners' arithmetic (dequantize, fixed-order sum, requantize) runs in the spec's
dtypes. Blocks and groups never straddle a segment, so quantizing the whole buffer at
once gives each segment's bits.

float16 arithmetic (QuickReduce) is done as a float32 operation on float16 values
followed by one RNE cast to float16: for +, *, / the float32 result rounded again to
float16 is the correctly rounded float16 result (24 >= 2*11 + 2 bits), and every
float16 value and every product of two is a float32 normal, so XLA's flush-to-zero
never touches it. Finite float16 results beyond the range saturate to +-65504 (gfx942).
"""

from __future__ import annotations

import math

import jax.numpy as jnp
from jax import lax

from scinjax.collectives._partition import chunk_sizes
from scinjax.formats._f32 import exact_div, ftz, to_f32

__all__ = [
    "PEER_ALGORITHMS",
    "peer_unit",
    "peer_segments",
    "peer_wire",
    "peer_link_bytes",
    "check_peer_input",
    "peer_allreduce",
]

PEER_ALGORITHMS = (
    "quickreduce-q8",
    "quickreduce-q6",
    "quickreduce-q4",
    "flashinfer-fp8",
    "trtllm-fp8",
)
_QR_BITS = {"quickreduce-q8": 8, "quickreduce-q6": 6, "quickreduce-q4": 4}
_F16_MAX = 65504.0
_E4M3_MAX = 448.0
_FI_GROUP = 256
_TRT_GROUP = 496
_TRT_SCALE_BYTES = 16  # 4-byte float32 scale + 12 bytes of padding of the 512-byte chunk


def peer_unit(algorithm: str) -> int:
    """Elements of the scheme's layout unit (segments are cut on whole units)."""
    if algorithm in _QR_BITS:
        return 64
    if algorithm == "flashinfer-fp8":
        return _FI_GROUP
    if algorithm == "trtllm-fp8":
        return _TRT_GROUP
    raise ValueError(f"unknown peer algorithm {algorithm!r}; use one of {PEER_ALGORITHMS}")


def peer_segments(n: int, algorithm: str, n_ranks: int) -> list[tuple[int, int]]:
    """(start, elements) of each owner's segment of the flattened ``[n]`` buffer.

    The ``ceil(n / unit)`` units are split by the chunk rule of collectives.md (the first
    ``units mod N`` owners get one more); only the last unit may be short.
    """
    unit = peer_unit(algorithm)
    units = -(-n // unit)
    out, start = [], 0
    for count in chunk_sizes(units, n_ranks):
        end = min(start + count * unit, n)
        out.append((start, end - start))
        start = end
    return out


def peer_wire(algorithm: str, elements: int) -> tuple[int, int]:
    """(payload, scale) bytes of one segment of ``elements`` starting on a unit boundary."""
    if algorithm in _QR_BITS:
        full, rest = divmod(elements, 64)
        blocks = 2 * full + min(rest, 2)  # a 1-element final run has no odd block
        return math.ceil(elements * _QR_BITS[algorithm] / 8), 2 * blocks
    if algorithm == "flashinfer-fp8":
        return elements, 4 * (-(-elements // _FI_GROUP))
    if algorithm == "trtllm-fp8":
        return elements, _TRT_SCALE_BYTES * (-(-elements // _TRT_GROUP))
    raise ValueError(f"unknown peer algorithm {algorithm!r}; use one of {PEER_ALGORITHMS}")


def peer_link_bytes(algorithm: str, n_ranks: int, n: int):
    """Per-rank (up_payload, up_scale, down_payload, down_scale) tuples of one call.

    Phase 1: rank i sends every other owner's segment (quantized) up, and receives its
    own segment from N-1 peers. Phase 2: the owner sends its requantized segment to
    N-1 peers, and receives every other segment. Up and down are therefore equal.
    """
    if n_ranks == 1:
        return (0,), (0,), (0,), (0,)
    wires = [peer_wire(algorithm, e) for _, e in peer_segments(n, algorithm, n_ranks)]
    total = [sum(w[part] for w in wires) for part in (0, 1)]
    per_rank = [
        tuple(total[part] - w[part] + (n_ranks - 1) * w[part] for part in (0, 1)) for w in wires
    ]
    pay = tuple(p for p, _ in per_rank)
    scale = tuple(s for _, s in per_rank)
    return pay, scale, pay, scale


def check_peer_input(algorithm: str, x) -> None:
    """ValueError when the scheme does not take ``x``'s dtype (flashinfer: bf16 only)."""
    if algorithm == "flashinfer-fp8" and jnp.dtype(x.dtype) != jnp.dtype(jnp.bfloat16):
        raise ValueError(
            f"flashinfer-fp8 takes bfloat16 input only (as FlashInfer's kernel), got "
            f"{jnp.dtype(x.dtype)}; cast with x.astype(jnp.bfloat16) or use another collective"
        )


# ---------------------------------------------------------------- float16 (QuickReduce)


def _f16(v: jnp.ndarray) -> jnp.ndarray:
    """float32 -> float16 RNE; a finite value beyond the range saturates to +-65504."""
    sat = jnp.clip(v, -_F16_MAX, _F16_MAX)
    return jnp.where(jnp.isfinite(v), sat, v).astype(jnp.float16)


def _f(h: jnp.ndarray) -> jnp.ndarray:
    return h.astype(jnp.float32)


def _qr_quantize(h: jnp.ndarray, bits: int):
    """float16 ``[units * 64]`` -> codes (integer-valued float16, NaN possible)
    ``[units, 32, 2]`` and decoding scales ``D`` float16 ``[units, 1, 2]``.

    Block (u, p) holds elements 64u + 2k + p (p = 0 even, 1 odd).
    """
    v = _f(h).reshape(-1, 32, 2)
    mag = jnp.abs(v)
    a = jnp.max(mag, axis=1, keepdims=True)
    neg = jnp.any((mag == a) & jnp.signbit(v), axis=1, keepdims=True)
    nan = jnp.any(jnp.isnan(v), axis=1, keepdims=True)
    m = jnp.where(nan, jnp.nan, jnp.where(neg, -a, a))  # signed extreme, negative on a tie
    d = _f16(m * -(2.0 ** -(bits - 1)))
    e = _f16(1.0 / _f(_f16(_f(d) + 2.0**-24)))
    w = _f16(v * _f(e))
    lo, hi = -(2.0 ** (bits - 1)), 2.0 ** (bits - 1) - 1
    q = jnp.round(jnp.clip(_f(w), lo, hi))  # RNE; NaN stays NaN
    q = jnp.where(q == 0, 0.0, q)  # an integer code has no sign: -0 -> +0
    return q.astype(jnp.float16), d


def _qr_dequantize(q: jnp.ndarray, d: jnp.ndarray) -> jnp.ndarray:
    """codes ``[..., 32, 2]`` and scales ``[..., 1, 2]`` -> float16 ``[..., units * 64]``."""
    out = _f16(_f(q) * _f(d))
    return out.reshape(*out.shape[:-3], -1)


def _quickreduce(flat, gather, n_ranks: int, bits: int):
    v = to_f32(flat) if flat.dtype != jnp.float16 else _f(flat)
    h = _f16(v)
    q, d = _qr_quantize(h, bits)
    qs, ds = gather(q), gather(d)  # [N, units, 32, 2], [N, units, 1, 2]
    contributions = _qr_dequantize(qs, ds)  # float16 [N, units*64]
    acc = contributions[0]
    for i in range(1, n_ranks):
        acc = _f16(_f(acc) + _f(contributions[i]))
    q2, d2 = _qr_quantize(acc, bits)
    return _qr_dequantize(q2, d2)  # float16, identical on every rank


# ------------------------------------------------------------------------ e4m3 groups


def _e4m3_sat(v: jnp.ndarray) -> jnp.ndarray:
    """float32 -> float8_e4m3fn, RNE, saturating at +-448 (+-Inf too); NaN stays NaN."""
    return jnp.clip(v, -_E4M3_MAX, _E4M3_MAX).astype(jnp.float8_e4m3fn)


def _nan_max_abs(blocks: jnp.ndarray) -> jnp.ndarray:
    """max |v| over the last axis, NaN when any element is NaN (IEEE maximum)."""
    a = jnp.max(jnp.abs(blocks), axis=-1, keepdims=True)
    return jnp.where(jnp.any(jnp.isnan(blocks), axis=-1, keepdims=True), jnp.nan, a)


def _fi_quantize(v: jnp.ndarray):
    """float32 ``[groups * 256]`` -> e4m3 codes ``[groups, 256]``, float32 ``s`` ``[groups, 1]``."""
    g = v.reshape(-1, _FI_GROUP)
    a = jnp.maximum(_nan_max_abs(g), jnp.float32(1e-12))
    s = exact_div(a, _E4M3_MAX)
    r = exact_div(jnp.full_like(a, _E4M3_MAX), a)
    q = _e4m3_sat(ftz(g * r))
    return q, s


def _fi_dequantize(q: jnp.ndarray, s: jnp.ndarray) -> jnp.ndarray:
    out = ftz(q.astype(jnp.float32) * s)
    return out.reshape(*out.shape[:-2], -1)


def _trt_quantize(v: jnp.ndarray):
    """float32 ``[groups * 496]`` -> e4m3 codes ``[groups, 496]``, quant scale ``[groups, 1]``."""
    g = v.reshape(-1, _TRT_GROUP)
    a = jnp.max(jnp.where(jnp.isnan(g), 0.0, jnp.abs(g)), axis=-1, keepdims=True)  # fmaxf
    unscaled = (a == 0) | jnp.isinf(a)
    s = jnp.where(unscaled, 0.0, exact_div(jnp.full_like(a, _E4M3_MAX), jnp.where(unscaled, 1, a)))
    q = _e4m3_sat(jnp.where(unscaled, g, ftz(g * s)))
    return q, s


def _trt_dequantize(q: jnp.ndarray, s: jnp.ndarray) -> jnp.ndarray:
    c = q.astype(jnp.float32)
    unscaled = s == 0
    out = jnp.where(unscaled, c, exact_div(c, jnp.where(unscaled, 1.0, s)))
    return out.reshape(*out.shape[:-2], -1)


def _flashinfer(flat, gather, n_ranks: int, rank, segments):
    v = to_f32(flat)
    q, s = _fi_quantize(v)
    contributions = _fi_dequantize(gather(q), gather(s))  # float32 [N, padded]
    # 0.0 + c_0 + ... + c_{N-1}. XLA folds a literal `0.0 + c_0` into `c_0`, which keeps
    # a -0; written out: +0.0 + c_0 is c_0 with -0 turned into +0 (c_0 is already flushed).
    acc = jnp.where(contributions[0] == 0, jnp.float32(0.0), contributions[0])
    for i in range(1, n_ranks):
        acc = ftz(acc + contributions[i])
    q2, s2 = _fi_quantize(acc)
    others = _fi_dequantize(q2, s2).astype(jnp.bfloat16)
    index = lax.iota(jnp.int32, acc.shape[0])
    starts = jnp.asarray([st for st, _ in segments], jnp.int32)[rank]
    ends = jnp.asarray([st + e for st, e in segments], jnp.int32)[rank]
    own = (index >= starts) & (index < ends)
    return jnp.where(own, acc.astype(jnp.bfloat16), others)  # the owner keeps bf16(sum)


def _trtllm(flat, gather, n_ranks: int):
    v = to_f32(flat)
    q, s = _trt_quantize(v)
    contributions = _trt_dequantize(gather(q), gather(s))  # float32 [N, padded]
    parts, start = [], 0
    # segments in padded coordinates: only the buffer's last unit carries padding
    for owner, count in enumerate(chunk_sizes(q.shape[0], n_ranks)):
        width = count * _TRT_GROUP
        if width == 0:
            continue
        piece = contributions[:, start : start + width]
        start += width
        acc = piece[owner]
        for k in range(1, n_ranks):  # owner, owner+1, ..., owner-1 (mod N)
            acc = ftz(acc + piece[(owner + k) % n_ranks])
        parts.append(acc)
    total = jnp.concatenate(parts)
    q2, s2 = _trt_quantize(total)
    return _trt_dequantize(q2, s2)


def peer_allreduce(x: jnp.ndarray, axis_name, n_ranks: int, algorithm: str) -> jnp.ndarray:
    """One rank's view of a peer All-Reduce: its buffer ``x`` in, the result out (same shape
    and dtype). QuickReduce and TRT-LLM give every rank the same bits; FlashInfer's owner
    keeps bf16 of its unquantized sum on its own segment (rank-dependent bits)."""
    check_peer_input(algorithm, x)
    shape, dtype = x.shape, x.dtype
    flat = x.reshape(-1)
    n = flat.shape[0]
    if n == 0:
        return x
    unit = peer_unit(algorithm)
    padded = -(-n // unit) * unit
    flat = jnp.pad(flat, (0, padded - n))  # +0 padding never changes a block's scale

    def gather(a):
        return lax.all_gather(a, axis_name)

    if algorithm in _QR_BITS:
        out = _quickreduce(flat, gather, n_ranks, _QR_BITS[algorithm])
    elif algorithm == "flashinfer-fp8":
        segments = peer_segments(n, algorithm, n_ranks)
        out = _flashinfer(flat, gather, n_ranks, lax.axis_index(axis_name), segments)
    else:
        out = _trtllm(flat, gather, n_ranks)
    return out[:n].astype(dtype).reshape(shape)
