"""Quantize + dequantize round trip cost of scinjax's wire formats (jit, CPU by default).

On a [4096, 4096] bfloat16 array (seed 0), times ``dequantize(quantize(x, fmt))`` for
``int8``, ``mxint8``, ``mxfp8``, ``mxfp4``, ``nvfp4`` next to, in the same run,

- the floor: a plain scale-and-cast of the same shape (bf16 -> f32, one multiply, cast
  to int8, cast back, one multiply, bf16: no blocks, no amax, no exactness work), and
- qwix's ``quantize``/``dequantize`` at the same block configuration (int8 with tiles
  of 32, mxfp8, mxfp4, nvfp4), if qwix is installed (``pip install qwix==0.1.8``).

Every variant is timed interleaved, twice, keeping the lower median. Prints a table of
medians and ratios; writes JSON under results/bench/.

    python benchmarks/quantize.py [--rows 4096] [--cols 4096] [--repeats 10] [--out DIR]
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
FORMATS = ["int8", "mxint8", "mxfp8", "mxfp4", "nvfp4"]
# qwix at the same block configuration: (qtype, tile size along the last axis)
QWIX = {
    "int8": ("int8", 32),
    "mxfp8": ("mxfp8", 32),
    "mxfp4": ("mxfp4", 32),
    "nvfp4": ("nvfp4", 16),
}


def _scinjax_fn(name: str):
    return jax.jit(lambda x: scinjax.dequantize(scinjax.quantize(x, name), x.dtype))


@jax.jit
def _floor(x, s):
    """Plain scale-and-cast round trip: the cheapest thing of the same shape and types."""
    q = (x.astype(jnp.float32) * s).astype(jnp.int8)
    return (q.astype(jnp.float32) * (1 / s)).astype(x.dtype)


def _qwix_fn(name: str):
    try:
        import qwix
    except ImportError:
        return None
    qtype, tile = QWIX[name]
    qtype = jnp.int8 if qtype == "int8" else qtype

    def fn(x):
        q = qwix.quantize(x, qtype, tiled_axes={x.ndim - 1: tile})
        return qwix.dequantize(q).astype(x.dtype)

    return jax.jit(fn)


def _median_time(fn, args, repeats: int) -> float:
    jax.block_until_ready(fn(*args))  # compile + warm
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        jax.block_until_ready(fn(*args))
        times.append(time.perf_counter() - start)
    return float(np.median(times))


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=4096)
    parser.add_argument("--cols", type=int, default=4096)
    parser.add_argument("--repeats", type=int, default=10)
    parser.add_argument("--formats", default=",".join(FORMATS))
    parser.add_argument("--out", default=str(ROOT / "results" / "bench"))
    args = parser.parse_args(argv)
    names = args.formats.split(",")
    rng = np.random.default_rng(0)
    x = jnp.asarray(rng.standard_normal((args.rows, args.cols), dtype=np.float32))
    x = x.astype(jnp.bfloat16)
    s = jnp.float32(100.0)
    variants = {"floor": (_floor, (x, s))}
    for name in names:
        variants[name] = (_scinjax_fn(name), (x,))
        qfn = _qwix_fn(name) if name in QWIX else None
        if qfn is not None:
            variants[f"qwix:{name}"] = (qfn, (x,))
    times: dict[str, float] = {}
    bar = progress(2 * len(variants), desc="round trips", unit="variant")
    for _ in range(2):  # interleaved passes, keep the lower median
        for key, (fn, fargs) in variants.items():
            bar.set_description(key)
            times[key] = min(times.get(key, np.inf), _median_time(fn, fargs, args.repeats))
            bar.update(1)
    bar.close()
    rows = []
    for name in names:
        row = dict(
            format=name,
            ms=times[name] * 1e3,
            ns_per_element=times[name] * 1e9 / x.size,
            vs_floor=times[name] / times["floor"],
        )
        if f"qwix:{name}" in times:
            row["qwix_ms"] = times[f"qwix:{name}"] * 1e3
            row["vs_qwix"] = times[name] / times[f"qwix:{name}"]
        rows.append(row)
    _print_table(rows, times["floor"], x.shape)
    out = pathlib.Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    meta = dict(
        jax=jax.__version__,
        backend=jax.default_backend(),
        machine=platform.machine(),
        shape=list(x.shape),
        dtype="bfloat16",
        seed=0,
        repeats=args.repeats,
        floor_ms=times["floor"] * 1e3,
    )
    path = out / "quantize.json"
    path.write_text(json.dumps(dict(meta=meta, rows=rows), indent=2))
    print(f"\nwrote {path}")
    return 0


def _print_table(rows, floor: float, shape):
    print(f"\nquantize+dequantize round trip, {shape[0]}x{shape[1]} bf16, jit, median ms")
    print(f"floor (plain scale-and-cast): {floor * 1e3:.2f} ms")
    print(f"{'format':>8} {'ms':>9} {'ns/elem':>8} {'x floor':>8} {'qwix ms':>9} {'x qwix':>7}")
    for r in rows:
        qms = f"{r['qwix_ms']:>9.2f}" if "qwix_ms" in r else f"{'-':>9}"
        qx = f"{r['vs_qwix']:>7.2f}" if "vs_qwix" in r else f"{'-':>7}"
        print(
            f"{r['format']:>8} {r['ms']:>9.2f} {r['ns_per_element']:>8.2f} "
            f"{r['vs_floor']:>8.2f} {qms} {qx}"
        )


if __name__ == "__main__":
    sys.exit(main())
