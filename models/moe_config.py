"""MoE layer shapes: presets for traffic by shape and the tiny model's numerics.

Full-size presets are shapes only (nothing is allocated). Values are the public model
configurations (Hugging Face ``config.json`` of each model), rounded to what the
traffic count needs.
"""

from __future__ import annotations

import dataclasses

__all__ = ["MoEConfig", "moe_config", "moe_config_names"]


@dataclasses.dataclass(frozen=True, kw_only=True)
class MoEConfig:
    """Shape of the MoE layers of one model.

    hidden: H, the token vector dispatched and combined.
    n_experts: routed experts E per layer; top_k: k experts per token.
    intermediate: one expert's SwiGLU width I (gate/up ``[H, I]``, down ``[I, H]``).
    moe_layers: how many layers are MoE layers (the rest are dense).
    shared_experts: always-on experts per layer (run on the token's own rank).
    """

    name: str = "custom"
    hidden: int
    n_experts: int
    top_k: int
    intermediate: int
    moe_layers: int
    shared_experts: int = 0

    def __post_init__(self):
        for field in ("hidden", "n_experts", "top_k", "intermediate", "moe_layers"):
            v = getattr(self, field)
            if isinstance(v, bool) or not isinstance(v, int) or v < 1:
                raise ValueError(f"MoEConfig.{field} must be an int >= 1, got {v!r}")
        if self.top_k > self.n_experts:
            raise ValueError(
                f"MoEConfig.top_k={self.top_k} exceeds n_experts={self.n_experts}; "
                "a token picks k distinct experts"
            )
        s = self.shared_experts
        if isinstance(s, bool) or not isinstance(s, int) or s < 0:
            raise ValueError(f"MoEConfig.shared_experts must be an int >= 0, got {s!r}")


_PRESETS = {
    "tiny-moe": MoEConfig(
        name="tiny-moe", hidden=64, n_experts=8, top_k=2, intermediate=96, moe_layers=2
    ),
    # Mixtral-8x7B: hidden 4096, 8 experts, top-2, FFN 14336, 32 layers, all MoE
    "mixtral-8x7b": MoEConfig(
        name="mixtral-8x7b",
        hidden=4096,
        n_experts=8,
        top_k=2,
        intermediate=14336,
        moe_layers=32,
    ),
    # DeepSeek-V3: hidden 7168, 256 routed experts, top-8, expert FFN 2048, 61 layers of
    # which the first 3 are dense, 1 shared expert
    "deepseek-v3": MoEConfig(
        name="deepseek-v3",
        hidden=7168,
        n_experts=256,
        top_k=8,
        intermediate=2048,
        moe_layers=58,
        shared_experts=1,
    ),
    # Qwen3-235B-A22B: hidden 4096, 128 experts, top-8, expert FFN 1536, 94 layers
    "qwen3-moe": MoEConfig(
        name="qwen3-moe",
        hidden=4096,
        n_experts=128,
        top_k=8,
        intermediate=1536,
        moe_layers=94,
    ),
}


def moe_config_names() -> tuple[str, ...]:
    return tuple(_PRESETS)


def moe_config(name: str | MoEConfig) -> MoEConfig:
    """A preset by name (``tiny-moe``, ``mixtral-8x7b``, ``deepseek-v3``, ``qwen3-moe``)."""
    if isinstance(name, MoEConfig):
        return name
    if name not in _PRESETS:
        raise ValueError(f"unknown MoE model {name!r}; use one of {moe_config_names()}")
    return _PRESETS[name]
