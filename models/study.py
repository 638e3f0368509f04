"""``scinjax study``: how much accuracy in-network quantization costs, per byte on the wire.

Every variant runs the same model (same weights, same token windows, same
float32 compute, same bfloat16 partial sums on the wire) split over ``--tp``
emulated ranks; only the All-Reduce of the two row-parallel projections per
layer differs. The ``exact`` variant (fixed-order float32 sum of float32
partials, no wire cast) is the reference for every metric:

- perplexity of the text, and its change vs exact (percent);
- per-token KL(exact || variant) in nats: mean and max over all scored tokens;
- top-1 agreement: fraction of tokens whose argmax equals exact's;
- max |logit - exact logit| over all tokens and the vocabulary;
- greedy agreement: greedy continuations (KV cache, decode steps of one token)
  of a few fixed prompts, counted in tokens until the first divergence;
- bytes on the wire per element of one All-Reduce (up- and downlink of the
  busiest link) and per link per token for the whole forward pass, from the
  traffic ledger.

Text: by default the English prose of CPython's ``pydoc_data.topics`` (the
paragraphs of the language reference that are neither code nor headings, in
sorted topic order); ``--text FILE`` for any UTF-8 file. ``--windows`` windows
of ``--window-len`` tokens, spread evenly over the text, are scored; the
prompts for greedy generation are the first ``--prompt-len`` tokens of the
first ``--prompts`` windows.
"""

from __future__ import annotations

import argparse
import csv
import json
import math
import os
import sys
import time
from collections.abc import Sequence

import numpy as np

from . import metrics

__all__ = [
    "DEFAULT_VARIANTS",
    "pydoc_prose",
    "token_windows",
    "wire_traffic",
    "run_study",
    "format_table",
    "write_results",
    "plot_results",
    "main",
]

DEFAULT_VARIANTS = (
    "exact",
    "ring",
    "nvls",
    "scin",
    "scin:int8",
    "scin:mxint8",
    "scin:int4",
    "scin:int8/bf16",
    "scin:bf16/int8",
    "two_shot:int8",
)
REFERENCE = "exact"


# ------------------------------------------------------------------------------ text


def pydoc_prose() -> str:
    """English prose shipped with CPython: ``pydoc_data.topics``, code and headings removed.

    Topics in sorted order; a paragraph (blank-line separated) is kept when none
    of its lines is indented (code, grammar) and it is not a heading or its
    underline; its lines are joined with single spaces.
    """
    from pydoc_data.topics import topics

    paragraphs = []
    for name in sorted(topics):
        for para in topics[name].split("\n\n"):
            lines = [ln for ln in para.split("\n") if ln.strip()]
            if not lines or any(ln[:1].isspace() for ln in lines):
                continue
            if len(lines) == 2 and set(lines[1].strip()) <= set("*=-~^"):
                continue  # heading + underline
            if all(set(ln.strip()) <= set("*=-~^") for ln in lines):
                continue
            text = " ".join(ln.strip() for ln in lines)
            if len(text.split()) >= 8:  # sentences, not labels
                paragraphs.append(text)
    return "\n\n".join(paragraphs)


def token_windows(ids: Sequence[int], n: int, length: int) -> np.ndarray:
    """``n`` windows of ``length`` tokens, evenly spread, non-overlapping: int32 ``[n, length]``.

    Window k starts at ``round(k * (len(ids) - length) / (n - 1))``.
    """
    ids = np.asarray(ids, dtype=np.int32)
    if n < 1 or length < 2:
        raise ValueError(f"need at least 1 window of at least 2 tokens, got {n} x {length}")
    if ids.shape[0] < n * length:
        raise ValueError(
            f"the text has {ids.shape[0]} tokens, fewer than {n} windows x {length} tokens; "
            "pass a longer --text or fewer/shorter windows (--windows, --window-len)"
        )
    starts = np.round(np.linspace(0, ids.shape[0] - length, n)).astype(int) if n > 1 else [0]
    return np.stack([ids[s : s + length] for s in starts])


# --------------------------------------------------------------------------- traffic


def wire_traffic(model, n_tokens: int) -> dict:
    """Bytes on the wire of ``model`` (a ``LoadedModel``) for a forward pass of ``n_tokens``.

    From the traffic ledger (``scinjax.models.model_traffic``: every All-Reduce
    of the forward found by abstract tracing). Returns bytes per element of one
    All-Reduce and bytes per token per link for the whole forward, on the
    busiest link (max over ranks) in each direction.
    """
    from .traffic import model_traffic

    keys = ("up_per_elem", "down_per_elem", "up_per_token", "down_per_token")
    if model.tp == 1:  # one rank: nothing on the wire
        return dict.fromkeys(keys, 0.0)
    report = model_traffic(
        model.config,
        tp=model.tp,
        collective=model.collective,
        tokens=n_tokens,
        wire_dtype=str(model.wire_dtype),
        compute_dtype=str(model.compute_dtype),
    )
    elements = sum(r.elements * r.calls for r in report.records)
    up, down = max(report.up), max(report.down)
    return dict(
        zip(keys, (up / elements, down / elements, up / n_tokens, down / n_tokens), strict=True)
    )


# ----------------------------------------------------------------------------- study


def _progress(total: int, enabled: bool):
    from tqdm.auto import tqdm

    return tqdm(total=total, disable=not enabled, file=sys.stderr, unit="step", dynamic_ncols=True)


def run_study(
    *,
    model: str | os.PathLike | None = None,
    loaded=None,
    tp: int = 8,
    variants: Sequence[str] = DEFAULT_VARIANTS,
    text: str | None = None,
    text_source: str | None = None,
    windows: int = 8,
    window_len: int = 256,
    batch: int = 4,
    prompts: int = 3,
    prompt_len: int = 16,
    gen_tokens: int = 16,
    wire_dtype: str = "bfloat16",
    progress: bool = True,
) -> dict:
    """Run every variant on the same tokens; return ``{"settings": ..., "rows": [...]}``.

    ``loaded``: a ``(config, weights, tokenizer)`` triple (skips loading ``model``).
    """
    import jax

    from scinjax import Collective

    from .api import build_model

    specs = list(dict.fromkeys(str(v).strip() for v in variants if str(v).strip()))
    for s in specs:
        Collective.parse(s)  # fail early on a bad spec, before anything is loaded
    if REFERENCE not in specs:
        specs.insert(0, REFERENCE)
    else:
        specs.remove(REFERENCE)
        specs.insert(0, REFERENCE)
    if prompts > windows:
        raise ValueError(f"--prompts ({prompts}) cannot exceed --windows ({windows})")
    if batch < 1:
        raise ValueError(f"--batch must be >= 1, got {batch}")

    t_start = time.perf_counter()
    if loaded is None:
        from .loaders import load_weights

        loaded = load_weights(model)
    config, weights, tok = loaded
    if prompt_len + gen_tokens > config.max_position or window_len > config.max_position:
        raise ValueError(f"windows/prompts longer than max_position {config.max_position}")
    if text is None:
        text, text_source = (
            pydoc_prose(),
            "pydoc_data.topics (CPython " + sys.version.split()[0] + ")",
        )
    ids = tok.encode(text)
    win = token_windows(ids, windows, window_len)
    prompt_ids = [win[k, :prompt_len] for k in range(prompts)]
    base = build_model(
        config, weights, tp=tp, collective=REFERENCE, wire_dtype=wire_dtype, tokenizer=tok
    )
    models = {
        s: base if s == REFERENCE else base.with_collective(s, wire_dtype=wire_dtype) for s in specs
    }
    # Stochastic rounding draws from a fixed key, the same for every window and prompt.
    keys = {s: jax.random.key(0) if m.collective.stochastic else None for s, m in models.items()}
    t_load = time.perf_counter() - t_start

    n_batches = math.ceil(windows / batch)
    acc = {
        s: {
            "tokens": 0,
            "nll_sum": 0.0,
            "kl_sum": 0.0,
            "kl_max": 0.0,
            "top1": 0,
            "dlogit": 0.0,
            "seconds": 0.0,
        }
        for s in specs
    }
    bar = _progress(len(specs) * (n_batches + prompts), progress)
    # Batch-major: one batch's exact logits are kept while every variant runs on it.
    for b in range(n_batches):
        chunk = win[b * batch : (b + 1) * batch]
        if chunk.shape[0] < batch:  # keep one shape (no recompile): pad with repeats
            pad = np.repeat(chunk[-1:], batch - chunk.shape[0], axis=0)
            real = chunk.shape[0]
            chunk = np.concatenate([chunk, pad])
        else:
            real = batch
        ref_logits = None
        ref_logp = None
        for s in specs:
            bar.set_description(f"{s:<15} windows {b * batch + 1}-{b * batch + real}")
            t0 = time.perf_counter()
            logits = np.asarray(models[s].forward(chunk, key=keys[s]))[:real]
            acc[s]["seconds"] += time.perf_counter() - t0
            if s == REFERENCE:
                ref_logits = logits
                ref_logp = [metrics.log_softmax(x[:-1]) for x in logits]
            a = acc[s]
            for w in range(real):
                m = metrics.compare_logits(
                    ref_logits[w, :-1], logits[w, :-1], chunk[w, 1:], ref_logp=ref_logp[w]
                )
                a["tokens"] += m["tokens"]
                a["nll_sum"] += m["nll_sum"]
                a["kl_sum"] += m["kl_sum"]
                a["kl_max"] = max(a["kl_max"], m["kl_max"])
                a["top1"] += m["top1_agree"]
                a["dlogit"] = max(a["dlogit"], m["max_abs_dlogit"])
            bar.update(1)

    generated: dict[str, list[list[int]]] = {}
    for s in specs:
        generated[s] = []
        for k, p in enumerate(prompt_ids):
            bar.set_description(f"{s:<15} greedy {k + 1}/{prompts}")
            t0 = time.perf_counter()
            generated[s].append(models[s].greedy(p, gen_tokens, key=keys[s]))
            acc[s]["seconds"] += time.perf_counter() - t0
            bar.update(1)
    bar.close()

    n_tok = int(win.shape[1])
    ref_ppl = metrics.perplexity_from_sum(acc[REFERENCE]["nll_sum"], acc[REFERENCE]["tokens"])
    rows = []
    for s in specs:
        a = acc[s]
        coll = Collective.parse(s)
        ppl = metrics.perplexity_from_sum(a["nll_sum"], a["tokens"])
        agree = [
            metrics.tokens_until_divergence(r, g)
            for r, g in zip(generated[REFERENCE], generated[s], strict=True)
        ]
        traffic = wire_traffic(models[s], n_tok)
        rows.append(
            {
                "variant": s,
                "algorithm": coll.algorithm,
                "uplink": None if coll.uplink is None else coll.uplink.name,
                "downlink": None if coll.downlink is None else coll.downlink.name,
                "ppl": ppl,
                "dppl_pct": 100.0 * (ppl / ref_ppl - 1.0),
                "kl_mean": a["kl_sum"] / a["tokens"],
                "kl_max": a["kl_max"],
                "top1": a["top1"] / a["tokens"],
                "max_dlogit": a["dlogit"],
                "gen_agree_mean": float(np.mean(agree)) if agree else float("nan"),
                "gen_agree_min": int(min(agree)) if agree else 0,
                "gen_tokens": gen_tokens,
                "up_bytes_per_elem": traffic["up_per_elem"],
                "down_bytes_per_elem": traffic["down_per_elem"],
                "wire_bytes_per_elem": traffic["up_per_elem"] + traffic["down_per_elem"],
                "up_bytes_per_token": traffic["up_per_token"],
                "down_bytes_per_token": traffic["down_per_token"],
                "seconds": a["seconds"],
            }
        )
    settings = {
        "model": config.name,
        "tp": tp,
        "wire_dtype": wire_dtype,
        "compute_dtype": str(base.compute_dtype),
        "text": text_source or "user text",
        "text_tokens": len(ids),
        "windows": windows,
        "window_len": window_len,
        "scored_tokens": acc[REFERENCE]["tokens"],
        "prompts": prompts,
        "prompt_len": prompt_len,
        "gen_tokens": gen_tokens,
        "load_seconds": t_load,
        "total_seconds": time.perf_counter() - t_start,
        "reference": REFERENCE,
    }
    return {"settings": settings, "rows": rows}


# ---------------------------------------------------------------------------- output

_COLUMNS = (
    # key, header, format
    ("variant", "variant", "{:<15}"),
    ("ppl", "ppl", "{:>8.4f}"),
    ("dppl_pct", "dppl%", "{:>+8.4f}"),
    ("kl_mean", "KL mean", "{:>9.2e}"),
    ("kl_max", "KL max", "{:>9.2e}"),
    ("top1", "top1", "{:>7.4f}"),
    ("max_dlogit", "max|dlog|", "{:>9.4f}"),
    ("gen_agree_mean", "gen", "{:>5.1f}"),
    ("up_bytes_per_elem", "B/el up", "{:>7.4f}"),
    ("down_bytes_per_elem", "B/el dn", "{:>7.4f}"),
    ("up_bytes_per_token", "B/tok/link up", "{:>13,.0f}"),
    ("down_bytes_per_token", "dn", "{:>9,.0f}"),
)


def format_table(result: dict) -> str:
    """The study as a fixed-width text table (one row per variant)."""
    s = result["settings"]
    head = [
        fmt.replace(".4f", "")
        .replace(".2e", "")
        .replace(".1f", "")
        .replace(",.0f", "")
        .replace("+", "")
        .format(h)
        for _, h, fmt in _COLUMNS
    ]
    lines = [
        f"scinjax study: {s['model']}, tp={s['tp']}, wire {s['wire_dtype']}, compute "
        f"{s['compute_dtype']}; {s['scored_tokens']} scored tokens ({s['windows']} windows x "
        f"{s['window_len']}) of {s['text']}; greedy: {s['prompts']} prompts x {s['gen_tokens']} "
        "tokens",
        " ".join(head),
    ]
    lines.append("-" * len(lines[-1]))
    for r in result["rows"]:
        lines.append(" ".join(fmt.format(r[k]) for k, _, fmt in _COLUMNS))
    lines.append(
        "KL in nats vs exact; gen = mean greedy tokens before the first divergence from exact "
        f"(of {s['gen_tokens']}); B/el = bytes per element of one All-Reduce on the busiest "
        "link; B/tok/link = bytes per token per link for the whole forward pass."
    )
    return "\n".join(lines)


def write_results(result: dict, out_dir: str | os.PathLike) -> dict[str, str]:
    """``study.json``, ``study.csv`` (and ``study.txt``, the table) under ``out_dir``."""
    os.makedirs(out_dir, exist_ok=True)
    paths = {k: os.path.join(out_dir, f"study.{k}") for k in ("json", "csv", "txt")}
    with open(paths["json"], "w", encoding="utf-8") as f:
        json.dump(result, f, indent=2)
    with open(paths["csv"], "w", newline="", encoding="utf-8") as f:
        w = csv.DictWriter(f, fieldnames=list(result["rows"][0]))
        w.writeheader()
        w.writerows(result["rows"])
    with open(paths["txt"], "w", encoding="utf-8") as f:
        f.write(format_table(result) + "\n")
    return paths


def plot_results(result: dict, path: str | os.PathLike) -> str:
    """PNG: accuracy loss against wire bytes per element (uplink + downlink, busiest link).

    Left: mean KL(exact || variant); right: top-1 disagreement with exact. Both on
    log scales; the exact reference (zero loss by definition) is left out.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = [r for r in result["rows"] if r["variant"] != REFERENCE]
    colors = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    fig, axes = plt.subplots(1, 2, figsize=(11, 4.2))
    panels = (
        (axes[0], lambda r: r["kl_mean"], "mean KL(exact || variant) [nats]"),
        (axes[1], lambda r: 100.0 * (1.0 - r["top1"]), "top-1 disagreement with exact [%]"),
    )
    for ax, value, label in panels:
        floor = None
        for i, r in enumerate(rows):
            x, y = r["wire_bytes_per_elem"], value(r)
            if y <= 0:  # identical to exact: pin to the bottom of the axis
                floor = floor or min([value(q) for q in rows if value(q) > 0] or [1e-6]) / 10
                y = floor
            ax.scatter([x], [y], s=30, color=colors[i % len(colors)], zorder=3)
            ax.annotate(r["variant"], (x, y), textcoords="offset points", xytext=(4, 3), fontsize=7)
        ax.set_yscale("log")
        ax.set_xlabel("wire bytes per element (uplink + downlink, busiest link)")
        ax.set_ylabel(label)
        ax.grid(alpha=0.3, which="both")
    s = result["settings"]
    fig.suptitle(
        f"{s['model']}, tp={s['tp']}, {s['scored_tokens']} tokens: accuracy loss vs bytes on "
        f"the wire (reference: exact float32 reduction)",
        fontsize=10,
    )
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return os.fspath(path)


# ------------------------------------------------------------------------------- CLI


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="scinjax study",
        description="Accuracy of in-network quantized All-Reduce on a real model (see "
        "docs/loaders_and_study.md).",
    )
    p.add_argument(
        "--model", default=None, help="smollm2-135m (default), a .gguf file or a HF folder"
    )
    p.add_argument("--tp", type=int, default=8, help="emulated tensor-parallel ranks (8)")
    p.add_argument(
        "--variants",
        nargs="+",
        default=list(DEFAULT_VARIANTS),
        metavar="SPEC",
        help="collectives ALGO[:UPLINK[/DOWNLINK]], space or comma separated "
        f"(default: {' '.join(DEFAULT_VARIANTS)}); exact is always run as the reference",
    )
    p.add_argument(
        "--text",
        default=None,
        metavar="FILE",
        help="UTF-8 text to evaluate on (default: English prose of CPython's pydoc_data.topics)",
    )
    p.add_argument("--windows", type=int, default=8, help="token windows scored (8)")
    p.add_argument("--window-len", type=int, default=256, help="tokens per window (256)")
    p.add_argument("--batch", type=int, default=4, help="windows per forward pass (4)")
    p.add_argument("--prompts", type=int, default=3, help="greedy-generation prompts (3)")
    p.add_argument("--prompt-len", type=int, default=16, help="tokens per prompt (16)")
    p.add_argument("--gen-tokens", type=int, default=16, help="greedy tokens per prompt (16)")
    p.add_argument("--wire-dtype", default="bfloat16", choices=("bfloat16", "float16", "float32"))
    p.add_argument("--out", default=os.path.join("results", "study"), help="output folder")
    p.add_argument("--no-plot", action="store_true", help="skip the PNG")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    return p


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    variants = [v for item in args.variants for v in item.split(",") if v.strip()]
    text = source = None
    if args.text is not None:
        if not os.path.isfile(args.text):
            print(f"scinjax study: --text {args.text!r}: no such file", file=sys.stderr)
            return 2
        with open(args.text, encoding="utf-8") as f:
            text = f.read()
        source = os.path.basename(args.text)
    try:
        result = run_study(
            model=args.model,
            tp=args.tp,
            variants=variants,
            text=text,
            text_source=source,
            windows=args.windows,
            window_len=args.window_len,
            batch=args.batch,
            prompts=args.prompts,
            prompt_len=args.prompt_len,
            gen_tokens=args.gen_tokens,
            wire_dtype=args.wire_dtype,
            progress=not args.quiet,
        )
    except (ValueError, FileNotFoundError) as e:
        print(f"scinjax study: {e}", file=sys.stderr)
        return 2
    print(format_table(result))
    paths = write_results(result, args.out)
    if not args.no_plot:
        paths["png"] = plot_results(result, os.path.join(args.out, "study.png"))
    print("wrote " + ", ".join(paths[k] for k in sorted(paths)))
    print(f"total {result['settings']['total_seconds']:.0f} s")
    return 0
