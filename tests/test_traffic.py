"""scinjax.count_traffic vs closed-form byte formulas written here from
collectives.md and semantics.md ("Bytes per link"). Exact Python ints, no tolerance."""

from __future__ import annotations

import math
import time

import jax
import jax.numpy as jnp
import pytest

import scinjax
from scinjax import formats
from scinjax.traffic import collective_record

AX = "tp"
BYTES = {"bfloat16": 2, "float16": 2, "float32": 4}
SCALE_BYTES = {"float32": 4, "float16": 2, "bfloat16": 2, "e8m0": 1}
CAST_BYTES = {"bfloat16": 2, "float16": 2, "float32": 4}


# --------------------------------------------------------------------------- formulas


def chunks(n, N):
    """Element counts of the N chunks/slices: the first n mod N hold one extra."""
    return [n // N + (1 if j < n % N else 0) for j in range(N)]


def wire(fmt, elements, blocks, b):
    """(payload, scale) bytes of `elements` values in `blocks` blocks on a link of format fmt."""
    if fmt is None:
        return elements * b, 0
    if isinstance(fmt, formats.CastFormat):
        return elements * CAST_BYTES[fmt.dtype], 0
    return math.ceil(elements * fmt.bits / 8), blocks * SCALE_BYTES[fmt.scale_dtype]


def wire_tensor(fmt, shape, b):
    """formats.md: per row ceil(H*bits/8) payload and ceil(H/B) scales; rows add up."""
    shape = tuple(shape) or (1,)
    n = math.prod(shape)
    if not isinstance(fmt, formats.IntFormat):
        return wire(fmt, n, 0, b)
    H = shape[-1]
    rows = n // H
    return (
        rows * math.ceil(H * fmt.bits / 8),
        rows * math.ceil(H / fmt.block_size) * SCALE_BYTES[fmt.scale_dtype],
    )


def expected(alg, N, shape, dtype, up=None, down=None):
    """Per-rank (up_payload, up_scale, down_payload, down_scale) lists of ONE call."""
    shape = tuple(shape) or (1,)
    b = BYTES[dtype]
    n = math.prod(shape)
    z = [0] * N
    if N == 1:
        return z, z, z, z
    s = chunks(n, N)
    if alg == "ring":
        upp = [(2 * n - s[r] - s[(r + 1) % N]) * b for r in range(N)]
        dnp = [(2 * n - s[(r - 1) % N] - s[r]) * b for r in range(N)]
        return upp, z, dnp, z
    if alg == "one_shot":
        return [(N - 1) * n * b] * N, z, [(N - 1) * n * b] * N, z
    if alg == "nvls":
        v = [(n + s[i]) * b for i in range(N)]
        return v, z, v, z
    if alg == "exact" or (alg == "scin" and up is None and down is None):
        return [n * b] * N, z, [n * b] * N, z
    if alg == "scin":
        up_p, up_s = wire_tensor(up, shape, b)
        dn_p, dn_s = wire_tensor(down, shape, b)
        return [up_p] * N, [up_s] * N, [dn_p] * N, [dn_s] * N
    assert alg == "two_shot"
    if up is None and down is None:
        v = [(n - s[i]) * b + (N - 1) * s[i] * b for i in range(N)]
        return v, z, v, z
    # quantized two_shot: block-aligned runs, blocks of all rows in row-major order
    # (no int format on either link: plain element chunks, i.e. blocks of one element)
    B = next((f.block_size for f in (up, down) if isinstance(f, formats.IntFormat)), 1)
    H = shape[-1]
    rows = n // H
    block_elems = [min(B, H - k * B) for _ in range(rows) for k in range(math.ceil(H / B))]
    counts = chunks(len(block_elems), N)
    starts = [sum(counts[:j]) for j in range(N)]
    runs = [block_elems[starts[j] : starts[j] + counts[j]] for j in range(N)]
    wu = [wire(up, sum(r), len(r), b) for r in runs]
    wd = [wire(down, sum(r), len(r), b) for r in runs]
    out = []
    for k in (0, 1):  # payload, scale kept apart
        upl = [sum(wu[j][k] for j in range(N) if j != i) + (N - 1) * wd[i][k] for i in range(N)]
        dnl = [(N - 1) * wu[i][k] + sum(wd[j][k] for j in range(N) if j != i) for i in range(N)]
        out.append((upl, dnl))
    return out[0][0], out[1][0], out[0][1], out[1][1]


def vm(alg, **kw):
    return jax.vmap(lambda x: scinjax.allreduce(x, AX, alg, **kw), axis_name=AX)


def sds(N, shape, dtype):
    return jax.ShapeDtypeStruct((N,) + tuple(shape), jnp.dtype(dtype))


def check_record(rec, alg, N, shape, dtype, up=None, down=None, calls=1):
    upp, ups, dnp, dns = expected(alg, N, shape, dtype, up, down)
    what = f"{alg} N={N} {shape} {dtype} {up}/{down}"
    assert rec.algorithm == alg, what
    assert rec.n_ranks == N, what
    assert tuple(rec.shape) == tuple(shape), what
    assert rec.elements == math.prod(shape), what
    assert rec.calls == calls, what
    assert list(rec.up_payload) == upp, what
    assert list(rec.up_scale) == ups, what
    assert list(rec.down_payload) == dnp, what
    assert list(rec.down_scale) == dns, what
    assert list(rec.up) == [p + s for p, s in zip(upp, ups, strict=True)], what
    assert list(rec.down) == [p + s for p, s in zip(dnp, dns, strict=True)], what
    assert rec.total == calls * (sum(upp) + sum(ups) + sum(dnp) + sum(dns)), what
    for v in (*rec.up_payload, *rec.up_scale, *rec.down_payload, *rec.down_scale, rec.total):
        assert type(v) is int, what


# --------------------------------------------------------------------------- the table


def test_formulas_agree_with_the_spec_table():
    """Our per-rank formulas average to collectives.md's table when N divides n."""
    n, N, b = 96, 4, 2
    avg = {a: sum(expected(a, N, (n,), "bfloat16")[0]) / N for a in scinjax.ALGORITHMS}
    assert avg["ring"] == 2 * (N - 1) / N * n * b
    assert avg["one_shot"] == (N - 1) * n * b
    assert avg["two_shot"] == 2 * (N - 1) / N * n * b
    assert avg["nvls"] == n * b * (1 + 1 / N)
    assert avg["scin"] == avg["exact"] == n * b
    q = formats.get("int8")
    up = expected("two_shot", N, (n,), "bfloat16", q, q)
    assert sum(up[0]) + sum(up[1]) == 2 * (N - 1) * (n + n // 32 * 2)


NS = [2, 3, 4, 8]
SHAPES = [(3, 37), (5,), (2, 3, 129)]
PLAIN = [
    pytest.param(a, N, s, d, id=f"{a}-N{N}-{'x'.join(map(str, s))}-{d}")
    for a in scinjax.ALGORITHMS
    for N in NS
    for s, d in ((SHAPES[N % 3], "bfloat16"), (SHAPES[(N + 1) % 3], "float32"))
]


@pytest.mark.parametrize("alg,N,shape,dtype", PLAIN)
def test_plain_algorithms(alg, N, shape, dtype):
    rep = scinjax.count_traffic(vm(alg), sds(N, shape, dtype))
    assert rep.n_ranks == N
    assert len(rep.records) == 1
    check_record(rep.records[0], alg, N, shape, dtype)
    upp, ups, dnp, dns = expected(alg, N, shape, dtype)
    assert list(rep.up) == upp and list(rep.down) == dnp
    assert list(rep.up_payload) == upp and list(rep.up_scale) == ups
    assert list(rep.down_payload) == dnp and list(rep.down_scale) == dns
    assert rep.total == sum(upp) + sum(dnp)
    assert rep.max_link_bytes == max(upp + dnp)


I5B5 = formats.IntFormat(bits=5, block_size=5, scale_dtype="bfloat16")
I3B5 = formats.IntFormat(bits=3, block_size=5, scale_dtype="e8m0")
QCONF = [
    ("scin", "int8", "int8"),
    ("scin", "mxint8", "mxint8"),
    ("scin", "int4", "int4"),
    ("scin", "int8-b128-f32", "int8-b128-f32"),
    ("scin", "bf16", "int8"),
    ("scin", None, "int4"),
    ("scin", "int8", None),
    ("scin", "fp32", "mxint8"),
    ("scin", I3B5, "fp16"),
    ("two_shot", "int8", "int8"),
    ("two_shot", "mxint8", "mxint8"),
    ("two_shot", "int4", "int8"),
    ("two_shot", "bf16", "int8"),
    ("two_shot", "int8", None),
    ("two_shot", I5B5, I3B5),
    ("two_shot", "int8-b128-f32", "int8-b128-f32"),
    ("two_shot", "bf16", "fp32"),
    ("two_shot", None, "bf16"),
]


def _fid(f):
    return "None" if f is None else (f if isinstance(f, str) else f.name)


QUANT = [
    pytest.param(a, u, d, N, id=f"{a}-{_fid(u)}-{_fid(d)}-N{N}")
    for a, u, d in QCONF
    for N in (3, 4, 8)
]


@pytest.mark.parametrize("alg,up,down,N", QUANT)
def test_quantized_links(alg, up, down, N):
    upf = formats.get(up) if up is not None else None
    dnf = formats.get(down) if down is not None else None
    cases = (((3, 37), "bfloat16"), ((2, 3, 129), "float32"), ((5,), "float16"))
    for k, (shape, dtype) in enumerate(cases):
        direct = collective_record(
            alg, n_ranks=N, shape=shape, dtype=dtype, uplink=upf, downlink=dnf
        )
        check_record(direct, alg, N, shape, dtype, upf, dnf)
        if k == N % 3:  # one abstract trace per case (tracing the quantizers costs time)
            rep = scinjax.count_traffic(vm(alg, uplink=up, downlink=down), sds(N, shape, dtype))
            (rec,) = rep.records
            check_record(rec, alg, N, shape, dtype, upf, dnf)
            assert rec.uplink == upf and rec.downlink == dnf


def test_two_shot_runs_hand_values():
    """(3, 37) int8, N=4: blocks [32,5,32,5,32,5] -> runs [32+5, 32+5, 32, 5]."""
    q = formats.get("int8")
    upp, ups, dnp, dns = expected("two_shot", 4, (3, 37), "bfloat16", q, q)
    w = [37, 37, 32, 5]
    sc = [4, 4, 2, 2]
    assert upp[0] == (37 + 32 + 5) + 3 * 37 and ups[0] == (4 + 2 + 2) + 3 * 4
    assert dnp[3] == 3 * 5 + (37 + 37 + 32) and dns[3] == 3 * 2 + (4 + 4 + 2)
    assert sum(upp) == sum(dnp) == 2 * 3 * sum(w) and sum(ups) == 2 * 3 * sum(sc)
    rec = collective_record(
        "two_shot", n_ranks=4, shape=(3, 37), dtype="bfloat16", uplink=q, downlink=q
    )
    check_record(rec, "two_shot", 4, (3, 37), "bfloat16", q, q)


def test_ring_hand_values():
    """n=10, N=4: chunks [3,3,2,2]; up[r] = (2n - s_r - s_{r+1}) b."""
    rep = scinjax.count_traffic(vm("ring"), sds(4, (10,), "bfloat16"))
    (rec,) = rep.records
    assert list(rec.up_payload) == [2 * (20 - 6), 2 * (20 - 5), 2 * (20 - 4), 2 * (20 - 5)]
    assert list(rec.down_payload) == [2 * (20 - 5), 2 * (20 - 6), 2 * (20 - 5), 2 * (20 - 4)]


def test_single_rank_moves_nothing():
    for alg in scinjax.ALGORITHMS:
        rep = scinjax.count_traffic(vm(alg), sds(1, (3, 37), "bfloat16"))
        assert rep.total == 0 and list(rep.up) == [0] and list(rep.down) == [0]


def test_zero_d_leaf_counts_as_one_element():
    rep = scinjax.count_traffic(vm("scin", uplink="int8", downlink="int8"), sds(4, (), "float32"))
    (rec,) = rep.records
    assert list(rec.up_payload) == [1] * 4 and list(rec.up_scale) == [2] * 4


# --------------------------------------------------------------------------- composition


def test_pytree_and_multiple_calls_add_up():
    def f(t):
        a = scinjax.allreduce(t, AX, "scin", uplink="int8", downlink="int8", label="attn")
        b = scinjax.allreduce(t["x"], AX, "ring", label="mlp")
        return a, b

    N = 4
    args = {"x": sds(N, (3, 37), "bfloat16"), "y": sds(N, (5,), "float32")}
    rep = scinjax.count_traffic(jax.vmap(f, axis_name=AX), args)
    assert len(rep.records) == 3
    q = formats.get("int8")
    e = [
        expected("scin", N, (3, 37), "bfloat16", q, q),
        expected("scin", N, (5,), "float32", q, q),
        expected("ring", N, (3, 37), "bfloat16"),
    ]
    for i in range(N):
        assert rep.up[i] == sum(x[0][i] + x[1][i] for x in e)
        assert rep.down[i] == sum(x[2][i] + x[3][i] for x in e)
    assert rep.total == sum(sum(map(sum, x)) for x in e)
    # a leaf's label may carry its tree path (not specified): only the prefix is checked
    labels = sorted(r.label for r in rep.records)
    assert labels[0].startswith("attn") and labels[1].startswith("attn") and labels[2] == "mlp"


def test_scan_over_layers_multiplies_by_length():
    N, L = 8, 5

    def layer(h, _):
        h = scinjax.allreduce(h, AX, "scin", uplink="int8", downlink="int8")
        h = scinjax.allreduce(h * 2, AX, "two_shot")
        return h, None

    fn = jax.vmap(lambda x: jax.lax.scan(layer, x, None, length=L)[0], axis_name=AX)
    rep = scinjax.count_traffic(fn, sds(N, (3, 37), "bfloat16"))
    q = formats.get("int8")
    e1 = expected("scin", N, (3, 37), "bfloat16", q, q)
    e2 = expected("two_shot", N, (3, 37), "bfloat16")
    for i in range(N):
        assert rep.up[i] == L * (e1[0][i] + e1[1][i] + e2[0][i])
        assert rep.down[i] == L * (e1[2][i] + e1[3][i] + e2[2][i])
    assert all(r.calls == L for r in rep.records)
    assert rep.total == L * (sum(map(sum, e1)) + sum(map(sum, e2)))


def test_nested_scan_and_remat():
    N, L1, L2 = 4, 3, 5

    def inner(h, _):
        return jax.checkpoint(lambda v: scinjax.allreduce(v, AX, "ring"))(h), None

    def outer(h, _):
        h = jax.lax.scan(inner, h, None, length=L2)[0]
        return scinjax.allreduce(h, AX, "scin", uplink="mxint8", downlink="int4"), None

    fn = jax.vmap(lambda x: jax.lax.scan(outer, x, None, length=L1)[0], axis_name=AX)
    rep = scinjax.count_traffic(fn, sds(N, (3, 37), "float32"))
    e_ring = expected("ring", N, (3, 37), "float32")
    e_scin = expected("scin", N, (3, 37), "float32", formats.get("mxint8"), formats.get("int4"))
    for i in range(N):
        assert rep.up[i] == L1 * L2 * e_ring[0][i] + L1 * (e_scin[0][i] + e_scin[1][i])
        assert rep.down[i] == L1 * L2 * e_ring[2][i] + L1 * (e_scin[2][i] + e_scin[3][i])
    assert list(rep.up_scale) == [L1 * e_scin[1][i] for i in range(N)]
    assert list(rep.down_scale) == [L1 * e_scin[3][i] for i in range(N)]


def test_jit_inside_and_outside():
    N = 3
    inner = jax.jit(lambda x: scinjax.allreduce(x, AX, "nvls"))
    fn = jax.jit(jax.vmap(inner, axis_name=AX))
    rep = scinjax.count_traffic(fn, sds(N, (5,), "bfloat16"))
    (rec,) = rep.records
    check_record(rec, "nvls", N, (5,), "bfloat16")


def test_llama70b_prefill_is_exact_and_fast():
    """8192 x 8192 activations per rank, N=8, 80 layers x 2 all-reduces: exact ints, no
    allocation (ShapeDtypeStruct), well under a couple of seconds."""
    N, L, shape = 8, 80, (8192, 8192)

    def layer(h, _):
        h = scinjax.allreduce(h, AX, "scin", uplink="int8", downlink="int8")
        h = scinjax.allreduce(h, AX, "ring")
        return h, None

    fn = jax.vmap(lambda x: jax.lax.scan(layer, x, None, length=L)[0], axis_name=AX)
    t0 = time.perf_counter()
    rep = scinjax.count_traffic(fn, sds(N, shape, "bfloat16"))
    dt = time.perf_counter() - t0
    n = 8192 * 8192
    q = formats.get("int8")
    e1 = expected("scin", N, shape, "bfloat16", q, q)
    e2 = expected("ring", N, shape, "bfloat16")
    assert e1[0][0] == n and e1[1][0] == n // 32 * 2
    assert e2[0][0] == 2 * (N - 1) * (n // N) * 2
    want_up = L * (e1[0][0] + e1[1][0] + e2[0][0])
    assert [type(v) for v in rep.up] == [int] * N
    assert list(rep.up) == [want_up] * N
    assert rep.total == L * (sum(map(sum, e1)) + sum(map(sum, e2)))
    assert rep.total > 2**38 and type(rep.total) is int
    assert rep.to_dict()["total"] == rep.total
    assert dt < 2.0, f"count_traffic took {dt:.2f}s"
    # one call of one_shot at this size already exceeds 32 bits per link
    rec = collective_record("one_shot", n_ranks=N, shape=(L * 8192, 8192), dtype="float32")
    assert rec.up[0] == (N - 1) * L * n * 4 and rec.up[0] > 2**32


def test_cond_is_rejected():
    """A collective under a data-dependent cond cannot be counted: clear error.
    (The predicate is not batched, so vmap keeps the cond instead of a select.)"""

    def f(x, p):
        return jax.lax.cond(p > 0, lambda y: scinjax.allreduce(y, AX, "scin"), lambda y: y, x)

    fn = jax.vmap(f, in_axes=(0, None), axis_name=AX)
    with pytest.raises(Exception) as ei:
        scinjax.count_traffic(fn, sds(2, (4,), "float32"), jax.ShapeDtypeStruct((), jnp.float32))
    assert "cond" in str(ei.value).lower()


# --------------------------------------------------------------------------- nccl


@pytest.mark.parametrize("N", [2, 3, 8])
def test_nccl_bandwidth_conventions(N):
    msg, t = 2 * 8192 * 8192, 1.25e-3
    assert scinjax.algbw(msg, t) == pytest.approx(msg / t, rel=1e-12)
    assert scinjax.busbw(msg, t, N) == pytest.approx(msg / t * 2 * (N - 1) / N, rel=1e-12)
