"""The `fp` format family: the independent NumPy reference (tests/reference_np_fp.py) checked
against hand-derived golden values and ml_dtypes, then the JAX code checked against the
reference bit for bit (eager, jit, vmap; scin/two_shot with fp link formats under vmap).

Golden values are derived by hand from formats.md in the comments next to them.
"""

from __future__ import annotations

import functools
import math
from fractions import Fraction

import jax
import jax.numpy as jnp
import ml_dtypes
import numpy as np
import pytest
import reference_np as R
import reference_np_fp as F
from reference_np import assert_bits

import scinjax
from scinjax import formats

HAS_FP = hasattr(formats, "FpFormat")
needs_api = pytest.mark.skipif(not HAS_FP, reason="scinjax.formats.FpFormat not merged yet")
E = F.ELEMENTS
BF16 = ml_dtypes.bfloat16
E8 = ml_dtypes.float8_e8m0fnu


def codes_of(*vals, elem):
    """uint8 codes of exactly representable element values (ml_dtypes decode is exact)."""
    return np.asarray(vals, np.float32).astype(E[elem].ml).view(np.uint8) & (
        (1 << E[elem].bits) - 1
    )


# =========================================================================== reference self-checks


@pytest.mark.parametrize("name", list(E))
def test_element_table_matches_ml_dtypes(name):
    """Every bit pattern decodes as ml_dtypes decodes it; M and emax as formats.md's table."""
    el = E[name]
    table = {
        "e4m3": (448, 8, 2**-9),
        "e5m2": (57344, 15, 2**-16),
        "e3m2": (28, 4, 2**-4),
        "e2m3": (7.5, 2, 2**-3),
        "e2m1": (6, 2, 2**-1),
    }
    assert (el.M, el.emax, el.values[1]) == table[name]
    codes = np.arange(1 << el.bits, dtype=np.uint8)
    theirs = codes.view(el.ml).astype(np.float32)
    assert_bits(F.decode_elem(codes, el), theirs, name)


@pytest.mark.parametrize("name", list(E))
def test_rne_matches_ml_dtypes_in_range(name):
    """In range (|r| <= M) ml_dtypes' cast is RNE: it must agree with our rounding, on random
    values, every exact value, every midpoint (tie) and points just either side of each."""
    el = E[name]
    v = el.values
    mids = (v[:-1] + v[1:]) / 2
    pts = np.concatenate([v, mids, np.nextafter(mids.astype(np.float32), 0), mids * (1 + 2**-20)])
    rng = np.random.default_rng(1)
    pts = np.concatenate([pts, rng.uniform(0, el.M, 4000), rng.uniform(0, v[3], 1000)])
    r = np.concatenate([pts, -pts]).astype(np.float32)
    r = r[np.abs(r) <= el.M]
    want = r.astype(el.ml).view(np.uint8) & ((1 << el.bits) - 1)
    np.testing.assert_array_equal(F.round_elem(r, el), want)


def test_rne_ties_and_saturation_golden():
    # e2m1 values 0 .5 1 1.5 2 3 4 6 (codes 0..7); ties go to the even code
    r = np.array([0.25, 0.75, 1.25, 1.75, 2.5, 3.5, 5, 6.5, 7, 1e30, np.inf, -5, -0.0], np.float32)
    want = [0.0, 1, 1, 2, 2, 4, 4, 6, 6, 6, 6, -4, -0.0]
    assert_bits(F.decode_elem(F.round_elem(r, E["e2m1"]), E["e2m1"]), np.float32(want), "e2m1")
    # e4m3: 464 is the midpoint 448..480 (480 not finite): saturates to 448; 1e6 too
    # e5m2: 61440 is the would-be midpoint above M = 57344 -> M; Inf -> M (saturating)
    for name, r, want in [
        ("e4m3", [464, 1e6, -449, 2**-10, 3 * 2**-11], [448, 448, -448, 0, 2**-9]),
        ("e5m2", [61440, np.inf, -1e9, 2**-17, 3 * 2**-18], [57344, 57344, -57344, 0, 2**-16]),
        ("e3m2", [30, 29.9, 2**-5, 3 * 2**-6], [28, 28, 0, 2**-4]),
        ("e2m3", [7.75, 8, 2**-4, 3 * 2**-5], [7.5, 7.5, 0, 2**-3]),
    ]:
        got = F.decode_elem(F.round_elem(np.float32(r), E[name]), E[name])
        assert_bits(got, np.float32(want), name)
    # tiny negatives round to -0 (signed zero)
    assert F.round_elem(np.float32([-(2**-12)]), E["e4m3"])[0] == 0x80


def test_stochastic_golden():
    el = E["e2m1"]
    # r = 0.3: neighbours 0 and 0.5, ratio 0.6: u < 0.6 -> 0.5 else 0
    r = np.float32([0.3] * 4 + [-0.3] * 4 + [1.0, 100.0])
    u = np.float32([0.0, 0.5999999, 0.6, 0.99] * 2 + [0.99, 0.0])
    # r = -0.3: lo = -0.5, hi = -0, ratio (r - lo)/(hi - lo) = 0.4: u < 0.4 -> -0 else -0.5
    # float32 0.3 = 0.300000011920928955078125: its ratio 0.60000002384185791015625 is
    # exactly float32(0.6), and u == ratio is not u < ratio -> lo
    want = [0.5, 0.5, 0.0, 0.0, -0.0, -0.5, -0.5, -0.5, 1.0, 6.0]
    got = F.decode_elem(F.round_elem(r, el, noise=u), el)
    assert_bits(got, np.float32(want), "stochastic")
    # unbiased on average: mean of SR(r) over a uniform grid of u equals r exactly
    x = np.float32(2.7)
    grid = (np.arange(1024, dtype=np.float32) + np.float32(0.5)) / np.float32(1024)
    vals = F.decode_elem(F.round_elem(np.full(1024, x), el, noise=grid), el)
    assert abs(vals.astype(np.float64).mean() - float(x)) < 1 / 1024


def _q(x, fmt, **kw):
    c, s, t = F.quantize(np.asarray(x, np.float32), fmt, **kw)
    return c, s, t


def test_mx_floor_scale_golden():
    fmt = F.PRESETS["mxfp4"]
    # amax 7 -> floor(log2 7) = 2, e = 2 - emax(2) = 0: S = 1; ties to even, 7 saturates to 6
    x = [0.25, 0.75, 1.25, 1.75, 2.5, 3.5, 5, 7]
    c, s, _ = _q([x], fmt)
    assert s.view(np.uint8)[0, 0] == 127
    assert_bits(F.decode_elem(c, E["e2m1"])[0], np.float32([0, 1, 1, 2, 2, 4, 4, 6]), "mxfp4")
    # amax a power of two (8): e = 1, S = 2; just below (8 - ulp): e = 0, S = 1
    for a, e in [(8.0, 1), (np.nextafter(np.float32(8), 0), 0), (2**-126, -127), (0.0, -127)]:
        _, s, _ = _q([[a, a / 4]], fmt)
        assert int(s.view(np.uint8)[0, 0]) == e + 127, (a, e)
    # mxfp8 (emax 8): amax 1.0 -> e = -8; amax 3e38 -> floor(log2) = 127 -> e = 119
    for a, e in [(1.0, -8), (3e38, 119), (2**-120, -127)]:
        _, s, _ = _q([[a]], F.PRESETS["mxfp8"])
        assert int(s.view(np.uint8)[0, 0]) == e + 127, (a, e)
    # e = -127 stores 2**-127, a float32 subnormal -> S = 0 -> every code +0 (even for -x)
    c, s, _ = _q([[2**-126, -(2**-126)]], F.PRESETS["mxfp8"])
    assert s.view(np.uint8)[0, 0] == 0 and (c == 0).all()


def test_rceil_scale_golden():
    M = 448
    R32 = Fraction(float(np.float32(1) / np.float32(M)))  # f32(1/448), exact as a fraction
    for a in [448.0, 449.0, 447.0, 1.0, 2.0**-100, 3.3e38, 896.0]:
        # the float32 product, rounded; then the smallest e with 2**e >= d
        d = Fraction(float(np.float32(float(Fraction(float(np.float32(a))) * R32))))
        e = math.ceil(math.log2(d)) if d > 0 else -127
        while Fraction(2) ** e < d:
            e += 1
        while Fraction(2) ** (e - 1) >= d:
            e -= 1
        e = max(-127, min(127, e))
        _, s, _ = _q([[a]], F.PRESETS["mxfp8-rceil"])
        assert int(s.view(np.uint8)[0, 0]) == e + 127, (a, e)
    # 448 * f32(1/448) rounds to exactly 1 -> e = 0 (not 1)
    _, s, _ = _q([[448.0]], F.PRESETS["mxfp8-rceil"])
    assert int(s.view(np.uint8)[0, 0]) == 127


def test_nv_golden():
    fmt = F.PRESETS["nvfp4"]
    # G = 2688 = 448*6 -> T_enc = 1, T_dec = 1; k = f32(1 * f32(1/6)); block 0 amax 2688 ->
    # s_b = e4m3(2688*f32(1/6)) = e4m3(448.00003 -> f32 448) = 448; block 1 amax 6 -> s_b = 1
    x = np.zeros((1, 32), np.float32)
    x[0, 0] = 2688
    x[0, 16:20] = [6, -2.5, 0.25, -0.0]
    c, s, t = _q(x, fmt)
    assert t == np.float32(1)
    assert_bits(s[0].astype(np.float32), np.float32([448, 1]), "nv block scales")
    # block 1: S = 1, m = 1: 6 -> 6, -2.5 -> tie between 2 and 3 -> even code (2), 0.25 -> 0
    got = F.dequantize_f32(c, s, fmt, t)[0, 16:20]
    assert_bits(got, np.float32([6, -2, 0, -0.0]), "nv block 1")
    # G halves -> T_enc doubles: T_enc = 5376 / 1344 = 4, T_dec = 0.25
    _, _, t = _q(x / 2, fmt)
    assert t == np.float32(0.5)  # G = 1344: T_enc = 2688/1344 = 2, T_dec = 0.5
    # a poisoned block is left out of G
    x2 = x.copy()
    x2[0, 1] = np.nan
    c, s, t = _q(x2, fmt)
    assert t == np.float32(np.float32(1) / np.float32(2688 / 6.0))  # G = 6 -> T_enc = 448
    assert np.isnan(s[0, 0].astype(np.float32)) and (c[0, :16] == 0).all()
    # all-zero array: T_enc = 1
    assert _q(np.zeros((2, 16)), fmt)[2] == np.float32(1)
    # the order T_enc * f32(1/6) matters: G = 3 -> T_enc = 896, f32(896 * f32(1/6)) =
    # 149.33334 while f32(896 / 6) = 149.33333; a = 1.125: 1.125 * 149.33334 = 168.00002
    # -> e4m3 176, whereas 168 exactly would tie 160/176 and go to the even 160
    x = np.zeros((1, 32), np.float32)
    x[0, 0], x[0, 16], x[0, 17] = 3.0, 1.125, -0.5
    _, s, t = _q(x, fmt)
    assert_bits(s[0].astype(np.float32), np.float32([448, 176]), "nv scale order")
    # elements are v * m with m = f32(1/S), not v / S: G = 3, block amax 1 -> s_b = 144,
    # S = f32(144 * T_dec) = 0.1607143; v = 0.40178576: v / S = 2.5 (a tie -> 2) but
    # v * m = 2.5000002 -> 3 (code 5); 1.0 * m = 6.2222 -> 6 (code 7)
    x[0, 16:18] = [1.0, np.float32(0.40178576)]
    c, s, _ = _q(x, fmt)
    assert s[0, 1].astype(np.float32) == 144 and list(c[0, 16:18]) == [7, 5]


def nv_order_cases() -> np.ndarray:
    """[2, 32] float32: the inputs of test_nv_golden where the op order of formats.md
    decides a bit (scale factor T_enc * f32(1/6); elements v * f32(1/S))."""
    x = np.zeros((2, 32), np.float32)
    x[:, 0] = 3.0
    x[0, 16:18] = [1.125, -0.5]
    x[1, 16:18] = [1.0, np.float32(0.40178576)]
    return x


@needs_api
def test_nv_order_cases_match_reference():
    """Each row is its own (eager) quantize call, with its own G = 3."""
    for i, row in enumerate(nv_order_cases()):
        x = row[None]
        check_q(scinjax.quantize(jnp.asarray(x), "nvfp4"), x, F.PRESETS["nvfp4"], f"nv {i}")


def test_float_scales_golden():
    # fp8-b256-f32: S = a/448; 448 -> S = 1 and codes = RNE(v)
    c, s, _ = _q([[448.0, 3.0, -17.0, 0.0]], F.PRESETS["fp8-b256-f32"])
    assert s[0, 0] == 1
    assert_bits(F.decode_elem(c, E["e4m3"])[0], np.float32([448, 3, -16, 0]), "f32 scale")
    # float16 scale saturates at 65504 instead of overflowing (a/M = 3e38/448 > 65504)
    fmt = F.RefFp(element="e4m3", block_size=4, scale="float16")
    _, s, _ = _q([[3e38, 1]], fmt)
    assert s[0, 0] == np.float16(65504)
    # tiny a: a/M below half the smallest float16 subnormal -> s = 0 -> codes +0
    c, s, _ = _q([[1e-12, -1e-12]], fmt)
    assert s[0, 0] == 0 and (c == 0).all()


def test_poisoning_golden():
    fmt = F.PRESETS["mxfp8"]
    x = np.ones((1, 70), np.float32)
    x[0, 40] = np.inf
    c, s, _ = _q(x, fmt)
    assert list(s.view(np.uint8)[0]) == [127 - 8, 255, 127 - 8]
    assert (c[0, 32:64] == 0).all()
    y = F.dequantize_f32(c, s, fmt)
    assert np.isnan(y[0, 32:64]).all() and (y[0, :32] == 1).all() and (y[0, 64:] == 1).all()


def test_wire_bytes_closed_forms():
    # payload ceil(H*bits/8) per row, ceil(H/B) scales per row, nv + 4 B per array
    for name, bits, B, sb in [
        ("mxfp8", 8, 32, 1),
        ("mxfp6-e3m2", 6, 32, 1),
        ("mxfp4", 4, 32, 1),
        ("nvfp4", 4, 16, 1),
        ("fp8-b256-f32", 8, 256, 4),
    ]:
        for shape in [(3, 37), (5,), (2, 4, 512), (1,)]:
            H, rows = shape[-1], math.prod(shape[:-1])
            extra = 4 if name == "nvfp4" else 0
            want = (rows * -(-H * bits // 8), rows * -(-H // B) * sb + extra)
            assert F.wire_bytes(shape, name) == want
    # bytes per element of formats.md's preset table (H multiple of 32, nv without its 4 B)
    per = {"mxfp8": 1.03125, "mxfp6-e2m3": 0.78125, "mxfp4": 0.53125, "fp8-b256-f32": 1.015625}
    for name, bpe in per.items():
        p, s = F.wire_bytes((4, 1024), name)
        assert (p + s) / 4096 == bpe
    p, s = F.wire_bytes((4, 1024), "nvfp4")
    assert (p + s - 4) / 4096 == 0.5625


# =========================================================================== JAX vs reference


def jfmt(f: F.RefFp):
    return formats.FpFormat(
        element=f.element, block_size=f.block_size, scale=f.scale, rounding=f.rounding
    )


def bits_u8(codes) -> np.ndarray:
    a = np.asarray(codes)
    return a if a.dtype == np.uint8 else a.view(np.uint8)


def check_q(q, x, ref: F.RefFp, what, noise=None):
    c, s, t = F.quantize(x, ref, noise=noise)
    el = ref.elem
    got_c = bits_u8(q.codes) & ((1 << el.bits) - 1)
    ok = (got_c == c) | (np.isnan(F.decode_elem(got_c, el)) & np.isnan(F.decode_elem(c, el)))
    if not ok.all():
        i = tuple(np.argwhere(~ok)[0])
        raise AssertionError(
            f"{what}: {int((~ok).sum())} codes differ; first at {i}: x={x[i]!r} "
            f"got {got_c[i]:#04x} want {c[i]:#04x}"
        )
    gs = np.asarray(q.scales)
    assert gs.dtype == s.dtype, f"{what}: scale dtype {gs.dtype} != {s.dtype}"
    if s.dtype == np.dtype(E8):
        np.testing.assert_array_equal(gs.view(np.uint8), s.view(np.uint8), what)
    else:
        assert_bits(gs, s, f"{what} scales")
    if ref.scale == "nv":
        assert_bits(np.asarray(q.tensor_scale, np.float32), np.float32(t), f"{what} T_dec")
    else:
        assert q.tensor_scale is None
    for dt in (np.float32, BF16):
        want = R.cast(F.dequantize_f32(c, s, ref, t), R.dtype_name(dt))
        assert_bits(np.asarray(scinjax.dequantize(q, dt)), want, f"{what} dequantize {dt}")


CONFIGS = [pytest.param(F.PRESETS[n], id=n) for n in F.PRESETS] + [
    pytest.param(F.RefFp(element=e, block_size=8, scale=s), id=f"{e}-b8-{s}")
    for e, s in [
        ("e5m2", "e8m0_rceil"),
        ("e3m2", "float16"),
        ("e2m3", "bfloat16"),
        ("e2m1", "float32"),
        ("e5m2", "float16"),
        ("e4m3", "bfloat16"),
        ("e3m2", "e8m0_rceil"),
    ]
]


def adversarial(ref: F.RefFp, seed: int, rows: int = 6) -> np.ndarray:
    """[rows, H] float32 with a short final block: ties at the element's half-ulps times a
    power-of-two scale, values at and beyond M, subnormal elements, amax a power of two and
    just below, all-zero blocks, NaN/Inf, signed zeros, random wide-range values."""
    rng = np.random.default_rng(seed)
    el, B = ref.elem, ref.block_size
    H = 2 * B + max(1, B // 3)
    v = el.values
    mids = (v[:-1] + v[1:]) / 2
    pool = np.concatenate([v, mids, [el.M * 1.02, el.M * 1.5, v[1] / 2, v[1] / 4]])
    out = np.zeros((rows, H), np.float64)
    for r in range(rows):
        for k in range(0, H, B):
            n = min(B, H - k)
            e = int(rng.integers(-30, 30))
            blk = rng.choice(pool, n) * rng.choice([-1, 1], n)
            kind = (r * 7 + k // B) % 6
            if kind == 0:
                blk[0] = 2.0 ** (el.emax + 1)  # amax a power of two (in units of 2**e)
            elif kind == 1:
                blk[0] = float(np.nextafter(np.float32(2.0 ** (el.emax + 1)), 0))
            elif kind == 2:
                blk = rng.standard_normal(n) * np.exp2(rng.integers(-8, 8, n))
            elif kind == 3 and r % 2:
                blk[:] = 0.0
                blk[:: max(1, n // 3)] = -0.0
            out[r, k : k + n] = blk * 2.0**e
    out[1, 3] = np.nan
    out[2, -1] = -np.inf
    out[3, B + 1] = np.inf
    return out.astype(np.float32)


@needs_api
@pytest.mark.parametrize("ref", CONFIGS)
def test_quantize_matches_reference(ref):
    """jit, float32 input (every adversarial value exact), codes/scales/T/dequantize bits."""
    fmt = jfmt(ref)
    x = adversarial(ref, 0)
    check_q(jax.jit(lambda a: scinjax.quantize(a, fmt))(jnp.asarray(x)), x, ref, "jit f32")


@needs_api
def test_quantize_eager_and_input_dtypes():
    """Eager (op by op) on bfloat16 and float16 inputs (float16 overflow gives Inf: poisoned)."""
    for seed, dt, name in [(1, BF16, "nvfp4"), (2, np.float16, "mxfp8")]:
        ref = F.PRESETS[name]
        with np.errstate(over="ignore"):
            x = adversarial(ref, seed).astype(dt)
        check_q(scinjax.quantize(jnp.asarray(x), formats.get(name)), x, ref, f"eager {dt}")


@needs_api
@pytest.mark.parametrize("name", list(F.PRESETS))
def test_presets_are_as_the_spec_table(name):
    f, ref = formats.get(name), F.PRESETS[name]
    assert (f.element, f.block_size, f.scale, f.rounding) == (
        ref.element,
        ref.block_size,
        ref.scale,
        ref.rounding,
    )
    for shape in [(3, 37), (5,), (2, 64)]:
        assert scinjax.wire_bytes(shape, name) == F.wire_bytes(shape, ref), (name, shape)


@needs_api
@pytest.mark.parametrize("ref", [F.PRESETS["mxfp8"], F.PRESETS["nvfp4"]], ids=["mxfp8", "nvfp4"])
def test_quantize_under_vmap(ref):
    """vmap over the leading axis: each slice is its own quantize call (nv: its own T)."""
    fmt = jfmt(ref)
    x = adversarial(ref, 5, rows=6).reshape(3, 2, -1)
    q = jax.jit(jax.vmap(lambda a: scinjax.quantize(a, fmt)))(jnp.asarray(x))
    for i in range(3):
        qi = jax.tree.map(lambda a, i=i: a[i], q)
        check_q(qi, x[i], ref, f"vmap slice {i}")


@needs_api
@pytest.mark.parametrize("name", list(E))
def test_every_finite_code_round_trips(name):
    """Blocks holding every finite code times S = 2**e (with +-M present) quantize back to
    exactly those codes and that scale, and dequantize to c * S."""
    el = E[name]
    ref = F.RefFp(element=name, block_size=len(el.values), scale="e8m0_floor")
    fmt = jfmt(ref)
    codes = np.arange(1 << el.bits, dtype=np.uint8)
    finite = codes[np.isfinite(F.decode_elem(codes, el))]
    rows = []
    for e in (-3, 0, 5):
        for sign in (0, el.sign_bit):
            c = (np.arange(el.n_pos, dtype=np.uint8) | sign).astype(np.uint8)
            rows.append(F.decode_elem(c, el) * np.float32(2.0**e))
    x = np.stack(rows)
    q = jax.jit(lambda a: scinjax.quantize(a, fmt))(jnp.asarray(x))
    got = bits_u8(q.codes) & ((1 << el.bits) - 1)
    assert set(np.unique(got)) >= set(finite)
    for i, e in enumerate([-3, -3, 0, 0, 5, 5]):
        sign = el.sign_bit if i % 2 else 0
        want = (np.arange(el.n_pos) | sign).astype(np.uint8)
        np.testing.assert_array_equal(got[i], want)
        assert int(np.asarray(q.scales).view(np.uint8)[i, 0]) == e + 127
    y = np.asarray(scinjax.dequantize(q, jnp.float32))
    assert_bits(y, x, "round trip")


@needs_api
@pytest.mark.parametrize(
    "ref",
    [
        F.RefFp(element="e2m1", block_size=16, scale="nv", rounding="stochastic"),
        F.RefFp(element="e4m3", block_size=32, scale="e8m0_floor", rounding="stochastic"),
        F.RefFp(element="e3m2", block_size=8, scale="float16", rounding="stochastic"),
    ],
    ids=["nvfp4-sr", "mxfp8-sr", "e3m2-f16-sr"],
)
def test_stochastic_with_caller_noise(ref):
    fmt = jfmt(ref)
    x = adversarial(ref, 9, rows=4)
    u = np.random.default_rng(3).random(x.shape).astype(np.float32)
    u[0, :4] = [0.0, np.nextafter(np.float32(1), 0), 0.5, 0.25]
    if ref.scale == "e8m0_floor":
        # block 0 of row 1: amax M -> S = 1; r = +-(lo + 0.3 step) with u exactly equal to
        # the ratio (r - lo)/(hi - lo) of formats.md: not u < ratio -> the lo neighbour
        v = ref.elem.values
        k = len(v) // 2
        r0 = np.float32(v[k] + (v[k + 1] - v[k]) * 0.3)
        x[1, : ref.block_size] = 0
        x[1, 0], x[1, 1], x[1, 2] = ref.elem.M, r0, -r0
        ratio = (Fraction(float(r0)) - Fraction(v[k])) / Fraction(v[k + 1] - v[k])
        u[1, 1], u[1, 2] = np.float32(ratio), np.float32(1 - ratio)
        assert Fraction(float(u[1, 1])) == ratio and Fraction(float(u[1, 2])) == 1 - ratio
    q = jax.jit(lambda a, n: scinjax.quantize(a, fmt, noise=n))(jnp.asarray(x), jnp.asarray(u))
    check_q(q, x, ref, "sr jit", noise=u)


# --------------------------------------------------------------------------- collectives

AX = "tp"


@functools.cache
def _vfn(alg, up, down, with_key):
    if with_key:
        f = jax.vmap(
            lambda t, k: scinjax.allreduce(t, AX, alg, uplink=up, downlink=down, key=k),
            (0, None),
            axis_name=AX,
        )
    else:
        f = jax.vmap(
            lambda t: scinjax.allreduce(t, AX, alg, uplink=up, downlink=down), axis_name=AX
        )
    return jax.jit(f)


def rankdata(N, shape, dt, seed):
    rng = np.random.default_rng(seed)
    v = rng.standard_normal((N,) + shape) * np.exp2(rng.integers(-8, 9, (N,) + shape))
    v[rng.random(v.shape) < 0.05] = 0.0
    return v.astype(dt)


def jlink(f):
    return jfmt(F.get(f)) if isinstance(F.get(f), F.RefFp) else f


LINKS = [
    ("scin", "mxfp8", "mxfp8"),
    ("scin", "nvfp4", "nvfp4"),
    ("scin", "bf16", "mxfp4"),
    ("scin", "mxfp6-e3m2", "fp8-b256-f32"),
    ("two_shot", "mxfp8", "mxfp8"),
    ("two_shot", "nvfp4", "nvfp4"),
    ("two_shot", "mxfp4", "mxint8"),
    ("two_shot", "mxfp8-rceil", "mxfp6-e2m3"),
]


# every link configuration at two rank counts; together they cover N = 2, 3, 4, 8 each
LINK_GRID = [
    pytest.param(a, u, d, N, id=f"{a}:{u}/{d}-N{N}")
    for i, (a, u, d) in enumerate(LINKS)
    for N in ((2, 3, 4, 8)[i % 4], (2, 3, 4, 8)[(i + 2) % 4])
]


@needs_api
@pytest.mark.parametrize("alg,up,down,N", LINK_GRID)
def test_allreduce_fp_links_match_reference(alg, up, down, N):
    x = rankdata(N, (3, 37), BF16, 100 + N)
    x[N - 1, 1, 5] = np.nan  # a poisoned block
    out = np.asarray(_vfn(alg, jlink(up), jlink(down), False)(jnp.asarray(x)))
    want = F.allreduce(x, alg, uplink=up, downlink=down)
    for r in range(N):
        assert_bits(out[r], want, f"{alg}:{up}/{down} N={N} rank {r}")


def fold_in_noise(key):
    def noise(stage, rank, shape):
        k = jax.random.fold_in(jax.random.fold_in(key, stage), rank)
        return np.asarray(jax.random.uniform(k, shape, jnp.float32))

    return noise


@needs_api
@pytest.mark.parametrize("alg", ["scin", "two_shot"])
def test_allreduce_fp_stochastic_matches_reference(alg):
    N = 3
    ref = F.RefFp(element="e2m1", block_size=16, scale="nv", rounding="stochastic")
    x = rankdata(N, (2, 40), BF16, 7)
    key = jax.random.key(4)
    out = np.asarray(_vfn(alg, jfmt(ref), jfmt(ref), True)(jnp.asarray(x), key))
    want = F.allreduce(x, alg, uplink=ref, downlink=ref, noise=fold_in_noise(key))
    for r in range(N):
        assert_bits(out[r], want, f"{alg} nv stochastic rank {r}")


@needs_api
def test_two_shot_rejects_mixed_block_sizes():
    x = jnp.zeros((2, 64), jnp.bfloat16)
    with pytest.raises(ValueError):
        jax.vmap(
            lambda t: scinjax.allreduce(t, AX, "two_shot", uplink="mxfp8", downlink="nvfp4"),
            axis_name=AX,
        )(x)


def test_nv_tiny_tensor_scale_flushes():
    """G < 2688/FLT_MAX: T_enc saturates at the float32 maximum, T_dec = 1/FLT_MAX is a
    float32 subnormal -> flushed to 0 -> S = 0 -> every code +0 (block scales still stored)."""
    x = np.zeros((1, 32), np.float32)
    x[0, :2] = [1e-36, -5e-37]
    x[0, 17] = 3e-37
    c, s, t = F.quantize(x, "nvfp4")
    assert t == 0 and not np.signbit(t) and (c == 0).all()
    # s_b = e4m3(a * f32(FLT_MAX * f32(1/6))): 1e-36 * 5.67e37 = 56.7 -> 56; 3e-37 -> 17.01 -> 18
    assert_bits(s[0].astype(np.float32), np.float32([56, 18]), "nv tiny block scales")
    if HAS_FP:
        check_q(scinjax.quantize(jnp.asarray(x), "nvfp4"), x, F.PRESETS["nvfp4"], "nv tiny G")


def _run_wire(fmt, shape, B, N):
    """Wire bytes (payload, scale) of each owner's run of two_shot (empty runs: 0 bytes)."""
    out = []
    H = shape[-1]
    for lo, hi, nb in R.two_shot_runs(shape, B, N):
        del nb
        if hi == lo:
            out.append((0, 0))
            continue
        # a run is whole blocks: payload ceil(elements*bits/8), scales blocks*scale_bytes,
        # plus nv's 4-byte tensor scale once per run
        nblocks = sum(1 for e in range(lo, hi) if (e % H) % B == 0)
        f = F.get(fmt)
        sb = f.scale_bytes
        extra = 4 if isinstance(f, F.RefFp) and f.scale == "nv" else 0
        out.append((-(-(hi - lo) * f.bits // 8), nblocks * sb + extra))
    return out


@needs_api
@pytest.mark.parametrize(
    "alg,up,down,N,shape",
    [
        ("scin", "nvfp4", "mxfp4", 3, (3, 37)),
        ("scin", "mxfp6-e2m3", "fp8-b256-f32", 8, (2, 300)),
        ("two_shot", "nvfp4", "nvfp4", 3, (3, 37)),
        ("two_shot", "nvfp4", "nvfp4", 8, (3, 37)),
        ("two_shot", "mxfp8", "mxfp6-e3m2", 3, (1, 16)),
        ("two_shot", "mxfp4", "mxint8", 4, (5, 70)),
    ],
)
def test_fp_link_bytes_closed_form(alg, up, down, N, shape):
    """scin: wire(x) on every link. two_shot (docs/semantics.md): with w_j the wire bytes of
    run j, up[i] = sum_{j != i} w_up_j + (N-1) w_dn_i, down[i] = (N-1) w_up_i + sum_{j != i}
    w_dn_j, payload and scales apart."""
    from scinjax.traffic import collective_record

    rec = collective_record(
        alg, n_ranks=N, shape=shape, dtype=jnp.bfloat16, uplink=up, downlink=down
    )
    if alg == "scin":
        (pu, su), (pd, sd) = F.wire_bytes(shape, up), F.wire_bytes(shape, down)
        want = {"up_payload": [pu] * N, "up_scale": [su] * N}
        want |= {"down_payload": [pd] * N, "down_scale": [sd] * N}
    else:
        B = F.get(up).block_size
        wu, wd = _run_wire(up, shape, B, N), _run_wire(down, shape, B, N)
        want = {}
        for k, kind in enumerate(("payload", "scale")):
            tu, td = sum(w[k] for w in wu), sum(w[k] for w in wd)
            want[f"up_{kind}"] = [tu - wu[i][k] + (N - 1) * wd[i][k] for i in range(N)]
            want[f"down_{kind}"] = [(N - 1) * wu[i][k] + td - wd[i][k] for i in range(N)]
    for field, v in want.items():
        assert list(getattr(rec, field)) == v, (field, list(getattr(rec, field)), v)
