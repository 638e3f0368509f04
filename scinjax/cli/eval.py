"""``scinjax eval``: multiple-choice accuracy (acc, acc_norm) per collective."""

from __future__ import annotations

import argparse
import os
import sys

__all__ = ["main"]


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        prog="scinjax eval",
        description="Multiple-choice accuracy by log-likelihood of each choice, per collective "
        "(lm-eval-harness style; JSONL context/choices/answer or BIG-bench task.json).",
    )
    p.add_argument("--tasks", required=True, metavar="FILE", help="JSONL or BIG-bench task.json")
    p.add_argument("--model", default=None, help="smollm2-135m (default), a .gguf or a HF folder")
    p.add_argument("--tp", type=int, default=8)
    p.add_argument("--variants", default="exact,scin,scin:int8", help="comma-separated specs")
    p.add_argument("--limit", type=int, default=None, help="first N items only")
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--seed", type=int, default=0, help="PRNG seed of stochastic variants")
    p.add_argument("--wire-dtype", default="bfloat16", choices=("bfloat16", "float16", "float32"))
    p.add_argument("--weights-dtype", default="float32", choices=("float32", "bfloat16", "float16"))
    p.add_argument("--out", default=os.path.join("results", "eval"))
    p.add_argument("--quiet", action="store_true")
    args = p.parse_args(argv)
    from scinjax.apps import eval as app

    try:
        items, info = app.read_tasks(args.tasks)
        if args.limit is not None:
            items = items[: args.limit]
        result = app.run_eval(
            items,
            model=args.model,
            tp=args.tp,
            variants=[v for v in args.variants.split(",") if v.strip()],
            wire_dtype=args.wire_dtype,
            weights_dtype=args.weights_dtype,
            batch=args.batch,
            seed=args.seed,
            progress=not args.quiet,
        )
    except (ValueError, FileNotFoundError) as err:
        print(f"scinjax eval: {err}", file=sys.stderr)
        return 2
    result["settings"].update(tasks=os.path.basename(args.tasks), **info)
    print(app.format_eval(result))
    paths = app.write_eval(result, args.out)
    print("wrote " + ", ".join(paths[k] for k in sorted(paths)))
    return 0
