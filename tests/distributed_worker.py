"""One process of a multi-process run (docs/distributed.md): JAX's own runtime only.

    python tests/distributed_worker.py PROCESS_ID NUM_PROCESSES PORT [OUT.json]

Each process brings 4 fake CPU devices (set XLA_FLAGS before JAX starts, done here),
``jax.distributed.initialize`` joins them into one 8-device mesh, and the collectives
(All-Reduce, reduce-scatter, all-gather, exact and INQ) and the tensor-parallel model run
under ``shard_map`` across the processes. Every process also runs the same programs as
the single-device vmap emulation and checks the bits agree; process 0 writes the summary.
"""

from __future__ import annotations

import json
import os
import sys
import time

LOCAL_DEVICES = 4
T_START = time.perf_counter()


def main(process_id: int, num_processes: int, port: int, out_path: str | None) -> int:
    os.environ["XLA_FLAGS"] = f"--xla_force_host_platform_device_count={LOCAL_DEVICES}"
    os.environ.setdefault("JAX_PLATFORMS", "cpu")
    import jax

    jax.config.update("jax_cpu_collectives_implementation", "gloo")
    jax.distributed.initialize(
        coordinator_address=f"127.0.0.1:{port}",
        num_processes=num_processes,
        process_id=process_id,
        local_device_ids=list(range(LOCAL_DEVICES)),
    )
    import jax.numpy as jnp
    import numpy as np
    from jax.experimental import multihost_utils
    from jax.sharding import Mesh
    from jax.sharding import PartitionSpec as P
    from scinjax.models import build_model, get_config, random_weights

    import scinjax

    report = {"init_seconds": round(time.perf_counter() - T_START, 2)}
    t0 = time.perf_counter()
    devices = jax.devices()
    n = len(devices)
    assert n == LOCAL_DEVICES * num_processes, devices
    mesh = Mesh(np.asarray(devices), ("tp",))
    rng = np.random.default_rng(0)  # the same data in every process
    xs = rng.standard_normal((n, 16, 40)) * np.exp2(rng.integers(-6, 14, (n, 16, 40)))
    xs = jnp.asarray(xs.astype(np.float32)).astype(jnp.bfloat16)

    ops = {
        "allreduce[ring]": lambda x: scinjax.allreduce(x, "tp", "ring"),
        "allreduce[scin:int8]": lambda x: scinjax.allreduce(
            x, "tp", scinjax.Collective.parse("scin:int8")
        ),
        "reduce_scatter[exact]": lambda x: scinjax.reduce_scatter(x, "tp", "exact"),
        "reduce_scatter[scin:int8]": lambda x: scinjax.reduce_scatter(x, "tp", "scin:int8"),
        "all_gather[scin:int8]": lambda x: scinjax.all_gather(x, "tp", "scin:int8"),
    }
    report.update(devices=n, processes=jax.process_count(), checks={})
    for name, op in ops.items():
        vm = np.asarray(jax.jit(jax.vmap(op, axis_name="tp"))(xs))  # [N, ...] one device

        def per_device(x, op=op):
            return op(x[0])[None]

        sharded = jax.device_put(xs, jax.sharding.NamedSharding(mesh, P("tp")))
        sm = jax.jit(jax.shard_map(per_device, mesh=mesh, in_specs=P("tp"), out_specs=P("tp")))(
            sharded
        )
        got = np.asarray(multihost_utils.process_allgather(sm, tiled=True))
        same = bool(np.array_equal(got.view(np.uint16), vm.view(np.uint16)))
        report["checks"][name] = same
        report.setdefault("stage_seconds", {})[name] = round(time.perf_counter() - t0, 2)

    c = get_config("tiny")
    w = random_weights(c, seed=1)
    ids = np.random.default_rng(1).integers(0, c.vocab_size, 8)
    for coll in ("scin:int8",):  # the collective's bits decide: shard_map == vmap exactly
        a = build_model(c, w, tp=n, collective=coll, mode="shard_map", mesh=mesh).logits(ids)
        v = build_model(c, w, tp=n, collective=coll).logits(ids)
        report["checks"][f"model[{coll}]"] = bool(np.array_equal(a, v))
        report["stage_seconds"][coll] = round(time.perf_counter() - t0, 2)
    report["seconds"] = round(time.perf_counter() - t0, 2)
    if process_id == 0:
        text = json.dumps(report, indent=1)
        print("RESULT " + json.dumps(report), flush=True)
        if out_path:
            with open(out_path, "w") as fh:
                fh.write(text)
    jax.distributed.shutdown()
    return 0


if __name__ == "__main__":
    pid, nproc, port = (int(a) for a in sys.argv[1:4])
    sys.exit(main(pid, nproc, port, sys.argv[4] if len(sys.argv) > 4 else None))
