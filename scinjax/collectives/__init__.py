"""All-Reduce algorithms over a named axis (spec/collectives.md)."""

from scinjax.collectives._allreduce import allreduce, axis_size, stage_key
from scinjax.collectives._config import ACCUMULATE_DTYPES, ALGORITHMS, ORDERS, Collective
from scinjax.collectives._partition import block_runs, chunk_sizes
from scinjax.collectives._peers import PEER_ALGORITHMS
from scinjax.collectives._policy import CallPolicy, CallRule, parse_collective_or_policy
from scinjax.collectives._scatter_gather import all_gather, reduce_scatter

__all__ = [
    "ACCUMULATE_DTYPES",
    "ALGORITHMS",
    "ORDERS",
    "PEER_ALGORITHMS",
    "CallPolicy",
    "CallRule",
    "Collective",
    "all_gather",
    "allreduce",
    "axis_size",
    "block_runs",
    "chunk_sizes",
    "parse_collective_or_policy",
    "reduce_scatter",
    "stage_key",
]
