"""The ``scinjax e2e`` app: LLaMA-2 TTFT / TPOT per All-Reduce algorithm at tensor parallelism TP.

    scinjax e2e [--models llama2-7b,llama2-13b,llama2-70b] [--fabric h200-nvswitch-8]
                [--prefill 128..8192] [--decode-batch 1..64] [--context 2048] [--overlap]

Step time = compute (a per-op roofline of one rank, from the model config) +
communication (the traffic ledger of the model forward, :func:`scinjax.models.model_traffic`,
timed by :func:`scinjax.timing.report_time`). TTFT = one prefill step of ``L`` prompt tokens
(batch 1 by default); TPOT = one decode step of ``B`` sequences against ``context`` cached
tokens. ``--overlap`` hides each layer's communication under its compute (an ideal upper
bound on overlap); without it the two add up.
"""

from __future__ import annotations

import dataclasses
import json
import math
import sys
from pathlib import Path

from scinjax.apps.timing import SOFTWARE, with_scin_efficiency
from scinjax.collectives import Collective
from scinjax.models import model_traffic, resolve_config
from scinjax.timing import FabricProfile, get_profile, load_published, report_time
from scinjax.traffic import TrafficReport, collective_record

__all__ = [
    "ALGORITHMS",
    "Compute",
    "StepTime",
    "compute_time",
    "report",
    "retarget",
    "run",
    "speedups",
    "step_time",
]

ALGORITHMS = ("ring", "one_shot", "two_shot", "nvls", "scin", "scin:int8")
_BF16 = 2  # bytes per weight / activation / cache element


@dataclasses.dataclass(frozen=True, kw_only=True)
class Compute:
    """Roofline compute time of one step on one rank, seconds.

    ``layer``: one decoder layer; ``head``: final norm + LM head (last token per sequence);
    ``flops``/``bytes``: totals of the whole step (all layers + head) on one rank.
    """

    layer: float
    head: float
    layers: int
    flops: float
    bytes: float

    @property
    def total(self) -> float:
        return self.layers * self.layer + self.head


@dataclasses.dataclass(frozen=True, kw_only=True)
class StepTime:
    """One step (prefill or decode), seconds: ``total`` = compute and communication,
    added (no overlap) or overlapped layer by layer."""

    compute: float
    comm: float
    total: float
    comm_calls: int
    comm_bytes_max_link: int


def _op(flops: float, nbytes: float, p: FabricProfile) -> float:
    """Roofline of one kernel: the slower of its FLOPs and its HBM bytes."""
    return max(flops / (p.peak_flops * p.flops_efficiency), nbytes / (p.hbm_bw * p.hbm_efficiency))


def _matmul(m: int, k: int, n: int, p: FabricProfile) -> tuple[float, float, float]:
    """[m, k] @ [k, n] in bf16: (seconds, flops, bytes) -- weights, input and output."""
    flops = 2.0 * m * k * n
    nbytes = _BF16 * (k * n + m * k + m * n)
    return _op(flops, nbytes, p), flops, nbytes


def compute_time(
    config, *, tp: int, tokens: int, batch: int, context: int, profile: FabricProfile | str
) -> Compute:
    """Roofline time of one forward step of ``batch`` sequences x ``tokens`` new tokens on
    one of ``tp`` ranks, attending to ``context`` tokens (``context`` = ``tokens`` for a
    prefill, cached length for decode). Megatron split: heads and MLP features over ranks
    (the busiest rank, ``ceil``), weights and KV cache in bf16, FlashAttention-style
    attention (Q, K, V, O read/written once, KV cache read once per step).
    """
    p = get_profile(profile)
    if p.peak_flops is None or p.hbm_bw is None:
        raise ValueError(f"fabric {p.name!r} has no GPU compute model (peak_flops/hbm_bw)")
    for name, v in (("tp", tp), ("tokens", tokens), ("batch", batch), ("context", context)):
        if isinstance(v, bool) or not isinstance(v, int) or v < 1:
            raise ValueError(f"{name} must be an int >= 1, got {v!r}")
    if context < tokens:
        raise ValueError(f"context={context} must be >= tokens={tokens} (new tokens are cached)")
    d, f, hd = config.hidden_size, config.intermediate_size, config.head_dim
    hq = math.ceil(config.num_heads / tp)
    hkv = max(1, math.ceil(config.num_kv_heads / tp))
    ff = math.ceil(f / tp)
    m = batch * tokens  # rows of every activation matmul
    parts = [
        _matmul(m, d, (hq + 2 * hkv) * hd, p),  # Q, K, V projections
        _matmul(m, hq * hd, d, p),  # attention output (row-parallel -> All-Reduce)
        _matmul(m, d, 2 * ff, p),  # gate + up
        _matmul(m, ff, d, p),  # down (row-parallel -> All-Reduce)
    ]
    # attention: each new token attends to its causal prefix (prefill) or to the cache
    pairs = batch * (tokens * (context - tokens) + tokens * (tokens + 1) / 2)
    att_flops = 4.0 * hq * hd * pairs  # QK^T and PV, 2 FLOPs per multiply-add
    att_bytes = _BF16 * (
        m * 2 * hq * hd  # read Q, write O
        + m * 2 * hkv * hd  # write the new K, V into the cache
        + batch * context * 2 * hkv * hd  # read the whole K, V cache once
    )
    parts.append((_op(att_flops, att_bytes, p), att_flops, att_bytes))
    # element-wise: 2 RMSNorms (read + write D), 2 residual adds (2 reads + 1 write of D),
    # SwiGLU (read 2 Ff, write Ff), RoPE on Q and K (read + write)
    ew_bytes = _BF16 * m * (2 * 2 * d + 2 * 3 * d + 3 * ff + 2 * (hq + hkv) * hd)
    parts.append((_op(0.0, ew_bytes, p), 0.0, ew_bytes))
    layer = sum(t for t, _, _ in parts)
    head_mm = _matmul(batch, d, math.ceil(config.vocab_size / tp), p)
    norm_bytes = _BF16 * batch * 2 * d
    head = head_mm[0] + _op(0.0, norm_bytes, p)
    layers = config.num_layers
    return Compute(
        layer=layer,
        head=head,
        layers=layers,
        flops=layers * sum(fl for _, fl, _ in parts) + head_mm[1],
        bytes=layers * sum(b for _, _, b in parts) + head_mm[2] + norm_bytes,
    )


def retarget(report: TrafficReport, collective: str | Collective) -> TrafficReport:
    """The same All-Reduce calls (shapes, dtypes, labels, multiplicities) counted for
    another collective: exactly what tracing the model again with ``collective`` gives,
    since the ledger depends only on those and the collective."""
    coll = Collective.parse(collective) if isinstance(collective, str) else collective
    return TrafficReport(
        tuple(
            collective_record(
                coll,
                n_ranks=r.n_ranks,
                shape=r.shape,
                dtype=r.dtype,
                label=r.label,
                calls=r.calls,
            )
            for r in report.records
        )
    )


def step_time(
    compute: Compute, report: TrafficReport, profile: FabricProfile | str, *, overlap: bool
) -> StepTime:
    """Combine roofline compute and ledger communication of one step.

    ``overlap=False``: compute + communication. ``overlap=True``: each layer takes
    ``max(layer compute, communication / layers)`` (communication spread evenly over the
    layers and hidden under their compute as far as it fits), plus the head.
    """
    comm = report_time(report, profile)
    if overlap:
        total = compute.layers * max(compute.layer, comm / compute.layers) + compute.head
    else:
        total = compute.total + comm
    return StepTime(
        compute=compute.total,
        comm=comm,
        total=total,
        comm_calls=report.calls,
        comm_bytes_max_link=report.max_link_bytes,
    )


def _traffic(config, *, tp: int, collective: str, tokens: int, batch: int) -> TrafficReport:
    if tokens > config.max_position:  # shapes only: the ledger needs no positions
        config = config.replace(max_position=tokens)
    return model_traffic(config, tp=tp, collective=collective, tokens=tokens, batch=batch)


def run(
    models=("llama2-7b", "llama2-13b", "llama2-70b"),
    *,
    tp: int = 8,
    profile: FabricProfile | str = "h200-nvswitch-8",
    prefill=(128, 256, 512, 1024, 2048, 4096, 8192),
    decode_batches=(1, 2, 4, 8, 16, 32, 64),
    context: int = 2048,
    prefill_batch: int = 1,
    algorithms=ALGORITHMS,
    overlap: bool = False,
    traffic_fn=None,
) -> dict:
    """TTFT and TPOT (seconds) per model, point and algorithm, and the speedups.

    ``traffic_fn(config, tp=, collective=, tokens=, batch=) -> TrafficReport`` defaults to
    :func:`scinjax.models.model_traffic`; it is traced once per model and point (with the
    first algorithm) and :func:`retarget`-ed to the others.
    """
    p = get_profile(profile)
    traffic_fn = traffic_fn or _traffic
    algorithms = tuple(algorithms)
    out = {"models": {}}
    for name in models:
        cfg = resolve_config(name)  # preset, GGUF/HF path or JSON (no weights read)
        res = {"ttft": {}, "tpot": {}}
        points = [("ttft", n, prefill_batch, n, n) for n in prefill]
        points += [("tpot", b, b, 1, context + 1) for b in decode_batches]
        for phase, key, batch, tokens, ctx in points:
            comp = compute_time(cfg, tp=tp, tokens=tokens, batch=batch, context=ctx, profile=p)
            traced = traffic_fn(cfg, tp=tp, collective=algorithms[0], tokens=tokens, batch=batch)
            row = {}
            for alg in algorithms:
                rep = traced if alg == algorithms[0] else retarget(traced, alg)
                row[alg] = dataclasses.asdict(step_time(comp, rep, p, overlap=overlap))
            res[phase][key] = row
        out["models"][name] = res
    out["speedups"] = speedups(out, algorithms)
    return out


def speedups(result: dict, algorithms) -> dict:
    """Per model and phase: speedup of scin and scin:int8 over nvls and over the best
    software algorithm (min of ring/one_shot/two_shot present) at every point, and the
    largest ("up to") with where it occurs."""
    sw = [a for a in SOFTWARE if a in algorithms]
    out = {}
    for name, res in result["models"].items():
        for phase in ("ttft", "tpot"):
            for alg in (a for a in ("scin", "scin:int8") if a in algorithms):
                for base in ("nvls", "software"):
                    if (base == "nvls" and "nvls" not in algorithms) or (
                        base == "software" and not sw
                    ):
                        continue
                    per = {}
                    for key, row in res[phase].items():
                        b = (
                            row["nvls"]["total"]
                            if base == "nvls"
                            else min(row[a]["total"] for a in sw)
                        )
                        per[key] = b / row[alg]["total"]
                    best = max(per, key=per.get)
                    out[f"{name} {phase} {alg} vs {base}"] = {
                        "per_point": per,
                        "max": per[best],
                        "max_at": best,
                    }
    return out


def _print(result: dict, algorithms, p: FabricProfile, args) -> None:
    mode = "CUDA graphs" if p.cuda_graphs else "eager"
    ov = "overlapped (ideal)" if args.overlap else "not overlapped"
    print(
        f"fabric {p.name} ({mode}), TP={args.tp}, compute/communication {ov}; "
        f"decode context {args.context}, prefill batch {args.prefill_batch}"
    )
    print(
        f"roofline: {p.peak_flops / 1e12:.0f} TFLOP/s x {p.flops_efficiency}, "
        f"HBM {p.hbm_bw / 1e12:.2f} TB/s x {p.hbm_efficiency}\n"
    )
    for name, res in result["models"].items():
        for phase, what, unit in (("ttft", "prompt", "ms"), ("tpot", "batch", "ms")):
            head = (
                f"{name} {phase.upper()} ({unit})  {what:>6}"
                + "".join(f"{a:>11}" for a in algorithms)
                + f"{'comm% nvls':>12}"
            )
            print(head + "\n" + "-" * len(head))
            for key, row in res[phase].items():
                frac = row["nvls"]["comm"] / row["nvls"]["total"] if "nvls" in row else 0.0
                print(
                    f"{'':<{len(name) + len(phase) + len(unit) + 5}}{key:>6}"
                    + "".join(f"{row[a]['total'] * 1e3:>11.3f}" for a in algorithms)
                    + f"{frac:>11.0%}"
                )
            print()
    paper = load_published()["scin_paper"]
    pub = {
        ("ttft", "software"): paper["ttft_speedup_vs_software"],
        ("tpot", "software"): paper["tpot_speedup_vs_software"],
        ("ttft", "nvls"): paper["ttft_speedup_vs_nvls"],
        ("tpot", "nvls"): paper["tpot_speedup_vs_nvls"],
    }
    print("speedups, largest over the grid (software = best of ring/one_shot/two_shot)")
    head = f"{'model phase algorithm vs baseline':<42}{'up to':>8}  {'at':>6}  published (up to)"
    print(head + "\n" + "-" * len(head))
    for key, v in result["speedups"].items():
        _, phase, _, _, base = key.split()
        print(f"{key:<42}{v['max']:>7.2f}x  {v['max_at']:>6}  {pub[(phase, base)]}x")


def _plot(path: Path, result: dict) -> None:
    """PNG of the speedups (rows: over NVLS, over software; columns: TTFT, TPOT).

    Colour = model, line style = scin (solid) or scin:int8 (dashed); one legend below the
    panels, so that it never covers the published "up to" line (dotted).
    """
    from matplotlib.figure import Figure  # no pyplot: the caller's backend stays as it is
    from matplotlib.lines import Line2D

    paper = load_published()["scin_paper"]
    fig = Figure(figsize=(12, 8.6))
    axes = fig.subplots(2, 2, sharex="col")
    names = list(result["models"])
    colors = {name: f"C{i}" for i, name in enumerate(names)}
    styles = {}
    for col, (phase, xlabel) in enumerate((("ttft", "prompt tokens"), ("tpot", "decode batch"))):
        for row, base in enumerate(("nvls", "software")):
            ax = axes[row][col]
            values = []
            for key, v in result["speedups"].items():
                name, ph, alg, _, b = key.split()
                if (ph, b) != (phase, base):
                    continue
                xs = [int(x) for x in v["per_point"]]
                ys = list(v["per_point"].values())
                values += ys
                styles.setdefault(alg, "-" if alg == "scin" else "--")
                ax.plot(xs, ys, styles[alg], marker=".", color=colors[name])
            ax.set_xscale("log", base=2)
            ax.set_xticks(xs, [str(x) for x in xs])
            ax.set_xticks([], minor=True)
            published = paper[f"{phase}_speedup_vs_{base}"]
            ax.axhline(published, color="k", ls=":")
            ax.annotate(
                f"published (up to) {published:.2f}x",
                (0.01, published),
                xycoords=("axes fraction", "data"),
                xytext=(0, 3),
                textcoords="offset points",
                fontsize=8,
            )
            top = max(values + [published])
            ax.set_ylim(top=top + 0.08 * (top - min(values + [1.0])))
            ax.set_ylabel(f"{phase.upper()} speedup vs {base}")
            ax.tick_params(labelbottom=True)  # sharex hides the top row's tick labels
            ax.set_xlabel(xlabel)
            ax.grid(True, which="major", alpha=0.3)
    handles = [Line2D([], [], color=colors[n], marker=".", label=n) for n in names]
    handles += [Line2D([], [], color="0.3", ls=ls, label=alg) for alg, ls in styles.items()]
    handles.append(Line2D([], [], color="k", ls=":", label="published (up to)"))
    fig.legend(handles=handles, loc="lower center", ncol=len(handles), fontsize=9, frameon=False)
    fig.suptitle("SCIN (solid) and SCIN+INT8 (dashed) over NVLS and the best software algorithm")
    fig.tight_layout(rect=(0, 0.04, 1, 1))
    fig.savefig(path, dpi=110)


def report(args) -> int:
    """Run, print, write e2e.json/png; ``args`` as parsed by the CLI."""
    try:
        p = get_profile(args.fabric).replace(cuda_graphs=not args.eager)
        if args.scin_efficiency is not None:
            p = with_scin_efficiency(p, args.scin_efficiency)
        prefill = _counts(args.prefill)
        batches = _counts(args.decode_batch)
        algorithms = tuple(a.strip() for a in args.algorithms.split(",") if a.strip())
        result = run(
            tuple(m.strip() for m in args.models.split(",") if m.strip()),
            tp=args.tp,
            profile=p,
            prefill=tuple(prefill),
            decode_batches=tuple(batches),
            context=args.context,
            prefill_batch=args.prefill_batch,
            algorithms=algorithms,
            overlap=args.overlap,
        )
    except ValueError as e:
        print(f"scinjax e2e: {e}", file=sys.stderr)
        return 2
    _print(result, algorithms, p, args)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    result.update(
        fabric=p.name,
        cuda_graphs=p.cuda_graphs,
        tp=args.tp,
        overlap=args.overlap,
        context=args.context,
        prefill_batch=args.prefill_batch,
        algorithms=list(algorithms),
        published=load_published()["scin_paper"],
    )
    (out / "e2e.json").write_text(json.dumps(result, indent=1, default=str))
    written = [out / "e2e.json"]
    if not args.no_plot:
        _plot(out / "e2e.png", result)
        written.append(out / "e2e.png")
    print("\nwrote " + ", ".join(str(w) for w in written))
    return 0


def _counts(text: str) -> list[int]:
    """``"1..64"`` (powers of two, both ends) or ``"1,8,64"``."""
    if ".." in text:
        lo, hi = (int(s) for s in text.split(".."))
        if lo < 1 or hi < lo:
            raise ValueError(f"range {text!r} must run upwards from >= 1")
        return [lo * 2**i for i in range(int(math.log2(hi / lo)) + 1)]
    vals = [int(s) for s in text.split(",") if s.strip()]
    if not vals or min(vals) < 1:
        raise ValueError(f"counts {text!r} must be ints >= 1")
    return vals
