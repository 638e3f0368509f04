"""``scinjax moe-traffic``: MoE dispatch/combine bytes per link and layer time."""

from __future__ import annotations

import argparse

from scinjax.apps.moe_traffic import DEFAULT_FORMATS, DEFAULT_ROUTINGS, ROUTINGS, report
from scinjax.models.moe_config import moe_config_names

__all__ = ["main"]


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="scinjax moe-traffic",
        description="Per-link bytes of MoE expert-parallel dispatch and combine "
        "(all_to_all, dedup, dysharp) from routing alone, and the layer time of "
        "sequential vs fused phases.",
    )
    p.add_argument("--model", default="deepseek-v3", help=f"one of {', '.join(moe_config_names())}")
    p.add_argument("--ep", default="8,16,32,64", help="comma-separated EP sizes N")
    p.add_argument("--tokens", type=int, default=8192, help="tokens per rank (default 8192)")
    p.add_argument(
        "--formats",
        default=",".join(DEFAULT_FORMATS),
        help="comma-separated DISPATCH/COMBINE format pairs (scinjax.formats names)",
    )
    p.add_argument(
        "--routing",
        default=",".join(DEFAULT_ROUTINGS),
        help=f"routings among {', '.join(ROUTINGS)} (measured: the trained tiny MoE's router "
        "on held-out text; --model tiny-moe only)",
    )
    p.add_argument(
        "--train-steps", type=int, default=200, help="training steps for --routing measured"
    )
    p.add_argument("--profile", default="h100-nvswitch-8", help="fabric profile (link rates)")
    p.add_argument("--chunks", type=int, default=16, help="token chunks of the fused pipeline")
    p.add_argument("--seed", type=int, default=0, help="seed of the sampled routing")
    p.add_argument("--json", metavar="PATH", help="also write every row as JSON")
    p.add_argument("--plot", metavar="PATH", help="also write a PNG (bytes and speedup vs N)")
    return p


def main(argv: list[str] | None = None) -> int:
    return report(_parser().parse_args(argv))
