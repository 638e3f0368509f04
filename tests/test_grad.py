"""Gradients of the emulated collectives (docs/semantics.md, "Gradients").

References written here: the transpose of "every rank receives sum_i x_i" sends each
rank the sum of all ranks' cotangents, reduced by tests/reference_np.py (fixed-order
float32, or the quantized SCIN reference for a quantized backward); closed-form
derivatives in float64; central finite differences; lax.psum's own gradient where the
arithmetic is the same (N = 2, float32).
"""

from __future__ import annotations

import math
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


def rank_data(n, shape, seed, dtype=np.float32):
    rng = np.random.default_rng(seed)
    return (rng.standard_normal((n, *shape)) * rng.uniform(0.5, 2.0)).astype(dtype)


def vgrad(fn, xs, w):
    """d/dxs of sum(w * vmap(fn)(xs)) (each rank's copy of the output weighted by w)."""

    def loss(xs):
        return jnp.sum(w * jax.vmap(fn, axis_name=AX)(xs).astype(jnp.float32))

    return np.asarray(jax.jit(jax.grad(loss))(xs))


# ------------------------------------------------------------------ the transpose


@pytest.mark.parametrize("n", [2, 3])
@pytest.mark.parametrize(
    "spec", ["exact", "ring", "one_shot", "two_shot", "nvls", "scin", "scin:int8", "two_shot:int8"]
)
def test_cotangent_is_exact_allreduce_of_output_cotangents(spec, n):
    xs = rank_data(n, (3, 40), seed=n)
    w = rank_data(n, (3, 40), seed=100 + n)
    got = vgrad(lambda x: scinjax.allreduce(x, AX, scinjax.Collective.parse(spec)), xs, w)
    want = R.allreduce(w, "exact")  # dx_i = sum_r w_r, fixed-order float32
    for r in range(n):
        assert_bits(got[r], want, f"{spec} N={n} rank {r}")


@pytest.mark.parametrize("back", ["scin:int8", "scin:mxint8", "two_shot:int8", "ring"])
def test_backward_collective_is_emulated(back):
    n = 4
    xs = rank_data(n, (2, 64), seed=1)
    w = rank_data(n, (2, 64), seed=2)
    fn = lambda x: scinjax.allreduce(x, AX, "scin", uplink="int8", downlink="int8", backward=back)  # noqa: E731
    got = vgrad(fn, xs, w)
    alg, _, fmt = back.partition(":")
    kw = dict(uplink=fmt, downlink=fmt) if fmt else {}
    want = R.allreduce(w, alg, **kw)
    for r in range(n):
        assert_bits(got[r], want, f"backward {back} rank {r}")


def test_bf16_pytree_cotangents_keep_dtype():
    n = 3
    xs = {"a": rank_data(n, (2, 8), 3).astype(jnp.bfloat16), "b": rank_data(n, (5,), 4)}
    ws = {"a": rank_data(n, (2, 8), 5).astype(jnp.bfloat16), "b": rank_data(n, (5,), 6)}

    def loss(xs):
        ys = jax.vmap(lambda t: scinjax.allreduce(t, AX, "ring"), axis_name=AX)(xs)
        return sum(jnp.sum((ws[k] * ys[k]).astype(jnp.float32)) for k in ys)

    g = jax.grad(loss)(xs)
    assert g["a"].dtype == jnp.bfloat16 and g["b"].dtype == jnp.float32
    for k in xs:
        # the cotangent of y_r is w_r (in y's dtype); its exact sum, rounded to the dtype
        want = R.allreduce(np.asarray(ws[k]), "exact")
        for r in range(n):
            assert_bits(np.asarray(g[k][r]), want, f"leaf {k} rank {r}")


# ------------------------------------------------------------------ straight-through


@pytest.mark.parametrize("spec", ["scin:int8", "two_shot:int8", "scin:bf16/int4"])
def test_ste_false_gives_the_true_zero_derivative(spec):
    xs = rank_data(2, (2, 32), 7)
    w = rank_data(2, (2, 32), 8)
    fn = lambda x: scinjax.allreduce(x, AX, scinjax.Collective.parse(spec), ste=False)  # noqa: E731
    assert not np.any(vgrad(fn, xs, w))
    # unquantized algorithms are sums whatever ste says
    fn = lambda x: scinjax.allreduce(x, AX, "nvls", ste=False)  # noqa: E731
    assert_bits(vgrad(fn, xs, w)[0], R.allreduce(w, "exact"), "nvls ste=False")


@pytest.mark.parametrize("fmt", ["int8", "mxint8", "int4", "bf16"])
def test_quantize_dequantize_straight_through(fmt):
    x = jnp.asarray(rank_data(1, (3, 40), 9)[0])
    w = jnp.asarray(rank_data(1, (3, 40), 10)[0])

    def loss(x, ste):
        q = scinjax.quantize(x, fmt, ste=ste)
        return jnp.sum(w * scinjax.dequantize(q))

    grad = jax.jit(jax.grad(loss), static_argnums=1)
    assert_bits(np.asarray(grad(x, True)), np.asarray(w), f"{fmt} STE")
    assert not np.any(np.asarray(grad(x, False)))
    # dequantize(ste=False) ignores a kept source; the forward bits never change
    q = jax.jit(lambda x: scinjax.quantize(x, fmt))(x)
    g = jax.jit(
        jax.grad(lambda x: jnp.sum(w * scinjax.dequantize(scinjax.quantize(x, fmt), ste=False)))
    )(x)
    assert not np.any(np.asarray(g))
    want = R.dequantize(*R.quantize(np.asarray(x), R.get(fmt)), R.get(fmt))
    assert_bits(np.asarray(jax.jit(scinjax.dequantize)(q)), want, f"{fmt} forward")


# ------------------------------------------------------------------ against calculus


def test_gradient_matches_closed_form_and_finite_differences():
    n, shape = 3, (2, 6)
    xs = rank_data(n, shape, 11)
    w = rank_data(n, shape, 12)

    def loss(xs):
        y = jax.vmap(lambda x: scinjax.allreduce(x, AX, "exact"), axis_name=AX)(xs)
        return jnp.sum(w * jnp.tanh(0.3 * y))

    g = np.asarray(jax.grad(loss)(xs), np.float64)
    # closed form: dL/dx_i = sum_r w_r * 0.3 * (1 - tanh^2(0.3 * sum_j x_j))
    y = xs.astype(np.float64).sum(0)
    want = (w.astype(np.float64) * 0.3 * (1 - np.tanh(0.3 * y) ** 2)).sum(0)
    for r in range(n):
        np.testing.assert_allclose(g[r], want, rtol=2e-5, atol=1e-6)
    # central differences in float32 along random directions
    rng = np.random.default_rng(13)
    for _ in range(3):
        d = rng.standard_normal(xs.shape).astype(np.float32)
        eps = 1e-2
        fd = (float(loss(xs + eps * d)) - float(loss(xs - eps * d))) / (2 * eps)
        assert math.isclose(fd, float(np.sum(g * d)), rel_tol=2e-3, abs_tol=2e-3), fd


# ------------------------------------------------------------------ against lax.psum


def _layers(reduce, depth, remat):
    """A depth-layer scan of linear layers: x <- reduce(x) * a_k per rank."""

    def layer(x, a):
        return reduce(x) * a, None

    if remat:
        layer = jax.checkpoint(layer)

    def per_rank(x, a):
        return lax.scan(layer, x, a)[0]

    return per_rank


@pytest.mark.parametrize("remat", [False, True])
def test_scan_and_remat_gradients_match_numpy(remat):
    n, depth = 3, 3
    xs = rank_data(n, (2, 16), 14)
    a = rank_data(n, (depth, 2, 16), 15)  # per-rank weights [N, depth, ...]
    w = rank_data(n, (2, 16), 16)
    body = _layers(lambda v: scinjax.allreduce(v, AX, "scin:int8"), depth, remat)

    def loss(xs, a):
        return jnp.sum(w * jax.vmap(body, axis_name=AX)(xs, a))

    dx, da = jax.jit(jax.grad(loss, argnums=(0, 1)))(xs, a)
    # NumPy: forward with the SCIN reference, backward as the transposes (STE, exact sums)
    ys, x = [], xs
    for k in range(depth):
        y = R.allreduce(x, "scin", uplink="int8", downlink="int8")  # every rank's copy
        ys.append(y)
        x = y[None] * a[:, k]
    u, want_da = w, np.zeros_like(a)
    for k in reversed(range(depth)):
        want_da[:, k] = u * ys[k][None]
        u = np.broadcast_to(R.allreduce(u * a[:, k], "exact"), u.shape)
    assert_bits(np.asarray(da), want_da, f"da remat={remat}")
    assert_bits(np.asarray(dx), np.asarray(u), f"dx remat={remat}")


@pytest.mark.parametrize("remat", [False, True])
def test_bit_identical_to_psum_gradient_n2(remat):
    """N = 2 float32: one add in either order, so lax.psum's gradient is the same bits.

    The loss is linear in the reduced output: XLA contracts a multiply feeding lax.psum's
    transposed sum into an FMA (not the collective's arithmetic; our per-rank chain is
    checked against NumPy above). Past a nonlinearity the two differ in rounding only:
    lax.psum's output is one unbatched array under vmap, so JAX sums the ranks'
    cotangents before the derivative, ``(sum_r g_r) * f'(y)``, ours after it.
    """
    n = 2
    xs = rank_data(n, (4, 16), 17)
    w = rank_data(n, (4, 16), 19)

    def grad_of(reduce):
        body = jax.checkpoint(reduce) if remat else reduce
        f = lambda xs: jnp.sum(w * jax.vmap(body, axis_name=AX)(xs))  # noqa: E731
        return np.asarray(jax.jit(jax.grad(f))(xs))

    ours = grad_of(lambda v: scinjax.allreduce(v, AX, "exact"))
    theirs = grad_of(lambda v: lax.psum(v, AX))
    assert_bits(ours, theirs, f"remat={remat}")


def test_grad_under_vmap_of_grad_and_jit():
    """grad inside vmap (per-rank losses): dx_i = sum_r g_r still."""
    n = 3
    xs = rank_data(n, (8,), 17)
    w = rank_data(n, (8,), 18)

    def per_rank(x, w):
        return jax.grad(lambda x: jnp.sum(w * scinjax.allreduce(x, AX, "scin:int8")))(x)

    got = np.asarray(jax.jit(jax.vmap(per_rank, axis_name=AX))(xs, w))
    for r in range(n):
        assert_bits(got[r], R.allreduce(w, "exact"), f"rank {r}")


# ------------------------------------------------------------------ errors


def test_jvp_raises_a_clear_error():
    xs = jnp.ones((2, 4))
    f = jax.vmap(lambda x: scinjax.allreduce(x, AX, "exact"), axis_name=AX)
    with pytest.raises(TypeError, match="forward-mode"):
        jax.jvp(f, (xs,), (xs,))


def test_bad_backward_options():
    xs = jnp.ones((2, 4))
    run = lambda **kw: jax.vmap(lambda x: scinjax.allreduce(x, AX, "exact", **kw), axis_name=AX)(xs)  # noqa: E731
    with pytest.raises(TypeError, match="backward must be"):
        run(backward=3)
    with pytest.raises(ValueError, match="unknown algorithm"):
        run(backward="tree")
    with pytest.raises(ValueError, match="backward collective .* key"):
        run(
            backward=scinjax.Collective.parse("scin:int8").__class__(
                algorithm="scin", uplink=scinjax.formats.get("int8", rounding="stochastic")
            )
        )
    with pytest.raises(TypeError, match="ste must be"):
        run(ste="yes")
    with pytest.raises(TypeError, match="ste must be"):
        scinjax.quantize(jnp.ones(4), "int8", ste=1)


def test_stochastic_backward_draws_its_own_stream():
    n = 2
    xs = rank_data(n, (64,), 19)
    w = rank_data(n, (64,), 20)
    back = scinjax.Collective(
        algorithm="scin", uplink=scinjax.formats.get("int8", rounding="stochastic")
    )
    key = jax.random.key(3)
    fn = lambda x: scinjax.allreduce(x, AX, "exact", backward=back, key=key)  # noqa: E731
    g1, g2 = vgrad(fn, xs, w), vgrad(fn, xs, w)
    assert_bits(g1, g2, "same key, same bits")
    assert_bits(g1[0], g1[1], "every rank receives the same cotangent")
    # within one block-scale step of the exact sum of the cotangents
    exact = R.allreduce(w, "exact")
    assert np.max(np.abs(g1[0] - exact)) <= 2 * np.max(np.abs(w)) / 127 + 1e-6


# ------------------------------------------------------------------ traffic


def _scan_model(spec, remat, backward="exact"):
    coll = scinjax.Collective.parse(spec)

    def layer(c, _):
        return jnp.tanh(scinjax.allreduce(c, AX, coll, label="mlp", backward=backward)), None

    if remat:
        layer = jax.checkpoint(layer)

    def loss(xs):
        out = jax.vmap(lambda x: lax.scan(layer, x, None, length=6)[0], axis_name=AX)(xs)
        return jnp.sum(out**2)

    return loss


@pytest.mark.parametrize("remat", [False, True])
@pytest.mark.parametrize("spec", ["scin", "scin:int8"])
def test_traffic_of_grad_counts_each_phase_once(spec, remat):
    n, h = 4, 40
    x = jax.ShapeDtypeStruct((n, 3, h), jnp.float32)
    rep = scinjax.count_traffic(jax.grad(_scan_model(spec, remat)), x)
    phases = {r.phase: r for r in rep.records}
    want_phases = {"forward", "backward"} | ({"recompute"} if remat else set())
    assert set(phases) == want_phases and len(rep.records) == len(want_phases), rep.table()
    elems = 3 * h
    fwd, bwd = phases["forward"], phases["backward"]
    assert fwd.calls == 6 and bwd.calls == 6, rep.table()
    assert str(fwd.collective) == spec and bwd.collective == "exact"
    assert bwd.label == fwd.label == "mlp"
    if spec == "scin:int8":  # per row: 40 codes + 2 blocks of float16 scales
        assert fwd.up == fwd.down == (3 * (h + 2 * 2),) * n
    else:
        assert fwd.up == (elems * 4,) * n
    assert bwd.up == bwd.down == (elems * 4,) * n  # the exact float32 cotangent
    if remat:  # the forward All-Reduce is run again in the backward pass
        assert phases["recompute"].calls == 6 and phases["recompute"].up == fwd.up
    assert rep.calls == 6 * len(want_phases)
    assert "mlp/backward" in rep.table()


def test_traffic_of_quantized_backward():
    n = 2
    x = jax.ShapeDtypeStruct((n, 1, 64), jnp.float32)
    rep = scinjax.count_traffic(jax.grad(_scan_model("exact", False, "scin:int8")), x)
    bwd = [r for r in rep.records if r.phase == "backward"]
    assert len(bwd) == 1 and bwd[0].collective == "scin:int8" and bwd[0].calls == 6
    assert bwd[0].up == (64 + 2 * 2,) * n


# ------------------------------------------------------------------ shard_map

SHARD_MAP_SCRIPT = textwrap.dedent(
    """
    import sys
    import jax, jax.numpy as jnp, numpy as np
    from jax.sharding import Mesh, PartitionSpec as P
    sys.path.insert(0, TESTS_DIR)
    import reference_np as R
    from reference_np import assert_bits
    import scinjax

    N = 8
    mesh = Mesh(np.array(jax.devices()[:N]), ("tp",))
    rng = np.random.default_rng(0)
    xs = rng.standard_normal((N, 3, 40)).astype(np.float32)
    w = rng.standard_normal((N, 3, 40)).astype(np.float32)
    for spec, back in [("exact", "exact"), ("scin:int8", "exact"), ("scin:int8", "scin:int8")]:
        coll = scinjax.Collective.parse(spec)
        one = lambda x: scinjax.allreduce(x, "tp", coll, backward=back)
        per_dev = lambda x: one(x[0])[None]
        sm = jax.shard_map(per_dev, mesh=mesh, in_specs=P("tp"), out_specs=P("tp"))
        g_sm = jax.jit(jax.grad(lambda xs: jnp.sum(w * sm(xs))))(xs)
        g_vm = jax.jit(jax.grad(lambda xs: jnp.sum(w * jax.vmap(one, axis_name="tp")(xs))))(xs)
        alg, _, fmt = back.partition(":")
        want = R.allreduce(w, alg, **(dict(uplink=fmt, downlink=fmt) if fmt else {}))
        for r in range(N):
            assert_bits(np.asarray(g_sm)[r], want, f"shard_map {spec}/{back} rank {r}")
            assert_bits(np.asarray(g_vm)[r], want, f"vmap {spec}/{back} rank {r}")
        print("ok", spec, back, flush=True)
    print("ALL OK")
    """
)


def test_grad_under_shard_map_matches_vmap_and_reference():
    p = run_on_host_devices(SHARD_MAP_SCRIPT)
    assert p.returncode == 0 and "ALL OK" in p.stdout, p.stdout + "\n" + p.stderr[-6000:]
