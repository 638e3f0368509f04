"""Cost of ``scinjax.emulate`` on a training step: a plain ``lax.psum`` TP block vs the same
program emulated (exact, scin:int8), forward + backward, N=8 ranks under vmap.

Measured side by side (interleaved repeats, median and minimum) on the same weights and
tokens (fixed seed). Also the gradient gap to the exact emulation (relative L2 norm).

    python benchmarks/emulate.py [--tokens 512] [--hidden 512] [--repeats 7] [--out PATH]
"""

from __future__ import annotations

import argparse
import json
import pathlib
import platform
import statistics
import time

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

import scinjax

ROOT = pathlib.Path(__file__).resolve().parents[1]
N = 8


def block(p, x):
    """One rank of a Megatron MLP + output projection pair: x [T, D] replicated."""
    h = x * lax.rsqrt(jnp.mean(x * x, -1, keepdims=True) + 1e-6)
    y = jnp.dot(jax.nn.silu(jnp.dot(h, p["w1"])) * jnp.dot(h, p["w3"]), p["w2"])
    x = x + lax.psum(y, "tp")
    h = x * lax.rsqrt(jnp.mean(x * x, -1, keepdims=True) + 1e-6)
    return x + lax.psum(jnp.dot(jnp.dot(h, p["wa"]), p["wb"]), "tp")


def make(tokens: int, hidden: int):
    rng = np.random.default_rng(0)
    f = 4 * hidden // N

    def w(*shape):
        return jnp.asarray(rng.standard_normal((N, *shape)) / np.sqrt(shape[0]), jnp.float32)

    p = dict(w1=w(hidden, f), w3=w(hidden, f), w2=w(f, hidden))
    p.update(wa=w(hidden, hidden // N), wb=w(hidden // N, hidden))
    x = jnp.asarray(rng.standard_normal((tokens, hidden)), jnp.float32)
    return p, x


def step_fn(fn, x):
    def loss(p):
        return jnp.mean(jax.vmap(fn, in_axes=(0, None), axis_name="tp")(p, x)[0] ** 2)

    return jax.jit(jax.value_and_grad(loss))


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--tokens", type=int, default=512)
    ap.add_argument("--hidden", type=int, default=512)
    ap.add_argument("--repeats", type=int, default=7)
    ap.add_argument("--out", default=str(ROOT / "results" / "emulate.json"))
    args = ap.parse_args(argv)
    p, x = make(args.tokens, args.hidden)
    variants = {
        "plain lax.psum": block,
        "emulate exact": scinjax.emulate(block, "exact"),
        "emulate scin:int8": scinjax.emulate(block, "scin:int8"),
        "emulate scin:int8, int8 backward": scinjax.emulate(
            block, "scin:int8", backward="scin:int8"
        ),
    }
    steps = {name: step_fn(fn, x) for name, fn in variants.items()}
    grads = {}
    for name, step in steps.items():  # compile + warm up
        grads[name] = jax.block_until_ready(step(p))[1]
    times = {name: [] for name in steps}
    for _ in range(args.repeats):
        for name, step in steps.items():
            t0 = time.perf_counter()
            jax.block_until_ready(step(p))
            times[name].append(time.perf_counter() - t0)
    ref = grads["emulate exact"]

    def gap(g):
        num = sum(float(jnp.sum((g[k] - ref[k]) ** 2)) for k in g)
        den = sum(float(jnp.sum(ref[k] ** 2)) for k in g)
        return (num / den) ** 0.5

    base = statistics.median(times["plain lax.psum"])
    base_min = min(times["plain lax.psum"])
    rows = []
    print(f"N={N} tokens={args.tokens} hidden={args.hidden} float32, {platform.machine()}")
    head = (
        f"{'variant':<34}{'median ms':>10}{'min ms':>9}{'x plain':>9}{'x (min)':>9}{'grad gap':>10}"
    )
    print(head)
    print("-" * len(head))
    for name, ts in times.items():
        med, lo = statistics.median(ts), min(ts)
        row = dict(
            variant=name,
            median_ms=med * 1e3,
            min_ms=lo * 1e3,
            ratio_median=med / base,
            ratio_min=lo / base_min,
            grad_gap=gap(grads[name]),
        )
        rows.append(row)
        print(
            f"{name:<34}{row['median_ms']:>10.2f}{row['min_ms']:>9.2f}"
            f"{row['ratio_median']:>9.2f}{row['ratio_min']:>9.2f}{row['grad_gap']:>10.1e}"
        )
    out = pathlib.Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(
        json.dumps(dict(n_ranks=N, tokens=args.tokens, hidden=args.hidden, rows=rows), indent=2)
    )
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
