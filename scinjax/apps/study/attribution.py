"""Where the error comes from: per-call-site error of a variant's All-Reduces.

For one forward pass of the variant, every All-Reduce call (``attn_out`` and
``mlp_out`` of each layer) is compared with the exact rank-order float32 sum of
its *own* inputs, so the error a call adds is separated from the error its
inputs inherited from earlier calls. ``accumulated`` compares the call's output
with the exact model's output at the same site (added + inherited). For
``scin``/``two_shot`` the added error splits into the uplink stage and the
downlink stage (`models.llama.Reducer.probe_stats`).
"""

from __future__ import annotations

import dataclasses
import math
import os

import jax
import numpy as np

__all__ = ["attribute", "exact_sites", "plot_attribution"]


def _site_stats(model, tokens, key) -> dict:
    """{(layer, label): stats} of one probed forward of ``model`` (batched vmap only)."""
    from scinjax.models.llama import layer_runs, split_layer_params

    if model.mode != "vmap" or model.tp < 2:
        raise ValueError(
            f"attribution needs the batched emulation with tp >= 2 (mode 'vmap'), got "
            f"mode={model.mode!r}, tp={model.tp}"
        )
    reducer = dataclasses.replace(model.module.reducer, probe=True)
    module = model.module.clone(reducer=reducer)
    runs = layer_runs(reducer, model.config.num_layers)
    params = split_layer_params(model.params, runs)
    fn = jax.jit(lambda p, t, k: module.apply(p, t, k, mutable=["intermediates"])[1])
    inter = fn(params, tokens, key)["intermediates"]
    out = {}
    for i, (first, count) in enumerate(runs):
        scope = inter["layers" if len(runs) == 1 else f"layers_{i}"]
        for label, (stats,) in scope.items():
            host = jax.tree.map(np.asarray, stats)
            for j in range(count):
                out[(first + j, label)] = {k: v[j] for k, v in host.items()}
    return out


def _rel(sse: float, ss: float) -> float:
    return math.sqrt(sse / ss) if ss > 0 else float("nan")


def exact_sites(model, tokens) -> dict:
    """The exact model's probed call sites on ``tokens`` (reusable across variants)."""
    return _site_stats(model.with_collective("exact"), np.asarray(tokens, np.int32), None)


def attribute(model, tokens, *, key=None, exact=None) -> list[dict]:
    """Per-call-site error of ``model`` (a ``LoadedModel``) on token ids ``[B, T]``.

    Rows sorted by layer then call order: ``layer``, ``label``, ``collective``,
    ``rel_err`` (``||out - ref|| / ||ref||``, ref = exact sum of the same inputs),
    ``snr_db`` (``10 log10(||ref||^2 / ||out - ref||^2)``, inf when exact),
    ``rel_err_up`` / ``rel_err_down`` (stages, NaN where they do not separate) and
    ``rel_err_accumulated`` (against the exact model's output at that site).
    ``exact``: :func:`exact_sites` of the same tokens, if already computed.
    """
    tokens = np.asarray(tokens, dtype=np.int32)
    if tokens.ndim != 2:
        raise ValueError(f"tokens must be [B, T] ids, got shape {tokens.shape}")
    mine = _site_stats(model, tokens, key)
    exact = exact_sites(model, tokens) if exact is None else exact
    rows = []
    order = {"attn_out": 0, "mlp_out": 1}
    for layer, label in sorted(mine, key=lambda s: (s[0], order.get(s[1], 2), s[1])):
        st, ex = mine[(layer, label)], exact[(layer, label)]
        ss = float(st["ss_ref"])
        sse = float(st["sse"])
        drift = float(np.sum((st["out"].astype(np.float64) - ex["out"]) ** 2))
        ss_exact = float(np.sum(ex["out"].astype(np.float64) ** 2))
        rows.append(
            {
                "layer": int(layer),
                "label": label,
                "collective": str(model.module.reducer.pick(label, layer)),
                "rel_err": _rel(sse, ss),
                "snr_db": 10 * math.log10(ss / sse) if sse > 0 else float("inf"),
                "rel_err_up": _rel(float(st["sse_up"]), ss),
                "rel_err_down": _rel(float(st["sse_down"]), ss),
                "rel_err_accumulated": _rel(drift, ss_exact),
            }
        )
    return rows


def plot_attribution(rows_by_variant: dict[str, list[dict]], path: str | os.PathLike) -> str:
    """PNG, one column per variant: added vs accumulated relative error per layer (top) and
    the uplink / downlink stages of the added error (bottom); log y axes."""
    from matplotlib.figure import Figure
    from matplotlib.ticker import MaxNLocator

    from .plots import style_log_axis

    names = list(rows_by_variant)
    cols = min(len(names), 4)
    bands = -(-len(names) // cols)  # a band = two rows of panels per line of variants
    fig = Figure(figsize=(5.0 * cols, 6.4 * bands))
    axes = fig.subplots(2 * bands, cols, squeeze=False)
    for i in range(len(names), bands * cols):  # empty slots of the last band
        band, col = divmod(i, cols)
        axes[2 * band, col].set_visible(False)
        axes[2 * band + 1, col].set_visible(False)
    for i, name in enumerate(names):
        rows = rows_by_variant[name]
        band, col = divmod(i, cols)
        top, bottom = axes[2 * band, col], axes[2 * band + 1, col]
        for label, color in (("attn_out", "C0"), ("mlp_out", "C1")):
            rs = [r for r in rows if r["label"] == label]
            layers = [r["layer"] for r in rs]

            def series(key, rs=rs):
                return [r[key] if r[key] > 0 else np.nan for r in rs]

            top.plot(layers, series("rel_err"), "-o", ms=3, color=color, label=f"{label} added")
            top.plot(
                layers,
                series("rel_err_accumulated"),
                "--",
                color=color,
                label=f"{label} accumulated",
            )
            bottom.plot(
                layers, series("rel_err_up"), "-^", ms=3, color=color, label=f"{label} uplink stage"
            )
            bottom.plot(
                layers,
                series("rel_err_down"),
                ":v",
                ms=3,
                color=color,
                label=f"{label} downlink stage",
            )
        top.set_title(name, fontsize=10)
        for ax in (top, bottom):
            ys = [y for line in ax.get_lines() for y in line.get_ydata() if np.isfinite(y)]
            if ys:
                ax.set_yscale("log")
                style_log_axis(ax.yaxis)
            else:  # nothing to draw: exact everywhere, or stages that do not separate
                ax.text(
                    0.5,
                    0.5,
                    "no error / stages do not separate",
                    ha="center",
                    transform=ax.transAxes,
                    fontsize=9,
                )
            ax.grid(alpha=0.3, which="both")
        top.set_ylabel("relative error of the call's output")
        bottom.set_ylabel("relative error added, per stage")
        bottom.set_xlabel("layer")
        bottom.xaxis.set_major_locator(MaxNLocator(integer=True))
        for ax in (top, bottom):
            if any(np.isfinite(line.get_ydata()).any() for line in ax.get_lines()):
                ax.legend(fontsize=7)
    fig.suptitle(
        "Per-call error: added = vs the exact sum of the call's own inputs; accumulated = vs "
        "the exact model at that call",
        fontsize=10,
    )
    fig.tight_layout(rect=(0, 0, 1, 0.96))
    fig.savefig(path, dpi=110)
    return os.fspath(path)
