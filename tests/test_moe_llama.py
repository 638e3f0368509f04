"""MoE layers in the TP Llama model (LlamaConfig.moe): EP model == a dense NumPy MoE
transformer (tests/numpy_llama.py with an MoE MLP written here), and its traffic report
== spec/moe.md's closed forms written out token by token."""

from __future__ import annotations

import math
from fractions import Fraction

import numpy as np
import pytest
from numpy_llama import forward as np_forward
from scinjax.models.api import build_model
from scinjax.models.config import LlamaConfig, get_config
from scinjax.models.moe_spec import MoeSpec
from scinjax.models.moe_traffic import concrete_traffic, forward_with_routing
from scinjax.models.traffic import model_traffic
from scinjax.models.weights import random_weights, weight_shapes

from scinjax.traffic._ep_records import EPRecord

E, K, I, IS = 8, 2, 24, 16
B, T = 2, 8  # M = 16 tokens: 16 / N per rank


def tiny_moe(**spec) -> LlamaConfig:
    kw = dict(n_experts=E, top_k=K, intermediate=I, dispatch_format="fp32")
    kw.update(dict(combine_format="fp32") | spec)
    return get_config("tiny").replace(moe=MoeSpec(**kw), name="tiny-moe-llama")


def skew(weights, cfg, scale=10.0):
    """Router columns 0 and 1 = +-scale * u: every token's top expert is 0 or 1 (rank 0's
    at N <= 4), whatever the sign of h . u."""
    rng = np.random.default_rng(7)
    w = dict(weights)
    for i in range(cfg.num_layers):
        r = w[f"layers.{i}.router"].copy()
        u = rng.standard_normal(cfg.hidden_size).astype(np.float32) / np.sqrt(cfg.hidden_size)
        r[:, 0], r[:, 1] = scale * u, -scale * u
        w[f"layers.{i}.router"] = r
    return w


def moe_reference(weights, cfg, routing_log):
    """Dense MoE MLP for numpy_llama.forward, float64, from the Mixtral definition: top-k
    of h @ router, softmax over the k picked logits, sum of gate * SwiGLU_e(h), plus the
    shared expert. Appends each layer's picked experts [T, k] to routing_log."""

    def silu(v):
        return v / (1.0 + np.exp(-v))

    def mlp(i, h):
        p = f"layers.{i}."
        wt = {k: np.asarray(weights[p + k], np.float64) for k in weights_keys(cfg)}
        out = np.zeros_like(h)
        picks = []
        for t in range(h.shape[0]):
            logits = h[t] @ wt["router"]
            top = np.argsort(-logits, kind="stable")[: cfg.moe.top_k]
            g = np.exp(logits[top] - logits[top].max())
            g /= g.sum()
            for e, ge in zip(top, g, strict=True):
                a = silu(h[t] @ wt["experts_gate"][e]) * (h[t] @ wt["experts_up"][e])
                out[t] += ge * (a @ wt["experts_down"][e])
            if cfg.moe.shared_intermediate:
                a = silu(h[t] @ wt["shared_gate"]) * (h[t] @ wt["shared_up"])
                out[t] += a @ wt["shared_down"]
            picks.append(top)
        routing_log.append((i, np.array(picks)))
        return out

    return mlp


def weights_keys(cfg):
    keys = ["router", "experts_gate", "experts_up", "experts_down"]
    return keys + (
        ["shared_gate", "shared_up", "shared_down"] if cfg.moe.shared_intermediate else []
    )


def reference(cfg, weights, ids):
    """(logits [B, T, V], per layer: experts [B*T, k] in row order)."""
    logs, outs = [], []
    for b in range(ids.shape[0]):
        log = []
        outs.append(np_forward(cfg, weights, ids[b], mlp=moe_reference(weights, cfg, log)))
        logs.append(log)
    per_layer = [
        np.concatenate([logs[b][i][1] for b in range(ids.shape[0])]) for i in range(cfg.num_layers)
    ]
    return np.stack(outs), per_layer


CASES = [  # N, algorithm, shared expert, skewed router
    (1, "dedup", 0, False),
    (2, "all_to_all", IS, False),
    (4, "dysharp", 0, True),
    (8, "dedup", IS, True),
]


@pytest.mark.parametrize("n,algorithm,shared,skewed", CASES)
def test_ep_model_equals_dense_numpy(n, algorithm, shared, skewed):
    cfg = tiny_moe(algorithm=algorithm, shared_intermediate=shared)
    w = random_weights(cfg, seed=n)
    if skewed:
        w = skew(w, cfg)
    ids = np.random.default_rng(n).integers(0, cfg.vocab_size, (B, T))
    ref, ref_routing = reference(cfg, w, ids)
    model = build_model(cfg, dict(w), tp=n, collective="exact")
    out, routing = forward_with_routing(model, ids)
    np.testing.assert_allclose(out, ref, rtol=0, atol=2e-5 * np.abs(ref).max())
    # the model routed every token like the reference (rank s holds rows s*M/N ..)
    for i, (experts, _) in enumerate(routing):
        assert experts.shape == (n, B * T // n, K)
        got = np.sort(experts.reshape(-1, K), axis=1)
        np.testing.assert_array_equal(got, np.sort(ref_routing[i], axis=1))
        if skewed:  # precondition: most tokens pick a hot expert (0 or 1; uniform: 46%)
            assert np.isin(ref_routing[i], (0, 1)).any(axis=1).mean() >= 0.75


def closed_form_bytes(experts, n, hidden, algorithm, beta_d, beta_c):
    """spec/moe.md's per-rank bytes written out token by token; experts [N*T', k],
    token j's source rank j // T', expert e on rank e // (E / N)."""
    per_tok = experts.shape[0] // n
    out = {f: [0] * n for f in ("dispatch_up", "dispatch_down", "combine_up", "combine_down")}
    out |= {"meta_up": [0] * n, "meta_down": [0] * n}
    for j, row in enumerate(experts):
        s = j // per_tok
        ranks = [int(e) // (E // n) for e in row]
        remote_pairs = [r for r in ranks if r != s]
        remote_ranks = sorted(set(remote_pairs))
        for r in remote_pairs:
            out["meta_up"][s] += 8
            out["meta_down"][r] += 8
        if algorithm == "all_to_all":
            dests = remote_pairs
        else:
            dests = remote_ranks
        for r in dests:
            out["dispatch_down"][r] += beta_d
            out["combine_up"][r] += beta_c
        sent = len(dests) if algorithm != "dysharp" else int(bool(dests))
        out["dispatch_up"][s] += sent * beta_d
        out["combine_down"][s] += sent * beta_c
    return out


@pytest.mark.parametrize("algorithm", ["all_to_all", "dedup", "dysharp"])
def test_concrete_traffic_report(algorithm):
    """One report: attn_out All-Reduces (one record, calls = L) and one exact MoE record
    per layer whose bytes equal the closed forms on the reference's routing."""
    n = 4
    cfg = tiny_moe(algorithm=algorithm, dispatch_format="int8", combine_format="bf16")
    w = skew(random_weights(cfg, seed=3), cfg)
    ids = np.random.default_rng(3).integers(0, cfg.vocab_size, (B, T))
    _, ref_routing = reference(cfg, w, ids)
    model = build_model(cfg, dict(w), tp=n, collective="scin:int8")
    rep = concrete_traffic(model, ids)
    ar = [r for r in rep.records if not isinstance(r, EPRecord)]
    moe = [r for r in rep.records if isinstance(r, EPRecord)]
    assert [(r.label, r.calls) for r in ar] == [("attn_out", cfg.num_layers)]
    assert [r.label for r in moe] == [f"moe.{i}" for i in range(cfg.num_layers)]
    h = cfg.hidden_size
    beta_d = h + math.ceil(h / 32) * 2  # int8: a byte per element + an fp16 scale per 32
    beta_c = 2 * h
    for rec, experts in zip(moe, ref_routing, strict=True):
        assert rec.routing == "concrete" and rec.calls == 1
        want = closed_form_bytes(experts, n, h, algorithm, beta_d, beta_c)
        for field, values in want.items():
            assert list(rec.parts[field]) == values, field
        assert list(rec.up) == [
            sum(want[f"{p}_up"][r] for p in ("dispatch", "combine", "meta")) for r in range(n)
        ]
    # report totals add the All-Reduce and MoE links
    assert rep.up == tuple(sum(r.calls * r.up[i] for r in rep.records) for i in range(n))


def test_mixtral_model_traffic_by_shape():
    """mixtral-8x7b by abstract evaluation: 32 attn_out All-Reduces of [M, 4096] and one MoE
    record of 32 calls with the uniform expectation E[d] = N (1 - C(E - E/N, k) / C(E, k))."""
    cfg = get_config("mixtral-8x7b")
    assert len(weight_shapes(cfg)) == 3 + 32 * 10 and "layers.0.experts_down" in weight_shapes(cfg)
    n, tokens = 8, 64
    rep = model_traffic(cfg, tp=n, collective="scin:int8", tokens=tokens)
    (ar,) = [r for r in rep.records if not isinstance(r, EPRecord)]
    (moe,) = [r for r in rep.records if isinstance(r, EPRecord)]
    assert (ar.label, ar.calls, ar.shape) == ("attn_out", 32, (tokens, 4096))
    assert (moe.routing, moe.calls, moe.spec.tokens, moe.spec.n_ranks) == (
        "uniform",
        32,
        tokens // n,
        n,
    )
    t, h = tokens // n, 4096
    d_rem = n * (1 - Fraction(math.comb(E - E // n, K), math.comb(E, K))) * Fraction(n - 1, n)
    for r in range(n):  # dedup, bf16 both ways
        assert moe.parts["dispatch_up"][r] == t * d_rem * 2 * h
        assert moe.parts["combine_down"][r] == t * d_rem * 2 * h
        assert moe.parts["meta_up"][r] == t * Fraction(K * (n - 1), n) * 8
    assert rep.to_dict()["records"][1]["routing"] == "uniform"


def test_moe_config_errors():
    with pytest.raises(ValueError, match="top_k"):
        MoeSpec(n_experts=2, top_k=3, intermediate=4)
    with pytest.raises(ValueError, match="algorithm"):
        MoeSpec(n_experts=8, top_k=2, intermediate=4, algorithm="ring")
    with pytest.raises(TypeError, match="MoeSpec"):
        get_config("tiny").replace(moe={"n_experts": 8})
    cfg = tiny_moe()
    w = random_weights(cfg)
    with pytest.raises(ValueError, match="mode='vmap'"):
        build_model(cfg, dict(w), tp=2, mode="vmap_ranks")
    model = build_model(cfg, dict(w), tp=4)
    with pytest.raises(ValueError, match="divisible by 4"):
        model.forward(np.zeros((1, 3), np.int32))
    with pytest.raises(ValueError, match="do not split"):
        build_model(tiny_moe(n_experts=6), random_weights(tiny_moe(n_experts=6)), tp=4).forward(
            np.zeros((1, 4), np.int32)
        )


def _mixtral_files(tmp_path):
    """A tiny Mixtral written as GGUF (`llama` + ffn_*_exps) and as an HF MixtralForCausalLM
    folder from the same canonical weights; returns (config, weights, gguf path, folder)."""
    import json

    import gguf
    from safetensors.numpy import load_file, save_file
    from tiny_gguf import hf_layout, tiny_config, tiny_vocab, write_hf_folder

    dense = tiny_config(intermediate_size=I)
    cfg = dense.replace(moe=MoeSpec(n_experts=E, top_k=K, intermediate=I))
    w = random_weights(cfg, seed=11)
    dw = dict(w)  # dense stand-ins so the dense writers run; their MLP tensors are dropped
    for i in range(cfg.num_layers):
        for key, shape in (("w_gate", (64, I)), ("w_up", (64, I)), ("w_down", (I, 64))):
            dw[f"layers.{i}.{key}"] = np.zeros(shape, np.float32)

    # GGUF: llama.cpp's Mixtral layout, PyTorch [out, in] per expert, experts first
    path = tmp_path / "mixtral.gguf"
    tokens, types, merges = tiny_vocab()
    wr = gguf.GGUFWriter(str(path), "llama")
    wr.add_name("tiny-mixtral")
    wr.add_block_count(cfg.num_layers)
    wr.add_context_length(cfg.max_position)
    wr.add_embedding_length(cfg.hidden_size)
    wr.add_feed_forward_length(I)
    wr.add_head_count(cfg.num_heads)
    wr.add_head_count_kv(cfg.num_kv_heads)
    wr.add_rope_dimension_count(cfg.head_dim)
    wr.add_rope_freq_base(cfg.rope_theta)
    wr.add_layer_norm_rms_eps(cfg.rms_norm_eps)
    wr.add_expert_count(E)
    wr.add_expert_used_count(K)
    wr.add_tokenizer_model("gpt2")
    wr.add_tokenizer_pre("smollm")
    wr.add_token_list(tokens)
    wr.add_token_types(types)
    wr.add_token_merges(merges)
    wr.add_bos_token_id(0)
    wr.add_eos_token_id(0)
    for name, arr in hf_layout(dense, dw).items():
        if not any(f".{g}.weight" in name for g in ("ffn_gate", "ffn_up", "ffn_down")):
            wr.add_tensor(name, np.ascontiguousarray(arr, np.float32))
    for i in range(cfg.num_layers):
        p, b = f"layers.{i}.", f"blk.{i}."
        wr.add_tensor(b + "ffn_gate_inp.weight", np.ascontiguousarray(w[p + "router"].T))
        for g, key in (("gate", "experts_gate"), ("up", "experts_up"), ("down", "experts_down")):
            wr.add_tensor(
                f"{b}ffn_{g}_exps.weight", np.ascontiguousarray(w[p + key].swapaxes(1, 2))
            )
    wr.write_header_to_file()
    wr.write_kv_data_to_file()
    wr.write_tensors_to_file()
    wr.close()

    # HF: the dense folder, its MLP replaced by block_sparse_moe tensors, config -> mixtral
    folder = tmp_path / "mixtral"
    raw = write_hf_folder(folder, dense, dw)
    raw.update(
        architectures=["MixtralForCausalLM"],
        model_type="mixtral",
        num_local_experts=E,
        num_experts_per_tok=K,
    )
    (folder / "config.json").write_text(json.dumps(raw))
    t = {k: v for k, v in load_file(str(folder / "model.safetensors")).items() if ".mlp." not in k}
    for i in range(cfg.num_layers):
        p, b = f"layers.{i}.", f"model.layers.{i}.block_sparse_moe."
        t[b + "gate.weight"] = np.ascontiguousarray(w[p + "router"].T)
        for e in range(E):
            for hname, key in (
                ("w1", "experts_gate"),
                ("w3", "experts_up"),
                ("w2", "experts_down"),
            ):
                t[f"{b}experts.{e}.{hname}.weight"] = np.ascontiguousarray(w[p + key][e].T)
    save_file(t, str(folder / "model.safetensors"))
    return cfg, w, path, folder


def test_mixtral_loaders_build_the_full_model(tmp_path):
    """GGUF and HF Mixtral files written here load as LlamaConfig(moe=...) with the same
    canonical weights, and the loaded model on 2 ranks == the dense NumPy reference."""
    from scinjax.models import load_weights

    cfg, w, path, folder = _mixtral_files(tmp_path)
    ids = np.random.default_rng(5).integers(0, cfg.vocab_size, (2, 6))
    ref, _ = reference(cfg, w, ids)
    for src in (path, folder):
        got_cfg, got, _ = load_weights(src)
        assert got_cfg.moe == cfg.moe, src
        assert sorted(got) == sorted(w), src
        for k in w:
            np.testing.assert_allclose(np.asarray(got[k]), w[k], rtol=0, atol=1e-6, err_msg=k)
    # loaders give the default bf16 links; fp32 links make the EP model exact
    exact = got_cfg.moe.replace(dispatch_format="fp32", combine_format="fp32")
    model = build_model(got_cfg.replace(moe=exact), got, tp=2, collective="exact")
    out = np.asarray(model.forward(ids))
    np.testing.assert_allclose(out, ref, rtol=0, atol=2e-5 * np.abs(ref).max())
