"""MoE dispatch/combine under jax.shard_map on 8 host devices == vmap == NumPy reference.

Runs in a subprocess because the host device count must be set before JAX starts.
"""

from __future__ import annotations

import textwrap

from host_devices import run_on_host_devices

SCRIPT = textwrap.dedent(
    """
    import sys
    import jax, jax.numpy as jnp, numpy as np, ml_dtypes
    from jax.sharding import Mesh, PartitionSpec as P
    sys.path.insert(0, TESTS_DIR)
    import reference_np as R
    import reference_moe_np as RM
    from reference_np import assert_bits
    from scinjax.formats import ftz, to_f32
    from scinjax.moe import EPConfig, ep_moe

    assert len(jax.devices()) == 8, jax.devices()
    N, T, K, E, H = 8, 5, 3, 16, 40
    rng = np.random.default_rng(0)
    ex = np.stack([[rng.choice(E, K, replace=False) for _ in range(T)] for _ in range(N)])
    ex[0, :2] = [[0, 1, 5], [0, 1, 2]]  # some tokens with local experts only / partly
    ex = ex.astype(np.int32)
    logits = rng.standard_normal((N, T, K)).astype(np.float32)
    gates = (np.exp(logits) / np.exp(logits).sum(-1, keepdims=True)).astype(np.float32)
    x = (rng.standard_normal((N, T, H)) * 3).astype(ml_dtypes.bfloat16)
    wts = rng.standard_normal((E, H)).astype(np.float32)

    def np_expert(e, rows):
        return R.cast(R.f32_mul(R.to_f32(rows), wts[e]), "bfloat16")

    cfgs = [
        EPConfig(n_experts=E, algorithm=a, dispatch_format=d, combine_format=c, capacity=cap)
        for a, d, c, cap in [
            ("all_to_all", "bf16", "bf16", None),
            ("dedup", "int8", "bf16", 4),
            ("dysharp", "mxint8", "int8", None),
        ]
    ]

    def one(xr, er, gr):
        out = {}
        for c in cfgs:
            _, _, by_rank = c.tables(N)

            def fn(inputs, rank):
                w = jnp.asarray(wts)[jnp.asarray(by_rank)[rank]][:, None, :]
                return ftz(to_f32(inputs) * w).astype(jnp.bfloat16)

            out[c.algorithm] = ep_moe(xr, er, gr, fn, "ep", c)[0]
        return out

    mesh = Mesh(np.array(jax.devices()), ("ep",))
    per_dev = lambda a, b, c: jax.tree.map(lambda v: v[None], one(a[0], b[0], c[0]))
    sm = jax.jit(jax.shard_map(per_dev, mesh=mesh, in_specs=P("ep"), out_specs=P("ep")))
    vm = jax.jit(jax.vmap(one, axis_name="ep"))
    args = (jnp.asarray(x), jnp.asarray(ex), jnp.asarray(gates))
    got_sm, got_vm = sm(*args), vm(*args)
    for c in cfgs:
        want, _ = RM.ep_moe(
            x, ex, gates, np_expert, n_experts=E, algorithm=c.algorithm,
            dispatch_format=c.dispatch_format, combine_format=c.combine_format,
            capacity=c.capacity,
        )
        a, b = np.asarray(got_sm[c.algorithm]), np.asarray(got_vm[c.algorithm])
        assert len(got_sm[c.algorithm].sharding.device_set) == N
        assert_bits(a, want, "shard_map vs reference " + str(c))
        assert_bits(b, want, "vmap vs reference " + str(c))
        assert_bits(a, b, "shard_map vs vmap " + str(c))
    print("ALL OK")
    """
)


def test_moe_shard_map_matches_vmap_and_reference():
    p = run_on_host_devices(SCRIPT)
    assert p.returncode == 0 and "ALL OK" in p.stdout, p.stdout + "\n" + p.stderr[-6000:]
