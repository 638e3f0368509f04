"""``scinjax traffic``: bytes per link of a full-size model, every All-Reduce algorithm."""

from __future__ import annotations

import argparse

from scinjax.apps.traffic import DEFAULT_COLLECTIVES, report
from scinjax.models import config_names

__all__ = ["main"]


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="scinjax traffic",
        description="Bytes per link of the tensor-parallel All-Reduces of one forward pass "
        "(abstract evaluation: nothing is allocated).",
    )
    p.add_argument(
        "--model",
        default="llama2-70b",
        help=f"preset ({', '.join(config_names())}), a GGUF file or Hugging Face folder "
        "(shapes from metadata, no weights read), or a JSON file of LlamaConfig fields",
    )
    p.add_argument("--tp", type=int, default=8, help="tensor-parallel ranks N (default 8)")
    mode = p.add_mutually_exclusive_group()
    mode.add_argument("--prefill", type=int, metavar="T", help="prefill of a T-token prompt")
    mode.add_argument(
        "--decode", action="store_true", help="one decode step (1 new token per sequence)"
    )
    p.add_argument("--batch", type=int, default=1, help="sequences B (default 1)")
    p.add_argument(
        "--collectives",
        default=",".join(DEFAULT_COLLECTIVES),
        help="comma-separated specs ALGO[:UPLINK[/DOWNLINK]] (default: all eight)",
    )
    p.add_argument("--wire-dtype", default="bfloat16", help="dtype of the partial sums")
    p.add_argument("--json", metavar="PATH", help="also write the results as JSON")
    return p


def main(argv: list[str] | None = None) -> int:
    return report(_parser().parse_args(argv))
