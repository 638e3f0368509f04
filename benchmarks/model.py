"""Cost of emulating tensor parallelism: SmolLM2-135M forward, plain vs N=8 emulated ranks.

Measured side by side (interleaved repeats, median) on the same weights and the
same 512 token ids (fixed seed): the plain single-device model (tp=1, no
All-Reduce), the N=8 emulation with the exact fixed-order float32 reduction,
with `scin` (bf16 partial sums on the wire) and with `scin:int8` (INQ on both
links); optionally the naive emulation (`--naive`: every matmul vmapped per
rank). Also the JIT compile time (lower + compile) at two depths, to show it
does not grow with the number of layers (scan over layers).

    python benchmarks/model.py [--tokens 512] [--repeats 7] [--depths 4,30] [--out PATH]

Real SmolLM2 weights when the loader finds them, else random weights of the
same shapes (`--random` forces that; timing does not depend on the values).
"""

from __future__ import annotations

import argparse
import json
import pathlib
import platform
import statistics
import time

import jax
import numpy as np
from scinjax.models import build_model, get_config, random_weights

ROOT = pathlib.Path(__file__).resolve().parents[1]
VARIANTS = {  # name -> build_model settings
    "plain": dict(tp=1),
    "exact": dict(tp=8, collective="exact"),
    "scin": dict(tp=8, collective="scin"),
    "scin:int8": dict(tp=8, collective="scin:int8"),
}
NAIVE = {"naive exact": dict(tp=8, collective="exact", mode="vmap_ranks")}
TARGETS = {"exact": 1.3, "scin": 1.3, "scin:int8": 1.5}


def _weights(force_random: bool):
    if not force_random:
        try:
            from scinjax.models import load_weights

            config, weights, _ = load_weights("smollm2-135m")
            return config, weights, "SmolLM2-135M (GGUF)"
        except (ImportError, FileNotFoundError, ValueError) as err:
            print(f"note: real weights unavailable ({err}); using random weights")
    config = get_config("smollm2-135m")
    return config, random_weights(config, seed=0), "random, SmolLM2-135M shapes"


def _truncate(config, weights, depth: int):
    """The first `depth` layers of a model (canonical weights keep their names)."""
    keep = {k: v for k, v in weights.items() if not k.startswith("layers.")}
    keep |= {
        k: v for k, v in weights.items() if k.startswith("layers.") and int(k.split(".")[1]) < depth
    }
    return config.replace(num_layers=depth), keep


def _compile_seconds(model, tokens: int, repeats: int = 3) -> tuple[float, float]:
    """Fastest (lower, compile) seconds of the forward over `repeats` cold compiles."""
    best = (float("inf"), float("inf"))
    for _ in range(repeats):
        jax.clear_caches()  # a cold compile each time, not an in-memory cache hit
        t0 = time.perf_counter()
        lowered = model.lower(tokens)
        t1 = time.perf_counter()
        lowered.compile()
        t2 = time.perf_counter()
        best = (min(best[0], t1 - t0), min(best[1], t2 - t1))
    return best


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--tokens", type=int, default=512)
    ap.add_argument("--repeats", type=int, default=7)
    ap.add_argument("--depths", default="4,30", help="layer counts for the compile-time check")
    ap.add_argument("--random", action="store_true", help="random weights (same shapes)")
    ap.add_argument("--naive", action="store_true", help="also time the naive per-rank vmap")
    ap.add_argument("--out", default=str(ROOT / "results" / "bench" / "model.json"))
    args = ap.parse_args(argv)

    config, weights, source = _weights(args.random)
    ids = np.random.default_rng(0).integers(0, config.vocab_size, args.tokens)
    variants = VARIANTS | (NAIVE if args.naive else {})
    print(f"{source}: {config.num_layers} layers, {args.tokens} tokens, {jax.devices()[0]}")

    models, compile_s = {}, {}
    for name, kw in variants.items():
        models[name] = build_model(config, weights, **kw)
        compile_s[name] = sum(_compile_seconds(models[name], args.tokens))
        models[name].forward(ids[None]).block_until_ready()  # jit cache + warm-up
    times = {name: [] for name in models}
    for _ in range(args.repeats):  # interleaved: load changes hit every variant alike
        for name, model in models.items():
            t0 = time.perf_counter()
            model.forward(ids[None]).block_until_ready()
            times[name].append(time.perf_counter() - t0)
    median = {name: statistics.median(v) for name, v in times.items()}
    ratio = {name: median[name] / median["plain"] for name in models}
    ratio_min = {name: min(times[name]) / min(times["plain"]) for name in models}
    del models

    depths = [int(d) for d in args.depths.split(",") if d]
    depth_compile = {}
    for name in ("plain", "scin:int8"):
        for d in depths:
            cfg, w = _truncate(config, weights, d)
            lower_s, comp_s = _compile_seconds(build_model(cfg, w, **VARIANTS[name]), args.tokens)
            depth_compile[f"{name} L={d}"] = dict(layers=d, lower_s=lower_s, compile_s=comp_s)

    print(
        f"\n{'variant':<14}{'median s':>10}{'x plain':>9}{'min s':>9}{'x plain':>9}"
        f"{'target':>8}{'compile s':>11}"
    )
    for name in times:
        target = f"<={TARGETS[name]}" if name in TARGETS else ""
        print(
            f"{name:<14}{median[name]:>10.3f}{ratio[name]:>9.2f}{min(times[name]):>9.3f}"
            f"{ratio_min[name]:>9.2f}{target:>8}{compile_s[name]:>11.2f}"
        )
    print(f"\n{'compile vs depth':<20}{'lower s':>9}{'compile s':>11}")
    for key, v in depth_compile.items():
        print(f"{key:<20}{v['lower_s']:>9.2f}{v['compile_s']:>11.2f}")

    out = pathlib.Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    doc = dict(
        weights=source,
        layers=config.num_layers,
        tokens=args.tokens,
        repeats=args.repeats,
        device=str(jax.devices()[0]),
        machine=platform.processor() or platform.machine(),
        jax=jax.__version__,
        seconds=times,
        median_s=median,
        ratio_to_plain=ratio,
        ratio_of_minima=ratio_min,
        targets=TARGETS,
        compile_s=compile_s,
        compile_vs_depth=depth_compile,
    )
    out.write_text(json.dumps(doc, indent=1))
    print(f"\nwrote {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
