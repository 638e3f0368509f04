"""Read the MoE feed-forward weights of Mixtral-format checkpoints (GGUF and Hugging Face).

Returns a :class:`~scinjax.models.moe_config.MoEConfig` and the stacked parameters of
:func:`scinjax.models.moe.moe_mlp` (canonical ``y = x @ W`` layout, float32):
``router [L, H, E]``, ``w_gate, w_up [L, E, H, I]``, ``w_down [L, E, I, H]``.

Layouts read (llama.cpp ``convert_hf_to_gguf.py`` and HF ``modeling_mixtral``):

- GGUF (architecture ``llama`` with ``expert_count``): ``blk.{l}.ffn_gate_inp.weight``
  ``[E, H]`` (NumPy view of ggml ``[H, E]``), ``ffn_gate_exps`` / ``ffn_up_exps``
  ``[E, I, H]``, ``ffn_down_exps`` ``[E, H, I]``; metadata ``llama.expert_count``,
  ``llama.expert_used_count``, ``llama.embedding_length``, ``llama.feed_forward_length``,
  ``llama.block_count``.
- HF ``MixtralForCausalLM``: ``model.layers.{l}.block_sparse_moe.gate.weight`` ``[E, H]``,
  ``...experts.{e}.w1.weight`` (gate) and ``w3`` (up) ``[I, H]``, ``w2`` (down)
  ``[H, I]``; ``config.json`` fields ``num_local_experts``, ``num_experts_per_tok``,
  ``hidden_size``, ``intermediate_size``, ``num_hidden_layers``.
Attention and embedding weights are read by the LLaMA loaders.
"""

from __future__ import annotations

import glob
import json
import os

import numpy as np

from .moe_config import MoEConfig

__all__ = ["read_mixtral_gguf_moe", "read_mixtral_hf_moe"]


def _stack(layers: list[dict]) -> dict[str, np.ndarray]:
    return {k: np.stack([p[k] for p in layers]).astype(np.float32) for k in layers[0]}


def read_mixtral_gguf_moe(path: str | os.PathLike) -> tuple[MoEConfig, dict]:
    """(MoEConfig, stacked moe_mlp params) of a Mixtral-format GGUF file."""
    from .gguf_loader import _open, _value

    path = os.fspath(path)
    gguf, reader = _open(path)
    arch = _value(reader, "general.architecture")
    experts = _value(reader, f"{arch}.expert_count")
    if not experts:
        raise ValueError(
            f"{path}: no {arch}.expert_count in the metadata: not an MoE (Mixtral-format) GGUF"
        )
    cfg = MoEConfig(
        name=str(_value(reader, "general.name", "gguf-moe")),
        hidden=_value(reader, f"{arch}.embedding_length"),
        n_experts=experts,
        top_k=_value(reader, f"{arch}.expert_used_count"),
        intermediate=_value(reader, f"{arch}.feed_forward_length"),
        moe_layers=_value(reader, f"{arch}.block_count"),
    )
    tensors = {t.name: t for t in reader.tensors}

    def get(name, shape):
        if name not in tensors:
            raise ValueError(f"{path}: tensor {name!r} is missing (a Mixtral GGUF has it)")
        t = tensors[name]
        arr = gguf.quants.dequantize(t.data, t.tensor_type).astype(np.float32)
        if arr.size != int(np.prod(shape)):
            raise ValueError(f"{path}: {name} has {arr.size} values, expected shape {shape}")
        return arr.reshape(shape)

    h, e, i = cfg.hidden, cfg.n_experts, cfg.intermediate
    layers = []
    for layer in range(cfg.moe_layers):
        b = f"blk.{layer}."
        layers.append(
            {
                "router": get(b + "ffn_gate_inp.weight", (e, h)).T,
                "w_gate": get(b + "ffn_gate_exps.weight", (e, i, h)).swapaxes(1, 2),
                "w_up": get(b + "ffn_up_exps.weight", (e, i, h)).swapaxes(1, 2),
                "w_down": get(b + "ffn_down_exps.weight", (e, h, i)).swapaxes(1, 2),
            }
        )
    return cfg, _stack(layers)


def read_mixtral_hf_moe(folder: str | os.PathLike) -> tuple[MoEConfig, dict]:
    """(MoEConfig, stacked moe_mlp params) of a Hugging Face ``MixtralForCausalLM`` folder."""
    from .hf_loader import _open_safetensors

    folder = os.fspath(folder)
    cfg_path = os.path.join(folder, "config.json")
    if not os.path.isfile(cfg_path):
        raise FileNotFoundError(f"{folder}: no config.json (not a Hugging Face model folder)")
    with open(cfg_path, encoding="utf-8") as f:
        raw = json.load(f)
    if "num_local_experts" not in raw:
        raise ValueError(f"{cfg_path}: no num_local_experts: not a MixtralForCausalLM config")
    cfg = MoEConfig(
        name=os.path.basename(os.path.normpath(folder)),
        hidden=raw["hidden_size"],
        n_experts=raw["num_local_experts"],
        top_k=raw["num_experts_per_tok"],
        intermediate=raw["intermediate_size"],
        moe_layers=raw["num_hidden_layers"],
    )
    files = sorted(glob.glob(os.path.join(folder, "*.safetensors")))
    if not files:
        raise FileNotFoundError(f"{folder}: no *.safetensors files")
    where = _open_safetensors(files)

    def get(name):
        if name not in where:
            raise ValueError(f"{folder}: tensor {name!r} is missing (a Mixtral folder has it)")
        return np.asarray(where[name].get_tensor(name), np.float32)

    layers = []
    for layer in range(cfg.moe_layers):
        b = f"model.layers.{layer}.block_sparse_moe."
        exp = [f"{b}experts.{j}." for j in range(cfg.n_experts)]
        layers.append(
            {
                "router": get(b + "gate.weight").T,
                "w_gate": np.stack([get(p + "w1.weight").T for p in exp]),
                "w_up": np.stack([get(p + "w3.weight").T for p in exp]),
                "w_down": np.stack([get(p + "w2.weight").T for p in exp]),
            }
        )
    return cfg, _stack(layers)
