"""``scinjax sweep``: accuracy vs bytes over formats, algorithms, policies and N."""

from __future__ import annotations

import argparse
import dataclasses
import os
import sys

__all__ = ["main"]


def _ints(text: str) -> tuple[int, ...]:
    return tuple(int(v) for v in text.split(",") if v.strip())


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        prog="scinjax sweep",
        description="Accuracy against wire bytes over a grid of formats, algorithms, "
        "policies (at --tp) and over N; table, JSON/CSV, Pareto and N plots (docs/study.md).",
    )
    p.add_argument("--model", default=None, help="smollm2-135m (default), a .gguf or a HF folder")
    p.add_argument("--grid", choices=("default", "quick"), default="default")
    p.add_argument("--variants", default=None, help="replace the grid's variants (comma list)")
    p.add_argument("--tp", type=int, default=8, help="N of the format grid (8)")
    p.add_argument("--ns", default=None, help="N values of the N sweep (1,2,4,8,16,32,64)")
    p.add_argument("--n-variants", default=None, help="variants of the N sweep")
    p.add_argument("--text", metavar="FILE", help="UTF-8 text (default: CPython prose)")
    p.add_argument("--ctx", type=int, default=256)
    p.add_argument("--tokens", type=int, default=1016, help="scored tokens per variant (1016)")
    p.add_argument("--batch", type=int, default=4)
    p.add_argument("--weights-dtype", default="float32", choices=("float32", "bfloat16", "float16"))
    p.add_argument("--seeds", default="0", help="seeds of stochastic variants (0)")
    p.add_argument("--out", default=os.path.join("results", "sweep"))
    p.add_argument("--no-plot", action="store_true")
    p.add_argument("--quiet", action="store_true")
    args = p.parse_args(argv)
    from scinjax.apps import sweep
    from scinjax.apps.study import read_text_file

    try:
        grid = sweep.DEFAULT_GRID if args.grid == "default" else sweep.QUICK_GRID
        changes = {"tp": args.tp}
        if args.variants:
            changes["variants"] = tuple(
                ("custom", v.strip()) for v in args.variants.split(",") if v.strip()
            )
        if args.ns:
            changes["n_values"] = _ints(args.ns)
        if args.n_variants:
            changes["n_variants"] = tuple(v for v in args.n_variants.split(",") if v.strip())
        grid = dataclasses.replace(grid, **changes)
        result = sweep.run_sweep(
            grid,
            model=args.model,
            corpus=read_text_file(args.text) if args.text else None,
            ctx=args.ctx,
            tokens=args.tokens,
            batch=args.batch,
            weights_dtype=args.weights_dtype,
            seeds=_ints(args.seeds),
            progress=not args.quiet,
        )
    except (ValueError, FileNotFoundError) as err:
        print(f"scinjax sweep: {err}", file=sys.stderr)
        return 2
    print(sweep.format_sweep(result))
    paths = sweep.write_sweep(result, args.out, plots=not args.no_plot)
    print("wrote " + ", ".join(paths[k] for k in sorted(paths)))
    return 0
