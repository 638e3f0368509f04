"""``scinjax train``: DP x TP training with emulated (and quantized) collectives."""

from __future__ import annotations

import argparse
import sys

from scinjax.apps.train import OPTIMIZERS, TrainConfig, report, variants_for

__all__ = ["main"]


def _seeds(text: str) -> list[int]:
    try:
        seeds = [int(s) for s in text.split(",") if s.strip()]
    except ValueError as err:
        raise argparse.ArgumentTypeError(
            f"--seeds takes integers like 0,1,2, got {text!r}"
        ) from err
    if not seeds:
        raise argparse.ArgumentTypeError("--seeds needs at least one seed")
    return seeds


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="scinjax train",
        description="Train a tiny model from scratch on synthetic tokens with DP x TP ranks "
        "emulated; compares the given collectives with the exact ones on the same data "
        "order and init (loss curves PNG + JSON, bytes per step per link).",
    )
    p.add_argument("--model", default="tiny", help="model config (default tiny)")
    p.add_argument("--dp", type=int, default=4, help="data-parallel ranks (default 4)")
    p.add_argument("--tp", type=int, default=1, help="tensor-parallel ranks (default 1)")
    p.add_argument("--dp-collective", default="scin:int8", help="DP gradient All-Reduce")
    p.add_argument("--tp-collective", default="exact", help="TP forward All-Reduce")
    p.add_argument("--tp-backward", default="exact", help="TP backward (cotangent) All-Reduce")
    p.add_argument(
        "--error-feedback",
        choices=("off", "on", "both"),
        default="both",
        help="carry the DP uplink quantization residual to the next step (default: both)",
    )
    p.add_argument(
        "--sequence-parallel",
        action="store_true",
        help="Megatron sequence parallelism in the TP model (reduce-scatter + all-gather)",
    )
    p.add_argument("--steps", type=int, default=40, help="optimizer steps (default 40)")
    p.add_argument("--batch", type=int, default=8, help="sequences per step, all DP ranks")
    p.add_argument("--seq-len", type=int, default=32, help="tokens per sequence")
    p.add_argument("--optimizer", choices=OPTIMIZERS, default="adamw")
    p.add_argument("--lr", type=float, default=3e-3, help="learning rate (default 3e-3)")
    p.add_argument("--seeds", type=_seeds, default=[0, 1, 2], help="comma-separated seeds")
    p.add_argument("--out", default="results/train", help="folder for train.json and the PNG")
    p.add_argument("--no-progress", action="store_true", help="no progress output")
    return p


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    try:
        base = TrainConfig(
            model=args.model,
            dp=args.dp,
            tp=args.tp,
            steps=args.steps,
            batch=args.batch,
            seq_len=args.seq_len,
            optimizer=args.optimizer,
            lr=args.lr,
            sequence_parallel=args.sequence_parallel,
        )
        variants = variants_for(
            dp_collective=args.dp_collective,
            tp_collective=args.tp_collective,
            tp_backward=args.tp_backward,
            error_feedback=args.error_feedback,
        )
    except (ValueError, TypeError) as err:
        print(f"scinjax train: {err}", file=sys.stderr)
        return 2
    report(
        base,
        variants=variants,
        seeds=args.seeds,
        out_dir=args.out,
        show_progress=not args.no_progress,
    )
    return 0
