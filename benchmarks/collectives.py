"""Emulation cost of every All-Reduce algorithm (N=8 ranks under vmap, jit, CPU).

For bf16 messages from 4 KiB to 64 MiB per rank, prints the median time of each
emulated algorithm next to, in the same run, the plain fixed-order float32 sum over
the rank axis and the independent NumPy reference of the spec (tests/reference_np.py,
only up to --numpy-max bytes: it is slow). Writes JSON (and a PNG plot).

    python benchmarks/collectives.py [--sizes 4KiB,64KiB,1MiB,4MiB,16MiB,64MiB] [--out DIR]
"""

from __future__ import annotations

import argparse
import json
import pathlib
import platform
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np

import scinjax
from scinjax._progress import progress

ROOT = pathlib.Path(__file__).resolve().parents[1]
N_RANKS = 8
HIDDEN = 2048  # last axis of the message: rows of activations
VARIANTS = ["ring", "one_shot", "two_shot", "nvls", "scin", "scin:int8", "scin:mxint8",
            "scin:int4", "two_shot:int8", "scin:mxfp8", "scin:nvfp4"]  # fmt: skip
_UNITS = {"KiB": 1024, "MiB": 1024**2, "GiB": 1024**3}


def parse_size(text: str) -> int:
    for unit, scale in _UNITS.items():
        if text.endswith(unit):
            return int(float(text[: -len(unit)]) * scale)
    return int(text)


def _emulator(spec: str):
    coll = scinjax.Collective.parse(spec)
    return jax.jit(jax.vmap(lambda v: coll(v, "tp"), axis_name="tp"))


@jax.jit
def _plain_sum(x):
    """Fixed-order float32 sum over the rank axis, one bf16 rounding: the floor of any
    emulation (no per-rank broadcast, no FTZ, no quantization)."""
    acc = x[0].astype(jnp.float32)
    for i in range(1, x.shape[0]):
        acc = acc + x[i].astype(jnp.float32)
    return acc.astype(x.dtype)


def _median_time(fn, arg, repeats: int) -> float:
    jax.block_until_ready(fn(arg))  # compile + warm
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        jax.block_until_ready(fn(arg))
        times.append(time.perf_counter() - start)
    return float(np.median(times))


def _numpy_reference():
    sys.path.insert(0, str(ROOT / "tests"))
    try:
        import reference_np  # the independent NumPy implementation of the spec
    except ImportError:
        return None
    return reference_np


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", default="4KiB,64KiB,1MiB,4MiB,16MiB,64MiB")
    parser.add_argument("--numpy-max", default="4MiB", help="largest size for the NumPy ref")
    parser.add_argument("--repeats", type=int, default=0, help="0: adapt to the size")
    parser.add_argument("--out", default=str(ROOT / "results" / "bench"))
    args = parser.parse_args(argv)
    sizes = [parse_size(s) for s in args.sizes.split(",")]
    numpy_max = parse_size(args.numpy_max)
    ref = _numpy_reference()
    rng = np.random.default_rng(0)
    rows = []
    bar = progress(len(sizes), unit="size")
    for size in sizes:
        bar.set_description(f"message size {size} B/rank")
        elements = size // 2
        shape = (N_RANKS, max(1, elements // HIDDEN), min(HIDDEN, elements))
        x = jnp.asarray(rng.standard_normal(shape, dtype=np.float32)).astype(jnp.bfloat16)
        repeats = args.repeats or max(3, min(20, (64 << 20) // (size * 8)))
        row = {"bytes_per_rank": size, "repeats": repeats}
        # interleave: every variant is timed in the same pass, twice, keep the min median
        for _ in range(2):
            row["plain_f32_sum"] = min(
                row.get("plain_f32_sum", np.inf), _median_time(_plain_sum, x, repeats)
            )
            for spec in VARIANTS:
                fn = _emulator(spec)
                row[spec] = min(row.get(spec, np.inf), _median_time(fn, x, repeats))
            jax.clear_caches()
        if ref is not None and size <= numpy_max:
            xs = np.asarray(x)  # ml_dtypes bfloat16
            start = time.perf_counter()
            ref.allreduce(xs, "scin")
            row["numpy_ref_scin"] = time.perf_counter() - start
            start = time.perf_counter()
            ref.allreduce(xs, "scin", uplink="int8", downlink="int8")
            row["numpy_ref_scin:int8"] = time.perf_counter() - start
        rows.append(row)
        bar.update(1)
    bar.close()
    _print_table(rows)
    out = pathlib.Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    meta = dict(jax=jax.__version__, backend=jax.default_backend(), machine=platform.machine(),
                n_ranks=N_RANKS, dtype="bfloat16", seed=0)  # fmt: skip
    (out / "collectives.json").write_text(json.dumps(dict(meta=meta, rows=rows), indent=2))
    _plot(rows, out / "collectives.png")
    print(f"\nwrote {out / 'collectives.json'} and {out / 'collectives.png'}")
    return 0


def _print_table(rows):
    columns = ["plain_f32_sum", *VARIANTS, "numpy_ref_scin", "numpy_ref_scin:int8"]
    print("\nmedian ms per All-Reduce (N=8 ranks emulated under vmap, jit, CPU)")
    print(f"{'size/rank':>10}" + "".join(f"{c:>15}" for c in columns))
    for row in rows:
        cells = "".join(f"{row[c] * 1e3:>15.3f}" if c in row else f"{'-':>15}" for c in columns)
        print(f"{row['bytes_per_rank'] / 1024:>8.0f}Ki" + cells)
    print("\nratios measured side by side:")
    for row in rows:
        print(
            f"{row['bytes_per_rank'] / 1024:>8.0f}Ki  scin:int8 / scin = "
            f"{row['scin:int8'] / row['scin']:.2f}x   scin / plain_f32_sum = "
            f"{row['scin'] / row['plain_f32_sum']:.2f}x   ring / scin = "
            f"{row['ring'] / row['scin']:.2f}x"
        )


def _size_label(size: int) -> str:
    for unit, scale in reversed(_UNITS.items()):
        if size >= scale and size % scale == 0:
            return f"{size // scale} {unit}"
    return f"{size} B"


def _plot(rows, path):
    from matplotlib.figure import Figure  # no pyplot: the caller's backend stays as it is

    sizes = [r["bytes_per_rank"] for r in rows]
    fig = Figure(figsize=(7, 4.5))
    ax = fig.subplots()
    for i, name in enumerate(["plain_f32_sum", *VARIANTS]):  # > 10 lines: vary the marker
        times = [r[name] * 1e3 for r in rows]
        ax.loglog(sizes, times, marker="os^"[i // 10 % 3], color=f"C{i % 10}", label=name)
    ax.set_xticks(sizes, [_size_label(s) for s in sizes], minor=False)
    ax.set_xticks([], minor=True)
    ax.set_xlabel("message bytes per rank (bf16)")
    ax.set_ylabel("emulation time per call, ms (CPU)")
    ax.set_title("scinjax emulation cost, N=8 ranks under vmap")
    ax.legend(fontsize=7, ncol=2)
    ax.grid(True, which="both", alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=120)


if __name__ == "__main__":
    sys.exit(main())
