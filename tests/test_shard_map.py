"""allreduce under jax.shard_map on an 8-device host mesh == vmap emulation == reference.

Runs in a subprocess because the host device count must be set before JAX starts.
"""

from __future__ import annotations

import subprocess
import textwrap

from host_devices import run_on_host_devices

SCRIPT = textwrap.dedent(
    """
    import sys
    import jax, jax.numpy as jnp, numpy as np
    from jax.sharding import Mesh, PartitionSpec as P
    sys.path.insert(0, TESTS_DIR)
    import reference_np as R
    from reference_np import assert_bits
    import scinjax
    from scinjax import formats

    assert len(jax.devices()) == 8, jax.devices()
    CONFIGS = [(a, None, None) for a in scinjax.ALGORITHMS] + [
        ("scin", "int8", "int8"),
        ("two_shot", "int8", "int8"),
        ("scin", "mxint8", "mxint8"),
        ("scin", "bf16", "int4"),
    ]

    def ref_fmt(f):
        f = formats.get(f) if f is not None else None
        if isinstance(f, formats.IntFormat):
            return R.RefInt(f.bits, f.block_size, f.scale_dtype, f.rounding)
        if isinstance(f, formats.CastFormat):
            return R.RefCast(f.dtype)
        return f

    def make_data(N, seed):
        rng = np.random.default_rng(seed)
        a = rng.standard_normal((N, 3, 37)) * np.exp2(rng.integers(-6, 14, (N, 3, 37)))
        c = rng.standard_normal((N, 5)) * np.exp2(rng.integers(-6, 14, (N, 5)))
        return {"a": a.astype(jnp.bfloat16), "c": c.astype(np.float32)}

    def check(N, alg, up, down, seed):
        mesh = Mesh(np.array(jax.devices()[:N]), ("tp",))
        kw = dict(uplink=up, downlink=down) if (up or down) else {}
        one = lambda t: scinjax.allreduce(t, "tp", alg, **kw)
        per_dev = lambda t: jax.tree.map(lambda v: v[None], one(jax.tree.map(lambda v: v[0], t)))
        spec = P("tp")
        sm = jax.jit(
            jax.shard_map(per_dev, mesh=mesh, in_specs=spec, out_specs=spec, check_vma=CHECK_VMA)
        )
        vm = jax.jit(jax.vmap(one, axis_name="tp"))
        tree = make_data(N, seed)
        xs = jax.tree.map(jnp.asarray, tree)
        out_sm = sm(xs)
        out_vm = vm(xs)
        rkw = dict(uplink=ref_fmt(up), downlink=ref_fmt(down)) if kw else {}
        for k, v in tree.items():
            want = R.allreduce(v, alg, **rkw)
            got_sm, got_vm = np.asarray(out_sm[k]), np.asarray(out_vm[k])
            assert len(out_sm[k].sharding.device_set) == N
            for r in range(N):
                what = f"{alg}:{up}/{down} N={N} leaf {k} rank {r}"
                assert_bits(got_sm[r], want, "shard_map vs reference " + what)
                assert_bits(got_vm[r], want, "vmap vs reference " + what)
                assert_bits(got_sm[r], got_vm[r], "shard_map vs vmap " + what)
        print("ok", alg, up, down, N, flush=True)

    def traffic_under_shard_map():
        N, H = 8, 37
        mesh = Mesh(np.array(jax.devices()), ("tp",))

        def per_dev(x):
            y = scinjax.allreduce(x[0], "tp", "scin", uplink="int8", downlink="int8")
            return scinjax.allreduce(y, "tp", "ring")[None]

        sm = jax.shard_map(per_dev, mesh=mesh, in_specs=P("tp"), out_specs=P("tp"))
        rep = scinjax.count_traffic(sm, jax.ShapeDtypeStruct((N, 3, H), jnp.bfloat16))
        n = 3 * H
        s = [n // N + (j < n % N) for j in range(N)]
        ring_up = [(2 * n - s[r] - s[(r + 1) % N]) * 2 for r in range(N)]
        ring_dn = [(2 * n - s[r - 1] - s[r]) * 2 for r in range(N)]
        assert rep.n_ranks == N, rep.n_ranks
        assert list(rep.up_scale) == [3 * 2 * 2] * N, rep.up_scale
        assert list(rep.up_payload) == [n + u for u in ring_up], rep.up_payload
        assert list(rep.down_payload) == [n + d for d in ring_dn], rep.down_payload
        print("ok traffic under shard_map", flush=True)

    traffic_under_shard_map()
    for i, (alg, up, down) in enumerate(CONFIGS):
        check(8, alg, up, down, i)
    check(3, "ring", None, None, 100)
    check(3, "scin", "int8", "int8", 101)
    print("ALL OK")
    """
)


def run_script(check_vma: bool) -> subprocess.CompletedProcess:
    return run_on_host_devices(SCRIPT, CHECK_VMA=check_vma)


def test_shard_map_matches_vmap_and_reference():
    p = run_script(check_vma=True)
    assert p.returncode == 0 and "ALL OK" in p.stdout, p.stdout + "\n" + p.stderr[-6000:]
