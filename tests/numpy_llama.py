"""An independent NumPy forward pass of a LLaMA decoder on canonical weights.

Written from the LLaMA / Hugging Face ``LlamaForCausalLM`` definition, sharing no
code with the Flax model in ``models/``: RMSNorm, rotary embeddings in the
``rotate_half`` layout, grouped-query causal attention, SwiGLU MLP, tied or
untied head. Computes in float64 by default, so it is the exact function of the
(float32) weights up to float64 rounding; the Flax model's float32 error is
measured against it.

Canonical weights (float32, ``y = x @ W``): ``embed [V, D]``;
``layers.{i}.attn_norm [D]``, ``wq [D, Hq*hd]``, ``wk/wv [D, Hkv*hd]``,
``wo [Hq*hd, D]``, ``mlp_norm [D]``, ``w_gate/w_up [D, F]``, ``w_down [F, D]``;
``final_norm [D]``; ``lm_head [D, V]`` when untied.
"""

from __future__ import annotations

import numpy as np

__all__ = ["forward", "rms_norm", "rope", "attention", "greedy", "random_weights"]


def rms_norm(x: np.ndarray, w: np.ndarray, eps: float) -> np.ndarray:
    """``x / sqrt(mean(x**2) + eps) * w`` over the last axis. x: [T, D]."""
    return x / np.sqrt(np.mean(x * x, axis=-1, keepdims=True) + eps) * w


def rope(x: np.ndarray, positions: np.ndarray, theta: float) -> np.ndarray:
    """Rotary embedding, HF ``rotate_half`` layout. x: [T, H, hd]; positions: [T]."""
    hd = x.shape[-1]
    inv_freq = 1.0 / theta ** (np.arange(0, hd, 2, dtype=np.float64) / hd)  # [hd/2]
    ang = positions.astype(np.float64)[:, None] * inv_freq[None, :]  # [T, hd/2]
    cos = np.concatenate([np.cos(ang), np.cos(ang)], axis=-1)[:, None, :].astype(x.dtype)
    sin = np.concatenate([np.sin(ang), np.sin(ang)], axis=-1)[:, None, :].astype(x.dtype)
    half = hd // 2
    rotated = np.concatenate([-x[..., half:], x[..., :half]], axis=-1)
    return x * cos + rotated * sin


def attention(q: np.ndarray, k: np.ndarray, v: np.ndarray) -> np.ndarray:
    """Causal grouped-query attention. q: [T, Hq, hd]; k, v: [T, Hkv, hd] -> [T, Hq, hd]."""
    T, Hq, hd = q.shape
    group = Hq // k.shape[1]
    k = np.repeat(k, group, axis=1)  # query head h uses kv head h // group
    v = np.repeat(v, group, axis=1)
    scores = np.einsum("thd,shd->hts", q, k) / np.sqrt(hd)
    mask = np.tril(np.ones((T, T), dtype=bool))
    scores = np.where(mask[None], scores, -np.inf)
    scores = scores - scores.max(axis=-1, keepdims=True)
    p = np.exp(scores)
    p = p / p.sum(axis=-1, keepdims=True)
    return np.einsum("hts,shd->thd", p, v)


def forward(config, weights: dict, ids, dtype=np.float64) -> np.ndarray:
    """Logits ``[T, V]`` (float32) of token ids ``[T]`` at positions 0..T-1."""
    c = config

    def W(name):  # converted on use: a float64 copy of every weight at once is ~1 GB
        return np.asarray(weights[name], dtype=dtype)

    ids = np.asarray(ids, dtype=np.int64)
    T = ids.shape[0]
    pos = np.arange(T)
    x = W("embed")[ids]  # [T, D]
    for i in range(c.num_layers):
        p = f"layers.{i}."
        h = rms_norm(x, W(p + "attn_norm"), c.rms_norm_eps)
        q = (h @ W(p + "wq")).reshape(T, c.num_heads, c.head_dim)
        k = (h @ W(p + "wk")).reshape(T, c.num_kv_heads, c.head_dim)
        v = (h @ W(p + "wv")).reshape(T, c.num_kv_heads, c.head_dim)
        q, k = rope(q, pos, c.rope_theta), rope(k, pos, c.rope_theta)
        a = attention(q, k, v).reshape(T, c.num_heads * c.head_dim)
        x = x + a @ W(p + "wo")
        h = rms_norm(x, W(p + "mlp_norm"), c.rms_norm_eps)
        g = h @ W(p + "w_gate")
        silu = g / (1.0 + np.exp(-g))
        x = x + (silu * (h @ W(p + "w_up"))) @ W(p + "w_down")
    x = rms_norm(x, W("final_norm"), c.rms_norm_eps)
    head = W("embed").T if c.tie_embeddings else W("lm_head")
    return (x @ head).astype(np.float32)


def greedy(config, weights: dict, ids, n_new: int, dtype=np.float64) -> list[int]:
    """``n_new`` greedy tokens after ``ids`` (full recompute each step; short prompts only)."""
    ids = list(ids)
    out = []
    for _ in range(n_new):
        nxt = int(np.argmax(forward(config, weights, ids, dtype)[-1]))
        out.append(nxt)
        ids.append(nxt)
    return out


def random_weights(config, seed: int = 0, scale: float = 0.5) -> dict[str, np.ndarray]:
    """Random canonical float32 weights (norm gains around 1) for small test configs."""
    rng = np.random.default_rng(seed)
    c = config
    D, F, V = c.hidden_size, c.intermediate_size, c.vocab_size
    q, kv = c.num_heads * c.head_dim, c.num_kv_heads * c.head_dim

    def mat(n_in, n_out):
        return (rng.standard_normal((n_in, n_out)) * scale / np.sqrt(n_in)).astype(np.float32)

    def gain(n):
        return (1.0 + 0.1 * rng.standard_normal(n)).astype(np.float32)

    w = {"embed": rng.standard_normal((V, D)).astype(np.float32)}
    for i in range(c.num_layers):
        p = f"layers.{i}."
        w |= {
            p + "attn_norm": gain(D),
            p + "wq": mat(D, q),
            p + "wk": mat(D, kv),
            p + "wv": mat(D, kv),
            p + "wo": mat(q, D),
            p + "mlp_norm": gain(D),
            p + "w_gate": mat(D, F),
            p + "w_up": mat(D, F),
            p + "w_down": mat(F, D),
        }
    w["final_norm"] = gain(D)
    if not c.tie_embeddings:
        w["lm_head"] = mat(D, V)
    return w
