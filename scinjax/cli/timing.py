"""``scinjax timing``: All-Reduce latency / algbw / busbw per algorithm and message size."""

from __future__ import annotations

import argparse

from scinjax.apps.timing import ALGORITHMS, report
from scinjax.timing import profile_names

__all__ = ["main"]


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(
        prog="scinjax timing", description=__doc__.split("\n")[0].strip("`")
    )
    ap.add_argument("--fabric", default="h200-nvswitch-8", choices=profile_names())
    ap.add_argument("--sizes", default="1KiB..1GiB", help="e.g. 1KiB..1GiB or 4KiB,1MiB")
    ap.add_argument("--n-ranks", type=int, default=None, help="default: the fabric's")
    graphs = ap.add_mutually_exclusive_group()
    graphs.add_argument(
        "--cuda-graphs",
        dest="graphs",
        action="store_true",
        default=None,
        help="collectives inside CUDA graphs (default: the profile's, eager)",
    )
    graphs.add_argument("--eager", dest="graphs", action="store_false")
    ap.add_argument("--algorithms", default=",".join(ALGORITHMS))
    ap.add_argument("--out", default="results/timing", help="directory for timing.json/png")
    ap.add_argument("--no-plot", action="store_true")
    ap.add_argument("--calibration", action="store_true", help="also print the fit tables")
    ap.add_argument(
        "--scin-efficiency",
        type=float,
        default=None,
        help="override the (assumed) NVLink efficiency of scin, for sensitivity studies",
    )
    return report(ap.parse_args(argv))
