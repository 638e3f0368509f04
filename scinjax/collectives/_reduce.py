"""Fixed-order sums with a chosen adder precision (docs/semantics.md, "Reductions")."""

from __future__ import annotations

import jax.numpy as jnp

from scinjax.formats import ftz, to_f32

__all__ = ["round_acc", "add", "ordered_sum"]


def round_acc(v: jnp.ndarray, accumulate: str) -> jnp.ndarray:
    """``R(v)``: float32 ``v`` rounded RNE to the accumulation dtype and back (flushed)."""
    return v if accumulate == "float32" else to_f32(v.astype(accumulate))


def add(a: jnp.ndarray, b: jnp.ndarray, accumulate: str) -> jnp.ndarray:
    """One adder step on float32 operands already in the accumulation grid."""
    return round_acc(ftz(a + b), accumulate)


def ordered_sum(operands: list[jnp.ndarray], order: str, accumulate: str) -> jnp.ndarray:
    """Sum of float32 ``operands`` (each already flushed) in ``rank`` or ``pairwise`` order.

    rank: ``((x0 + x1) + x2) + ...``; pairwise: adjacent pairs level by level, an odd
    last element passing up unchanged. The first operand is taken as is (no 0.0 seed).
    """
    level = [round_acc(v, accumulate) for v in operands]
    if order == "rank":
        total = level[0]
        for v in level[1:]:
            total = add(total, v, accumulate)
        return total
    while len(level) > 1:
        pairs = [add(level[i], level[i + 1], accumulate) for i in range(0, len(level) - 1, 2)]
        level = pairs + ([level[-1]] if len(level) % 2 else [])
    return level[0]
