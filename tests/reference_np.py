"""Independent NumPy reference of the scinjax numerical contract.

Written from ``docs/spec/formats.md``, ``docs/spec/collectives.md`` and
``docs/semantics.md`` only (never from the JAX implementation). Pure NumPy plus
``ml_dtypes`` for the bfloat16 / e8m0 dtypes; every float32 operation is done by
NumPy (IEEE binary32, round to nearest even, no flush-to-zero) and then flushed
to zero explicitly on the integer bits, as the spec asks.

Conventions
- Formats: :class:`RefInt` and :class:`RefCast` (plain frozen dataclasses),
  :data:`PRESETS` maps preset names to them; a link format ``None`` means the
  activation dtype itself.
- Collectives: :func:`allreduce` takes ``xs`` of shape ``[N, ...]`` (the N
  ranks' buffers, all of the activation dtype d) and returns the single result
  (shape ``xs.shape[1:]``, dtype d) that every rank must hold.
- Stochastic rounding: the caller supplies the noise. For :func:`quantize` a
  float32 array of x's shape; for :func:`allreduce` a callable
  ``noise(stage, rank, shape) -> float32 array`` (the tests implement the
  ``fold_in(fold_in(key, stage), rank)`` rule of semantics.md with jax.random).
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable

import ml_dtypes
import numpy as np

F32 = np.float32
BF16 = np.dtype(ml_dtypes.bfloat16)
F16 = np.dtype(np.float16)
E8M0 = np.dtype(ml_dtypes.float8_e8m0fnu)

FLOAT_DTYPES = {"float32": np.dtype(F32), "float16": F16, "bfloat16": BF16}
SCALE_BYTES = {"float32": 4, "float16": 2, "bfloat16": 2, "e8m0": 1}
ROUNDINGS = ("nearest_even", "nearest_away", "stochastic")
ALGORITHMS = ("ring", "one_shot", "two_shot", "nvls", "scin", "exact")


# --------------------------------------------------------------------------- bits


def f32_bits(a) -> np.ndarray:
    return np.ascontiguousarray(np.asarray(a, F32)).view(np.uint32)


def ftz(a) -> np.ndarray:
    """Flush float32 zeros/subnormals (exponent field 0) to a zero of the same sign."""
    b = f32_bits(a)
    tiny = (b & np.uint32(0x7F800000)) == 0
    return np.where(tiny, b & np.uint32(0x80000000), b).astype(np.uint32).view(F32)


def to_f32(x) -> np.ndarray:
    """Exact conversion of a bf16/f16/f32 array to float32, then FTZ."""
    return ftz(np.asarray(x).astype(F32))


def _bf16_rne_bits(v: np.ndarray) -> np.ndarray:
    """float32 -> bfloat16 RNE on the bits (independent of ml_dtypes' cast)."""
    b = f32_bits(v).astype(np.uint64)
    nan = np.isnan(np.asarray(v, F32))
    rounded = (b + 0x7FFF + ((b >> 16) & 1)) >> 16
    out = np.where(nan, (b >> 16) | 0x40, rounded).astype(np.uint16)
    return out


def cast(v, dtype) -> np.ndarray:
    """RNE conversion of a float32 array to dtype name/np.dtype (overflow -> Inf)."""
    dt = FLOAT_DTYPES[dtype] if isinstance(dtype, str) else np.dtype(dtype)
    v = np.asarray(v, F32)
    if dt == np.dtype(F32):
        return v.copy()
    if dt == BF16:
        return _bf16_rne_bits(v).view(BF16)
    if dt == F16:
        with np.errstate(over="ignore"):
            return v.astype(F16)  # NumPy's float32 -> float16 is correctly rounded (RNE)
    raise ValueError(f"unsupported dtype {dt}")


def dtype_name(dt) -> str:
    dt = np.dtype(dt)
    for k, v in FLOAT_DTYPES.items():
        if v == dt:
            return k
    raise ValueError(f"not a float dtype: {dt}")


def f32_add(a, b) -> np.ndarray:
    with np.errstate(all="ignore"):
        return ftz(np.asarray(a, F32) + np.asarray(b, F32))


def f32_mul(a, b) -> np.ndarray:
    with np.errstate(all="ignore"):
        return ftz(np.asarray(a, F32) * np.asarray(b, F32))


def f32_div(a, b) -> np.ndarray:
    with np.errstate(all="ignore"):
        return ftz(np.asarray(a, F32) / np.asarray(b, F32))


def floor_log2_f32(a) -> np.ndarray:
    """floor(log2(a)) for positive finite float32 a, exactly from the bits."""
    b = f32_bits(a).astype(np.int64)
    e = (b >> 23) & 0xFF
    m = b & 0x7FFFFF
    # subnormal: value = m * 2**-149, floor(log2) = bit_length(m) - 1 - 149
    sub_bl = np.zeros_like(m)
    mm = m.copy()
    for _ in range(24):
        nz = mm > 0
        sub_bl = sub_bl + nz
        mm = mm >> 1
    return np.where(e == 0, sub_bl - 1 - 149, e - 127)


# --------------------------------------------------------------------------- formats


@dataclasses.dataclass(frozen=True)
class RefInt:
    bits: int = 8
    block_size: int = 32
    scale_dtype: str = "float16"
    rounding: str = "nearest_even"

    @property
    def qmax(self) -> int:
        return 2 ** (self.bits - 1) - 1

    @property
    def scale_bytes(self) -> int:
        return SCALE_BYTES[self.scale_dtype]


@dataclasses.dataclass(frozen=True)
class RefCast:
    dtype: str = "bfloat16"

    @property
    def nbytes(self) -> int:
        return FLOAT_DTYPES[self.dtype].itemsize


PRESETS = {
    "int8": RefInt(bits=8, block_size=32, scale_dtype="float16"),
    "mxint8": RefInt(bits=8, block_size=32, scale_dtype="e8m0"),
    "int8-b128-f32": RefInt(bits=8, block_size=128, scale_dtype="float32"),
    "int4": RefInt(bits=4, block_size=32, scale_dtype="float16"),
    "bf16": RefCast("bfloat16"),
    "fp16": RefCast("float16"),
    "fp32": RefCast("float32"),
}


def get(fmt):
    if fmt is None or isinstance(fmt, RefInt | RefCast):
        return fmt
    return PRESETS[fmt]


def _blocks(H: int, B: int):
    return [(k * B, min((k + 1) * B, H)) for k in range(math.ceil(H / B))]


def scale_to_f32(scales, fmt: RefInt) -> np.ndarray:
    """The float32 value S of stored scales (FTZ'd; NaN for poisoned)."""
    if fmt.scale_dtype == "e8m0":
        code = np.asarray(scales).view(np.uint8).astype(np.int64)
        with np.errstate(all="ignore"):
            val = np.ldexp(np.float64(1.0), code - 127).astype(F32)  # exact (2**-127 subnormal)
        val = np.where(code == 255, F32(np.nan), val).astype(F32)
        return ftz(val)
    return ftz(np.asarray(scales).astype(F32))


def quantize(x, fmt, noise=None):
    """Return (codes, scales) exactly as formats.md defines them.

    Int formats: codes int8 of x's shape, scales of shape x.shape[:-1] + (nblocks,)
    in the scale dtype (e8m0 as ml_dtypes.float8_e8m0fnu). Cast formats: (cast, None).
    """
    fmt = get(fmt)
    x = np.asarray(x)
    if x.ndim == 0:
        raise ValueError("quantize needs at least one axis")
    v = to_f32(x)
    if isinstance(fmt, RefCast):
        return cast(v, fmt.dtype), None
    if fmt.rounding == "stochastic":
        if noise is None:
            raise ValueError("stochastic rounding needs noise")
        noise = np.asarray(noise, F32)
        assert noise.shape == x.shape, (noise.shape, x.shape)
    H = x.shape[-1]
    blocks = _blocks(H, fmt.block_size)
    qmax = fmt.qmax
    codes = np.zeros(x.shape, np.int8)
    sdt = E8M0 if fmt.scale_dtype == "e8m0" else FLOAT_DTYPES[fmt.scale_dtype]
    scales = np.zeros(x.shape[:-1] + (len(blocks),), sdt)
    for k, (lo, hi) in enumerate(blocks):
        vb = v[..., lo:hi]
        poisoned = ~np.all(np.isfinite(vb), axis=-1)
        with np.errstate(invalid="ignore"):
            a = np.max(np.abs(vb), axis=-1).astype(F32)
        a = np.where(poisoned, F32(0), a).astype(F32)
        # --- scale
        if fmt.scale_dtype == "e8m0":
            fl = floor_log2_f32(np.where(a == 0, F32(1), a))
            e = np.clip(fl - (fmt.bits - 2), -127, 127)
            e = np.where(a == 0, -127, e)
            scode = (e + 127).astype(np.uint8)
            scode = np.where(poisoned, np.uint8(255), scode).astype(np.uint8)
            s_store = scode.view(E8M0)
        else:
            q = f32_div(a, F32(qmax))
            s = cast(q, fmt.scale_dtype)
            sdtype = FLOAT_DTYPES[fmt.scale_dtype]
            big = np.asarray(ml_dtypes.finfo(sdtype).max, sdtype)
            s = np.where(np.isinf(s.astype(F32)), big, s).astype(sdtype)
            s = np.where(poisoned, np.asarray(np.nan, s.dtype), s).astype(s.dtype)
            s_store = s
        scales[..., k] = s_store
        S = scale_to_f32(s_store, fmt)
        S_zero = (S == 0) | poisoned
        safe_S = np.where(S_zero, F32(1), S).astype(F32)[..., None]
        r = f32_div(np.where(poisoned[..., None], F32(0), vb), safe_S)
        if fmt.rounding == "nearest_even":
            c = np.rint(np.clip(r.astype(np.float64), -qmax - 1, qmax + 1))
        elif fmt.rounding == "nearest_away":
            rr = np.clip(r.astype(np.float64), -qmax - 1, qmax + 1)
            c = np.sign(rr) * np.floor(np.abs(rr) + 0.5)
        elif fmt.rounding == "stochastic":
            t = f32_add(r, noise[..., lo:hi])
            c = np.floor(np.clip(t.astype(np.float64), -qmax - 2, qmax + 2))
        else:
            raise ValueError(fmt.rounding)
        c = np.clip(c, -qmax, qmax)
        c = np.where(S_zero[..., None], 0, c)
        codes[..., lo:hi] = c.astype(np.int8)
    return codes, scales


def dequantize_f32(codes, scales, fmt) -> np.ndarray:
    """y = ftz(f32(q) * S) in float32 (NaN for poisoned blocks)."""
    fmt = get(fmt)
    if isinstance(fmt, RefCast):
        return to_f32(codes)
    codes = np.asarray(codes)
    H = codes.shape[-1]
    S = scale_to_f32(scales, fmt)
    out = np.zeros(codes.shape, F32)
    for k, (lo, hi) in enumerate(_blocks(H, fmt.block_size)):
        out[..., lo:hi] = f32_mul(codes[..., lo:hi].astype(F32), S[..., k : k + 1])
    return out


def dequantize(codes, scales, fmt, dtype="float32") -> np.ndarray:
    return cast(dequantize_f32(codes, scales, fmt), dtype)


def wire_bytes(shape, fmt) -> tuple[int, int]:
    """(payload, scale) bytes: per row ceil(H*bits/8) and ceil(H/B)*scale_bytes."""
    fmt = get(fmt)
    shape = tuple(int(s) for s in shape)
    n = math.prod(shape)
    if isinstance(fmt, RefCast):
        return n * fmt.nbytes, 0
    H = shape[-1]
    rows = n // H if H else 0
    return rows * math.ceil(H * fmt.bits / 8), rows * math.ceil(
        H / fmt.block_size
    ) * fmt.scale_bytes


# --------------------------------------------------------------------------- reductions


def _operand(v_f32: np.ndarray, acc: str) -> np.ndarray:
    v = ftz(np.asarray(v_f32, F32))
    if acc != "float32":
        v = to_f32(cast(v, acc))
    return v


def _add(a, b, acc: str) -> np.ndarray:
    s = f32_add(a, b)
    if acc != "float32":
        s = to_f32(cast(s, acc))
    return s


def reduce_f32(ops: list[np.ndarray], order: str = "rank", accumulate: str = "float32"):
    """Sum float32 operands (already FTZ'd f32 values) in the given order; float32 result
    holding the value of the accumulator (of dtype `accumulate`)."""
    ops = [_operand(o, accumulate) for o in ops]
    if order == "rank":
        acc = ops[0]
        for o in ops[1:]:
            acc = _add(acc, o, accumulate)
        return acc
    if order == "pairwise":
        level = ops
        while len(level) > 1:
            nxt = [_add(level[i], level[i + 1], accumulate) for i in range(0, len(level) - 1, 2)]
            if len(level) % 2:
                nxt.append(level[-1])
            level = nxt
        return level[0]
    raise ValueError(order)


def chunk_sizes(n: int, N: int) -> list[int]:
    return [n // N + (1 if j < n % N else 0) for j in range(N)]


def chunk_bounds(n: int, N: int) -> list[tuple[int, int]]:
    out, lo = [], 0
    for s in chunk_sizes(n, N):
        out.append((lo, lo + s))
        lo += s
    return out


NoiseFn = Callable[[int, int, tuple], np.ndarray]


def _ring(xs: np.ndarray, d, accumulate: str) -> np.ndarray:
    N = xs.shape[0]
    flat = xs.reshape(N, -1)
    n = flat.shape[1]
    out = np.zeros(n, d)
    for c, (lo, hi) in enumerate(chunk_bounds(n, N)):
        first = (c + 1) % N
        p = flat[first, lo:hi].copy()  # the first hop sends x_{c+1} as is (in d)
        for step in range(2, N + 1):
            k = (c + step) % N
            a = _operand(to_f32(p), accumulate)
            b = _operand(to_f32(flat[k, lo:hi]), accumulate)
            p = cast(_add(a, b, accumulate), d)
        out[lo:hi] = p
    return out.reshape(xs.shape[1:])


def _int_block(uplink, downlink) -> int | None:
    bs = [f.block_size for f in (uplink, downlink) if isinstance(f, RefInt)]
    if not bs:
        return None
    if len(set(bs)) > 1:
        raise ValueError("two_shot: uplink and downlink int formats must share block_size")
    return bs[0]


def two_shot_runs(shape, B: int, N: int) -> list[tuple[int, int, int]]:
    """Block-aligned runs of the flattened buffer: [(start, stop, nblocks), ...] per owner."""
    shape = tuple(shape)
    H = shape[-1]
    rows = math.prod(shape[:-1])
    blocks = []
    for r in range(rows):
        for lo, hi in _blocks(H, B):
            blocks.append((r * H + lo, r * H + hi))
    nb = len(blocks)
    runs, b0 = [], 0
    for j, cnt in enumerate(chunk_sizes(nb, N)):
        del j
        if cnt == 0:
            start = blocks[b0 - 1][1] if b0 > 0 else 0
            runs.append((start, start, 0))
        else:
            runs.append((blocks[b0][0], blocks[b0 + cnt - 1][1], cnt))
        b0 += cnt
    return runs


def _link_up(x, fmt, noise_arr) -> np.ndarray:
    """A rank's contribution as the switch/owner sees it, float32."""
    if fmt is None:
        return to_f32(x)
    codes, scales = quantize(x, fmt, noise=noise_arr)
    return dequantize_f32(codes, scales, fmt)


def _link_down(total_f32, fmt, d, noise_arr) -> np.ndarray:
    if fmt is None:
        return cast(total_f32, d)
    codes, scales = quantize(total_f32, fmt, noise=noise_arr)
    return cast(dequantize_f32(codes, scales, fmt), d)


def _needs_noise(fmt) -> bool:
    return isinstance(fmt, RefInt) and fmt.rounding == "stochastic"


def allreduce(
    xs,
    algorithm: str,
    *,
    uplink=None,
    downlink=None,
    order: str = "rank",
    accumulate: str = "float32",
    noise: NoiseFn | None = None,
) -> np.ndarray:
    """The result every rank holds after the All-Reduce of xs[0], ..., xs[N-1]."""
    xs = np.asarray(xs)
    d = xs.dtype
    N = xs.shape[0]
    shape = xs.shape[1:]
    uplink, downlink = get(uplink), get(downlink)
    if algorithm not in ALGORITHMS:
        raise ValueError(algorithm)
    if N == 1:
        return xs[0].copy()
    if xs.ndim == 1:  # 0-d leaves are treated as shape (1,)
        kw = dict(uplink=uplink, downlink=downlink, order=order, accumulate=accumulate)
        return allreduce(xs[:, None], algorithm, noise=noise, **kw)[0]
    if algorithm == "ring":
        if order != "rank":
            raise ValueError("ring accepts only order='rank'")
        return _ring(xs, d, accumulate)
    if algorithm == "exact":
        return cast(reduce_f32([to_f32(x) for x in xs], "rank", "float32"), d)
    quantized = uplink is not None or downlink is not None
    if not quantized:
        return cast(reduce_f32([to_f32(x) for x in xs], order, accumulate), d)
    if algorithm not in ("scin", "two_shot"):
        raise ValueError(f"{algorithm} takes no link formats")

    def nz(stage, rank, shp, fmt):
        if not _needs_noise(fmt):
            return None
        assert noise is not None, "stochastic format needs a noise function"
        return np.asarray(noise(stage, rank, tuple(shp)), F32)

    ups = [_link_up(xs[i], uplink, nz(0, i, shape, uplink)) for i in range(N)]
    total = reduce_f32(ups, order, accumulate)
    if algorithm == "scin":
        return _link_down(total, downlink, d, nz(1, N, shape, downlink))
    # quantized two_shot: owner j handles the block-aligned run j
    B = _int_block(uplink, downlink) or 1
    dn_noise = None
    if _needs_noise(downlink):
        flat = np.zeros(math.prod(shape), F32)
        for j, (lo, hi, _) in enumerate(two_shot_runs(shape, B, N)):
            flat[lo:hi] = nz(1, j, (hi - lo,), downlink)
        dn_noise = flat.reshape(shape)
    return _link_down(total, downlink, d, dn_noise)


# --------------------------------------------------------------------------- comparison


def same_bits(a, b) -> np.ndarray:
    """Elementwise: identical bits, or both NaN (for float types)."""
    a, b = np.asarray(a), np.asarray(b)
    assert a.dtype == b.dtype, (a.dtype, b.dtype)
    assert a.shape == b.shape, (a.shape, b.shape)
    if a.dtype.kind in "iub":
        return a == b
    u = {1: np.uint8, 2: np.uint16, 4: np.uint32, 8: np.uint64}[a.dtype.itemsize]
    eq = a.view(u) == b.view(u)
    if a.dtype == E8M0:
        return eq
    with np.errstate(invalid="ignore"):
        both_nan = np.isnan(a.astype(np.float32)) & np.isnan(b.astype(np.float32))
    return eq | both_nan


def assert_bits(actual, expected, what=""):
    actual, expected = np.asarray(actual), np.asarray(expected)
    assert actual.dtype == expected.dtype, f"{what}: dtype {actual.dtype} != {expected.dtype}"
    assert actual.shape == expected.shape, f"{what}: shape {actual.shape} != {expected.shape}"
    ok = same_bits(actual, expected)
    if not ok.all():
        idx = np.argwhere(~ok)[:8]
        rows = [
            f"  at {tuple(i)}: got {actual[tuple(i)]!r} want {expected[tuple(i)]!r}" for i in idx
        ]
        raise AssertionError(
            f"{what}: {int((~ok).sum())} of {ok.size} elements differ\n" + "\n".join(rows)
        )
