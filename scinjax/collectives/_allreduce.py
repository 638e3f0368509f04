"""``allreduce``: every algorithm of spec/collectives.md over a named axis.

All data a rank would receive is first gathered over the named axis (under ``vmap``
this costs nothing: JAX hands over the batched array), then reduced in the spec's
fixed order with the spec's roundings. ``psum`` is never used: XLA may reassociate it.
"""

from __future__ import annotations

import dataclasses
import functools

import jax
import jax.numpy as jnp
from jax import lax

from scinjax._fusion import materialize
from scinjax.collectives._config import Collective, int_block_size
from scinjax.collectives._grad import with_vjp
from scinjax.collectives._marker import CallSpec, marker_name
from scinjax.collectives._partition import block_runs, chunk_sizes
from scinjax.collectives._peers import PEER_ALGORITHMS, check_peer_input, peer_allreduce
from scinjax.collectives._reduce import add, ordered_sum, round_acc
from scinjax.formats import FpFormat, dequantize, quantize, roundtrip_runs, to_f32
from scinjax.formats._f32 import check_float_input, compute_once

__all__ = ["allreduce", "axis_size", "stage_key"]

_RECOMPUTE_INT_SUM_FROM = 1 << 23  # elements of the sum (see _emulate)

UPLINK_STAGE, DOWNLINK_STAGE = 0, 1


def axis_size(axis_name) -> int:
    """Number of ranks along a bound named axis; ValueError if the name is not bound."""
    try:
        return int(lax.axis_size(axis_name))
    except (NameError, KeyError, ValueError) as err:
        raise ValueError(
            f"axis name {axis_name!r} is not bound: call allreduce inside "
            f"jax.vmap(f, axis_name={axis_name!r}) (simulated ranks) or jax.shard_map over a "
            f"mesh with that axis (real devices)"
        ) from err


def stage_key(key, stage: int, rank):
    """The PRNG key of one quantization stage at one rank (rank N denotes the switch)."""
    return jax.random.fold_in(jax.random.fold_in(key, stage), rank)


def allreduce(
    x,
    axis_name,
    algorithm: str | Collective,
    *,
    uplink=None,
    downlink=None,
    order: str = "rank",
    accumulate: str = "float32",
    key=None,
    label: str | None = None,
    backward: str | Collective = "exact",
    ste: bool = True,
):
    """All-Reduce ``x`` (any pytree of bf16/f16/f32 arrays) over ``axis_name``.

    Equals ``sum_i x_i`` over the ranks, computed exactly as spec/collectives.md defines
    ``algorithm`` (with INQ when ``uplink``/``downlink`` formats are given), and every
    rank receives identical bits. Shapes and dtypes are unchanged: ``[...] -> [...]``.
    ``algorithm`` may also be a :class:`Collective` (then the keyword options must be left
    at their defaults). ``key`` feeds stochastic rounding; ``label`` names the call in the
    traffic ledger.

    Differentiable: the cotangent of every rank's output is All-Reduced by ``backward``
    (a spec such as ``"scin:int8"`` or a Collective; default the exact float32 reduction),
    so ``dx_i = sum_r g_r``. Forward quantization is straight-through (``ste=True``);
    ``ste=False`` gives its true zero derivative (docs/semantics.md, "Gradients").
    """
    if isinstance(algorithm, str) and ":" in algorithm:  # a spec such as "scin:int8"
        algorithm = Collective.parse(algorithm)
    if isinstance(algorithm, Collective):
        if (uplink, downlink, order, accumulate) != (None, None, "rank", "float32"):
            raise ValueError("pass options either in the Collective or as keywords, not both")
        coll = algorithm
    else:
        coll = Collective(
            algorithm=algorithm,
            uplink=uplink,
            downlink=downlink,
            order=order,
            accumulate=accumulate,
        )
    back = _backward_collective(backward)
    if not isinstance(ste, bool):
        raise TypeError(f"ste must be True or False, got {ste!r}")
    n_ranks = axis_size(axis_name)
    if back.stochastic and key is None:
        raise ValueError(
            f"the backward collective {back} rounds stochastically: pass key=jax.random.key(seed)"
        )
    if coll.stochastic and key is None:
        raise ValueError(
            f"{coll} rounds stochastically: pass key=jax.random.key(seed) (the same key on "
            "every rank; each rank and stage folds in its own index)"
        )
    paths_leaves, treedef = jax.tree_util.tree_flatten_with_path(x)
    out = []
    for index, (path, leaf) in enumerate(paths_leaves):
        check_float_input(leaf, "allreduce")
        if coll.algorithm in PEER_ALGORITHMS:
            check_peer_input(coll.algorithm, leaf)
        name = label if not path else f"{label or ''}{jax.tree_util.keystr(path)}"
        spec = CallSpec(
            algorithm=coll.algorithm,
            n_ranks=n_ranks,
            shape=tuple(leaf.shape) or (1,),
            dtype=jnp.dtype(leaf.dtype).name,
            uplink=coll.uplink,
            downlink=coll.downlink,
            order=coll.order,
            accumulate=coll.accumulate,
            label=name,
        )
        kernel = _kernel(spec, axis_name)
        # a quantizer's true derivative (peer schemes quantize on their own wire)
        zero_grad = (coll.quantized or coll.algorithm in PEER_ALGORITHMS) and not ste
        call = with_vjp(
            _keyed(kernel, coll.stochastic),
            None if zero_grad else _backward_fn(spec, back, axis_name),
            axis_name=axis_name,
            n_ranks=n_ranks,
            has_key=key is not None,
        )
        if key is None:
            out.append(call(leaf))
        else:  # leaves of a pytree draw independent noise
            out.append(
                call(leaf, key if len(paths_leaves) == 1 else jax.random.fold_in(key, index))
            )
    return jax.tree_util.tree_unflatten(treedef, out)


def _backward_collective(backward) -> Collective:
    if isinstance(backward, Collective):
        return backward
    if not isinstance(backward, str):
        raise TypeError(
            f"backward must be a collective spec like 'exact' or 'scin:int8', or a Collective; "
            f"got {backward!r}"
        )
    return Collective.parse(backward)


def _keyed(kernel, stochastic: bool):
    """``kernel`` as ``f(x)`` or ``f(x, key)``; a deterministic kernel ignores the key."""

    def call(x, key=None):
        return kernel(x, key) if stochastic else kernel(x)

    return call


def _backward_fn(spec: CallSpec, back: Collective, axis_name):
    """The cotangent All-Reduce: ``g [...]`` (output dtype) -> ``sum_r g_r``, own marker."""
    bspec = dataclasses.replace(
        spec,
        algorithm=back.algorithm,
        uplink=back.uplink,
        downlink=back.downlink,
        order=back.order,
        accumulate=back.accumulate,
        phase="backward",
    )
    return _keyed(_kernel(bspec, axis_name), back.stochastic)


@functools.lru_cache(maxsize=4096)
def _kernel(spec: CallSpec, axis_name):
    """A jitted per-rank function named after the call's marker (found by the ledger)."""

    def kernel(x, key=None):
        flat = x.reshape(spec.shape)
        out = _emulate(flat, spec, axis_name, key).reshape(x.shape)
        # Materialise the one reduced result: under vmap it is then broadcast to the N
        # ranks as a copy, instead of XLA fusing the broadcast into the reduction and
        # recomputing it for every rank (measured 4x slower for ring at 1 MiB/rank).
        return lax.optimization_barrier(out)

    kernel.__name__ = kernel.__qualname__ = marker_name(spec)
    return jax.jit(kernel)


def _emulate(x, spec: CallSpec, axis_name, key):
    """One rank's view: its buffer ``x`` ``[..., H]`` in, the reduced ``[..., H]`` out."""
    n = spec.n_ranks
    if n == 1:
        return x
    if spec.algorithm in PEER_ALGORITHMS:
        return peer_allreduce(x, axis_name, n, spec.algorithm)
    if spec.algorithm == "ring":
        return _ring(x, axis_name, n, spec.accumulate)
    rank = lax.axis_index(axis_name)
    up, down = spec.uplink, spec.downlink
    if up is None:
        gathered = lax.all_gather(x, axis_name)  # [N, ...]
        operands = [to_f32(gathered[i]) for i in range(n)]
    else:
        up_key = stage_key(key, UPLINK_STAGE, rank) if up.stochastic else None
        q = quantize(x, up, key=up_key, ste=False)  # gradients: collectives/_grad.py
        # codes written once, as whole blocks: the downlink's amax and its codes both
        # consume the uplink sum, and XLA:CPU would otherwise recompute it in each, back
        # to a float32 quotient it writes instead (64 MiB at 4 MiB/rank: 1.7x slower)
        q = dataclasses.replace(
            q,
            codes=materialize(q.codes, getattr(up, "block_size", None)),
            scales=materialize(q.scales),
        )
        gathered = jax.tree.map(lambda a: lax.all_gather(a, axis_name), q)  # [N, ...]
        operands = [
            dequantize(jax.tree.map(lambda a, i=i: a[i], gathered), jnp.float32) for i in range(n)
        ]
    total = ordered_sum(operands, spec.order, spec.accumulate)  # float32 [...], flushed
    if down is None:
        return total.astype(x.dtype)
    # The downlink's amax and its codes both read the sum. Computed once (a block-shaped
    # loop), it saves recomputing the uplink's decode: 1.1-1.4x faster for the fp family
    # at every size, and for int uplinks up to 4 MiB/rank; from 2**23 elements (32 MiB of
    # float32, glibc's largest reused allocation) each call pays fresh pages for it, and
    # recomputing int8's cheap decode measured 1.14x faster (benchmarks/collectives.py).
    if isinstance(up, FpFormat) or total.size < _RECOMPUTE_INT_SUM_FROM:
        total = compute_once(total, int_block_size(up, down))
    noise = _downlink_noise(spec, key) if down.stochastic else None
    if spec.algorithm == "two_shot" and getattr(down, "scale", None) == "nv":
        # each owner quantizes only its run: nv's tensor scale is per run (docs/semantics.md)
        runs = block_runs(spec.shape, int_block_size(up, down), n)
        return roundtrip_runs(total, down, [k for _, k in runs], noise=noise, dtype=x.dtype)
    return dequantize(quantize(total, down, noise=noise, ste=False), x.dtype)


def _downlink_noise(spec: CallSpec, key):
    """Noise of the downlink quantizer: the switch's (scin) or each owner's run (two_shot)."""
    if spec.algorithm != "two_shot":
        return jax.random.uniform(
            stage_key(key, DOWNLINK_STAGE, spec.n_ranks), spec.shape, jnp.float32
        )
    runs = block_runs(spec.shape, int_block_size(spec.uplink, spec.downlink), spec.n_ranks)
    parts = [
        jax.random.uniform(stage_key(key, DOWNLINK_STAGE, j), (elements,), jnp.float32)
        for j, (elements, _) in enumerate(runs)
    ]
    return jnp.concatenate(parts).reshape(spec.shape)


def _ring(x, axis_name, n: int, accumulate: str):
    """NCCL ring: chunk c starts at rank c+1, each hop adds and rounds to x.dtype.

    The uneven chunks are padded to a common width C (``[N ranks, N chunks, C]``); for
    each chunk c the rank axis is rolled by c+1, so hop k reads row k of every chunk:
    O(N) operations (compile time linear in N) and contiguous reads at run time.
    """
    shape, dtype = x.shape, x.dtype
    flat = lax.all_gather(x.reshape(-1), axis_name)  # [N, n]
    sizes = chunk_sizes(flat.shape[1], n)
    width = sizes[0]
    starts = [sum(sizes[:c]) for c in range(n)]
    if sizes[-1] == width:  # N divides n
        padded = flat.reshape(n, n, width)  # [N ranks, N chunks, C]
    else:
        pieces = [flat[:, a : a + s] for a, s in zip(starts, sizes, strict=True)]
        padded = jnp.stack([jnp.pad(p, ((0, 0), (0, width - p.shape[1]))) for p in pieces], 1)
    # hops[k, c] = chunk c as held by rank c+1+k
    hops = jnp.stack([jnp.roll(padded[:, c], -(c + 1), axis=0) for c in range(n)], axis=1)

    def hop_operand(k):  # [N chunks, C]
        return hops[k]

    partial = hop_operand(0)
    for k in range(1, n):
        a = round_acc(to_f32(partial), accumulate)
        b = round_acc(to_f32(hop_operand(k)), accumulate)
        partial = add(a, b, accumulate).astype(dtype)
    if sizes[-1] != width:
        partial = jnp.concatenate([partial[c, : sizes[c]] for c in range(n)])
    return partial.reshape(shape)
