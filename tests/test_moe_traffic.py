"""ep_traffic vs spec/moe.md's closed forms, written out here token by token."""

from __future__ import annotations

import itertools
import math
from fractions import Fraction

import numpy as np
import pytest

from scinjax.moe import ep_traffic, expected_distinct_ranks, uniform_ep_traffic

ALGS = ("all_to_all", "dedup", "dysharp")


def closed_form(experts, sources, n, e, hidden, alg, beta_d, beta_c, placement=None):
    """spec/moe.md's table, one token at a time in plain Python."""
    rho = (lambda x: x // (e // n)) if placement is None else (lambda x: int(placement[x]))
    d_up, d_dn, c_up, c_dn, m_up, m_dn = ([0] * n for _ in range(6))
    for ks, s in zip(experts.tolist(), sources.tolist(), strict=True):
        c = [0] * n
        for x in ks:
            c[rho(x)] += 1
        delta = [int(v > 0) for v in c]
        nu = int(any(delta[r] for r in range(n) if r != s))
        for r in range(n):
            if r == s:
                continue
            m_up[s] += 8 * c[r]
            m_dn[r] += 8 * c[r]
            if alg == "all_to_all":
                d_up[s] += beta_d * c[r]
                d_dn[r] += beta_d * c[r]
                c_up[r] += beta_c * c[r]
                c_dn[s] += beta_c * c[r]
            else:
                if alg == "dedup":
                    d_up[s] += beta_d * delta[r]
                    c_dn[s] += beta_c * delta[r]
                d_dn[r] += beta_d * delta[r]
                c_up[r] += beta_c * delta[r]
        if alg == "dysharp":
            d_up[s] += beta_d * nu
            c_dn[s] += beta_c * nu
    return d_up, d_dn, c_up, c_dn, m_up, m_dn


def routing(kind, n, e, k, tokens, seed):
    rng = np.random.default_rng(seed)
    sources = rng.integers(0, n, tokens)
    if kind == "random":
        experts = np.stack([rng.choice(e, k, replace=False) for _ in range(tokens)])
    elif kind == "skewed":  # most tokens pick from the first few experts (rank 0 hot)
        p = np.exp(-np.arange(e) / 2.0)
        experts = np.stack([rng.choice(e, k, replace=False, p=p / p.sum()) for _ in range(tokens)])
    elif kind == "all_local":  # every expert on the token's own rank
        per = e // n
        experts = np.stack([s * per + rng.choice(per, k, replace=False) for s in sources])
    elif kind == "mixed":  # half all-local, half random
        per = e // n
        experts = np.stack(
            [
                s * per + rng.choice(per, k, replace=False)
                if i % 2
                else rng.choice(e, k, replace=False)
                for i, s in enumerate(sources)
            ]
        )
    return experts.astype(np.int32), sources.astype(np.int32)


CASES = [
    ("random", 4, 16, 4),
    ("random", 8, 64, 8),
    ("skewed", 8, 32, 4),
    ("all_local", 4, 16, 2),
    ("mixed", 4, 32, 3),
    ("random", 4, 8, 1),  # k = 1
    ("random", 1, 8, 2),  # N = 1: nothing leaves a rank
    ("random", 5, 10, 2),
]


@pytest.mark.parametrize("alg", ALGS)
@pytest.mark.parametrize("case", CASES, ids=lambda c: f"{c[0]}-N{c[1]}-E{c[2]}-k{c[3]}")
@pytest.mark.parametrize("fmts", [("bf16", "bf16"), ("int8", "bf16"), ("mxint8", "int8")])
def test_bytes_equal_closed_forms(alg, case, fmts):
    kind, n, e, k = case
    hidden = 96
    experts, sources = routing(kind, n, e, k, 40, seed=n * 100 + e + k)
    # beta per formats.md: bf16 2H; int8 H + ceil(H/32)*2; mxint8 H + ceil(H/32)*1
    beta = {"bf16": 2 * hidden, "int8": hidden + 3 * 2, "mxint8": hidden + 3}
    got = ep_traffic(
        experts,
        sources,
        n_ranks=n,
        n_experts=e,
        hidden=hidden,
        algorithm=alg,
        dispatch_format=fmts[0],
        combine_format=fmts[1],
    )
    want = closed_form(experts, sources, n, e, hidden, alg, beta[fmts[0]], beta[fmts[1]])
    fields = ("dispatch_up", "dispatch_down", "combine_up", "combine_down", "meta_up", "meta_down")
    for name, w in zip(fields, want, strict=True):
        g = getattr(got, name)
        assert g == w, (name, g, w)
        assert all(type(v) is int for v in g)
    if kind == "all_local" or n == 1:
        assert got.total == 0


def test_explicit_placement():
    n, e, k = 4, 12, 3
    rng = np.random.default_rng(3)
    placement = rng.permutation(np.arange(e) % n)
    experts, sources = routing("random", n, e, k, 30, 5)
    for alg in ALGS:
        got = ep_traffic(
            experts,
            sources,
            n_ranks=n,
            n_experts=e,
            hidden=8,
            algorithm=alg,
            placement=placement,
        )
        want = closed_form(experts, sources, n, e, 8, alg, 16, 16, placement)
        assert (got.dispatch_up, got.dispatch_down, got.combine_up, got.combine_down) == want[:4]


def test_algorithm_ordering_and_saving():
    experts, sources = routing("random", 8, 64, 8, 200, 1)
    kw = dict(n_ranks=8, n_experts=64, hidden=64)
    a2a, dd, dy = (ep_traffic(experts, sources, algorithm=a, **kw) for a in ALGS)
    # dedup never sends more than all_to_all; dysharp shrinks only dispatch-up / combine-down
    assert all(x <= y for x, y in zip(dd.dispatch_up, a2a.dispatch_up, strict=True))
    assert dy.dispatch_down == dd.dispatch_down and dy.combine_up == dd.combine_up
    assert all(x <= y for x, y in zip(dy.dispatch_up, dd.dispatch_up, strict=True))
    assert sum(dy.dispatch_up) < sum(dd.dispatch_up)


def test_expectation_exact_by_enumeration():
    """E[d] and the per-rank expectations equal the average over ALL top-k subsets."""
    n, e, k, hidden = 4, 8, 3, 32
    subsets = np.array(list(itertools.combinations(range(e), k)), dtype=np.int32)
    distinct = [len({x // (e // n) for x in s}) for s in subsets.tolist()]
    assert Fraction(sum(distinct), len(subsets)) == expected_distinct_ranks(n, e, k)
    # every subset once from every source rank: mean per rank per token
    experts = np.tile(subsets, (n, 1))
    sources = np.repeat(np.arange(n, dtype=np.int32), len(subsets))
    for alg in ALGS:
        got = ep_traffic(experts, sources, n_ranks=n, n_experts=e, hidden=hidden, algorithm=alg)
        want = uniform_ep_traffic(
            len(subsets), n_ranks=n, n_experts=e, k=k, hidden=hidden, algorithm=alg
        )
        for name, value in want.items():
            assert all(Fraction(v) == value for v in getattr(got, name)), (alg, name)


def test_expected_distinct_ranks_closed_form_values():
    # N(1 - C(E-E/N,k)/C(E,k)) written out
    assert expected_distinct_ranks(8, 256, 8) == 8 * (
        1 - Fraction(math.comb(224, 8), math.comb(256, 8))
    )
    assert expected_distinct_ranks(4, 8, 1) == 1
    assert expected_distinct_ranks(1, 8, 2) == 1
    assert abs(float(expected_distinct_ranks(32, 256, 8)) - 7.27) < 0.01


def test_full_size_counts_without_activations():
    n, e, k, per_rank = 64, 256, 8, 8192
    rng = np.random.default_rng(0)
    experts = rng.integers(0, e, (n * per_rank, k))
    while True:  # redraw rows with a repeated expert: uniform k-subsets, no [T, E] array
        srt = np.sort(experts, axis=1)
        bad = np.any(srt[:, 1:] == srt[:, :-1], axis=1)
        if not bad.any():
            break
        experts[bad] = rng.integers(0, e, (int(bad.sum()), k))
    sources = np.repeat(np.arange(n, dtype=np.int32), per_rank)
    got = ep_traffic(experts, sources, n_ranks=n, n_experts=e, hidden=7168, algorithm="dysharp")
    d_rem = float(expected_distinct_ranks(n, e, k)) * (n - 1) / n
    mean_down = np.mean(got.dispatch_down) / (2 * 7168 * per_rank)
    assert abs(mean_down - d_rem) < 0.05


@pytest.mark.parametrize(
    "kwargs, match",
    [
        (dict(experts=[[0, 0]], sources=[0]), "distinct"),
        (dict(experts=[[0, 9]], sources=[0]), "expert ids"),
        (dict(experts=[[0, 1]], sources=[4]), "source ranks"),
        (dict(experts=[0, 1], sources=[0]), r"\[tokens, k\]"),
        (dict(experts=[[0, 1]], sources=[0], algorithm="ring"), "unknown EP algorithm"),
        (dict(experts=[[0, 1]], sources=[0], n_experts=6), "divisible"),
    ],
)
def test_bad_input(kwargs, match):
    base = dict(n_ranks=4, n_experts=8, hidden=16, algorithm="dedup")
    base.update(kwargs)
    with pytest.raises(ValueError, match=match):
        ep_traffic(base.pop("experts"), base.pop("sources"), **base)


def test_moe_traffic_command(tmp_path):
    import json

    from scinjax.cli import main

    out = tmp_path / "rows.json"
    png = tmp_path / "plot.png"
    argv = ["moe-traffic", "--model", "tiny-moe", "--ep", "2,4", "--tokens", "64"]
    argv += ["--formats", "bf16/bf16,int8/bf16", "--json", str(out), "--plot", str(png)]
    assert main(argv) == 0
    rows = json.loads(out.read_text())
    assert len(rows) == 2 * 2 * 2 * 3 and png.stat().st_size > 0
    # tiny-moe: H = 64, E = 8, k = 2. dysharp dispatch-up under uniform routing:
    # T * (1 - C(E/N, k) / C(E, k)) * beta_d, beta_d(int8) = 64 + 2 * 2
    row = next(
        r
        for r in rows
        if r["ep"] == 4 and r["algorithm"] == "dysharp" and r["dispatch_format"] == "int8"
    )
    want = 64 * (1 - math.comb(2, 2) / math.comb(8, 2)) * (64 + 4)
    assert row["uniform_per_rank"]["dispatch_up"] == pytest.approx(want, rel=1e-12)
