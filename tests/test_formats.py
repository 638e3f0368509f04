"""scinjax wire formats vs the independent NumPy reference, bit for bit.

Every comparison is on the bits (``.view(uint)``), NaN-aware: two floats agree
when their bits are equal or when both are NaN (e8m0 has a single NaN code, so
its bits must be equal). No tolerances.
"""

from __future__ import annotations

import functools
import math

import jax
import jax.numpy as jnp
import ml_dtypes
import numpy as np
import pytest
import reference_np as R
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from reference_np import assert_bits, same_bits

import scinjax
from scinjax import formats

HYP = settings(
    max_examples=50,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)

JDT = {"float32": jnp.float32, "bfloat16": jnp.bfloat16, "float16": jnp.float16}
NPDT = {"float32": np.float32, "bfloat16": ml_dtypes.bfloat16, "float16": np.float16}


# --------------------------------------------------------------------------- helpers


def ref_fmt(fmt):
    """The reference twin of a scinjax Format (built from its public fields)."""
    if isinstance(fmt, formats.CastFormat):
        return R.RefCast(fmt.dtype)
    return R.RefInt(fmt.bits, fmt.block_size, fmt.scale_dtype, fmt.rounding)


def assert_q_equal(q, x, fmt, noise=None, what=""):
    codes, scales = R.quantize(np.asarray(x), ref_fmt(fmt), noise=noise)
    assert q.fmt == fmt, (q.fmt, fmt)
    assert_bits(q.codes, codes, f"{what} codes")
    if scales is None:
        assert q.scales is None
    else:
        assert_bits(q.scales, scales, f"{what} scales")
    return codes, scales


@functools.cache
def jq(fmt):
    """Jitted quantize for one format, x and noise as arguments (one compile per fmt/shape)."""
    return jax.jit(lambda x, noise: scinjax.quantize(x, fmt, noise=noise))


@functools.cache
def jdq(dtype):
    return jax.jit(lambda q: scinjax.dequantize(q, dtype))


def quant(x, fmt, noise=None, mode="jit"):
    if mode == "jit":
        return jq(fmt)(x, noise)
    return scinjax.quantize(x, fmt, noise=noise)


def data(seed, shape, dtype="float32"):
    """Values over many binades, a few exact zeros, negative zeros."""
    rng = np.random.default_rng(seed)
    hi = 12 if dtype == "float16" else 20  # keep float16 mostly finite
    v = rng.standard_normal(shape) * np.exp2(rng.integers(-20, hi, shape))
    v[rng.random(shape) < 0.05] = 0.0
    v[rng.random(shape) < 0.03] = -0.0
    return v.astype(NPDT[dtype])


# formats covering bits 2..8, all scale dtypes, roundings, block sizes (short final blocks)
FMT_KW = [
    dict(bits=8, block_size=32, scale_dtype="float16"),
    dict(bits=8, block_size=32, scale_dtype="e8m0"),
    dict(bits=8, block_size=128, scale_dtype="float32"),
    dict(bits=4, block_size=32, scale_dtype="float16"),
    dict(bits=2, block_size=8, scale_dtype="e8m0"),
    dict(bits=3, block_size=5, scale_dtype="bfloat16", rounding="nearest_away"),
    dict(bits=4, block_size=1, scale_dtype="float32"),
    dict(bits=5, block_size=37, scale_dtype="float16", rounding="nearest_away"),
    dict(bits=6, block_size=64, scale_dtype="e8m0", rounding="nearest_away"),
    dict(bits=7, block_size=16, scale_dtype="bfloat16"),
    dict(bits=8, block_size=7, scale_dtype="float32", rounding="nearest_away"),
    dict(bits=8, block_size=32, scale_dtype="float16", rounding="stochastic"),
    dict(bits=4, block_size=32, scale_dtype="e8m0", rounding="stochastic"),
    dict(bits=8, block_size=16, scale_dtype="bfloat16", rounding="stochastic"),
    dict(bits=2, block_size=3, scale_dtype="float32", rounding="stochastic"),
]


def kw_id(kw):
    return "int{bits}-b{block_size}-{scale_dtype}".format(**kw) + (
        "-" + kw["rounding"] if "rounding" in kw else ""
    )


SHAPES = [(3, 37), (2, 2, 64), (7,)]


def noise_for(fmt, shape, seed):
    if isinstance(fmt, formats.IntFormat) and fmt.rounding == "stochastic":
        u = np.random.default_rng(seed + 1000).random(shape, dtype=np.float32)
        u[..., :3] = np.float32(1) - np.float32(2**-24)  # the largest value below 1
        return u
    return None


# --------------------------------------------------------------------------- random data


# (shape, input dtype, dequantize output dtypes): short final blocks, 1-D, 3-D, all dtypes
CASES = [
    ((3, 37), "float32", ("float32", "float16")),
    ((3, 37), "bfloat16", ("float32", "bfloat16")),
    ((2, 2, 64), "float16", ("float32",)),
    ((7,), "float32", ("bfloat16",)),
]


@functools.cache
def jall(fmt):
    """One compile per format: quantize every case, dequantize to the case's dtypes."""

    def f(xs, us):
        out = []
        for (_, _, odts), x, u in zip(CASES, xs, us, strict=True):
            q = scinjax.quantize(x, fmt, noise=u)
            out.append((q, [scinjax.dequantize(q, JDT[o]) for o in odts]))
        return out

    return jax.jit(f)


@pytest.mark.parametrize("kw", [pytest.param(k, id=kw_id(k)) for k in FMT_KW])
def test_random_matches_reference(kw):
    fmt = formats.IntFormat(**kw)
    for seed in range(3):
        xs = [data(seed + 10 * i, shape, dt) for i, (shape, dt, _) in enumerate(CASES)]
        us = [noise_for(fmt, x.shape, seed + i) for i, x in enumerate(xs)]
        out = jall(fmt)(
            [jnp.asarray(x) for x in xs], [None if u is None else jnp.asarray(u) for u in us]
        )
        for (shape, dt, odts), x, u, (q, ys) in zip(CASES, xs, us, out, strict=True):
            what = f"{fmt} seed={seed} {shape} {dt}"
            codes, scales = assert_q_equal(q, x, fmt, u, what)
            for odt, y in zip(odts, ys, strict=True):
                assert_bits(y, R.dequantize(codes, scales, ref_fmt(fmt), odt), f"{what} deq {odt}")


@pytest.mark.parametrize("name", ["int8", "mxint8", "bf16"])
def test_presets_eager_and_jit_agree_with_reference(name):
    fmt = formats.get(name)
    x = data(7, (3, 37), "bfloat16")
    qe = scinjax.quantize(jnp.asarray(x), name)
    qj = jq(fmt)(jnp.asarray(x), None)
    for q, mode in ((qe, "eager"), (qj, "jit")):
        codes, scales = assert_q_equal(q, x, fmt, what=f"{name} {mode}")
        assert_bits(
            scinjax.dequantize(q, jnp.bfloat16),
            R.dequantize(codes, scales, ref_fmt(fmt), "bfloat16"),
        )
        assert_bits(jdq(jnp.float32)(q), R.dequantize(codes, scales, ref_fmt(fmt), "float32"))


def test_stochastic_key_rule_eager_and_jit():
    """quantize(x, fmt, key=k) draws u = jax.random.uniform(k, x.shape, float32)."""
    fmt = formats.get("int8", rounding="stochastic")
    x = data(3, (3, 37), "bfloat16")
    xj = jnp.asarray(x)
    for k in (jax.random.key(0), jax.random.key(1), jax.random.PRNGKey(5)):
        u = np.asarray(jax.random.uniform(k, x.shape, jnp.float32))
        qe = scinjax.quantize(xj, fmt, key=k)
        qj = jax.jit(lambda x, k: scinjax.quantize(x, fmt, key=k))(xj, k)
        assert_q_equal(qe, x, fmt, u, "eager key")
        assert_q_equal(qj, x, fmt, u, "jit key")
    q0 = scinjax.quantize(xj, fmt, key=jax.random.key(0))
    q1 = scinjax.quantize(xj, fmt, key=jax.random.key(1))
    assert not np.array_equal(np.asarray(q0.codes), np.asarray(q1.codes))


def test_stochastic_needs_key_or_noise():
    fmt = formats.get("int8", rounding="stochastic")
    with pytest.raises((ValueError, TypeError)):
        scinjax.quantize(jnp.ones((4, 32)), fmt)


# --------------------------------------------------------------------------- reference sanity
# The reference itself is checked against hand-computed values, so that a bug shared
# by reference and implementation cannot hide.


def test_reference_hand_values():
    S = np.float32(0.5)  # float16-representable scale
    x = np.array(
        [[127 * S, 0.5 * S, 1.5 * S, -2.5 * S, 3.5 * S, -0.5 * S, 0.25 * S, 0]], np.float32
    )
    codes, scales = R.quantize(x, R.RefInt(8, 8, "float16"))
    assert scales.tolist() == [[0.5]]
    assert codes.tolist() == [[127, 0, 2, -2, 4, 0, 0, 0]]
    codes, _ = R.quantize(x, R.RefInt(8, 8, "float16", "nearest_away"))
    assert codes.tolist() == [[127, 1, 2, -3, 4, -1, 0, 0]]
    # e8m0, 8 bits: a = 127*0.5 = 63.5 -> floor(log2) = 5 -> e = -1 -> S = 0.5
    codes, scales = R.quantize(x, R.RefInt(8, 8, "e8m0"))
    assert scales.view(np.uint8).tolist() == [[126]]
    # FTZ on the bits
    assert R.ftz(np.float32(1e-40)) == 0 and np.signbit(R.ftz(np.float32(-1e-40)))
    assert R.ftz(np.float32(2**-126)) == np.float32(2**-126)


# --------------------------------------------------------------------------- adversarial


@pytest.mark.parametrize("rounding", ["nearest_even", "nearest_away"])
@pytest.mark.parametrize("mode", ["jit", "eager"])
def test_exact_ties(rounding, mode):
    """Values c*S + S/2: exact .5 ties in x/S, codes by the tie rule (bf16 input, (3, 37))."""
    fmt = formats.IntFormat(bits=8, block_size=32, scale_dtype="float16", rounding=rounding)
    S = np.float32(2.0**-5)  # 127*S and (c+.5)*S are exact in bfloat16
    c = np.arange(-15, 16)
    t = np.concatenate([c + 0.5, [-0.5, 0.5, 1.5, 2.5, 127]])  # 31 ties; short block: ties + amax
    x = np.zeros((3, 37), np.float32)
    x[:, 0] = 127 * S
    x[:, 1:] = t * S * np.array([[1], [-1], [1]])
    x = x.astype(ml_dtypes.bfloat16)
    q = quant(jnp.asarray(x), fmt, mode=mode)
    assert_q_equal(q, x, fmt, what=f"ties {rounding}")
    want = np.rint(t) if rounding == "nearest_even" else np.sign(t) * np.floor(np.abs(t) + 0.5)
    assert np.asarray(q.codes)[0, 1:].tolist() == want.astype(int).tolist()
    assert np.asarray(q.codes)[1, 1:].tolist() == (-want).astype(int).tolist()
    assert (np.asarray(q.scales).astype(np.float32) == S).all()


def test_subnormal_inputs_are_flushed():
    fmt = formats.get("int8")
    f32_sub = np.float32(1e-40)
    x = np.zeros((4, 32), np.float32)
    x[0, :] = f32_sub  # a block of float32 subnormals only: a = 0
    x[1, :5] = [1.0, -f32_sub, f32_sub, 2**-126, -(2**-126)]  # mix with normals
    x[2, :] = -f32_sub
    x[3, :] = np.linspace(-3, 3, 32)
    for dt in ("float32", "bfloat16"):  # bf16 subnormals are float32 subnormals
        xd = x.astype(NPDT[dt])
        q = quant(jnp.asarray(xd), fmt)
        assert_q_equal(q, xd, fmt, what=f"subnormal {dt}")
        assert np.asarray(q.codes)[0].tolist() == [0] * 32
        assert np.asarray(q.scales)[0, 0] == 0
    # float16 subnormals are normal float32 values: not flushed
    xh = np.full((1, 32), np.float16(6e-8), np.float16)
    q = quant(jnp.asarray(xh), fmt)
    assert_q_equal(q, xh, fmt, what="f16 subnormal input")
    # scale dtypes whose scale lands below 2**-126 count as zero
    for kw in (dict(scale_dtype="bfloat16"), dict(scale_dtype="e8m0"), dict(scale_dtype="float32")):
        f = formats.IntFormat(**kw)
        xs = np.full((2, 32), np.float32(2**-120), np.float32)
        xs[1] *= -3
        assert_q_equal(quant(jnp.asarray(xs), f), xs, f, what=f"tiny scale {kw}")


@pytest.mark.parametrize(
    "kw",
    [
        dict(scale_dtype="float16"),
        dict(scale_dtype="bfloat16"),
        dict(scale_dtype="float32"),
        dict(scale_dtype="e8m0"),
        dict(scale_dtype="float16", bits=2),
        dict(scale_dtype="e8m0", bits=3),
    ],
    ids=lambda k: "-".join(f"{v}" for v in k.values()),
)
def test_tiny_scales(kw):
    """Block maxima over every small binade: float16 subnormal scales, bf16/f32 scales
    below 2**-126 (zero), e8m0 clamped at -127."""
    fmt = formats.IntFormat(block_size=16, **kw)
    e = np.arange(-126, -2)
    rng = np.random.default_rng(1)
    x = rng.uniform(-1, 1, (len(e), 16)) * np.exp2(e)[:, None]
    x[:, 0] = np.exp2(e) * rng.uniform(1, 2, len(e))
    x = x.astype(np.float32)
    q = quant(jnp.asarray(x), fmt)
    codes, scales = assert_q_equal(q, x, fmt, what=f"tiny {kw}")
    assert_bits(jdq(jnp.float32)(q), R.dequantize(codes, scales, ref_fmt(fmt)), "tiny deq")


def test_subnormal_inputs_captured_constant_under_jit():
    """A jitted computation on a closed-over constant (XLA may constant-fold it)."""
    fmt = formats.get("int8-b128-f32")
    x = np.full((2, 128), np.float32(3e-39), np.float32)
    x[1, :64] = np.float32(2**-125)
    xc = jnp.asarray(x)
    q = jax.jit(lambda: scinjax.quantize(xc, fmt))()
    assert_q_equal(q, x, fmt, what="constant-folded")


@pytest.mark.parametrize(
    "kw",
    [
        dict(scale_dtype="float16"),
        dict(scale_dtype="bfloat16", bits=2),
        dict(scale_dtype="float16", bits=2),
        dict(scale_dtype="e8m0", bits=2),
        dict(scale_dtype="float32", bits=2),
    ],
    ids=lambda k: "-".join(f"{v}" for v in k.values()),
)
def test_scale_saturation(kw):
    """Huge finite blocks: the scale saturates at the largest finite value, never Inf."""
    fmt = formats.IntFormat(**kw)
    f32max = np.finfo(np.float32).max
    x = np.zeros((5, 32), np.float32)
    x[0, 0] = 65504.0 * 127 * 1.00001  # a/qmax just above float16 max (rounds back below 65520)
    x[0, 1:] = np.linspace(-1e6, 1e6, 31)
    x[1, :] = np.linspace(-1.0, 1.0, 32) * np.float64(f32max)
    x[2, 0] = f32max
    x[3, :] = 65519.0 * 127  # RNE to float16 65504 (no overflow)
    x[4, :] = 65520.0 * 127  # would round to Inf: saturates
    q = quant(jnp.asarray(x), fmt)
    _, scales = assert_q_equal(q, x, fmt, what=f"saturation {kw}")
    if fmt.scale_dtype != "e8m0":
        assert np.all(np.isfinite(scales.astype(np.float32)))
    if fmt.scale_dtype == "float16" and fmt.bits == 8:
        assert np.asarray(q.scales)[4, 0] == np.float16(65504)
        assert np.abs(np.asarray(q.codes)[4]).tolist() == [127] * 32


@pytest.mark.parametrize("scale_dtype", ["float16", "bfloat16", "float32", "e8m0"])
def test_all_zero_blocks(scale_dtype):
    fmt = formats.IntFormat(scale_dtype=scale_dtype, block_size=8)
    x = np.zeros((2, 20), np.float32)
    x[1, :8] = -0.0
    x[1, 8:16] = np.arange(8)
    q = quant(jnp.asarray(x), fmt)
    codes, scales = assert_q_equal(q, x, fmt, what="zeros")
    s = np.asarray(q.scales)
    if scale_dtype == "e8m0":
        assert s.view(np.uint8)[0].tolist() == [0, 0, 0]  # e = -127
    else:
        assert s.astype(np.float32)[0].tolist() == [0, 0, 0]
    y = np.asarray(scinjax.dequantize(q, jnp.float32))
    assert y[0].view(np.uint32).tolist() == [0] * 20  # +0.0 exactly


@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf], ids=["nan", "inf", "-inf"])
@pytest.mark.parametrize("scale_dtype", ["float16", "e8m0"])
def test_poisoning_is_block_local(bad, scale_dtype):
    fmt = formats.IntFormat(scale_dtype=scale_dtype, block_size=8)
    x = data(11, (3, 21), "float32")
    clean = x.copy()
    x[1, 10] = bad  # block 1 of row 1
    q = quant(jnp.asarray(x), fmt)
    codes, scales = assert_q_equal(q, x, fmt, what="poison")
    s = np.asarray(q.scales)
    if scale_dtype == "e8m0":
        assert s.view(np.uint8)[1, 1] == 0xFF
    else:
        assert np.isnan(s[1, 1].astype(np.float32))
    assert np.asarray(q.codes)[1, 8:16].tolist() == [0] * 8
    y = np.asarray(scinjax.dequantize(q, jnp.float32))
    nan = np.isnan(y)
    want = np.zeros_like(nan)
    want[1, 8:16] = True
    assert (nan == want).all()
    # every other block is exactly what the clean input gives
    qc = quant(jnp.asarray(clean), fmt)
    mask = ~want
    assert (np.asarray(q.codes)[mask] == np.asarray(qc.codes)[mask]).all()
    smask = np.ones(s.shape, bool)
    smask[1, 1] = False
    assert same_bits(s[smask], np.asarray(qc.scales)[smask]).all()


def test_short_final_block_amax():
    """The last block of a row holds H mod B elements; nothing else enters its amax."""
    fmt = formats.IntFormat(block_size=32, scale_dtype="float32")
    x = np.full((2, 37), 100.0, np.float32)
    x[:, 32:] = [[1, 2, 3, 4, -5], [0.5, 0, 0, 0, 0]]
    q = quant(jnp.asarray(x), fmt)
    assert_q_equal(q, x, fmt, what="short block")
    s = np.asarray(q.scales)
    assert s.shape == (2, 2)
    assert s[0, 1] == np.float32(5) / np.float32(127)
    assert s[1, 1] == np.float32(0.5) / np.float32(127)
    assert np.asarray(q.codes)[1, 32:].tolist() == [127, 0, 0, 0, 0]


@pytest.mark.parametrize("bits", range(2, 9))
def test_every_code_reachable(bits):
    """All 2*qmax+1 codes come out of quantize, and dequantize as f32(q) * S."""
    sd = ["float16", "bfloat16", "e8m0", "float32"][bits % 4]
    qmax = 2 ** (bits - 1) - 1
    fmt = formats.IntFormat(bits=bits, block_size=2 * qmax + 1, scale_dtype=sd)
    # representable in every scale dtype; for e8m0: a = qmax * 2**-3, floor(log2 a) = bits - 5,
    # e = floor(log2 a) - (bits - 2) = -3
    S = np.float32(0.375 * 2**-7) if sd != "e8m0" else np.float32(2.0**-3)
    c = np.arange(-qmax, qmax + 1)
    x = (c * S).astype(np.float32)[None, :]
    q = quant(jnp.asarray(x), fmt)
    codes, scales = assert_q_equal(q, x, fmt, what="all codes")
    assert np.asarray(q.codes)[0].tolist() == c.tolist()
    y = np.asarray(jdq(jnp.float32)(q))
    assert_bits(y, (c.astype(np.float32) * S)[None, :].astype(np.float32), "deq")
    # dequantize of hand-made QArrays (every code, arbitrary scale) is f32(q) * S
    s_code = np.asarray(q.scales)
    q2 = formats.QArray(jnp.asarray(c[None, :].astype(np.int8)), jnp.asarray(s_code), fmt)
    assert_bits(
        jdq(jnp.bfloat16)(q2),
        R.dequantize(c[None, :].astype(np.int8), s_code, ref_fmt(fmt), "bfloat16"),
    )


@pytest.mark.parametrize("scale_dtype", ["float16", "bfloat16", "e8m0"])
def test_round_trip_explicit(scale_dtype):
    """formats.md 'What must hold': values c*S with +-qmax among the codes round-trip."""
    fmt = formats.IntFormat(scale_dtype=scale_dtype, block_size=16)
    rng = np.random.default_rng(0)
    if scale_dtype == "e8m0":
        sc = np.exp2(rng.integers(-100, 100, (4, 2))).astype(np.float32)
        sbits = (np.log2(sc).astype(int) + 127).astype(np.uint8).view(ml_dtypes.float8_e8m0fnu)
    else:
        dt = NPDT[scale_dtype]
        lo, hi = (-20, 10) if scale_dtype == "float16" else (-60, 60)
        sc = (rng.uniform(0.5, 1.0, (4, 2)) * np.exp2(rng.integers(lo, hi, (4, 2)))).astype(dt)
        sbits = sc
        sc = sc.astype(np.float32)
    c = rng.integers(-127, 128, (4, 32))
    c[:, 0] = 127
    c[:, 20] = -127
    x = (c.reshape(4, 2, 16) * sc[..., None]).reshape(4, 32).astype(np.float32)
    q = quant(jnp.asarray(x), fmt)
    assert_q_equal(q, x, fmt, what="round trip")
    assert np.asarray(q.codes).tolist() == c.tolist()
    assert_bits(q.scales, sbits, "round-trip scales")


@st.composite
def round_trip_case(draw):
    bits = draw(st.sampled_from([2, 4, 8]))
    sd = draw(st.sampled_from(["float16", "bfloat16", "e8m0"]))
    qmax = 2 ** (bits - 1) - 1
    if sd == "e8m0":
        e = draw(st.integers(-126, 127 - (bits - 1)))
        S = np.float32(2.0**e)
    elif sd == "float16":  # any positive finite float16, subnormals included
        S = np.float32(np.uint16(draw(st.integers(0x0001, 0x7BFF))).view(np.float16))
    else:  # bfloat16 from 2**-126 (normal in float32) up to about 2**120
        S = np.float32(np.uint16(draw(st.integers(0x0080, 0x7B7F))).view(ml_dtypes.bfloat16))
    codes = draw(st.lists(st.integers(-qmax, qmax), min_size=16, max_size=16))
    codes[draw(st.integers(0, 15))] = draw(st.sampled_from([qmax, -qmax]))
    return bits, sd, S, np.array(codes)


@HYP
@given(round_trip_case())
def test_round_trip_property(case):
    bits, sd, S, codes = case
    fmt = formats.IntFormat(bits=bits, block_size=16, scale_dtype=sd)
    x = (codes.astype(np.float32) * S).astype(np.float32)[None, :]
    q = quant(jnp.asarray(x), fmt)
    assert np.asarray(q.codes)[0].tolist() == codes.tolist()
    assert np.asarray(q.scales).astype(np.float32)[0, 0] == S
    assert_q_equal(q, x, fmt, what="rt")


# --------------------------------------------------------------------------- XLA traps


def _trap_block():
    """A float16 scale S and tie values v=(c+.5)*S where v/S != v*(1/S) changes the code."""
    f32 = np.float32
    for sbits in range(0x3C00, 0x3C00 + 1024):
        S = f32(np.uint16(sbits).view(np.float16))
        inv = f32(1) / S
        cs = [
            c for c in range(-126, 127) if np.rint(f32(f32(c + 0.5) * S) * inv) != np.rint(c + 0.5)
        ]
        if len(cs) >= 8:
            return S, np.array(cs[:31])
    raise AssertionError("no trap values found")


@pytest.mark.parametrize("rounding", ["nearest_even", "nearest_away"])
def test_division_trap_defended_under_jit(rounding):
    fmt = formats.IntFormat(rounding=rounding)
    S, cs = _trap_block()
    v = (cs + 0.5).astype(np.float32) * S
    x = np.zeros((1, 32), np.float32)
    x[0, 0] = 127 * S
    x[0, 1 : 1 + len(v)] = v
    # the test is sensitive: multiplying by the reciprocal changes codes
    naive = np.rint(x * (np.float32(1) / S))
    exact = np.rint(x.astype(np.float64) / np.float64(S))
    assert (naive != exact).sum() >= 8
    q = jq(fmt)(jnp.asarray(x), None)
    assert_q_equal(q, x, fmt, what="trap jit")
    xc = jnp.asarray(x)
    qc = jax.jit(lambda: scinjax.quantize(xc, fmt))()  # constant operands
    assert_q_equal(qc, x, fmt, what="trap jit constant")


def test_division_by_constant_qmax_trap():
    """a / qmax must be a division: float32 scales expose a * (1/qmax) in the last bit."""
    fmt = formats.get("int8-b128-f32")
    a = np.random.default_rng(0).uniform(1, 2, 4096).astype(np.float32)
    bad = a[(a / np.float32(127)) != (a * (np.float32(1) / np.float32(127)))][:16]
    assert len(bad) == 16
    x = np.zeros((16, 128), np.float32)
    x[:, 5] = bad
    x[:, 6] = -bad / 3
    q = jq(fmt)(jnp.asarray(x), None)
    assert_q_equal(q, x, fmt, what="qmax trap")
    assert (np.asarray(q.scales)[:, 0] == bad / np.float32(127)).all()


# --------------------------------------------------------------------------- hypothesis

HYP_FMTS = [formats.IntFormat(**kw) for kw in FMT_KW[:11]]  # the jq() cache already holds these
FLOATS = st.floats(allow_nan=True, allow_infinity=True, width=32)
NICE = st.floats(-1e4, 1e4, width=32, allow_subnormal=True)


@HYP
@given(
    st.sampled_from(HYP_FMTS),
    st.lists(st.one_of(NICE, NICE, NICE, FLOATS), min_size=37 * 3, max_size=37 * 3),
)
def test_property_random_values(fmt, vals):
    x = np.array(vals, np.float32).reshape(3, 37)
    q = quant(jnp.asarray(x), fmt)
    codes, scales = assert_q_equal(q, x, fmt, what="hyp")
    assert np.abs(np.asarray(q.codes).astype(int)).max() <= fmt.qmax
    assert_bits(jdq(jnp.float32)(q), R.dequantize(codes, scales, ref_fmt(fmt)), "hyp deq")


@HYP
@given(
    st.lists(st.floats(-1e3, 1e3, width=32), min_size=37 * 3, max_size=37 * 3), st.integers(0, 2)
)
def test_property_stochastic_bounds(vals, which):
    """Stochastic codes equal the reference and lie in {floor(r), floor(r)+1} around r = x/S."""
    fmt = formats.IntFormat(**FMT_KW[11 + which])
    x = np.array(vals, np.float32).reshape(3, 37)
    u = noise_for(fmt, x.shape, len(vals) + which)
    q = quant(jnp.asarray(x), fmt, jnp.asarray(u))
    codes, scales = assert_q_equal(q, x, fmt, u, "hyp stoch")
    y = R.dequantize(codes, scales, ref_fmt(fmt))
    S = np.repeat(R.scale_to_f32(scales, ref_fmt(fmt)), fmt.block_size, axis=-1)[:, :37]
    ok = (np.abs(y.astype(np.float64) - x) <= S.astype(np.float64) * 1.01 + 0) | (S == 0)
    assert ok.all()


# --------------------------------------------------------------------------- plain casts


@pytest.mark.parametrize(
    "name,dt", [("bf16", "bfloat16"), ("fp16", "float16"), ("fp32", "float32")]
)
def test_plain_casts(name, dt):
    fmt = formats.get(name)
    assert isinstance(fmt, formats.CastFormat) and fmt.dtype == dt
    x = data(5, (3, 37), "float32")
    x[0, :4] = [1e6, -1e6, 1e-40, 70000.0]  # fp16 overflow, f32 subnormal
    q = quant(jnp.asarray(x), fmt)
    assert q.scales is None
    assert_bits(q.codes, R.cast(R.to_f32(x), dt), f"{name} codes")
    for odt in ("float32", "bfloat16", "float16"):
        want = R.cast(R.to_f32(R.cast(R.to_f32(x), dt)), odt)
        assert_bits(jdq(JDT[odt])(q), want, f"{name} -> {odt}")


# --------------------------------------------------------------------------- sizes / API


PRESET_BPE = {
    "int8": 1.0625,
    "mxint8": 1.03125,
    "int8-b128-f32": 1.03125,
    "int4": 0.5625,
    "bf16": 2,
    "fp16": 2,
    "fp32": 4,
}


@pytest.mark.parametrize("name", list(PRESET_BPE))
def test_preset_bytes_per_element(name):
    assert scinjax.wire_bytes((4, 256), name) == R.wire_bytes((4, 256), name)
    p, s = scinjax.wire_bytes((4, 256), name)
    assert isinstance(p, int) and isinstance(s, int)
    assert (p + s) / 1024 == PRESET_BPE[name]
    if name in ("bf16", "fp16", "fp32"):
        assert s == 0
    big = (8, 8192, 8192)
    p, s = scinjax.wire_bytes(big, name)
    assert p + s == int(PRESET_BPE[name] * math.prod(big)) and type(p) is int


@pytest.mark.parametrize(
    "shape,fmt",
    [
        ((3, 37), "int8"),
        ((3, 37), "int4"),  # 37*4/8 = 18.5 -> 19 per row
        ((5,), "int4"),
        ((2, 3, 129), "int8-b128-f32"),
        ((3, 37), "mxint8"),
        ((3, 37), formats.IntFormat(bits=3, block_size=5, scale_dtype="bfloat16")),
        ((2, 7), formats.IntFormat(bits=5, block_size=1, scale_dtype="float32")),
        ((3, 37), "bf16"),
    ],
)
def test_wire_bytes_odd_shapes(shape, fmt):
    assert scinjax.wire_bytes(shape, fmt) == R.wire_bytes(shape, ref_fmt(formats.get(fmt)))


def test_wire_bytes_hand_values():
    assert scinjax.wire_bytes((3, 37), "int4") == (3 * 19, 3 * 2 * 2)
    assert scinjax.wire_bytes((37,), "int8") == (37, 2 * 2)
    assert scinjax.wire_bytes((37,), "mxint8") == (37, 2)
    assert scinjax.wire_bytes((2, 129), "int8-b128-f32") == (258, 2 * 2 * 4)


def test_presets_and_properties():
    fp_presets = {n for n in formats.names() if isinstance(formats.get(n), formats.FpFormat)}
    assert set(formats.names()) - fp_presets == set(PRESET_BPE)  # fp: test_formats_fp.py
    for name, ref in R.PRESETS.items():
        f = formats.get(name)
        assert ref_fmt(f) == ref, name
        assert f.name == name
        assert formats.get(f) is f
    i8 = formats.get("int8")
    assert i8 == formats.IntFormat()
    assert (i8.qmax, i8.scale_bytes) == (127, 2)
    assert formats.get("mxint8").scale_bytes == 1
    assert formats.get("int8-b128-f32").scale_bytes == 4
    assert formats.get("int4").qmax == 7
    assert formats.IntFormat(bits=2).qmax == 1
    assert formats.get("int8", rounding="stochastic").rounding == "stochastic"
    assert formats.get("int8", block_size=64).block_size == 64
    assert formats.CastFormat().dtype == "bfloat16"
    with pytest.raises(AttributeError):
        i8.bits = 4  # frozen


def test_qarray_shapes_and_pytree():
    x = jax.ShapeDtypeStruct((2, 3, 37), jnp.bfloat16)
    q = jax.eval_shape(lambda x: scinjax.quantize(x, "int8"), x)
    assert q.codes.shape == (2, 3, 37) and q.codes.dtype == jnp.int8
    assert q.scales.shape == (2, 3, 2) and q.scales.dtype == jnp.float16
    qm = jax.eval_shape(lambda x: scinjax.quantize(x, "mxint8"), x)
    assert qm.scales.dtype == ml_dtypes.float8_e8m0fnu
    leaves, tree = jax.tree_util.tree_flatten(q)
    assert len(leaves) == 3  # codes, scales and the straight-through source (ste=True)
    assert q.source.shape == x.shape and q.source.dtype == x.dtype
    assert jax.tree_util.tree_unflatten(tree, leaves).fmt == q.fmt
    q2 = jax.eval_shape(lambda x: scinjax.quantize(x, "int8", ste=False), x)
    assert len(jax.tree_util.tree_leaves(q2)) == 2 and q2.source is None


def _msg(excinfo) -> str:
    return str(excinfo.value)


@pytest.mark.parametrize(
    "make,needle",
    [
        (lambda: formats.get("int9"), "int9"),
        (lambda: formats.IntFormat(block_size=0), "block_size"),
        (lambda: formats.IntFormat(block_size=-3), "-3"),
        (lambda: formats.IntFormat(bits=1), "bits"),
        (lambda: formats.IntFormat(bits=9), "9"),
        (lambda: formats.IntFormat(scale_dtype="float8"), "float8"),
        (lambda: formats.IntFormat(rounding="sideways"), "sideways"),
        (lambda: formats.CastFormat(dtype="int8"), "int8"),
        (lambda: formats.get("int8", bits=12), "12"),
    ],
    ids=[
        "unknown-name",
        "block0",
        "block-neg",
        "bits1",
        "bits9",
        "scale-dtype",
        "rounding",
        "cast-dtype",
        "override",
    ],
)
def test_bad_format_errors(make, needle):
    with pytest.raises(ValueError) as ei:
        make()
    assert needle in _msg(ei)


@pytest.mark.parametrize(
    "x,needle",
    [
        (np.ones((2, 32), np.int32), "int32"),
        (np.ones((2, 32), np.complex64), "complex64"),
        (np.ones((2, 32), np.uint8), "uint8"),
    ],
    ids=["int32", "complex64", "uint8"],
)
def test_quantize_rejects_non_float(x, needle):
    with pytest.raises((TypeError, ValueError)) as ei:
        scinjax.quantize(jnp.asarray(x), "int8")
    assert needle in _msg(ei)


def test_quantize_rejects_0d():
    with pytest.raises(ValueError):
        scinjax.quantize(jnp.float32(1.0), "int8")


def test_noise_shape_mismatch_is_an_error():
    fmt = formats.get("int8", rounding="stochastic")
    with pytest.raises((ValueError, TypeError)):
        scinjax.quantize(jnp.ones((2, 32)), fmt, noise=jnp.zeros((2, 31)))
