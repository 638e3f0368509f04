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


def _per_rank(records, field: str) -> list:
    """Sum over records of ``field`` per rank, times each record's ``calls``."""
    n = records[0].n_ranks if records else 0
    return [sum(getattr(r, field)[i] * r.calls for r in records) for i in range(n)]


def traffic_rows(config, *, tp, tokens, batch, collectives, wire_dtype="bfloat16") -> list[dict]:
    """One dict per collective: per-layer and per-forward bytes on every link (exact ints).

    The All-Reduces (``per_layer``/``per_forward``) and, for an MoE config, the expert
    dispatch + combine (``moe_per_layer``: the uniform-routing expectation of
    spec/moe.md, so possibly fractional) are reported apart.
    """
    layers = config.num_layers
    elements = batch * tokens * config.hidden_size  # per All-Reduce, per rank
    rows = []
    for spec in collectives:
        report = model_traffic(
            config, tp=tp, collective=spec, tokens=tokens, batch=batch, wire_dtype=wire_dtype
        )
        ar = [r for r in report.records if getattr(r, "kind", "allreduce") != "moe"]
        moe = [r for r in report.records if getattr(r, "kind", "allreduce") == "moe"]
        up, down = _per_rank(ar, "up"), _per_rank(ar, "down")
        if any(v % layers for v in up + down):
            raise AssertionError("per-forward bytes are not a whole number of layers")
        calls = sum(r.calls for r in ar)
        row = dict(
            collective=spec,
            allreduces_per_layer=calls // layers if layers else 0,
            elements_per_allreduce=elements,
            per_layer=dict(up=[v // layers for v in up], down=[v // layers for v in down]),
            per_forward=dict(
                up=up,
                down=down,
                up_payload=_per_rank(ar, "up_payload"),
                up_scale=_per_rank(ar, "up_scale"),
                down_payload=_per_rank(ar, "down_payload"),
                down_scale=_per_rank(ar, "down_scale"),
            ),
            max_link_bytes_per_layer=max(max(up), max(down)) // layers if up else 0,
            max_link_bytes=max(max(up), max(down)) if up else 0,
            total_bytes=sum(up) + sum(down),
            wire_bytes_per_element=(max(up) / (calls * elements)) if up and calls else 0.0,
        )
        if moe:
            m_up, m_down = _per_rank(moe, "up"), _per_rank(moe, "down")
            row["moe_per_layer"] = dict(
                up=[float(v) / layers for v in m_up],
                down=[float(v) / layers for v in m_down],
                routing=sorted({r.routing for r in moe}),
                algorithm=sorted({r.algorithm for r in moe}),
            )
        rows.append(row)
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
    moe = [r for r in rows if "moe_per_layer" in r]
    if moe:
        m = moe[0]["moe_per_layer"]
        lines.append(
            f"\nMoE dispatch + combine ({'/'.join(m['algorithm'])}, "
            f"{'/'.join(m['routing'])} routing: spec/moe.md's expectation), busiest rank:"
        )
        lines.append(f"{'collective':<15}{'up B/link/layer':>17}{'down B/link/layer':>19}")
        for r in moe:
            lines.append(
                f"{r['collective']:<15}{max(r['moe_per_layer']['up']):>17,.0f}"
                f"{max(r['moe_per_layer']['down']):>19,.0f}"
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
