"""Tensor-parallel model: exact mode equals the unsharded model, other modes are sane.

Small random configs: `tiny` (MHA, 4 heads) and `tiny-gqa` (SmolLM2's 9 query /
3 key-value heads, MLP width 100), so N = 2, 3, 4, 8 exercise uneven splits.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from scinjax.models import build_model, get_config, make_plan, random_weights
from scinjax.models.api import make_module
from scinjax.models.tp import rank_slots, split_counts

from scinjax import Collective, IntFormat

# Exact mode reassociates float32 sums (a rank's partial sum over its heads /
# features, then the fixed-order sum over ranks, instead of one dot product), so
# it may differ from the unsharded model by rounding only: a few ulps per layer.
# Measured: <= 4.2 ulps of max|logit| over these configs and N. We allow 32 ulps
# (3.8e-6 relative), 8x headroom, yet ~300x below what one bfloat16 rounding of
# the partial sums causes (~1e-3 relative, checked below) and far below a lost or
# doubled head (O(1)); so a stray cast or a wrong split cannot pass.
EXACT_ULPS = 32
F32_ULP = 2.0**-23

CONFIGS = ("tiny", "tiny-gqa")
T = 24


@pytest.fixture(scope="module", params=CONFIGS)
def case(request):
    config = get_config(request.param)
    weights = random_weights(config, seed=1)
    ids = np.random.default_rng(0).integers(0, config.vocab_size, T)
    ref = build_model(config, weights).logits(ids)
    return config, weights, ids, ref


def _rel_err(out, ref):
    return float(np.abs(out - ref).max() / np.abs(ref).max())


@pytest.mark.parametrize("n", [1, 2, 3, 4, 8], ids=lambda n: f"N{n}")
def test_exact_matches_unsharded(case, n):
    config, weights, ids, ref = case
    out = build_model(config, weights, tp=n, collective="exact").logits(ids)
    assert out.shape == (T, config.vocab_size) and out.dtype == np.float32
    if n == 1:
        np.testing.assert_array_equal(out, ref)  # one rank: the plain model itself
    assert _rel_err(out, ref) <= EXACT_ULPS * F32_ULP


@pytest.mark.parametrize("n", [3, 8], ids=lambda n: f"N{n}")
def test_per_rank_program_matches(case, n):
    """The per-rank program (what shard_map runs), vmapped over ranks, gives the same model."""
    config, weights, ids, ref = case
    out = build_model(config, weights, tp=n, mode="vmap_ranks").logits(ids)
    assert _rel_err(out, ref) <= EXACT_ULPS * F32_ULP


@pytest.mark.parametrize(
    "coll,low,high",
    [("scin", 1e-4, 1e-2), ("ring", 1e-4, 1e-2), ("scin:int8", 1e-4, 5e-2)],
)
def test_wire_modes_differ_sanely(case, coll, low, high):
    """bf16 partial sums (and int8 links) move logits by ~1e-3 relative: nonzero, small."""
    config, weights, ids, ref = case
    out = build_model(config, weights, tp=8, collective=coll).logits(ids)
    assert np.isfinite(out).all()
    assert low < _rel_err(out, ref) < high


def test_same_arithmetic_same_bits():
    """scin and nvls add in the same order (float32, rank order, one rounding): same bits;
    so do scin:int8 and two_shot:int8 with deterministic rounding (docs/semantics.md)."""
    config = get_config("tiny-gqa")
    weights = random_weights(config, seed=2)
    ids = np.arange(T) % config.vocab_size
    out = {
        c: build_model(config, weights, tp=4, collective=c).logits(ids)
        for c in ("scin", "nvls", "scin:int8", "two_shot:int8")
    }
    shared = build_model(config, weights, tp=4).with_collective("scin:int8")
    assert str(shared.collective) == "scin:int8" and shared.wire_dtype == "bfloat16"
    np.testing.assert_array_equal(shared.logits(ids), out["scin:int8"])
    np.testing.assert_array_equal(out["scin"], out["nvls"])
    np.testing.assert_array_equal(out["scin:int8"], out["two_shot:int8"])
    assert not np.array_equal(out["scin"], out["scin:int8"])


def test_stochastic_rounding_needs_key_and_is_reproducible():
    config = get_config("tiny")
    weights = random_weights(config, seed=3)
    ids = np.arange(8)
    coll = Collective(algorithm="scin", uplink=IntFormat(rounding="stochastic"))
    model = build_model(config, weights, tp=2, collective=coll)
    with pytest.raises(ValueError, match="key"):
        model.logits(ids)
    a = model.logits(ids, key=jax.random.key(0))
    np.testing.assert_array_equal(a, model.logits(ids, key=jax.random.key(0)))
    assert not np.array_equal(a, model.logits(ids, key=jax.random.key(1)))


def test_no_retrace_on_second_call():
    config = get_config("tiny")
    model = build_model(config, random_weights(config), tp=4, collective="scin:int8")
    ids = np.arange(10)
    model.logits(ids)
    assert model.trace_count == 1
    model.logits(ids + 1)  # same shape, new values: cached
    assert model.trace_count == 1
    model.logits(np.arange(11))  # a new length compiles once more
    assert model.trace_count == 2


@pytest.mark.parametrize("n", [1, 3], ids=lambda n: f"N{n}")
def test_greedy_kv_cache_matches_full_forward(n):
    """Cached decode steps give the logits a full forward gives at those positions."""
    config = get_config("tiny-gqa")
    weights = random_weights(config, seed=4)
    model = build_model(config, weights, tp=n)
    prompt = np.array([5, 17, 3, 99, 42])
    new, step_logits = model.greedy(prompt, 6, return_logits=True)
    assert len(new) == 6 and step_logits.shape == (6, config.vocab_size)
    full = model.logits(np.concatenate([prompt, new[:-1]]))[len(prompt) - 1 :]
    assert _rel_err(step_logits, full) <= EXACT_ULPS * F32_ULP
    assert new == [int(i) for i in np.argmax(full, axis=-1)]


def test_bfloat16_compute_runs():
    config = get_config("tiny-gqa")
    weights = random_weights(config, seed=5)
    ids = np.arange(T) % config.vocab_size
    ref = build_model(config, weights).logits(ids)
    out = build_model(config, weights, tp=3, compute_dtype="bfloat16").logits(ids)
    assert out.dtype == np.float32 and _rel_err(out, ref) < 0.1


# ---- the split itself ------------------------------------------------------------------


def test_split_follows_chunk_rule():
    assert split_counts(9, 8) == (2, 1, 1, 1, 1, 1, 1, 1)
    assert split_counts(100, 3) == (34, 33, 33)
    assert rank_slots(9, 4) == ((0, 1, 2), (3, 4, -1), (5, 6, -1), (7, 8, -1))
    assert rank_slots(4, 8)[4:] == ((-1,),) * 4  # more ranks than heads: idle ranks


@pytest.mark.parametrize(
    "name,n,group,kv_slots",
    [
        ("tiny-gqa", 3, 3, ((0,), (1,), (2,))),  # whole groups per rank: no copies
        ("tiny-gqa", 2, 1, ((0, 0, 0, 1, 1), (1, 2, 2, 2, -1))),  # groups split: copies
        ("llama2-70b", 8, 8, tuple((r,) for r in range(8))),
        ("llama2-70b", 16, 4, tuple((r // 2,) for r in range(16))),  # 2 ranks share a kv head
    ],
)
def test_kv_heads_per_rank(name, n, group, kv_slots):
    plan = make_plan(get_config(name), n)
    assert plan.kv_group == group and plan.kv_slots == kv_slots


@pytest.mark.parametrize("mode,view", [("vmap", "batched"), ("shard_map", "rank")])
@pytest.mark.parametrize("n", [1, 3, 8], ids=lambda n: f"N{n}")
def test_module_params_match_plan(mode, view, n):
    """Flax init of the module and the plan's converted weights have the same tree."""
    config = get_config("tiny-gqa")
    module, plan = make_module(config, tp=n, mode=mode)
    view = "batched" if n == 1 else view

    def init(_):
        return module.init(jax.random.key(0), jnp.zeros((1, 4), jnp.int32))

    if view == "rank":  # one rank's program: needs the axis bound; drop the rank axis after
        init = jax.eval_shape(jax.vmap(init, axis_name="tp"), jnp.zeros(n))
        init = jax.tree.map(lambda a: jax.ShapeDtypeStruct(a.shape[1:], a.dtype), init)
    else:
        init = jax.eval_shape(init, 0)
    expected = plan.abstract_params(view)
    assert jax.tree.structure(init) == jax.tree.structure(expected)
    for a, b in zip(jax.tree.leaves(init), jax.tree.leaves(expected), strict=True):
        assert a.shape == b.shape
    if view == "batched":
        real = plan.batched_params(random_weights(config))
        for a, b in zip(jax.tree.leaves(real), jax.tree.leaves(expected), strict=True):
            assert a.shape == b.shape


# ---- errors ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    "kwargs,match",
    [
        (dict(tp=0), "tp"),
        (dict(tp=-2), "tp"),
        (dict(tp=2.0), "tp"),
        (dict(tp=True), "tp"),
        (dict(collective="bogus"), "algorithm"),
        (dict(collective="ring:int8"), "link formats"),
        (dict(collective="scin:int9"), "int9"),
        (dict(wire_dtype="int8"), "wire_dtype"),
        (dict(compute_dtype="float64"), "compute_dtype"),
        (dict(mode="pmap"), "mode"),
    ],
)
def test_bad_settings_raise(kwargs, match):
    config = get_config("tiny")
    with pytest.raises(ValueError, match=match):
        build_model(config, random_weights(config), **kwargs)


def test_bad_inputs_raise():
    config = get_config("tiny")
    model = build_model(config, random_weights(config), tp=2)
    for ids, match in [
        (np.array([1, config.vocab_size]), "lie in"),
        (np.array([-1, 2]), "lie in"),
        (np.zeros((2, 3), int), r"\[T\]"),
        (np.array([], int), "non-empty"),
        (np.array([0.5, 1.0]), "integers"),
        (np.zeros(config.max_position + 1, int), "max_position"),
    ]:
        with pytest.raises(ValueError, match=match):
            model.logits(ids)
    with pytest.raises(ValueError, match="n_new"):
        model.greedy([1, 2], -1)
    weights = random_weights(config)
    del weights["layers.1.wq"]
    with pytest.raises(ValueError, match="missing: layers.1.wq"):
        build_model(config, weights, tp=2)
