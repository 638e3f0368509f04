"""Block-wise quantize / dequantize, bit for bit as spec/formats.md defines them."""

from __future__ import annotations

import dataclasses
import math

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

from scinjax._fusion import hoist
from scinjax.formats._f32 import INPUT_DTYPES, check_float_input, exact_div, ftz, to_f32
from scinjax.formats._fp import e8m0_floor_scales, e8m0_values, fp_dequantize, fp_quantize
from scinjax.formats._spec import CastFormat, Format, FpFormat, IntFormat, get
from scinjax.formats._ste import ste_dequantize, ste_quantize

__all__ = ["QArray", "quantize", "dequantize", "wire_bytes"]


@jax.tree_util.register_dataclass
@dataclasses.dataclass(frozen=True)
class QArray:
    """A quantized array.

    codes: int8 ``[..., H]`` for int formats; for fp formats the element's type
      (float8_e4m3fn, float8_e5m2, float4_e2m1fn; uint8 bit patterns for the float6
      elements); the cast values for plain formats.
    scales: ``[..., ceil(H / B)]`` in the format's scale dtype (``None`` for plain formats).
    fmt: the format (static pytree metadata).
    tensor_scale: nv's float32 ``T_dec``, one per quantize call (``[]``; leading batch axes
      added by e.g. ``all_gather`` broadcast over ``codes``' leading axes); None otherwise.
    """

    codes: jax.Array
    scales: jax.Array | None
    fmt: Format = dataclasses.field(metadata=dict(static=True))
    # the quantized input, kept by quantize(ste=True) for straight-through gradients only
    source: jax.Array | None = None
    tensor_scale: jax.Array | None = None

    @property
    def shape(self) -> tuple[int, ...]:
        return self.codes.shape


def wire_bytes(shape, fmt: str | Format) -> tuple[int, int]:
    """(payload_bytes, scale_bytes) of an array of ``shape`` on the wire, as Python ints."""
    return get(fmt).wire_bytes(tuple(shape))


def _to_blocks(v: jnp.ndarray, block: int) -> jnp.ndarray:
    """``[..., H]`` -> ``[..., nb, block]``, zero-padding a short final block."""
    h = v.shape[-1]
    nb = math.ceil(h / block)
    if nb * block != h:
        v = jnp.pad(v, [(0, 0)] * (v.ndim - 1) + [(0, nb * block - h)])
    return v.reshape(v.shape[:-1] + (nb, block))


def _from_blocks(vb: jnp.ndarray, h: int) -> jnp.ndarray:
    """``[..., nb, block]`` -> ``[..., H]`` (drops the padding of a short final block)."""
    v = vb.reshape(vb.shape[:-2] + (vb.shape[-2] * vb.shape[-1],))
    return v if v.shape[-1] == h else v[..., :h]


def _int_scales(a: jnp.ndarray, poisoned: jnp.ndarray, fmt: IntFormat):
    """Stored scales and their flushed float32 values ``S`` for block amax ``a`` (float32)."""
    if fmt.scale_dtype == "e8m0":  # emax of an int element: its largest code is < 2**(bits-1)
        return e8m0_floor_scales(a, poisoned, fmt.bits - 2)
    sdtype = fmt.jax_scale_dtype
    cast = exact_div(a, float(fmt.qmax)).astype(sdtype)
    # saturate: a finite block never yields an infinite scale
    cast = jnp.where(jnp.isinf(cast), jnp.finfo(sdtype).max.astype(sdtype), cast)
    stored = jnp.where(poisoned, jnp.asarray(jnp.nan, sdtype), cast)
    return stored, to_f32(stored)


def _scale_values(scales: jnp.ndarray, fmt: IntFormat) -> jnp.ndarray:
    """Float32 ``S`` (flushed; NaN for poisoned blocks) of stored scales."""
    if fmt.scale_dtype == "e8m0":
        return e8m0_values(scales)
    return to_f32(scales)


def _round(r: jnp.ndarray, fmt: IntFormat, noise: jnp.ndarray | None) -> jnp.ndarray:
    if fmt.rounding == "nearest_even":
        return lax.round(r, lax.RoundingMethod.TO_NEAREST_EVEN)
    if fmt.rounding == "nearest_away":
        return lax.round(r, lax.RoundingMethod.AWAY_FROM_ZERO)
    return jnp.floor(ftz(r + noise))


def _stochastic_noise(x, fmt: Format, key, noise):
    if not fmt.stochastic:
        if key is not None or noise is not None:
            raise ValueError(
                f"format {fmt.name} rounds deterministically; key/noise are only for "
                "rounding='stochastic'"
            )
        return None
    if (key is None) == (noise is None):
        raise ValueError(
            "stochastic rounding needs exactly one of key=jax.random.key(...) or "
            "noise=<float32 array in [0, 1) of x's shape>"
        )
    if noise is None:
        return jax.random.uniform(key, x.shape, jnp.float32)
    noise = jnp.asarray(noise)
    if noise.shape != x.shape or noise.dtype != jnp.float32:
        raise ValueError(
            f"noise must be float32 of shape {x.shape}, got {noise.dtype}{list(noise.shape)}"
        )
    if not isinstance(noise, jax.core.Tracer):  # traced noise cannot be inspected here
        u = np.asarray(noise)
        outside = ~((u >= 0) & (u < 1))  # NaN counts as outside
        if outside.any():
            bad = u[outside].flat[0]
            raise ValueError(
                f"noise must lie in [0, 1) (spec/formats.md), got {bad!r} at index "
                f"{tuple(int(i) for i in np.argwhere(outside)[0])}; use jax.random.uniform"
            )
    return noise


@ste_quantize
def quantize(x, fmt: str | Format, *, key=None, noise=None) -> QArray:
    """Quantize ``x`` ``[..., H]`` (bf16/f16/f32) into ``fmt`` exactly as spec/formats.md says.

    Returns ``QArray(codes [..., H] int8, scales [..., ceil(H/B)], fmt)``; for a plain
    format, ``codes`` is the RNE cast and ``scales`` is None. Stochastic rounding takes a
    PRNG ``key`` (noise ``uniform(key, x.shape)``) or caller ``noise`` in [0, 1).
    """
    fmt = get(fmt)
    check_float_input(x, "quantize")
    x = jnp.asarray(x)
    if x.ndim == 0:
        raise ValueError("quantize needs an array with at least one axis; got a 0-d array")
    u = _stochastic_noise(x, fmt, key, noise)
    v = to_f32(x)
    if isinstance(fmt, CastFormat):
        return QArray(v.astype(fmt.dtype), None, fmt)
    h = x.shape[-1]
    vb = _to_blocks(v, fmt.block_size)  # [..., nb, B]
    # One integer reduction gives both amax and poisoning: for |v| the float order is the
    # order of the bit patterns, and NaN/Inf are exactly the patterns >= 0x7F800000.
    magnitude = lax.bitcast_convert_type(vb, jnp.uint32) & jnp.uint32(0x7FFFFFFF)
    amax_bits = jnp.max(magnitude, axis=-1)  # [..., nb]
    poisoned = amax_bits >= jnp.uint32(0x7F800000)
    a = jnp.where(poisoned, 0.0, lax.bitcast_convert_type(amax_bits, jnp.float32))
    ub = None if u is None else _to_blocks(u, fmt.block_size)
    if isinstance(fmt, FpFormat):
        codes, stored, t_dec = fp_quantize(vb, a, poisoned, fmt, ub)
        return QArray(_from_blocks(codes, h), stored, fmt, tensor_scale=t_dec)
    stored, s32 = _int_scales(a, poisoned, fmt)
    dead = poisoned | (s32 == 0)  # codes are all 0
    divisor, dead = hoist((jnp.where(dead, 1.0, s32), dead), v.size)
    sb = divisor[..., None]
    # RNE/away of a subnormal quotient is a zero code either way, so only stochastic
    # rounding needs the flushed quotient (the flush keeps XLA from fusing the division)
    r = exact_div(vb, sb, flush=fmt.stochastic)
    q = jnp.clip(_round(r, fmt, ub), -fmt.qmax, fmt.qmax)
    q = jnp.where(dead[..., None], 0.0, q).astype(jnp.int8)
    return QArray(_from_blocks(q, h), stored, fmt)


@ste_dequantize
def dequantize(q: QArray, dtype=jnp.float32) -> jax.Array:
    """``f32(code) * S`` (flushed), then RNE to ``dtype``; poisoned blocks give NaN.

    q.codes ``[..., H]`` -> ``[..., H]`` of ``dtype``.
    """
    if not isinstance(q, QArray):
        raise TypeError(f"dequantize needs a QArray from scinjax.quantize, got {type(q).__name__}")
    if jnp.dtype(dtype) not in INPUT_DTYPES:
        raise TypeError(
            f"dequantize returns bfloat16, float16 or float32, got dtype={jnp.dtype(dtype).name}; "
            "dequantize to float32, then cast"
        )
    fmt = q.fmt
    if isinstance(fmt, CastFormat):
        return to_f32(q.codes).astype(dtype)
    h = q.codes.shape[-1]
    if isinstance(fmt, FpFormat):
        t_dec = q.tensor_scale
        if t_dec is not None:  # [lead...] -> [lead..., 1, 1] against [..., nb, B]
            t_dec = t_dec.reshape(t_dec.shape + (1,) * (q.codes.ndim + 1 - t_dec.ndim))
        y = fp_dequantize(_to_blocks(q.codes, fmt.block_size), q.scales, fmt, t_dec)
        return _from_blocks(y.astype(dtype), h)
    s32 = hoist(_scale_values(q.scales, fmt), q.codes.size)[..., None]  # [..., nb, 1]
    codes = _to_blocks(q.codes.astype(jnp.float32), fmt.block_size)
    # |code| >= 1 times a normal S is never subnormal, but the flush must stay: without it
    # XLA:CPU contracts this multiply with a following add into an FMA (changes sums' bits)
    return _from_blocks(ftz(codes * s32).astype(dtype), h)
