"""``scinjax sweep``: accuracy against bytes over a grid of formats, algorithms, policies and N.

Two parts, each a set of study runs (:func:`scinjax.apps.study.run_study`) on the
same model, text and windows, each variant against the exact reduction at the same N:

- the *format grid* at one N (default 8): every named format and the int family's
  axes one at a time around ``int8`` (bits 2..8, block sizes 8..256, scale dtypes,
  rounding modes) on SCIN's links, the algorithms (ring, nvls, scin, two-shot, the
  peer schemes) and a few selective-quantization policies;
- the *N sweep*: a few formats at N = 1, 2, 4, ..., 64. N may exceed the model's
  head count: the uneven split gives the first ranks one head each and the others a
  zero (padding) head slot, whose partial sum is exactly zero; MLP features still split
  over every rank, so every rank contributes to ``mlp_out``. N = 1 has no All-Reduce
  (every variant is the exact model).

Plots: KL (± 1 SE) against wire bytes per element with the Pareto front (no other
point has both fewer bytes and a lower KL), and KL against N per format.
"""

from __future__ import annotations

import dataclasses
import math
import os

from scinjax._progress import progress as progress_bar
from scinjax.apps._files import write_result_files
from scinjax.collectives import parse_collective_or_policy

__all__ = ["SweepGrid", "DEFAULT_GRID", "QUICK_GRID", "run_sweep", "pareto_front", "write_sweep"]


def _int_axes() -> tuple[tuple[str, str], ...]:
    """(family, format name) around int8 (bits 8, block 32, float16 scale, RNE)."""
    out = [("int bits", f"int{b}-b32-float16") for b in range(2, 9)]
    out += [("int block", f"int8-b{b}-float16") for b in (8, 16, 32, 64, 128, 256)]
    out += [("int scale", f"int8-b32-{s}") for s in ("float32", "float16", "bfloat16", "e8m0")]
    out += [("int rounding", f"int8-b32-float16-{r}") for r in ("nearest_away", "stochastic")]
    return tuple(out)


_NAMED = (
    "int8",
    "mxint8",
    "int8-b128-f32",
    "int4",
    "mxfp8",
    "mxfp8-rceil",
    "mxfp8-e5m2",
    "mxfp6-e3m2",
    "mxfp6-e2m3",
    "mxfp4",
    "nvfp4",
    "fp8-b256-f32",
)
_ALGORITHMS = (
    "ring",
    "nvls",
    "scin",
    "two_shot:int8",
    "scin:int8+accumulate=bfloat16",
    "scin:int8+order=pairwise",
    "quickreduce-q8",
    "quickreduce-q6",
    "quickreduce-q4",
    "flashinfer-fp8",
    "trtllm-fp8",
)
_POLICIES = (
    "scin:int8@attn_out@else=scin",
    "scin:int8@mlp_out@else=scin",
    "scin:int8@layers=2..27@else=scin",
)


@dataclasses.dataclass(frozen=True, kw_only=True)
class SweepGrid:
    """What a sweep runs. ``variants``: (family, spec) pairs at N = ``tp``; ``n_values`` x
    ``n_variants``: the N sweep."""

    variants: tuple[tuple[str, str], ...]
    tp: int = 8
    n_values: tuple[int, ...] = (1, 2, 4, 8, 16, 32, 64)
    n_variants: tuple[str, ...] = ("scin", "scin:int8", "scin:mxfp4")

    def __post_init__(self):
        if not self.variants:
            raise ValueError("a sweep needs at least one variant")
        if any(isinstance(n, bool) or not isinstance(n, int) or n < 1 for n in self.n_values):
            raise ValueError(f"n_values must be ints >= 1, got {self.n_values}")


def _grid(named=_NAMED, algorithms=_ALGORITHMS, policies=_POLICIES) -> tuple:
    seen, out = set(), []
    rows = [("named format", f"scin:{f}") for f in named]
    rows += [(fam, f"scin:{f}") for fam, f in _int_axes()]
    rows += [("algorithm", a) for a in algorithms] + [("policy", p) for p in policies]
    for fam, spec in rows:
        if spec not in seen:
            seen.add(spec)
            out.append((fam, spec))
    return tuple(out)


DEFAULT_GRID = SweepGrid(variants=_grid())
QUICK_GRID = SweepGrid(
    variants=_grid(
        named=("int8", "mxfp8", "mxfp4", "nvfp4"),
        algorithms=("ring", "scin"),
        policies=("scin:int8@mlp_out@else=scin",),
    )[:8],
    n_values=(1, 2, 4, 8),
    n_variants=("scin", "scin:int8"),
)


def pareto_front(points: list[tuple[float, float]]) -> list[int]:
    """Indices of the points no other point beats on both coordinates (lower is better),
    ordered by the first coordinate."""
    order = sorted(range(len(points)), key=lambda i: (points[i][0], points[i][1]))
    front, best = [], math.inf
    for i in order:
        if points[i][1] < best:
            front.append(i)
            best = points[i][1]
    return front


def run_sweep(grid: SweepGrid = DEFAULT_GRID, *, progress: bool = True, **study) -> dict:
    """Run the grid; ``study`` keywords go to ``run_study`` (model/loaded, corpus, ctx,
    tokens, batch, ...). Returns ``{"settings", "format_rows", "n_rows"}``."""
    from scinjax.apps.study import run_study
    from scinjax.models import load_weights

    study.setdefault("prompts", 0)
    if study.get("loaded") is None:  # one load for every study of the grid
        dtype = study.get("weights_dtype", "float32")
        study["loaded"] = load_weights(study.pop("model", None), dtype=dtype)
    study.pop("model", None)
    fams = {}
    for fam, spec in grid.variants:  # a spec in several families keeps its first
        fams.setdefault(str(parse_collective_or_policy(spec)), fam)
    bar = progress_bar(1 + len(grid.n_values), desc="sweep", unit="study", enabled=progress)
    bar.set_description(f"format grid at N={grid.tp} ({len(grid.variants)} variants)")
    res = run_study(tp=grid.tp, variants=[s for _, s in grid.variants], progress=False, **study)
    format_rows = [{"family": fams.get(r["variant"], "reference"), **r} for r in res["rows"]]
    bar.update(1)
    n_rows = []
    for n in grid.n_values:
        bar.set_description(f"N={n}")
        r = run_study(tp=n, variants=list(grid.n_variants), progress=False, **study)
        n_rows += [{"n_ranks": n, **row} for row in r["rows"]]
        bar.update(1)
    bar.close()
    settings = dict(
        res["settings"],
        grid_tp=grid.tp,
        n_values=list(grid.n_values),
        n_variants=list(grid.n_variants),
    )
    return {
        "settings": settings,
        "versions": res["versions"],
        "format_rows": format_rows,
        "n_rows": n_rows,
    }


def _table(rows: list[dict], first: str) -> str:
    head = (
        f"{first:<14} {'variant':<38} {'B/el':>7} {'KL mean ± SE':>22} {'top-1':>8} "
        f"{'PPL ratio':>9}"
    )
    lines = [head, "-" * len(head)]
    for r in rows:
        lead = str(r.get(first, r.get("family", "")))
        kl = f"{r['kl_mean']:.2e} ± {r['kl_mean_se']:.1e}"
        name = r["variant"] + ("" if r.get("seed") is None else f" s{r['seed']}")
        lines.append(
            f"{lead:<14} {name:<38} {r['wire_bytes_per_elem']:>7.4f} {kl:>22} "
            f"{r['top1']:>8.4f} {r['ppl_ratio']:>9.5f}"
        )
    return "\n".join(lines)


def format_sweep(result: dict) -> str:
    s = result["settings"]
    fr = result["format_rows"]
    front = {fr[i]["variant"] for i in _front_indices(fr)}
    marked = [dict(r, family=("* " if r["variant"] in front else "  ") + r["family"]) for r in fr]
    return "\n".join(
        [
            f"scinjax sweep: {s['model']}, {s['scored_tokens']:,} scored tokens per variant "
            f"({s['windows']} windows of {s['ctx']}) of {s['text']}",
            f"format grid at N={s['grid_tp']} (* = on the Pareto front of bytes vs KL):",
            _table(marked, "family"),
            "",
            "KL against N:",
            _table(result["n_rows"], "n_ranks"),
        ]
    )


def _front_indices(rows: list[dict]) -> list[int]:
    cand = [
        i for i, r in enumerate(rows) if r["wire_bytes_per_elem"] > 0 and r["variant"] != "exact"
    ]
    pts = [(rows[i]["wire_bytes_per_elem"], rows[i]["kl_mean"]) for i in cand]
    return [cand[j] for j in pareto_front(pts)]


def _label_points(ax, points) -> None:
    """Annotate (text, x, y) points, moving a label down while it would overlap one already
    placed (positions compared in axes fractions, so it works on log axes)."""
    ax.figure.canvas.draw()  # fixes the axes limits and transforms
    to_axes = ax.transData + ax.transAxes.inverted()
    placed: list[tuple[float, float]] = []
    for text, x, y in points:
        fx, fy = to_axes.transform((x, y))
        dy = 0.02
        while any(abs(fx - px) < 0.16 and abs(fy + dy - py) < 0.035 for px, py in placed):
            dy -= 0.035
        placed.append((fx, fy + dy))
        ax.annotate(
            text,
            (x, y),
            xytext=(fx + 0.008, fy + dy),
            textcoords="axes fraction",
            fontsize=7,
            arrowprops={"arrowstyle": "-", "lw": 0.4, "color": "0.5"},
        )


def plot_pareto(result: dict, path) -> str:
    """KL ± SE vs wire bytes per element, families coloured, Pareto front drawn and labelled."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure
    from matplotlib.ticker import FixedLocator, FuncFormatter, NullLocator

    from scinjax.apps.study.plots import style_log_axis

    rows = [r for r in result["format_rows"] if r["variant"] != "exact" and r["kl_mean"] > 0]
    fig = Figure(figsize=(11, 6.5))
    FigureCanvasAgg(fig)  # a canvas of its own: labels are placed from rendered positions
    ax = fig.subplots()
    families = list(dict.fromkeys(r["family"] for r in rows))
    for k, fam in enumerate(families):
        rs = [r for r in rows if r["family"] == fam]
        ax.errorbar(
            [r["wire_bytes_per_elem"] for r in rs],
            [r["kl_mean"] for r in rs],
            yerr=[
                [min(r["kl_mean_se"], 0.9 * r["kl_mean"]) for r in rs],
                [r["kl_mean_se"] for r in rs],
            ],
            fmt="osD^v<>ph*"[k % 10],
            color=f"C{k % 10}",
            ms=5,
            capsize=2,
            ls="none",
            label=fam,
            alpha=0.85,
        )
    front = [rows[i] for i in _front_indices(rows)]
    ax.plot(
        [r["wire_bytes_per_elem"] for r in front],
        [r["kl_mean"] for r in front],
        "-",
        color="black",
        lw=1,
        zorder=1,
        label="Pareto front",
    )
    ax.set_xscale("log", base=2)
    ax.set_yscale("log")
    style_log_axis(ax.yaxis)
    xs = [r["wire_bytes_per_elem"] for r in rows]
    ticks = [
        t
        for t in (0.25, 0.5, 0.625, 0.75, 1, 1.25, 1.5, 2, 3, 4, 8)
        if min(xs) / 1.1 <= t <= max(xs) * 1.1
    ]
    ax.xaxis.set_major_locator(FixedLocator(ticks))
    ax.xaxis.set_minor_locator(NullLocator())
    ax.xaxis.set_major_formatter(FuncFormatter(lambda v, _p: f"{v:g}"))
    _label_points(ax, [(r["variant"], r["wire_bytes_per_elem"], r["kl_mean"]) for r in front])
    ax.set_xlabel("wire bytes per element, uplink + downlink (busiest link; log2 scale)")
    ax.set_ylabel("mean KL(exact || variant) [nats/token], ±1 SE (log scale)")
    ax.grid(alpha=0.3, which="both")
    ax.legend(fontsize=8, loc="upper right")
    s = result["settings"]
    ax.set_title(
        f"{s['model']}, N={s['grid_tp']}, {s['scored_tokens']:,} tokens: accuracy vs "
        "bytes (labelled: the Pareto front)",
        fontsize=10,
    )
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    return os.fspath(path)


def plot_n(result: dict, path) -> str:
    """KL ± SE against N (log2 x) for each format of the N sweep; N=1 is exact (KL 0)."""
    from matplotlib.figure import Figure
    from matplotlib.ticker import FixedLocator, FuncFormatter, NullLocator

    from scinjax.apps.study.plots import style_log_axis

    rows = [r for r in result["n_rows"] if r["variant"] != "exact"]
    fig = Figure(figsize=(8, 5))
    ax = fig.subplots()
    for k, name in enumerate(dict.fromkeys(r["variant"] for r in rows)):
        rs = [r for r in rows if r["variant"] == name and r["kl_mean"] > 0]
        ax.errorbar(
            [r["n_ranks"] for r in rs],
            [r["kl_mean"] for r in rs],
            yerr=[
                [min(r["kl_mean_se"], 0.9 * r["kl_mean"]) for r in rs],
                [r["kl_mean_se"] for r in rs],
            ],
            fmt="-" + "osD^v"[k % 5],
            color=f"C{k}",
            capsize=3,
            label=name,
        )
    ns = sorted({r["n_ranks"] for r in rows if r["n_ranks"] > 1})
    ax.set_xscale("log", base=2)
    ax.xaxis.set_major_locator(FixedLocator(ns))
    ax.xaxis.set_minor_locator(NullLocator())
    ax.xaxis.set_major_formatter(FuncFormatter(lambda v, _p: f"{v:g}"))
    ax.set_yscale("log")
    style_log_axis(ax.yaxis)
    ax.set_xlabel("N (emulated tensor-parallel ranks; log2 scale)")
    ax.set_ylabel("mean KL(exact || variant) [nats/token], ±1 SE")
    ax.grid(alpha=0.3, which="both")
    ax.legend(fontsize=9)
    ax.set_title(
        f"{result['settings']['model']}: KL against N (N = 1 has no All-Reduce)", fontsize=10
    )
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    return os.fspath(path)


def write_sweep(result: dict, out_dir, *, plots: bool = True) -> dict[str, str]:
    rows = [dict(r, part="formats") for r in result["format_rows"]]
    rows += [dict(r, part="n_sweep") for r in result["n_rows"]]
    p = write_result_files(
        out_dir,
        "sweep",
        doc=result,
        rows=rows,
        text=format_sweep(result),
        indent=1,
        default=lambda o: None if o is None else str(o),
    )
    if plots:
        p["pareto_png"] = plot_pareto(result, os.path.join(out_dir, "sweep_pareto.png"))
        p["n_png"] = plot_n(result, os.path.join(out_dir, "sweep_n.png"))
    return p
