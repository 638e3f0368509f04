"""Each All-Reduce call leaves a named ``jit`` in the jaxpr, so the traffic ledger can find
it (inside scan, vmap, shard_map, nested jit) without running any arithmetic."""

from __future__ import annotations

import dataclasses
import hashlib

from scinjax.formats import Format

__all__ = ["CallSpec", "MARKER_PREFIX", "marker_name", "lookup"]

MARKER_PREFIX = "scinjax_allreduce_"
_REGISTRY: dict[str, CallSpec] = {}


@dataclasses.dataclass(frozen=True, kw_only=True)
class CallSpec:
    """Static description of one All-Reduce call on one array (what the ledger counts)."""

    algorithm: str
    n_ranks: int
    shape: tuple[int, ...]
    dtype: str
    uplink: Format | None
    downlink: Format | None
    order: str
    accumulate: str
    label: str | None
    phase: str = "forward"  # "backward": the All-Reduce of cotangents (collectives/_grad.py)


def marker_name(spec: CallSpec) -> str:
    """A stable jit name for ``spec``, registered for :func:`lookup`."""
    digest = hashlib.sha1(repr(spec).encode()).hexdigest()[:16]
    name = MARKER_PREFIX + digest
    _REGISTRY.setdefault(name, spec)
    return name


def lookup(name: str) -> CallSpec | None:
    """The CallSpec of a marker jit name, or None if ``name`` is not a marker."""
    return _REGISTRY.get(name) if name.startswith(MARKER_PREFIX) else None
