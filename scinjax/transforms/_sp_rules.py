"""``emulate`` rules for ``lax.psum_scatter`` and ``lax.all_gather`` (sequence parallelism).

Each call over one named axis (no index groups, float operand) becomes
:func:`scinjax.reduce_scatter` / :func:`scinjax.all_gather` on the scattered /
gathered dimension moved to the front; anything else is bound unchanged. Call sites
share ``emulate``'s numbering and ``policy``; labels are ``reduce_scatter<i>`` /
``all_gather<i>``.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from scinjax.collectives import all_gather, reduce_scatter
from scinjax.transforms._emulate import CallSite, _bind, register_rewrite

__all__: list[str] = []

_FLOATS = ("bfloat16", "float16", "float32")


def _site(eqn, x, ctx):
    axes = tuple(eqn.params["axis_name"])
    aval = jax.typeof(x)
    site = CallSite(index=ctx.count, axes=axes, shape=tuple(aval.shape), dtype=aval.dtype.name)
    ctx.count += 1
    if eqn.params.get("axis_index_groups") is not None or len(axes) != 1:
        return site, None
    if not isinstance(axes[0], str) or aval.dtype.name not in _FLOATS:
        return site, None
    return site, ctx.pick(site)


def _key(ctx, site):
    return None if ctx.key is None else jax.random.fold_in(ctx.key, site.index)


def _reduce_scatter_rule(eqn, invals, ctx):
    (x,) = invals
    site, coll = _site(eqn, x, ctx)
    if coll is None:
        return [_bind(eqn, invals)]
    dim, tiled = eqn.params["scatter_dimension"], eqn.params["tiled"]
    front = jnp.moveaxis(x, dim, 0)  # [m, ...]
    out = reduce_scatter(
        front,
        site.axes[0],
        coll,
        key=_key(ctx, site),
        label=f"reduce_scatter{site.index}",
        backward=ctx.backward,
    )  # [m/N, ...]
    if not tiled:  # m == N: the scattered dimension disappears, the others keep their order
        return [out[0]]
    return [jnp.moveaxis(out, 0, dim)]


def _all_gather_rule(eqn, invals, ctx):
    (x,) = invals
    site, coll = _site(eqn, x, ctx)
    if coll is None:
        return [_bind(eqn, invals)]
    dim, tiled = eqn.params["all_gather_dimension"], eqn.params["tiled"]
    n = eqn.params["axis_size"]
    front = jnp.moveaxis(x, dim, 0) if tiled else x[None]  # [m, ...]
    out = all_gather(
        front,
        site.axes[0],
        coll,
        key=_key(ctx, site),
        label=f"all_gather{site.index}",
        backward=ctx.backward,
    )  # [N m, ...]
    if not tiled:  # a new axis of size N at dim
        return [jnp.moveaxis(out.reshape((n,) + x.shape), 0, dim)]
    return [jnp.moveaxis(out, 0, dim)]


register_rewrite("reduce_scatter", _reduce_scatter_rule)
register_rewrite("all_gather", _all_gather_rule)
