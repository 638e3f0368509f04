"""Gradients of the emulated collectives (docs/semantics.md, "Gradients").

Every rank receives ``y = sum_i x_i``, so the transpose sends each rank the sum of all
ranks' output cotangents: ``dx_i = sum_r g_r``, itself an All-Reduce. That backward
All-Reduce is run by a collective of its own (default: the exact fixed-order float32
reduction), so the backward pass can be emulated and quantized like the forward one.

A quantizing forward is piecewise constant in ``x``: its true derivative is zero almost
everywhere. ``ste=True`` (the default) treats the quantizers as the identity
(straight-through estimator) and sends the cotangents through the backward All-Reduce;
``ste=False`` gives the true zero derivative.
"""

from __future__ import annotations

from collections.abc import Callable

import jax
import jax.numpy as jnp
from jax import lax
from jax._src import core as _core  # the axis env: custom_vjp's bwd runs outside vmap's

__all__ = ["BACKWARD_STREAM", "with_vjp"]

# the backward All-Reduce's stochastic rounding draws from fold_in(key, BACKWARD_STREAM)
BACKWARD_STREAM = 0x6261636B  # "back"


def with_vjp(
    forward: Callable,
    backward: Callable | None,
    *,
    axis_name,
    n_ranks: int,
    has_key: bool,
) -> Callable:
    """``forward(x[, key])`` with the VJP ``dx = backward(g[, key])`` (or zero when None).

    ``forward`` and ``backward`` are per-rank functions over ``axis_name`` (``[...]`` ->
    ``[...]``). The forward bits are ``forward``'s: the wrapper only adds the rule.
    """
    # each bound axis with its size (a tuple of axes reduces over their product)
    names = axis_name if isinstance(axis_name, tuple) else (axis_name,)
    sizes = [(a, int(lax.axis_size(a))) for a in names]

    def primal(x, key=None):
        # custom_vjp may trace the forward lazily too (jax.grad of a scan whose body
        # vmaps over the axis, e.g. the TP model's layers): bind the name as in bwd.
        with _core.extend_axis_env_nd(sizes):
            return _primal(x, key)

    def _primal(x, key=None):
        y = forward(x) if key is None else forward(x, key)
        # Under vmap the reduced result is one unbatched array, broadcast to the ranks
        # only when vmap returns; its cotangent would then arrive already summed over
        # the ranks by XLA (in no fixed order). Selecting it per rank (the predicate is
        # always true: the bits are y's) makes the output per-rank, so each rank's
        # cotangent g_r reaches the backward All-Reduce.
        return jnp.where(lax.axis_index(axis_name) >= 0, y, x)

    def bwd_value(g, key):
        if backward is None:  # the true derivative of a quantizer: zero almost everywhere
            return jnp.zeros_like(g)
        # custom_vjp runs bwd after vmap has left its axis env (the batching of the
        # collectives themselves is intact): bind the name again for axis_size lookups.
        with _core.extend_axis_env_nd(sizes):
            if key is None:
                return backward(g)
            return backward(g, jax.random.fold_in(key, BACKWARD_STREAM))

    if not has_key:

        @jax.custom_vjp
        def call(x):
            return primal(x)

        def call_fwd(x):
            return primal(x), None

        def call_bwd(_, g):
            return (bwd_value(g, None),)

    else:

        @jax.custom_vjp
        def call(x, key):
            return primal(x, key)

        def call_fwd(x, key):
            return primal(x, key), key

        def call_bwd(key, g):
            return bwd_value(g, key), None

    call.defvjp(call_fwd, call_bwd)
    return call
