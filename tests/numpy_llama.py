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
``final_norm [D]``; ``lm_head [D, V]`` when untied; ``layers.{i}.bq [Hq*hd]``,
``bk/bv [Hkv*hd]`` when ``config.qkv_bias``.

Switches, each from its published definition: Qwen2's Q/K/V biases
(``Qwen2Attention``: ``nn.Linear(..., bias=True)``); rotary scaling ("linear":
positions divided by the factor; "llama3": Meta's ``apply_scaling`` of the
Llama-3.1 reference code, written per frequency with a loop; "freq_factors":
llama.cpp's ``rope_freqs``, theta divided by the factor); Mistral's sliding
window (a query at i sees keys j with i - W < j <= i).
"""

from __future__ import annotations

import math

import numpy as np

__all__ = [
    "forward",
    "rms_norm",
    "inv_freqs",
    "rope",
    "attention",
    "greedy",
    "random_weights",
]


def rms_norm(x: np.ndarray, w: np.ndarray, eps: float) -> np.ndarray:
    """``x / sqrt(mean(x**2) + eps) * w`` over the last axis. x: [T, D]."""
    return x / np.sqrt(np.mean(x * x, axis=-1, keepdims=True) + eps) * w


def _llama3_scale(freqs, factor, low, high, old_len):
    """Meta's Llama-3.1 ``apply_scaling`` (reference repo), one frequency at a time."""
    low_wavelen = old_len / low
    high_wavelen = old_len / high
    out = []
    for freq in freqs:
        wavelen = 2 * math.pi / freq
        if wavelen < high_wavelen:
            out.append(freq)
        elif wavelen > low_wavelen:
            out.append(freq / factor)
        else:
            smooth = (old_len / wavelen - low) / (high - low)
            out.append((1 - smooth) * freq / factor + smooth * freq)
    return np.array(out, dtype=np.float64)


def inv_freqs(hd: int, theta: float, scaling=None) -> np.ndarray:
    """theta^(-2j/hd) for j < hd/2, rescaled by ``scaling`` (a RopeScaling or None)."""
    inv_freq = 1.0 / theta ** (np.arange(0, hd, 2, dtype=np.float64) / hd)  # [hd/2]
    if scaling is None:
        return inv_freq
    kind = scaling.rope_type
    if kind == "linear":  # HF: position / factor, i.e. the same angle at factor x the position
        return inv_freq / scaling.factor
    if kind == "freq_factors":  # ggml rope: theta_j / freq_factors[j]
        return inv_freq / np.array(scaling.freq_factors, dtype=np.float64)
    if kind == "llama3":
        return _llama3_scale(
            inv_freq,
            scaling.factor,
            scaling.low_freq_factor,
            scaling.high_freq_factor,
            scaling.original_max_position,
        )
    raise ValueError(f"numpy_llama: rope type {kind!r} not written")


def rope(x: np.ndarray, positions: np.ndarray, theta: float, scaling=None) -> np.ndarray:
    """Rotary embedding, HF ``rotate_half`` layout. x: [T, H, hd]; positions: [T]."""
    hd = x.shape[-1]
    inv_freq = inv_freqs(hd, theta, scaling)
    ang = positions.astype(np.float64)[:, None] * inv_freq[None, :]  # [T, hd/2]
    cos = np.concatenate([np.cos(ang), np.cos(ang)], axis=-1)[:, None, :].astype(x.dtype)
    sin = np.concatenate([np.sin(ang), np.sin(ang)], axis=-1)[:, None, :].astype(x.dtype)
    half = hd // 2
    rotated = np.concatenate([-x[..., half:], x[..., :half]], axis=-1)
    return x * cos + rotated * sin


def attention(q: np.ndarray, k: np.ndarray, v: np.ndarray, window=None) -> np.ndarray:
    """Causal grouped-query attention. q: [T, Hq, hd]; k, v: [T, Hkv, hd] -> [T, Hq, hd].

    ``window`` W: query i sees keys j with i - W < j <= i (None: all j <= i)."""
    T, Hq, hd = q.shape
    group = Hq // k.shape[1]
    k = np.repeat(k, group, axis=1)  # query head h uses kv head h // group
    v = np.repeat(v, group, axis=1)
    scores = np.einsum("thd,shd->hts", q, k) / np.sqrt(hd)
    i, j = np.arange(T)[:, None], np.arange(T)[None, :]
    mask = j <= i
    if window is not None:
        mask = mask & (j > i - window)
    scores = np.where(mask[None], scores, -np.inf)
    scores = scores - scores.max(axis=-1, keepdims=True)
    p = np.exp(scores)
    p = p / p.sum(axis=-1, keepdims=True)
    return np.einsum("hts,shd->thd", p, v)


def forward(config, weights: dict, ids, dtype=np.float64, mlp=None) -> np.ndarray:
    """Logits ``[T, V]`` (float32) of token ids ``[T]`` at positions 0..T-1.

    ``mlp(i, h [T, D]) -> [T, D]``, when given, replaces layer i's dense SwiGLU MLP (an
    MoE reference plugs in here)."""
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
        q, k, v = h @ W(p + "wq"), h @ W(p + "wk"), h @ W(p + "wv")
        if getattr(c, "qkv_bias", False):
            q, k, v = q + W(p + "bq"), k + W(p + "bk"), v + W(p + "bv")
        q = q.reshape(T, c.num_heads, c.head_dim)
        k = k.reshape(T, c.num_kv_heads, c.head_dim)
        v = v.reshape(T, c.num_kv_heads, c.head_dim)
        scaling = getattr(c, "rope_scaling", None)
        q, k = rope(q, pos, c.rope_theta, scaling), rope(k, pos, c.rope_theta, scaling)
        a = attention(q, k, v, getattr(c, "sliding_window", None))
        a = a.reshape(T, c.num_heads * c.head_dim)
        x = x + a @ W(p + "wo")
        h = rms_norm(x, W(p + "mlp_norm"), c.rms_norm_eps)
        if mlp is not None:
            x = x + mlp(i, h)
            continue
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
        if getattr(c, "qkv_bias", False):
            w |= {
                p + "bq": (0.5 * rng.standard_normal(q)).astype(np.float32),
                p + "bk": (0.5 * rng.standard_normal(kv)).astype(np.float32),
                p + "bv": (0.5 * rng.standard_normal(kv)).astype(np.float32),
            }
    w["final_norm"] = gain(D)
    if not c.tie_embeddings:
        w["lm_head"] = mat(D, V)
    return w
