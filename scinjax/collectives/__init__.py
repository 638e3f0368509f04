"""All-Reduce algorithms over a named axis (spec/collectives.md)."""

from scinjax.collectives._allreduce import allreduce, axis_size, stage_key
from scinjax.collectives._config import ACCUMULATE_DTYPES, ALGORITHMS, ORDERS, Collective
from scinjax.collectives._partition import block_runs, chunk_sizes

__all__ = [
    "ACCUMULATE_DTYPES",
    "ALGORITHMS",
    "ORDERS",
    "Collective",
    "allreduce",
    "axis_size",
    "block_runs",
    "chunk_sizes",
    "stage_key",
]
