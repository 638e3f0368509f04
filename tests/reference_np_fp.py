"""Independent NumPy reference of the `fp` format family and the peer All-Reduce schemes.

Written from ``docs/spec/formats.md`` (section "Family `fp`", presets),
``docs/spec/peers.md``, ``docs/spec/collectives.md`` and ``docs/semantics.md`` only,
never from the JAX implementation. Float32 arithmetic is NumPy's IEEE binary32 (RNE) followed
by the spec's flush-to-zero on the integer bits (helpers reused from :mod:`reference_np`).
Float16 arithmetic (QuickReduce) is done exactly in float64 and rounded once to float16,
which is correctly rounded for + and * (exact in float64) and for / (53 >= 2*11 + 2).

Element conversion (RNE, stochastic, saturation) is written here on an explicit table of each
element type's finite values; ``ml_dtypes`` is used only to cross-check that table and in
the self-tests.

Conventions
- Codes are ``uint8`` bit patterns (the element's bits in the low bits), for every element.
- Scales: e8m0 as ``ml_dtypes.float8_e8m0fnu``; nv block scales as ``float8_e4m3fn`` plus a
  float32 tensor scale ``T_dec``; float scales in their dtype.
- :func:`quantize` returns ``(codes, scales, tensor_scale)`` (``tensor_scale`` is None except
  for ``nv``).
"""

from __future__ import annotations

import dataclasses
import math
from fractions import Fraction

import ml_dtypes
import numpy as np
import reference_np as R
from reference_np import F16, F32, FLOAT_DTYPES, chunk_sizes, f32_div, f32_mul, ftz, to_f32

E4M3 = np.dtype(ml_dtypes.float8_e4m3fn)
E8M0 = R.E8M0
FLT_MAX = F32(np.finfo(F32).max)

# --------------------------------------------------------------------------- element tables


@dataclasses.dataclass(frozen=True)
class Elem:
    name: str
    bits: int
    ebits: int
    mbits: int
    bias: int
    n_pos: int  # number of non-negative finite codes: 0 .. n_pos-1
    ml: object  # the ml_dtypes type (cross-checks only)

    @property
    def sign_bit(self) -> int:
        return 1 << (self.bits - 1)

    def decode_mag(self, code: int) -> float:
        """Exact value of a non-negative code (float64; all values are dyadic and short)."""
        e = code >> self.mbits
        m = code & ((1 << self.mbits) - 1)
        if e == 0:
            return math.ldexp(m, 1 - self.bias - self.mbits)
        return math.ldexp((1 << self.mbits) + m, e - self.bias - self.mbits)

    @property
    def values(self) -> np.ndarray:
        return np.array([self.decode_mag(c) for c in range(self.n_pos)], np.float64)

    @property
    def M(self) -> float:
        return self.decode_mag(self.n_pos - 1)

    @property
    def emax(self) -> int:
        return math.frexp(self.M)[1] - 1


ELEMENTS = {
    # e4m3 "fn": S.1111.111 is NaN, so positive finite codes are 0x00..0x7E
    "e4m3": Elem("e4m3", 8, 4, 3, 7, 0x7F, ml_dtypes.float8_e4m3fn),
    # e5m2: exponent 31 is Inf/NaN, positive finite codes 0x00..0x7B
    "e5m2": Elem("e5m2", 8, 5, 2, 15, 0x7C, ml_dtypes.float8_e5m2),
    "e3m2": Elem("e3m2", 6, 3, 2, 3, 0x20, ml_dtypes.float6_e3m2fn),
    "e2m3": Elem("e2m3", 6, 2, 3, 1, 0x20, ml_dtypes.float6_e2m3fn),
    "e2m1": Elem("e2m1", 4, 2, 1, 1, 0x08, ml_dtypes.float4_e2m1fn),
}
NAN_CODE = {"e4m3": 0x7F, "e5m2": 0x7E}


def round_elem(r, elem: Elem, noise=None) -> np.ndarray:
    """float32 values -> element codes (uint8): RNE (or stochastic with noise u in [0,1))
    onto the finite values, then saturation to +-M; zero keeps its sign; NaN -> NaN code
    (only e4m3/e5m2 have one)."""
    r = np.asarray(r, F32)
    vals = elem.values
    M = vals[-1]
    mag = np.abs(r.astype(np.float64))
    neg = np.signbit(r)
    nan = np.isnan(r)
    safe = np.where(nan | (mag > M), M, mag)
    idx = np.searchsorted(vals, safe, side="right") - 1  # vals[idx] <= mag
    idx = np.clip(idx, 0, len(vals) - 1)
    lo = vals[idx]
    hi = vals[np.minimum(idx + 1, len(vals) - 1)]
    exact = lo == safe
    if noise is None:
        mid = (lo + hi) / 2  # exact in float64
        up = (safe > mid) | ((safe == mid) & (idx % 2 == 1))
    else:
        u = np.asarray(noise, F32)
        up = np.zeros(r.shape, bool)
        for i in np.ndindex(r.shape):
            if exact[i] or nan[i]:
                continue
            # signed neighbours lo_s <= r <= hi_s; take hi_s if u < (r - lo_s)/(hi_s - lo_s)
            rv = Fraction(float(r[i]))
            a, b = Fraction(float(lo[i])), Fraction(float(hi[i]))
            lo_s, hi_s = (-b, -a) if neg[i] else (a, b)
            take_hi = Fraction(float(u[i])) < (rv - lo_s) / (hi_s - lo_s)
            # in magnitude terms: rounding up = hi_s for positives, lo_s for negatives
            up[i] = take_hi != bool(neg[i])
    code = np.where(exact, idx, np.where(up, idx + 1, idx))
    code = np.minimum(code, len(vals) - 1)  # saturation (M is the last finite code)
    code = code | np.where(neg, elem.sign_bit, 0)
    if elem.name in NAN_CODE:
        code = np.where(nan, NAN_CODE[elem.name] | np.where(neg, elem.sign_bit, 0), code)
    return code.astype(np.uint8)


def decode_elem(codes, elem: Elem) -> np.ndarray:
    """uint8 codes -> float32 values (NaN codes -> NaN; e5m2 Inf codes -> Inf)."""
    c = np.asarray(codes).astype(np.int64)
    mag = c & (elem.sign_bit - 1)
    table = np.full(elem.sign_bit, np.nan, np.float64)
    table[: elem.n_pos] = elem.values
    if elem.name == "e5m2":
        table[0x7C] = np.inf
    v = table[mag]
    v = np.where(c & elem.sign_bit, -v, v)
    return v.astype(F32)


# --------------------------------------------------------------------------- fp format


SCALES = ("e8m0_floor", "e8m0_rceil", "float32", "float16", "bfloat16", "nv")
SCALE_BYTES = {"e8m0_floor": 1, "e8m0_rceil": 1, "float32": 4, "float16": 2, "bfloat16": 2}
SCALE_BYTES["nv"] = 1


@dataclasses.dataclass(frozen=True)
class RefFp:
    element: str = "e4m3"
    block_size: int = 32
    scale: str = "e8m0_floor"
    rounding: str = "nearest_even"

    @property
    def elem(self) -> Elem:
        return ELEMENTS[self.element]

    @property
    def bits(self) -> int:
        return self.elem.bits

    @property
    def scale_bytes(self) -> int:
        return SCALE_BYTES[self.scale]


PRESETS = {
    "mxfp8": RefFp(element="e4m3", block_size=32, scale="e8m0_floor"),
    "mxfp8-rceil": RefFp(element="e4m3", block_size=32, scale="e8m0_rceil"),
    "mxfp8-e5m2": RefFp(element="e5m2", block_size=32, scale="e8m0_floor"),
    "mxfp6-e3m2": RefFp(element="e3m2", block_size=32, scale="e8m0_floor"),
    "mxfp6-e2m3": RefFp(element="e2m3", block_size=32, scale="e8m0_floor"),
    "mxfp4": RefFp(element="e2m1", block_size=32, scale="e8m0_floor"),
    "nvfp4": RefFp(element="e2m1", block_size=16, scale="nv"),
    "fp8-b256-f32": RefFp(element="e4m3", block_size=256, scale="float32"),
}


def get(fmt):
    if isinstance(fmt, str):
        return PRESETS[fmt] if fmt in PRESETS else R.get(fmt)
    return fmt


def e4m3_sat(v) -> np.ndarray:
    """float32 -> e4m3 value (RNE, saturating at 448; NaN stays NaN), as float32."""
    return decode_elem(round_elem(v, ELEMENTS["e4m3"]), ELEMENTS["e4m3"])


def _ceil_log2(d) -> np.ndarray:
    """Smallest integer e with 2**e >= d, for positive finite float32 d (from the bits)."""
    b = R.f32_bits(d).astype(np.int64)
    fl = R.floor_log2_f32(d)
    e_field = (b >> 23) & 0xFF
    m = b & 0x7FFFFF
    # power of two: normal with zero mantissa, or subnormal with a single set bit
    pow2 = np.where(e_field == 0, (m & (m - 1)) == 0, m == 0)
    return np.where(pow2, fl, fl + 1)


def _e8m0_value(code) -> np.ndarray:
    code = np.asarray(code).astype(np.int64)
    with np.errstate(all="ignore"):
        v = np.ldexp(np.float64(1.0), code - 127).astype(F32)
    return ftz(np.where(code == 255, F32(np.nan), v).astype(F32))


def _blocks(H: int, B: int):
    return [(k * B, min((k + 1) * B, H)) for k in range(math.ceil(H / B))]


def tensor_scale(v: np.ndarray, fmt: RefFp) -> tuple[np.float32, np.float32]:
    """(T_enc, T_dec) of an nv-quantized array v (float32, already FTZ'd)."""
    v2 = v.reshape(-1, v.shape[-1])
    blocks = [
        v2[i, lo:hi] for i in range(v2.shape[0]) for lo, hi in _blocks(v.shape[-1], fmt.block_size)
    ]
    return _tensor_scale_of(blocks, fmt)


def _scalar(a) -> np.float32:
    """A float32 scalar from a 0-d or 1-element array (ftz returns at least 1-d)."""
    return F32(np.asarray(a, F32).reshape(-1)[0])


def _tensor_scale_of(blocks, fmt: RefFp) -> tuple[np.float32, np.float32]:
    """G = max |v| over the blocks that are not poisoned, then T_enc, T_dec (formats.md)."""
    M = F32(fmt.elem.M)
    G = F32(0)
    for vb in blocks:
        if np.all(np.isfinite(vb)) and vb.size:
            G = max(G, F32(np.max(np.abs(vb))))
    if G == 0:
        T_enc = F32(1)
    else:
        T_enc = _scalar(f32_div(f32_mul(F32(448), M), G))
        if np.isinf(T_enc):
            T_enc = FLT_MAX
        if T_enc == 0:
            T_enc = F32(1)
    T_dec = _scalar(f32_div(F32(1), T_enc))
    return T_enc, T_dec


def quantize(x, fmt, noise=None, tensor=None):
    """(codes uint8 [x.shape], scales [x.shape[:-1] + (nblocks,)], tensor_scale or None).

    ``tensor=(T_enc, T_dec)`` imposes nv's tensor scale (a two_shot run computes it over
    the whole run, not over the piece being quantized)."""
    fmt = get(fmt)
    x = np.asarray(x)
    if x.ndim == 0:
        raise ValueError("quantize needs at least one axis")
    if x.ndim == 1:  # work on one row: ftz() returns at least 1-d, which would broadcast
        nz1 = None if noise is None else np.asarray(noise)[None]
        c, s, t = quantize(x[None], fmt, noise=nz1, tensor=tensor)
        return c[0], s[0], t
    v = to_f32(x)
    elem = fmt.elem
    M = F32(elem.M)
    if fmt.rounding == "stochastic":
        if noise is None:
            raise ValueError("stochastic rounding needs noise")
        noise = np.asarray(noise, F32)
        if noise.shape != x.shape:
            raise ValueError(f"noise shape {noise.shape} != {x.shape}")
    blocks = _blocks(x.shape[-1], fmt.block_size)
    codes = np.zeros(x.shape, np.uint8)
    if fmt.scale.startswith("e8m0"):
        sdt = E8M0
    elif fmt.scale == "nv":
        sdt = E4M3
    else:
        sdt = FLOAT_DTYPES[fmt.scale]
    scales = np.zeros(x.shape[:-1] + (len(blocks),), sdt)
    T_enc = T_dec = None
    if fmt.scale == "nv":
        T_enc, T_dec = tensor_scale(v, fmt) if tensor is None else tensor
        k_enc = f32_mul(T_enc, f32_div(F32(1), M))  # f32(T_enc * f32(1/M))
    for k, (lo, hi) in enumerate(blocks):
        vb = v[..., lo:hi]
        poisoned = ~np.all(np.isfinite(vb), axis=-1)
        with np.errstate(invalid="ignore"):
            a = np.max(np.abs(vb), axis=-1).astype(F32)
        a = np.where(poisoned, F32(0), a).astype(F32)
        mul = None
        if fmt.scale in ("e8m0_floor", "e8m0_rceil"):
            if fmt.scale == "e8m0_floor":
                e = R.floor_log2_f32(np.where(a == 0, F32(1), a)) - elem.emax
                e = np.where(a == 0, -127, e)
            else:
                d = f32_mul(a, f32_div(F32(1), M))  # a * f32(1/M)
                e = _ceil_log2(np.where(d == 0, F32(1), d))
                e = np.where(d == 0, -127, e)
            e = np.clip(e, -127, 127)
            scode = np.where(poisoned, 255, e + 127).astype(np.uint8)
            scales[..., k] = scode.view(E8M0)
            S = _e8m0_value(scode)
        elif fmt.scale == "nv":
            sb = e4m3_sat(f32_mul(a, k_enc))
            scales[..., k] = np.where(poisoned, np.nan, sb).astype(E4M3)
            S = f32_mul(sb, T_dec)
            with np.errstate(all="ignore"):
                inv = f32_div(F32(1), np.where(S == 0, F32(1), S))
            mul = np.minimum(inv, FLT_MAX).astype(F32)
        else:
            sdtype = FLOAT_DTYPES[fmt.scale]
            s = R.cast(f32_div(a, M), fmt.scale)
            big = np.asarray(ml_dtypes.finfo(sdtype).max, sdtype)
            s = np.where(np.isinf(s.astype(F32)), big, s).astype(sdtype)
            s = np.where(poisoned, np.asarray(np.nan, sdtype), s).astype(sdtype)
            scales[..., k] = s
            S = ftz(s.astype(F32))
        S_zero = (S == 0) | poisoned
        safe_S = np.where(S_zero, F32(1), S).astype(F32)[..., None]
        vz = np.where(poisoned[..., None], F32(0), vb)
        if mul is None:
            r = f32_div(vz, safe_S)
        else:
            r = f32_mul(vz, np.where(S_zero, F32(1), mul)[..., None])
        nz = None if noise is None else noise[..., lo:hi]
        c = round_elem(r, elem, nz)
        codes[..., lo:hi] = np.where(S_zero[..., None], np.uint8(0), c)
    ts = None if T_dec is None else np.float32(T_dec)
    return codes, scales, ts


def dequantize_f32(codes, scales, fmt, tensor_scale=None) -> np.ndarray:
    fmt = get(fmt)
    codes = np.asarray(codes)
    q = decode_elem(codes, fmt.elem)
    out = np.zeros(codes.shape, F32)
    if fmt.scale.startswith("e8m0"):
        S = _e8m0_value(np.asarray(scales).view(np.uint8))
    else:
        S = ftz(np.asarray(scales).astype(F32))
    for k, (lo, hi) in enumerate(_blocks(codes.shape[-1], fmt.block_size)):
        if fmt.scale == "nv":
            y = f32_mul(f32_mul(q[..., lo:hi], S[..., k : k + 1]), F32(tensor_scale))
        else:
            y = f32_mul(q[..., lo:hi], S[..., k : k + 1])
        out[..., lo:hi] = y
    return out


def dequantize(codes, scales, fmt, dtype="float32", tensor_scale=None) -> np.ndarray:
    return R.cast(dequantize_f32(codes, scales, fmt, tensor_scale), dtype)


def wire_bytes(shape, fmt) -> tuple[int, int]:
    """Closed form of formats.md: per row ceil(H*bits/8) payload, ceil(H/B)*scale_bytes
    scale bytes, plus 4 bytes per array for nv's tensor scale."""
    fmt = get(fmt)
    if not isinstance(fmt, RefFp):
        return R.wire_bytes(shape, fmt)
    shape = tuple(int(s) for s in shape) or (1,)
    H = shape[-1]
    rows = math.prod(shape[:-1])
    pay = rows * math.ceil(H * fmt.bits / 8)
    sc = rows * math.ceil(H / fmt.block_size) * fmt.scale_bytes
    return pay, sc + (4 if fmt.scale == "nv" else 0)


# --------------------------------------------------------------------------- scin / two_shot


def _link(x, fmt, noise_arr) -> np.ndarray:
    """What a link delivers, float32: quantize then dequantize (None: x itself)."""
    if fmt is None:
        return to_f32(x)
    if isinstance(fmt, RefFp):
        c, s, t = quantize(x, fmt, noise=noise_arr)
        return dequantize_f32(c, s, fmt, t)
    c, s = R.quantize(x, fmt, noise=noise_arr)
    return R.dequantize_f32(c, s, fmt)


def _stochastic(fmt) -> bool:
    return fmt is not None and not isinstance(fmt, R.RefCast) and fmt.rounding == "stochastic"


def allreduce(xs, algorithm, *, uplink=None, downlink=None, order="rank", noise=None):
    """scin / two_shot with link formats of any family (fp included): the result every rank
    holds. ``noise(stage, rank, shape)`` as in reference_np. two_shot quantizes the downlink
    per owner run (so an nv downlink gets one tensor scale per owner: docs/semantics.md)."""
    xs = np.asarray(xs)
    d = xs.dtype
    N = xs.shape[0]
    shape = xs.shape[1:]
    up, dn = get(uplink), get(downlink)
    if N == 1:
        return xs[0].copy()
    if algorithm not in ("scin", "two_shot"):
        raise ValueError(algorithm)

    def nz(stage, rank, shp, fmt):
        return np.asarray(noise(stage, rank, tuple(shp)), F32) if _stochastic(fmt) else None

    ups = [_link(xs[i], up, nz(0, i, shape, up)) for i in range(N)]
    total = R.reduce_f32(ups, order, "float32")
    if algorithm == "scin":
        return R.cast(_link(total, dn, nz(1, N, shape, dn)), d)
    bs = {f.block_size for f in (up, dn) if f is not None and not isinstance(f, R.RefCast)}
    if len(bs) > 1:
        raise ValueError("two_shot: link formats must share block_size")
    B = bs.pop() if bs else 1
    if dn is None or isinstance(dn, R.RefCast):
        return R.cast(_link(total, dn, None), d)
    H = shape[-1]
    tot2 = total.reshape(-1, H)
    out2 = np.zeros(tot2.shape, F32)
    for j, (lo, hi, _) in enumerate(R.two_shot_runs(shape, B, N)):
        if hi == lo:
            continue
        seg_noise = nz(1, j, (hi - lo,), dn)
        # the run's blocks (row, c0, c1) in row-major order; each starts on a block boundary
        blks = []
        for e0 in range(lo, hi, 1):
            r, c = divmod(e0, H)
            if c % B == 0:
                blks.append((r, c, min(c + B, H)))
        ts = None
        if isinstance(dn, RefFp) and dn.scale == "nv":
            ts = _tensor_scale_of([tot2[r, c0:c1] for r, c0, c1 in blks], dn)
        pos = 0
        for r, c0, c1 in blks:
            vals = tot2[r, c0:c1]
            nzb = None if seg_noise is None else seg_noise[pos : pos + c1 - c0]
            pos += c1 - c0
            if ts is None:
                out2[r, c0:c1] = _link(vals, dn, nzb)
            else:
                c, s, t = quantize(vals, dn, noise=nzb, tensor=ts)
                out2[r, c0:c1] = dequantize_f32(c, s, dn, t)
    return R.cast(out2.reshape(shape), d)


# --------------------------------------------------------------------------- peers

PEERS = ("quickreduce-q8", "quickreduce-q6", "quickreduce-q4", "flashinfer-fp8", "trtllm-fp8")
F16_MAX = 65504.0


def f16(v) -> np.ndarray:
    """float64 value(s) -> float16 RNE (NumPy's conversion is correctly rounded)."""
    with np.errstate(all="ignore"):
        return np.asarray(v, np.float64).astype(F16)


def f16_sat(v) -> np.ndarray:
    """float16 RNE, a finite value too large saturating at +-65504 (Inf/NaN stay)."""
    v = np.asarray(v, np.float64)
    h = f16(v)
    over = np.isinf(h) & np.isfinite(v)
    return np.where(over, np.copysign(F16_MAX, v), h).astype(F16)


def segments(n: int, unit: int, N: int) -> list[tuple[int, int]]:
    """Contiguous owner segments of n elements cut on whole units (chunk rule on units)."""
    nu = math.ceil(n / unit)
    out, u0 = [], 0
    for cnt in chunk_sizes(nu, N):
        out.append((min(u0 * unit, n), min((u0 + cnt) * unit, n)))
        u0 += cnt
    return out


def qr_codec(h: np.ndarray, b: int):
    """QuickReduce quantize+dequantize of a flat float16 array: returns float16 values."""
    h = np.asarray(h, F16)
    n = h.size
    out = np.zeros(n, F16)
    k = -(2.0 ** -(b - 1))
    qmin, qmax = -(2 ** (b - 1)), 2 ** (b - 1) - 1
    for r0 in range(0, n, 64):
        for par in (0, 1):
            idx = np.arange(r0 + par, min(r0 + 64, n), 2)
            if idx.size == 0:
                continue
            blk = h[idx].astype(np.float64)
            if np.isnan(blk).any():
                m = np.nan
            else:
                mags = np.abs(blk)
                amax = mags.max()
                cand = blk[mags == amax]
                # the signed extreme; on a +a / -a tie the negative one (-0 beats +0)
                m = cand[np.signbit(cand)][0] if np.signbit(cand).any() else cand[0]
            D = f16(m * k)  # exact unless subnormal
            den = f16(np.float64(D) + 2.0**-24)
            with np.errstate(all="ignore"):
                E = f16_sat(1.0 / np.float64(den))  # 1/0 -> +-Inf (IEEE), finite too big -> sat
                w = f16_sat(blk * np.float64(E)).astype(np.float64)
                w = np.where(np.isnan(w), np.nan, np.clip(w, qmin, qmax))
                q = np.rint(w) + 0.0  # integer codes (+0 for zero; NaN stays NaN)
                out[idx] = f16(q * np.float64(D))
    return out


def _qr_input(x) -> np.ndarray:
    x = np.asarray(x)
    if x.dtype == F16:
        return x.astype(F16)
    return f16_sat(x.astype(np.float64))


def quickreduce(xs, b: int) -> np.ndarray:
    """[N, ...] -> [N, ...]: every rank's output (all identical)."""
    xs = np.asarray(xs)
    N, d = xs.shape[0], xs.dtype
    hs = [_qr_input(xs[i]).reshape(-1) for i in range(N)]
    deq = [qr_codec(h, b) for h in hs]
    acc = deq[0].astype(np.float64)
    for c in deq[1:]:
        acc = f16_sat(acc + c.astype(np.float64)).astype(np.float64)
    total = f16(acc)
    res = qr_codec(total, b)  # per-block codec: segmenting on runs of 64 changes nothing
    y = R.cast(res.astype(F32), R.dtype_name(d)).reshape(xs.shape[1:])
    return np.stack([y] * N)


def fi_codec(v: np.ndarray) -> np.ndarray:
    """FlashInfer group-of-256 e4m3 quantize+dequantize of a flat float32 array."""
    out = np.zeros(v.size, F32)
    for g0 in range(0, v.size, 256):
        g = v[g0 : g0 + 256]
        with np.errstate(invalid="ignore"):
            mx = np.max(np.abs(g)).astype(F32)  # NaN propagates
        a = np.maximum(mx, F32(1e-12)) if not np.isnan(mx) else F32(np.nan)
        s = f32_div(a, F32(448))
        r = f32_div(F32(448), a)
        t = f32_mul(g, r)
        t = np.where(np.isnan(t), t, np.clip(t, F32(-448), F32(448))).astype(F32)
        q = e4m3_sat(t)
        out[g0 : g0 + 256] = f32_mul(q, s)
    return out


def flashinfer(xs) -> np.ndarray:
    xs = np.asarray(xs)
    if xs.dtype != R.BF16:
        raise ValueError("flashinfer-fp8 takes bfloat16")
    N = xs.shape[0]
    vs = [to_f32(xs[i]).reshape(-1) for i in range(N)]
    n = vs[0].size
    deq = [fi_codec(v) for v in vs]
    acc = np.zeros(n, F32)
    for c in deq:
        acc = R.f32_add(acc, c)
    requant = fi_codec(acc)
    outs = []
    for i in range(N):
        y = requant.copy()
        lo, hi = segments(n, 256, N)[i]
        y[lo:hi] = acc[lo:hi]  # the owner keeps bf16 of its float32 sum
        outs.append(R.cast(y, "bfloat16").reshape(xs.shape[1:]))
    return np.stack(outs)


def trt_codec(v: np.ndarray, segs) -> np.ndarray:
    """TensorRT-LLM groups of 496 aligned to each segment start: quantize+dequantize."""
    out = np.zeros(v.size, F32)
    for lo, hi in segs:
        for g0 in range(lo, hi, 496):
            g = v[g0 : min(g0 + 496, hi)]
            fin = g[~np.isnan(g)]
            a = F32(np.max(np.abs(fin))) if fin.size else F32(np.nan)  # fmaxf ignores NaN
            if a == 0 or np.isinf(a):
                y = e4m3_sat(g)
            else:
                s = f32_div(F32(448), a)  # Inf when it overflows
                q = e4m3_sat(f32_mul(g, s))
                y = f32_div(q, s)
            out[g0 : g0 + g.size] = y
    return out


def trtllm(xs) -> np.ndarray:
    xs = np.asarray(xs)
    N, d = xs.shape[0], xs.dtype
    vs = [to_f32(xs[i]).reshape(-1) for i in range(N)]
    n = vs[0].size
    segs = segments(n, 496, N)
    deq = [trt_codec(v, segs) for v in vs]
    total = np.zeros(n, F32)
    for r, (lo, hi) in enumerate(segs):
        acc = deq[r][lo:hi]
        for k in range(1, N):
            acc = R.f32_add(acc, deq[(r + k) % N][lo:hi])
        total[lo:hi] = acc
    y = R.cast(trt_codec(total, segs), R.dtype_name(d)).reshape(xs.shape[1:])
    return np.stack([y] * N)


def peer_allreduce(xs, name: str) -> np.ndarray:
    """Every rank's output, [N, ...] (rank-dependent for flashinfer-fp8)."""
    xs = np.asarray(xs)
    if xs.shape[0] == 1:
        return xs.copy()
    if name.startswith("quickreduce-q"):
        return quickreduce(xs, int(name[-1]))
    if name == "flashinfer-fp8":
        return flashinfer(xs)
    if name == "trtllm-fp8":
        return trtllm(xs)
    raise ValueError(name)


def peer_wire(n: int, name: str, N: int):
    """Per-owner-segment wire bytes (payload, scale) of one phase, for segment sizes of n."""
    out = []
    if name.startswith("quickreduce-q"):
        b = int(name[-1])
        for lo, hi in segments(n, 64, N):
            m = hi - lo
            nblk = 2 * (m // 64) + min(m % 64, 2)
            out.append((math.ceil(m * b / 8), 2 * nblk))
    elif name == "flashinfer-fp8":
        for lo, hi in segments(n, 256, N):
            out.append((hi - lo, 4 * math.ceil((hi - lo) / 256)))
    elif name == "trtllm-fp8":
        for lo, hi in segments(n, 496, N):
            out.append((hi - lo, 16 * math.ceil((hi - lo) / 496)))
    else:
        raise ValueError(name)
    return out


__all__ = [
    "ELEMENTS",
    "PEERS",
    "PRESETS",
    "RefFp",
    "allreduce",
    "decode_elem",
    "dequantize",
    "dequantize_f32",
    "e4m3_sat",
    "get",
    "peer_allreduce",
    "peer_wire",
    "quantize",
    "round_elem",
    "segments",
    "wire_bytes",
]
