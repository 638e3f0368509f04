"""How a rank's buffer is cut into chunks/slices (spec/collectives.md, docs/semantics.md).

Pure Python integer arithmetic: shared by the emulation and the traffic ledger.
"""

from __future__ import annotations

import math

__all__ = ["chunk_sizes", "block_runs"]


def chunk_sizes(n: int, n_ranks: int) -> list[int]:
    """Element counts of N contiguous chunks of n elements; the first ``n mod N`` get one more."""
    base, extra = divmod(n, n_ranks)
    return [base + (1 if j < extra else 0) for j in range(n_ranks)]


def block_runs(shape: tuple[int, ...], block: int, n_ranks: int) -> list[tuple[int, int]]:
    """(elements, blocks) of each owner's run when whole blocks are split among N owners.

    The blocks of all rows (row-major, blocks tiling the last axis, a short final
    block per row) are cut into N contiguous runs; the first ``nblocks mod N`` runs
    hold one more block. A run's elements are contiguous in the flattened buffer.
    """
    rows = math.prod(shape[:-1]) if shape else 1
    width = shape[-1] if shape else 1
    per_row = math.ceil(width / block)
    short = width - (per_row - 1) * block  # length of each row's last block
    runs, start = [], 0
    for count in chunk_sizes(rows * per_row, n_ranks):
        end = start + count
        row_ends = end // per_row - start // per_row  # last-in-row blocks in (start, end]
        runs.append((count * block - row_ends * (block - short), count))
        start = end
    return runs
