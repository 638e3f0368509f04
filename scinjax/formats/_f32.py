"""Float32 arithmetic that gives the same bits on every backend (spec/formats.md).

Flush-to-zero gives the same result whatever the backend's denormal mode; divisions
are shielded from XLA's rewrite of ``x / broadcast(s)`` into ``x * broadcast(1 / s)``.
"""

from __future__ import annotations

import jax.numpy as jnp
from jax import lax

__all__ = ["ftz", "to_f32", "exact_div", "compute_once", "check_float_input"]

_TINY = 2.0**-126  # the smallest normal float32
INPUT_DTYPES = (jnp.dtype(jnp.bfloat16), jnp.dtype(jnp.float16), jnp.dtype(jnp.float32))


def ftz(v: jnp.ndarray) -> jnp.ndarray:
    """Float32 ``v`` with every subnormal replaced by a zero of the same sign.

    ``|v| < 2**-126`` holds exactly for zeros and subnormals in either denormal mode (a
    denormals-are-zero compare sees 0), and ``v * 0`` is the zero of v's sign (NaN and Inf
    fail the compare). Float ops, not bit casts: XLA:CPU fuses and vectorizes them (the
    bit-cast form made a fused dequantize-and-sum 3x slower).
    """
    return jnp.where(jnp.abs(v) < _TINY, v * 0.0, v)


def to_f32(x: jnp.ndarray) -> jnp.ndarray:
    """Exact conversion to float32, then flush-to-zero (how every input enters arithmetic)."""
    return ftz(x.astype(jnp.float32))


def exact_div(num: jnp.ndarray, den: jnp.ndarray | float, *, flush: bool = True) -> jnp.ndarray:
    """IEEE float32 ``num / den`` (RNE, flushed), broadcasting ``den`` to ``num``'s shape.

    ``flush=False`` skips the flush of the quotient, for callers whose result provably does
    not depend on it (it keeps XLA from fusing the division: measured 4x slower on CPU).

    XLA's algebraic simplifier turns a division by a broadcast (or a constant) into a
    multiplication by its reciprocal, which changes last bits. The divisor is therefore
    built at ``num``'s full shape with a data dependence on ``num`` (adding a zero derived
    from it), so that under ``vmap`` it is batched like ``num`` instead of being an
    unbatched value broadcast at the division, and kept behind an optimization barrier.
    (A barrier alone is not enough: under ``vmap`` the constant divisor stays unbatched
    and the broadcast reappears after the barrier.)
    """
    zero = jnp.where(jnp.isfinite(num), num, 0.0) * 0.0  # +-0, never NaN
    den_full = lax.optimization_barrier(jnp.asarray(den, jnp.float32) + zero)
    quotient = num / den_full
    return ftz(quotient) if flush else quotient


def compute_once(x: jnp.ndarray, block: int | None = None) -> jnp.ndarray:
    """Flushed float32 ``x`` (no subnormals) unchanged, computed once for all its consumers.

    ``scinjax._fusion.materialize`` writes through a reduction, and XLA:CPU fuses the
    whole producer chain into that reduction's loop, which it does not vectorise. A
    division is the other kind of op XLA counts as expensive, so it is not duplicated
    into several consumers either, and it stays an elementwise loop: ``exact_div(x, 1)``
    (a divisor XLA cannot fold away), exact for every value but a subnormal, which a
    denormals-are-zero divider would read as 0. ``block``: compute over
    ``[..., H / block, block]`` when it divides the last axis (XLA:CPU vectorises a
    per-block broadcast in such a loop, not in a flat one).
    """
    shape = x.shape
    if block and shape and shape[-1] % block == 0:
        x = x.reshape(shape[:-1] + (shape[-1] // block, block))
    return exact_div(x, 1.0, flush=False).reshape(shape)


def check_float_input(x, what: str) -> None:
    """TypeError unless ``x`` is a bfloat16/float16/float32 array."""
    dtype = getattr(x, "dtype", None)
    if dtype is None:
        raise TypeError(f"{what} needs a JAX/NumPy float array, got {type(x).__name__}")
    if jnp.dtype(dtype) not in INPUT_DTYPES:
        raise TypeError(
            f"{what} needs bfloat16, float16 or float32 input, got dtype {jnp.dtype(dtype)}; "
            "cast integer data to a float dtype first (complex data is not supported)"
        )
