"""``dispatch`` / ``combine`` over a named EP axis, bit for bit as spec/moe.md says.

Each rank holds ``x [T, H]``, ``experts [T, k]`` and ``gates [T, k]``. ``dispatch``
quantizes every token once, gathers the codes and the routing over the axis (under
``vmap`` this is free: JAX hands over the batched array) and fills this rank's expert
buffers ``[E_local, C, H]``; ``combine`` weights the expert outputs, forms the per-rank
partials and sends them back with ``lax.all_to_all``, then sums in the spec's fixed
order. No ``psum``: its order is XLA's choice. Shapes are static: the capacity C is
explicit (default dropless, C = N * T).
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

from scinjax.collectives import axis_size
from scinjax.formats import dequantize, ftz, get, quantize, to_f32
from scinjax.formats._f32 import check_float_input
from scinjax.moe._ledger import EPCallSpec, ep_marker
from scinjax.moe._traffic import EP_ALGORITHMS

__all__ = ["Dispatched", "EPConfig", "combine", "dispatch", "ep_moe"]


@dataclasses.dataclass(frozen=True, kw_only=True)
class EPConfig:
    """Static description of one expert-parallel MoE layer.

    n_experts: E; expert e lives on ``placement[e]`` (default ``e // (E / N)``; every
      rank must host the same number of experts so buffers are static).
    algorithm: ``all_to_all``, ``dedup`` or ``dysharp``.
    dispatch_format / combine_format: wire formats (``scinjax.formats.get`` names).
    capacity: tokens each expert accepts per layer (per rank's buffer); pairs beyond it,
      in (source rank, token) arrival order, are dropped and contribute nothing.
      ``None`` is dropless (C = N * T, the static upper bound).
    """

    n_experts: int
    algorithm: str = "dedup"
    dispatch_format: str = "bf16"
    combine_format: str = "bf16"
    capacity: int | None = None
    placement: tuple[int, ...] | None = None

    def __post_init__(self):
        if isinstance(self.n_experts, bool) or not isinstance(self.n_experts, int):
            raise TypeError(f"EPConfig.n_experts must be an int >= 1, got {self.n_experts!r}")
        if self.n_experts < 1:
            raise ValueError(f"EPConfig.n_experts={self.n_experts} must be >= 1")
        if self.algorithm not in EP_ALGORITHMS:
            raise ValueError(
                f"EPConfig.algorithm={self.algorithm!r} is unknown; use one of {EP_ALGORITHMS}"
            )
        for field in ("dispatch_format", "combine_format"):
            fmt = get(getattr(self, field))
            if fmt.stochastic:
                raise ValueError(
                    f"EPConfig.{field}={fmt.name} rounds stochastically; MoE dispatch/combine "
                    "support deterministic formats only (use rounding='nearest_even')"
                )
            if getattr(fmt, "scale", None) == "nv":
                raise ValueError(
                    f"EPConfig.{field}={fmt.name} has a per-array tensor scale, which is not "
                    "defined per token message; use a block-scaled format"
                )
        cap = self.capacity
        if cap is not None and (isinstance(cap, bool) or not isinstance(cap, int) or cap < 1):
            raise ValueError(
                f"EPConfig.capacity must be None (dropless) or an int >= 1, got {cap!r}"
            )
        if self.placement is not None:
            p = tuple(int(r) for r in self.placement)
            if len(p) != self.n_experts:
                raise ValueError(
                    f"EPConfig.placement has {len(p)} entries; it needs one rank per expert "
                    f"({self.n_experts})"
                )
            object.__setattr__(self, "placement", p)

    def ranks_of_experts(self, n_ranks: int) -> np.ndarray:
        """``[E]`` rank of each expert (validated against ``n_ranks``)."""
        if self.placement is None:
            if self.n_experts % n_ranks:
                raise ValueError(
                    f"n_experts={self.n_experts} is not divisible by the EP axis size "
                    f"{n_ranks}; use an EP size that divides it or give a placement"
                )
            return np.arange(self.n_experts) // (self.n_experts // n_ranks)
        p = np.asarray(self.placement)
        if p.min() < 0 or p.max() >= n_ranks:
            raise ValueError(f"EPConfig.placement must map experts to ranks in [0, {n_ranks})")
        counts = np.bincount(p, minlength=n_ranks)
        if len(set(counts.tolist())) != 1:
            raise ValueError(
                f"EPConfig.placement puts {counts.tolist()} experts on the ranks; every rank "
                "must host the same number (static buffers)"
            )
        return p

    def tables(self, n_ranks: int):
        """(rank of expert ``[E]``, local slot of expert ``[E]``, experts of rank ``[N, E/N]``)."""
        rho = self.ranks_of_experts(n_ranks)
        local_of = np.zeros(self.n_experts, np.int32)
        by_rank = []
        for r in range(n_ranks):
            mine = np.flatnonzero(rho == r)
            local_of[mine] = np.arange(len(mine))
            by_rank.append(mine)
        return rho.astype(np.int32), local_of, np.stack(by_rank).astype(np.int32)


@jax.tree_util.register_dataclass
@dataclasses.dataclass(frozen=True)
class Dispatched:
    """What one rank holds after :func:`dispatch`.

    inputs: ``[E_local, C, H]`` expert inputs (activation dtype; empty slots are 0).
    slot_pair: ``[E_local, C]`` int32 flat (source, token, k) pair index of each slot, -1
      if empty.
    experts: ``[N, T, k]`` every rank's routing (gathered).
    kept: ``[N, T, k]`` bool, False for pairs dropped by the capacity.
    position: ``[N, T, k]`` int32 slot of each pair in its expert's buffer.
    """

    inputs: jax.Array
    slot_pair: jax.Array
    experts: jax.Array
    kept: jax.Array
    position: jax.Array

    @property
    def dropped(self) -> jax.Array:
        """Number of (token, expert) pairs dropped by the capacity, over all ranks."""
        return jnp.sum(~self.kept)


def _check_routing(x, experts, cfg: EPConfig):
    check_float_input(x, "dispatch")
    if x.ndim != 2:
        raise ValueError(f"dispatch needs x of shape [tokens, hidden], got {list(x.shape)}")
    if experts.ndim != 2 or experts.shape[0] != x.shape[0]:
        raise ValueError(
            f"experts must be [tokens, k] = [{x.shape[0]}, k] int, got {list(experts.shape)}"
        )
    if not jnp.issubdtype(experts.dtype, jnp.integer):
        raise TypeError(f"experts must hold int expert ids, got dtype {experts.dtype}")
    if experts.shape[1] > cfg.n_experts:
        raise ValueError(f"k={experts.shape[1]} exceeds n_experts={cfg.n_experts}")


def dispatch(x, experts, axis_name, cfg: EPConfig) -> Dispatched:
    """Send each token ``x [T, H]`` to the ranks of its ``experts [T, k]`` over ``axis_name``.

    The source quantizes each token once in ``cfg.dispatch_format``; every destination
    (the source itself included) dequantizes the same codes to x's dtype. Expert ids must
    be distinct per token and in [0, E) (out-of-range ids are clipped, not checked, when
    traced). Returns this rank's :class:`Dispatched` buffers ``[E/N, C, H]``.
    """
    x = jnp.asarray(x)
    experts = jnp.asarray(experts)
    _check_routing(x, experts, cfg)
    n = axis_size(axis_name)
    rho, local_of, _ = cfg.tables(n)
    t, k = experts.shape
    e_local = cfg.n_experts // n
    cap = n * t if cfg.capacity is None else cfg.capacity
    rank = lax.axis_index(axis_name)

    spec = EPCallSpec(
        algorithm=cfg.algorithm,
        n_ranks=n,
        n_experts=cfg.n_experts,
        tokens=t,
        k=k,
        hidden=x.shape[1],
        dispatch_format=get(cfg.dispatch_format).name,
        combine_format=get(cfg.combine_format).name,
    )
    x = ep_marker(spec)(x)  # found by count_ep_traffic; an identity
    q = quantize(x, cfg.dispatch_format)
    q_all = jax.tree.map(lambda a: lax.all_gather(a, axis_name), q)  # [N, T, ...]
    xin = dequantize(q_all, x.dtype).reshape(n * t, x.shape[1])  # [N*T, H]
    ex = lax.all_gather(experts.astype(jnp.int32), axis_name)  # [N, T, k]
    flat = jnp.clip(ex.reshape(-1), 0, cfg.n_experts - 1)  # [P] pairs in (src, t, j) order

    # slot of each pair in its expert's buffer: rank among earlier pairs of the same expert
    order = jnp.argsort(flat, stable=True)
    sorted_e = flat[order]
    first = jnp.searchsorted(sorted_e, sorted_e, side="left")
    position = jnp.zeros_like(flat).at[order].set(jnp.arange(flat.size, dtype=jnp.int32) - first)
    kept = position < cap

    mine = (jnp.asarray(rho)[flat] == rank) & kept
    local = jnp.asarray(local_of)[flat]
    pairs = jnp.arange(flat.size, dtype=jnp.int32)
    slot_pair = jnp.full((e_local, cap), -1, jnp.int32)
    slot_pair = slot_pair.at[jnp.where(mine, local, e_local), position].set(pairs, mode="drop")
    valid = slot_pair >= 0
    rows = xin[jnp.where(valid, slot_pair // k, 0)]  # [E_local, C, H]
    inputs = jnp.where(valid[..., None], rows, jnp.zeros((), x.dtype))
    return Dispatched(
        inputs=inputs,
        slot_pair=slot_pair,
        experts=ex,
        kept=kept.reshape(ex.shape),
        position=position.reshape(ex.shape),
    )


def _ordered_sum(terms, present):
    """Float32 sum of ``terms [..., m, H]`` over m in order, skipping absent terms.

    The first present operand is taken as is (no 0.0 seed); no operand gives +0.
    Returns (sum ``[..., H]``, any present ``[...]``).
    """
    total = jnp.zeros(terms.shape[:-2] + terms.shape[-1:], jnp.float32)
    started = jnp.zeros(terms.shape[:-2], bool)
    for i in range(terms.shape[-2]):
        v, p = terms[..., i, :], present[..., i]
        total = jnp.where(p[..., None], jnp.where(started[..., None], ftz(total + v), v), total)
        started = started | p
    return total, started


def _wire_f32(v, fmt, axis_name):
    """Quantize ``v [N_dest, ...]`` per destination, exchange, dequantize: ``[N_src, ...]``."""
    q = quantize(v, fmt)
    q = jax.tree.map(lambda a: lax.all_to_all(a, axis_name, 0, 0, tiled=False), q)
    return dequantize(q, jnp.float32)


def combine(y, dispatched: Dispatched, gates, axis_name, cfg: EPConfig, dtype=None):
    """Return each token's ``sum_e g_{t,e} y_{t,e}`` to its source, as spec/moe.md defines.

    ``y [E_local, C, H]``: this rank's expert outputs (any float dtype) for
    ``dispatched.inputs``; ``gates [T, k]`` float32: this rank's router weights.
    Returns ``[T, H]`` in ``dtype`` (default: the dispatched inputs' dtype d).
    """
    check_float_input(y, "combine")
    d = jnp.dtype(dtype or dispatched.inputs.dtype)
    n = axis_size(axis_name)
    rho, local_of, _ = cfg.tables(n)
    ex, kept, position = dispatched.experts, dispatched.kept, dispatched.position
    _, t, k = ex.shape
    if y.shape != dispatched.inputs.shape:
        raise ValueError(
            f"expert outputs y must match the dispatched buffers {list(dispatched.inputs.shape)}"
            f", got {list(y.shape)}"
        )
    gates = jnp.asarray(gates)
    if gates.shape != (t, k):
        raise ValueError(f"gates must be [tokens, k] = [{t}, {k}] float32, got {list(gates.shape)}")
    rank = lax.axis_index(axis_name)
    g_all = lax.all_gather(to_f32(gates.astype(jnp.float32)), axis_name)  # [N, T, k]

    # sort every token's k pairs into expert-index order (the spec's summation order)
    perm = jnp.argsort(ex, axis=-1, stable=True)
    ex = jnp.take_along_axis(ex, perm, -1)
    kept = jnp.take_along_axis(kept, perm, -1)
    position = jnp.take_along_axis(position, perm, -1)
    g_all = jnp.take_along_axis(g_all, perm, -1)
    owner = jnp.asarray(rho)[ex]  # [N, T, k] rank of each pair's expert

    # weighted outputs of this rank's pairs, in the pair layout [N_src, T, k, H]
    mine = (owner == rank) & kept
    local = jnp.asarray(local_of)[ex]
    yp = y[jnp.where(mine, local, 0), jnp.where(mine, position, 0)]
    w = ftz(to_f32(yp) * g_all[..., None]).astype(d)
    w = jnp.where(mine[..., None], w, jnp.zeros((), d))
    w32 = to_f32(w)
    src = jnp.arange(n)[:, None, None]  # pair's source rank

    if cfg.algorithm == "all_to_all":
        recv = _wire_f32(w32, cfg.combine_format, axis_name)  # [N_r, T, k, H] at the source
        own = w32[rank]  # [T, k, H]: this rank's own (local) pairs, no wire
        owner_s = owner[rank]  # [T, k]
        pick = jnp.take_along_axis(recv, owner_s[None, ..., None], axis=0)[0]
        terms = jnp.where((owner_s == rank)[..., None], own, pick)
        out, _ = _ordered_sum(terms, kept[rank])
        return out.astype(d)

    partial, has = _ordered_sum(w32, mine)  # [N_src, T, H], [N_src, T]
    del src
    has_all = lax.all_to_all(has, axis_name, 0, 0, tiled=False)  # [N_r, T] at the source
    recv = _wire_f32(partial, cfg.combine_format, axis_name)  # [N_r, T, H]
    own = partial[rank]  # [T, H]
    is_self = (jnp.arange(n) == rank)[:, None]  # [N_r, 1]
    if cfg.algorithm == "dedup":
        terms = jnp.where(is_self[..., None], own[None], recv)  # [N_r, T, H]
        out, _ = _ordered_sum(jnp.moveaxis(terms, 0, 1), has_all.T)
        return out.astype(d)
    # dysharp: the switch sums the remote partials in rank order, quantizes once
    remote = has_all & ~is_self
    switch, any_remote = _ordered_sum(jnp.moveaxis(recv, 0, 1), remote.T)  # [T, H]
    down = dequantize(quantize(switch, cfg.combine_format), jnp.float32)
    own_has = has_all[rank]
    both = jnp.stack([own, down], axis=1)  # [T, 2, H]
    out, _ = _ordered_sum(both, jnp.stack([own_has, any_remote], axis=1))
    return out.astype(d)


def ep_moe(x, experts, gates, expert_fn, axis_name, cfg: EPConfig):
    """Dispatch, run ``expert_fn(inputs [E_local, C, H], rank) -> [E_local, C, H]``, combine.

    ``x [T, H]``, ``experts [T, k]`` int, ``gates [T, k]`` float32 on each rank; returns
    ``([T, H] in x's dtype, Dispatched)``.
    """
    disp = dispatch(x, experts, axis_name, cfg)
    y = expert_fn(disp.inputs, lax.axis_index(axis_name))
    return combine(y, disp, gates, axis_name, cfg, dtype=x.dtype), disp
