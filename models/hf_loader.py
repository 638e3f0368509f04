"""Read a Hugging Face folder (Llama, Mistral, Qwen2): ``config.json``, ``*.safetensors``,
``tokenizer.json``.

Hugging Face stores ``nn.Linear`` weights as ``[out, in]`` and uses the
``rotate_half`` rotary layout, which is the canonical one: matrices are only
transposed to ``[in, out]`` (``y = x @ W``) and cast to float32 (BF16/F16 included).
Family switches: Qwen2 -> ``qkv_bias``; Mistral -> ``sliding_window``;
``rope_scaling`` / ``rope_parameters`` (transformers 5) -> ``rope_scaling``.
"""

from __future__ import annotations

import glob
import json
import os

import numpy as np

__all__ = ["read_hf_folder", "read_config", "config_from_hf", "rope_from_hf"]

#: model_type -> the architecture class it must name (LLaMA-style decoders only).
_SUPPORTED = {
    "llama": "LlamaForCausalLM",
    "mistral": "MistralForCausalLM",
    "qwen2": "Qwen2ForCausalLM",
    "mixtral": "MixtralForCausalLM",  # every MLP a mixture of experts (LlamaConfig.moe)
}

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
_BIAS = {
    "self_attn.q_proj.bias": "bq",
    "self_attn.k_proj.bias": "bk",
    "self_attn.v_proj.bias": "bv",
}
# Stored by some exporters, recomputed by every model: never read.
_IGNORED_SUFFIXES = ("rotary_emb.inv_freq",)


def _number(value, key: str, source: str) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float) or not value > 0:
        raise ValueError(f"{source}: config.json {key} must be a positive number, got {value!r}")
    return float(value)


def _rope_scaling(scaling: dict, key: str, source: str):
    """A ``RopeScaling`` (or None) from an HF scaling dict found under ``key``."""
    from .config import RopeScaling

    kind = scaling.get("rope_type", scaling.get("type"))
    if kind in (None, "default"):
        return None
    if kind == "linear":
        return RopeScaling(
            rope_type="linear", factor=_number(scaling.get("factor"), f"{key}.factor", source)
        )
    if kind == "llama3":
        fields = {}
        for hf, ours in (
            ("factor", "factor"),
            ("low_freq_factor", "low_freq_factor"),
            ("high_freq_factor", "high_freq_factor"),
            ("original_max_position_embeddings", "original_max_position"),
        ):
            if hf not in scaling:
                raise ValueError(f"{source}: config.json {key} (llama3) has no {hf!r}")
            fields[ours] = _number(scaling[hf], f"{key}.{hf}", source)
        fields["original_max_position"] = int(fields["original_max_position"])
        return RopeScaling(rope_type="llama3", **fields)
    raise ValueError(
        f"{source}: config.json {key}.rope_type {kind!r} is not supported by scinjax models "
        "(supported: default, linear, llama3)"
    )


def rope_from_hf(cfg: dict, *, source: str = ""):
    """``(rope_theta, RopeScaling | None)`` from an HF config dict.

    transformers 5 writes ``rope_parameters`` ({rope_theta, rope_type, scaling
    fields}); earlier versions top-level ``rope_theta`` and ``rope_scaling``.
    Both are read; settings that cannot be read raise ValueError naming the key.
    """
    params = cfg.get("rope_parameters")
    if params is None:
        theta = _number(cfg.get("rope_theta", 10000.0), "rope_theta", source)
        scaling = cfg.get("rope_scaling")
        if scaling is None:
            return theta, None
        if not isinstance(scaling, dict):
            raise ValueError(
                f"{source}: config.json rope_scaling must be an object, got {scaling!r}"
            )
        return theta, _rope_scaling(scaling, "rope_scaling", source)
    if not isinstance(params, dict):
        raise ValueError(f"{source}: config.json rope_parameters must be an object, got {params!r}")
    if params and all(isinstance(v, dict) for v in params.values()):
        raise ValueError(
            f"{source}: config.json rope_parameters holds per-layer-type settings "
            f"({sorted(params)}); scinjax models one rotary setting for all layers"
        )
    if "rope_theta" not in params:
        raise ValueError(f"{source}: config.json rope_parameters has no 'rope_theta'")
    theta = _number(params["rope_theta"], "rope_parameters.rope_theta", source)
    top = cfg.get("rope_theta")
    if top is not None and top != params["rope_theta"]:
        raise ValueError(
            f"{source}: config.json rope_theta={top!r} contradicts "
            f"rope_parameters.rope_theta={params['rope_theta']!r}"
        )
    if cfg.get("rope_scaling") not in (None, params):
        raise ValueError(f"{source}: config.json has both rope_scaling and rope_parameters")
    return theta, _rope_scaling(params, "rope_parameters", source)


def _sliding_window(cfg: dict, model_type: str, n_layers: int, source: str):
    """W or None. Mistral: ``sliding_window`` (MistralConfig's default 4096 when absent,
    null = full attention); Qwen2: only with ``use_sliding_window`` on every layer."""
    types = cfg.get("layer_types")
    if types is not None and len(set(types)) > 1:
        raise ValueError(
            f"{source}: config.json layer_types mixes {sorted(set(types))}; scinjax models one "
            "attention kind for all layers"
        )
    if model_type == "mistral":
        window = cfg.get("sliding_window", 4096)
    elif model_type == "mixtral":  # MixtralConfig's default is null (full attention)
        window = cfg.get("sliding_window")
    elif model_type == "qwen2" and cfg.get("use_sliding_window"):
        if int(cfg.get("max_window_layers", n_layers)) != 0:
            raise ValueError(
                f"{source}: Qwen2 use_sliding_window with max_window_layers="
                f"{cfg.get('max_window_layers')} (a window on some layers only) is not supported"
            )
        window = cfg.get("sliding_window")
    else:
        window = None
    if types and types[0] == "full_attention":
        window = None
    if window is not None and (
        isinstance(window, bool) or not isinstance(window, int) or window < 1
    ):
        raise ValueError(
            f"{source}: config.json sliding_window must be a positive int or null, got {window!r}"
        )
    return window


def config_from_hf(cfg: dict, *, name: str, source: str = ""):
    """A ``LlamaConfig`` from a Hugging Face ``config.json`` dict (Llama, Mistral, Qwen2)."""
    from .config import LlamaConfig

    model_type = cfg.get("model_type")
    archs = cfg.get("architectures") or [_SUPPORTED.get(model_type)]
    if model_type not in _SUPPORTED or archs[0] != _SUPPORTED[model_type]:
        raise ValueError(
            f"{source}: unsupported model_type {model_type!r} (architectures {archs}) in "
            f"config.json; scinjax models {', '.join(_SUPPORTED.values())} only"
        )
    if model_type == "llama" and cfg.get("attention_bias"):
        raise ValueError(
            f"{source}: attention_bias=true (bias on the output projection too) is not "
            "supported by scinjax models"
        )
    if cfg.get("mlp_bias"):
        raise ValueError(f"{source}: mlp_bias=true is not supported by scinjax models")
    act = cfg.get("hidden_act", "silu")
    if act != "silu":
        raise ValueError(f"{source}: hidden_act {act!r} unsupported (SwiGLU with silu only)")
    theta, scaling = rope_from_hf(cfg, source=source)
    params = cfg.get("rope_parameters") or {}  # a dict: rope_from_hf checked it
    partial = cfg.get("partial_rotary_factor", params.get("partial_rotary_factor", 1.0))
    if partial != 1.0:
        raise ValueError(f"{source}: partial_rotary_factor={partial!r} is not supported (1.0 only)")
    n_head = int(cfg["num_attention_heads"])
    hidden = int(cfg["hidden_size"])
    n_layers = int(cfg["num_hidden_layers"])
    moe = None
    if model_type == "mixtral":
        from .moe_spec import MoeSpec

        missing = [k for k in ("num_local_experts", "num_experts_per_tok") if k not in cfg]
        if missing:
            raise ValueError(
                f"{source}: model_type 'mixtral' needs {' and '.join(missing)} in config.json"
            )
        moe = MoeSpec(
            n_experts=int(cfg["num_local_experts"]),
            top_k=int(cfg["num_experts_per_tok"]),
            intermediate=int(cfg["intermediate_size"]),
        )
    return LlamaConfig(
        vocab_size=int(cfg["vocab_size"]),
        hidden_size=hidden,
        intermediate_size=int(cfg["intermediate_size"]),
        num_layers=n_layers,
        num_heads=n_head,
        num_kv_heads=int(cfg.get("num_key_value_heads") or n_head),
        head_dim=int(cfg.get("head_dim") or hidden // n_head),
        rms_norm_eps=float(cfg.get("rms_norm_eps", 1e-6)),
        rope_theta=theta,
        max_position=int(cfg.get("max_position_embeddings", 2048)),
        tie_embeddings=bool(cfg.get("tie_word_embeddings", False)),
        qkv_bias=model_type == "qwen2",
        rope_scaling=scaling,
        sliding_window=_sliding_window(cfg, model_type, n_layers, source),
        moe=moe,
        name=name,
    )


def _check_size(path: str) -> None:
    """ValueError when the data section is shorter than the header says (truncated file);
    safe_open maps the file lazily and would only fail on reading the missing tensor."""
    with open(path, "rb") as f:
        n = int.from_bytes(f.read(8), "little")
        header = json.loads(f.read(n))
    end = max((v["data_offsets"][1] for k, v in header.items() if k != "__metadata__"), default=0)
    size = os.path.getsize(path)
    if 8 + n + end > size:
        raise ValueError(f"file has {size} bytes, its header needs {8 + n + end}")


def _open_safetensors(files: list[str]) -> dict[str, object]:
    """Tensor name -> an open ``safe_open`` handle holding it (nothing read yet)."""
    try:
        from safetensors import safe_open
    except ImportError as e:  # pragma: no cover - depends on the environment
        raise ImportError(
            "reading safetensors needs the `safetensors` package; install it with "
            "`pip install 'scinjax[models]'`"
        ) from e
    where: dict[str, object] = {}
    for f in files:
        try:
            _check_size(f)
            handle = safe_open(f, framework="numpy")
            names = list(handle.keys())
        except Exception as e:
            raise ValueError(
                f"{f}: not a readable safetensors file ({type(e).__name__}: {e}); it is "
                "corrupt or truncated, download it again"
            ) from e
        where.update(dict.fromkeys(names, handle))
    return where


def read_config(folder: str | os.PathLike, *, name: str | None = None):
    """``(LlamaConfig, raw config dict)`` of a Hugging Face folder (no weights read)."""
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
    return config, raw


def read_hf_folder(
    folder: str | os.PathLike, *, name: str | None = None, dtype=np.float32, lazy: bool = False
):
    """``(LlamaConfig, weights, Tokenizer)`` of a Hugging Face Llama/Mistral/Qwen2 folder.

    Tensors are read and converted one at a time (to ``dtype``: float32, or
    bfloat16/float16 to halve the memory), so the peak is the final weights
    plus one tensor. With ``lazy``, the weights are `LazyArray`s read when used.
    """
    from .tokenizer import from_hf_folder
    from .weights import LazyArray, materialize

    folder = os.fspath(folder)
    config, raw = read_config(folder, name=name)
    files = sorted(glob.glob(os.path.join(folder, "*.safetensors")))
    if not files:
        raise FileNotFoundError(
            f"{folder}: no *.safetensors files (PyTorch .bin checkpoints are not read; convert "
            "them with safetensors first)"
        )
    handles = _open_safetensors(files)
    used: set[str] = set()

    def read(key: str, transpose: bool, out) -> np.ndarray:
        w = handles[key].get_tensor(key)
        w = np.ascontiguousarray(w.T if transpose and w.ndim == 2 else w, dtype=dtype)
        if out is None:
            return w
        out[...] = w
        return out

    def take(key: str, transpose: bool = False):
        if key not in handles:
            raise ValueError(f"{folder}: tensor {key!r} missing from the safetensors files")
        used.add(key)
        shape = handles[key].get_slice(key).get_shape()
        shape = shape[::-1] if transpose and len(shape) == 2 else shape
        return LazyArray(shape, dtype, lambda out: read(key, transpose, out))

    weights = {"embed": take("model.embed_tokens.weight")}
    layer = _LAYER | (_BIAS if config.qkv_bias else {})
    if config.moe is not None:  # experts replace the dense MLP: read by models.moe_loader
        from .moe_loader import read_mixtral_hf_moe

        layer = {h: c for h, c in layer.items() if not h.startswith("mlp.")}
        _, moe = read_mixtral_hf_moe(folder)
        used |= {k for k in handles if ".block_sparse_moe." in k}
        names = ("router", "router"), ("w_gate", "experts_gate"), ("w_up", "experts_up")
        for src, dst in names + (("w_down", "experts_down"),):
            for i in range(config.num_layers):
                weights[f"layers.{i}.{dst}"] = np.asarray(moe[src][i], dtype=dtype)
    for i in range(config.num_layers):
        for hname, cname in layer.items():
            weights[f"layers.{i}.{cname}"] = take(f"model.layers.{i}.{hname}", transpose=True)
    weights["final_norm"] = take("model.norm.weight")
    if not config.tie_embeddings:
        weights["lm_head"] = take("lm_head.weight", transpose=True)
    unused = sorted(k for k in handles if k not in used and not k.endswith(_IGNORED_SUFFIXES))
    if unused and not (config.tie_embeddings and unused == ["lm_head.weight"]):
        raise ValueError(
            f"{folder}: tensors the {config.name or 'model'} config does not use: "
            f"{unused[:6]}{' ...' if len(unused) > 6 else ''}; this checkpoint is not supported"
        )
    if weights["embed"].shape != (config.vocab_size, config.hidden_size):
        raise ValueError(
            f"{folder}: embed_tokens has shape {weights['embed'].shape}, config.json says "
            f"({config.vocab_size}, {config.hidden_size})"
        )
    tokenizer = from_hf_folder(folder, raw)
    return config, (weights if lazy else materialize(weights)), tokenizer
