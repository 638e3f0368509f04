"""What the study compares: one collective for every call, or a per-call policy."""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence

from scinjax.collectives import CallPolicy, Collective, parse_collective_or_policy

__all__ = ["REFERENCE", "VARIANT_SETS", "Variant", "parse_variants"]

REFERENCE = "exact"

# Named sets usable wherever a list of variants is given (`--variants field`).
VARIANT_SETS = {
    "default": (
        "exact",
        "ring",
        "nvls",
        "scin",
        "scin:int8",
        "scin:mxint8",
        "scin:int4",
        "scin:int8/bf16",
        "scin:bf16/int8",
        "two_shot:int8",
    ),
    # SCIN's in-switch INQ next to the quantized All-Reduces GPUs ship in software
    "field": (
        "scin",
        "scin:int8",
        "scin:mxfp8",
        "scin:mxfp4",
        "scin:nvfp4",
        "quickreduce-q8",
        "quickreduce-q4",
        "flashinfer-fp8",
        "trtllm-fp8",
    ),
    # selective quantization: which call sites can take int8
    "policies": (
        "scin",
        "scin:int8",
        "scin:int8@attn_out@else=scin",
        "scin:int8@mlp_out@else=scin",
        "scin:int8@layers=2..27@else=scin",
    ),
}


@dataclasses.dataclass(frozen=True, kw_only=True)
class Variant:
    """A study variant: ``spec`` is what the model takes (a Collective or a CallPolicy)."""

    spec: Collective | CallPolicy

    @property
    def name(self) -> str:
        return str(self.spec)

    @property
    def stochastic(self) -> bool:
        return self.spec.stochastic

    def describe(self) -> dict:
        """algorithm / uplink / downlink / policy fields of a result row."""
        coll = self.spec if isinstance(self.spec, Collective) else None
        if coll is None:
            kinds = sorted({c.algorithm for c in self.spec.collectives})
            return {
                "algorithm": "+".join(kinds),
                "uplink": None,
                "downlink": None,
                "policy": str(self.spec),
            }
        return {
            "algorithm": coll.algorithm,
            "uplink": None if coll.uplink is None else coll.uplink.name,
            "downlink": None if coll.downlink is None else coll.downlink.name,
            "policy": None,
        }


def parse_variants(variants: Sequence) -> list[Variant]:
    """Deduplicated variants, the reference (``exact``) first; ValueError on a bad spec.

    A name of :data:`VARIANT_SETS` (``default``, ``field``, ``policies``) expands to its set.
    """
    if isinstance(variants, str | Collective | CallPolicy):
        variants = [variants]
    expanded = []
    for v in variants:
        if isinstance(v, str) and v.strip() in VARIANT_SETS:
            expanded += VARIANT_SETS[v.strip()]
        else:
            expanded.append(v)
    out: dict[str, Variant] = {}
    for v in expanded:
        if isinstance(v, str):
            v = v.strip()
            if not v:
                continue
        try:
            spec = parse_collective_or_policy(v)
        except (ValueError, TypeError) as err:
            raise ValueError(f"variant {v!r}: {err}") from None
        variant = Variant(spec=spec)
        out.setdefault(variant.name, variant)
    ref = out.pop(REFERENCE, Variant(spec=Collective(algorithm=REFERENCE)))
    return [ref, *out.values()]
