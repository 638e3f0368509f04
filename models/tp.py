"""Tensor-parallel plan: which rank holds which heads and MLP features.

Megatron-style split over N ranks: Q/K/V and gate/up are column-parallel (a
rank computes its own heads / features), the attention output projection
``wo`` and ``w_down`` are row-parallel (a rank multiplies its own heads /
features by its rows of the weight and holds a partial sum of the full
output, which the All-Reduce adds up).

Uneven splits. When N does not divide a count n (heads, features), rank r
gets ``n // N + (r < n % N)`` consecutive units (the chunk rule of
spec/collectives.md). Arrays must have equal shapes on every rank, so each
rank has ``S = ceil(n / N)`` *slots* and the slots it does not need hold zero
weights: zero rows of ``wo``/``w_down`` make a padding slot add exactly
nothing, so the partial sums equal those of the uneven assignment.

Two views of the same plan:

- *batched* (the default emulation, `jax.vmap` over ranks): one process
  computes every head and feature at full width, exactly as the unsharded
  model does, then regroups the activations into [R=N, S] slots and forms all
  N partial sums with one einsum.
- *per rank* (`shard_map`, or the naive `vmap` of the per-rank program): each
  rank computes only its slots. A query head needs its key-value head, so a
  rank holds copies of the key-value heads its query heads use (GQA with
  N > Hkv, or groups split across ranks, replicates them).
"""

from __future__ import annotations

import dataclasses

import jax
import numpy as np

from .config import LlamaConfig
from .moe_spec import moe_shapes
from .weights import LazyArray, layer_keys, validate_weights

__all__ = [
    "split_counts",
    "rank_slots",
    "Layout",
    "TPPlan",
    "make_plan",
    "check_ranks",
    "PER_RANK_AXES",
]

# For each per-layer key of the per-rank (global) parameter tree: the axis of
# the rank dimension in the stacked array [L, ...] (None: replicated).
PER_RANK_AXES = {
    "attn_norm": None,
    "wq": 2,  # [L, D, N, S*hd]
    "wk": 2,  # [L, D, N, Skv*hd]
    "wv": 2,
    "wo": 1,  # [L, N, S*hd, D]
    "mlp_norm": None,
    "w_gate": 2,  # [L, D, N, Sf]
    "w_up": 2,
    "w_down": 1,  # [L, N, Sf, D]
    "bq": 1,  # [L, N, S*hd]
    "bk": 1,  # [L, N, Skv*hd]
    "bv": 1,
}


def split_counts(n: int, ranks: int) -> tuple[int, ...]:
    """Units per rank: n // N each, the first n % N ranks one more."""
    return tuple(n // ranks + (r < n % ranks) for r in range(ranks))


def rank_slots(n: int, ranks: int) -> tuple[tuple[int, ...], ...]:
    """[N][S] unit index held by each slot (S = ceil(n/N)); -1 marks a padding slot."""
    width = -(-n // ranks)
    out, start = [], 0
    for count in split_counts(n, ranks):
        out.append(tuple(range(start, start + count)) + (-1,) * (width - count))
        start += count
    return tuple(out)


def _kv_slots(q_slots, group: int) -> tuple[int, tuple[tuple[int, ...], ...]]:
    """Key-value slots for the per-rank view.

    Returns (local group size gl, [N][S/gl] kv head of each kv slot, -1 for
    none). Query slot s of a rank uses its kv slot s // gl; the largest gl
    dividing S for which every block of gl query slots needs one kv head
    (padding slots need none) is chosen, so kv heads are copied only as much
    as the split forces.
    """
    s = len(q_slots[0])
    for gl in sorted((d for d in range(1, s + 1) if s % d == 0), reverse=True):
        kv = []
        for row in q_slots:
            heads = []
            for j in range(0, s, gl):
                used = {h // group for h in row[j : j + gl] if h >= 0}
                if len(used) > 1:
                    break
                heads.append(used.pop() if used else -1)
            else:
                kv.append(tuple(heads))
                continue
            break
        else:
            return gl, tuple(kv)
    raise AssertionError("unreachable: gl = 1 always fits")


@dataclasses.dataclass(frozen=True, kw_only=True)
class Layout:
    """What one program computes: the static shape information of a layer.

    Attributes:
      ranks: R, partial sums this program forms (N batched, 1 per rank).
      q_heads, kv_heads: heads computed here (query head h uses kv h // (q/kv)).
      head_slots: [R][S] query head of each output slot (-1 zero), or None
        when the heads are already rank-major (q_heads = R*S).
      ff: MLP features computed here.
      ff_slots: [R][Sf] feature of each slot, or None when rank-major.
    """

    ranks: int
    q_heads: int
    kv_heads: int
    head_slots: tuple[tuple[int, ...], ...] | None
    ff: int
    ff_slots: tuple[tuple[int, ...], ...] | None


def _identity_or(slots, n):
    """None when `slots` is just range(n) split rank-major (a reshape suffices)."""
    flat = [u for row in slots for u in row]
    return None if flat == list(range(n)) else slots


@dataclasses.dataclass(frozen=True, kw_only=True)
class TPPlan:
    """The split of one config over N ranks (pure Python, static).

    Attributes:
      config: the model.
      n_ranks: N.
      q_slots: [N][S] query head per slot (-1 padding), S = ceil(Hq/N).
      kv_group: gl, query slots per kv slot in the per-rank view.
      kv_slots: [N][S/gl] kv head per kv slot (-1 none).
      ff_slots: [N][Sf] MLP feature per slot, Sf = ceil(F/N).
    """

    config: LlamaConfig
    n_ranks: int
    q_slots: tuple[tuple[int, ...], ...]
    kv_group: int
    kv_slots: tuple[tuple[int, ...], ...]
    ff_slots: tuple[tuple[int, ...], ...]

    @property
    def head_slot_count(self) -> int:
        return len(self.q_slots[0])

    @property
    def ff_slot_count(self) -> int:
        return len(self.ff_slots[0])

    def batched_layout(self) -> Layout:
        """Layout of the full-width program that forms all N partial sums."""
        c = self.config
        return Layout(
            ranks=self.n_ranks,
            q_heads=c.num_heads,
            kv_heads=c.num_kv_heads,
            head_slots=_identity_or(self.q_slots, c.num_heads),
            ff=c.intermediate_size,
            ff_slots=_identity_or(self.ff_slots, c.intermediate_size),
        )

    def rank_layout(self) -> Layout:
        """Layout of one rank's program (its slots only)."""
        s = self.head_slot_count
        return Layout(
            ranks=1,
            q_heads=s,
            kv_heads=s // self.kv_group,
            head_slots=None,
            ff=self.ff_slot_count,
            ff_slots=None,
        )

    def layer_shapes(self, view: str) -> tuple[tuple[str, tuple[int, ...]], ...]:
        """(key, shape) of each per-layer parameter, without the layer axis.

        view: "batched" (full-width program), "rank" (one rank's program, its
        rank axis of size 1) or "global" (all ranks' per-rank arrays stacked,
        what `shard_map` splits along `PER_RANK_AXES`).
        """
        c = self.config
        if c.moe is not None and view != "batched" and self.n_ranks > 1:
            raise ValueError(
                "MoE layers run in the batched emulation only; build the model with mode='vmap'"
            )
        d, hd, n = c.hidden_size, c.head_dim, self.n_ranks
        s, sf = self.head_slot_count, self.ff_slot_count
        skv = s // self.kv_group
        if view == "batched":
            cols = {"wq": (d, c.q_dim), "wk": (d, c.kv_dim), "wv": (d, c.kv_dim)}
            cols |= {"w_gate": (d, c.intermediate_size), "w_up": (d, c.intermediate_size)}
            r = n
        elif view in ("rank", "global"):
            r = 1 if view == "rank" else n
            cols = {"wq": (d, r, s * hd), "wk": (d, r, skv * hd), "wv": (d, r, skv * hd)}
            cols |= {"w_gate": (d, r, sf), "w_up": (d, r, sf)}
        else:
            raise ValueError(f"unknown view {view!r}; use 'batched', 'rank' or 'global'")
        shapes = {"attn_norm": (d,), "mlp_norm": (d,), "wo": (r, s * hd, d), "w_down": (r, sf, d)}
        shapes |= cols
        # Biases follow their projection's output columns.
        shapes |= {b: cols[w][1:] for b, w in (("bq", "wq"), ("bk", "wk"), ("bv", "wv"))}
        if c.moe is not None:  # experts are whole arrays here: models.moe_block splits them
            shapes |= moe_shapes(c.moe, d)
        return tuple((k, shapes[k]) for k in layer_keys(c))

    def abstract_params(self, view: str, dtype=np.float32) -> dict:
        """The params tree of `view` as `jax.ShapeDtypeStruct`s (nothing allocated)."""
        c = self.config
        sds = lambda shape: jax.ShapeDtypeStruct(shape, np.dtype(dtype))  # noqa: E731
        layers = {k: sds((c.num_layers, *shape)) for k, shape in self.layer_shapes(view)}
        params = {
            "embed": sds((c.vocab_size, c.hidden_size)),
            "layers": layers,
            "final_norm": sds((c.hidden_size,)),
        }
        if not c.tie_embeddings:
            params["lm_head"] = sds((c.hidden_size, c.vocab_size))
        return {"params": params}

    # ---- weights -------------------------------------------------------------------------

    def _layer_transforms(self, view: str) -> dict:
        """Per-layer key -> function of one layer's canonical array giving its view slice."""
        hd, q, kv, ff = self.config.head_dim, self.q_slots, self.kv_slots, self.ff_slots
        keys = layer_keys(self.config)
        same = lambda w: w  # noqa: E731
        rows = lambda slots, width: lambda w: _rows(w, slots, width)  # noqa: E731
        cols = lambda slots, width: lambda w: _cols(w, slots, width)  # noqa: E731
        if view == "batched":
            out = dict.fromkeys(keys, same)
            out |= {"wo": rows(q, hd), "w_down": rows(ff, 1)}
            return {k: out[k] for k in keys}  # an MoE config has no w_down
        out = {"attn_norm": same, "mlp_norm": same, "wo": rows(q, hd), "w_down": rows(ff, 1)}
        out |= {"wq": cols(q, hd), "wk": cols(kv, hd), "wv": cols(kv, hd)}
        out |= {"w_gate": cols(ff, 1), "w_up": cols(ff, 1)}
        out |= {"bq": rows(q, hd), "bk": rows(kv, hd), "bv": rows(kv, hd)}
        return {k: out[k] for k in keys}

    def params(self, weights, view: str, dtype=np.float32, *, put=None, consume=False) -> dict:
        """Flax params of `view` ("batched" or "global") from canonical `weights`.

        Built one leaf at a time: each per-layer leaf [L, ...] is filled layer by
        layer in `dtype`, then handed to `put` (e.g. `jnp.asarray` to move it to
        the device; default: kept as NumPy). With `consume`, every canonical
        array is deleted from `weights` once copied, so peak memory is the final
        params plus one leaf, not two full copies of the model.
        """
        if view not in ("batched", "global"):
            raise ValueError(f"unknown view {view!r}; use 'batched' or 'global'")
        c = self.config
        validate_weights(c, weights)
        put = put or (lambda a: a)
        dtype = np.dtype(dtype)

        def take(key):  # NumPy array or LazyArray (read by the caller, into place if it can)
            w = weights[key]
            if consume:
                del weights[key]
            return w

        def whole(key):
            w = take(key)
            out = _aligned_empty(np.shape(w), dtype)
            if isinstance(w, LazyArray) and w.dtype == dtype:
                w.read(out)  # straight from the file into the param
            else:
                out[...] = np.asarray(w)
            return put(out)

        layers = {}
        for k, f in self._layer_transforms(view).items():
            out = None
            for i in range(c.num_layers):
                w = f(np.asarray(take(f"layers.{i}.{k}"), dtype=np.float32))
                if out is None:
                    out = _aligned_empty((c.num_layers, *w.shape), dtype)
                out[i] = w
            layers[k] = put(out)
            del out, w
        params = {"embed": whole("embed"), "layers": layers, "final_norm": whole("final_norm")}
        if not c.tie_embeddings:
            params["lm_head"] = whole("lm_head")
        return {"params": params}

    def batched_params(self, weights, dtype=np.float32) -> dict:
        """Flax params of the batched program from canonical `weights`.

        Layer arrays are stacked over layers: wq [L, D, Hq*hd], wk/wv
        [L, D, Hkv*hd], w_gate/w_up [L, D, F], biases [L, Hq*hd / Hkv*hd] as in
        the unsharded model; wo [L, N, S*hd, D] and w_down [L, N, Sf, D] in rank slots.
        """
        return self.params(weights, "batched", dtype)

    def rank_params(self, weights, dtype=np.float32) -> dict:
        """Flax params of the per-rank program, all ranks stacked (global view).

        wq [L, D, N, S*hd], wk/wv [L, D, N, Skv*hd], w_gate/w_up
        [L, D, N, Sf], wo [L, N, S*hd, D], w_down [L, N, Sf, D], bq [L, N, S*hd],
        bk/bv [L, N, Skv*hd]; the rank axis is `PER_RANK_AXES[key]`.
        """
        return self.params(weights, "global", dtype)


def check_ranks(n_ranks) -> int:
    """`n_ranks` if it is an int >= 1, else ValueError naming it."""
    if isinstance(n_ranks, bool) or not isinstance(n_ranks, int) or n_ranks < 1:
        raise ValueError(f"tp (number of ranks) must be an int >= 1, got {n_ranks!r}")
    return n_ranks


def make_plan(config: LlamaConfig, n_ranks: int) -> TPPlan:
    """Split `config` over `n_ranks` ranks (ValueError for n_ranks < 1)."""
    check_ranks(n_ranks)
    q_slots = rank_slots(config.num_heads, n_ranks)
    gl, kv_slots = _kv_slots(q_slots, config.group_size)
    return TPPlan(
        config=config,
        n_ranks=n_ranks,
        q_slots=q_slots,
        kv_group=gl,
        kv_slots=kv_slots,
        ff_slots=rank_slots(config.intermediate_size, n_ranks),
    )


def _aligned_empty(shape, dtype, align: int = 64) -> np.ndarray:
    """np.empty on a 64-byte boundary: XLA:CPU then adopts the buffer without a copy."""
    dtype = np.dtype(dtype)
    n = int(np.prod(shape, dtype=np.int64)) * dtype.itemsize
    raw = np.empty(n + align, np.uint8)
    off = -raw.ctypes.data % align
    return raw[off : off + n].view(dtype).reshape(shape)


def _slot_index(slots, width: int) -> tuple[np.ndarray, np.ndarray]:
    """Flat element index [N, S*width] of slot units of `width`, and the pad mask."""
    idx = np.asarray(slots, dtype=np.int64)  # [N, S]
    elem = idx[..., None] * width + np.arange(width)  # [N, S, width]
    pad = np.broadcast_to(idx[..., None] < 0, elem.shape)
    return np.where(pad, 0, elem).reshape(idx.shape[0], -1), pad.reshape(idx.shape[0], -1)


def _rows(w: np.ndarray, slots, width: int) -> np.ndarray:
    """[n*width, ...] -> [N, S*width, ...], zeros for padding slots (also 1-D biases)."""
    elem, pad = _slot_index(slots, width)
    out = w[elem]
    out[pad] = 0
    return out


def _cols(w: np.ndarray, slots, width: int) -> np.ndarray:
    """[D, n*width] -> [D, N, S*width], zero columns for padding slots."""
    elem, pad = _slot_index(slots, width)
    out = w[:, elem]
    out[:, pad] = 0
    return out
