"""An expert-parallel MoE feed-forward layer on the emulated fabric (spec/moe.md).

Pure functions plus a thin Flax module. Tokens live on N EP ranks (``[N, T, H]``:
rank s holds its T tokens); expert e lives on rank ``e // (E / N)``. Each rank
routes its tokens (top-k over the router logits, softmax over the k picked logits, as
Mixtral), dispatches them with :func:`scinjax.moe.dispatch`, runs its local SwiGLU
experts on the capacity buffers, and :func:`scinjax.moe.combine` returns the weighted
sum to the source; an optional shared expert runs on the token's own rank and is added
after the combine. The N ranks are emulated with ``jax.vmap(axis_name="ep")``.

Shapes: N ranks, T tokens per rank, H hidden, E experts, k top-k, I expert width,
C capacity slots per expert.
"""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp

from scinjax.moe import EPConfig, combine, dispatch

__all__ = ["EP_AXIS", "MoEMLP", "expert_swiglu", "moe_mlp", "route"]

EP_AXIS = "ep"


def route(h, w_router, k: int):
    """Top-k routing of ``h [T, H]`` with ``w_router [H, E]``.

    Returns (experts ``[T, k]`` int32 in descending logit order, gates ``[T, k]``
    float32 = softmax over the k picked logits). Logits in float32.
    """
    logits = jnp.einsum("th,he->te", h, w_router, preferred_element_type=jnp.float32)
    top, experts = jax.lax.top_k(logits, k)
    return experts.astype(jnp.int32), jax.nn.softmax(top, axis=-1)


def expert_swiglu(x, w_gate, w_up, w_down):
    """SwiGLU experts: ``x [E, C, H]`` with ``w_gate, w_up [E, H, I]``, ``w_down [E, I, H]``
    -> ``[E, C, H]`` in x's dtype (matmuls accumulate in float32)."""
    f32 = dict(preferred_element_type=jnp.float32)
    g = jnp.einsum("ech,ehi->eci", x, w_gate.astype(x.dtype), **f32)
    u = jnp.einsum("ech,ehi->eci", x, w_up.astype(x.dtype), **f32)
    a = (jax.nn.silu(g) * u).astype(x.dtype)
    return jnp.einsum("eci,eih->ech", a, w_down.astype(x.dtype), **f32).astype(x.dtype)


def _check_params(params: dict, n_ranks: int, cfg: EPConfig):
    for name in ("router", "w_gate", "w_up", "w_down"):
        if name not in params:
            raise ValueError(f"MoE params need {name!r}; got {sorted(params)}")
    e = params["w_gate"].shape[0]
    if e != cfg.n_experts:
        raise ValueError(f"params hold {e} experts but EPConfig.n_experts={cfg.n_experts}")
    if e % n_ranks:
        raise ValueError(f"{e} experts do not split over {n_ranks} EP ranks; use N dividing E")


def moe_mlp(x, params: dict, cfg: EPConfig, *, k: int, routing=None):
    """The MoE layer on N emulated EP ranks: ``x [N, T, H]`` -> ``[N, T, H]`` in x's dtype.

    params: ``router [H, E]``, ``w_gate, w_up [E, H, I]``, ``w_down [E, I, H]``; optional
    ``shared_gate, shared_up [H, Is]``, ``shared_down [Is, H]`` (a shared expert).
    routing: optional ``(experts [N, T, k] int, gates [N, T, k] float32)`` replacing the
    router's (tests use it for skewed or all-local routing). Returns (out, experts, gates).
    """
    n = x.shape[0]
    _check_params(params, n, cfg)
    per = cfg.n_experts // n
    if cfg.placement is not None:
        raise ValueError("moe_mlp keeps expert weights in contiguous blocks; drop placement")
    local = {
        name: params[name].reshape((n, per) + params[name].shape[1:])
        for name in ("w_gate", "w_up", "w_down")
    }  # [N, E/N, ...]: rank r holds experts r*E/N .. (r+1)*E/N - 1
    if routing is None:
        experts, gates = jax.vmap(lambda h: route(h, params["router"], k))(x)
    else:
        experts, gates = (jnp.asarray(v) for v in routing)

    def one_rank(xr, er, gr, w):
        disp = dispatch(xr, er, EP_AXIS, cfg)
        y = expert_swiglu(disp.inputs, w["w_gate"], w["w_up"], w["w_down"])
        return combine(y, disp, gr, EP_AXIS, cfg, dtype=xr.dtype)

    out = jax.vmap(one_rank, axis_name=EP_AXIS)(x, experts, gates, local)
    if "shared_gate" in params:
        s = expert_swiglu(
            x.reshape(1, -1, x.shape[-1]),
            params["shared_gate"][None],
            params["shared_up"][None],
            params["shared_down"][None],
        ).reshape(x.shape)
        out = (out.astype(jnp.float32) + s.astype(jnp.float32)).astype(x.dtype)
    return out, experts, gates


class MoEMLP(nn.Module):
    """Flax wrapper of :func:`moe_mlp`: ``x [N, T, H]`` -> ``[N, T, H]``.

    Attributes: ``ep`` (the :class:`EPConfig`), ``top_k``, ``intermediate`` (I),
    ``shared_intermediate`` (0: no shared expert).
    """

    ep: EPConfig
    top_k: int
    intermediate: int
    shared_intermediate: int = 0

    @nn.compact
    def __call__(self, x, routing=None):
        h, e, i = x.shape[-1], self.ep.n_experts, self.intermediate
        init = nn.initializers.lecun_normal(in_axis=-2, out_axis=-1)
        params = {
            "router": self.param("router", init, (h, e)),
            "w_gate": self.param("w_gate", init, (e, h, i)),
            "w_up": self.param("w_up", init, (e, h, i)),
            "w_down": self.param("w_down", init, (e, i, h)),
        }
        if self.shared_intermediate:
            s = self.shared_intermediate
            params["shared_gate"] = self.param("shared_gate", init, (h, s))
            params["shared_up"] = self.param("shared_up", init, (h, s))
            params["shared_down"] = self.param("shared_down", init, (s, h))
        out, experts, gates = moe_mlp(x, params, self.ep, k=self.top_k, routing=routing)
        self.sow("intermediates", "routing", (experts, gates))
        return out
