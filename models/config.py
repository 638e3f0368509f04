"""Model configuration: a frozen, keyword-only dataclass and named presets.

`LlamaConfig` describes a LLaMA-2-style decoder (RMSNorm, rotary embeddings,
multi-head or grouped-query attention, SwiGLU MLP, optional tied head). It is
validated on construction; a bad value raises `ValueError` naming the value
and the fix. `get_config(name)` returns a preset; `config.replace(**kw)` a
copy with some fields changed (e.g. reduced depth for tests).
"""

from __future__ import annotations

import dataclasses

__all__ = ["LlamaConfig", "get_config", "config_names"]


@dataclasses.dataclass(frozen=True, kw_only=True)
class LlamaConfig:
    """Shapes and constants of a LLaMA-2-style decoder.

    Attributes:
      vocab_size: V, rows of the embedding table.
      hidden_size: D, width of the residual stream.
      intermediate_size: F, width of the SwiGLU MLP.
      num_layers: L, decoder blocks.
      num_heads: Hq, query heads.
      num_kv_heads: Hkv, key/value heads (Hq for MHA; a divisor of Hq for GQA).
      head_dim: hd, width of one head (default D // Hq); must be even (RoPE).
      rms_norm_eps: epsilon of every RMSNorm.
      rope_theta: base of the rotary frequencies.
      max_position: longest sequence the model accepts.
      tie_embeddings: output head is the transposed embedding table.
      name: preset name, informational.
    """

    vocab_size: int
    hidden_size: int
    intermediate_size: int
    num_layers: int
    num_heads: int
    num_kv_heads: int
    head_dim: int | None = None
    rms_norm_eps: float = 1e-5
    rope_theta: float = 10000.0
    max_position: int = 4096
    tie_embeddings: bool = False
    name: str = ""

    def __post_init__(self) -> None:
        for field in (
            "vocab_size",
            "hidden_size",
            "intermediate_size",
            "num_layers",
            "num_heads",
            "num_kv_heads",
            "max_position",
        ):
            value = getattr(self, field)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"LlamaConfig.{field} must be a positive int, got {value!r}")
        if self.head_dim is None:
            if self.hidden_size % self.num_heads:
                raise ValueError(
                    f"LlamaConfig: hidden_size={self.hidden_size} is not a multiple of "
                    f"num_heads={self.num_heads}; pass head_dim explicitly"
                )
            object.__setattr__(self, "head_dim", self.hidden_size // self.num_heads)
        hd = self.head_dim
        if isinstance(hd, bool) or not isinstance(hd, int) or hd < 2 or hd % 2:
            raise ValueError(
                f"LlamaConfig.head_dim must be an even int >= 2 (rotary pairs), got {hd!r}"
            )
        if self.num_heads % self.num_kv_heads:
            raise ValueError(
                f"LlamaConfig: num_heads={self.num_heads} must be a multiple of "
                f"num_kv_heads={self.num_kv_heads} (grouped-query attention)"
            )
        for field in ("rms_norm_eps", "rope_theta"):
            value = getattr(self, field)
            if isinstance(value, bool) or not isinstance(value, int | float) or not value > 0:
                raise ValueError(f"LlamaConfig.{field} must be a positive number, got {value!r}")
        if not isinstance(self.tie_embeddings, bool):
            raise ValueError(
                f"LlamaConfig.tie_embeddings must be a bool, got {self.tie_embeddings!r}"
            )
        if not isinstance(self.name, str):
            raise ValueError(f"LlamaConfig.name must be a str, got {self.name!r}")

    @property
    def group_size(self) -> int:
        """Query heads per key/value head (1 for MHA)."""
        return self.num_heads // self.num_kv_heads

    @property
    def q_dim(self) -> int:
        """Hq * hd: output width of the query projection."""
        return self.num_heads * self.head_dim

    @property
    def kv_dim(self) -> int:
        """Hkv * hd: output width of the key and value projections."""
        return self.num_kv_heads * self.head_dim

    def replace(self, **changes) -> LlamaConfig:
        """A validated copy with `changes` applied, e.g. `cfg.replace(num_layers=2)`."""
        return dataclasses.replace(self, **changes)

    def num_params(self) -> int:
        """Parameter count (Python int), tied head counted once."""
        d, f = self.hidden_size, self.intermediate_size
        per_layer = 2 * d + d * (self.q_dim + 2 * self.kv_dim) + self.q_dim * d + 3 * d * f
        head = 0 if self.tie_embeddings else d * self.vocab_size
        return self.vocab_size * d + self.num_layers * per_layer + d + head


_PRESETS: dict[str, LlamaConfig] = {
    "smollm2-135m": LlamaConfig(
        vocab_size=49152,
        hidden_size=576,
        intermediate_size=1536,
        num_layers=30,
        num_heads=9,
        num_kv_heads=3,
        rms_norm_eps=1e-5,
        rope_theta=100000.0,
        max_position=8192,
        tie_embeddings=True,
        name="smollm2-135m",
    ),
    "llama2-7b": LlamaConfig(
        vocab_size=32000,
        hidden_size=4096,
        intermediate_size=11008,
        num_layers=32,
        num_heads=32,
        num_kv_heads=32,
        rms_norm_eps=1e-5,
        max_position=4096,
        name="llama2-7b",
    ),
    "llama2-13b": LlamaConfig(
        vocab_size=32000,
        hidden_size=5120,
        intermediate_size=13824,
        num_layers=40,
        num_heads=40,
        num_kv_heads=40,
        rms_norm_eps=1e-5,
        max_position=4096,
        name="llama2-13b",
    ),
    "llama2-70b": LlamaConfig(
        vocab_size=32000,
        hidden_size=8192,
        intermediate_size=28672,
        num_layers=80,
        num_heads=64,
        num_kv_heads=8,
        rms_norm_eps=1e-5,
        max_position=4096,
        name="llama2-70b",
    ),
    # Test configs: small enough for CPU, shaped to exercise the awkward cases.
    "tiny": LlamaConfig(
        vocab_size=128,
        hidden_size=64,
        intermediate_size=128,
        num_layers=2,
        num_heads=4,
        num_kv_heads=4,
        max_position=256,
        name="tiny",
    ),
    # SmolLM2's head layout (9 query / 3 key-value heads) and an MLP width that
    # neither 3 nor 8 divides.
    "tiny-gqa": LlamaConfig(
        vocab_size=160,
        hidden_size=72,
        intermediate_size=100,
        num_layers=2,
        num_heads=9,
        num_kv_heads=3,
        rope_theta=100000.0,
        max_position=256,
        tie_embeddings=True,
        name="tiny-gqa",
    ),
}


def config_names() -> tuple[str, ...]:
    """Names accepted by `get_config`."""
    return tuple(_PRESETS)


def get_config(name: str) -> LlamaConfig:
    """The preset `name` (see `config_names()`); ValueError for an unknown name."""
    try:
        return _PRESETS[name]
    except (KeyError, TypeError):
        raise ValueError(
            f"unknown model config {name!r}; choose one of {', '.join(_PRESETS)}"
        ) from None
