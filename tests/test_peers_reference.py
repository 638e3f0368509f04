"""The peer quantized All-Reduces (QuickReduce Q8/Q6/Q4, FlashInfer FP8, TensorRT-LLM FP8)
against the independent NumPy reference of docs/spec/peers.md (tests/reference_np_fp.py),
bit for bit on every rank: eager, jit, vmap, and shard_map on 8 host devices (subprocess).
Bytes against closed forms."""

from __future__ import annotations

import functools
import textwrap

import jax
import jax.numpy as jnp
import ml_dtypes
import numpy as np
import pytest
import reference_np_fp as F
from host_devices import run_on_host_devices
from reference_np import assert_bits

import scinjax

BF16 = ml_dtypes.bfloat16
AX = "tp"
try:
    scinjax.collectives.Collective.parse("trtllm-fp8")
    HAS_PEERS = True
except Exception:  # the named peer collectives are not merged yet
    HAS_PEERS = False
needs_api = pytest.mark.skipif(not HAS_PEERS, reason="peer collectives not merged yet")


# =========================================================================== reference self-checks


def test_quickreduce_codec_golden():
    """Hand-derived from peers.md, Q8 (b = 8): one run of 64 = even block + odd block."""
    h = np.zeros(64, np.float16)
    # even block: +4 and -4 tie -> m = -4, D = -4 * -2**-7 = 2**-5, E = f16(1/(2**-5 + 2**-24))
    # = f16(31.99998...) = 32; x = -4 -> w = -128 -> q = -128 -> -4; x = 4 -> 128 clamps to
    # 127 -> 127/32 = 3.96875; x = 0.05 -> f16(0.05)*32 = 1.6 (f16) -> 2 -> 0.0625
    h[0], h[2], h[4] = 4, -4, 0.05
    # odd block: m = +1 (no tie) -> D = -2**-7, E = f16(1/(-2**-7 + 2**-24)) = -128;
    # x = 1 -> w = -128 -> -128 * D = 1; x = -0.5 -> w = 64 -> 64 * D = -0.5;
    # x = 0 -> q = 0 -> 0 * D = -0 (a zero code takes D's sign)
    h[1], h[3] = 1, -0.5
    out = F.qr_codec(h, 8)
    assert out[0] == np.float16(127 / 32) and out[2] == -4 and out[4] == np.float16(0.0625)
    assert out[1] == 1 and out[3] == -0.5
    assert out[5] == 0 and np.signbit(out[5]) and not np.signbit(out[6])
    # all-zero block: m = +0, D = -0, E = 1/2**-24 = 2**24 saturates to 65504, w = 0
    assert (F.qr_codec(np.zeros(64, np.float16), 4) == 0).all()
    # D + eps == 0 exactly: m = 2**-24 * 2**7 -> D = -2**-24 -> E = 1/+0 = +Inf: the extreme
    # gives w = +Inf -> clamp 127 -> 127 * D = -127 * 2**-24 (sign flipped), 0 * Inf = NaN
    z = np.zeros(64, np.float16)
    z[0] = 2.0**-17
    out = F.qr_codec(z, 8)
    assert out[0] == np.float16(-127 * 2.0**-24) and np.isnan(out[2]) and out[1] == 0
    # a NaN element poisons its block only
    z[4] = np.nan
    out = F.qr_codec(z, 8)
    assert np.isnan(out[0::2]).all() and not np.isnan(out[1::2]).any()


def test_quickreduce_float16_saturation_golden():
    # inputs beyond float16 range saturate to +-65504; the float16 sum saturates too
    xs = np.array([[1e5, -70000.0], [40000.0, -40000.0]], BF16)
    out = F.peer_allreduce(xs, "quickreduce-q8")
    # even block: rank 0 holds 65504 (m), rank 1 40000; odd block -65504 and -40000;
    # sums saturate at 65504 (not Inf) and each is its block's own extreme -> exact
    want = np.float32([65504, -65504]).astype(BF16)
    assert_bits(out[0], want, "rank 0")
    assert_bits(out[1], want, "rank 1")


def test_flashinfer_sum_is_seeded_with_zero():
    """peers.md: `0.0 + c_0 + ... + c_{N-1}`: two -0 contributions sum to +0 on every rank."""
    xs = np.zeros((2, 256), BF16)
    xs[:, 0] = -1e-4  # under a = 448 both dequantize to -0
    xs[:, 1] = 448
    want = F.peer_allreduce(xs, "flashinfer-fp8")
    assert want[0, 0] == 0 and not np.signbit(want[:, 0].astype(np.float32)).any()
    if HAS_PEERS:
        got = np.asarray(vfn("flashinfer-fp8")(jnp.asarray(xs)))
        assert_bits(got, want, "flashinfer zero seed")


def test_flashinfer_golden():
    # one group: a = 448 -> s = 1, r = 1; rank values exact in e4m3 -> the sum of the two
    xs = np.zeros((2, 300), BF16)
    xs[0, 0], xs[0, 1], xs[1, 1] = 448, 3, 5
    out = F.peer_allreduce(xs, "flashinfer-fp8")
    # owner of segment 0 (groups 0..) is rank 0: keeps bf16(448), bf16(8); rank 1 gets the
    # re-quantized sum: the same here (448 and 8 are exact under s = 1)
    assert out[0, 0] == 448 and out[0, 1] == 8 and out[1, 1] == 8
    # an all-zero group: a = 1e-12, codes 0, result +0 on every rank (0.0 + 0 + 0)
    assert (out[:, 256:] == 0).all() and not np.signbit(out[:, 256:].astype(np.float32)).any()
    # the owner keeps its unquantized sum: rank 0 sends 3.25 (s = 1), rank 1 0.125 (its own
    # a = 0.125 -> exact); sum 3.375 is a tie of e4m3 3.25/3.5 -> the others get 3.5 (even)
    xs[0, 2], xs[1, 2] = 3.25, 0.125
    xs[1, 1] = 0
    out = F.peer_allreduce(xs, "flashinfer-fp8")
    assert out[0, 2] == 3.375 and out[1, 2] == 3.5
    with pytest.raises(ValueError):
        F.peer_allreduce(xs.astype(np.float32), "flashinfer-fp8")


def test_trtllm_golden():
    # a tiny amax: 448/2e-38 overflows -> s = +Inf; 2e-38 * Inf -> 448 -> 448/Inf = 0,
    # -2e-38 -> -0, and a zero element gives 0 * Inf = NaN
    xs = np.zeros((2, 10), np.float32)
    xs[0, :3] = [2e-38, -2e-38, 0.0]
    out = F.peer_allreduce(xs, "trtllm-fp8")
    # sums (owner 0: rank 0 then rank 1, whose all-zero group is sent unscaled): 0, +0, NaN;
    # re-quantized: a = max ignoring NaN = 0 -> unscaled again
    assert out[0, 0] == 0 and out[0, 1] == 0 and not np.signbit(out[0, 1]) and np.isnan(out[0, 2])
    # Inf in a group: a = Inf -> s = 0 -> sent unscaled, Inf saturates to 448
    xs = np.zeros((2, 10), np.float32)
    xs[0, 0], xs[0, 1], xs[1, 1] = np.inf, 3.3, 1.0
    out = F.peer_allreduce(xs, "trtllm-fp8")
    # rank 0 unscaled: 448, e4m3(3.3) = 3.25; rank 1 a = 1: s = 448, exact; sum 448, 4.25
    # re-quantized: a = 448 -> s = 1: 448, e4m3(4.25) ties 4 / 4.5 -> 4 (even mantissa)
    assert out[0, 0] == 448 and out[0, 1] == 4 and out[1, 1] == 4
    # NaN ignored in amax, NaN element stays NaN, others unaffected
    xs = np.zeros((2, 10), np.float32)
    xs[0, 0], xs[0, 1] = np.nan, 2.0
    out = F.peer_allreduce(xs, "trtllm-fp8")
    assert np.isnan(out[0, 0]) and out[0, 1] == 2 and out[1, 1] == 2


def test_segments_rule():
    # whole units, first (units mod N) segments one unit longer, clipped to n
    assert F.segments(1000, 256, 3) == [(0, 512), (512, 768), (768, 1000)]
    assert F.segments(100, 64, 4) == [(0, 64), (64, 100), (100, 100), (100, 100)]


# =========================================================================== JAX vs reference


@functools.cache
def vfn(name, jit=True):
    f = jax.vmap(lambda t: scinjax.allreduce(t, AX, name), axis_name=AX)
    return jax.jit(f) if jit else f


def peer_data(N, shape, dt, seed):
    """Wide-range random buffers with the adversarial cases of peers.md planted in them."""
    rng = np.random.default_rng(seed)
    v = rng.standard_normal((N,) + shape) * np.exp2(rng.integers(-10, 10, (N,) + shape))
    v[rng.random(v.shape) < 0.04] = 0.0
    f = v.reshape(N, -1)
    n = f.shape[1]
    # QuickReduce: +a / -a tie as the extreme of an even block (elements 0 and 2 of a run
    # of small values), and a positive-only extreme in that run's odd block
    if n >= 128:
        f[:, 64:128] = rng.standard_normal((N, 64)) * 0.1
        f[:, 64], f[:, 66] = 5.0, -5.0
        f[:, 65] = 7.0
    if n > 300:
        f[:, 128:192] = 0.0  # all-zero run / part of a zero FlashInfer/TRT group
        f[0, 192:256] = 0.0
        f[0, 192] = 2.0**-17  # QuickReduce q8: D + 2**-24 == 0 -> E = +Inf
        f[:, 260] = 6e4  # float16 overflow of the QuickReduce sum (N * 6e4)
        f[0, 270] = 1e5  # QuickReduce input beyond float16 range
        f[1, 300] = np.float32(2**-130)  # float32 subnormal (FTZ)
        f[0, 330] = np.nan
    if n > 1500:
        f[1, 992:1488] = 0.0  # a TRT-LLM group whose amax 2e-38 makes 448/a overflow
        f[1, 1000] = 2e-38
    if n > 2000 and N > 2:
        # TRT-LLM's summation order: in the last group (owner r > 0) x_r = B, x_{r+1} = -B,
        # x_{r-1} = 1: r, r+1, ..., r-1 gives (B - B) + ... + 1 = 1; 0..N-1 would lose the 1
        r = len([s for s in F.segments(n, 496, N) if s[0] < s[1]]) - 1
        e, B = n - 100, 448.0 * 2**20
        f[r, e], f[(r + 1) % N, e], f[(r - 1) % N, e] = B, -B, 1.0
        f[N - 1, 500] = np.inf
    return f.reshape(v.shape).astype(dt)


PEERS = list(F.PEERS)


def check_ranks(out, want, what):
    out = np.asarray(out)
    for r in range(out.shape[0]):
        assert_bits(out[r], want[r], f"{what} rank {r}")


PEER_GRID = [pytest.param(name, N, id=f"{name}-{N}") for name in F.PEERS for N in (2, 3, 4, 8)]


@needs_api
@pytest.mark.parametrize("name,N", PEER_GRID)
def test_peer_matches_reference(name, N):
    x = peer_data(N, (2, 1100), BF16, 10 + N)
    want = F.peer_allreduce(x, name)
    check_ranks(vfn(name)(jnp.asarray(x)), want, f"{name} N={N} jit")
    if name == "flashinfer-fp8":  # rank-dependent bits: the owner keeps bf16 of its sum
        assert not np.array_equal(want[0].view(np.uint16), want[1].view(np.uint16))


@needs_api
@pytest.mark.parametrize("name", PEERS)
def test_peer_small_and_eager(name):
    """Short runs/groups (n < 64), eager (no jit); float32/float16 input where accepted."""
    N = 3
    x = peer_data(N, (37,), BF16, 77)
    check_ranks(vfn(name, jit=False)(jnp.asarray(x)), F.peer_allreduce(x, name), f"{name} eager")
    if name != "flashinfer-fp8":
        for dt in (np.float32, np.float16):  # float16: QuickReduce takes it as is
            with np.errstate(over="ignore"):
                x = peer_data(N, (5, 70), dt, 78)
            check_ranks(vfn(name)(jnp.asarray(x)), F.peer_allreduce(x, name), f"{name} {dt}")


@needs_api
def test_flashinfer_rejects_other_dtypes():
    x = jnp.zeros((2, 512), jnp.float32)
    with pytest.raises((ValueError, TypeError)):
        vfn("flashinfer-fp8", jit=False)(x)


@needs_api
@pytest.mark.parametrize("name", PEERS)
@pytest.mark.parametrize("N", [3, 8])
def test_peer_bytes_closed_form(name, N):
    """Two-shot with every segment's wire bytes w_j (payload and scales apart):
    up[i] = down[i] = sum_{j != i} w_j + (N-1) w_i."""
    from scinjax.traffic import collective_record

    shape = (2, 1100)
    n = 2200
    w = F.peer_wire(n, name, N)
    rec = collective_record(name, n_ranks=N, shape=shape, dtype=jnp.bfloat16)
    for k, (up, dn) in enumerate([("up_payload", "down_payload"), ("up_scale", "down_scale")]):
        tot = sum(x[k] for x in w)
        want = [tot + (N - 2) * x[k] for x in w]
        assert list(getattr(rec, up)) == want, (up, name, N)
        assert list(getattr(rec, dn)) == want, (dn, name, N)
    # closed forms per element of peers.md for whole units, per phase
    per = {"quickreduce-q8": 1.0625, "quickreduce-q6": 0.8125, "quickreduce-q4": 0.5625}
    per |= {"flashinfer-fp8": 1.015625, "trtllm-fp8": 512 / 496}
    n_units = {"flashinfer-fp8": 256 * 8, "trtllm-fp8": 496 * 8}.get(name, 64 * 8)
    p, s = (sum(v) for v in zip(*F.peer_wire(n_units, name, 1), strict=True))
    assert (p + s) / n_units == per[name]


# --------------------------------------------------------------------------- shard_map

SCRIPT = textwrap.dedent(
    """
    import sys
    import jax, jax.numpy as jnp, numpy as np
    from jax.sharding import Mesh, PartitionSpec as P
    sys.path.insert(0, TESTS_DIR)
    import reference_np_fp as F
    from reference_np import assert_bits
    from test_peers_reference import peer_data
    import scinjax

    assert len(jax.devices()) == 8, jax.devices()
    mesh = Mesh(np.array(jax.devices()), ("tp",))

    def sm(fn):
        per_dev = lambda t: fn(t[0])[None]
        return jax.jit(jax.shard_map(per_dev, mesh=mesh, in_specs=P("tp"), out_specs=P("tp")))

    x = peer_data(8, (3, 700), jnp.bfloat16, 5)
    for name in F.PEERS:
        out = np.asarray(sm(lambda t: scinjax.allreduce(t, "tp", name))(jnp.asarray(x)))
        want = F.peer_allreduce(x, name)
        for r in range(8):
            assert_bits(out[r], want[r], f"shard_map {name} rank {r}")
        print("ok", name, flush=True)
    for alg, up, dn in [("scin", "mxfp8", "nvfp4"), ("two_shot", "nvfp4", "nvfp4")]:
        fn = lambda t: scinjax.allreduce(t, "tp", alg, uplink=up, downlink=dn)
        out = np.asarray(sm(fn)(jnp.asarray(x)))
        want = F.allreduce(x, alg, uplink=up, downlink=dn)
        for r in range(8):
            assert_bits(out[r], want, f"shard_map {alg}:{up}/{dn} rank {r}")
        print("ok", alg, up, dn, flush=True)
    print("ALL OK")
    """
)


@needs_api
def test_shard_map_matches_reference():
    p = run_on_host_devices(SCRIPT)
    assert p.returncode == 0 and "ALL OK" in p.stdout, p.stdout + "\n" + p.stderr[-6000:]
