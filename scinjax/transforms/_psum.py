"""``scinjax.psum``: ``lax.psum``'s signature and semantics over the emulated collectives.

Tuple axis names, pytrees and non-float leaves behave as in ``lax.psum``; float leaves
(bf16/f16/f32) go through :func:`scinjax.allreduce`. Under ``shard_map`` with
``check_vma=True`` the result is typed replicated over the reduced axes (``out_specs=P()``
works) by one more reduction in which every rank but rank 0 adds ``-0.0``: ``y + (-0.0)``
is ``y`` for every float32/bf16/f16 value (``+0.0``, NaN and infinities included), in any
order, so the emulated bits are kept exactly.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
from jax import lax

from scinjax.collectives import Collective, allreduce

__all__ = ["REPLICATE_NAME", "psum", "as_replicated"]

# the jit name of the exact replication step (scinjax.emulate leaves it alone)
REPLICATE_NAME = "scinjax_replicate"

_FLOATS = ("bfloat16", "float16", "float32")


def _axes(axis_name) -> tuple:
    if isinstance(axis_name, (list, set, frozenset)):
        raise TypeError(
            f"axis_name must be a name or a tuple of names (as lax.psum), got {axis_name!r}"
        )
    return axis_name if isinstance(axis_name, tuple) else (axis_name,)


def _varying_axes(aval) -> frozenset:
    """Axes a shard_map value is typed varying over (the pinned JAX keeps them in
    ``aval.mat.varying``; older versions in ``aval.vma``); empty outside shard_map."""
    mat = getattr(aval, "mat", None)
    if mat is not None and hasattr(mat, "varying"):
        return frozenset(mat.varying)
    return frozenset(getattr(aval, "vma", ()))


def as_replicated(y, axis_name):
    """``y`` (identical on every rank of ``axis_name``) typed replicated for ``shard_map``.

    A no-op unless ``y`` is typed varying over those axes (``shard_map`` with
    ``check_vma=True``): then ``psum`` of ``y`` at rank 0 and ``-0.0`` elsewhere, which is
    ``y`` bit for bit. Shapes unchanged: ``[...] -> [...]``.
    """
    axes = _axes(axis_name)
    vma = _varying_axes(jax.typeof(y))
    varying = tuple(a for a in axes if a in vma)
    if not varying:
        return y
    return _replicate(varying)(y)


@functools.lru_cache(maxsize=256)
def _replicate(axes: tuple):
    def replicate(y):
        first = lax.axis_index(axes) == 0
        return lax.psum(jnp.where(first, y, jnp.asarray(-0.0, y.dtype)), axes)

    replicate.__name__ = replicate.__qualname__ = REPLICATE_NAME
    return jax.jit(replicate)


def psum(
    x,
    axis_name,
    *,
    collective: str | Collective = "exact",
    axis_index_groups=None,
    key=None,
    label: str | None = None,
    backward: str | Collective = "exact",
    ste: bool = True,
):
    """Drop-in for ``lax.psum(x, axis_name)``: ``sum_i x_i`` over the named axis/axes.

    ``x``: any pytree; float leaves ``[...]`` are All-Reduced by ``collective`` (a spec
    such as ``"scin:int8"`` or a Collective; default the exact fixed-order float32
    reduction), other leaves (ints, Python scalars: ``psum(1, "tp")`` is the axis size)
    by ``lax.psum``. Every rank receives identical bits; under ``shard_map`` the result is
    typed replicated, so ``out_specs=P()`` works with the default ``check_vma=True``.
    ``backward``/``ste``/``key``/``label`` as in :func:`scinjax.allreduce`.
    """
    if axis_index_groups is not None:
        raise ValueError(
            "scinjax.psum does not emulate axis_index_groups; use lax.psum for grouped "
            "reductions, or reduce over a mesh axis of its own"
        )
    axes = _axes(axis_name)
    coll = Collective.parse(collective)
    if not axes:
        return x
    name = axes[0] if len(axes) == 1 else axes

    def one(leaf):
        leaf_arr = jnp.asarray(leaf) if not hasattr(leaf, "dtype") else leaf
        if jnp.dtype(leaf_arr.dtype).name not in _FLOATS:
            return lax.psum(leaf, name)
        y = allreduce(leaf_arr, name, coll, key=key, label=label, backward=backward, ste=ste)
        return as_replicated(y, name)

    return jax.tree.map(one, x)
