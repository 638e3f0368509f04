"""A tiny MoE language model for numerics studies: DP or TP attention, EP experts.

Each of N emulated ranks holds B sequences of T tokens (``tokens [N, B, T]``). A layer is
``x += attn(norm(x))`` (causal, rotary) then ``x += moe(norm(x))`` where the MoE FFN
dispatches every rank's ``B * T`` tokens to the expert ranks and combines them back through
:func:`scinjax.models.moe.moe_mlp` (the EP algorithm and link formats of an
:class:`~scinjax.moe.EPConfig`). Parameters are a plain dict (random init here; trained
by :mod:`scinjax.apps.moe_study`).

Attention is either data parallel (``tp=None``: each rank attends over its own B
sequences, no collective, as DeepSeek's DP attention) or tensor parallel (``tp`` a
collective such as ``"exact"`` or ``"scin:int8"``: the N ranks form one TP group that
holds all N * B sequences, each rank computes heads ``r * nh/N ..`` and the row-parallel
output projection's partial sums go through :func:`scinjax.allreduce`; for the experts
rank s then takes its slice of B sequences, the sequence split of EP under TP).
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np

from scinjax import allreduce
from scinjax.moe import EPConfig

from .layers import apply_rope, causal_attention, rms_norm, rope_tables
from .moe import moe_mlp

__all__ = ["MoELMConfig", "init_params", "forward", "load_balance_loss"]


@dataclasses.dataclass(frozen=True, kw_only=True)
class MoELMConfig:
    """Shapes of the tiny MoE LM (defaults: ~0.3 M parameters, byte vocabulary)."""

    vocab: int = 256
    hidden: int = 64
    layers: int = 2
    heads: int = 4
    n_experts: int = 8
    top_k: int = 2
    intermediate: int = 96
    shared_intermediate: int = 0
    rope_theta: float = 10000.0
    eps: float = 1e-5

    def __post_init__(self):
        for f in ("vocab", "hidden", "layers", "heads", "n_experts", "top_k", "intermediate"):
            v = getattr(self, f)
            if isinstance(v, bool) or not isinstance(v, int) or v < 1:
                raise ValueError(f"MoELMConfig.{f} must be an int >= 1, got {v!r}")
        if self.hidden % self.heads or (self.hidden // self.heads) % 2:
            raise ValueError(
                f"MoELMConfig.hidden={self.hidden} must split into {self.heads} heads of an "
                "even width (rotary pairs)"
            )
        if self.top_k > self.n_experts:
            raise ValueError(f"top_k={self.top_k} exceeds n_experts={self.n_experts}")


def init_params(cfg: MoELMConfig, key) -> dict:
    """Random float32 parameters: ``embed [V, H]``, per layer stacks ``[L, ...]``."""
    h, e, i, n_l = cfg.hidden, cfg.n_experts, cfg.intermediate, cfg.layers
    keys = iter(jax.random.split(key, 16))

    def normal(shape, fan_in):
        return jax.random.normal(next(keys), shape, jnp.float32) / np.sqrt(fan_in)

    layers = {
        "attn_norm": jnp.ones((n_l, h)),
        "wqkv": normal((n_l, h, 3 * h), h),
        "wo": normal((n_l, h, h), h),
        "mlp_norm": jnp.ones((n_l, h)),
        "router": normal((n_l, h, e), h),
        "w_gate": normal((n_l, e, h, i), h),
        "w_up": normal((n_l, e, h, i), h),
        "w_down": normal((n_l, e, i, h), i),
    }
    if cfg.shared_intermediate:
        s = cfg.shared_intermediate
        layers["shared_gate"] = normal((n_l, h, s), h)
        layers["shared_up"] = normal((n_l, h, s), h)
        layers["shared_down"] = normal((n_l, s, h), s)
    return {
        "embed": normal((cfg.vocab, h), h),  # tied head: logits of O(1) at init
        "final_norm": jnp.ones((h,)),
        "layers": layers,
    }


def _tp_attention(y, p, cfg: MoELMConfig, n: int, collective, cos, sin):
    """Heads split over n TP ranks, row-parallel output All-Reduced: ``y [S, T, H]`` (every
    sequence of the TP group) -> ``[S, T, H]``."""
    s, t, h = y.shape
    nh, hd = cfg.heads, h // cfg.heads
    if nh % n:
        raise ValueError(f"TP attention needs heads={nh} divisible by the {n} ranks")
    wqkv = p["wqkv"].reshape(h, 3, n, nh // n, hd).transpose(2, 0, 1, 3, 4)  # [N, H, 3, .]
    wo = p["wo"].reshape(n, nh // n * hd, h)  # row blocks

    def one_rank(w_in, w_out):
        q, k, v = (jnp.einsum("sth,hgx->stgx", y, w_in[:, j]) for j in range(3))
        q, k = apply_rope(q, cos, sin), apply_rope(k, cos, sin)
        partial = causal_attention(q, k, v).reshape(s * t, -1) @ w_out  # [S*T, H]
        return allreduce(partial, "tp", collective, label="attn_out")

    return jax.vmap(one_rank, axis_name="tp")(wqkv, wo)[0].reshape(s, t, h)


def forward(params: dict, tokens, cfg: MoELMConfig, ep: EPConfig, *, tp=None):
    """``tokens [N, B, T]`` int -> (float32 logits ``[N, B, T, V]``, routing per layer).

    ``tp``: None (data-parallel attention) or the All-Reduce of tensor-parallel attention
    over the same N ranks (a ``scinjax.Collective`` or spec such as ``"scin:int8"``).
    routing: ``(experts [L, N, B*T, k], router probabilities [L, N, B*T, E])``.
    """
    n, b, t = tokens.shape
    h, nh = cfg.hidden, cfg.heads
    hd = h // nh
    x = jnp.take(params["embed"], tokens, axis=0)  # [N, B, T, H]
    cos, sin = rope_tables(jnp.arange(t), hd, cfg.rope_theta)

    def layer(x, p):
        y = rms_norm(x, p["attn_norm"], cfg.eps).reshape(n * b, t, h)
        if tp is None:
            q, k, v = jnp.split(y @ p["wqkv"], 3, axis=-1)
            q, k, v = (a.reshape(n * b, t, nh, hd) for a in (q, k, v))
            q, k = apply_rope(q, cos, sin), apply_rope(k, cos, sin)
            x = x + causal_attention(q, k, v).reshape(n, b, t, h) @ p["wo"]
        else:
            x = x + _tp_attention(y, p, cfg, n, tp, cos, sin).reshape(n, b, t, h)
        y = rms_norm(x, p["mlp_norm"], cfg.eps).reshape(n, b * t, h)
        moe_p = {k_: v_ for k_, v_ in p.items() if k_ in _MOE_KEYS}
        out, experts, _ = moe_mlp(y, moe_p, ep, k=cfg.top_k)
        probs = jax.nn.softmax(
            jnp.einsum("nth,he->nte", y, p["router"], preferred_element_type=jnp.float32), -1
        )
        return x + out.reshape(n, b, t, h), (experts, probs)

    x, routing = jax.lax.scan(layer, x, params["layers"])
    x = rms_norm(x, params["final_norm"], cfg.eps)
    logits = jnp.einsum("nbth,vh->nbtv", x, params["embed"], preferred_element_type=jnp.float32)
    return logits, routing


_MOE_KEYS = ("router", "w_gate", "w_up", "w_down", "shared_gate", "shared_up", "shared_down")


def load_balance_loss(routing, n_experts: int) -> jax.Array:
    """Switch Transformer's auxiliary loss ``E * sum_e f_e P_e`` averaged over layers:
    ``f_e`` the fraction of (token, slot) pairs routed to e, ``P_e`` its mean probability."""
    experts, probs = routing
    onehot = jax.nn.one_hot(experts, n_experts).sum(-2)  # [L, N, T, E]
    f = onehot.mean(axis=(1, 2)) / experts.shape[-1]
    p = probs.mean(axis=(1, 2))
    return n_experts * jnp.mean(jnp.sum(f * p, axis=-1))
