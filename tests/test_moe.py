"""MoE dispatch / combine bits vs the independent NumPy reference (tests/reference_moe_np.py)."""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import ml_dtypes
import numpy as np
import pytest
import reference_moe_np as RM
from reference_np import assert_bits

from scinjax.moe import EPConfig, ep_moe, ep_traffic

ALGS = ("all_to_all", "dedup", "dysharp")
H = 40  # a short final block for block formats (B = 32)


def expert_weights(n_experts, seed=7):
    rng = np.random.default_rng(seed)
    return (rng.standard_normal((n_experts, H)) * 2.0).astype(np.float32)


def np_expert(wts):
    """Elementwise expert: float32 ``x * w_e``, rounded to bf16 (exact IEEE both sides)."""

    def fn(e, rows):
        import reference_np as R

        return R.cast(R.f32_mul(R.to_f32(rows), wts[e]), "bfloat16")

    return fn


def jax_expert(wts, cfg, n):
    _, _, by_rank = cfg.tables(n)
    wts, by_rank = jnp.asarray(wts), jnp.asarray(by_rank)

    def fn(inputs, rank):  # [E_local, C, H]
        w = wts[by_rank[rank]][:, None, :]
        from scinjax.formats import ftz, to_f32

        return ftz(to_f32(inputs) * w).astype(jnp.bfloat16)

    return fn


def make_routing(kind, n, t, e, k, seed):
    rng = np.random.default_rng(seed)
    per = e // n
    ex = np.zeros((n, t, k), np.int32)
    for s in range(n):
        for i in range(t):
            if kind == "all_local" or (kind == "mixed" and i % 3 == 0):
                ex[s, i] = s * per + rng.choice(per, k, replace=False)
            elif kind == "skewed":
                p = np.exp(-np.arange(e) / 1.5)
                ex[s, i] = rng.choice(e, k, replace=False, p=p / p.sum())
            else:
                ex[s, i] = rng.choice(e, k, replace=False)
    logits = rng.standard_normal((n, t, k)).astype(np.float32)
    gates = np.exp(logits) / np.exp(logits).sum(-1, keepdims=True)
    return ex, gates.astype(np.float32)


def make_x(n, t, seed, dtype=ml_dtypes.bfloat16):
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((n, t, H)) * np.exp2(rng.integers(-4, 5, (n, t, 1)))
    return x.astype(dtype)


@functools.lru_cache(maxsize=64)
def emulated_all(n: int, n_experts: int, fmts: tuple, capacity):
    """One jit running the three algorithms (one compile per shape family)."""
    wts = expert_weights(n_experts)
    cfgs = [
        EPConfig(
            n_experts=n_experts,
            algorithm=a,
            dispatch_format=fmts[0],
            combine_format=fmts[1],
            capacity=capacity,
        )
        for a in ALGS
    ]

    def run(x, e, g):
        return {c.algorithm: ep_moe(x, e, g, jax_expert(wts, c, n), "ep", c) for c in cfgs}

    return jax.jit(jax.vmap(run, axis_name="ep")), wts


def check_all(
    n,
    kind,
    *,
    n_experts=16,
    fmts=("bf16", "bf16"),
    capacity=None,
    t=6,
    k=2,
    seed=0,
    dtype=ml_dtypes.bfloat16,
):
    ex, gates = make_routing(kind, n, t, n_experts, k, seed)
    x = make_x(n, t, seed + 1, dtype)
    run, wts = emulated_all(n, n_experts, fmts, capacity)
    got = run(jnp.asarray(x), jnp.asarray(ex), jnp.asarray(gates))
    for alg in ALGS:
        want, kept = RM.ep_moe(
            x,
            ex,
            gates,
            np_expert(wts),
            n_experts=n_experts,
            algorithm=alg,
            dispatch_format=fmts[0],
            combine_format=fmts[1],
            capacity=capacity,
        )
        out, disp = got[alg]
        assert_bits(np.asarray(out), want, f"{alg} {fmts} N={n} {kind}")
        np.testing.assert_array_equal(np.asarray(disp.kept[0]), kept)
    return got, x, ex


@pytest.mark.parametrize("kind", ["random", "skewed", "all_local", "mixed"])
@pytest.mark.parametrize("n", [1, 2, 4, 8])
def test_bits_bf16(kind, n):
    check_all(n, kind)


@pytest.mark.parametrize("fmts", [("int8", "int8"), ("mxint8", "int4")])
def test_bits_quantized(fmts):
    check_all(4, "mixed", fmts=fmts, k=3, seed=11)


def test_capacity_drops():
    got, _, _ = check_all(4, "skewed", fmts=("int8", "int8"), capacity=3, seed=5)
    kept = np.asarray(got["dedup"][1].kept[0])
    assert (~kept).sum() > 0  # the test exercises the overflow policy


def test_k1_and_float32_activations():
    check_all(4, "mixed", fmts=("int8", "int8"), k=1, dtype=np.float32)


def test_dedup_equals_all_to_all_when_one_expert_per_rank():
    """At most one expert per rank per token: both algorithms move the same vectors, so the
    source sums the same values in the same (expert-index == rank) order."""
    n, t, k, e = 8, 6, 2, 16
    rng = np.random.default_rng(2)
    ex = np.zeros((n, t, k), np.int32)
    for s in range(n):
        for i in range(t):
            ranks = rng.choice(n, k, replace=False)
            ex[s, i] = ranks * 2 + rng.integers(0, 2, k)
    _, gates = make_routing("random", n, t, e, k, 2)
    x = make_x(n, t, 3)
    run, _ = emulated_all(n, e, ("bf16", "bf16"), None)
    got = run(jnp.asarray(x), jnp.asarray(ex), jnp.asarray(gates))
    a, d = (np.asarray(got[alg][0]) for alg in ("all_to_all", "dedup"))
    np.testing.assert_array_equal(a, d)


def test_dysharp_equals_dedup_bf16_without_local_partial():
    """spec/moe.md: with bf16 on both links and no local partial, dysharp is dedup plus one
    extra rounding of the switch's float32 sum. With d = bf16 that rounding is the one
    dedup applies at the end anyway (RNE twice to bf16 == once), so ALL bits agree; with
    d = float32 they differ exactly by the bf16 rounding of dedup's result."""
    n, t, k, e = 4, 6, 2, 16
    rng = np.random.default_rng(9)
    ex = np.zeros((n, t, k), np.int32)
    for s in range(n):
        remote = [x for x in range(e) if x // 4 != s]
        for i in range(t):
            ex[s, i] = rng.choice(remote, k, replace=False)
    _, gates = make_routing("random", n, t, e, k, 9)
    for dtype in (ml_dtypes.bfloat16, np.float32):
        x = make_x(n, t, 3, dtype)
        run, _ = emulated_all(n, e, ("bf16", "bf16"), None)
        got = run(jnp.asarray(x), jnp.asarray(ex), jnp.asarray(gates))
        outs = {alg: np.asarray(got[alg][0]) for alg in ("dedup", "dysharp")}
        if dtype == np.float32:
            bf = outs["dedup"].astype(ml_dtypes.bfloat16).astype(np.float32)
            assert_bits(outs["dysharp"], bf, "dysharp == bf16(dedup) at d=float32")
            assert not np.array_equal(outs["dysharp"], outs["dedup"])
        else:
            assert_bits(outs["dysharp"], outs["dedup"], "dysharp == dedup at d=bf16")


def test_jit_stable():
    run, _ = emulated_all(4, 16, ("bf16", "bf16"), None)
    ex, gates = make_routing("random", 4, 6, 16, 2, 0)
    x = make_x(4, 6, 1)
    a = run(jnp.asarray(x), jnp.asarray(ex), jnp.asarray(gates))["dysharp"][0]
    size = run._cache_size()
    ex2, gates2 = make_routing("skewed", 4, 6, 16, 2, 1)  # new routing data: no retrace
    run(jnp.asarray(x), jnp.asarray(ex2), jnp.asarray(gates2))
    b = run(jnp.asarray(x), jnp.asarray(ex), jnp.asarray(gates))["dysharp"][0]
    np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    assert run._cache_size() == size


def test_dispatch_inputs_are_the_dequantized_codes():
    got, x, ex = check_all(4, "mixed", fmts=("int8", "int8"), k=3, seed=4)
    disp = got["dedup"][1]
    xin = RM.dispatched_inputs(x, "int8").reshape(-1, H)
    slot = np.asarray(disp.slot_pair)  # [N, E_local, C]
    inputs = np.asarray(disp.inputs)
    k = ex.shape[-1]
    for r in range(4):
        for pos in zip(*np.nonzero(slot[r] >= 0), strict=True):
            assert_bits(inputs[r][pos], xin[slot[r][pos] // k], "dispatch")
        assert not inputs[r][slot[r] < 0].any()


def test_pair_count_matches_ep_traffic():
    """The dispatched slots on each rank are the pairs ep_traffic counts down that rank
    (plus the rank's own local pairs, which never touch a link)."""
    n, t, k, e = 4, 6, 3, 16
    got, _, ex = check_all(n, "mixed", fmts=("int8", "int8"), k=k, seed=8)
    disp = got["all_to_all"][1]
    sources = np.repeat(np.arange(n), t)
    tr = ep_traffic(
        ex.reshape(-1, k), sources, n_ranks=n, n_experts=e, hidden=H, algorithm="all_to_all"
    )
    slots = np.asarray(disp.slot_pair)
    for r in range(n):
        filled = slots[r][slots[r] >= 0]
        remote = int(np.sum(filled // (t * k) != r))
        assert tr.dispatch_down[r] == remote * 2 * H


@pytest.mark.parametrize(
    "kwargs, match",
    [
        (dict(n_experts=0), "n_experts"),
        (dict(n_experts=8, algorithm="ring"), "algorithm"),
        (dict(n_experts=8, capacity=0), "capacity"),
        (dict(n_experts=8, dispatch_format="nope"), "unknown format"),
        (dict(n_experts=4, placement=(0, 1)), "placement"),
    ],
)
def test_bad_config(kwargs, match):
    with pytest.raises(ValueError, match=match):
        EPConfig(**kwargs)


def test_bad_ep_size():
    cfg = EPConfig(n_experts=6)
    fn = jax.vmap(lambda x, e, g: ep_moe(x, e, g, lambda i, r: i, "ep", cfg), axis_name="ep")
    with pytest.raises(ValueError, match="not divisible"):
        fn(jnp.zeros((4, 2, H), jnp.bfloat16), jnp.zeros((4, 2, 1), jnp.int32), jnp.ones((4, 2, 1)))
