"""Pure math of one LLaMA block: no parameters, no ranks, just arrays.

Shapes: B batch, T tokens, D hidden, H query heads, K key-value heads,
hd head width, F MLP width, R ranks held locally, S slots per rank.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

__all__ = [
    "rms_norm",
    "rope_inv_freq",
    "rope_tables",
    "apply_rope",
    "causal_attention",
    "swiglu",
    "to_slots",
]


def rms_norm(x: jax.Array, weight: jax.Array, eps: float) -> jax.Array:
    """RMSNorm of `x` [..., D] in float32, scaled by `weight` [D]; x's dtype out.

    Hugging Face's LlamaRMSNorm: ``weight * (x / sqrt(mean(x^2) + eps))``.
    """
    xf = x.astype(jnp.float32)
    y = xf * jax.lax.rsqrt(jnp.mean(xf * xf, axis=-1, keepdims=True) + eps)
    return (weight.astype(jnp.float32) * y).astype(x.dtype)


def rope_inv_freq(head_dim: int, theta: float, scaling=None) -> np.ndarray:
    """Rotary inverse frequencies [hd/2] (float64, static), scaled by a `RopeScaling`."""
    exponent = np.arange(0, head_dim, 2, dtype=np.float64) / head_dim
    inv_freq = 1.0 / (theta**exponent)
    if scaling is None:
        return inv_freq
    if scaling.rope_type == "linear":
        return inv_freq / scaling.factor
    if scaling.rope_type == "freq_factors":
        return inv_freq / np.asarray(scaling.freq_factors, dtype=np.float64)
    # llama3: long wavelengths slowed by `factor`, short kept, a linear blend between.
    lo, hi, orig = scaling.low_freq_factor, scaling.high_freq_factor, scaling.original_max_position
    wavelen = 2 * np.pi / inv_freq
    smooth = (orig / wavelen - lo) / (hi - lo)
    blended = (1 - smooth) * inv_freq / scaling.factor + smooth * inv_freq
    out = np.where(wavelen > orig / lo, inv_freq / scaling.factor, blended)
    return np.where(wavelen < orig / hi, inv_freq, out)


def rope_tables(
    positions: jax.Array, head_dim: int, theta: float, scaling=None
) -> tuple[jax.Array, jax.Array]:
    """cos, sin tables [T, hd] (float32) for integer `positions` [T].

    Hugging Face layout: frequency j (j < hd/2) drives dimensions j and j + hd/2.
    `scaling` is a `RopeScaling` or None.
    """
    inv_freq = jnp.asarray(rope_inv_freq(head_dim, theta, scaling), dtype=jnp.float32)
    freqs = positions.astype(jnp.float32)[:, None] * inv_freq[None, :]  # [T, hd/2]
    emb = jnp.concatenate([freqs, freqs], axis=-1)  # [T, hd]
    return jnp.cos(emb), jnp.sin(emb)


def apply_rope(x: jax.Array, cos: jax.Array, sin: jax.Array) -> jax.Array:
    """Rotate `x` [B, T, H, hd] by the tables [T, hd]: x*cos + rotate_half(x)*sin."""
    half = x.shape[-1] // 2
    rotated = jnp.concatenate([-x[..., half:], x[..., :half]], axis=-1)
    c = cos[:, None, :].astype(x.dtype)
    s = sin[:, None, :].astype(x.dtype)
    return x * c + rotated * s


def causal_attention(
    q: jax.Array, k: jax.Array, v: jax.Array, offset=0, window: int | None = None
) -> jax.Array:
    """Causal grouped-query attention, optionally within a sliding window.

    Args:
      q: [B, T, H, hd] queries at positions offset .. offset+T-1; H = K * g.
      k, v: [B, S, K, hd] keys/values at positions 0 .. S-1 (S >= T; a
        KV cache may hold unused positions past offset+T-1, masked out).
        Query head h uses key-value head h // g.
      offset: position of the first query (int or traced int).
      window: W; the query at position i sees keys j with 0 <= i - j < W
        (Mistral's sliding window). None: every j <= i.
    Returns:
      [B, T, H, hd] in q's dtype. Scores and softmax in float32.
    """
    b, t, h, hd = q.shape
    s, kh = k.shape[1], k.shape[2]
    qg = q.reshape(b, t, kh, h // kh, hd)
    scores = jnp.einsum("btkgx,bskx->bkgts", qg, k, preferred_element_type=jnp.float32)
    scores = scores * np.float32(1.0 / np.sqrt(hd))
    if isinstance(offset, int) and offset == 0 and s == t:
        mask = np.tril(np.ones((t, s), dtype=bool))
        if window is not None:
            mask &= ~np.tril(np.ones((t, s), dtype=bool), -window)
    else:
        query_pos = jnp.arange(t)[:, None] + offset
        mask = jnp.arange(s)[None, :] <= query_pos
        if window is not None:
            mask = mask & (jnp.arange(s)[None, :] > query_pos - window)
    scores = jnp.where(mask, scores, np.float32(np.finfo(np.float32).min))
    probs = jax.nn.softmax(scores, axis=-1).astype(v.dtype)
    out = jnp.einsum("bkgts,bskx->btkgx", probs, v)
    return out.reshape(b, t, h, hd)


def swiglu(gate: jax.Array, up: jax.Array) -> jax.Array:
    """SwiGLU activation: silu(gate) * up, elementwise ([..., F])."""
    return jax.nn.silu(gate) * up


def to_slots(x: jax.Array, slots: tuple[tuple[int, ...], ...] | None, ranks: int) -> jax.Array:
    """Regroup units of `x` [B, T, n, w] into rank slots [B, T, R, S*w].

    `slots[r][s]` is the unit held by slot s of rank r, or -1 for a zero
    (padding) slot. `slots=None` means the units are already rank-major
    (n = R*S) and only a reshape is needed.
    """
    b, t, n, w = x.shape
    if slots is None:
        return x.reshape(b, t, ranks, (n // ranks) * w)
    idx = np.asarray(slots, dtype=np.int32)  # [R, S]
    if (idx < 0).any():
        x = jnp.concatenate([x, jnp.zeros((b, t, 1, w), x.dtype)], axis=2)
        idx = np.where(idx < 0, n, idx)
    out = jnp.take(x, idx.reshape(-1), axis=2)  # [B, T, R*S, w]
    return out.reshape(b, t, idx.shape[0], idx.shape[1] * w)
