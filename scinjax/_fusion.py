"""Fusion boundaries XLA keeps: write a value to memory once instead of recomputing it.

``lax.optimization_barrier`` does not survive to XLA:CPU's fusion pass, so a value with
several consumers is recomputed inside each of them (with its producers' whole chain,
up to the first op XLA deems expensive, whose float32 output is then what gets written),
and a per-block value broadcast over its block is recomputed for every element. XLA
counts a reduction as expensive, so it neither duplicates one into several consumers
nor fuses one into a consumer that reads each of its elements many times (a broadcast):
``materialize`` passes the bits through a bitwise-or reduction with zeros over a new
axis of size 2, exact for every dtype, one streaming pass. (A single elementwise
consumer still fuses it: nothing is recomputed then.) No result changes by a bit.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

__all__ = ["materialize", "hoist", "HOIST_MIN_ELEMENTS"]

# below this many elements, recomputing per-block values per element costs less than
# the extra kernel that writes them
HOIST_MIN_ELEMENTS = 1 << 15

_UINT = {1: jnp.uint8, 2: jnp.uint16, 4: jnp.uint32}


def materialize(tree, block: int | None = None):
    """``tree`` unchanged in value, each array leaf written to memory once (module doc).

    ``block``: view a leaf's last axis as ``[H / block, block]`` while writing it (when
    it divides), so that the loop producing it runs over whole blocks: XLA:CPU
    vectorizes a per-block broadcast there, and not across a flat axis. Leaves narrower
    than a byte (float4) pass through unchanged.
    """
    return jax.tree.map(lambda a: _materialize_leaf(a, block), tree)


def hoist(tree, elements: int):
    """Per-block values (``tree``) of an array of ``elements`` values, computed once.

    Fused into an elementwise loop, a value of shape ``[..., nb]`` broadcast over blocks
    is recomputed for every element; written once, the loop only reads it. Small arrays
    keep the recomputation (cheaper than one more kernel).
    """
    return materialize(tree) if elements >= HOIST_MIN_ELEMENTS else tree


def _materialize_leaf(a, block):
    if not hasattr(a, "dtype") or not hasattr(a, "shape") or a.size == 0:
        return a
    shape = a.shape
    if block and shape and shape[-1] > block and shape[-1] % block == 0:
        blocks = a.reshape(shape[:-1] + (shape[-1] // block, block))
        return _materialize_leaf(blocks, None).reshape(shape)
    dtype = jnp.dtype(a.dtype)
    if dtype == jnp.bool_:
        return _materialize_leaf(a.astype(jnp.uint8), None) != 0
    uint = _UINT.get(dtype.itemsize)
    if uint is None or np.dtype(dtype).itemsize * 8 != _bit_width(dtype):
        return a
    bits = a if dtype == jnp.dtype(uint) else lax.bitcast_convert_type(a, uint)
    merged = lax.reduce(
        jnp.stack([bits, jnp.zeros_like(bits)]), np.array(0, uint), lax.bitwise_or, (0,)
    )
    return merged if dtype == jnp.dtype(uint) else lax.bitcast_convert_type(merged, dtype)


def _bit_width(dtype) -> int:
    """Bits per element (4 for float4: it shares a byte, so it cannot be bit-cast alone)."""
    if jnp.issubdtype(dtype, jnp.floating):
        return int(jnp.finfo(dtype).bits)
    return 8 * np.dtype(dtype).itemsize
