"""Exact per-link bytes of MoE dispatch/combine from the routing alone (spec/moe.md).

Counting uses the integer routing only (``experts [tokens, k]``, ``sources [tokens]``),
never hidden vectors, in O(tokens * k) memory: full-size configurations (256 experts,
k = 8, 64 EP ranks, 8k tokens per rank) count in well under a second.
"""

from __future__ import annotations

import dataclasses
import math
from fractions import Fraction

import numpy as np

from scinjax.formats import get

__all__ = [
    "EP_ALGORITHMS",
    "META_BYTES_PER_PAIR",
    "EPTraffic",
    "contiguous_placement",
    "distinct_rank_counts",
    "ep_traffic",
    "expected_distinct_ranks",
    "uniform_ep_traffic",
    "vector_bytes",
]

EP_ALGORITHMS = ("all_to_all", "dedup", "dysharp")
META_BYTES_PER_PAIR = 8  # 4-byte expert index + 4-byte float32 gate weight (spec/moe.md)


@dataclasses.dataclass(frozen=True, kw_only=True)
class EPTraffic:
    """Bytes of one MoE layer's dispatch and combine on every directed link.

    Each field is a list of Python ints, index r = rank r: ``dispatch_up[r]`` is what
    rank r sends to the switch during dispatch, ``dispatch_down[r]`` what it receives;
    likewise for combine. Payload and scale bytes are summed (the wire bytes of the
    format); ``meta_up``/``meta_down`` are the routing metadata (index + weight per
    (token, expert) pair) that travels with the dispatch.
    """

    algorithm: str
    n_ranks: int
    dispatch_up: list[int]
    dispatch_down: list[int]
    combine_up: list[int]
    combine_down: list[int]
    meta_up: list[int]
    meta_down: list[int]

    @property
    def up(self) -> list[int]:
        """All bytes rank r sends (dispatch + combine + metadata)."""
        return [
            a + b + c
            for a, b, c in zip(self.dispatch_up, self.combine_up, self.meta_up, strict=True)
        ]

    @property
    def down(self) -> list[int]:
        """All bytes rank r receives (dispatch + combine + metadata)."""
        return [
            a + b + c
            for a, b, c in zip(self.dispatch_down, self.combine_down, self.meta_down, strict=True)
        ]

    @property
    def total(self) -> int:
        """Bytes on all links, both directions (each byte is counted up and down)."""
        return sum(self.up) + sum(self.down)

    @property
    def max_link_bytes(self) -> int:
        return max(self.up + self.down, default=0)

    def to_dict(self) -> dict:
        out = dataclasses.asdict(self)
        out.update(up=self.up, down=self.down, total=self.total)
        return out


def vector_bytes(fmt, hidden: int) -> int:
    """Wire bytes (payload + scales) of one ``[hidden]`` vector in ``fmt``."""
    payload, scale = get(fmt).wire_bytes((hidden,))
    return int(payload) + int(scale)


def contiguous_placement(n_experts: int, n_ranks: int) -> np.ndarray:
    """``rho(e) = e // (E / N)``: ``[E]`` int64 rank of each expert."""
    _check_int("n_experts", n_experts, 1)
    _check_int("n_ranks", n_ranks, 1)
    if n_experts % n_ranks:
        raise ValueError(
            f"n_experts={n_experts} is not divisible by n_ranks={n_ranks}; pick an EP size "
            "that divides the expert count or pass an explicit placement table"
        )
    return np.arange(n_experts, dtype=np.int64) // (n_experts // n_ranks)


def _check_int(name: str, value, lo: int) -> None:
    if isinstance(value, bool) or not isinstance(value, int | np.integer) or value < lo:
        raise ValueError(f"{name} must be an int >= {lo}, got {value!r}")


def _routing(experts, sources, n_ranks, n_experts, placement):
    """Validated ``(ranks [T, k], sources [T], placement [E])`` as int64 arrays."""
    _check_int("n_ranks", n_ranks, 1)
    _check_int("n_experts", n_experts, 1)
    experts = np.asarray(experts)
    sources = np.asarray(sources)
    if experts.ndim != 2 or not np.issubdtype(experts.dtype, np.integer):
        raise ValueError(
            f"experts must be an int array [tokens, k], got {experts.dtype}{list(experts.shape)}"
        )
    if sources.shape != experts.shape[:1] or not np.issubdtype(sources.dtype, np.integer):
        raise ValueError(
            f"sources must be an int array [tokens] = [{experts.shape[0]}] (one source rank per "
            f"token), got {sources.dtype}{list(sources.shape)}"
        )
    if experts.size and (experts.min() < 0 or experts.max() >= n_experts):
        raise ValueError(
            f"expert ids must lie in [0, {n_experts}); got [{experts.min()}, {experts.max()}]"
        )
    if sources.size and (sources.min() < 0 or sources.max() >= n_ranks):
        raise ValueError(
            f"source ranks must lie in [0, {n_ranks}); got [{sources.min()}, {sources.max()}]"
        )
    if experts.shape[1] > 1:
        srt = np.sort(experts, axis=1)
        if np.any(srt[:, 1:] == srt[:, :-1]):
            raise ValueError("each token's k expert ids must be distinct (top-k picks k experts)")
    if placement is None:
        placement = contiguous_placement(n_experts, n_ranks)
    else:
        placement = np.asarray(placement)
        if placement.shape != (n_experts,) or not np.issubdtype(placement.dtype, np.integer):
            raise ValueError(f"placement must be an int array [{n_experts}] of expert -> rank")
        if placement.min() < 0 or placement.max() >= n_ranks:
            raise ValueError(f"placement ranks must lie in [0, {n_ranks})")
    return placement.astype(np.int64)[experts], sources.astype(np.int64), placement


def distinct_rank_counts(experts, sources, *, n_ranks: int, n_experts: int, placement=None):
    """Per-link counts (not bytes) behind :func:`ep_traffic`, as int64 arrays ``[N]``.

    Returns ``(pairs_up, pairs_down, dedup_up, dedup_down, nu_up)``: remote (token, expert)
    pairs per source / destination rank, remote distinct (token, rank) pairs per source /
    destination rank, and tokens with at least one remote expert per source rank.
    """
    ranks, sources, _ = _routing(experts, sources, n_ranks, n_experts, placement)
    n_tok, k = ranks.shape
    src = np.broadcast_to(sources[:, None], ranks.shape)
    remote = ranks != src
    pairs_up = np.bincount(src[remote], minlength=n_ranks)
    pairs_down = np.bincount(ranks[remote], minlength=n_ranks)
    # distinct (token, rank) pairs: sort each token's ranks, keep first occurrences
    srt = np.sort(ranks, axis=1)
    first = np.ones_like(srt, dtype=bool)
    first[:, 1:] = srt[:, 1:] != srt[:, :-1]
    src_s = np.broadcast_to(sources[:, None], srt.shape)
    distinct_remote = first & (srt != src_s)
    dedup_up = np.bincount(src_s[distinct_remote], minlength=n_ranks)
    dedup_down = np.bincount(srt[distinct_remote], minlength=n_ranks)
    nu = remote.any(axis=1) if k else np.zeros(n_tok, dtype=bool)
    nu_up = np.bincount(sources[nu], minlength=n_ranks)
    return pairs_up, pairs_down, dedup_up, dedup_down, nu_up


def ep_traffic(
    experts,
    sources,
    *,
    n_ranks: int,
    n_experts: int,
    hidden: int,
    algorithm: str,
    dispatch_format="bf16",
    combine_format="bf16",
    placement=None,
) -> EPTraffic:
    """Exact bytes per link of one MoE layer (spec/moe.md's table), from routing alone.

    ``experts``: int ``[tokens, k]`` distinct expert ids per token; ``sources``: int
    ``[tokens]`` source rank of each token; ``placement``: optional int ``[E]`` expert ->
    rank table (default ``e // (E / N)``). Local experts never touch a link.
    """
    if algorithm not in EP_ALGORITHMS:
        raise ValueError(f"unknown EP algorithm {algorithm!r}; use one of {EP_ALGORITHMS}")
    _check_int("hidden", hidden, 1)
    beta_d = vector_bytes(dispatch_format, hidden)
    beta_c = vector_bytes(combine_format, hidden)
    pairs_up, pairs_down, dd_up, dd_down, nu_up = distinct_rank_counts(
        experts, sources, n_ranks=n_ranks, n_experts=n_experts, placement=placement
    )

    def times(beta, counts):
        return [beta * int(c) for c in counts]

    if algorithm == "all_to_all":
        d_up, d_down, c_up, c_down = pairs_up, pairs_down, pairs_down, pairs_up
    elif algorithm == "dedup":
        d_up, d_down, c_up, c_down = dd_up, dd_down, dd_down, dd_up
    else:
        d_up, d_down, c_up, c_down = nu_up, dd_down, dd_down, nu_up
    return EPTraffic(
        algorithm=algorithm,
        n_ranks=n_ranks,
        dispatch_up=times(beta_d, d_up),
        dispatch_down=times(beta_d, d_down),
        combine_up=times(beta_c, c_up),
        combine_down=times(beta_c, c_down),
        meta_up=times(META_BYTES_PER_PAIR, pairs_up),
        meta_down=times(META_BYTES_PER_PAIR, pairs_down),
    )


def expected_distinct_ranks(n_ranks: int, n_experts: int, k: int) -> Fraction:
    """``E[d] = N (1 - C(E - E/N, k) / C(E, k))`` under uniform top-k routing (exact)."""
    _check_int("k", k, 1)
    contiguous_placement(n_experts, n_ranks)  # validates divisibility
    if k > n_experts:
        raise ValueError(f"k={k} exceeds n_experts={n_experts}")
    per = n_experts // n_ranks
    return n_ranks * (1 - Fraction(math.comb(n_experts - per, k), math.comb(n_experts, k)))


def uniform_ep_traffic(
    tokens_per_rank: int,
    *,
    n_ranks: int,
    n_experts: int,
    k: int,
    hidden: int,
    algorithm: str,
    dispatch_format="bf16",
    combine_format="bf16",
) -> dict[str, Fraction]:
    """Expected bytes on ONE rank's links under uniform routing (every rank alike).

    Each token picks k distinct experts uniformly; ranks hold E/N experts each. Returns
    exact Fractions for ``dispatch_up``, ``dispatch_down``, ``combine_up``,
    ``combine_down``, ``meta_up``, ``meta_down`` (up and down agree by symmetry).
    """
    if algorithm not in EP_ALGORITHMS:
        raise ValueError(f"unknown EP algorithm {algorithm!r}; use one of {EP_ALGORITHMS}")
    _check_int("tokens_per_rank", tokens_per_rank, 0)
    n, e, t = n_ranks, n_experts, tokens_per_rank
    beta_d = vector_bytes(dispatch_format, hidden)
    beta_c = vector_bytes(combine_format, hidden)
    d_rem = expected_distinct_ranks(n, e, k) * Fraction(n - 1, n)
    pairs_rem = Fraction(k * (n - 1), n)
    p_remote = 1 - Fraction(math.comb(e // n, k), math.comb(e, k))
    per_token = {"all_to_all": (pairs_rem, pairs_rem), "dedup": (d_rem, d_rem)}
    up_cnt, down_cnt = per_token.get(algorithm, (p_remote, d_rem))
    meta = t * pairs_rem * META_BYTES_PER_PAIR
    return dict(
        dispatch_up=t * up_cnt * beta_d,
        dispatch_down=t * down_cnt * beta_d,
        combine_up=t * down_cnt * beta_c,
        combine_down=t * up_cnt * beta_c,
        meta_up=meta,
        meta_down=meta,
    )
