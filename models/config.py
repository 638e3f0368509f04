"""Model configuration: a frozen, keyword-only dataclass and named presets.

`LlamaConfig` describes a LLaMA-2-style decoder (RMSNorm, rotary embeddings,
multi-head or grouped-query attention, SwiGLU MLP, optional tied head). It is
validated on construction; a bad value raises `ValueError` naming the value
and the fix. `get_config(name)` returns a preset; `config.replace(**kw)` a
copy with some fields changed (e.g. reduced depth for tests).
"""

from __future__ import annotations

import dataclasses

from .moe_spec import MoeSpec

__all__ = ["LlamaConfig", "RopeScaling", "ROPE_TYPES", "get_config", "config_names"]

#: Rotary scaling kinds `RopeScaling` accepts (others, e.g. yarn, are refused by name).
ROPE_TYPES = ("linear", "llama3", "freq_factors")


def _positive(owner: str, field: str, value) -> None:
    if isinstance(value, bool) or not isinstance(value, int | float) or not value > 0:
        raise ValueError(f"{owner}.{field} must be a positive number, got {value!r}")


@dataclasses.dataclass(frozen=True, kw_only=True)
class RopeScaling:
    """How the rotary frequencies are rescaled (inv_freq_j = theta^(-2j/hd) before scaling).

    rope_type:
      "linear": inv_freq_j / factor (Hugging Face "linear").
      "llama3": Llama-3.1's rule (Hugging Face `_compute_llama3_parameters`):
        wavelength w_j = 2 pi / inv_freq_j, L_lo = original_max_position /
        low_freq_factor, L_hi = original_max_position / high_freq_factor;
        w_j < L_hi: unchanged; w_j > L_lo: inv_freq_j / factor; else
        (1 - s) inv_freq_j / factor + s inv_freq_j with
        s = (original_max_position / w_j - low_freq_factor) /
        (high_freq_factor - low_freq_factor).
      "freq_factors": inv_freq_j / freq_factors[j] (GGUF `rope_freqs` tensor, [hd/2]).
    """

    rope_type: str
    factor: float = 1.0
    low_freq_factor: float = 1.0
    high_freq_factor: float = 4.0
    original_max_position: int = 8192
    freq_factors: tuple[float, ...] | None = None

    def __post_init__(self) -> None:
        if self.rope_type not in ROPE_TYPES:
            raise ValueError(
                f"RopeScaling.rope_type {self.rope_type!r} is not supported; use one of "
                f"{ROPE_TYPES} (no scaling: rope_scaling=None)"
            )
        for field in ("factor", "low_freq_factor", "high_freq_factor"):
            _positive("RopeScaling", field, getattr(self, field))
        mp = self.original_max_position
        if isinstance(mp, bool) or not isinstance(mp, int) or mp < 1:
            raise ValueError(
                f"RopeScaling.original_max_position must be a positive int, got {mp!r}"
            )
        if self.rope_type == "llama3" and not self.high_freq_factor > self.low_freq_factor:
            raise ValueError(
                f"RopeScaling: high_freq_factor={self.high_freq_factor} must exceed "
                f"low_freq_factor={self.low_freq_factor} (llama3 scaling)"
            )
        ff = self.freq_factors
        if (self.rope_type == "freq_factors") != (ff is not None):
            raise ValueError(
                "RopeScaling.freq_factors must be given exactly when rope_type='freq_factors'"
            )
        if ff is not None:
            ff = tuple(float(v) for v in ff)
            if not ff or not all(v > 0 and v < float("inf") for v in ff):
                raise ValueError(
                    f"RopeScaling.freq_factors must be finite positive numbers, got {ff[:8]}"
                )
            object.__setattr__(self, "freq_factors", ff)


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
      qkv_bias: the Q/K/V projections add a bias (Qwen2); weights then hold
        ``layers.{i}.bq/bk/bv``.
      rope_scaling: a `RopeScaling` (Llama-3.x, GGUF rope_freqs) or None.
      sliding_window: W, a query at position i sees keys j with 0 <= i - j < W
        (Mistral); None for full causal attention.
      moe: a `MoeSpec`: every layer's MLP is a routed mixture of SwiGLU experts,
        expert parallel over the TP ranks (`models.moe_block`); None: the dense MLP
        (``intermediate_size`` is then unused by the layers).
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
    qkv_bias: bool = False
    rope_scaling: RopeScaling | None = None
    sliding_window: int | None = None
    moe: MoeSpec | None = None
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
        for field in ("tie_embeddings", "qkv_bias"):
            if not isinstance(getattr(self, field), bool):
                raise ValueError(
                    f"LlamaConfig.{field} must be a bool, got {getattr(self, field)!r}"
                )
        rs = self.rope_scaling
        if rs is not None and not isinstance(rs, RopeScaling):
            raise TypeError(
                f"LlamaConfig.rope_scaling must be a RopeScaling or None, got {type(rs).__name__}"
            )
        if rs is not None and rs.freq_factors is not None and len(rs.freq_factors) != hd // 2:
            raise ValueError(
                f"LlamaConfig: rope_scaling.freq_factors has {len(rs.freq_factors)} entries, "
                f"head_dim={hd} needs {hd // 2}"
            )
        sw = self.sliding_window
        if sw is not None and (isinstance(sw, bool) or not isinstance(sw, int) or sw < 1):
            raise ValueError(
                f"LlamaConfig.sliding_window must be a positive int or None (full causal), "
                f"got {sw!r}"
            )
        if self.moe is not None and not isinstance(self.moe, MoeSpec):
            raise TypeError(
                f"LlamaConfig.moe must be a MoeSpec or None, got {type(self.moe).__name__}"
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
        if self.moe is not None:  # routed experts + router + shared expert replace the MLP
            m = self.moe
            per_layer += d * m.n_experts + 3 * d * (m.n_experts * m.intermediate)
            per_layer += 3 * d * m.shared_intermediate - 3 * d * f
        if self.qkv_bias:
            per_layer += self.q_dim + 2 * self.kv_dim
        head = 0 if self.tie_embeddings else d * self.vocab_size
        return self.vocab_size * d + self.num_layers * per_layer + d + head


_LLAMA31_ROPE = RopeScaling(
    rope_type="llama3",
    factor=8.0,
    low_freq_factor=1.0,
    high_freq_factor=4.0,
    original_max_position=8192,
)

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
    # Llama-3.1 (config.json of meta-llama/Llama-3.1-8B / -70B): GQA 8 KV heads, llama3 rope.
    "llama3-8b": LlamaConfig(
        vocab_size=128256,
        hidden_size=4096,
        intermediate_size=14336,
        num_layers=32,
        num_heads=32,
        num_kv_heads=8,
        rms_norm_eps=1e-5,
        rope_theta=500000.0,
        max_position=131072,
        rope_scaling=_LLAMA31_ROPE,
        name="llama3-8b",
    ),
    "llama3-70b": LlamaConfig(
        vocab_size=128256,
        hidden_size=8192,
        intermediate_size=28672,
        num_layers=80,
        num_heads=64,
        num_kv_heads=8,
        rms_norm_eps=1e-5,
        rope_theta=500000.0,
        max_position=131072,
        rope_scaling=_LLAMA31_ROPE,
        name="llama3-70b",
    ),
    # Qwen/Qwen2.5-7B and -72B: Q/K/V biases, 28/4 and 64/8 heads.
    "qwen2.5-7b": LlamaConfig(
        vocab_size=152064,
        hidden_size=3584,
        intermediate_size=18944,
        num_layers=28,
        num_heads=28,
        num_kv_heads=4,
        rms_norm_eps=1e-6,
        rope_theta=1000000.0,
        max_position=131072,
        qkv_bias=True,
        name="qwen2.5-7b",
    ),
    "qwen2.5-72b": LlamaConfig(
        vocab_size=152064,
        hidden_size=8192,
        intermediate_size=29568,
        num_layers=80,
        num_heads=64,
        num_kv_heads=8,
        rms_norm_eps=1e-6,
        rope_theta=1000000.0,
        max_position=131072,
        qkv_bias=True,
        name="qwen2.5-72b",
    ),
    # mistralai/Mistral-7B-v0.1: GQA 8 KV heads, 4096-token sliding window.
    "mistral-7b": LlamaConfig(
        vocab_size=32000,
        hidden_size=4096,
        intermediate_size=14336,
        num_layers=32,
        num_heads=32,
        num_kv_heads=8,
        rms_norm_eps=1e-5,
        rope_theta=10000.0,
        max_position=32768,
        sliding_window=4096,
        name="mistral-7b",
    ),
    # mistralai/Mixtral-8x7B-v0.1 (config.json): Mistral-7B attention, every MLP a mixture
    # of 8 SwiGLU experts of width 14336, top-2 (shapes for traffic; no weights ship here).
    "mixtral-8x7b": LlamaConfig(
        vocab_size=32000,
        hidden_size=4096,
        intermediate_size=14336,
        num_layers=32,
        num_heads=32,
        num_kv_heads=8,
        rms_norm_eps=1e-5,
        rope_theta=1000000.0,
        max_position=32768,
        moe=MoeSpec(n_experts=8, top_k=2, intermediate=14336),
        name="mixtral-8x7b",
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
