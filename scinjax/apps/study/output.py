"""Study output: fixed-width tables, JSON (stable keys, settings, versions) and CSV."""

from __future__ import annotations

import json
import math
import os

import numpy as np

from .._files import write_result_files
from .stats import PERCENTILES

__all__ = ["format_table", "format_percentiles", "write_results", "seed_spread"]


def _pm(value: float, se: float, fmt: str) -> str:
    if se is None or not math.isfinite(se):
        return format(value, fmt)
    return f"{format(value, fmt)} ± {format(se, fmt)}"


def _columns(row: dict) -> list[tuple[str, str]]:
    """(header, cell) pairs of the main table for one row."""
    return [
        ("variant", row["variant"] + ("" if row.get("seed") is None else f" s{row['seed']}")),
        ("PPL ratio", _pm(row["ppl_ratio"], row["ppl_ratio_se"], ".5f")),
        ("KL mean", _pm(row["kl_mean"], row["kl_mean_se"], ".2e")),
        ("KL p99", format(row["kl_p99"], ".2e")),
        ("KL max", format(row["kl_max"], ".2e")),
        ("same top-1", _pm(row["top1"], row["top1_se"], ".4f")),
        ("RMS dp", format(row["rms_dp"], ".4f")),
        ("max|dlogit|", format(row["max_dlogit"], ".3f")),
        ("gen", format(row["gen_agree_mean"], ".1f")),
        ("B/el up", format(row["up_bytes_per_elem"], ".4f")),
        ("B/el dn", format(row["down_bytes_per_elem"], ".4f")),
    ]


def _grid(headers: list[str], cells: list[list[str]]) -> list[str]:
    widths = [max(len(h), *(len(r[i]) for r in cells)) for i, h in enumerate(headers)]
    line = lambda vals: "  ".join(  # noqa: E731
        v.ljust(w) if i == 0 else v.rjust(w)
        for i, (v, w) in enumerate(zip(vals, widths, strict=True))
    )
    out = [line(headers)]
    out.append("-" * len(out[0]))
    out += [line(r) for r in cells]
    return out


def format_table(result: dict) -> str:
    """The study's main table: one row per run, ± one standard error."""
    s = result["settings"]
    rows = result["rows"]
    cols = [_columns(r) for r in rows]
    lines = [
        f"scinjax study: {s['model']}, tp={s['tp']}, wire {s['wire_dtype']}, compute "
        f"{s['compute_dtype']}; {s['scored_tokens']:,} scored tokens = {s['windows']} windows "
        f"of {s['ctx']} tokens, second half scored, of {s['text']}; greedy: {s['prompts']} "
        f"prompts x {s['gen_tokens']} tokens",
        *_grid([h for h, _ in cols[0]], [[c for _, c in r] for r in cols]),
        "± = one standard error from per-window batch means. PPL ratio = ppl(variant)/ppl(exact)"
        "; KL(exact || variant) in nats per token; same top-1 = argmax agrees with exact; "
        "RMS dp = RMS change of the probability of exact's top token; gen = mean greedy tokens "
        f"before the first divergence (of {s['gen_tokens']}); B/el = bytes per element of one "
        "All-Reduce on the busiest link.",
    ]
    return "\n".join(lines)


def format_percentiles(result: dict) -> str:
    """Per-token KL distribution of every run: percentiles and max."""
    headers = ["variant", *(f"p{q:g}" for q in PERCENTILES.values()), "max"]
    cells = []
    for r in result["rows"]:
        name = r["variant"] + ("" if r.get("seed") is None else f" s{r['seed']}")
        cells.append(
            [name, *(format(r[f"kl_{k}"], ".2e") for k in PERCENTILES), format(r["kl_max"], ".2e")]
        )
    return "\n".join(["KL(exact || variant) per token, percentiles [nats]", *_grid(headers, cells)])


def seed_spread(result: dict) -> dict:
    """For variants run with several seeds: mean and sample SD over seeds of key metrics."""
    by_variant: dict[str, list[dict]] = {}
    for r in result["rows"]:
        if r.get("seed") is not None:
            by_variant.setdefault(r["variant"], []).append(r)
    out = {}
    for name, rs in by_variant.items():
        if len(rs) < 2:
            continue
        out[name] = {
            key: {
                "mean": float(np.mean([r[key] for r in rs])),
                "sd": float(np.std([r[key] for r in rs], ddof=1)),
                "seeds": [r["seed"] for r in rs],
            }
            for key in ("kl_mean", "ppl_ratio", "top1")
        }
    return out


def write_results(result: dict, out_dir: str | os.PathLike) -> dict[str, str]:
    """``study.json`` (rows, settings, versions, seed spread), ``study.csv``, ``study.txt``;
    the per-token KL values of every run as ``study_kl.npz`` (float32)."""
    doc = {k: v for k, v in result.items() if k not in ("kl", "attribution")}
    doc["seed_spread"] = seed_spread(result)
    text = format_table(result) + "\n\n" + format_percentiles(result)
    paths = write_result_files(out_dir, "study", doc=doc, rows=result["rows"], text=text)
    if result.get("attribution"):
        paths["attribution"] = os.path.join(out_dir, "attribution.json")
        with open(paths["attribution"], "w", encoding="utf-8") as f:
            json.dump(result["attribution"], f, indent=1)
    if result.get("kl"):
        paths["npz"] = os.path.join(out_dir, "study_kl.npz")
        np.savez_compressed(paths["npz"], **result["kl"])
    return paths
