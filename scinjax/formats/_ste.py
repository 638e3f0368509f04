"""Straight-through gradients for ``quantize``/``dequantize`` (docs/semantics.md, "Gradients").

Rounding is piecewise constant, so the true derivative of ``dequantize(quantize(x))`` is
zero almost everywhere. With ``ste=True`` (the default) ``quantize`` keeps its input in
``QArray.source`` and ``dequantize`` passes the cotangent straight to it (the
straight-through estimator: ``d dequantize(quantize(x)) / dx = I``); the forward bits are
untouched. ``ste=False`` gives the true zero derivative.
"""

from __future__ import annotations

import dataclasses
import functools

import jax
import jax.numpy as jnp
from jax import lax

__all__ = ["ste_dequantize", "ste_quantize"]


def _check_ste(ste) -> None:
    if not isinstance(ste, bool):
        raise TypeError(f"ste must be True or False, got {ste!r}")


@jax.custom_vjp
def _straight_through(value, source):
    """``value`` unchanged; the cotangent of ``value`` goes to ``source`` (cast to its dtype)."""
    return value


def _st_fwd(value, source):
    return value, jnp.zeros((), source.dtype)  # only the dtype is needed


def _st_bwd(like, g):
    return jnp.zeros_like(g), g.astype(like.dtype)


_straight_through.defvjp(_st_fwd, _st_bwd)


def ste_quantize(quantize):
    """Adds ``ste=True`` to ``quantize(x, fmt, *, key=None, noise=None)``."""

    @functools.wraps(quantize)
    def wrapped(x, fmt, *, key=None, noise=None, ste: bool = True):
        _check_ste(ste)
        # the true derivative of a rounding is zero: codes and scales carry none (a plain
        # cast would otherwise pass JAX's derivative of astype, 1)
        q = jax.tree.map(lax.stop_gradient, quantize(x, fmt, key=key, noise=noise))
        return dataclasses.replace(q, source=jnp.asarray(x)) if ste else q

    wrapped.__doc__ = (quantize.__doc__ or "") + (
        "\n    ``ste=True`` keeps ``x`` in ``QArray.source`` so that ``dequantize`` is "
        "straight-through\n    under ``jax.grad``; ``ste=False`` gives the true zero "
        "derivative.\n"
    )
    return wrapped


def ste_dequantize(dequantize):
    """Adds ``ste=True`` to ``dequantize(q, dtype)``: straight through to ``q.source``."""

    @functools.wraps(dequantize)
    def wrapped(q, dtype=jnp.float32, *, ste: bool = True):
        _check_ste(ste)
        value = dequantize(q, dtype)
        source = getattr(q, "source", None)
        if not ste or source is None:
            return value
        return _straight_through(lax.stop_gradient(value), source)

    wrapped.__doc__ = (dequantize.__doc__ or "") + (
        "\n    ``ste=True``: the cotangent goes straight to ``q.source`` (the quantized input) "
        "when\n    ``quantize`` kept it; ``ste=False`` gives the true zero derivative.\n"
    )
    return wrapped
