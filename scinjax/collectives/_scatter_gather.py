"""``reduce_scatter`` and ``all_gather`` over a named axis (docs/semantics.md,
"Reduce-scatter and all-gather").

Same recipe as ``allreduce``: every rank's data is gathered over the named axis (free
under ``vmap``), then reduced in the spec's fixed order with its roundings. Each call
leaves a named ``jit`` marker that the traffic ledger finds. Both have a VJP: they are
each other's transposes, the backward collective chosen by ``backward=``.
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib

import jax
import jax.numpy as jnp
from jax import lax
from jax._src import core as _core  # the axis env: custom_vjp's bwd runs outside vmap's

from scinjax.collectives._allreduce import axis_size, stage_key
from scinjax.collectives._config import ALGORITHMS, Collective
from scinjax.collectives._reduce import add, ordered_sum, round_acc
from scinjax.formats import Format, dequantize, quantize, to_f32
from scinjax.formats._f32 import check_float_input

__all__ = ["SGSpec", "all_gather", "lookup_sg", "reduce_scatter"]

KINDS = ("reduce_scatter", "all_gather")
_PREFIX = "scinjax_sg_"
_REGISTRY: dict[str, SGSpec] = {}
# a stochastic backward collective draws from fold_in(key, BACKWARD_STREAM) (as allreduce's)
BACKWARD_STREAM = 0x6261636B  # "back"


@dataclasses.dataclass(frozen=True, kw_only=True)
class SGSpec:
    """Static description of one reduce-scatter / all-gather call on one array."""

    kind: str
    algorithm: str
    n_ranks: int
    shape: tuple[int, ...]  # per-rank input
    dtype: str
    uplink: Format | None
    downlink: Format | None
    order: str
    accumulate: str
    label: str | None
    phase: str = "forward"  # "backward": the VJP's collective of the cotangents


def _marker_name(spec: SGSpec) -> str:
    name = _PREFIX + hashlib.sha1(repr(spec).encode()).hexdigest()[:16]
    _REGISTRY.setdefault(name, spec)
    return name


def lookup_sg(name: str) -> SGSpec | None:
    """The SGSpec of a marker jit name, or None if ``name`` is not one."""
    return _REGISTRY.get(name) if name.startswith(_PREFIX) else None


def _collective(spec, options: dict) -> Collective:
    if isinstance(spec, Collective):
        if any(v is not None for v in options.values()):
            raise ValueError("pass options either in the Collective or as keywords, not both")
        return spec
    if not isinstance(spec, str):
        raise TypeError(
            f"collective must be a spec string like 'scin:int8' or a Collective, "
            f"got {type(spec).__name__}"
        )
    if ":" in spec:
        if any(v is not None for v in options.values()):
            raise ValueError(f"spec {spec!r} already names formats; drop the keywords")
        return Collective.parse(spec)
    kw = {k: v for k, v in options.items() if v is not None}
    return Collective(algorithm=spec, **kw)


def _check_collective(coll: Collective, kind: str) -> None:
    if coll.algorithm not in ALGORITHMS:
        raise ValueError(
            f"{kind} is defined for the algorithms {ALGORITHMS}, got {coll.algorithm!r}"
        )
    if coll.quantized and coll.algorithm != "scin":
        raise ValueError(
            f"{kind} with link formats is defined for 'scin' only, got {coll}; use "
            f"'scin:<format>' (e.g. 'scin:int8')"
        )
    if kind == "all_gather" and coll.uplink != coll.downlink:
        raise ValueError(
            f"all_gather multicasts bytes unchanged, so uplink ({coll.uplink}) and downlink "
            f"({coll.downlink}) must be the same format; use e.g. 'scin:int8'"
        )


def reduce_scatter(
    x,
    axis_name,
    collective: str | Collective,
    *,
    uplink=None,
    downlink=None,
    order=None,
    accumulate=None,
    key=None,
    label: str | None = None,
    backward: str | Collective = "exact",
):
    """Reduce-scatter ``x`` (pytree of bf16/f16/f32 arrays ``[m, ...]``) over ``axis_name``.

    Equals slice ``j`` (rows ``[j m/N, (j+1) m/N)``) of ``sum_i x_i`` on rank ``j``,
    computed as docs/semantics.md defines ``collective``: ``[m, ...] -> [m/N, ...]``
    (``lax.psum_scatter(x, axis_name, tiled=True)``). ``m`` must be divisible by N.
    ``backward``: the collective of the VJP (an ``all_gather`` of the cotangents).
    """
    return _apply("reduce_scatter", x, axis_name, collective, locals())


def all_gather(
    x,
    axis_name,
    collective: str | Collective,
    *,
    uplink=None,
    downlink=None,
    order=None,
    accumulate=None,
    key=None,
    label: str | None = None,
    backward: str | Collective = "exact",
):
    """All-gather ``x`` (pytree of bf16/f16/f32 arrays ``[m, ...]``) over ``axis_name``.

    Equals ``concatenate([x_0, ..., x_{N-1}])`` on every rank: ``[m, ...] -> [N m, ...]``
    (``lax.all_gather(x, axis_name, tiled=True)``); with ``scin:<fmt>`` every piece
    crosses the links in that format. ``backward``: the collective of the VJP (a
    ``reduce_scatter`` of the N ranks' cotangents).
    """
    return _apply("all_gather", x, axis_name, collective, locals())


def _apply(kind, x, axis_name, collective, args):
    options = {k: args[k] for k in ("uplink", "downlink", "order", "accumulate")}
    coll = _collective(collective, options)
    _check_collective(coll, kind)
    back = Collective.parse(args["backward"])
    _check_collective(back, KINDS[1 - KINDS.index(kind)])
    key, label = args["key"], args["label"]
    n_ranks = axis_size(axis_name)
    for c, what in ((coll, "forward"), (back, "backward")):
        if c.stochastic and key is None:
            raise ValueError(
                f"{kind}'s {what} collective {c} rounds stochastically: pass "
                "key=jax.random.key(seed) (the same key on every rank)"
            )
    paths_leaves, treedef = jax.tree_util.tree_flatten_with_path(x)
    out = []
    for index, (path, leaf) in enumerate(paths_leaves):
        check_float_input(leaf, kind)
        if leaf.ndim == 0:
            raise ValueError(f"{kind} works on axis 0; got a 0-d leaf, reshape it to (1,)")
        if kind == "reduce_scatter" and leaf.shape[0] % n_ranks:
            raise ValueError(
                f"reduce_scatter splits axis 0 into {n_ranks} equal slices, but the leaf at "
                f"{jax.tree_util.keystr(path) or 'x'} has shape {leaf.shape}; pad axis 0 to a "
                f"multiple of {n_ranks}"
            )
        name = label if not path else f"{label or ''}{jax.tree_util.keystr(path)}"
        leaf_key = key if key is None or len(paths_leaves) == 1 else jax.random.fold_in(key, index)
        fn = _differentiable(kind, coll, back, axis_name, n_ranks, name, key is not None)
        out.append(fn(leaf) if key is None else fn(leaf, leaf_key))
    return jax.tree_util.tree_unflatten(treedef, out)


def _spec(kind, coll: Collective, n_ranks, shape, dtype, label, phase) -> SGSpec:
    return SGSpec(
        kind=kind,
        algorithm=coll.algorithm,
        n_ranks=n_ranks,
        shape=tuple(shape),
        dtype=jnp.dtype(dtype).name,
        uplink=coll.uplink,
        downlink=coll.downlink,
        order=coll.order,
        accumulate=coll.accumulate,
        label=label,
        phase=phase,
    )


def _forward(kind, coll, axis_name, n_ranks, label, x, key, phase="forward"):
    spec = _spec(kind, coll, n_ranks, x.shape, x.dtype, label, phase)
    return _kernel(spec, axis_name)(x, key)


@functools.lru_cache(maxsize=1024)
def _differentiable(kind, coll, back, axis_name, n_ranks, label, has_key):
    """The call with its VJP: RS and AG transpose into each other (straight-through)."""
    other = KINDS[1 - KINDS.index(kind)]

    def forward(x, key):
        # custom_vjp may trace fwd lazily (e.g. jax.grad of a scan whose body vmaps over
        # the axis), after vmap has left its axis env: bind the name again, as in bwd.
        with _core.extend_axis_env_nd([(axis_name, n_ranks)]):
            return _forward(kind, coll, axis_name, n_ranks, label, x, key)

    def backward(key, g):
        bkey = None if key is None else jax.random.fold_in(key, BACKWARD_STREAM)
        # custom_vjp runs bwd after vmap has left its axis env (the batching of the
        # collectives themselves is intact): bind the name again for axis_size lookups.
        with _core.extend_axis_env_nd([(axis_name, n_ranks)]):
            return _forward(other, back, axis_name, n_ranks, label, g, bkey, "backward")

    if has_key:
        call = jax.custom_vjp(forward)
        call.defvjp(lambda x, key: (forward(x, key), key), lambda key, g: (backward(key, g), None))
        return call
    call = jax.custom_vjp(lambda x: forward(x, None))
    call.defvjp(lambda x: (forward(x, None), None), lambda _, g: (backward(None, g),))
    return call


@functools.lru_cache(maxsize=4096)
def _kernel(spec: SGSpec, axis_name):
    """A jitted per-rank function named after the call's marker (found by the ledger)."""

    def kernel(x, key=None):
        emulate = _reduce_scatter if spec.kind == "reduce_scatter" else _all_gather
        return emulate(x, spec, axis_name, key)

    kernel.__name__ = kernel.__qualname__ = _marker_name(spec)
    return jax.jit(kernel)


def _reduce_scatter(x, spec: SGSpec, axis_name, key):
    """One rank's view: its buffer ``[m, ...]`` in, its reduced slice ``[m/N, ...]`` out."""
    n = spec.n_ranks
    if n == 1:
        return x
    rank = lax.axis_index(axis_name)
    rows = x.shape[0] // n
    up, down = spec.uplink, spec.downlink
    if up is None:
        gathered = lax.all_gather(x, axis_name)  # [N, m, ...]
    else:
        q = quantize(x, up, key=stage_key(key, 0, rank) if up.stochastic else None, ste=False)
        gathered = dequantize(jax.tree.map(lambda a: lax.all_gather(a, axis_name), q), "float32")
    # every rank's copy of this rank's slice: [N, m/N, ...]
    mine = lax.dynamic_slice_in_dim(gathered, rank * rows, rows, axis=1)
    if spec.algorithm == "ring":
        # slice j is summed x_{j+1}, x_{j+2}, ..., x_{j+N} (mod N), rounded to d per hop
        ops = [jnp.take(mine, (rank + 1 + k) % n, axis=0) for k in range(n)]
        partial = ops[0]
        for k in range(1, n):
            a = round_acc(to_f32(partial), spec.accumulate)
            b = round_acc(to_f32(ops[k]), spec.accumulate)
            partial = add(a, b, spec.accumulate).astype(x.dtype)
        return partial
    operands = [mine[i] if up is not None else to_f32(mine[i]) for i in range(n)]
    total = ordered_sum(operands, spec.order, spec.accumulate)  # float32 [m/N, ...]
    if down is None:
        return total.astype(x.dtype)
    noise = None
    if down.stochastic:
        noise = jax.random.uniform(stage_key(key, 1, rank), total.shape, jnp.float32)
    return dequantize(quantize(total, down, noise=noise), x.dtype)


def _all_gather(x, spec: SGSpec, axis_name, key):
    """One rank's view: its buffer ``[m, ...]`` in, all N buffers ``[N m, ...]`` out."""
    n = spec.n_ranks
    fmt = spec.uplink
    if fmt is None:
        gathered = lax.all_gather(x, axis_name)  # [N, m, ...]: a bit copy
    else:
        rank = lax.axis_index(axis_name)
        q = quantize(x, fmt, key=stage_key(key, 0, rank) if fmt.stochastic else None, ste=False)
        gathered = dequantize(jax.tree.map(lambda a: lax.all_gather(a, axis_name), q), x.dtype)
    out = gathered.reshape((n * x.shape[0],) + x.shape[1:])
    # Mark the result as varying over the ranks (same bits): otherwise vmap treats it as
    # one unbatched value and sums the ranks' cotangents before the VJP's reduce-scatter
    # sees them, which would then count every cotangent N times.
    return jnp.where(lax.axis_index(axis_name) >= 0, out, out)
