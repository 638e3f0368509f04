"""Mixture-of-Experts expert parallelism on the emulated fabric (spec/moe.md).

Exact per-link bytes from routing alone (:func:`ep_traffic`), and bit-exact
``dispatch`` / ``combine`` over a named EP axis for ``all_to_all``, ``dedup`` and
``dysharp`` (in-switch multicast dispatch, in-switch reduced combine).
"""

from scinjax.moe._ledger import EPCallSpec, EPLedgerEntry, count_ep_traffic
from scinjax.moe._ops import Dispatched, EPConfig, combine, dispatch, ep_moe
from scinjax.moe._traffic import (
    EP_ALGORITHMS,
    META_BYTES_PER_PAIR,
    EPTraffic,
    contiguous_placement,
    distinct_rank_counts,
    ep_traffic,
    expected_distinct_ranks,
    uniform_ep_traffic,
    vector_bytes,
)

__all__ = [
    "Dispatched",
    "EPCallSpec",
    "EPLedgerEntry",
    "EPConfig",
    "combine",
    "dispatch",
    "ep_moe",
    "EP_ALGORITHMS",
    "META_BYTES_PER_PAIR",
    "EPTraffic",
    "contiguous_placement",
    "count_ep_traffic",
    "distinct_rank_counts",
    "ep_traffic",
    "expected_distinct_ranks",
    "uniform_ep_traffic",
    "vector_bytes",
]
