"""Study plots, drawn on ``matplotlib.figure.Figure`` (never touching the user's backend)."""

from __future__ import annotations

import os

import numpy as np

from .variants import REFERENCE

__all__ = ["plot_results", "style_log_axis"]

_MARKERS = "osD^v<>pPhX*"


def style_log_axis(axis, *, percent: bool = False) -> None:
    """Plain decimal tick labels on a log axis (``0.01``, ``1``, ``10 %``; no ``4×10⁰``)."""
    from matplotlib.ticker import FuncFormatter, LogLocator, NullFormatter

    def fmt(v, _pos):
        if v <= 0:
            return ""
        return f"{v:g}" + (" %" if percent else "")

    # 1-2-5 steps: an axis spanning less than a decade still gets labelled ticks
    axis.set_major_locator(LogLocator(base=10, subs=(1.0, 2.0, 5.0), numticks=12))
    axis.set_major_formatter(FuncFormatter(fmt))
    axis.set_minor_formatter(NullFormatter())


def plot_results(result: dict, path: str | os.PathLike) -> str:
    """PNG: accuracy loss against wire bytes per element (uplink + downlink, busiest link).

    Left: mean KL(exact || variant) ± 1 SE; right: top-1 disagreement with exact ± 1 SE
    in percent. Both y axes log-scaled; x is bytes per element (log2 axis, plain
    labels). The exact reference (zero loss by definition) is left out; a run with zero
    loss is drawn at the bottom edge with an open marker. One legend entry per variant.
    """
    from matplotlib.figure import Figure
    from matplotlib.ticker import FixedLocator, FuncFormatter, NullLocator

    rows = [r for r in result["rows"] if r["variant"] != REFERENCE]
    fig = Figure(figsize=(12, 4.8))
    axes = fig.subplots(1, 2)
    panels = (
        (axes[0], "kl_mean", "kl_mean_se", 1.0, "mean KL(exact || variant) [nats/token]"),
        (axes[1], "top1", "top1_se", 100.0, "top-1 disagreement with exact [%]"),
    )
    cmap = [f"C{i}" for i in range(10)]
    xs = sorted({r["wire_bytes_per_elem"] for r in rows if r["wire_bytes_per_elem"] > 0})
    for ax, key, se_key, scale, label in panels:

        def value(r, key=key, scale=scale):
            v = r[key]
            return scale * (1.0 - v) if key == "top1" else scale * v

        positive = [value(r) for r in rows if value(r) > 0]
        floor = (min(positive) / 10) if positive else 1e-6
        for i, r in enumerate(rows):
            x, y = r["wire_bytes_per_elem"], value(r)
            err = scale * r[se_key] if np.isfinite(r[se_key]) else 0.0
            color, marker = cmap[i % len(cmap)], _MARKERS[i % len(_MARKERS)]
            name = r["variant"] + ("" if r.get("seed") is None else f" (seed {r['seed']})")
            if y > 0:
                lo = min(err, y - floor * 1.0001)  # keep the bar on the log axis
                ax.errorbar(
                    [x],
                    [y],
                    yerr=[[lo], [err]],
                    fmt=marker,
                    color=color,
                    ms=6,
                    capsize=3,
                    label=name,
                    zorder=3,
                )
            else:
                ax.plot(
                    [x],
                    [floor],
                    marker=marker,
                    mfc="none",
                    color=color,
                    ms=7,
                    ls="none",
                    label=name + " (zero)",
                    zorder=3,
                )
        ax.set_yscale("log")
        style_log_axis(ax.yaxis, percent=key == "top1")
        if xs:
            ax.set_xscale("log", base=2)
            nice = (0.25, 0.5, 0.75, 1, 1.5, 2, 3, 4, 6, 8, 12, 16)  # data ticks would collide
            ax.xaxis.set_major_locator(
                FixedLocator([t for t in nice if min(xs) / 1.25 <= t <= max(xs) * 1.25])
            )
            ax.xaxis.set_minor_locator(NullLocator())
            ax.xaxis.set_major_formatter(FuncFormatter(lambda v, _p: f"{v:g}"))
            ax.set_xlim(min(xs) / 1.25, max(xs) * 1.25)
        ax.set_xlabel("wire bytes / element, up + down (busiest link)")
        ax.set_ylabel(label)
        ax.grid(alpha=0.3, which="both")
    handles, labels = axes[0].get_legend_handles_labels()
    fig.legend(
        handles, labels, loc="center left", bbox_to_anchor=(0.80, 0.5), fontsize=8, frameon=False
    )
    s = result["settings"]
    fig.suptitle(
        f"{s['model']}, tp={s['tp']}, {s['scored_tokens']:,} scored tokens: accuracy loss vs "
        "bytes on the wire (reference: exact float32 reduction; bars: ±1 SE)",
        fontsize=10,
    )
    fig.tight_layout(rect=(0, 0, 0.80, 0.95))
    fig.savefig(path, dpi=120)
    return os.fspath(path)
