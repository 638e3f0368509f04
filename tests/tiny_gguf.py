"""Helpers for tests: write tiny LLaMA models as GGUF files and Hugging Face folders.

Written independently of the loaders: the GGUF writer applies llama.cpp's Q/K
row permutation itself (the formula of ``convert_hf_to_gguf.py``'s
``LlamaModel.permute``), so a loader that failed to undo it would give
different weights.
"""

from __future__ import annotations

import json
import os

import numpy as np

# Merges of the tiny byte-level BPE vocabulary, in rank order ("Ġ" is the space byte).
TINY_MERGES = ["Ġ t", "h e", "Ġt he", "a t", "Ġ c", "Ġc at", "1 2", "i n"]
SPECIAL = "<|endoftext|>"


def bytes_to_unicode() -> dict[int, str]:
    """GPT-2's reversible byte -> printable unicode character map."""
    bs = list(range(ord("!"), ord("~") + 1))
    bs += list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), ord("ÿ") + 1))
    cs = bs[:]
    n = 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    return dict(zip(bs, map(chr, cs), strict=True))


def tiny_vocab() -> tuple[list[str], list[int], list[str]]:
    """(tokens, token types, merges): id 0 is a CONTROL token, then 256 bytes, then merges."""
    tokens = [SPECIAL] + [bytes_to_unicode()[b] for b in range(256)]
    tokens += [m.replace(" ", "") for m in TINY_MERGES]
    types = [3] + [1] * (len(tokens) - 1)
    return tokens, types, list(TINY_MERGES)


def tiny_config(**overrides):
    from scinjax.models.config import LlamaConfig

    kw = dict(
        vocab_size=len(tiny_vocab()[0]),
        hidden_size=64,
        intermediate_size=96,
        num_layers=2,
        num_heads=4,
        num_kv_heads=2,
        head_dim=16,
        rms_norm_eps=1e-5,
        rope_theta=10000.0,
        max_position=128,
        tie_embeddings=False,
        name="tiny-test",
    )
    kw.update(overrides)
    return LlamaConfig(**kw)


def llamacpp_permute(w: np.ndarray, n_head: int) -> np.ndarray:
    """convert_hf_to_gguf.py: ``w.reshape(n, 2, hd/2, in).swapaxes(1, 2).reshape(w.shape)``."""
    return (
        w.reshape(n_head, 2, w.shape[0] // n_head // 2, *w.shape[1:])
        .swapaxes(1, 2)
        .reshape(w.shape)
    )


_GGUF_NAMES = {
    "attn_norm": "attn_norm",
    "wq": "attn_q",
    "wk": "attn_k",
    "wv": "attn_v",
    "wo": "attn_output",
    "mlp_norm": "ffn_norm",
    "w_gate": "ffn_gate",
    "w_up": "ffn_up",
    "w_down": "ffn_down",
}


def hf_layout(config, weights: dict, *, permute: bool = True) -> dict[str, np.ndarray]:
    """Canonical weights -> GGUF tensor names, PyTorch layout [out, in], Q/K permuted (as
    llama.cpp does for ``llama``; not for ``qwen2``, whose Q/K/V biases are written too)."""
    out = {"token_embd.weight": weights["embed"], "output_norm.weight": weights["final_norm"]}
    rs = config.rope_scaling
    if rs is not None and rs.rope_type == "freq_factors":
        out["rope_freqs.weight"] = np.asarray(rs.freq_factors, dtype=np.float32)
    if not config.tie_embeddings:
        out["output.weight"] = weights["lm_head"].T
    for i in range(config.num_layers):
        for cname, gname in _GGUF_NAMES.items():
            w = weights[f"layers.{i}.{cname}"]
            if w.ndim == 2:
                w = w.T
                if cname == "wq" and permute:
                    w = llamacpp_permute(w, config.num_heads)
                elif cname == "wk" and permute:
                    w = llamacpp_permute(w, config.num_kv_heads)
            out[f"blk.{i}.{gname}.weight"] = np.ascontiguousarray(w)
        if config.qkv_bias:
            for cname, gname in (("bq", "attn_q"), ("bk", "attn_k"), ("bv", "attn_v")):
                out[f"blk.{i}.{gname}.bias"] = weights[f"layers.{i}.{cname}"]
    return out


def write_gguf(
    path,
    config,
    weights: dict,
    *,
    qtype: str = "F32",
    arch: str = "llama",
    pre: str = "smollm",
    add_bos: bool = False,
    override_types: dict[str, str] | None = None,
    raw_data: dict[str, np.ndarray] | None = None,
) -> dict[str, np.ndarray]:
    """Write a GGUF; matrices in ``qtype``, 1-D tensors F32. Returns the tensors written
    (dequantized back to float32 in PyTorch layout, Q/K still permuted; not those given
    as ``raw_data``: uint8 block bytes [rows, nbytes] written as is in their override type)."""
    import gguf

    tokens, types, merges = tiny_vocab()
    w = gguf.GGUFWriter(os.fspath(path), arch)
    w.add_name(config.name)
    w.add_block_count(config.num_layers)
    w.add_context_length(config.max_position)
    w.add_embedding_length(config.hidden_size)
    w.add_feed_forward_length(config.intermediate_size)
    w.add_head_count(config.num_heads)
    w.add_head_count_kv(config.num_kv_heads)
    w.add_rope_dimension_count(config.head_dim)
    w.add_rope_freq_base(config.rope_theta)
    if config.rope_scaling is not None and config.rope_scaling.rope_type == "linear":
        w.add_rope_scaling_type(gguf.RopeScalingType.LINEAR)
        w.add_rope_scaling_factor(config.rope_scaling.factor)
    if config.sliding_window is not None:
        w.add_sliding_window(config.sliding_window)
    w.add_layer_norm_rms_eps(config.rms_norm_eps)
    w.add_vocab_size(len(tokens))
    w.add_tokenizer_model("gpt2")
    w.add_tokenizer_pre(pre)
    w.add_token_list(tokens)
    w.add_token_types(types)
    w.add_token_merges(merges)
    w.add_bos_token_id(0)
    w.add_eos_token_id(0)
    w.add_add_bos_token(add_bos)
    written = {}
    for name, arr in hf_layout(config, weights, permute=arch != "qwen2").items():
        t = (override_types or {}).get(name, qtype if arr.ndim == 2 else "F32")
        q = gguf.GGMLQuantizationType[t]
        if name in (raw_data or {}):
            w.add_tensor(name, raw_data[name], raw_dtype=q)
            continue
        if t == "F32":
            data = arr.astype(np.float32)
            w.add_tensor(name, data)
        elif t == "F16":
            data = arr.astype(np.float16)
            w.add_tensor(name, data)
        elif t == "I8":
            data = np.clip(np.round(arr), -128, 127).astype(np.int8)
            w.add_tensor(name, data)
        else:
            data = gguf.quants.quantize(arr.astype(np.float32), q)
            w.add_tensor(name, data, raw_dtype=q)
        if t != "I8":
            written[name] = gguf.quants.dequantize(data, q).astype(np.float32).reshape(arr.shape)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return written


_HF_ARCH = {
    "llama": "LlamaForCausalLM",
    "mistral": "MistralForCausalLM",
    "qwen2": "Qwen2ForCausalLM",
}


def hf_rope_fields(config, layout: str = "v4") -> dict:
    """config.json rotary keys as transformers 4 (``rope_theta``, ``rope_scaling``) or 5
    (``rope_parameters``) writes them."""
    rs = config.rope_scaling
    scaling = None
    if rs is not None and rs.rope_type == "linear":
        scaling = {"rope_type": "linear", "factor": rs.factor}
    elif rs is not None and rs.rope_type == "llama3":
        scaling = {
            "rope_type": "llama3",
            "factor": rs.factor,
            "low_freq_factor": rs.low_freq_factor,
            "high_freq_factor": rs.high_freq_factor,
            "original_max_position_embeddings": rs.original_max_position,
        }
    elif rs is not None:
        raise ValueError(f"no HF layout for rope type {rs.rope_type}")
    if layout == "v4":
        return {"rope_theta": config.rope_theta, "rope_scaling": scaling}
    return {
        "rope_parameters": {"rope_type": "default", "rope_theta": config.rope_theta}
        | (scaling or {})
    }


def write_hf_folder(
    folder,
    config,
    weights: dict,
    *,
    dtype=np.float32,
    with_tokenizer=True,
    model_type: str = "llama",
    rope_layout: str = "v4",
    write_weights: bool = True,
):
    """A Hugging Face folder: config.json, model.safetensors (``dtype``), tokenizer.json.

    ``model_type`` llama/mistral/qwen2 (Qwen2 writes the Q/K/V biases, Mistral the
    sliding window); ``rope_layout`` "v4" (top-level rope_theta/rope_scaling) or
    "v5" (transformers 5 ``rope_parameters``)."""
    from safetensors.numpy import save_file

    os.makedirs(folder, exist_ok=True)
    cfg = {
        "architectures": [_HF_ARCH[model_type]],
        "model_type": model_type,
        "vocab_size": config.vocab_size,
        "hidden_size": config.hidden_size,
        "intermediate_size": config.intermediate_size,
        "num_hidden_layers": config.num_layers,
        "num_attention_heads": config.num_heads,
        "num_key_value_heads": config.num_kv_heads,
        "head_dim": config.head_dim,
        "rms_norm_eps": config.rms_norm_eps,
        **hf_rope_fields(config, rope_layout),
        "max_position_embeddings": config.max_position,
        "tie_word_embeddings": config.tie_embeddings,
        "hidden_act": "silu",
        "bos_token_id": 0,
        "eos_token_id": 0,
    }
    if model_type == "mistral":
        cfg["sliding_window"] = config.sliding_window
    with open(os.path.join(folder, "config.json"), "w") as f:
        json.dump(cfg, f)
    names = {
        "attn_norm": "input_layernorm",
        "wq": "self_attn.q_proj",
        "wk": "self_attn.k_proj",
        "wv": "self_attn.v_proj",
        "wo": "self_attn.o_proj",
        "mlp_norm": "post_attention_layernorm",
        "w_gate": "mlp.gate_proj",
        "w_up": "mlp.up_proj",
        "w_down": "mlp.down_proj",
    }
    if not write_weights:
        return cfg
    t = {
        "model.embed_tokens.weight": weights["embed"],
        "model.norm.weight": weights["final_norm"],
    }
    if not config.tie_embeddings:
        t["lm_head.weight"] = weights["lm_head"].T
    for i in range(config.num_layers):
        for c, h in names.items():
            w = weights[f"layers.{i}.{c}"]
            t[f"model.layers.{i}.{h}.weight"] = w.T if w.ndim == 2 else w
        if model_type == "qwen2":
            for c, h in (("bq", "q_proj"), ("bk", "k_proj"), ("bv", "v_proj")):
                t[f"model.layers.{i}.self_attn.{h}.bias"] = weights[f"layers.{i}.{c}"]
    save_file(
        {k: np.ascontiguousarray(v).astype(dtype) for k, v in t.items()},
        os.path.join(folder, "model.safetensors"),
    )
    if with_tokenizer:
        import tokenizers as tk

        tokens, _, merges = tiny_vocab()
        model = tk.models.BPE(
            vocab={tok: i for i, tok in enumerate(tokens)},
            merges=[tuple(m.split(" ")) for m in merges],
        )
        tok = tk.Tokenizer(model)
        tok.pre_tokenizer = tk.pre_tokenizers.ByteLevel(add_prefix_space=False)
        tok.decoder = tk.decoders.ByteLevel()
        tok.add_special_tokens([SPECIAL])
        tok.save(os.path.join(folder, "tokenizer.json"))
    return cfg
