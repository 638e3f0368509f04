"""Read a Hugging Face LLaMA folder: ``config.json``, ``*.safetensors``, ``tokenizer.json``.

Hugging Face stores ``nn.Linear`` weights as ``[out, in]`` and uses the
``rotate_half`` rotary layout, which is the canonical one: matrices are only
transposed to ``[in, out]`` (``y = x @ W``) and cast to float32 (BF16/F16 included).
"""

from __future__ import annotations

import glob
import json
import os

import numpy as np

__all__ = ["read_hf_folder", "config_from_hf"]

_SUPPORTED_MODEL_TYPES = ("llama",)

_LAYER = {
    "input_layernorm.weight": "attn_norm",
    "self_attn.q_proj.weight": "wq",
    "self_attn.k_proj.weight": "wk",
    "self_attn.v_proj.weight": "wv",
    "self_attn.o_proj.weight": "wo",
    "post_attention_layernorm.weight": "mlp_norm",
    "mlp.gate_proj.weight": "w_gate",
    "mlp.up_proj.weight": "w_up",
    "mlp.down_proj.weight": "w_down",
}


def config_from_hf(cfg: dict, *, name: str, source: str = ""):
    """A ``LlamaConfig`` from a Hugging Face ``config.json`` dict (LLaMA family only)."""
    from .config import LlamaConfig

    model_type = cfg.get("model_type")
    if model_type not in _SUPPORTED_MODEL_TYPES:
        raise ValueError(
            f"{source}: unsupported model_type {model_type!r} in config.json; scinjax models "
            f"LLaMA checkpoints only ({_SUPPORTED_MODEL_TYPES})"
        )
    for flag in ("attention_bias", "mlp_bias"):
        if cfg.get(flag):
            raise ValueError(f"{source}: {flag}=true is not supported by scinjax models")
    act = cfg.get("hidden_act", "silu")
    if act != "silu":
        raise ValueError(f"{source}: hidden_act {act!r} unsupported (SwiGLU with silu only)")
    scaling = cfg.get("rope_scaling")
    if scaling and scaling.get("rope_type", scaling.get("type")) not in (None, "default"):
        raise ValueError(f"{source}: rope_scaling {scaling!r} is not supported by scinjax models")
    n_head = int(cfg["num_attention_heads"])
    hidden = int(cfg["hidden_size"])
    return LlamaConfig(
        vocab_size=int(cfg["vocab_size"]),
        hidden_size=hidden,
        intermediate_size=int(cfg["intermediate_size"]),
        num_layers=int(cfg["num_hidden_layers"]),
        num_heads=n_head,
        num_kv_heads=int(cfg.get("num_key_value_heads") or n_head),
        head_dim=int(cfg.get("head_dim") or hidden // n_head),
        rms_norm_eps=float(cfg.get("rms_norm_eps", 1e-6)),
        rope_theta=float(cfg.get("rope_theta", 10000.0)),
        max_position=int(cfg.get("max_position_embeddings", 2048)),
        tie_embeddings=bool(cfg.get("tie_word_embeddings", False)),
        name=name,
    )


def _read_safetensors(files: list[str]) -> dict[str, np.ndarray]:
    try:
        from safetensors.numpy import load_file
    except ImportError as e:  # pragma: no cover - depends on the environment
        raise ImportError(
            "reading safetensors needs the `safetensors` package; install it with "
            "`pip install 'scinjax[models]'`"
        ) from e
    out: dict[str, np.ndarray] = {}
    for f in files:
        try:
            part = load_file(f)
        except Exception as e:
            raise ValueError(
                f"{f}: not a readable safetensors file ({type(e).__name__}: {e}); it is "
                "corrupt or truncated, download it again"
            ) from e
        out.update(part)
    return out


def read_hf_folder(folder: str | os.PathLike, *, name: str | None = None):
    """``(LlamaConfig, weights, Tokenizer)`` of a Hugging Face LLaMA folder."""
    from .tokenizer import from_hf_folder

    folder = os.fspath(folder)
    if not os.path.isdir(folder):
        raise FileNotFoundError(f"model folder not found: {folder}")
    cfg_path = os.path.join(folder, "config.json")
    if not os.path.isfile(cfg_path):
        raise FileNotFoundError(
            f"{folder}: no config.json; a Hugging Face model folder needs config.json, "
            "*.safetensors and tokenizer.json"
        )
    with open(cfg_path, encoding="utf-8") as f:
        try:
            raw = json.load(f)
        except json.JSONDecodeError as e:
            raise ValueError(f"{cfg_path}: invalid JSON ({e})") from e
    config = config_from_hf(
        raw, name=name or os.path.basename(os.path.normpath(folder)), source=folder
    )
    files = sorted(glob.glob(os.path.join(folder, "*.safetensors")))
    if not files:
        raise FileNotFoundError(
            f"{folder}: no *.safetensors files (PyTorch .bin checkpoints are not read; convert "
            "them with safetensors first)"
        )
    raw_w = _read_safetensors(files)

    def take(key: str) -> np.ndarray:
        if key not in raw_w:
            raise ValueError(f"{folder}: tensor {key!r} missing from the safetensors files")
        return np.asarray(raw_w[key]).astype(np.float32)

    weights = {"embed": take("model.embed_tokens.weight")}
    for i in range(config.num_layers):
        for hname, cname in _LAYER.items():
            w = take(f"model.layers.{i}.{hname}")
            weights[f"layers.{i}.{cname}"] = w if w.ndim == 1 else np.ascontiguousarray(w.T)
    weights["final_norm"] = take("model.norm.weight")
    if not config.tie_embeddings:
        weights["lm_head"] = np.ascontiguousarray(take("lm_head.weight").T)
    if weights["embed"].shape != (config.vocab_size, config.hidden_size):
        raise ValueError(
            f"{folder}: embed_tokens has shape {weights['embed'].shape}, config.json says "
            f"({config.vocab_size}, {config.hidden_size})"
        )
    tokenizer = from_hf_folder(folder, raw)
    return config, weights, tokenizer
