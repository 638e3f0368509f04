"""scinjax.psum and scinjax.emulate: an unmodified lax.psum program, rewritten, gives the
bits of the hand-ported program (scinjax.allreduce / scinjax.psum written in by hand),
under vmap here and under shard_map (out_specs=P(), check_vma=True) in a subprocess with
8 fake CPU devices. Reductions are checked against tests/reference_np.py."""

from __future__ import annotations

import textwrap

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import reference_np as R
from host_devices import run_on_host_devices
from jax import lax
from reference_np import assert_bits

import scinjax

AX = "tp"
N, T, D, F, HEADS, HD = 4, 5, 16, 32, 4, 4  # HEADS per model, split over N ranks


def psum_reduce(v):
    return lax.psum(v, AX)


def tp_block(p, x, reduce=psum_reduce):
    """A LLaMA-style TP block on one rank, written with lax.psum only.

    x [T, D] replicated; p: this rank's shards (wq/wk/wv [D, h*HD], wo [h*HD, D],
    w1/w3 [D, F/N], w2 [F/N, D]).
    """

    def rms(v):
        return v * lax.rsqrt(jnp.mean(v * v, -1, keepdims=True) + 1e-6)

    h = rms(x)
    q, k, v = (jnp.dot(h, p[w]).reshape(T, -1, HD) for w in ("wq", "wk", "wv"))
    s = jnp.einsum("qhd,khd->hqk", q, k) / np.sqrt(HD)
    s = jnp.where(jnp.tril(jnp.ones((T, T), bool)), s, -1e9)
    o = jnp.einsum("hqk,khd->qhd", jax.nn.softmax(s, -1), v).reshape(T, -1)
    x = x + reduce(jnp.dot(o, p["wo"]))
    h = rms(x)
    return x + reduce(jnp.dot(jax.nn.silu(jnp.dot(h, p["w1"])) * jnp.dot(h, p["w3"]), p["w2"]))


def make_params(seed=0):
    rng = np.random.default_rng(seed)
    hd = HEADS // N * HD

    def w(*shape):
        return (rng.standard_normal((N, *shape)) / np.sqrt(shape[0])).astype(np.float32)

    p = dict(wq=w(D, hd), wk=w(D, hd), wv=w(D, hd), wo=w(hd, D))
    p.update(w1=w(D, F // N), w3=w(D, F // N), w2=w(F // N, D))
    x = rng.standard_normal((T, D)).astype(np.float32)
    return jax.tree.map(jnp.asarray, p), jnp.asarray(x)


def run_vmap(fn, p, x):
    return jax.jit(jax.vmap(fn, in_axes=(0, None), axis_name=AX))(p, x)


@pytest.mark.parametrize("spec", ["exact", "scin:int8"])
def test_emulated_block_equals_hand_port(spec):
    p, x = make_params()
    coll = scinjax.Collective.parse(spec)
    got = run_vmap(scinjax.emulate(tp_block, spec), p, x)
    hand = run_vmap(lambda p, x: tp_block(p, x, lambda v: scinjax.allreduce(v, AX, coll)), p, x)
    for r in range(N):
        assert_bits(np.asarray(got[r]), np.asarray(hand[r]), f"{spec} rank {r}")
    # the emulated reductions are the spec's: the last one against the NumPy reference
    partials = run_vmap(lambda p, x: _mlp_partial(p, x, coll), p, x)
    want = R.allreduce(np.asarray(partials[0]), coll.algorithm, **_ref_links(coll))
    assert_bits(np.asarray(partials[1][0]), want, f"{spec} second reduction")


def _mlp_partial(p, x, coll):
    """(per-rank MLP partial sums, their emulated reduction) of the block's second psum."""
    seen = []

    def reduce(v):
        seen.append(v)
        return scinjax.allreduce(v, AX, coll)

    tp_block(p, x, reduce)
    return seen[1], reduce(seen[1])


def _ref_links(coll):
    return {} if not coll.quantized else dict(uplink=coll.uplink.name, downlink=coll.downlink.name)


def test_gradient_and_traffic_of_emulated_block():
    p, x = make_params(1)
    spec = "scin:int8"

    def loss(fn):
        return lambda p: jnp.sum(jax.vmap(fn, in_axes=(0, None), axis_name=AX)(p, x) ** 2)

    hand = lambda p, x: tp_block(p, x, lambda v: scinjax.allreduce(v, AX, spec))  # noqa: E731
    g_emu = jax.jit(jax.grad(loss(scinjax.emulate(tp_block, spec))))(p)
    g_hand = jax.jit(jax.grad(loss(hand)))(p)
    for k in p:
        assert_bits(np.asarray(g_emu[k]), np.asarray(g_hand[k]), f"grad {k}")
        assert np.any(np.asarray(g_emu[k]))  # straight-through: not the silent zero
    rep = scinjax.count_traffic(jax.grad(loss(scinjax.emulate(tp_block, spec))), p)
    by_phase = {}
    for r in rep.records:
        by_phase.setdefault(r.phase, []).append(r)
    assert [r.label for r in by_phase["forward"]] == ["psum0", "psum1"]
    assert all(r.collective == "scin:int8" and r.calls == 1 for r in by_phase["forward"])
    assert sorted(r.label for r in by_phase["backward"]) == ["psum0", "psum1"]
    assert all(r.collective == "exact" for r in by_phase["backward"])
    # closed form: [T, D] float32; int8 codes + one float16 scale per 32-block per row
    assert by_phase["forward"][0].up == (T * (D + 2),) * N
    assert by_phase["backward"][0].up == (T * D * 4,) * N


def test_policy_by_order_axis_and_keep():
    p, x = make_params(2)

    def by_order(site):
        return "scin:int8" if site.index == 0 else "ring"

    rep = scinjax.count_traffic(
        jax.vmap(scinjax.emulate(tp_block, policy=by_order), in_axes=(0, None), axis_name=AX),
        p,
        x,
    )
    assert [r.collective for r in rep.records] == ["scin:int8", "ring"]
    rep = scinjax.count_traffic(
        jax.vmap(scinjax.emulate(tp_block, policy={AX: "nvls"}), in_axes=(0, None), axis_name=AX),
        p,
        x,
    )
    assert [r.collective for r in rep.records] == ["nvls", "nvls"]
    # axis_names that do not match keep lax.psum: nothing emulated, same bits as plain
    kept = scinjax.emulate(tp_block, "scin:int8", axis_names=("dp",))
    assert scinjax.count_traffic(jax.vmap(kept, (0, None), axis_name=AX), p, x).calls == 0
    assert_bits(np.asarray(run_vmap(kept, p, x)), np.asarray(run_vmap(tp_block, p, x)), "kept")
    with pytest.raises(TypeError, match="policy must be"):
        scinjax.emulate(tp_block, policy=3)


def test_rewrites_inside_control_flow():
    """psums inside jit, scan, while, cond, checkpoint and custom_vjp are all rewritten."""

    @jax.custom_vjp
    def clipped(v):
        return lax.psum(v, AX)

    clipped.defvjp(lambda v: (clipped(v), None), lambda _, g: (jnp.clip(g, -1, 1),))

    def program(x, reduce):
        @jax.jit
        def inner(v):
            return reduce(v) * 0.5

        def layer(c, a):
            return jax.checkpoint(lambda c: jnp.tanh(reduce(c * a)))(c), None

        y = lax.scan(layer, inner(x), jnp.arange(1.0, 4.0))[0]
        y = lax.cond(jnp.sum(y) > 0, lambda v: reduce(v), lambda v: -reduce(v), y)
        y = lax.while_loop(lambda c: c[1] < 2, lambda c: (reduce(c[0]) * 0.25, c[1] + 1), (y, 0))[0]
        return y + (clipped(y) if reduce is psum_reduce else reduce(y))

    xs = jnp.asarray(np.random.default_rng(3).standard_normal((N, 40)).astype(np.float32))
    spec = "scin:int8"
    got = jax.jit(jax.vmap(scinjax.emulate(lambda x: program(x, psum_reduce), spec), axis_name=AX))(
        xs
    )
    hand = jax.jit(
        jax.vmap(lambda x: program(x, lambda v: scinjax.psum(v, AX, collective=spec)), axis_name=AX)
    )(xs)
    assert_bits(np.asarray(got), np.asarray(hand), "control flow")
    # traffic of the scan + remat part (cond/while are data-dependent: counted per call)
    scan_only = lambda x: lax.scan(  # noqa: E731
        lambda c, a: (jax.checkpoint(lambda c: lax.psum(c * a, AX))(c), None), x, jnp.ones(6)
    )[0]
    rep = scinjax.count_traffic(jax.vmap(scinjax.emulate(scan_only, spec), axis_name=AX), xs)
    assert rep.calls == 6 and rep.records[0].collective == spec


def test_sequence_parallel_psum_scatter_and_all_gather():
    """lax.psum_scatter / lax.all_gather become scinjax.reduce_scatter / all_gather."""
    xs = jnp.asarray(np.random.default_rng(6).standard_normal((N, 8, 64)).astype(np.float32))

    def sp(x, rs=None, ag=None):
        rs = rs or (lambda v: lax.psum_scatter(v, AX, scatter_dimension=0, tiled=True))
        ag = ag or (lambda v: lax.all_gather(v, AX, axis=0, tiled=True))
        return ag(jnp.tanh(rs(x)))

    spec = "scin:int8"
    got = jax.vmap(scinjax.emulate(sp, spec), axis_name=AX)(xs)
    hand = jax.vmap(
        lambda x: sp(
            x,
            lambda v: scinjax.reduce_scatter(v, AX, spec),
            lambda v: scinjax.all_gather(v, AX, spec),
        ),
        axis_name=AX,
    )(xs)
    assert_bits(np.asarray(got), np.asarray(hand), "sequence parallel")
    rep = scinjax.count_traffic(jax.vmap(scinjax.emulate(sp, spec), axis_name=AX), xs)
    assert [r.collective for r in rep.records] == [f"reduce_scatter[{spec}]", f"all_gather[{spec}]"]

    def other_dims(x):  # scatter along axis 1 (tiled), gather untiled along axis 1
        return lax.all_gather(lax.psum_scatter(x, AX, scatter_dimension=1, tiled=True), AX, axis=1)

    two = xs[:2]  # N = 2 exact: one add, so lax's bits
    got = jax.vmap(scinjax.emulate(other_dims), axis_name=AX)(two)
    assert_bits(np.asarray(got), np.asarray(jax.vmap(other_dims, axis_name=AX)(two)), "dims")
    untiled = lambda x: lax.psum_scatter(x[:2], AX, scatter_dimension=0)  # noqa: E731
    got = jax.vmap(scinjax.emulate(untiled), axis_name=AX)(two)
    assert_bits(np.asarray(got), np.asarray(jax.vmap(untiled, axis_name=AX)(two)), "untiled")


def test_psum_semantics_under_vmap():
    xs = jnp.asarray(np.random.default_rng(4).standard_normal((N, 3, 8)).astype(np.float32))
    tree = {"a": xs, "b": xs[:, 0].astype(jnp.bfloat16), "n": jnp.arange(N)}
    out = jax.vmap(lambda t: scinjax.psum(t, AX, collective="scin:int8"), axis_name=AX)(tree)
    assert_bits(
        np.asarray(out["a"][2]),
        R.allreduce(np.asarray(xs), "scin", uplink="int8", downlink="int8"),
        "a",
    )
    assert out["b"].dtype == jnp.bfloat16
    assert np.all(np.asarray(out["n"]) == N * (N - 1) // 2)  # ints: lax.psum
    assert int(jax.vmap(lambda _: scinjax.psum(1, AX), axis_name=AX)(xs)[0]) == N
    with pytest.raises(ValueError, match="axis_index_groups"):
        jax.vmap(lambda v: scinjax.psum(v, AX, axis_index_groups=[[0, 1]]), axis_name=AX)(xs)


SHARD_MAP_SCRIPT = textwrap.dedent(
    """
    import sys
    import jax, jax.numpy as jnp, numpy as np
    from jax import lax
    from jax.sharding import Mesh, PartitionSpec as P
    sys.path.insert(0, TESTS_DIR)
    import reference_np as R
    from reference_np import assert_bits
    import test_emulate as E
    import scinjax

    assert len(jax.devices()) == 8
    mesh = Mesh(np.array(jax.devices()[: E.N]), ("tp",))
    p, x = E.make_params(5)
    spec = "scin:int8"

    def sharded(fn):
        per = lambda p, x: fn(jax.tree.map(lambda w: w[0], p), x)
        return jax.jit(jax.shard_map(per, mesh=mesh, in_specs=(P("tp"), P()), out_specs=P()))

    plain = sharded(E.tp_block)
    emu = scinjax.emulate(plain, spec)  # the whole jitted shard_map program, unmodified
    hand = sharded(lambda p, x: E.tp_block(p, x, lambda v: scinjax.psum(v, "tp", collective=spec)))
    got, want = emu(p, x), hand(p, x)
    assert got.shape == (E.T, E.D), got.shape
    assert_bits(np.asarray(got), np.asarray(want), "emulate(shard_map) vs hand port")
    vm = E.run_vmap(lambda p, x: E.tp_block(p, x, lambda v: scinjax.allreduce(v, "tp", spec)), p, x)
    assert_bits(np.asarray(got), np.asarray(vm[0]), "shard_map vs vmap")
    rep = scinjax.count_traffic(scinjax.emulate(plain, spec), p, x)
    assert rep.calls == 2 and rep.n_ranks == E.N, rep.table()
    # gradients under shard_map: tests/test_grad.py; of emulate: under vmap above
    # tuple axes (lax.psum semantics): ranks in (dp, tp) row-major order, replicated out
    mesh2 = Mesh(np.array(jax.devices()).reshape(2, 4), ("dp", "tp"))
    vals = np.random.default_rng(7).standard_normal((2, 4, 3, 40)).astype(np.float32)
    both = jax.jit(jax.shard_map(
        lambda v: scinjax.psum(v[0, 0], ("dp", "tp"), collective=spec),
        mesh=mesh2, in_specs=P("dp", "tp"), out_specs=P(),
    ))
    want = R.allreduce(vals.reshape(8, 3, 40), "scin", uplink="int8", downlink="int8")
    assert_bits(np.asarray(both(vals)), want, "tuple axes")
    g = jax.jit(jax.grad(lambda v: jnp.sum(both(v))))(vals)
    assert_bits(np.asarray(g), np.ones_like(vals), "d sum(psum(x)) / dx_i = 1 (replicated out)")
    print("ALL OK")
    """
)


def test_emulate_shard_map_program_with_replicated_out_specs():
    p = run_on_host_devices(SHARD_MAP_SCRIPT)
    assert p.returncode == 0 and "ALL OK" in p.stdout, p.stdout + "\n" + p.stderr[-6000:]
