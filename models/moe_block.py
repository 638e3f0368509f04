"""The MoE feed-forward of the TP Llama model: experts parallel over the TP ranks.

Layout (batched emulation, ``mode="vmap"``; docs/moe.md "MoE layers in the TP model"):
after the attention All-Reduce every rank holds the whole residual stream of the
M = B*T tokens. For the MoE feed-forward rank r takes its token shard, rows
``r*M/N .. (r+1)*M/N - 1`` of the flattened ``[M, D]`` (as sequence parallelism
would hold them), routes them with its copy of the router, dispatches them to the ranks
of their experts through `scinjax.moe` (rank r hosts experts ``r*E/N .. (r+1)*E/N - 1``),
runs its local experts and combines the weighted outputs back at the token's rank. The
N shards are then put back together as ``[M, D]`` for the residual add (in the emulation
a reshape: the all-gather a real system would run before the next attention is not
modelled or counted). M must be a multiple of N.

The N ranks run under ``jax.vmap(axis_name="ep")`` inside `models.moe.moe_mlp` (reused
here, not copied).
"""

from __future__ import annotations

import jax.numpy as jnp

from .moe import moe_mlp
from .moe_spec import MoeSpec

__all__ = ["moe_ffn", "token_shards"]


def token_shards(m: int, n_ranks: int) -> int:
    """Tokens per rank ``M / N``; ValueError naming the fix when N does not divide M."""
    if m % n_ranks:
        raise ValueError(
            f"the MoE layer splits the batch*tokens={m} tokens over tp={n_ranks} ranks; use "
            f"batch*tokens divisible by {n_ranks} (e.g. a batch that is a multiple of tp)"
        )
    return m // n_ranks


def moe_ffn(h, p: dict, spec: MoeSpec, n_ranks: int, *, batched: bool = True):
    """MoE feed-forward of normed activations ``h [B, T, D]`` on N EP ranks -> ``[B, T, D]``.

    p: one layer's params with `moe_spec.moe_keys(spec)` (full arrays: ``router [D, E]``,
    ``experts_gate/up [E, D, I]``, ``experts_down [E, I, D]``, shared ``[D, Is]``/``[Is, D]``).
    Returns (out ``[B, T, D]`` in h's dtype, experts ``[N, M/N, k]`` int32, gates
    ``[N, M/N, k]`` float32): row s of the routing is rank s's token shard.
    """
    if not batched:
        raise ValueError(
            "MoE layers run in the batched emulation only; build the model with mode='vmap'"
        )
    b, t, d = h.shape
    per = token_shards(b * t, n_ranks)
    params = {
        "router": p["router"],
        "w_gate": p["experts_gate"],
        "w_up": p["experts_up"],
        "w_down": p["experts_down"],
    }
    if spec.shared_intermediate:
        params |= {k: p[k] for k in ("shared_gate", "shared_up", "shared_down")}
    params = {k: jnp.asarray(v).astype(h.dtype) for k, v in params.items()}
    x = h.reshape(n_ranks, per, d)  # [N, M/N, D]: rank r's token shard in row r
    out, experts, gates = moe_mlp(x, params, spec.ep_config(), k=spec.top_k)
    return out.reshape(b, t, d), experts, gates
