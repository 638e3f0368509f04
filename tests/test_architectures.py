"""Llama-3, Qwen2 and Mistral switches of the one model against the independent NumPy forward.

Each tiny random config turns on one family's switches (llama3 rope scaling,
GGUF per-frequency rope factors, Qwen2's Q/K/V biases with 14 query / 2 KV
heads, Mistral's sliding window). The model in exact mode must match
``numpy_llama.forward`` (float64, written from the published formulas) at
N = 1, 2, 3, 4, 8 within ``ATOL``, the tolerance of the SmolLM2 test; and
dropping the switch from the reference must move the logits by > 100 ``ATOL``,
so a switch the model ignored could not pass.
"""

from __future__ import annotations

import numpy as np
import pytest
from numpy_llama import forward, inv_freqs, random_weights
from scinjax.models import build_model
from scinjax.models.config import LlamaConfig, RopeScaling
from scinjax.models.layers import rope_inv_freq

ATOL = 2e-3  # as tests/test_smollm2.py
T = 20


def _config(**kw) -> LlamaConfig:
    base = dict(
        vocab_size=96,
        hidden_size=48,
        intermediate_size=40,
        num_layers=2,
        num_heads=4,
        num_kv_heads=2,
        head_dim=16,
        rope_theta=500.0,
        max_position=128,
    )
    return LlamaConfig(**(base | kw))


# original_max_position=80 puts wavelengths (6.3 .. 1430 at theta=500, hd=16) in all
# three llama3 branches: kept (< 20), blended (20 .. 80), divided by the factor (> 80).
LLAMA3 = RopeScaling(
    rope_type="llama3",
    factor=8.0,
    low_freq_factor=1.0,
    high_freq_factor=4.0,
    original_max_position=80,
)
FREQS = RopeScaling(rope_type="freq_factors", freq_factors=(1, 1, 1.5, 2, 4, 8, 8, 8))

ARCHS = {
    "llama3": _config(rope_scaling=LLAMA3, name="llama3"),
    "llama3-tied": _config(rope_scaling=LLAMA3, tie_embeddings=True, name="llama3-tied"),
    "rope-freqs": _config(rope_scaling=FREQS, name="rope-freqs"),
    "rope-linear": _config(rope_scaling=RopeScaling(rope_type="linear", factor=4.0)),
    "qwen2": _config(num_heads=14, num_kv_heads=2, head_dim=8, qkv_bias=True, tie_embeddings=True),
    "mistral": _config(num_heads=8, num_kv_heads=2, head_dim=8, sliding_window=5),
}

# How each switch is removed from the reference config (to show it matters).
WITHOUT = {
    "llama3": dict(rope_scaling=None),
    "llama3-tied": dict(rope_scaling=None),
    "rope-freqs": dict(rope_scaling=None),
    "rope-linear": dict(rope_scaling=None),
    "qwen2": dict(qkv_bias=False),
    "mistral": dict(sliding_window=None),
}


@pytest.fixture(scope="module", params=list(ARCHS))
def arch(request):
    config = ARCHS[request.param]
    w = random_weights(config, seed=3, scale=1.0)  # sharp enough attention to see rope changes
    ids = np.random.default_rng(1).integers(0, config.vocab_size, T)
    return request.param, config, w, ids, forward(config, w, ids)


def test_switch_matters(arch):
    name, config, w, ids, ref = arch
    off = config.replace(**WITHOUT[name])
    if name == "qwen2":
        w = {k: v for k, v in w.items() if k.rsplit(".", 1)[-1] not in ("bq", "bk", "bv")}
    assert float(np.abs(forward(off, w, ids) - ref).max()) > 100 * ATOL


@pytest.mark.parametrize("n", [1, 2, 3, 4, 8], ids=lambda n: f"N{n}")
def test_matches_numpy_forward(arch, n):
    _, config, w, ids, ref = arch
    got = build_model(config, w, tp=n, collective="exact").logits(ids)
    err = float(np.abs(got - ref).max())
    assert err < ATOL, f"max |dlogit| = {err:.3g}"


@pytest.mark.parametrize("n", [8], ids=lambda n: f"N{n}")
def test_per_rank_program_matches(arch, n):
    """The per-rank program (biases split with their heads, KV heads replicated)."""
    _, config, w, ids, ref = arch
    got = build_model(config, w, tp=n, mode="vmap_ranks").logits(ids)
    assert float(np.abs(got - ref).max()) < ATOL


@pytest.mark.parametrize("mode", ["vmap", "vmap_ranks"])
def test_greedy_respects_sliding_window(mode):
    """KV-cache decode past the window equals the NumPy forward's greedy continuation."""
    config = ARCHS["mistral"].replace(sliding_window=3)
    w = random_weights(config, seed=5)
    prompt = [5, 17, 2, 40, 33, 8]
    model = build_model(config, w, tp=4, mode=mode)
    got, rows = model.greedy(prompt, 6, return_logits=True)
    ids = list(prompt)
    for i, tok in enumerate(got):
        ref = forward(config, w, ids)[-1]
        assert float(np.abs(rows[i] - ref).max()) < ATOL, i
        assert tok == int(np.argmax(ref))
        ids.append(tok)


def test_qwen_heads_split_over_ranks():
    """14 query / 2 KV heads: uneven query split; each rank holds the KV heads it needs."""
    from scinjax.models import make_plan

    config = ARCHS["qwen2"]
    for n, counts in ((2, (7, 7)), (4, (4, 4, 3, 3)), (8, (2,) * 6 + (1, 1))):
        plan = make_plan(config, n)
        assert tuple(sum(h >= 0 for h in row) for row in plan.q_slots) == counts
        for q_row, kv_row in zip(plan.q_slots, plan.kv_slots, strict=True):
            for s, h in enumerate(q_row):
                if h >= 0:  # query head h (group 7) finds KV head h // 7 in its kv slot
                    assert kv_row[s // plan.kv_group] == h // 7


def test_inv_freq_matches_reference_and_hf_closed_form():
    """Model's static table vs the reference loop, and three frequencies by hand."""
    for scaling in (None, LLAMA3, FREQS, RopeScaling(rope_type="linear", factor=4.0)):
        np.testing.assert_allclose(
            rope_inv_freq(16, 500.0, scaling), inv_freqs(16, 500.0, scaling), rtol=1e-15
        )
    f = rope_inv_freq(16, 500.0, LLAMA3)
    base = 500.0 ** (-np.arange(0, 16, 2) / 16)
    assert f[0] == base[0] and f[7] == base[7] / 8  # short kept; long divided by the factor
    s = (80 / (2 * np.pi / base[2]) - 1) / 3  # blended
    assert np.isclose(f[2], (1 - s) * base[2] / 8 + s * base[2], rtol=1e-15)


@pytest.mark.parametrize(
    "kw,match",
    [
        (dict(sliding_window=0), "sliding_window must be a positive int"),
        (dict(qkv_bias=1), "qkv_bias must be a bool"),
        (dict(rope_scaling={"rope_type": "llama3"}), "rope_scaling must be a RopeScaling"),
        (dict(rope_scaling=RopeScaling(rope_type="freq_factors", freq_factors=(1, 2))), "needs 8"),
    ],
)
def test_bad_config_raises(kw, match):
    with pytest.raises((ValueError, TypeError), match=match):
        _config(**kw)


@pytest.mark.parametrize(
    "kw,match",
    [
        (dict(rope_type="yarn"), "rope_type 'yarn' is not supported"),
        (dict(rope_type="llama3", factor=0), "factor must be a positive number"),
        (dict(rope_type="llama3", low_freq_factor=4.0, high_freq_factor=1.0), "must exceed"),
        (dict(rope_type="linear", freq_factors=(1.0,)), "exactly when"),
    ],
)
def test_bad_rope_scaling_raises(kw, match):
    with pytest.raises(ValueError, match=match):
        RopeScaling(**kw)
