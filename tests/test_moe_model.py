"""EP MoE layer (models/moe.py) == a dense NumPy MoE written here, at N = 1, 2, 4, 8."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from scinjax.models.moe import MoEMLP, moe_mlp

from scinjax.moe import EPConfig

T, H, E, K, I = 6, 32, 8, 2, 48


def dense_moe_np(x, params, k, routing=None):
    """Dense MoE in float64: every token through its k experts, softmax over the picked
    logits, plus the shared expert. x [N, T, H] -> [N, T, H]."""
    xf = x.astype(np.float64).reshape(-1, x.shape[-1])
    silu = lambda v: v / (1 + np.exp(-v))  # noqa: E731
    w = {name: np.asarray(v, np.float64) for name, v in params.items()}
    out = np.zeros_like(xf)
    for t in range(xf.shape[0]):
        if routing is None:
            logits = xf[t] @ w["router"]
            top = np.argsort(-logits, kind="stable")[:k]
            g = np.exp(logits[top] - logits[top].max())
            g = g / g.sum()
        else:
            top = routing[0].reshape(-1, k)[t]
            g = routing[1].reshape(-1, k)[t].astype(np.float64)
        for e, ge in zip(top, g, strict=True):
            a = silu(xf[t] @ w["w_gate"][e]) * (xf[t] @ w["w_up"][e])
            out[t] += ge * (a @ w["w_down"][e])
        if "shared_gate" in w:
            a = silu(xf[t] @ w["shared_gate"]) * (xf[t] @ w["shared_up"])
            out[t] += a @ w["shared_down"]
    return out.reshape(x.shape), top


def make_params(seed, shared=False):
    rng = np.random.default_rng(seed)
    p = {
        "router": rng.standard_normal((H, E)) / np.sqrt(H),
        "w_gate": rng.standard_normal((E, H, I)) / np.sqrt(H),
        "w_up": rng.standard_normal((E, H, I)) / np.sqrt(H),
        "w_down": rng.standard_normal((E, I, H)) / np.sqrt(I),
    }
    if shared:
        p["shared_gate"] = rng.standard_normal((H, I)) / np.sqrt(H)
        p["shared_up"] = rng.standard_normal((H, I)) / np.sqrt(H)
        p["shared_down"] = rng.standard_normal((I, H)) / np.sqrt(I)
    return {k: v.astype(np.float32) for k, v in p.items()}


def special_routing(n, seed):
    """Per token, in turn: all experts on the token's own rank (when a rank holds k),
    skewed (expert 0, on rank 0, is hot), uniform."""
    rng = np.random.default_rng(seed)
    per = E // n
    ex = np.zeros((n, T, K), np.int32)
    for s in range(n):
        for t in range(T):
            if t % 3 == 0 and per >= K:
                ex[s, t] = s * per + rng.choice(per, K, replace=False)
            elif t % 3 == 1:
                ex[s, t] = [0, 1 + rng.integers(0, E - 1)]
            else:
                ex[s, t] = rng.choice(E, K, replace=False)
    g = rng.random((n, T, K)).astype(np.float32)
    return ex, (g / g.sum(-1, keepdims=True)).astype(np.float32)


ALGS = ("all_to_all", "dedup", "dysharp")
CFGS = {
    alg: EPConfig(n_experts=E, algorithm=alg, dispatch_format="fp32", combine_format="fp32")
    for alg in ALGS
}


@jax.jit
def all_algorithms(x, params, routing):
    """The given routing with every algorithm; the router's (and a shared expert) once."""
    shared = dict(params)
    plain = {k: v for k, v in params.items() if not k.startswith("shared")}
    out = {alg: [moe_mlp(x, plain, c, k=K, routing=routing)[0]] for alg, c in CFGS.items()}
    out["dysharp"].append(moe_mlp(x, shared, CFGS["dysharp"], k=K)[0])  # router path
    return out


@pytest.mark.parametrize("n", [1, 2, 4, 8])
def test_ep_equals_dense(n):
    """fp32 links: the only differences left are float32 rounding of the GEMMs and sums."""
    params = make_params(n, shared=True)
    plain = {k: v for k, v in params.items() if not k.startswith("shared")}
    x = np.random.default_rng(n + 10).standard_normal((n, T, H)).astype(np.float32)
    routing = special_routing(n, n)
    want_router, _ = dense_moe_np(x, params, K)
    want_special, _ = dense_moe_np(x, plain, K, routing)
    got = all_algorithms(jnp.asarray(x), jax.tree.map(jnp.asarray, params), routing)
    for alg in ALGS:
        for out, want in zip(got[alg], (want_special, want_router), strict=False):
            out = np.asarray(out)
            np.testing.assert_allclose(out, want, rtol=2e-5, atol=2e-5 * np.abs(want).max())
    # one rank, or one expert per rank (E = N = 8): all_to_all and dedup sum alike
    if n in (1, 8):
        np.testing.assert_array_equal(np.asarray(got["all_to_all"][0]), np.asarray(got["dedup"][0]))


def test_quantized_links_change_little_and_flax_module():
    n = 4
    x = np.random.default_rng(0).standard_normal((n, T, H)).astype(np.float32)
    cfg = EPConfig(n_experts=E, algorithm="dysharp", dispatch_format="mxfp8", combine_format="int8")
    mod = MoEMLP(ep=cfg, top_k=K, intermediate=I, shared_intermediate=16)
    variables = mod.init(jax.random.key(0), jnp.asarray(x))
    out, state = mod.apply(variables, jnp.asarray(x), mutable=["intermediates"])
    params = {k: np.asarray(v) for k, v in variables["params"].items()}
    want, _ = dense_moe_np(x, params, K)
    err = np.abs(np.asarray(out) - want).max() / np.abs(want).max()
    assert 1e-4 < err < 0.1, err  # quantized links: a visible but small error
    experts, gates = state["intermediates"]["routing"][0]
    assert experts.shape == (n, T, K) and np.allclose(np.asarray(gates).sum(-1), 1, atol=1e-6)


def test_bad_ep_size():
    params = make_params(0)
    x = jnp.zeros((3, T, H), jnp.float32)
    with pytest.raises(ValueError, match="do not split"):
        moe_mlp(x, jax.tree.map(jnp.asarray, params), EPConfig(n_experts=E), k=K)


def test_count_ep_traffic_of_a_forward():
    """Abstract shapes: every MoE layer found (3 inside a scan), each with spec/moe.md's
    uniform-routing expectation, written out here for dysharp."""
    import math

    from scinjax.moe import count_ep_traffic

    n, t, layers = 4, 5, 3
    cfg = EPConfig(n_experts=E, algorithm="dysharp", dispatch_format="int8")
    params = jax.tree.map(jnp.asarray, make_params(0))
    stacked = jax.tree.map(lambda a: jnp.stack([a] * layers), params)

    def fwd(p, x):
        def body(x, lp):
            return x + moe_mlp(x, lp, cfg, k=K)[0], None

        return jax.lax.scan(body, x, p)[0]

    (entry,) = count_ep_traffic(fwd, stacked, jax.ShapeDtypeStruct((n, t, H), jnp.float32))
    assert entry.calls == layers
    assert (entry.spec.n_ranks, entry.spec.tokens, entry.spec.k) == (n, t, K)
    beta_d = H + math.ceil(H / 32) * 2  # int8: 1 byte per element + fp16 scale per 32
    p_remote = 1 - math.comb(E // n, K) / math.comb(E, K)
    assert float(entry.expected["dispatch_up"]) == pytest.approx(t * p_remote * beta_d)
    d_rem = n * (1 - math.comb(E - E // n, K) / math.comb(E, K)) * (n - 1) / n
    assert float(entry.expected["combine_up"]) == pytest.approx(t * d_rem * 2 * H)


def test_tp_attention_with_ep_experts():
    """TP attention (heads split over the N ranks, All-Reduce 'exact') == DP attention up to
    float32 rounding; both ledgers see their layers: the All-Reduce ledger one attn_out per
    layer of [N*B*T, H] elements, the MoE ledger one dispatch per layer of B*T tokens."""
    from scinjax.models.moe_lm import MoELMConfig, forward, init_params

    from scinjax import count_traffic
    from scinjax.moe import count_ep_traffic

    cfg = MoELMConfig(hidden=32, layers=2, heads=4, intermediate=32)
    ep = EPConfig(n_experts=8, algorithm="dysharp", dispatch_format="fp32", combine_format="fp32")
    params = init_params(cfg, jax.random.key(0))
    tok = jnp.asarray(np.random.default_rng(0).integers(0, 256, (4, 2, 8)))
    dp = np.asarray(forward(params, tok, cfg, ep)[0])
    tp = np.asarray(forward(params, tok, cfg, ep, tp="exact")[0])
    np.testing.assert_allclose(tp, dp, rtol=1e-5, atol=1e-5 * np.abs(dp).max())
    rep = count_traffic(lambda p, t: forward(p, t, cfg, ep, tp="scin:int8"), params, tok)
    rec, moe = rep.records  # count_traffic lists the MoE layers too (one record, L calls)
    assert (rec.calls, rec.label, rec.shape) == (2, "attn_out", (4 * 2 * 8, 32))
    assert (moe.kind, moe.calls, moe.routing, moe.spec.tokens) == ("moe", 2, "uniform", 16)
    (entry,) = count_ep_traffic(lambda p, t: forward(p, t, cfg, ep, tp="exact"), params, tok)
    assert (entry.calls, entry.spec.tokens, entry.spec.n_ranks) == (2, 2 * 8, 4)
