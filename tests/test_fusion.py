"""scinjax._fusion: fusion boundaries must never change a bit of any value."""

import jax
import jax.numpy as jnp
import ml_dtypes
import numpy as np
import pytest

from scinjax._fusion import HOIST_MIN_ELEMENTS, hoist, materialize
from scinjax.formats._f32 import compute_once

DTYPES = [
    np.float32,
    jnp.bfloat16,
    np.float16,
    np.int8,
    np.uint8,
    np.int32,
    np.uint32,
    ml_dtypes.float8_e4m3fn,
    ml_dtypes.float8_e8m0fnu,
]


def _bits(a):
    a = np.asarray(a)
    return a.view(np.dtype(f"u{a.dtype.itemsize}"))


@pytest.mark.parametrize("dtype", DTYPES, ids=lambda d: np.dtype(d).name)
@pytest.mark.parametrize("block", [None, 32, 5])
def test_materialize_keeps_every_bit(dtype, block):
    rng = np.random.default_rng(0)
    raw = rng.integers(0, 256, size=(3, 64 * np.dtype(dtype).itemsize), dtype=np.uint8)
    x = raw.view(np.dtype(dtype)).reshape(3, 64)  # every bit pattern, NaNs included
    for fn in (lambda a: materialize(a, block), jax.jit(lambda a: materialize(a, block))):
        out = fn(jnp.asarray(x))
        assert out.dtype == x.dtype and out.shape == x.shape
        np.testing.assert_array_equal(_bits(out), _bits(x))


def test_materialize_bool_float4_and_trees():
    mask = np.array([[True, False, True], [False, False, True]])
    codes = jnp.asarray(np.arange(16, dtype=np.float32) / 4).astype(jnp.float4_e2m1fn)
    tree = {"mask": jnp.asarray(mask), "codes": codes, "none": None}
    out = jax.jit(materialize)(tree)
    np.testing.assert_array_equal(np.asarray(out["mask"]), mask)
    assert out["codes"].dtype == jnp.float4_e2m1fn
    np.testing.assert_array_equal(
        np.asarray(out["codes"], np.float32), np.asarray(codes, np.float32)
    )
    assert out["none"] is None


def test_hoist_only_writes_large_arrays():
    small = jnp.arange(4.0)
    assert hoist(small, HOIST_MIN_ELEMENTS - 1) is small
    big = jax.make_jaxpr(lambda a: hoist(a, HOIST_MIN_ELEMENTS))(small)
    assert any(eqn.primitive.name.startswith("reduce") for eqn in big.eqns)
    np.testing.assert_array_equal(hoist(small, HOIST_MIN_ELEMENTS), small)


def _non_subnormal_float32(rng, n):
    """Random float32 bit patterns of every sign and exponent (NaN and Inf included),
    subnormals replaced by zeros of the same sign (compute_once's domain)."""
    bits = rng.integers(0, 2**32, size=n, dtype=np.uint64).astype(np.uint32)
    subnormal = (bits & 0x7F800000) == 0
    bits[subnormal] &= np.uint32(0x80000000)
    edges = np.array(
        [0, 0x80000000, 0x00800000, 0x80800000, 0x7F7FFFFF, 0xFF7FFFFF, 0x7F800000,
         0xFF800000, 0x7FC00000, 0xFFC00001, 0x7F800001, 0x3F800000],
        dtype=np.uint32,
    )  # fmt: skip
    return np.concatenate([edges, bits]).view(np.float32)


@pytest.mark.parametrize("block", [None, 16, 7])
def test_compute_once_keeps_every_bit(block):
    x = _non_subnormal_float32(np.random.default_rng(1), 4 * 4096 - 12).reshape(4, 4096)
    for fn in (
        lambda a: compute_once(a, block),
        jax.jit(lambda a: compute_once(a, block)),
        jax.jit(jax.vmap(lambda a: compute_once(a * 1.0, block))),
    ):
        out = fn(jnp.asarray(x))
        assert out.dtype == np.float32 and out.shape == x.shape
        got, want = _bits(out), _bits(x)
        nan = np.isnan(x)
        np.testing.assert_array_equal(got[~nan], want[~nan])
        assert np.isnan(np.asarray(out)[nan]).all()


def test_compute_once_is_one_division_xla_keeps():
    """The division must survive XLA's simplifier (a division by a constant 1 would not)."""
    hlo = jax.jit(lambda a: compute_once(a, 16)).lower(jnp.ones((4, 64))).compile().as_text()
    assert "divide(" in hlo
