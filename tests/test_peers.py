"""Peer quantized All-Reduces (spec/peers.md): bytes in closed form and properties that
need no reference (rank symmetry, exact round trips, the ties/overflow/NaN rules worked
out by hand, errors, shard_map == vmap, the model's rank-0 rule). The bit-exact comparison
against an independent NumPy reference lives in tests/test_peers_reference.py.
"""

from __future__ import annotations

import dataclasses
import math
import textwrap

import jax
import jax.numpy as jnp
import ml_dtypes
import numpy as np
import pytest
from host_devices import run_on_host_devices
from jax import lax

import scinjax
from scinjax import Collective
from scinjax.collectives import PEER_ALGORITHMS
from scinjax.traffic import collective_record, count_traffic

QR = {"quickreduce-q8": 8, "quickreduce-q6": 6, "quickreduce-q4": 4}
SYMMETRIC = (*QR, "trtllm-fp8")
NS = (2, 3, 4, 8)
UNIT = {**{a: 64 for a in QR}, "flashinfer-fp8": 256, "trtllm-fp8": 496}


def bits(a) -> np.ndarray:
    a = np.asarray(a)
    return a.view(np.uint32 if a.dtype == np.float32 else np.uint16)


def run(alg, xs):
    """xs [N, ...] -> every rank's output [N, ...] (vmap over the rank axis, jitted)."""
    return np.asarray(
        jax.jit(jax.vmap(lambda v: scinjax.allreduce(v, "r", alg), axis_name="r"))(xs)
    )


def random_ranks(n_ranks, shape, dtype, seed=0):
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((n_ranks, *shape)) * np.exp2(rng.integers(-3, 4, (n_ranks, *shape)))
    return jnp.asarray(x, dtype)


# ------------------------------------------------------------------------------ bytes


def segment_elements(n, unit, n_ranks):
    """Elements of each owner's segment: ceil(n/unit) whole units split by the chunk rule."""
    units = -(-n // unit)
    counts = [units // n_ranks + (1 if j < units % n_ranks else 0) for j in range(n_ranks)]
    ends = [min(sum(counts[: j + 1]) * unit, n) for j in range(n_ranks)]
    return [e - s for s, e in zip([0, *ends[:-1]], ends, strict=True)]


def segment_bytes(alg, e):
    """(payload, scale) of a segment of e elements in the scheme's own layout (peers.md)."""
    if alg in QR:
        # an even block per (partial) run of 64, an odd block per run holding >= 2 elements
        blocks = -(-e // 64) + -(-(e - 1) // 64) if e else 0
        return math.ceil(e * QR[alg] / 8), 2 * blocks
    if alg == "flashinfer-fp8":
        return e, 4 * -(-e // 256)
    return e, 16 * -(-e // 496)  # trtllm: 4-byte scale + 12 bytes of padding per group


@pytest.mark.parametrize("alg", PEER_ALGORITHMS)
@pytest.mark.parametrize("n_ranks", NS)
@pytest.mark.parametrize("n", [1, 2, 63, 65, 129, 1000, 4097, 496 * 9 + 5, 123457])
def test_bytes_per_link(alg, n_ranks, n):
    rec = collective_record(alg, n_ranks=n_ranks, shape=(n,), dtype="bfloat16")
    w = [segment_bytes(alg, e) for e in segment_elements(n, UNIT[alg], n_ranks)]
    for part, (up, down) in enumerate(
        [(rec.up_payload, rec.down_payload), (rec.up_scale, rec.down_scale)]
    ):
        total = sum(x[part] for x in w)
        # phase 1: all other owners' segments go up, the own segment comes from N-1 peers;
        # phase 2: the own (requantized) segment goes to N-1 peers, all others come down
        want = tuple(total - w[i][part] + (n_ranks - 1) * w[i][part] for i in range(n_ranks))
        assert up == want and down == want
        assert all(type(v) is int for v in up + down)
    assert rec.collective == alg


@pytest.mark.parametrize("n_ranks", NS)
def test_bytes_even_layout_closed_form(n_ranks):
    """n = N * k units: every link carries 2(N-1)/N * n * (bytes per element)."""
    k = 5
    per_elem = {  # (payload, scale) bytes per unit
        "quickreduce-q8": (64, 4),
        "quickreduce-q6": (48, 4),
        "quickreduce-q4": (32, 4),
        "flashinfer-fp8": (256, 4),
        "trtllm-fp8": (496, 16),
    }
    for alg, (pay, scale) in per_elem.items():
        n = n_ranks * k * UNIT[alg]
        rec = collective_record(alg, n_ranks=n_ranks, shape=(n,))
        assert rec.up_payload == rec.down_payload == (2 * (n_ranks - 1) * k * pay,) * n_ranks
        assert rec.up_scale == rec.down_scale == (2 * (n_ranks - 1) * k * scale,) * n_ranks


def test_bytes_llama70b_prefill_exact():
    """2**28 elements per rank (32768 tokens x 8192): exact ints, no overflow."""
    n, ranks = 32768 * 8192, 8
    rec = collective_record("quickreduce-q4", n_ranks=ranks, shape=(32768, 8192))
    assert rec.up_payload == (2 * 7 * n // 8 // 2,) * 8  # 4 bits per element
    assert rec.up_scale == (2 * 7 * (n // 8 // 32) * 2,) * 8
    rec = collective_record("trtllm-fp8", n_ranks=ranks, shape=(32768, 8192))
    assert sum(rec.up_payload) == 2 * 7 * n
    assert rec.total == 2 * sum(rec.up) and rec.total > 2**32


@pytest.mark.parametrize("alg", PEER_ALGORITHMS)
def test_ledger_finds_peer_calls(alg):
    x = jax.ShapeDtypeStruct((3, 2, 100), jnp.bfloat16)
    fn = jax.vmap(lambda v: scinjax.allreduce(v, "r", alg, label="p"), axis_name="r")
    report = count_traffic(fn, x)
    (rec,) = report.records
    assert rec == collective_record(alg, n_ranks=3, shape=(2, 100), label="p")


# --------------------------------------------------------------------- configuration


@pytest.mark.parametrize("alg", PEER_ALGORITHMS)
def test_names_round_trip(alg):
    c = Collective.parse(alg)
    assert c == Collective(algorithm=alg) and str(c) == alg and Collective.parse(str(c)) == c
    assert not c.quantized and not c.stochastic


@pytest.mark.parametrize(
    "make, match",
    [
        (lambda: Collective.parse("quickreduce-q8:int8"), "own wire format"),
        (lambda: Collective(algorithm="trtllm-fp8", downlink="int8"), "own wire format"),
        (lambda: Collective(algorithm="flashinfer-fp8", order="pairwise"), "order"),
        (lambda: Collective(algorithm="quickreduce-q4", accumulate="float16"), "accumulate"),
        (lambda: Collective.parse("quickreduce-q5"), "quickreduce-q8"),
    ],
)
def test_bad_configurations(make, match):
    with pytest.raises(ValueError, match=match):
        make()


@pytest.mark.parametrize("dtype", [jnp.float32, jnp.float16])
def test_flashinfer_needs_bf16(dtype):
    xs = jnp.ones((2, 8), dtype)
    with pytest.raises(ValueError, match="bfloat16"):
        run("flashinfer-fp8", xs)


def test_integer_input_is_a_type_error():
    with pytest.raises(TypeError, match="float"):
        run("quickreduce-q8", jnp.ones((2, 8), jnp.int32))


# ------------------------------------------------------------------------ properties


@pytest.mark.parametrize("alg", SYMMETRIC)
@pytest.mark.parametrize("n_ranks", NS)
def test_all_ranks_identical(alg, n_ranks):
    # 111 elements: fewer units than ranks (empty segments); 4200: 9 to 66 units
    shape, dtype = ((3, 37), jnp.float16) if n_ranks in (2, 4) else ((2, 2100), jnp.bfloat16)
    xs = random_ranks(n_ranks, shape, dtype, seed=n_ranks)
    out = run(alg, xs)
    assert out.dtype == xs.dtype and out.shape == xs.shape
    for i in range(1, n_ranks):
        np.testing.assert_array_equal(bits(out[i]), bits(out[0]))
    exact = np.asarray(xs, np.float64).sum(0)
    rel = np.abs(np.asarray(out[0], np.float64) - exact).max() / np.abs(exact).max()
    assert rel < {8: 0.05, 6: 0.1, 4: 0.5}.get(QR.get(alg), 0.1)  # a sane All-Reduce


@pytest.mark.parametrize("n_ranks", [3, 8])
def test_flashinfer_rank_dependent_only_on_own_segment(n_ranks):
    """Non-owners of a segment all hold the same bits; the owner's may differ, and does."""
    n = 2100
    xs = random_ranks(n_ranks, (n,), jnp.bfloat16, seed=10 + n_ranks)
    out = bits(run("flashinfer-fp8", xs))
    seg = segment_elements(n, 256, n_ranks)
    starts = np.cumsum([0, *seg[:-1]])
    differs = False
    for j, (s, e) in enumerate(zip(starts, seg, strict=True)):
        others = [i for i in range(n_ranks) if i != j]
        for i in others[1:]:
            np.testing.assert_array_equal(out[i, s : s + e], out[others[0], s : s + e])
        differs |= bool(np.any(out[j, s : s + e] != out[others[0], s : s + e]))
    assert differs


def exact_fp8_groups(rng, shape, group, k):
    """Values q * 2**k with e4m3 codes q whose every group of ``group`` holds a +-448."""
    codes = rng.choice(np.arange(-448, 449, dtype=np.float32), size=shape)
    codes = np.asarray(codes.astype(ml_dtypes.float8_e4m3fn), np.float32)  # onto e4m3
    flat = codes.reshape(-1)
    flat[::group] = 448.0 * rng.choice([-1, 1], size=flat[::group].shape)
    return flat.reshape(shape) * np.float32(2.0**k)


@pytest.mark.parametrize(
    "alg,group,n_ranks",
    [("flashinfer-fp8", 256, 2), ("flashinfer-fp8", 256, 8), ("trtllm-fp8", 496, 4)],
)
def test_fp8_exact_inputs_round_trip(alg, group, n_ranks):
    """Every rank holds x = q * 2**k (groups' amax 448 * 2**k): scales are powers of two,
    so every stage is exact and every rank gets N * x (N a power of two)."""
    rng = np.random.default_rng(n_ranks)
    x = exact_fp8_groups(rng, (3, 700), group, k=-3)
    xs = jnp.asarray(np.broadcast_to(x, (n_ranks, *x.shape)), jnp.bfloat16)
    out = run(alg, xs)
    for i in range(n_ranks):
        np.testing.assert_array_equal(np.asarray(out[i], np.float32), n_ranks * x)


@pytest.mark.parametrize("alg,group", [("flashinfer-fp8", 256), ("trtllm-fp8", 496)])
def test_fp8_exact_input_one_rank_n3(alg, group):
    """N = 3, rank 0 holds exact x, the others zeros: every rank gets x."""
    x = exact_fp8_groups(np.random.default_rng(3), (1100,), group, k=2)
    xs = jnp.asarray(np.stack([x, 0 * x, 0 * x]), jnp.bfloat16)
    out = run(alg, xs)
    for i in range(3):
        np.testing.assert_array_equal(np.asarray(out[i], np.float32), x)


def test_flashinfer_owner_keeps_bf16_of_f32_sum():
    """Contributions exact (x_i = q * 2**k), so the owner's segment is bf16 of the float32
    sum 0.0 + x_0 + ... + x_{N-1}, which is not bf16-representable here."""
    n_ranks, n = 3, 1100
    rng = np.random.default_rng(7)
    xs = np.stack([exact_fp8_groups(rng, (n,), 256, k) for k in (0, -9, -5)])
    total = np.zeros(n, np.float32)
    for i in range(n_ranks):
        total = total + xs[i]
    want = bits(total.astype(ml_dtypes.bfloat16))
    out = bits(run("flashinfer-fp8", jnp.asarray(xs, jnp.bfloat16)))
    seg = segment_elements(n, 256, n_ranks)
    start = 0
    for j, e in enumerate(seg):
        np.testing.assert_array_equal(out[j, start : start + e], want[start : start + e])
        start += e
    assert not np.array_equal(out[0], want)  # the others' segments went through fp8


@pytest.mark.parametrize(
    "alg,n_ranks",
    [("quickreduce-q8", 3), ("quickreduce-q8", 8), ("quickreduce-q6", 2), ("quickreduce-q4", 4)],
)
def test_quickreduce_exact_inputs_round_trip(alg, n_ranks):
    """Blocks of c * t (integer codes c with -2**(b-1) present, t = 2**-3) on every rank:
    D = t exactly and E rounds to 1/t in float16, so every rank gets N * x exactly."""
    b = QR[alg]
    rng = np.random.default_rng(b + n_ranks)
    c = rng.integers(-(2 ** (b - 1)) + 1, 2 ** (b - 1), size=(2, 130)).astype(np.float32)
    flat = c.reshape(-1)
    flat[::64] = flat[1::64] = -(2 ** (b - 1))  # both blocks of every run hold the extreme
    x = c * np.float32(2.0**-3)
    xs = jnp.asarray(np.broadcast_to(x, (n_ranks, *x.shape)), jnp.float16)
    out = run(alg, xs)
    for i in range(n_ranks):
        np.testing.assert_array_equal(np.asarray(out[i], np.float32), n_ranks * x)


@pytest.mark.parametrize("alg", PEER_ALGORITHMS)
def test_one_rank_is_identity(alg):
    x = random_ranks(1, (3, 37), jnp.bfloat16)
    np.testing.assert_array_equal(bits(run(alg, x)), bits(x))


def test_eager_equals_jit():
    xs = random_ranks(3, (2, 90), jnp.bfloat16, seed=5)
    for alg in ("quickreduce-q6", "flashinfer-fp8"):
        eager = jax.vmap(lambda v, a=alg: scinjax.allreduce(v, "r", a), axis_name="r")(xs)
        np.testing.assert_array_equal(bits(eager), bits(run(alg, xs)))


# ------------------------------------------------------------------ adversarial, by hand


def test_quickreduce_tie_takes_the_negative_extreme():
    """Block {+1, -1, 0...} on rank 0: m = -1, so -1 -> code -128 (-1) and +1 -> 127/128
    after both stages; the positive-first choice would give +1 and -127/128 instead."""
    x = np.zeros((2, 64), np.float32)
    x[0, 0], x[0, 2] = 1.0, -1.0  # both in the even block
    out = run("quickreduce-q8", jnp.asarray(x, jnp.float16))
    np.testing.assert_array_equal(np.asarray(out[:, [0, 2]], np.float32), [[127 / 128, -1.0]] * 2)


def test_quickreduce_float16_sum_saturates():
    """40000 + 40000 overflows float16: the sum saturates to 65504 (gfx942), not Inf."""
    xs = jnp.full((2, 64), 40000.0, jnp.float16)
    np.testing.assert_array_equal(np.asarray(run("quickreduce-q8", xs), np.float32), 65504.0)


def test_quickreduce_input_beyond_float16_saturates():
    x = np.zeros((2, 64), np.float32)
    x[0, 0] = 1e6
    out = np.asarray(run("quickreduce-q8", jnp.asarray(x, jnp.bfloat16)), np.float32)
    assert out[0, 0] == float(np.float32(65504).astype(ml_dtypes.bfloat16))  # 65536
    np.testing.assert_array_equal(out[:, 1:], 0.0)


@pytest.mark.parametrize("alg", list(QR))
def test_quickreduce_nan_poisons_its_block_only(alg):
    x = np.ones((2, 130), np.float32)
    x[1, 4] = np.nan  # even block of the first run
    out = np.asarray(run(alg, jnp.asarray(x, jnp.bfloat16)), np.float32)
    assert np.isnan(out[:, 0:64:2]).all()
    assert np.isfinite(out[:, 1:64:2]).all() and np.isfinite(out[:, 64:]).all()


def test_quickreduce_zero_blocks_stay_zero():
    """All-zero blocks: E = 1/2**-24 saturates to 65504 (not Inf), so codes are 0, not NaN."""
    out = np.asarray(run("quickreduce-q4", jnp.zeros((3, 100), jnp.bfloat16)), np.float32)
    np.testing.assert_array_equal(out, 0.0)


def test_quickreduce_division_by_exact_zero():
    """Q8 block with m = 2**-17: D = -2**-24, D + 2**-24 = 0, E = +Inf (IEEE), so its zero
    elements become 0 * Inf = NaN codes, and the owner's sum makes the whole block NaN."""
    x = np.zeros((2, 64), np.float32)
    x[0, 0] = 2.0**-17
    out = np.asarray(run("quickreduce-q8", jnp.asarray(x, jnp.float16)), np.float32)
    assert np.isnan(out[:, 0:64:2]).all()
    np.testing.assert_array_equal(out[:, 1::2], 0.0)  # the odd block is all zeros


def test_trtllm_inf_group_is_sent_unscaled():
    """amax = Inf gives s = 0: Inf -> 448, the rest cast unscaled; the sum's group then
    has amax 448, s = 1: exact."""
    x = np.zeros((2, 600), np.float32)
    x[0, :496] = np.asarray(exact_fp8_groups(np.random.default_rng(1), (496,), 496, 0))
    x[0, 0] = np.inf
    x[0, 496:] = 3.0
    out = np.asarray(run("trtllm-fp8", jnp.asarray(x, jnp.float32)), np.float32)
    want = x[0].copy()
    want[0] = 448.0
    np.testing.assert_array_equal(out, [want, want])


def test_trtllm_nan_is_ignored_by_the_group_scale():
    x = np.full((2, 496), 2.0, np.float32)
    x[0, 7] = np.nan
    out = np.asarray(run("trtllm-fp8", jnp.asarray(x, jnp.bfloat16)), np.float32)
    assert np.isnan(out[:, 7]).all()
    np.testing.assert_array_equal(np.delete(out, 7, axis=1), 4.0)


def test_flashinfer_nan_poisons_its_group():
    x = np.ones((2, 600), np.float32)
    x[1, 300] = np.nan
    out = np.asarray(run("flashinfer-fp8", jnp.asarray(x, jnp.bfloat16)), np.float32)
    assert np.isnan(out[:, 256:512]).all()
    np.testing.assert_array_equal(out[:, :256], 2.0)
    np.testing.assert_array_equal(out[:, 512:], 2.0)


# ------------------------------------------------------------------- shard_map == vmap

SHARD_SCRIPT = textwrap.dedent(
    """
    import jax, jax.numpy as jnp, numpy as np
    from jax.sharding import Mesh, PartitionSpec as P
    import scinjax
    from scinjax.collectives import PEER_ALGORITHMS
    assert len(jax.devices()) == 8
    cases = [(3, a) for a in PEER_ALGORITHMS] + [(8, "trtllm-fp8"), (8, "flashinfer-fp8")]
    for n_ranks, alg in cases:
        mesh = Mesh(np.array(jax.devices()[:n_ranks]), ("tp",))
        rng = np.random.default_rng(n_ranks)
        x = rng.standard_normal((n_ranks, 5, 211)) * np.exp2(rng.integers(-4, 5, (n_ranks, 5, 211)))
        xs = jnp.asarray(x, jnp.bfloat16)
        one = lambda t, a=alg: scinjax.allreduce(t, "tp", a)
        sm = jax.jit(jax.shard_map(lambda t: one(t[0])[None], mesh=mesh,
                                   in_specs=P("tp"), out_specs=P("tp")))
        vm = jax.jit(jax.vmap(one, axis_name="tp"))
        a = np.asarray(sm(xs)).view(np.uint16)
        b = np.asarray(vm(xs)).view(np.uint16)
        assert np.array_equal(a, b), (alg, n_ranks)
    print("OK")
    """
)


def test_shard_map_equals_vmap():
    res = run_on_host_devices(SHARD_SCRIPT)
    assert res.returncode == 0 and "OK" in res.stdout, res.stderr[-3000:]


# ----------------------------------------------------------------------------- model


@dataclasses.dataclass(frozen=True, kw_only=True)
class _RankFollower(Collective):
    """flashinfer-fp8, then every rank takes rank ``source``'s output (test helper)."""

    source: int = 0

    def __call__(self, x, axis_name, *, key=None, label=None):
        out = scinjax.allreduce(x, axis_name, "flashinfer-fp8", label=label)
        return lax.all_gather(out, axis_name)[self.source]


def test_model_follows_rank_0_with_flashinfer():
    """The vmap model continues with rank 0's All-Reduce output where ranks differ."""
    from scinjax.models import build_model, get_config, random_weights

    config = get_config("tiny")
    weights = random_weights(config, seed=1)
    ids = np.random.default_rng(0).integers(0, config.vocab_size, 12)
    logits = {}
    for name, coll in [
        ("flashinfer", "flashinfer-fp8"),
        ("rank0", _RankFollower(algorithm="flashinfer-fp8", source=0)),
        ("rank1", _RankFollower(algorithm="flashinfer-fp8", source=1)),
    ]:
        logits[name] = build_model(config, weights, tp=2, collective=coll).logits(ids)
    np.testing.assert_array_equal(logits["flashinfer"], logits["rank0"])
    assert not np.array_equal(logits["flashinfer"], logits["rank1"])  # ranks do differ here
    assert np.isfinite(logits["flashinfer"]).all()


# ---------------------------------------------------------------------------- timing


def test_timing_treats_peers_as_quantized_two_shot():
    from scinjax.timing import allreduce_time
    from scinjax.timing.profile import profile_names

    profile = profile_names()[0]
    size = 4 << 20
    base = allreduce_time("two_shot:int8", size, n_ranks=8, profile=profile)
    # quickreduce-q8 moves exactly int8's bytes (1.0625 per element), so same time
    assert allreduce_time("quickreduce-q8", size, n_ranks=8, profile=profile) == base
    q4 = allreduce_time("quickreduce-q4", size, n_ranks=8, profile=profile)
    assert 0 < q4 < base  # fewer bytes


def test_flashinfer_sum_starts_from_positive_zero():
    """0.0 + (-0) + (-0) = +0: two contributions that dequantize to -0 sum to +0 (XLA must
    not drop the 0.0 seed), on the owner's and the other ranks' segments alike."""
    x = np.zeros((2, 512), np.float32)
    x[:, [0, 256]] = -1e-4  # under a = 448, -1e-4 * 1 rounds to a -0 code
    x[:, [1, 257]] = 448.0
    out = np.asarray(run("flashinfer-fp8", jnp.asarray(x, jnp.bfloat16)), np.float32)
    assert (out[:, [0, 256]] == 0).all() and not np.signbit(out[:, [0, 256]]).any()


def test_quickreduce_zero_code_takes_the_scale_sign():
    """A small positive x under a negative E (m = +1): w = f16(x * -128) rounds to -0, but the
    code is the integer 0, so it dequantizes to 0 * D = -0 (D = -2**-7); stage 2 likewise.
    A signed -0 code would give +0 instead."""
    x = np.zeros((2, 64), np.float32)
    x[0, 0], x[0, 2] = 1.0, 0.001
    out = np.asarray(run("quickreduce-q8", jnp.asarray(x, jnp.float16)), np.float32)
    assert (out[:, 2] == 0).all() and np.signbit(out[:, 2]).all()
    np.testing.assert_array_equal(out[:, 0], 1.0)
