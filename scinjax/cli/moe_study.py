"""``scinjax moe-study``: accuracy of quantized MoE dispatch/combine on a trained tiny MoE."""

from __future__ import annotations

import argparse

from scinjax.apps.moe_study import DEFAULT_VARIANTS, report

__all__ = ["main"]


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="scinjax moe-study",
        description="Train a tiny MoE LM on the embedded prose, then compare EP "
        "algorithms/link formats (ALGO:DISPATCH/COMBINE) with dedup:fp32/fp32.",
    )
    p.add_argument("--variants", default=",".join(DEFAULT_VARIANTS), help="comma-separated")
    p.add_argument("--steps", type=int, default=300, help="training steps (default 300)")
    p.add_argument("--ranks", type=int, default=4, help="EP ranks N (divides 8 experts)")
    p.add_argument("--windows", type=int, default=32, help="held-out windows of 128 bytes")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument(
        "--tp",
        default=None,
        help="tensor-parallel attention over the same ranks with this All-Reduce "
        "(e.g. exact, scin:int8); default: data-parallel attention",
    )
    p.add_argument("--json", metavar="PATH", help="also write the results as JSON")
    return p


def main(argv: list[str] | None = None) -> int:
    return report(_parser().parse_args(argv))
