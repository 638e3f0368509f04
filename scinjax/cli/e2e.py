"""``scinjax e2e``: LLaMA-2 TTFT / TPOT per All-Reduce algorithm at tensor parallelism TP."""

from __future__ import annotations

import argparse

from scinjax.apps.e2e import ALGORITHMS, report
from scinjax.timing import profile_names

__all__ = ["main"]


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="scinjax e2e", description=__doc__.split("\n")[0])
    ap.add_argument(
        "--models",
        default="llama2-7b,llama2-13b,llama2-70b",
        help="comma-separated presets, GGUF files, Hugging Face folders or LlamaConfig JSON files",
    )
    ap.add_argument("--fabric", default="h200-nvswitch-8", choices=profile_names())
    ap.add_argument("--tp", type=int, default=8)
    ap.add_argument("--prefill", default="128..8192", help="prompt lengths, e.g. 128..8192")
    ap.add_argument("--prefill-batch", type=int, default=1)
    ap.add_argument("--decode-batch", default="1..64", help="decode batches, e.g. 1..64")
    ap.add_argument("--context", type=int, default=2048, help="cached tokens while decoding")
    ap.add_argument("--algorithms", default=",".join(ALGORITHMS))
    ap.add_argument("--overlap", action="store_true", help="ideal compute/comm overlap")
    ap.add_argument(
        "--eager",
        action="store_true",
        help="collectives without CUDA graphs (default: inside CUDA graphs)",
    )
    ap.add_argument(
        "--scin-efficiency",
        type=float,
        default=None,
        help="override the (assumed) NVLink efficiency of scin (sensitivity)",
    )
    ap.add_argument("--out", default="results/e2e")
    ap.add_argument("--no-plot", action="store_true")
    return report(ap.parse_args(argv))
