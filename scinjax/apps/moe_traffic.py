"""The `scinjax moe-traffic` app: MoE dispatch/combine bytes per link and layer time.

    scinjax moe-traffic --model deepseek-v3 --ep 8,16,32,64 --tokens 8192

For every EP size, algorithm (``all_to_all``, ``dedup``, ``dysharp``) and pair of
dispatch/combine formats: the expected bytes on one rank's links under uniform routing
(closed form, spec/moe.md), the exact bytes of a sampled routing (``uniform``: k
distinct experts per token uniformly; ``skewed``: a synthetic Zipf-like expert
popularity, flagged as synthetic) counted by :func:`scinjax.moe.ep_traffic` (busiest
rank), and the layer time of :func:`scinjax.timing.moe.moe_layer_time` with sequential
and fused phases. Nothing is allocated beyond the integer routing.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from scinjax._progress import progress
from scinjax.models.moe_config import moe_config
from scinjax.moe import EP_ALGORITHMS, ep_traffic, expected_distinct_ranks, uniform_ep_traffic
from scinjax.timing.moe import expert_gemm_seconds, moe_layer_time

__all__ = ["DEFAULT_FORMATS", "ROUTINGS", "moe_traffic_rows", "report", "sample_routing"]

DEFAULT_FORMATS = ("bf16/bf16", "mxfp8/bf16", "bf16/int8", "mxfp8/int8")
ROUTINGS = ("uniform", "skewed", "measured")
DEFAULT_ROUTINGS = ("uniform", "skewed")


def sample_routing(kind: str, tokens: int, n_experts: int, k: int, seed: int) -> np.ndarray:
    """``[tokens, k]`` int32 distinct expert ids (Gumbel top-k, in batches: no [T, E] array).

    ``uniform``: every k-subset equally likely. ``skewed``: expert e has weight
    ``(e + 1) ** -1`` (synthetic Zipf popularity; experts 0.. are hot, so rank 0 is).
    """
    if kind not in ROUTINGS[:2]:
        raise ValueError(f"unknown sampled routing {kind!r}; use one of {ROUTINGS[:2]}")
    rng = np.random.default_rng(seed)
    logw = np.zeros(n_experts) if kind == "uniform" else -np.log(np.arange(1, n_experts + 1))
    out = np.empty((tokens, k), np.int32)
    step = max(1, 2**22 // n_experts)
    for a in range(0, tokens, step):
        b = min(tokens, a + step)
        scores = logw[None].astype(np.float32) + rng.gumbel(size=(b - a, n_experts)).astype(
            np.float32
        )
        out[a:b] = np.argpartition(-scores, k - 1, axis=1)[:, :k]
    return out


def _split(spec: str) -> tuple[str, str]:
    d, sep, c = spec.partition("/")
    return d, (c if sep else d)


def moe_traffic_rows(
    model,
    *,
    ep_sizes,
    tokens: int,
    formats=DEFAULT_FORMATS,
    routings=DEFAULT_ROUTINGS,
    profile: str = "h100-nvswitch-8",
    chunks: int = 16,
    seed: int = 0,
    train_steps: int = 200,
    show_progress: bool = True,
) -> list[dict]:
    """One dict per (EP size, routing, formats, algorithm): bytes per rank and layer time."""
    cfg = moe_config(model)
    for n in ep_sizes:
        if cfg.n_experts % n:
            raise ValueError(
                f"--ep {n} does not divide {cfg.name}'s {cfg.n_experts} experts; pick EP "
                "sizes that divide the expert count"
            )
    for routing in routings:
        if routing not in ROUTINGS:
            raise ValueError(f"unknown routing {routing!r}; use one of {ROUTINGS}")
    measured = None
    if "measured" in routings:
        if cfg.name != "tiny-moe":
            raise ValueError(
                "--routing measured needs --model tiny-moe (the only MoE with trained weights "
                "here: scinjax moe-study's tiny LM); use uniform or skewed for full-size shapes"
            )
        from scinjax.apps.moe_study import measured_routing

        measured = measured_routing(
            max(ep_sizes) * tokens, steps=train_steps, seed=seed, show_progress=show_progress
        )
    rows = []
    total = len(ep_sizes) * len(routings)
    with progress(total, desc="moe-traffic", unit="routing", enabled=show_progress) as bar:
        for n in ep_sizes:
            sources = np.repeat(np.arange(n, dtype=np.int32), tokens)
            for routing in routings:
                if routing == "measured":  # rank s holds tokens s*T .. (s+1)*T - 1
                    experts = measured[: n * tokens]
                else:
                    experts = sample_routing(routing, n * tokens, cfg.n_experts, cfg.top_k, seed)
                # expert GEMMs of the busiest rank: the pairs its experts receive (local
                # ones included) plus its own tokens through the shared experts
                pairs = np.bincount(experts.ravel() // (cfg.n_experts // n), minlength=n)
                gemm = expert_gemm_seconds(
                    int(pairs.max()),
                    hidden=cfg.hidden,
                    intermediate=cfg.intermediate,
                    profile=profile,
                    shared_tokens=tokens * cfg.shared_experts,
                )
                for spec in formats:
                    dfmt, cfmt = _split(spec)
                    for alg in EP_ALGORITHMS:
                        kw = dict(algorithm=alg, dispatch_format=dfmt, combine_format=cfmt)
                        t = ep_traffic(
                            experts,
                            sources,
                            n_ranks=n,
                            n_experts=cfg.n_experts,
                            hidden=cfg.hidden,
                            **kw,
                        )
                        uni = uniform_ep_traffic(
                            tokens,
                            n_ranks=n,
                            n_experts=cfg.n_experts,
                            k=cfg.top_k,
                            hidden=cfg.hidden,
                            **kw,
                        )
                        seq = moe_layer_time(
                            t, profile=profile, gemm_seconds=gemm, mode="sequential"
                        )
                        fused = moe_layer_time(
                            t, profile=profile, gemm_seconds=gemm, chunks=chunks, mode="fused"
                        )
                        comm = moe_layer_time(t, profile=profile, chunks=chunks, mode="fused")
                        comm_seq = moe_layer_time(t, profile=profile, mode="sequential")
                        row = dict(
                            model=cfg.name,
                            ep=n,
                            tokens_per_rank=tokens,
                            chunks=chunks,
                            routing=routing,
                            dispatch_format=dfmt,
                            combine_format=cfmt,
                            algorithm=alg,
                            expected_distinct_ranks=float(
                                expected_distinct_ranks(n, cfg.n_experts, cfg.top_k)
                            ),
                            uniform_per_rank={k: float(v) for k, v in uni.items()},
                            max_rank=dict(
                                dispatch_up=max(t.dispatch_up),
                                dispatch_down=max(t.dispatch_down),
                                combine_up=max(t.combine_up),
                                combine_down=max(t.combine_down),
                                meta_up=max(t.meta_up),
                                meta_down=max(t.meta_down),
                            ),
                            total_bytes=t.total,
                            traffic=t.to_dict(),
                            gemm_seconds=gemm,
                            sequential_seconds=seq.seconds,
                            fused_seconds=fused.seconds,
                            fused_comm_only_seconds=comm.seconds,
                            sequential_comm_only_seconds=comm_seq.seconds,
                        )
                        rows.append(row)
                    group = rows[-len(EP_ALGORITHMS) :]
                    dedup = group[EP_ALGORITHMS.index("dedup")]
                    for i, row in enumerate(group):
                        prev = group[i - 1]["total_bytes"] if i else None
                        row["saving_vs_previous"] = 1 - row["total_bytes"] / prev if i else None
                        row["speedup_vs_dedup_sequential"] = dict(
                            sequential=dedup["sequential_seconds"] / row["sequential_seconds"],
                            fused=dedup["sequential_seconds"] / row["fused_seconds"],
                            comm_only_fused=dedup["sequential_comm_only_seconds"]
                            / row["fused_comm_only_seconds"],
                        )
                bar.update(1)
    return rows


def format_table(rows: list[dict]) -> str:
    biggest = max((max(r["max_rank"].values()) for r in rows), default=0)
    mb, unit = (1e6, "MB") if biggest >= 1e6 else (1e3, "KB")
    head = (
        f"{'EP':>3} {'routing':<9}{'disp/comb':<12}{'algorithm':<11}"
        f"{'disp up':>9}{'disp dn':>9}{'comb up':>9}{'comb dn':>9}{'meta':>7}"
        f"{'saving':>8}{'seq us':>9}{'fused us':>9}{'x seq':>7}{'x fused':>8}{'x comm':>8}"
    )
    lines = [
        f"{unit} on the busiest rank's links per MoE layer (sampled routing); saving = total bytes"
        " vs the row above;\nx = speedup over dedup with sequential phases (x comm: links only,"
        " no expert GEMM, fused)",
        head,
        "-" * len(head),
    ]
    for r in rows:
        m = r["max_rank"]
        sav = r["saving_vs_previous"]
        sp = r["speedup_vs_dedup_sequential"]
        lines.append(
            f"{r['ep']:>3} {r['routing']:<9}{r['dispatch_format'] + '/' + r['combine_format']:<12}"
            f"{r['algorithm']:<11}{m['dispatch_up'] / mb:>9.1f}{m['dispatch_down'] / mb:>9.1f}"
            f"{m['combine_up'] / mb:>9.1f}{m['combine_down'] / mb:>9.1f}"
            f"{max(m['meta_up'], m['meta_down']) / mb:>7.1f}"
            f"{'' if sav is None else f'{100 * sav:.0f}%':>8}"
            f"{r['sequential_seconds'] * 1e6:>9.0f}{r['fused_seconds'] * 1e6:>9.0f}"
            f"{sp['sequential']:>7.2f}{sp['fused']:>8.2f}{sp['comm_only_fused']:>8.2f}"
        )
    return "\n".join(lines)


def _pick(sel, n, alg, fmt):
    (row,) = [
        x
        for x in sel
        if x["ep"] == n
        and x["algorithm"] == alg
        and x["dispatch_format"] + "/" + x["combine_format"] == fmt
    ]
    return row


def plot(rows: list[dict], path: str | Path) -> None:
    """Left: expected dispatch bytes per rank (uniform routing); right: speedups."""
    from matplotlib.figure import Figure

    eps = sorted({r["ep"] for r in rows})
    sel = [r for r in rows if r["routing"] == rows[0]["routing"]]
    fmt = sel[0]["dispatch_format"] + "/" + sel[0]["combine_format"]
    fig = Figure(figsize=(11, 4.2), layout="constrained")
    ax_b, ax_t = fig.subplots(1, 2)
    markers = dict(all_to_all="o", dedup="s", dysharp="^")
    for alg in EP_ALGORITHMS:
        for direction, style in (("up", "-"), ("down", "--")):
            ys = [
                _pick(sel, n, alg, fmt)["uniform_per_rank"][f"dispatch_{direction}"] / 1e6
                for n in eps
            ]
            ax_b.plot(eps, ys, style, marker=markers[alg], label=f"{alg} {direction}link")
    ax_b.set_xscale("log", base=2)
    ax_b.set_xlabel("EP ranks N")
    ax_b.set_ylabel("MB per rank per layer")
    ax_b.set_title(
        f"{sel[0]['model']} dispatch ({fmt}), uniform routing\n(combine: up/down swapped)"
    )
    ax_b.legend(fontsize=7)
    curves = [
        ("dysharp", "sequential", "comm only, sequential", "-", "comm_seq"),
        ("dedup", "comm_only_fused", "dedup comm only, fused", "-", None),
        ("dysharp", "comm_only_fused", "dysharp comm only, fused", "-", None),
        ("dedup", "fused", "dedup fused, with expert GEMM", "--", None),
        ("dysharp", "fused", "dysharp fused, with expert GEMM", "--", None),
    ]
    for alg, key, label, style, special in curves:
        if special == "comm_seq":
            ys = [
                _pick(sel, n, "dedup", fmt)["sequential_comm_only_seconds"]
                / _pick(sel, n, alg, fmt)["sequential_comm_only_seconds"]
                for n in eps
            ]
            label = "dysharp " + label
        else:
            ys = [_pick(sel, n, alg, fmt)["speedup_vs_dedup_sequential"][key] for n in eps]
        ax_t.plot(eps, ys, style, marker=markers[alg], label=label)
    bound = []
    for n in eps:
        d = _pick(sel, n, "dedup", fmt)["expected_distinct_ranks"] * (n - 1) / n
        bound.append(2 * d / (d + 1))
    ax_t.plot(eps, bound, ":", color="gray", label="2d/(d+1), d = E[remote ranks]")
    ax_t.set_xscale("log", base=2)
    ax_t.set_xlabel("EP ranks N")
    ax_t.set_ylabel("speedup over dedup, sequential phases")
    ax_t.set_title(f"layer time model, {sel[0]['routing']} routing, {sel[0]['chunks']} chunks")
    ax_t.legend(fontsize=7)
    fig.savefig(path, dpi=120)


def report(args) -> int:
    ep_sizes = [int(v) for v in str(args.ep).split(",") if v]
    rows = moe_traffic_rows(
        args.model,
        ep_sizes=ep_sizes,
        tokens=args.tokens,
        formats=tuple(f for f in args.formats.split(",") if f),
        routings=tuple(r for r in args.routing.split(",") if r),
        profile=args.profile,
        chunks=args.chunks,
        seed=args.seed,
        train_steps=args.train_steps,
    )
    print(format_table(rows))
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps(rows, indent=1))
        print(f"wrote {args.json}")
    if args.plot:
        Path(args.plot).parent.mkdir(parents=True, exist_ok=True)
        plot(rows, args.plot)
        print(f"wrote {args.plot}")
    return 0
