"""LLaMA-2-style decoder in Flax with Megatron tensor parallelism over a named axis.

The model is one pure function of (params, token ids). Its two row-parallel
projections per layer (attention output ``wo`` and MLP ``w_down``) form a
partial sum per rank, [R, B*T, D], which a `Reducer` turns into the full sum
through `scinjax.allreduce`; everything else is the same math as the
unsharded model (see `models.tp` for the split).

Shapes: B batch, T tokens, D hidden, V vocab, L layers, C cache length, Kh
key-value heads of this program, R ranks held by this program (N when all
ranks are emulated in one program, 1 per rank).
"""

from __future__ import annotations

import dataclasses

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from scinjax import CallPolicy, Collective, all_gather, allreduce, reduce_scatter

from .config import LlamaConfig
from .layers import apply_rope, causal_attention, rms_norm, rope_tables, swiglu, to_slots
from .moe_block import moe_ffn
from .tp import Layout

__all__ = [
    "AXIS_NAME",
    "CALL_SITES",
    "Reducer",
    "Block",
    "Llama",
    "layer_runs",
    "split_layer_params",
]

AXIS_NAME = "tp"
CALL_SITES = ("attn_out", "mlp_out")  # labels of the two All-Reduces of a layer


@dataclasses.dataclass(frozen=True, kw_only=True)
class Reducer:
    """Turns per-rank partial sums [R, M, D] into their All-Reduce [M, D].

    Attributes:
      collective: the All-Reduce of both projections of every layer, or a
        `CallPolicy` choosing one per call site (label, layer).
      wire_dtype: dtype the partials are cast to before the All-Reduce (what a
        GPU holds); the result is cast back to `compute_dtype`. Call sites
        whose collective is "exact" keep the partials in `compute_dtype`.
      compute_dtype: dtype of the residual stream.
      batched: True when this program holds all N ranks (R = N) and emulates
        them with `jax.vmap(axis_name=axis_name)`; False when `axis_name` is
        already bound by the caller (`shard_map`, or a vmap of the per-rank
        program) and R = 1.
      axis_name: the rank axis.
      first_layer: the first layer of the run of layers this reducer serves
        (a policy's layer selectors are resolved with it; `Llama` splits the
        layers into runs on which the policy is constant).
      backward: the collective that All-Reduces the cotangents in the backward
        pass (`scinjax.allreduce`'s `backward=`; default the exact one).
      sequence_parallel: Megatron sequence parallelism: each All-Reduce becomes a
        reduce-scatter of the M = B*T tokens (after the row-parallel projection)
        and an all-gather (before the next column-parallel one), both with the
        same collective; M must be divisible by N. The residual add and the
        norm between them act per token, so the emulation applies them to the
        gathered rows: same bits, the sequence-parallel data movement and bytes.
    """

    collective: Collective | CallPolicy
    wire_dtype: str = "bfloat16"
    compute_dtype: str = "float32"
    batched: bool = True
    axis_name: str = AXIS_NAME
    first_layer: int | None = None
    probe: bool = False  # record per-call error statistics (see `probe_stats`)
    backward: Collective | str = "exact"
    sequence_parallel: bool = False

    def pick(self, label: str, layer: int | None = None) -> Collective:
        """The collective of call site `label` (at `layer`, default `first_layer`)."""
        if isinstance(self.collective, CallPolicy):
            return self.collective.collective_for(
                label, self.first_layer if layer is None else layer
            )
        return self.collective

    def __call__(self, partials: jax.Array, *, label: str, key=None) -> jax.Array:
        """[R, M, D] partial sums -> [M, D] in `compute_dtype`.

        One rank in a batched program (tp=1) is the plain model: the sum of one
        partial is itself (spec: N = 1 is the identity), no cast, no call.
        """
        if self.batched and partials.shape[0] == 1:
            return partials[0].astype(self.compute_dtype)
        collective = self.pick(label)
        exact = collective.algorithm == "exact"
        wire = partials.astype(self.compute_dtype if exact else self.wire_dtype)

        def one_rank(p):  # [M, D] of one rank -> [M, D], identical on every rank
            if self.sequence_parallel:  # [M, D] -> [M/N, D] -> [M, D]
                keys = (None, None) if key is None else jax.random.split(key)
                kw = dict(backward=self.backward)
                shard = reduce_scatter(
                    p, self.axis_name, collective, key=keys[0], label=f"{label}.rs", **kw
                )
                return all_gather(
                    shard, self.axis_name, collective, key=keys[1], label=f"{label}.ag", **kw
                )
            if self.backward == "exact":
                return collective(p, self.axis_name, key=key, label=label)
            return allreduce(
                p, self.axis_name, collective, key=key, label=label, backward=self.backward
            )

        if self.batched:
            out = jax.vmap(one_rank, axis_name=self.axis_name)(wire)[0]  # rows are equal
        else:
            out = one_rank(wire[0])
        return out.astype(self.compute_dtype)

    def probe_stats(self, partials: jax.Array, out: jax.Array, *, label: str, key=None) -> dict:
        """Error of one call against the exact reduction of the *same* inputs.

        partials [R, M, D] (before the wire cast), out [M, D] (this call's result).
        The reference is the rank-order float32 sum of the partials as they go on
        the wire. For ``scin``/``two_shot`` the error splits into the uplink stage
        (the same collective with its uplink format only, summed in float32 without
        a final rounding) and the downlink stage (the rest); NaN for algorithms whose
        stages do not separate (ring, peers). Returns float32 scalars ``sse``,
        ``sse_up``, ``sse_down``, ``ss_ref`` and the float32 output ``out`` [M, D].
        """
        collective = self.pick(label)
        exact = collective.algorithm == "exact"
        wire = partials.astype(self.compute_dtype if exact else self.wire_dtype)
        wire = wire.astype(jnp.float32)
        ref = wire[0]
        for r in range(1, wire.shape[0]):
            ref = ref + wire[r]
        outf = out.astype(jnp.float32)
        nan = jnp.float32(jnp.nan)
        if collective.algorithm in ("scin", "two_shot") or exact:
            up_only = dataclasses.replace(collective, downlink=None) if not exact else None
            if up_only is None or up_only.uplink is None:
                staged = ref  # the uplink carries the wire dtype itself: no uplink error
            else:
                staged = jax.vmap(
                    lambda p: up_only(p, self.axis_name, key=key, label=f"{label}/probe"),
                    axis_name=self.axis_name,
                )(wire)[0]
            sse_up = jnp.sum((staged - ref) ** 2)
            sse_down = jnp.sum((outf - staged) ** 2)
        else:
            sse_up = sse_down = nan
        return {
            "sse": jnp.sum((outf - ref) ** 2),
            "sse_up": sse_up,
            "sse_down": sse_down,
            "ss_ref": jnp.sum(ref * ref),
            "out": outf,
        }


def layer_runs(reducer: Reducer, num_layers: int, labels=CALL_SITES) -> tuple[tuple[int, int], ...]:
    """(first layer, count) of each run of consecutive layers whose call sites get the same
    collectives; one run of every layer unless a policy selects by layer."""
    picks = [tuple(reducer.pick(lab, layer) for lab in labels) for layer in range(num_layers)]
    runs, start = [], 0
    for layer in range(1, num_layers + 1):
        if layer == num_layers or picks[layer] != picks[start]:
            runs.append((start, layer - start))
            start = layer
    return tuple(runs)


def split_layer_params(params: dict, runs: tuple[tuple[int, int], ...]) -> dict:
    """Params with stacked "layers" [L, ...] -> "layers_i" slices per run (one run: as is)."""
    if len(runs) == 1:
        return params
    inner = dict(params["params"])
    stacked = inner.pop("layers")
    for i, (first, count) in enumerate(runs):
        inner[f"layers_{i}"] = jax.tree.map(lambda a, f=first, c=count: a[f : f + c], stacked)
    return {**params, "params": inner}


def _row_parallel(act: jax.Array, w: jax.Array, reducer: Reducer, *, label: str, key, sow=None):
    """All-Reduce of the per-rank partial sums act[:, :, r] @ w[r].

    act: [B, T, R, K] activations in rank slots; w: [R, K, D] row blocks.
    Returns [B, T, D]. The All-Reduce sees [B*T, D] per rank. With a probing
    reducer, ``sow(label, stats)`` receives `Reducer.probe_stats`.
    """
    b, t = act.shape[:2]
    partials = jnp.einsum("btrk,rkd->rbtd", act, w)  # [R, B, T, D]
    partials = partials.reshape(partials.shape[0], b * t, -1)
    out = reducer(partials, label=label, key=key)
    if reducer.probe and sow is not None:
        sow(label, reducer.probe_stats(partials, out, label=label, key=key))
    return out.reshape(b, t, -1)


def _init(name: str):
    if name in ("bq", "bk", "bv"):
        return nn.initializers.zeros
    if name.endswith("norm"):
        return nn.initializers.ones
    return nn.initializers.lecun_normal(in_axis=-2, out_axis=-1)


class Block(nn.Module):
    """One decoder block, [B, T, D] -> [B, T, D]: x += attn(norm(x)); x += mlp(norm(x)).

    Parameters in this program's view (`TPPlan.layer_shapes`): attn_norm [D];
    wq [D, (R,) Hq'*hd]; wk, wv [D, (R,) Kh*hd]; wo [R, S*hd, D]; mlp_norm [D];
    w_gate, w_up [D, (R,) F']; w_down [R, Sf, D]; with `qkv_bias` also
    bq [(R,) Hq'*hd], bk, bv [(R,) Kh*hd].
    """

    config: LlamaConfig
    layout: Layout
    reducer: Reducer
    layer_shapes: tuple  # ((key, shape), ...)

    @nn.compact
    def __call__(self, x, xs, cos, sin, key, start):
        """x [B, T, D]; xs = (layer index, cache k, cache v [B, C, Kh, hd] or None)."""
        c, lay = self.config, self.layout
        layer, cache_k, cache_v = xs
        p = {name: self.param(name, _init(name), shape) for name, shape in self.layer_shapes}
        b, t, d = x.shape
        hd = c.head_dim
        keys = (None, None) if key is None else jax.random.split(jax.random.fold_in(key, layer))
        sow = lambda name, value: self.sow("intermediates", name, value)  # noqa: E731

        h = rms_norm(x, p["attn_norm"], c.rms_norm_eps)
        q, k, v = (h @ p[w].reshape(d, -1) for w in ("wq", "wk", "wv"))
        if c.qkv_bias:  # Qwen2: bias on the column-parallel Q/K/V outputs
            q, k, v = q + p["bq"].reshape(-1), k + p["bk"].reshape(-1), v + p["bv"].reshape(-1)
        q = q.reshape(b, t, lay.q_heads, hd)
        k, v = k.reshape(b, t, lay.kv_heads, hd), v.reshape(b, t, lay.kv_heads, hd)
        q, k = apply_rope(q, cos, sin), apply_rope(k, cos, sin)
        window = c.sliding_window
        if cache_k is None:
            attn = causal_attention(q, k, v, window=window)
        else:
            at = (0, start, 0, 0)
            cache_k = jax.lax.dynamic_update_slice(cache_k, k.astype(cache_k.dtype), at)
            cache_v = jax.lax.dynamic_update_slice(cache_v, v.astype(cache_v.dtype), at)
            attn = causal_attention(q, cache_k, cache_v, offset=start, window=window)
        slots = to_slots(attn, lay.head_slots, lay.ranks)  # [B, T, R, S*hd]
        x = x + _row_parallel(slots, p["wo"], self.reducer, label="attn_out", key=keys[0], sow=sow)

        h = rms_norm(x, p["mlp_norm"], c.rms_norm_eps)
        if c.moe is not None:  # expert parallel over the same ranks (models.moe_block)
            out, experts, gates = moe_ffn(h, p, c.moe, lay.ranks, batched=self.reducer.batched)
            self.sow("intermediates", "moe_routing", (experts, gates))
            return x + out, (cache_k, cache_v)
        act = swiglu(h @ p["w_gate"].reshape(d, -1), h @ p["w_up"].reshape(d, -1))
        slots = to_slots(act[..., None], lay.ff_slots, lay.ranks)  # [B, T, R, Sf]
        x = x + _row_parallel(
            slots, p["w_down"], self.reducer, label="mlp_out", key=keys[1], sow=sow
        )
        return x, (cache_k, cache_v)


class Llama(nn.Module):
    """The decoder: token ids [B, T] -> float32 logits [B, T, V].

    Layers run under `nn.scan` over parameters stacked on a leading [L]
    axis, so compile time does not grow with depth. `key` (optional) feeds
    stochastic rounding in the All-Reduces (layer l uses fold_in(key, l),
    split between its two All-Reduces). With `cache` = (k, v), each
    [L, B, C, Kh, hd], the tokens sit at positions start .. start+T-1, the
    cache is updated there and returned: (logits, cache).
    """

    config: LlamaConfig
    layout: Layout
    reducer: Reducer
    layer_shapes: tuple

    @nn.compact
    def __call__(self, tokens: jax.Array, key=None, cache=None, start=0):
        c = self.config
        dtype = jnp.dtype(self.reducer.compute_dtype)
        embed = self.param("embed", nn.initializers.normal(1.0), (c.vocab_size, c.hidden_size))
        x = jnp.take(embed, tokens, axis=0).astype(dtype)  # [B, T, D]
        positions = jnp.arange(tokens.shape[-1]) + start
        cos, sin = rope_tables(positions, c.head_dim, c.rope_theta, c.rope_scaling)
        runs = layer_runs(self.reducer, c.num_layers)
        cache_k, cache_v = (None, None) if cache is None else cache
        caches_k, caches_v = [], []
        for i, (first, count) in enumerate(runs):
            layers = nn.scan(
                Block,
                variable_axes={"params": 0, "intermediates": 0},
                split_rngs={"params": True},
                in_axes=(0, nn.broadcast, nn.broadcast, nn.broadcast, nn.broadcast),
                length=count,
                # The default traces the body once more outside the loop (to check
                # broadcast constants); that copy would sit in the jaxpr, where
                # count_traffic would count its All-Reduces as an extra layer.
                check_constancy_invariants=False,
            )(
                config=c,
                layout=self.layout,
                reducer=dataclasses.replace(self.reducer, first_layer=first),
                layer_shapes=self.layer_shapes,
                name="layers" if len(runs) == 1 else f"layers_{i}",
            )
            part = slice(first, first + count)
            xs = (
                jnp.arange(first, first + count),
                None if cache_k is None else cache_k[part],
                None if cache_v is None else cache_v[part],
            )
            x, (new_k, new_v) = layers(x, xs, cos, sin, key, start)
            caches_k.append(new_k)
            caches_v.append(new_v)
        if cache is None or len(runs) == 1:
            new_cache = (caches_k[0], caches_v[0])
        else:
            new_cache = (jnp.concatenate(caches_k), jnp.concatenate(caches_v))
        norm = self.param("final_norm", nn.initializers.ones, (c.hidden_size,))
        x = rms_norm(x, norm, c.rms_norm_eps)
        if c.tie_embeddings:
            head = embed.T
        else:
            shape = (c.hidden_size, c.vocab_size)
            head = self.param("lm_head", nn.initializers.lecun_normal(), shape)
        logits = jnp.einsum(
            "btd,dv->btv", x, head.astype(dtype), preferred_element_type=jnp.float32
        ).astype(np.float32)
        return logits if cache is None else (logits, new_cache)
