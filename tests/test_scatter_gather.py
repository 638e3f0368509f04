"""reduce_scatter / all_gather under jax.vmap vs the independent NumPy reference
(tests/reference_sp_np.py), bit for bit; bytes vs the closed forms of docs/semantics.md;
VJPs vs the transposed collective computed by the reference."""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import ml_dtypes
import numpy as np
import pytest
import reference_np as R
import reference_sp_np as S
from jax import lax
from reference_np import assert_bits

import scinjax
from scinjax import formats

AX = "tp"
NPDT = {"float32": np.float32, "bfloat16": ml_dtypes.bfloat16, "float16": np.float16}
STOCH = formats.IntFormat(rounding="stochastic")
REF_STOCH = R.RefInt(STOCH.bits, STOCH.block_size, STOCH.scale_dtype, STOCH.rounding)


def data(seed, N, shape, dt="bfloat16"):
    """[N, *shape] buffers with a wide dynamic range (so the summation order matters)."""
    rng = np.random.default_rng(seed)
    full = (N,) + tuple(shape)
    v = rng.standard_normal(full) * np.exp2(rng.integers(-6, 6 if dt == "float16" else 14, full))
    v[rng.random(full) < 0.03] = 0.0
    return v.astype(NPDT[dt])


@functools.cache
def vfn(kind, coll, with_key=False, **kw):
    op = scinjax.reduce_scatter if kind == "rs" else scinjax.all_gather
    if with_key:
        f = jax.vmap(lambda t, k: op(t, AX, coll, key=k, **kw), (0, None), axis_name=AX)
    else:
        f = jax.vmap(lambda t: op(t, AX, coll, **kw), axis_name=AX)
    return jax.jit(f)


def fold_in_noise(key):
    def noise(stage, index, shape):
        k = jax.random.fold_in(jax.random.fold_in(key, stage), index)
        return np.asarray(jax.random.uniform(k, tuple(shape), jnp.float32))

    return noise


RS_CASES = [
    pytest.param(alg, {}, N, shape, dt, id=f"{alg}-N{N}-{dt}")
    for alg in scinjax.ALGORITHMS
    for N, shape, dt in ((3, (6, 37), "bfloat16"), (4, (8, 5), "float32"))
] + [
    pytest.param("one_shot", {"order": "pairwise"}, 5, (5, 9), "bfloat16", id="pairwise-N5"),
    pytest.param("nvls", {"accumulate": "bfloat16"}, 4, (4, 7), "float16", id="acc-bf16"),
    pytest.param("ring", {"accumulate": "float16"}, 4, (8, 7), "bfloat16", id="ring-acc-f16"),
    pytest.param("scin", {"uplink": "int8", "downlink": "int8"}, 4, (8, 37), "bfloat16", id="i8"),
    pytest.param("scin", {"uplink": "mxint8", "downlink": "int4"}, 3, (6, 70), "float32", id="mx"),
    pytest.param("scin", {"uplink": "bf16", "downlink": "int8"}, 2, (4, 33), "float32", id="bf"),
    pytest.param("scin", {"downlink": "int8"}, 4, (4, 40), "bfloat16", id="none-i8"),
    pytest.param("scin", {"uplink": "int8"}, 4, (16,), "float32", id="i8-none-1d"),
    pytest.param("scin", {"uplink": "int4", "downlink": "int4"}, 2, (64,), "float32", id="1d"),
    pytest.param("exact", {}, 1, (3, 5), "bfloat16", id="N1"),
]


@pytest.mark.parametrize("alg,kw,N,shape,dt", RS_CASES)
def test_reduce_scatter_bits(alg, kw, N, shape, dt):
    xs = data(100 + N, N, shape, dt)
    got = np.asarray(vfn("rs", alg, **kw)(jnp.asarray(xs)))
    want = S.reduce_scatter(xs, alg, **kw)
    assert got.shape == (N, shape[0] // N) + shape[1:]
    assert_bits(got, want, f"reduce_scatter {alg} {kw}")


@pytest.mark.parametrize("alg", ["ring", "one_shot", "two_shot", "nvls", "scin", "exact"])
def test_unquantized_reduce_scatter_is_a_slice_of_allreduce(alg):
    """docs/semantics.md: slice j is chunk j of the same algorithm's All-Reduce."""
    N, shape = 4, (8, 9)
    xs = data(7, N, shape)
    got = np.asarray(vfn("rs", alg)(jnp.asarray(xs)))
    full = R.allreduce(xs, alg)
    assert_bits(got.reshape(shape), full, f"{alg} RS vs AR slices")


AG_CASES = [
    pytest.param(alg, None, N, shape, dt, id=f"{alg}-N{N}")
    for alg in scinjax.ALGORITHMS
    for N, shape, dt in ((3, (2, 37), "bfloat16"), (4, (1, 5), "float16"))
] + [
    pytest.param("scin", "int8", 4, (3, 37), "bfloat16", id="scin-int8"),
    pytest.param("scin", "mxint8", 3, (2, 64), "float32", id="scin-mxint8"),
    pytest.param("scin", "int4", 2, (40,), "float32", id="scin-int4-1d"),
]


@pytest.mark.parametrize("alg,fmt,N,shape,dt", AG_CASES)
def test_all_gather_bits(alg, fmt, N, shape, dt):
    xs = data(200 + N, N, shape, dt)
    coll = alg if fmt is None else f"{alg}:{fmt}"
    got = np.asarray(vfn("ag", coll)(jnp.asarray(xs)))
    want = S.all_gather(xs, alg, fmt=fmt)
    assert got.shape == (N, N * shape[0]) + shape[1:]
    for r in range(N):
        assert_bits(got[r], want, f"all_gather {coll} rank {r}")


def test_stochastic_rounding_follows_the_noise_rule():
    N, shape = 4, (8, 37)
    xs = data(300, N, shape)
    coll = scinjax.Collective(algorithm="scin", uplink=STOCH, downlink=STOCH)
    key = jax.random.key(3)
    rs = np.asarray(vfn("rs", coll, with_key=True)(jnp.asarray(xs), key))
    want = S.reduce_scatter(
        xs, "scin", uplink=REF_STOCH, downlink=REF_STOCH, noise=fold_in_noise(key)
    )
    assert_bits(rs, want, "stochastic reduce_scatter")
    ag = np.asarray(vfn("ag", coll, with_key=True)(jnp.asarray(xs), key))
    want = S.all_gather(xs, "scin", fmt=REF_STOCH, noise=fold_in_noise(key))
    for r in range(N):
        assert_bits(ag[r], want, "stochastic all_gather")
    other = np.asarray(vfn("rs", coll, with_key=True)(jnp.asarray(xs), jax.random.key(4)))
    assert not np.array_equal(rs.view(np.uint16), other.view(np.uint16))


# --------------------------------------------------------------------------- bytes

BYTE_CASES = [(alg, None, None) for alg in scinjax.ALGORITHMS] + [
    ("scin", "int8", "int8"),
    ("scin", "mxint8", "int4"),
    ("scin", None, "int8"),
]


@pytest.mark.parametrize("N", [1, 4, 8])
@pytest.mark.parametrize("alg,up,down", BYTE_CASES)
def test_bytes_closed_form(alg, up, down, N):
    shape, layers = (8 * 3, 70), 3
    coll = scinjax.Collective(algorithm=alg, uplink=up, downlink=down)
    ag_coll = scinjax.Collective(algorithm=alg, uplink=up, downlink=up)

    def per_rank(x):
        def body(c, _):
            y = scinjax.reduce_scatter(c, AX, coll, label="rs")
            return scinjax.all_gather(y, AX, ag_coll, label="ag"), None

        return lax.scan(body, x, None, length=layers)[0]

    x = jax.ShapeDtypeStruct((N,) + shape, jnp.bfloat16)
    rep = scinjax.count_traffic(jax.vmap(per_rank, axis_name=AX), x)
    assert [r.kind for r in rep.records] == ["reduce_scatter", "all_gather"]
    assert [r.calls for r in rep.records] == [layers, layers]
    rs_up, rs_down = S.rs_bytes(alg, N, shape, 2, up, down)
    sliced = (shape[0] // N, shape[1])
    ag_up, ag_down = S.ag_bytes(alg, N, sliced, 2, up)
    assert rep.up == (layers * (rs_up + ag_up),) * N
    assert rep.down == (layers * (rs_down + ag_down),) * N
    rec = scinjax.traffic.scatter_gather_record(
        "reduce_scatter", coll, n_ranks=N, shape=shape, calls=layers, label="rs"
    )
    assert rec == rep.records[0]


def test_nvls_rs_plus_ag_moves_the_allreduce_bytes():
    """docs/semantics.md: nvls RS + AG of the slices is nvls's All-Reduce, byte for byte."""
    N, shape = 8, (16, 24)
    rs = scinjax.traffic.scatter_gather_record("reduce_scatter", "nvls", n_ranks=N, shape=shape)
    ag = scinjax.traffic.scatter_gather_record("all_gather", "nvls", n_ranks=N, shape=(2, 24))
    ar = scinjax.traffic.collective_record("nvls", n_ranks=N, shape=shape)
    assert tuple(a + b for a, b in zip(rs.up, ag.up, strict=True)) == ar.up
    assert tuple(a + b for a, b in zip(rs.down, ag.down, strict=True)) == ar.down


# --------------------------------------------------------------------------- gradients


def _loss(kind, coll, w, **kw):
    op = scinjax.reduce_scatter if kind == "rs" else scinjax.all_gather

    def f(xs):
        ys = jax.vmap(lambda x: op(x, AX, coll, **kw), axis_name=AX)(xs)
        return jnp.sum(ys.astype(jnp.float32) * w)

    return f


def test_reduce_scatter_vjp_is_the_exact_all_gather():
    N, shape = 4, (8, 6)
    xs = jnp.asarray(data(400, N, shape, "float32"))
    w = data(401, N, (2, 6), "float32")  # rank j's output cotangent
    for coll in ("exact", "ring", "scin:int8"):  # straight-through: the same gradient
        g = np.asarray(jax.grad(_loss("rs", coll, w))(xs))
        want = np.concatenate(list(w), axis=0)  # every rank receives all N slices
        for i in range(N):
            assert_bits(g[i], want, f"d reduce_scatter[{coll}] rank {i}")
    lax_g = jax.grad(
        lambda t: jnp.sum(
            jax.vmap(lambda x: lax.psum_scatter(x, AX, tiled=True), axis_name=AX)(t) * w
        )
    )(xs)
    assert_bits(np.asarray(lax_g), g, "vs lax.psum_scatter's gradient")


def test_all_gather_vjp_is_a_reduce_scatter_of_the_cotangents():
    N, shape = 4, (2, 40)
    xs = jnp.asarray(data(500, N, shape, "float32"))
    w = data(501, N, (N * 2, 40), "float32")  # every rank's own output cotangent
    for coll, back in (("exact", "exact"), ("scin:int8", "exact"), ("ring", "scin:int8")):
        g = np.asarray(jax.grad(_loss("ag", coll, w, backward=back))(xs))
        b = scinjax.Collective.parse(back)
        fmt = {} if not b.quantized else {"uplink": "int8", "downlink": "int8"}
        want = S.reduce_scatter(w, b.algorithm, **fmt)
        assert_bits(g, want, f"d all_gather[{coll}] backward={back}")


def test_gradient_traffic_has_its_own_phase_and_formats():
    N, shape = 4, (8, 64)
    w = np.ones((N, 2, 64), np.float32)
    f = _loss("rs", "scin:int8", w, backward="scin:int4")
    rep = scinjax.count_traffic(jax.grad(f), jax.ShapeDtypeStruct((N,) + shape, jnp.float32))
    got = sorted((r.kind, r.phase, r.collective, r.calls) for r in rep.records)
    assert got == [
        ("all_gather", "backward", "all_gather[scin:int4]", 1),
        ("reduce_scatter", "forward", "reduce_scatter[scin:int8]", 1),
    ]
    back = next(r for r in rep.records if r.phase == "backward")
    assert back.shape == (2, 64)
    assert back.up[0] == S.ag_bytes("scin", N, (2, 64), 4, "int4")[0]


def test_grad_under_scan_and_checkpoint_matches_the_plain_call():
    N, shape = 2, (4, 8)
    xs = jnp.asarray(data(600, N, shape, "float32"))
    w = data(601, N, (N * 2, 8), "float32")

    def step(x):
        y = scinjax.reduce_scatter(x, AX, "exact")
        return scinjax.all_gather(y, AX, "exact")

    def loss(t, wrap):
        def per_rank(x):
            return lax.scan(lambda c, _: (wrap(step)(c) * 0.5, None), x, None, length=2)[0]

        return jnp.sum(jax.vmap(per_rank, axis_name=AX)(t) * w[:, : shape[0]])

    plain = jax.grad(lambda t: loss(t, lambda f: f))(xs)
    remat = jax.grad(lambda t: loss(t, jax.checkpoint))(xs)
    assert_bits(np.asarray(remat), np.asarray(plain), "checkpoint vs plain")


# --------------------------------------------------------------------------- errors


@pytest.mark.parametrize(
    "kind,coll,shape,kw,match",
    [
        ("rs", "exact", (6, 3), {}, "pad axis 0 to a multiple of 4"),
        ("rs", "two_shot:int8", (8, 32), {}, "defined for 'scin' only"),
        ("ag", "scin:bf16/int8", (2, 32), {}, "same format"),
        ("rs", scinjax.Collective(algorithm="scin", uplink=STOCH), (8, 32), {}, "key="),
        ("ag", "exact", (2, 3), {"backward": "two_shot:int8"}, "defined for 'scin' only"),
        ("rs", "exact", (8, 3), {"backward": "scin:bf16/int8"}, "same format"),
        ("rs", "bogus", (8, 3), {}, "unknown algorithm"),
    ],
)
def test_bad_input_is_a_clear_error(kind, coll, shape, kw, match):
    op = scinjax.reduce_scatter if kind == "rs" else scinjax.all_gather
    with pytest.raises(ValueError, match=match):
        jax.vmap(lambda x: op(x, AX, coll, **kw), axis_name=AX)(jnp.zeros((4,) + shape))


def test_unbound_axis_and_0d_leaf():
    with pytest.raises(ValueError, match="not bound"):
        scinjax.reduce_scatter(jnp.zeros((4, 2)), "sp", "exact")
    with pytest.raises(ValueError, match="0-d"):
        jax.vmap(lambda x: scinjax.all_gather(x, AX, "exact"), axis_name=AX)(jnp.zeros(4))


def test_grad_of_a_scan_whose_body_vmaps_over_the_axis():
    """jax.grad traces custom_vjp's forward lazily outside the vmap: vs lax's collectives."""
    x = jnp.asarray(data(700, 2, (4, 8), "float32"))
    w = jnp.arange(64.0, dtype=jnp.float32).reshape(2, 4, 8)

    def loss(op):
        def f(scale):
            def body(c, _):
                return jnp.tanh(jax.vmap(op, axis_name=AX)(c * scale)), None

            return jnp.sum(lax.scan(body, x, None, length=2)[0] * w)

        return f

    ours = jax.grad(
        loss(lambda p: scinjax.all_gather(scinjax.reduce_scatter(p, AX, "exact"), AX, "exact"))
    )(0.5)
    theirs = jax.grad(
        loss(lambda p: lax.all_gather(lax.psum_scatter(p, AX, tiled=True), AX, tiled=True))
    )(0.5)
    np.testing.assert_allclose(float(ours), float(theirs), rtol=1e-6)


def _sp_block(x):
    """A plain-lax sequence-parallel step: RS on axis 1, a nonlinearity, AG, untiled pair."""
    y = lax.psum_scatter(x, AX, scatter_dimension=1, tiled=True)
    z = lax.all_gather(jnp.tanh(y), AX, axis=1, tiled=True)
    u = lax.psum_scatter(z[:, :4], AX, scatter_dimension=1, tiled=False)
    return lax.all_gather(u, AX, axis=0, tiled=False)


def _sp_block_ported(x, coll):
    """The same step hand-ported to scinjax (dimension moved to the front)."""
    y = jnp.moveaxis(scinjax.reduce_scatter(jnp.moveaxis(x, 1, 0), AX, coll), 0, 1)
    z = jnp.moveaxis(scinjax.all_gather(jnp.moveaxis(jnp.tanh(y), 1, 0), AX, coll), 0, 1)
    u = scinjax.reduce_scatter(jnp.moveaxis(z[:, :4], 1, 0), AX, coll)[0]
    return scinjax.all_gather(u[None], AX, coll).reshape((4,) + u.shape)


@pytest.mark.parametrize("coll", ["exact", "scin:int8"])
def test_emulate_rewrites_psum_scatter_and_all_gather(coll):
    x = jnp.asarray(data(800, 4, (3, 8, 32), "float32"))
    got = jax.vmap(scinjax.transforms.emulate(_sp_block, coll), axis_name=AX)(x)
    want = jax.vmap(lambda t: _sp_block_ported(t, coll), axis_name=AX)(x)
    assert_bits(np.asarray(got), np.asarray(want), f"emulate vs hand port, {coll}")
    if coll == "exact":  # N=4 float32 sums: same values as lax up to reassociation
        lax_out = jax.vmap(_sp_block, axis_name=AX)(x)
        np.testing.assert_allclose(np.asarray(got), np.asarray(lax_out), rtol=1e-5, atol=1e-6)
    rep = scinjax.count_traffic(
        jax.vmap(scinjax.transforms.emulate(_sp_block, coll), axis_name=AX), x
    )
    assert [r.label for r in rep.records] == [
        "reduce_scatter0",
        "all_gather1",
        "reduce_scatter2",
        "all_gather3",
    ]
    assert [r.shape for r in rep.records] == [(8, 3, 32), (2, 3, 32), (4, 3, 32), (1, 3, 32)]


@pytest.mark.parametrize("n", [2, 3])
def test_sequence_parallel_model_matches_the_allreduce_layout_in_exact_mode(n):
    """Megatron SP (RS after the row-parallel projection, AG before the column-parallel one)
    gives the All-Reduce layout's logits bit for bit with the exact collective."""
    import dataclasses

    from scinjax.models import build_model, get_config, random_weights

    c = get_config("tiny-gqa")
    model = build_model(c, random_weights(c, seed=1), tp=n, collective="exact")
    sp = model.module.clone(
        reducer=dataclasses.replace(model.module.reducer, sequence_parallel=True)
    )
    ids = np.random.default_rng(0).integers(0, c.vocab_size, (2, 6))
    want = np.asarray(jax.jit(model.module.apply)(model.params, ids))
    got = np.asarray(jax.jit(sp.apply)(model.params, ids))
    assert_bits(got, want, f"sequence-parallel vs All-Reduce logits, N={n}")
    rep = scinjax.count_traffic(sp.apply, model.params, ids)
    kinds = [(r.kind, r.label, r.shape, r.calls) for r in rep.records]
    m, d = 2 * 6, c.hidden_size
    assert kinds == [
        ("reduce_scatter", "attn_out.rs", (m, d), c.num_layers),
        ("all_gather", "attn_out.ag", (m // n, d), c.num_layers),
        ("reduce_scatter", "mlp_out.rs", (m, d), c.num_layers),
        ("all_gather", "mlp_out.ag", (m // n, d), c.num_layers),
    ]
