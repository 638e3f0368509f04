"""Find every MoE dispatch in a traced function and count its bytes (routing model).

``dispatch`` leaves a named ``jit`` marker in the jaxpr (like the All-Reduces do for
:func:`scinjax.count_traffic`), carrying the layer's static shape. Routing is data, so
from shapes alone the bytes are the **uniform-routing expectation** of spec/moe.md
(:func:`uniform_ep_traffic`); with a concrete routing use :func:`ep_traffic` on the
experts a forward returns.
"""

from __future__ import annotations

import dataclasses
import hashlib
from collections import Counter
from fractions import Fraction

import jax

from scinjax.moe._traffic import uniform_ep_traffic

__all__ = ["EPCallSpec", "EPLedgerEntry", "count_ep_traffic", "ep_marker", "lookup_ep"]

_PREFIX = "scinjax_moe_dispatch_"
_REGISTRY: dict[str, EPCallSpec] = {}


@dataclasses.dataclass(frozen=True, kw_only=True)
class EPCallSpec:
    """Static shape of one MoE layer's dispatch/combine (per rank: T tokens, k experts)."""

    algorithm: str
    n_ranks: int
    n_experts: int
    tokens: int
    k: int
    hidden: int
    dispatch_format: str
    combine_format: str


@dataclasses.dataclass(frozen=True)
class EPLedgerEntry:
    """One MoE call site, how many times it runs, and its expected bytes per rank per call."""

    spec: EPCallSpec
    calls: int
    expected: dict[str, Fraction]


def ep_marker(spec: EPCallSpec):
    """An identity ``jit`` named after ``spec`` (found by :func:`count_ep_traffic`)."""
    name = _PREFIX + hashlib.sha1(repr(spec).encode()).hexdigest()[:16]
    _REGISTRY.setdefault(name, spec)

    def mark(x):
        return x

    mark.__name__ = mark.__qualname__ = name
    return jax.jit(mark)


def lookup_ep(name: str) -> EPCallSpec | None:
    """The EPCallSpec of a dispatch marker jit name, or None (used by ``count_traffic``)."""
    return _REGISTRY.get(name) if name.startswith(_PREFIX) else None


def _walk(jaxpr, multiplicity: int, found: Counter) -> None:
    for eqn in jaxpr.eqns:
        name = str(eqn.params.get("name", ""))
        if name.startswith(_PREFIX) and name in _REGISTRY:
            found[_REGISTRY[name]] += multiplicity
            continue
        factor = int(eqn.params["length"]) if eqn.primitive.name == "scan" else 1
        for value in eqn.params.values():
            for item in value if isinstance(value, tuple | list) else (value,):
                sub = item if hasattr(item, "eqns") else getattr(item, "jaxpr", None)
                if sub is not None and hasattr(sub, "eqns"):
                    _walk(sub, multiplicity * factor, found)


def count_ep_traffic(fn, *args, **kwargs) -> list[EPLedgerEntry]:
    """Trace ``fn(*args, **kwargs)`` abstractly; one entry per MoE dispatch call site.

    Arguments may be ``jax.ShapeDtypeStruct``; nothing runs. Calls inside ``scan`` count
    ``length`` times. ``expected``: spec/moe.md's uniform-routing expectation of the bytes
    on ONE rank's links per call (exact Fractions; every rank alike).
    """
    closed = jax.make_jaxpr(fn)(*args, **kwargs)
    found: Counter = Counter()
    _walk(closed.jaxpr, 1, found)
    return [
        EPLedgerEntry(
            spec=s,
            calls=c,
            expected=uniform_ep_traffic(
                s.tokens,
                n_ranks=s.n_ranks,
                n_experts=s.n_experts,
                k=s.k,
                hidden=s.hidden,
                algorithm=s.algorithm,
                dispatch_format=s.dispatch_format,
                combine_format=s.combine_format,
            ),
        )
        for s, c in found.items()
    ]
