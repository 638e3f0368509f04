"""Cost of a train step with emulated collectives vs the plain single-device step.

Same tiny model, same global batch (fixed seed), same AdamW: the plain step (dp=1,
tp=1: no collective at all) beside DP x TP emulations (exact collectives, then INQ on
the TP and DP All-Reduces, with error feedback). Interleaved repeats, median and
minimum per variant, ratios to plain measured in the same run.

    python benchmarks/train_step.py [--model tiny] [--dp 4] [--tp 2] [--batch 16]
                                    [--seq-len 64] [--repeats 15] [--out PATH]
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

from scinjax.apps.train import TrainConfig, Trainer

ROOT = pathlib.Path(__file__).resolve().parents[1]


def variants(dp: int, tp: int) -> dict[str, dict]:
    q = dict(tp_collective="scin:int8", tp_backward="scin:int8", dp_collective="scin:int8")
    return {
        "plain (dp1 x tp1)": dict(dp=1, tp=1),
        f"exact dp{dp} x tp{tp}": dict(dp=dp, tp=tp),
        f"scin:int8 dp{dp} x tp{tp}": dict(dp=dp, tp=tp, **q),
        f"scin:int8+ef dp{dp} x tp{tp}": dict(dp=dp, tp=tp, error_feedback=True, **q),
    }


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", default="tiny")
    p.add_argument("--dp", type=int, default=4)
    p.add_argument("--tp", type=int, default=2)
    p.add_argument("--batch", type=int, default=16)
    p.add_argument("--seq-len", type=int, default=64)
    p.add_argument("--repeats", type=int, default=15)
    p.add_argument("--out", default=str(ROOT / "results" / "train_step.json"))
    args = p.parse_args()

    runs = {}
    for name, kw in variants(args.dp, args.tp).items():
        cfg = TrainConfig(
            model=args.model, batch=args.batch, seq_len=args.seq_len, steps=1, seed=0, **kw
        )
        trainer = Trainer(cfg)
        state = trainer.init_state()
        tokens = jnp.asarray(trainer.data()[0])
        key = jax.random.key(0)
        t0 = time.perf_counter()
        jax.block_until_ready(trainer.step(*state, tokens, key))  # compile + first run
        runs[name] = dict(trainer=trainer, state=state, tokens=tokens, key=key)
        runs[name]["compile_s"] = time.perf_counter() - t0
        runs[name]["times"] = []
    for _ in range(args.repeats):  # interleaved: every variant sees the same machine load
        for r in runs.values():
            t0 = time.perf_counter()
            jax.block_until_ready(r["trainer"].step(*r["state"], r["tokens"], r["key"]))
            r["times"].append(time.perf_counter() - t0)

    plain = next(iter(runs.values()))
    p_med, p_min = statistics.median(plain["times"]), min(plain["times"])
    head = f"{'variant':<28}{'median ms':>11}{'min ms':>9}{'x plain (med)':>15}"
    head += f"{'x plain (min)':>15}{'compile s':>11}"
    print(head + "\n" + "-" * len(head))
    out = {
        "model": args.model,
        "batch": args.batch,
        "seq_len": args.seq_len,
        "repeats": args.repeats,
        "machine": platform.processor() or platform.machine(),
        "devices": str(jax.devices()),
        "variants": {},
    }
    for name, r in runs.items():
        med, mn = statistics.median(r["times"]), min(r["times"])
        print(
            f"{name:<28}{med * 1e3:>11.2f}{mn * 1e3:>9.2f}{med / p_med:>15.2f}"
            f"{mn / p_min:>15.2f}{r['compile_s']:>11.2f}"
        )
        out["variants"][name] = dict(
            median_s=med,
            min_s=mn,
            ratio_median=med / p_med,
            ratio_min=mn / p_min,
            compile_s=r["compile_s"],
            times_s=r["times"],
        )
    path = pathlib.Path(args.out)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(out, indent=1))
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
