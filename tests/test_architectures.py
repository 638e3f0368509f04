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


# Every family at every N; the variants (tied head, linear scaling) at two N to save time.
FULL_SWEEP = ("llama3", "rope-freqs", "qwen2", "mistral")


@pytest.mark.parametrize("n", [1, 2, 3, 4, 8], ids=lambda n: f"N{n}")
def test_matches_numpy_forward(arch, n):
    name, config, w, ids, ref = arch
    if name not in FULL_SWEEP and n not in (1, 4):
        pytest.skip("variant: N = 1 and 4 only")
    got = build_model(config, w, tp=n, collective="exact").logits(ids)
    err = float(np.abs(got - ref).max())
    assert err < ATOL, f"max |dlogit| = {err:.3g}"


@pytest.mark.parametrize("n", [8], ids=lambda n: f"N{n}")
def test_per_rank_program_matches(arch, n):
    """The per-rank program (biases split with their heads, KV heads replicated)."""
    name, config, w, ids, ref = arch
    if name not in ("qwen2", "mistral", "llama3"):
        pytest.skip("same per-rank code path as llama3")
    got = build_model(config, w, tp=n, mode="vmap_ranks").logits(ids)
    assert float(np.abs(got - ref).max()) < ATOL


@pytest.mark.parametrize("mode", ["vmap"])
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


# ---------------------------------------------------------- presets, resolve_config


@pytest.mark.parametrize(
    "name,params",
    [  # parameter counts as the model cards publish them (embedding + head counted)
        ("llama3-8b", 8_030_261_248),
        ("llama3-70b", 70_553_706_496),
        ("qwen2.5-7b", 7_615_616_512),
        ("qwen2.5-72b", 72_706_203_648),
        ("mistral-7b", 7_241_732_096),
    ],
)
def test_presets_match_published_sizes(name, params):
    from scinjax.models import get_config

    assert get_config(name).num_params() == params


def test_resolve_config_every_spec(tmp_path):
    import json

    import tiny_gguf as tg
    from scinjax.models import get_config, resolve_config

    assert resolve_config("qwen2.5-7b") == get_config("qwen2.5-7b")
    config = tg.tiny_config(rope_theta=500.0, rope_scaling=LLAMA3, qkv_bias=False)
    w = random_weights(config, seed=0)
    tg.write_gguf(tmp_path / "m.gguf", config.replace(rope_scaling=FREQS), w)
    assert resolve_config(tmp_path / "m.gguf") == config.replace(rope_scaling=FREQS, name="m")
    tg.write_hf_folder(tmp_path / "hf", config, w, rope_layout="v5", with_tokenizer=False)
    assert resolve_config(str(tmp_path / "hf")) == config.replace(name="hf")
    assert resolve_config(str(tmp_path / "hf" / "config.json")) == config.replace(name="config")
    fields = {
        "vocab_size": 300,
        "hidden_size": 64,
        "intermediate_size": 96,
        "num_layers": 2,
        "num_heads": 4,
        "num_kv_heads": 2,
        "sliding_window": 8,
        "rope_scaling": {"rope_type": "linear", "factor": 2.0},
    }
    (tmp_path / "mine.json").write_text(json.dumps(fields))
    got = resolve_config(str(tmp_path / "mine.json"))
    assert got.sliding_window == 8 and got.rope_scaling == RopeScaling(
        rope_type="linear", factor=2.0
    )
    assert got.name == "mine" and got.head_dim == 16
    (tmp_path / "bad.json").write_text(json.dumps(fields | {"num_layer": 3}))
    with pytest.raises(ValueError, match="unknown LlamaConfig fields \\['num_layer'\\]"):
        resolve_config(str(tmp_path / "bad.json"))
    (tmp_path / "bad.json").write_text(json.dumps(fields | {"num_kv_heads": 3}))
    with pytest.raises(ValueError, match="bad.json: LlamaConfig: num_heads=4 must be a multiple"):
        resolve_config(str(tmp_path / "bad.json"))
    with pytest.raises(ValueError, match="unknown model 'llama9'"):
        resolve_config("llama9")


def test_traffic_and_e2e_cli_accept_any_spec(tmp_path, capsys):
    """`scinjax traffic --model` and `scinjax e2e --models` take presets, GGUF/HF paths and
    LlamaConfig JSON; ring bytes follow the closed form 2 (N-1)/N * elements * 2 B per call."""
    import json

    import tiny_gguf as tg

    from scinjax.cli.e2e import main as e2e_main
    from scinjax.cli.traffic import main as traffic_main

    config = tg.tiny_config(qkv_bias=True, num_heads=8, num_kv_heads=2, head_dim=8)
    tg.write_gguf(tmp_path / "q.gguf", config, random_weights(config), arch="qwen2")
    tg.write_hf_folder(
        tmp_path / "hf",
        config.replace(qkv_bias=False),
        {},
        with_tokenizer=False,
        write_weights=False,
    )
    (tmp_path / "c.json").write_text(
        json.dumps(
            {
                "vocab_size": 50,
                "hidden_size": 64,
                "intermediate_size": 96,
                "num_layers": 3,
                "num_heads": 4,
                "num_kv_heads": 4,
            }
        )
    )
    for spec, layers in (
        ("qwen2.5-7b", 28),
        (tmp_path / "q.gguf", 2),
        (tmp_path / "hf", 2),
        (tmp_path / "c.json", 3),
    ):
        out = tmp_path / "t.json"
        argv = ["--model", str(spec), "--tp", "4", "--prefill", "8", "--collectives", "ring"]
        assert traffic_main(argv + ["--json", str(out)]) == 0
        ring = json.loads(out.read_text())["results"][0]
        hidden = 3584 if spec == "qwen2.5-7b" else 64
        assert ring["per_layer"]["up"] == [2 * 2 * 3 * 8 * hidden // 4 * 2] * 4
        assert ring["per_forward"]["up"] == [2 * 2 * 3 * 8 * hidden // 4 * 2 * layers] * 4
    assert traffic_main(["--model", "no-such-model"]) == 2
    assert "unknown model 'no-such-model'" in capsys.readouterr().err
    argv = [
        "--models",
        f"mistral-7b,{tmp_path / 'c.json'}",
        "--prefill",
        "128",
        "--decode-batch",
        "1",
        "--no-plot",
        "--out",
        str(tmp_path / "e2e"),
    ]
    assert e2e_main(argv) == 0
    models = json.loads((tmp_path / "e2e" / "e2e.json").read_text())["models"]
    assert set(models) == {"mistral-7b", str(tmp_path / "c.json")}
