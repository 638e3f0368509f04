"""The ``scinjax timing`` app: All-Reduce latency / algbw / busbw per algorithm and message size.

    scinjax timing --fabric h200-nvswitch-8 --sizes 1KiB..1GiB [--cuda-graphs] [--out DIR]

Prints the tables, the speedups of ``scin`` and ``scin:int8`` over the best software
algorithm (min of ring, one_shot, two_shot) and over ``nvls`` next to the published
ones, and writes ``timing.json`` and ``timing.png`` under ``--out`` (default
``results/timing``). ``--calibration`` prints the fit against the public measurements.
"""

from __future__ import annotations

import dataclasses
import json
import math
import re
import sys
from pathlib import Path

from scinjax.timing.calibrate import calibration_rows, load_published, nvls_rank_rows, vllm_rows
from scinjax.timing.model import allreduce_time
from scinjax.timing.profile import FabricProfile, get_profile
from scinjax.traffic import algbw, busbw

__all__ = [
    "ALGORITHMS",
    "SOFTWARE",
    "parse_size",
    "parse_sizes",
    "speedups",
    "sweep",
    "report",
    "with_scin_efficiency",
]

ALGORITHMS = ("ring", "one_shot", "two_shot", "nvls", "scin", "scin:int8", "scin:mxint8")
SOFTWARE = ("ring", "one_shot", "two_shot")
_UNITS = {
    "": 1,
    "b": 1,
    "k": 2**10,
    "kib": 2**10,
    "m": 2**20,
    "mib": 2**20,
    "g": 2**30,
    "gib": 2**30,
}
_GB = 1e9


def parse_size(text: str) -> int:
    """``"64KiB"`` -> 65536 (binary units B, K/KiB, M/MiB, G/GiB); ValueError otherwise."""
    m = re.fullmatch(r"\s*(\d+)\s*([A-Za-z]*)\s*", text)
    if not m or m.group(2).lower() not in _UNITS:
        raise ValueError(f"cannot read message size {text!r}; write e.g. 1024, 64KiB, 1GiB")
    return int(m.group(1)) * _UNITS[m.group(2).lower()]


def parse_sizes(text: str) -> list[int]:
    """``"1KiB..1GiB"`` (every power of two between, both ends included; ``..x4`` steps by
    4) or a comma list ``"1KiB,1MiB"``. Sizes must be even (bf16) and increasing."""
    m = re.fullmatch(r"(.+?)\.\.(.+?)(?:x(\d+))?", text.strip())
    if m:
        lo, hi = parse_size(m.group(1)), parse_size(m.group(2))
        step = int(m.group(3) or 2)
        if lo < 1 or hi < lo or step < 2:
            raise ValueError(f"size range {text!r} must run from >= 1 B upwards by a step >= 2")
        sizes = []
        while lo <= hi:
            sizes.append(lo)
            lo *= step
    else:
        sizes = [parse_size(s) for s in text.split(",") if s.strip()]
    if not sizes or any(s < 2 or s % 2 for s in sizes):
        raise ValueError(f"message sizes {sizes} must be even numbers of bytes >= 2 (bf16)")
    if sorted(set(sizes)) != sizes:
        raise ValueError(f"message sizes {sizes} must be strictly increasing")
    return sizes


def with_scin_efficiency(profile: FabricProfile, value: float) -> FabricProfile:
    """``profile`` with the scin family's link efficiency replaced (a sensitivity knob)."""
    return profile.replace(efficiency=dataclasses.replace(profile.efficiency, scin=value))


def _fmt_size(n: int) -> str:
    for unit, v in (("GiB", 2**30), ("MiB", 2**20), ("KiB", 2**10)):
        if n >= v and n % v == 0:
            return f"{n // v}{unit}"
    return f"{n}B"


def sweep(
    profile: FabricProfile, sizes: list[int], n_ranks: int, algorithms=ALGORITHMS
) -> dict[str, list[float]]:
    """Seconds per algorithm per size: ``{algorithm: [t(size) for size in sizes]}``."""
    return {
        a: [allreduce_time(a, s, n_ranks=n_ranks, profile=profile) for s in sizes]
        for a in algorithms
    }


def speedups(times: dict[str, list[float]], sizes: list[int]) -> dict:
    """Speedups of scin and scin:int8 over the best software algorithm and over nvls:
    at the smallest size, at the largest, and the largest over all sizes (with where)."""
    best_sw = [min(times[a][i] for a in SOFTWARE) for i in range(len(sizes))]
    bases = {"software": best_sw, "nvls": times["nvls"]}
    out = {}
    for alg in ("scin", "scin:int8"):
        for base, tb in bases.items():
            ratios = [b / t for b, t in zip(tb, times[alg], strict=True)]
            k = max(range(len(ratios)), key=ratios.__getitem__)
            out[f"{alg} vs {base}"] = {
                "smallest": ratios[0],
                "largest": ratios[-1],
                "max": ratios[k],
                "max_at_bytes": sizes[k],
            }
    return out


def _published_speedups() -> dict[str, str]:
    paper = load_published()["scin_paper"]
    sw, nv = paper["allreduce_speedup_vs_software"], paper["allreduce_speedup_vs_nvls"]
    lo, hi = nv["large"]
    return {
        "vs software": f"{sw['small']}x small / {sw['large']}x large",
        "vs nvls": f"~{nv['small']}x small / {lo}-{hi}x large",
    }


def _table(title: str, sizes, columns: dict[str, list[float]], fmt: str) -> str:
    width = {a: max(12, len(a)) + 1 for a in columns}  # long names keep a column of their own
    head = f"{'size':>8}" + "".join(f"{a:>{width[a]}}" for a in columns)
    lines = [title, head, "-" * len(head)]
    for i, s in enumerate(sizes):
        cells = "".join(f"{v[i]:>{width[a]}{fmt}}" for a, v in columns.items())
        lines.append(f"{_fmt_size(s):>8}" + cells)
    return "\n".join(lines)


def _calibration_text(fabric: str) -> str:
    lines = []
    for title, rows in (
        (
            "Calibration: nccl-tests NVLS sweep (8xH100, no CUDA graphs) + large busbw",
            calibration_rows("h100-nvswitch-8"),
        ),
        (
            "Validation: NVLS large-message busbw vs N (only N=8 fitted)",
            nvls_rank_rows("h100-nvswitch-8"),
        ),
        ("Validation: vLLM custom all-reduce, 6xH100 (not fitted)", vllm_rows("h100-nvswitch-8")),
    ):
        lines += [title, f"{'point':<28}{'measured':>10}{'model':>10}{'error':>9}  unit / fitted"]
        for r in rows:
            lines.append(
                f"{r.label:<28}{r.measured:>10.2f}{r.model:>10.2f}{r.error * 100:>+8.1f}%"
                f"  {r.unit} / {'yes' if r.fitted else 'no'}"
            )
        lines.append("")
    if fabric != "h100-nvswitch-8":
        lines.append(f"(calibration data are 8xH100; {fabric} shares every value but those noted)")
    return "\n".join(lines)


def _plot(path: Path, sizes, times, bus, title: str, measured: bool) -> None:
    """PNG: latency (log-log) and busbw (log x) against message bytes per rank.

    Colour = algorithm; solid = in-network (scin), dashed = the others; x ticks in
    KiB/MiB/GiB at every 4th, 6th, ... power of two (at most 7, so labels never touch).
    """
    from matplotlib.figure import Figure  # no pyplot: the caller's backend stays as it is

    sweep_data = load_published()["nvls_sweep_8xh100"]
    fig = Figure(figsize=(12, 4.8))
    ax1, ax2 = fig.subplots(1, 2)
    for a in times:
        style = "-" if a.startswith("scin") else "--"
        ax1.loglog(sizes, [t * 1e6 for t in times[a]], style, marker=".", label=a)
        ax2.semilogx(sizes, bus[a], style, marker=".", label=a)
    if measured:  # the public sweep, for NVSwitch fabrics (8 ranks, eager) only
        ms = [s for s in sweep_data["size_bytes"] if s <= sizes[-1]]
        bw = sweep_data["busbw_GBps"][: len(ms)]
        mt = [1.75 * s / (b * _GB) * 1e6 for s, b in zip(ms, bw, strict=True)]
        ax1.loglog(ms, mt, "kx", label="nvls measured (8xH100, nccl-tests, eager)")
        ax2.semilogx(ms, bw, "kx", label="nvls measured (8xH100, eager)")
    lo, hi = math.ceil(math.log2(sizes[0])), math.floor(math.log2(sizes[-1]))
    step = next(k for k in range(2, 64, 2) if (hi - lo) // k < 7)  # at most 7 labels
    ticks = [2**e for e in range(lo, hi + 1, step)]
    ax1.set(xlabel="message bytes per rank", ylabel="latency (us)", title=title)
    ax2.set(xlabel="message bytes per rank", ylabel="busbw (GB/s, nccl-tests convention)")
    ax2.set_ylim(bottom=0)
    for ax in (ax1, ax2):
        if len(ticks) >= 2:
            ax.set_xticks(ticks, [_fmt_size(t) for t in ticks])
            ax.set_xticks([], minor=True)
        ax.grid(True, which="major", alpha=0.3)
        ax.legend(fontsize=7, loc="upper left")
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def report(args) -> int:
    """Print the tables and speedups, write timing.json/png; ``args`` as parsed by the CLI."""
    try:
        sizes = parse_sizes(args.sizes)
        profile = get_profile(args.fabric)
        if args.graphs is not None:
            profile = profile.replace(cuda_graphs=args.graphs)
        if args.scin_efficiency is not None:
            profile = with_scin_efficiency(profile, args.scin_efficiency)
        n = profile.n_ranks if args.n_ranks is None else args.n_ranks
        algorithms = tuple(a.strip() for a in args.algorithms.split(",") if a.strip())
        needed = set(SOFTWARE) | {"nvls", "scin", "scin:int8"}
        times = sweep(profile, sizes, n, tuple(dict.fromkeys(algorithms + tuple(sorted(needed)))))
    except ValueError as e:
        print(f"scinjax timing: {e}", file=sys.stderr)
        return 2
    alg_bw = {
        a: [algbw(s, t) / _GB for s, t in zip(sizes, times[a], strict=True)] for a in algorithms
    }
    bus_bw = {
        a: [busbw(s, t, n) / _GB for s, t in zip(sizes, times[a], strict=True)] for a in algorithms
    }
    mode = "CUDA graphs" if profile.cuda_graphs else "eager (no CUDA graphs)"
    print(f"fabric {profile.name}, N={n}, {mode}; bf16 message bytes per rank\n")
    print(
        _table("latency (us)", sizes, {a: [t * 1e6 for t in times[a]] for a in algorithms}, ".2f")
    )
    print()
    print(_table("algbw (GB/s) = bytes / time", sizes, alg_bw, ".2f"))
    print()
    print(
        _table(
            "busbw (GB/s), nccl-tests convention: algbw x 2(N-1)/N for every algorithm",
            sizes,
            bus_bw,
            ".2f",
        )
    )
    summary = {}
    published = _published_speedups()
    for label, prof in (
        ("eager", profile.replace(cuda_graphs=False)),
        ("cuda_graphs", profile.replace(cuda_graphs=True)),
    ):
        t = times if prof == profile else sweep(prof, sizes, n, tuple(sorted(needed)))
        summary[label] = speedups(t, sizes)
    print(
        f"\nspeedups ({_fmt_size(sizes[0])} = smallest, {_fmt_size(sizes[-1])} = largest; "
        "software = best of ring/one_shot/two_shot per size)"
    )
    head = f"{'':<22}{'mode':<13}{'smallest':>9}{'largest':>9}{'max':>8}  {'at':<8} published"
    print(head + "\n" + "-" * (len(head) + 28))
    for label, sp in summary.items():
        for key, v in sp.items():
            pub = published["vs software" if key.endswith("software") else "vs nvls"]
            print(
                f"{key:<22}{label:<13}{v['smallest']:>8.2f}x{v['largest']:>8.2f}x"
                f"{v['max']:>7.2f}x  {_fmt_size(v['max_at_bytes']):<8} {pub}"
            )
    print("(the paper does not say which of its speedups use INQ; both are shown)")
    if args.calibration:
        print("\n" + _calibration_text(profile.name))
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    result = {
        "fabric": profile.name,
        "profile": profile.to_dict(),
        "n_ranks": n,
        "cuda_graphs": profile.cuda_graphs,
        "message_bytes": sizes,
        "algorithms": list(algorithms),
        "latency_s": {a: times[a] for a in algorithms},
        "algbw_GBps": alg_bw,
        "busbw_GBps": bus_bw,
        "busbw_convention": "nccl-tests: busbw = algbw * 2(N-1)/N for every algorithm",
        "software_baseline": "min over " + ", ".join(SOFTWARE) + " at each size",
        "speedups": summary,
        "published": load_published()["scin_paper"],
    }
    (out / "timing.json").write_text(json.dumps(result, indent=1))
    written = [out / "timing.json"]
    if not args.no_plot:
        _plot(
            out / "timing.png",
            sizes,
            {a: times[a] for a in algorithms},
            bus_bw,
            f"All-Reduce on {profile.name}, N={n}, {mode}",
            measured="nvswitch" in profile.name and n == 8,
        )
        written.append(out / "timing.png")
    print("\nwrote " + ", ".join(str(p) for p in written))
    return 0
