"""The model under `jax.shard_map` on 8 fake CPU devices equals the vmap emulation.

The device count must be set before jax starts, so the check runs in a
subprocess with XLA_FLAGS=--xla_force_host_platform_device_count=8.
"""

from __future__ import annotations

import json
import textwrap

import pytest
from host_devices import run_on_host_devices

# Same bound as tests/test_model_tp.py (float32 reassociation only; see there).
EXACT_ULPS = 32
F32_ULP = 2.0**-23

SCRIPT = textwrap.dedent(
    """
    import json
    import jax
    import numpy as np
    from scinjax.models import build_model, get_config, random_weights

    assert len(jax.devices()) == 8, jax.devices()
    c = get_config("tiny-gqa")  # 9 query / 3 kv heads: uneven splits at N = 3 (kv) and 8
    w = random_weights(c, seed=1)
    ids = np.random.default_rng(0).integers(0, c.vocab_size, 24)
    ref = build_model(c, w).logits(ids)
    out = {"scale": float(np.abs(ref).max()), "cases": {}}
    for n, coll in [(3, "exact"), (8, "exact"), (8, "scin:int8")]:
        sm = build_model(c, w, tp=n, collective=coll, mode="shard_map")
        a = sm.logits(ids)
        v = build_model(c, w, tp=n, collective=coll).logits(ids)
        devices = {d.id for leaf in jax.tree.leaves(sm.params) for d in leaf.devices()}
        out["cases"][f"{n}-{coll}"] = {
            "vs_vmap": float(np.abs(a - v).max()),
            "vs_plain": float(np.abs(a - ref).max()),
            "finite": bool(np.isfinite(a).all()),
            "devices": len(devices),
        }
    sm = build_model(c, w, tp=3, mode="shard_map")
    out["greedy"] = [sm.greedy([1, 2, 3], 4), build_model(c, w, tp=3).greedy([1, 2, 3], 4)]
    print("RESULT" + json.dumps(out))
    """
)


@pytest.fixture(scope="module")
def result():
    proc = run_on_host_devices(SCRIPT)
    assert proc.returncode == 0, proc.stderr[-4000:]
    line = next(x for x in proc.stdout.splitlines() if x.startswith("RESULT"))
    return json.loads(line[len("RESULT") :])


@pytest.mark.parametrize("case", ["3-exact", "8-exact"])
def test_shard_map_exact_matches(result, case):
    r = result["cases"][case]
    bound = EXACT_ULPS * F32_ULP * result["scale"]
    assert r["devices"] == int(case.split("-")[0])  # weights really live on N devices
    assert r["vs_vmap"] <= bound and r["vs_plain"] <= bound


def test_shard_map_int8_matches(result):
    # Quantized links round the partial sums, which the two programs compute with
    # float32 matmuls of different shapes (per rank vs all ranks at once); a last-bit
    # difference can move one int8 code, so allow the size of one quantization step
    # of the logits (measured ~4e-3 relative between int8 and exact).
    r = result["cases"]["8-scin:int8"]
    assert r["finite"] and r["devices"] == 8
    assert r["vs_vmap"] <= 2e-2 * result["scale"]


def test_shard_map_greedy(result):
    sharded, emulated = result["greedy"]
    assert sharded == emulated and len(sharded) == 4
