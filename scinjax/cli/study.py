"""``scinjax study``: accuracy of in-network quantized All-Reduce on a real model."""

from __future__ import annotations

import argparse
import os
import sys

__all__ = ["main", "parser", "split_specs"]


def split_specs(items: list[str]) -> list[str]:
    """Variant specs given space and/or comma separated."""
    return [v.strip() for item in items for v in item.split(",") if v.strip()]


def _tokens(text: str) -> int | None:
    if text.lower() in ("all", "0"):
        return None
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"--tokens must be >= 1 or 'all', got {text}")
    return value


def parser() -> argparse.ArgumentParser:
    from scinjax.apps.study import DEFAULT_VARIANTS

    p = argparse.ArgumentParser(
        prog="scinjax study",
        description="Accuracy of in-network quantized All-Reduce on a real model: every "
        "variant on the same weights and tokens, against the exact reduction "
        "(docs/study.md).",
    )
    p.add_argument("--model", default=None, help="smollm2-135m (default), a .gguf or a HF folder")
    p.add_argument("--tp", type=int, default=8, help="emulated tensor-parallel ranks (8)")
    p.add_argument(
        "--variants",
        nargs="+",
        default=list(DEFAULT_VARIANTS),
        metavar="SPEC",
        help="collectives ALGO[:UP[/DOWN]][+order=..][+accumulate=..], policies "
        "SPEC@mlp_out / SPEC@layers=2..27, or a named set (default, field, policies), space "
        f"or comma separated (default: {' '.join(DEFAULT_VARIANTS)}); exact always runs as "
        "the reference",
    )
    src = p.add_mutually_exclusive_group()
    src.add_argument("--text", metavar="FILE", help="UTF-8 text (default: CPython prose)")
    src.add_argument("--jsonl", metavar="FILE", help="JSON lines; the --field of each is text")
    p.add_argument("--field", default="text", help="field of --jsonl records (text)")
    p.add_argument("--ctx", type=int, default=256, help="tokens per window; 2nd half scored (256)")
    p.add_argument(
        "--tokens", type=_tokens, default=2048, help="scored-token budget, or 'all' (2048)"
    )
    p.add_argument("--batch", type=int, default=4, help="windows per forward pass (4)")
    p.add_argument("--prompts", type=int, default=4, help="greedy-generation prompts (4)")
    p.add_argument("--prompt-len", type=int, default=16, help="tokens per prompt (16)")
    p.add_argument("--gen-tokens", type=int, default=16, help="greedy tokens per prompt (16)")
    p.add_argument("--seeds", default="0", help="seeds of stochastic variants, e.g. 0,1,2 (0)")
    p.add_argument("--wire-dtype", default="bfloat16", choices=("bfloat16", "float16", "float32"))
    p.add_argument(
        "--weights-dtype",
        default="float32",
        choices=("float32", "bfloat16", "float16"),
        help="storage of the weights (bfloat16/float16: half the memory, float32 activations)",
    )
    p.add_argument("--out", default=os.path.join("results", "study"), help="output folder")
    p.add_argument(
        "--attribution",
        action="store_true",
        help="also the per-call-site error of every variant on the first window "
        "(attribution.json / attribution.png)",
    )
    p.add_argument("--no-plot", action="store_true", help="skip the PNG")
    p.add_argument("--quiet", action="store_true", help="no progress output")
    return p


def main(argv: list[str] | None = None) -> int:
    from scinjax.apps import study

    args = parser().parse_args(argv)
    try:
        seeds = [int(s) for s in args.seeds.split(",") if s.strip()]
        if args.text is not None:
            corpus = study.read_text_file(args.text)
        elif args.jsonl is not None:
            corpus = study.read_jsonl(args.jsonl, args.field)
        else:
            corpus = None
        result = study.run_study(
            model=args.model,
            tp=args.tp,
            variants=split_specs(args.variants),
            corpus=corpus,
            ctx=args.ctx,
            tokens=args.tokens,
            batch=args.batch,
            prompts=args.prompts,
            prompt_len=args.prompt_len,
            gen_tokens=args.gen_tokens,
            wire_dtype=args.wire_dtype,
            weights_dtype=args.weights_dtype,
            seeds=seeds,
            attribution=args.attribution,
            progress=not args.quiet,
        )
    except (ValueError, FileNotFoundError) as err:
        print(f"scinjax study: {err}", file=sys.stderr)
        return 2
    print(study.format_table(result))
    print()
    print(study.format_percentiles(result))
    paths = study.write_results(result, args.out)
    if not args.no_plot:
        paths["png"] = study.plot_results(result, os.path.join(args.out, "study.png"))
        if result["attribution"]:
            paths["attribution_png"] = study.plot_attribution(
                result["attribution"], os.path.join(args.out, "attribution.png")
            )
    print("wrote " + ", ".join(paths[k] for k in sorted(paths)))
    print(f"total {result['settings']['total_seconds']:.0f} s")
    return 0
