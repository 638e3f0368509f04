"""The MoE switch of `LlamaConfig`: what replaces the dense SwiGLU MLP of every layer.

`MoeSpec` is static (frozen, keyword-only, validated on construction). With
``LlamaConfig(moe=MoeSpec(...))`` every decoder layer's MLP is a top-k softmax-routed
mixture of SwiGLU experts (optional shared expert), run expert-parallel over the same N
ranks as the tensor-parallel attention (`models.moe_block`).

Canonical per-layer weights of an MoE layer (``y = x @ W``; D hidden, E experts, I expert
width, Is shared width); they replace ``w_gate``/``w_up``/``w_down``:

=============================  ==========  ==============================
``layers.{i}.router``          [D, E]      router logits ``h @ router``
``layers.{i}.experts_gate``    [E, D, I]   expert SwiGLU gate projections
``layers.{i}.experts_up``      [E, D, I]   expert SwiGLU up projections
``layers.{i}.experts_down``    [E, I, D]   expert SwiGLU down projections
``layers.{i}.shared_gate``     [D, Is]     shared expert (``shared_intermediate > 0``)
``layers.{i}.shared_up``       [D, Is]
``layers.{i}.shared_down``     [Is, D]
=============================  ==========  ==============================
"""

from __future__ import annotations

import dataclasses

from scinjax.moe import EPConfig

__all__ = ["MoeSpec", "MOE_KEYS", "SHARED_KEYS", "moe_keys", "moe_shapes"]

MOE_KEYS = ("router", "experts_gate", "experts_up", "experts_down")
SHARED_KEYS = ("shared_gate", "shared_up", "shared_down")


def _int(field: str, value, lo: int) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < lo:
        raise ValueError(f"MoeSpec.{field} must be an int >= {lo}, got {value!r}")


@dataclasses.dataclass(frozen=True, kw_only=True)
class MoeSpec:
    """The MoE feed-forward of every layer and how its expert parallelism runs.

    Attributes:
      n_experts: E routed experts; expert e lives on rank ``e // (E / N)`` (N must
        divide E).
      top_k: k experts per token (softmax over the k picked router logits, as Mixtral).
      intermediate: I, one expert's SwiGLU width.
      shared_intermediate: Is, width of an always-on shared expert (0: none).
      algorithm: EP algorithm of dispatch/combine: ``all_to_all``, ``dedup``, ``dysharp``.
      dispatch_format, combine_format: wire formats (``scinjax.formats.get`` names).
      capacity: slots per expert (pairs beyond it are dropped, spec/moe.md); None is
        dropless.
    """

    n_experts: int
    top_k: int
    intermediate: int
    shared_intermediate: int = 0
    algorithm: str = "dedup"
    dispatch_format: str = "bf16"
    combine_format: str = "bf16"
    capacity: int | None = None

    def __post_init__(self) -> None:
        _int("n_experts", self.n_experts, 1)
        _int("top_k", self.top_k, 1)
        _int("intermediate", self.intermediate, 1)
        _int("shared_intermediate", self.shared_intermediate, 0)
        if self.top_k > self.n_experts:
            raise ValueError(
                f"MoeSpec.top_k={self.top_k} exceeds n_experts={self.n_experts}; "
                "a token picks k distinct experts"
            )
        self.ep_config()  # validates algorithm, formats and capacity with EPConfig's messages

    def ep_config(self) -> EPConfig:
        """The `scinjax.moe.EPConfig` of the layer (contiguous expert placement)."""
        return EPConfig(
            n_experts=self.n_experts,
            algorithm=self.algorithm,
            dispatch_format=self.dispatch_format,
            combine_format=self.combine_format,
            capacity=self.capacity,
        )

    def replace(self, **changes) -> MoeSpec:
        """A validated copy with `changes` applied (e.g. another EP algorithm)."""
        return dataclasses.replace(self, **changes)


def moe_keys(spec: MoeSpec) -> tuple[str, ...]:
    """Per-layer canonical keys of an MoE layer's feed-forward."""
    return MOE_KEYS + (SHARED_KEYS if spec.shared_intermediate else ())


def moe_shapes(spec: MoeSpec, hidden: int) -> dict[str, tuple[int, ...]]:
    """Shape of each key of `moe_keys(spec)` for hidden width D = `hidden`."""
    d, e, i, s = hidden, spec.n_experts, spec.intermediate, spec.shared_intermediate
    shapes = {
        "router": (d, e),
        "experts_gate": (e, d, i),
        "experts_up": (e, d, i),
        "experts_down": (e, i, d),
    }
    if s:
        shapes |= {"shared_gate": (d, s), "shared_up": (d, s), "shared_down": (s, d)}
    return shapes
