"""The `scinjax traffic` app: bytes per link of a full-size model, every All-Reduce algorithm.

    scinjax traffic --model llama2-70b --tp 8 --prefill 2048
    scinjax traffic --model llama2-70b --tp 8 --decode --batch 16 --json out.json

Counts come from abstract tracing of the emulated model (`model_traffic`):
nothing is allocated, every number is an exact integer.
"""

from __future__ import annotations

import json
import sys

from scinjax.models import model_traffic, resolve_config

__all__ = ["DEFAULT_COLLECTIVES", "report", "traffic_rows"]

DEFAULT_COLLECTIVES = (
    "ring",
    "one_shot",
    "two_shot",
    "nvls",
    "scin",
    "scin:int8",
    "scin:mxint8",
    "two_shot:int8",
)


def traffic_rows(config, *, tp, tokens, batch, collectives, wire_dtype="bfloat16") -> list[dict]:
    """One dict per collective: per-layer and per-forward bytes on every link (exact ints)."""
    layers = config.num_layers
    elements = batch * tokens * config.hidden_size  # per All-Reduce, per rank
    rows = []
    for spec in collectives:
        report = model_traffic(
            config, tp=tp, collective=spec, tokens=tokens, batch=batch, wire_dtype=wire_dtype
        )
        up, down = list(report.up), list(report.down)
        if any(v % layers for v in up + down):
            raise AssertionError("per-forward bytes are not a whole number of layers")
        rows.append(
            dict(
                collective=spec,
                allreduces_per_layer=report.calls // layers if layers else 0,
                elements_per_allreduce=elements,
                per_layer=dict(up=[v // layers for v in up], down=[v // layers for v in down]),
                per_forward=dict(
                    up=up,
                    down=down,
                    up_payload=list(report.up_payload),
                    up_scale=list(report.up_scale),
                    down_payload=list(report.down_payload),
                    down_scale=list(report.down_scale),
                ),
                max_link_bytes_per_layer=report.max_link_bytes // layers,
                max_link_bytes=report.max_link_bytes,
                total_bytes=report.total,
                wire_bytes_per_element=(max(up) / (report.calls * elements)) if up else 0.0,
            )
        )
    return rows


def _fmt(n: int) -> str:
    for unit, size in (("GiB", 2**30), ("MiB", 2**20), ("KiB", 2**10)):
        if n >= size:
            return f"{n / size:,.2f} {unit}"
    return f"{n} B"


def _table(rows: list[dict]) -> str:
    head = (
        f"{'collective':<15}{'up B/link/layer':>17}{'down B/link/layer':>19}"
        f"{'busiest link B/forward':>24}{'all links/forward':>19}{'B/elem':>8}"
    )
    lines = [head, "-" * len(head)]
    for r in rows:
        lines.append(
            f"{r['collective']:<15}{max(r['per_layer']['up']):>17,}"
            f"{max(r['per_layer']['down']):>19,}{r['max_link_bytes']:>24,}"
            f"{_fmt(r['total_bytes']):>19}{r['wire_bytes_per_element']:>8.4f}"
        )
    return "\n".join(lines)


def report(args) -> int:
    """Count, print and optionally write JSON; ``args`` as parsed by the CLI."""
    try:
        config = resolve_config(args.model)  # preset, GGUF/HF path or JSON (no weights read)
    except (ValueError, TypeError, FileNotFoundError) as err:
        print(f"scinjax traffic: {err}", file=sys.stderr)
        return 2
    tokens = 1 if args.decode else (2048 if args.prefill is None else args.prefill)
    collectives = [s.strip() for s in args.collectives.split(",") if s.strip()]
    try:
        rows = traffic_rows(
            config,
            tp=args.tp,
            tokens=tokens,
            batch=args.batch,
            collectives=collectives,
            wire_dtype=args.wire_dtype,
        )
    except ValueError as err:
        print(f"scinjax traffic: {err}", file=sys.stderr)
        return 2
    what = f"decode step, batch {args.batch}" if args.decode else f"prefill {tokens} tokens"
    if args.batch > 1 and not args.decode:
        what += f" x batch {args.batch}"
    print(
        f"{config.name}: {config.num_layers} layers x 2 All-Reduces of "
        f"{args.batch * tokens} x {config.hidden_size} {args.wire_dtype} partial sums, "
        f"tp={args.tp}, {what}"
    )
    print("bytes on the busiest rank's links (exact); B/elem: uplink bytes per element sent")
    print(_table(rows))
    if args.json:
        doc = dict(
            model=config.name,
            tp=args.tp,
            phase="decode" if args.decode else "prefill",
            tokens=tokens,
            batch=args.batch,
            hidden=config.hidden_size,
            layers=config.num_layers,
            wire_dtype=args.wire_dtype,
            results=rows,
        )
        with open(args.json, "w") as f:
            json.dump(doc, f, indent=2)
        print(f"wrote {args.json}")
    return 0
