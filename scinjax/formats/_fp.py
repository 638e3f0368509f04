"""The ``fp`` family: minifloat elements with block scales, bit for bit as spec/formats.md.

Everything that decides a bit is integer work on float32 bit patterns or an exact float32
operation (a multiply by a power of two, a floor, an RNE round of a value < 2**24), so
the result does not depend on the backend's denormal mode or on XLA's rewrites.
"""

from __future__ import annotations

import dataclasses
import math

import jax.numpy as jnp
import numpy as np
from jax import lax

from scinjax._fusion import hoist
from scinjax.formats._f32 import exact_div, ftz, to_f32
from scinjax.formats._spec import FpFormat

__all__ = ["Element", "ELEMENTS", "fp_quantize", "fp_dequantize", "decode_codes"]

_F32_MAX = float(np.finfo(np.float32).max)
_F32_MIN_NORMAL_BITS = 0x00800000  # 2**-126, the smallest normal float32
_E8M0_NAN = 0xFF
_BIAS = 127


@dataclasses.dataclass(frozen=True)
class Element:
    """One minifloat type: sign, ``ebits`` exponent bits (``bias``), ``mbits`` mantissa bits."""

    ebits: int
    mbits: int
    bias: int
    max_code: int  # sign-less code of the largest finite magnitude M
    dtype: object  # the dtype of QArray.codes (uint8 where JAX cannot hold the type)
    np_dtype: object  # the ml_dtypes type of the element (for decoding tables)

    @property
    def bits(self) -> int:
        return 1 + self.ebits + self.mbits

    @property
    def emin(self) -> int:
        """Exponent of the smallest normal (the subnormal binade shares its spacing)."""
        return 1 - self.bias

    @property
    def max_value(self) -> float:
        """M, the largest finite magnitude."""
        return float(_decode_magnitude(self, self.max_code))

    @property
    def emax(self) -> int:
        """Exponent of M (emax_elem of OCP MX)."""
        return math.floor(math.log2(self.max_value))


def _decode_magnitude(el: Element, code: int) -> float:
    """Value of a sign-less code (closed form, used to build tables)."""
    e, m = code >> el.mbits, code & ((1 << el.mbits) - 1)
    if e == 0:
        return m * 2.0 ** (el.emin - el.mbits)
    return (1 + m / 2**el.mbits) * 2.0 ** (e - el.bias)


ELEMENTS = {
    "e4m3": Element(4, 3, 7, 0x7E, jnp.float8_e4m3fn, jnp.float8_e4m3fn),
    "e5m2": Element(5, 2, 15, 0x7B, jnp.float8_e5m2, jnp.float8_e5m2),
    "e3m2": Element(3, 2, 3, 0x1F, jnp.uint8, jnp.float6_e3m2fn),
    "e2m3": Element(2, 3, 1, 0x1F, jnp.uint8, jnp.float6_e2m3fn),
    "e2m1": Element(2, 1, 1, 0x07, jnp.float4_e2m1fn, jnp.float4_e2m1fn),
}


def _f32_const(v: float) -> float:
    """The float32 value nearest ``v`` as a Python float."""
    return float(np.float32(v))


def _f32_bits(v: float) -> int:
    """The bit pattern of the float32 nearest ``v``."""
    return int(np.float32(v).view(np.uint32))


def _recip(m: float) -> float:
    """f32(1 / m): the correctly rounded float32 reciprocal (an IEEE float32 division)."""
    return float(np.float32(1.0) / np.float32(m))


def _floor_log2(a: jnp.ndarray) -> jnp.ndarray:
    """Exact ``floor(log2(a))`` (int32) for float32 ``a > 0`` from its bits (subnormals too)."""
    bits = lax.bitcast_convert_type(a, jnp.uint32)
    biased = (bits >> 23).astype(jnp.int32) & 0xFF
    mantissa = bits & jnp.uint32(0x7FFFFF)
    subnormal_log2 = 31 - lax.clz(mantissa).astype(jnp.int32) - 149
    return jnp.where(biased > 0, biased - _BIAS, subnormal_log2)


def _pow2(e: jnp.ndarray) -> jnp.ndarray:
    """Float32 ``2**e`` for int32 ``e``; below 2**-126 it is 0 (flush-to-zero), e <= 127."""
    bits = (jnp.clip(e, -126, 127) + _BIAS).astype(jnp.uint32) << 23
    return jnp.where(e < -126, 0.0, lax.bitcast_convert_type(bits, jnp.float32))


def _pow2_exact(e: jnp.ndarray) -> jnp.ndarray:
    """Float32 ``2**e`` for int32 ``e`` in [-126, 127] (normal range only)."""
    return lax.bitcast_convert_type((e + _BIAS).astype(jnp.uint32) << 23, jnp.float32)


def e8m0_values(scales: jnp.ndarray) -> jnp.ndarray:
    """Float32 ``2**(code - 127)`` of float8_e8m0fnu scales, flushed (code 0 gives 0);
    NaN for the NaN code. The code shifted into float32's exponent field is the value."""
    code = lax.bitcast_convert_type(scales, jnp.uint8).astype(jnp.uint32)
    power = lax.bitcast_convert_type(code << 23, jnp.float32)
    return jnp.where(code == _E8M0_NAN, jnp.nan, power)


def _e8m0(e: jnp.ndarray, poisoned: jnp.ndarray):
    """Stored e8m0 scales (NaN code for poisoned blocks) and their flushed float32 values."""
    code = jnp.where(poisoned, _E8M0_NAN, e + _BIAS).astype(jnp.uint8)
    stored = lax.bitcast_convert_type(code, jnp.float8_e8m0fnu)
    return stored, jnp.where(poisoned, jnp.nan, _pow2(e))


def e8m0_floor_scales(a: jnp.ndarray, poisoned: jnp.ndarray, emax: int):
    """OCP MX scales ``2**(floor(log2 a) - emax)`` (clamped, NaN code where poisoned) of
    block amaxes ``a`` ``[..., nb]``: (stored e8m0 scales, their flushed float32 values)."""
    e = jnp.where(a > 0, _floor_log2(a) - emax, -_BIAS)
    return _e8m0(jnp.clip(e, -_BIAS, _BIAS), poisoned)


def _block_scales(a, poisoned, fmt: FpFormat, el: Element, t_enc):
    """(stored scales, S) for block amax ``a`` ``[..., nb]`` (float32, 0 for poisoned)."""
    big_m = el.max_value
    if fmt.scale == "e8m0_floor":
        return e8m0_floor_scales(a, poisoned, el.emax)
    if fmt.scale == "e8m0_rceil":
        d = ftz(a * _recip(big_m))
        bits = lax.bitcast_convert_type(d, jnp.uint32)
        ceil_log2 = _floor_log2(d) + ((bits & jnp.uint32(0x7FFFFF)) != 0).astype(jnp.int32)
        e = jnp.where(d > 0, ceil_log2, -_BIAS)
        return _e8m0(jnp.clip(e, -_BIAS, _BIAS), poisoned)
    if fmt.scale == "nv":
        c = ftz(t_enc * _recip(big_m))  # f32(T_enc * f32(1/M)), a scalar
        # e4m3_sat(a * c): RNE, saturating at 448, subnormals kept (the integer code path:
        # XLA:CPU's float32 -> float8 cast is slow); poisoned blocks get the NaN code 0x7F
        e4m3 = ELEMENTS["e4m3"]
        code = jnp.where(poisoned, jnp.uint8(0x7F), _to_codes(a * c, e4m3, None))
        return lax.bitcast_convert_type(code, jnp.float8_e4m3fn), _decode_bits(code, e4m3)
    sdtype = jnp.dtype(fmt.scale)
    cast = exact_div(a, big_m).astype(sdtype)
    cast = jnp.where(jnp.isinf(cast), jnp.finfo(sdtype).max.astype(sdtype), cast)
    stored = jnp.where(poisoned, jnp.asarray(jnp.nan, sdtype), cast)
    return stored, to_f32(stored)


def _tensor_scale(a: jnp.ndarray, el: Element):
    """nv's (T_enc, T_dec) from the block amaxes ``a`` of the whole array (0 where poisoned,
    so poisoned blocks are skipped)."""
    g = jnp.max(a, initial=0.0)
    t_enc = exact_div(jnp.float32(448.0 * el.max_value), jnp.where(g > 0, g, 1.0))
    t_enc = jnp.where(jnp.isinf(t_enc), _F32_MAX, t_enc)  # saturate at the float32 maximum
    t_enc = jnp.where((g == 0) | (t_enc == 0), 1.0, t_enc)
    return t_enc, exact_div(jnp.float32(1.0), t_enc)


def _to_codes(r: jnp.ndarray, el: Element, u: jnp.ndarray | None) -> jnp.ndarray:
    """Sign-magnitude element codes (uint8) of float32 ``r``: RNE or stochastic, saturating.

    The magnitude is capped at 2M (the result saturates to M either way, and every
    exponent stays in range), then rounded onto the element's grid: in the binade of
    ``e = max(floor(log2|r|), emin)`` the element values are the multiples of
    ``q = 2**(e - mbits)``. Magnitudes below 2**-126 give code 0 (flushed).
    """
    bits = lax.bitcast_convert_type(r, jnp.uint32)
    sign = (bits >> 31).astype(jnp.uint8)
    magnitude_bits = jnp.minimum(bits & jnp.uint32(0x7FFFFFFF), _f32_bits(2.0 * el.max_value))
    if u is None:
        code = _nearest_code(magnitude_bits, el)
    else:
        magnitude_bits = jnp.where(
            magnitude_bits < jnp.uint32(_F32_MIN_NORMAL_BITS), jnp.uint32(0), magnitude_bits
        )
        mag = lax.bitcast_convert_type(magnitude_bits, jnp.float32)
        code = _stochastic_code(mag, sign, el, u)
    code = jnp.minimum(code, el.max_code).astype(jnp.uint8)
    return code | (sign << (el.bits - 1))


def _nearest_code(magnitude_bits, el: Element) -> jnp.ndarray:
    """Sign-less code (int32) of RNE of float32 magnitudes (bits, <= 2M) onto the grid.

    With ``c = 2**(e + 23 - mbits)``, ``mag + c`` lies in ``[c, 2c]``, where float32's
    spacing is exactly ``q``: the add rounds ``mag`` to ``k * q`` with ties to even (the
    sum's last bit is ``k``'s parity; a magnitude below 2**-126 rounds to ``k = 0``
    whatever the denormal mode), and ``k`` is the sum's bits minus ``c``'s. The code is
    ``(e + bias - 1) * 2**mbits + k`` in every binade, subnormal elements included
    (``e = emin``), and ``k = 2**(mbits + 1)`` carries into the next binade. One float add
    and integer work instead of a log2, a scaling, a round and a decode of the result.
    """
    exponent_bits = jnp.maximum(
        magnitude_bits & jnp.uint32(0x7F800000), jnp.uint32((el.emin + _BIAS) << 23)
    )
    c_bits = exponent_bits + jnp.uint32((23 - el.mbits) << 23)
    mag = lax.bitcast_convert_type(magnitude_bits, jnp.float32)
    total = mag + lax.bitcast_convert_type(c_bits, jnp.float32)
    k = lax.bitcast_convert_type(total, jnp.uint32) - c_bits
    binade = (exponent_bits >> (23 - el.mbits)) - jnp.uint32((_BIAS - el.bias + 1) << el.mbits)
    return (binade + k).astype(jnp.int32)


def _stochastic_code(mag, sign, el: Element, u: jnp.ndarray) -> jnp.ndarray:
    """Sign-less code (int32) of stochastic rounding (spec/formats.md) of magnitudes ``mag``.

    With ``e = max(floor(log2 mag), emin)`` the neighbours are multiples ``k`` of
    ``q = 2**(e - mbits)``, so ``t = mag / q`` is exact, and the code is
    ``(e - emin) * 2**mbits + k`` (a carry to the next binade is that same formula).
    """
    e = jnp.where(mag > 0, jnp.maximum(_floor_log2(mag), el.emin), el.emin)
    t = mag * _pow2_exact(el.mbits - e)  # exact: a power-of-two multiply in normal range
    fl = jnp.floor(t)
    f = t - fl  # exact: the fraction of a float32
    # r >= 0: up to the larger magnitude iff u < f. r < 0: "hi" is the smaller
    # magnitude, taken iff u < 1 - f, decided exactly: 1 - u (u >= 1/2) and 1 - f
    # (f >= 1/2) are exact (Sterbenz), and u + f < 1 when both are below 1/2.
    toward_zero = jnp.where(u >= 0.5, f < 1.0 - u, (f < 0.5) | (u < 1.0 - f))
    up = jnp.where(sign == 1, ~toward_zero, u < f)
    k = fl + up.astype(jnp.float32)
    return (e - el.emin) * (1 << el.mbits) + k.astype(jnp.int32)


def _decode_bits(code: jnp.ndarray, el: Element) -> jnp.ndarray:
    """Float32 values of uint8 sign-magnitude bit patterns (exact integer work, no table).

    A normal element's exponent and mantissa fields, shifted into float32's, need only
    the bias difference added; a subnormal one is ``mantissa * 2**(emin - mbits)``.
    """
    c = code.astype(jnp.int32)
    magnitude_code = c & ((1 << (el.bits - 1)) - 1)
    normal = lax.bitcast_convert_type(
        (magnitude_code << (23 - el.mbits)) + ((_BIAS - el.bias) << 23), jnp.float32
    )
    subnormal = magnitude_code.astype(jnp.float32) * _f32_const(2.0 ** (el.emin - el.mbits))
    mag = jnp.where(magnitude_code >= (1 << el.mbits), normal, subnormal)
    if el.max_code == 0x7E:  # e4m3 ("fn"): S.1111.111 is NaN, there is no Inf
        mag = jnp.where(magnitude_code > el.max_code, jnp.nan, mag)
    elif el.max_code == 0x7B:  # e5m2: exponent field 31 is Inf (mantissa 0) or NaN
        special = jnp.where(magnitude_code == 0x7C, jnp.inf, jnp.nan)
        mag = jnp.where(magnitude_code > el.max_code, special, mag)
    sign = (c >> (el.bits - 1)) << 31
    return lax.bitcast_convert_type(lax.bitcast_convert_type(mag, jnp.int32) | sign, jnp.float32)


def decode_codes(codes: jnp.ndarray, el: Element) -> jnp.ndarray:
    """Float32 values of element codes (any of ``QArray.codes``' dtypes)."""
    if codes.dtype == jnp.uint8:
        return _decode_bits(codes, el)
    # float8: XLA:CPU's float8 -> float32 convert is slower than this integer decode;
    # float4: bit-cast to uint4 and widened, an elementwise op XLA fuses with the
    # quantizer that produced the codes (no float4 array is written in a round trip)
    bits = lax.bitcast_convert_type(codes, jnp.uint8 if el.bits == 8 else jnp.uint4)
    return _decode_bits(bits.astype(jnp.uint8), el)


def _store(code: jnp.ndarray, el: Element) -> jnp.ndarray:
    """uint8 sign-magnitude codes -> QArray.codes' dtype (the same bits).

    float4 goes through uint4, elementwise: packing the bytes ourselves forces the codes
    to be written (measured slower in round trips and collectives, benchmarks/).
    """
    if el.dtype == jnp.uint8:
        return code
    narrow = code if el.bits == 8 else code.astype(jnp.uint4)
    return lax.bitcast_convert_type(narrow, el.dtype)


def fp_quantize(vb, magnitude_max, poisoned, fmt: FpFormat, ub, t_scale=None):
    """Codes ``[..., nb, B]``, stored scales ``[..., nb]`` and nv's float32 ``T_dec``.

    ``vb``: float32 blocks (flushed); ``magnitude_max``: block amax (0 where poisoned);
    ``ub``: noise blocks or None. ``t_scale``: nv's (T_enc, T_dec) broadcastable to
    ``[..., nb]`` (None: one tensor scale for the whole array).
    """
    el = ELEMENTS[fmt.element]
    a = magnitude_max
    t_dec = None
    if fmt.scale == "nv":
        t_enc, t_dec = _tensor_scale(a, el) if t_scale is None else t_scale
        stored, _ = _block_scales(a, poisoned, fmt, el, t_enc)
        # Everything per block follows from the stored e4m3 code, written once (a decode
        # XLA computes once per block inside the block-shaped loop of the codes): the
        # block is dead iff its scale is NaN (poisoned) or S flushes to 0
        stored = hoist(stored, vb.size)
        s32 = ftz(scale_values(stored, fmt) * t_dec)  # NaN for a poisoned block
        dead = jnp.isnan(s32) | (s32 == 0)
        # TensorRT/TE order: multiply by min(f32(1 / S), float32 max)
        m = jnp.minimum(exact_div(jnp.float32(1.0), jnp.where(dead, 1.0, s32)), _F32_MAX)
        r = vb * m[..., None]
    elif fmt.scale.startswith("e8m0"):
        # Everything per block follows from the stored code c = e + 127, written once: the
        # block is dead iff c is 0 (S flushes to 0) or 255 (NaN), and v / 2**e equals
        # v * 2**-e exactly (same real number, one RNE), 2**-e = bits((254 - c) << 23)
        # a normal float32 for a live block (e in [-126, 125]): a multiply, cheaper
        stored, _ = _block_scales(a, poisoned, fmt, el, None)
        stored = hoist(stored, vb.size)
        code = lax.bitcast_convert_type(stored, jnp.uint8).astype(jnp.uint32)
        dead = (code == 0) | (code == _E8M0_NAN)
        inv = lax.bitcast_convert_type((jnp.uint32(254) - code) << 23, jnp.float32)
        r = vb * inv[..., None]
    else:
        stored, s32 = _block_scales(a, poisoned, fmt, el, None)
        dead = poisoned | (s32 == 0)  # codes are all +0
        divisor = hoist(jnp.where(dead, 1.0, s32), vb.size)
        r = exact_div(vb, divisor[..., None], flush=False)
    code = _to_codes(r, el, ub)
    code = jnp.where(dead[..., None], jnp.uint8(0), code)
    return _store(code, el), stored, t_dec


def scale_values(scales: jnp.ndarray, fmt: FpFormat, t_dec=None) -> jnp.ndarray:
    """Float32 ``S`` per block (NaN for poisoned blocks); nv needs ``T_dec`` broadcastable."""
    if fmt.scale.startswith("e8m0"):
        return e8m0_values(scales)
    if fmt.scale == "nv":  # e4m3 block scales (never subnormal in float32)
        return decode_codes(scales, ELEMENTS["e4m3"])
    return to_f32(scales)


def fp_dequantize(codes_b, scales, fmt: FpFormat, t_dec=None) -> jnp.ndarray:
    """Float32 ``[..., nb, B]`` from code blocks, stored scales ``[..., nb]`` and nv's T_dec."""
    el = ELEMENTS[fmt.element]
    values = decode_codes(codes_b, el)
    s = hoist(scale_values(scales, fmt), codes_b.size)[..., None]
    if fmt.scale == "nv":  # (f32(q) * f32(s_b)) * T_dec
        return ftz(ftz(values * s) * t_dec)
    return ftz(values * s)
