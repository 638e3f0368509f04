"""Mixtral-format GGUF and HF folders written here, read back into moe_mlp params."""

from __future__ import annotations

import json

import numpy as np
import pytest
from scinjax.models.moe_loader import read_mixtral_gguf_moe, read_mixtral_hf_moe

L, H, E, K, I = 2, 16, 4, 2, 24


def canonical(seed=0):
    rng = np.random.default_rng(seed)
    return {
        "router": rng.standard_normal((L, H, E)).astype(np.float32),
        "w_gate": rng.standard_normal((L, E, H, I)).astype(np.float32),
        "w_up": rng.standard_normal((L, E, H, I)).astype(np.float32),
        "w_down": rng.standard_normal((L, E, I, H)).astype(np.float32),
    }


def write_gguf(path, p):
    import gguf

    w = gguf.GGUFWriter(str(path), "llama")
    w.add_name("tiny-mixtral")
    w.add_block_count(L)
    w.add_embedding_length(H)
    w.add_feed_forward_length(I)
    w.add_expert_count(E)
    w.add_expert_used_count(K)
    for layer in range(L):
        b = f"blk.{layer}."
        # PyTorch layout [out, in] per expert, experts stacked first (llama.cpp converter)
        w.add_tensor(b + "ffn_gate_inp.weight", np.ascontiguousarray(p["router"][layer].T))
        for name, key in (("ffn_gate_exps", "w_gate"), ("ffn_up_exps", "w_up")):
            w.add_tensor(b + name + ".weight", np.ascontiguousarray(p[key][layer].swapaxes(1, 2)))
        w.add_tensor(
            b + "ffn_down_exps.weight", np.ascontiguousarray(p["w_down"][layer].swapaxes(1, 2))
        )
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()


def write_hf(folder, p):
    from safetensors.numpy import save_file

    folder.mkdir()
    cfg = dict(
        architectures=["MixtralForCausalLM"],
        model_type="mixtral",
        hidden_size=H,
        intermediate_size=I,
        num_hidden_layers=L,
        num_local_experts=E,
        num_experts_per_tok=K,
    )
    (folder / "config.json").write_text(json.dumps(cfg))
    tensors = {}
    for layer in range(L):
        b = f"model.layers.{layer}.block_sparse_moe."
        tensors[b + "gate.weight"] = np.ascontiguousarray(p["router"][layer].T)  # [E, H]
        for e in range(E):
            x = f"{b}experts.{e}."
            tensors[x + "w1.weight"] = np.ascontiguousarray(p["w_gate"][layer, e].T)  # [I, H]
            tensors[x + "w3.weight"] = np.ascontiguousarray(p["w_up"][layer, e].T)
            tensors[x + "w2.weight"] = np.ascontiguousarray(p["w_down"][layer, e].T)  # [H, I]
    half = len(tensors) // 2  # two shards
    names = sorted(tensors)
    save_file({k: tensors[k] for k in names[:half]}, str(folder / "model-1.safetensors"))
    save_file({k: tensors[k] for k in names[half:]}, str(folder / "model-2.safetensors"))


@pytest.mark.parametrize("kind", ["gguf", "hf"])
def test_round_trip(tmp_path, kind):
    p = canonical()
    if kind == "gguf":
        write_gguf(tmp_path / "m.gguf", p)
        cfg, got = read_mixtral_gguf_moe(tmp_path / "m.gguf")
    else:
        write_hf(tmp_path / "mixtral", p)
        cfg, got = read_mixtral_hf_moe(tmp_path / "mixtral")
    assert (cfg.hidden, cfg.n_experts, cfg.top_k, cfg.intermediate, cfg.moe_layers) == (
        H,
        E,
        K,
        I,
        L,
    )
    for k, v in p.items():
        np.testing.assert_array_equal(got[k], v, err_msg=k)


def test_loaded_weights_run_in_the_ep_layer(tmp_path):
    import jax.numpy as jnp
    from scinjax.models.moe import moe_mlp

    from scinjax.moe import EPConfig

    p = canonical(1)
    write_hf(tmp_path / "mixtral", p)
    cfg, got = read_mixtral_hf_moe(tmp_path / "mixtral")
    layer0 = {k: jnp.asarray(v[0]) for k, v in got.items()}
    x = jnp.asarray(np.random.default_rng(2).standard_normal((2, 3, H)), jnp.float32)
    ep = EPConfig(n_experts=E, algorithm="dysharp", dispatch_format="fp32", combine_format="fp32")
    out, experts, gates = moe_mlp(x, layer0, ep, k=cfg.top_k)
    # token (0, 0) by hand: softmax over its top-k logits, SwiGLU experts
    h = np.asarray(x[0, 0], np.float64)
    logits = h @ p["router"][0]
    top = np.argsort(-logits)[:K]
    g = np.exp(logits[top] - logits[top].max())
    g /= g.sum()
    want = 0
    for e, ge in zip(top, g, strict=True):
        a = h @ p["w_gate"][0, e]
        want = want + ge * ((a / (1 + np.exp(-a)) * (h @ p["w_up"][0, e])) @ p["w_down"][0, e])
    np.testing.assert_allclose(np.asarray(out[0, 0]), want, rtol=1e-4, atol=1e-4)


def test_not_moe(tmp_path):
    import gguf

    w = gguf.GGUFWriter(str(tmp_path / "d.gguf"), "llama")
    w.add_block_count(1)
    w.add_tensor("x", np.zeros(4, np.float32))
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    with pytest.raises(ValueError, match="expert_count"):
        read_mixtral_gguf_moe(tmp_path / "d.gguf")
    (tmp_path / "hf").mkdir()
    (tmp_path / "hf" / "config.json").write_text(json.dumps({"hidden_size": 4}))
    with pytest.raises(ValueError, match="num_local_experts"):
        read_mixtral_hf_moe(tmp_path / "hf")
