"""``scinjax.emulate``: run an existing program with its ``psum``s emulated.

``emulate(fn, "scin:int8")`` traces ``fn`` to a jaxpr and evaluates it again, replacing
every ``psum`` (``lax.psum``; ``psum_invariant`` under ``shard_map`` with ``check_vma``) by
:func:`scinjax.psum` with the chosen collective, and ``psum_scatter``/``all_gather`` by
:func:`scinjax.reduce_scatter`/:func:`scinjax.all_gather`. Higher-order primitives that contain a
``psum`` are re-expressed with their public API around the rewritten body (``scan``,
``while_loop``, ``switch``, ``checkpoint``, ``shard_map``); ``jit`` and custom-derivative
calls are inlined (their bodies then differentiate through the emulated collective's own
VJP). Everything else is bound unchanged.
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Callable

import jax
import jax.numpy as jnp
from jax import lax
from jax.extend import core as jcore

from scinjax.collectives import Collective, all_gather, reduce_scatter
from scinjax.transforms._psum import REPLICATE_NAME, psum

__all__ = ["CallSite", "emulate", "register_rewrite"]

# psum under vmap / unchecked shard_map, and under shard_map with check_vma=True
_PSUMS = ("psum", "psum_invariant")
# jit names of scinjax's kernels (scinjax_allreduce_*, scinjax_sg_*) and REPLICATE_NAME
_OURS = "scinjax_"
assert REPLICATE_NAME.startswith(_OURS)


@dataclasses.dataclass(frozen=True, kw_only=True)
class CallSite:
    """One ``psum`` operand found by :func:`emulate`, as the ``policy`` sees it.

    index: order of appearance (0, 1, ...) while the program is traced (a call inside a
    ``scan`` body is one site however many iterations run); axes: the reduced axis
    names; shape/dtype: the per-rank operand.
    """

    index: int
    axes: tuple
    shape: tuple[int, ...]
    dtype: str


@dataclasses.dataclass
class _Context:
    pick: Callable[[CallSite], Collective | None]
    key: jax.Array | None
    backward: str | Collective = "exact"
    ste: bool = True
    count: int = 0


def _subjaxprs(params) -> list:
    out = []
    for value in params.values():
        for item in value if isinstance(value, tuple | list) else (value,):
            if isinstance(item, jcore.ClosedJaxpr):
                out.append(item.jaxpr)
            elif isinstance(item, jcore.Jaxpr):
                out.append(item)
    return out


def _is_ours(eqn) -> bool:
    """scinjax's own jits (collective kernels, the exact replication step): kept as is."""
    return str(eqn.params.get("name", "")).startswith(_OURS)


@functools.lru_cache(maxsize=1024)
def _contains(jaxpr) -> bool:
    """Whether ``jaxpr`` (recursively) holds a primitive that emulate rewrites."""
    for eqn in jaxpr.eqns:
        name = eqn.primitive.name
        if name in _REWRITES:
            return True
        if _is_ours(eqn):
            continue
        if any(_contains(sub) for sub in _subjaxprs(eqn.params)):
            return True
    return False


def _eval(jaxpr, consts, args, ctx: _Context) -> list:
    env = {}

    def read(v):
        return v.val if isinstance(v, jcore.Literal) else env[v]

    for v, val in zip(jaxpr.constvars, consts, strict=True):
        env[v] = val
    for v, val in zip(jaxpr.invars, args, strict=True):
        env[v] = val
    for eqn in jaxpr.eqns:
        invals = [read(v) for v in eqn.invars]
        outs = _eval_eqn(eqn, invals, ctx)  # rules and handlers return lists
        if not isinstance(outs, list | tuple):
            outs = [outs]
        for v, val in zip(eqn.outvars, outs, strict=True):
            if not isinstance(v, jcore.DropVar):
                env[v] = val
    return [read(v) for v in jaxpr.outvars]


def _bind(eqn, invals):
    return eqn.primitive.bind(*invals, **eqn.primitive.get_bind_params(eqn.params))


def _eval_eqn(eqn, invals, ctx):
    name = eqn.primitive.name
    if name in _REWRITES:
        return _REWRITES[name](eqn, invals, ctx)
    if not any(_contains(sub) for sub in _subjaxprs(eqn.params)):
        return _bind(eqn, invals)
    if _is_ours(eqn):
        return _bind(eqn, invals)
    handler = _HIGHER_ORDER.get(name)
    if handler is None:
        raise NotImplementedError(
            f"scinjax.emulate cannot rewrite a psum inside a `{name}` primitive; call "
            "scinjax.psum there directly, or restrict emulate with axis_names=/policy="
        )
    return handler(eqn, invals, ctx)


# ----------------------------------------------------------------- the rewrites


def _psum_rule(eqn, invals, ctx: _Context):
    axes = tuple(eqn.params["axes"])
    if eqn.params.get("axis_index_groups") is not None or not all(isinstance(a, str) for a in axes):
        return _bind(eqn, invals)  # grouped or positional reductions stay as they are
    outs = []
    for x in invals:
        aval = jax.typeof(x)
        site = CallSite(index=ctx.count, axes=axes, shape=tuple(aval.shape), dtype=aval.dtype.name)
        ctx.count += 1
        coll = ctx.pick(site)
        if coll is None or aval.dtype.name not in ("bfloat16", "float16", "float32"):
            kept = eqn.primitive.bind(x, **eqn.params)
            outs.extend(kept if isinstance(kept, list | tuple) else [kept])
            continue
        key = None if ctx.key is None else jax.random.fold_in(ctx.key, site.index)
        name = axes[0] if len(axes) == 1 else axes
        outs.append(
            psum(
                x,
                name,
                collective=coll,
                key=key,
                label=f"psum{site.index}",
                backward=ctx.backward,
                ste=ctx.ste,
            )
        )
    return outs


def _site(ctx: _Context, axes, x) -> tuple[CallSite, Collective | None]:
    aval = jax.typeof(x)
    site = CallSite(index=ctx.count, axes=axes, shape=tuple(aval.shape), dtype=aval.dtype.name)
    ctx.count += 1
    return site, ctx.pick(site)


def _scatter_gather_rule(kind: str):
    """``lax.psum_scatter`` / ``lax.all_gather`` (one operand) -> scinjax's, which work
    tiled along axis 0: other dimensions are moved there, untiled ones added/removed."""
    dim_param = "scatter_dimension" if kind == "reduce_scatter" else "all_gather_dimension"

    def rule(eqn, invals, ctx):
        p = eqn.params
        axes = p["axis_name"] if isinstance(p["axis_name"], tuple) else (p["axis_name"],)
        (x,) = invals
        if (
            p.get("axis_index_groups") is not None
            or len(axes) != 1
            or not isinstance(axes[0], str)
            or jax.typeof(x).dtype.name not in ("bfloat16", "float16", "float32")
        ):
            return [_bind(eqn, invals)]
        site, coll = _site(ctx, axes, x)
        if coll is None:
            return [_bind(eqn, invals)]
        dim, tiled = p[dim_param], p["tiled"]
        key = None if ctx.key is None else jax.random.fold_in(ctx.key, site.index)
        opts = dict(key=key, label=f"{kind}{site.index}", backward=_transpose_backward(ctx))
        if kind == "reduce_scatter":
            out = reduce_scatter(jnp.moveaxis(x, dim, 0), axes[0], coll, **opts)
            # untiled: [N, ...] -> [...], rank j keeps row j of the sum
            return [out[0] if not tiled else jnp.moveaxis(out, 0, dim)]
        v = x[None] if not tiled else jnp.moveaxis(x, dim, 0)
        out = all_gather(v, axes[0], coll, **opts)  # [N m, ...]
        return [jnp.moveaxis(out, 0, dim)]

    return rule


def _transpose_backward(ctx: _Context):
    """emulate's ``backward`` names an All-Reduce; a scatter/gather's transpose is the
    other one of the pair with the same algorithm and formats."""
    return Collective.parse(ctx.backward)


_REWRITES: dict[str, Callable] = {name: _psum_rule for name in _PSUMS}
_REWRITES["reduce_scatter"] = _scatter_gather_rule("reduce_scatter")
_REWRITES["all_gather"] = _scatter_gather_rule("all_gather")


def register_rewrite(primitive_name: str, rule: Callable) -> None:
    """Route ``primitive_name`` (e.g. ``"reduce_scatter"``, ``"all_gather"``) through
    ``rule(eqn, invals, ctx) -> list of outputs`` in :func:`emulate` (see ``_psum_rule``)."""
    _REWRITES[primitive_name] = rule
    _contains.cache_clear()


def _inline(param: str):
    def rule(eqn, invals, ctx):
        closed = eqn.params[param]
        return _eval(closed.jaxpr, closed.consts, invals, ctx)

    return rule


def _scan(eqn, invals, ctx):
    p = eqn.params
    nc, nk = p["num_consts"], p["num_carry"]
    consts, init, xs = invals[:nc], invals[nc : nc + nk], invals[nc + nk :]
    closed = p["jaxpr"]

    def body(carry, x):
        outs = _eval(closed.jaxpr, closed.consts, [*consts, *carry, *(x or [])], ctx)
        return outs[:nk], outs[nk:]

    carry, ys = lax.scan(
        body,
        list(init),
        list(xs) if xs else None,
        length=p["length"],
        reverse=p["reverse"],
        unroll=p["unroll"],
    )
    return [*carry, *ys]


def _while(eqn, invals, ctx):
    p = eqn.params
    cn, bn = p["cond_nconsts"], p["body_nconsts"]
    cconsts, bconsts, init = invals[:cn], invals[cn : cn + bn], invals[cn + bn :]
    cj, bj = p["cond_jaxpr"], p["body_jaxpr"]

    def cond(c):
        return _eval(cj.jaxpr, cj.consts, [*cconsts, *c], ctx)[0]

    def body(c):
        return _eval(bj.jaxpr, bj.consts, [*bconsts, *c], ctx)

    return list(lax.while_loop(cond, body, list(init)))


def _cond(eqn, invals, ctx):
    index, ops = invals[0], invals[1:]

    def branch(closed, *args):
        return _eval(closed.jaxpr, closed.consts, list(args), ctx)

    fns = [functools.partial(branch, b) for b in eqn.params["branches"]]
    return list(lax.switch(index, fns, *ops))


def _remat(eqn, invals, ctx):
    p = eqn.params
    jaxpr = p["jaxpr"]

    def f(*args):
        return _eval(jaxpr, [], list(args), ctx)

    return list(jax.checkpoint(f, prevent_cse=p["prevent_cse"], policy=p["policy"])(*invals))


def _shard_map(eqn, invals, ctx):
    p = eqn.params
    jaxpr = p["jaxpr"]

    def f(*args):
        return tuple(_eval(jaxpr, [], list(args), ctx))

    mapped = jax.shard_map(
        f,
        mesh=p["mesh"],
        in_specs=tuple(p["in_specs"]),
        out_specs=tuple(p["out_specs"]),
        check_vma=p["check_vma"],
        axis_names=set(p["newly_manual_axes"]),
    )
    return list(mapped(*invals))


_HIGHER_ORDER: dict[str, Callable] = {
    "pjit": _inline("jaxpr"),
    "jit": _inline("jaxpr"),
    "closed_call": _inline("call_jaxpr"),
    "custom_jvp_call": _inline("call_jaxpr"),
    "custom_vjp_call": _inline("call_jaxpr"),
    "scan": _scan,
    "while": _while,
    "cond": _cond,
    "remat2": _remat,
    "checkpoint": _remat,
    "shard_map": _shard_map,
}


# ----------------------------------------------------------------- public


def _picker(default: Collective, axis_names, policy):
    if policy is not None and not (callable(policy) or isinstance(policy, dict)):
        raise TypeError(
            "policy must be a callable CallSite -> collective spec (or None to keep "
            f"lax.psum), or a dict {{axis name: spec}}; got {type(policy).__name__}"
        )
    names = None
    if axis_names is not None:
        names = {axis_names} if isinstance(axis_names, str) else set(axis_names)

    def pick(site: CallSite) -> Collective | None:
        if names is not None and not set(site.axes) <= names:
            return None
        choice = default
        if isinstance(policy, dict):
            key = site.axes[0] if len(site.axes) == 1 else site.axes
            choice = policy.get(key, default)
        elif policy is not None:
            choice = policy(site)
        return None if choice is None else Collective.parse(choice)

    return pick


def emulate(
    fn: Callable,
    collective: str | Collective = "exact",
    *,
    axis_names=None,
    policy=None,
    key=None,
    backward: str | Collective = "exact",
    ste: bool = True,
) -> Callable:
    """``fn`` with every ``psum`` inside it run by the emulated ``collective``.

    ``fn`` is an unmodified JAX program (``shard_map``, ``jit``, ``scan``, ``while_loop``,
    ``cond``, ``checkpoint``, custom derivatives; or a per-rank function called under
    ``jax.vmap(..., axis_name=...)``). ``axis_names``: only psums over these axes are
    rewritten. ``policy``: per call site, a callable ``CallSite -> spec`` (``None`` keeps
    ``lax.psum``) or a dict ``{axis_name: spec}``; sites are numbered in order of
    appearance. ``key`` feeds stochastic formats (folded with the site index);
    ``backward``/``ste`` as in :func:`scinjax.allreduce` (every site). The result
    is differentiable, jit-able, and ``count_traffic(emulate(fn, ...), *args)`` counts its
    bytes (records labelled ``psum<index>``).
    """
    if not callable(fn):
        raise TypeError(f"emulate needs a callable, got {type(fn).__name__}")
    pick = _picker(Collective.parse(collective), axis_names, policy)
    Collective.parse(backward)  # a bad spec fails here, not at the first call
    if not isinstance(ste, bool):
        raise TypeError(f"ste must be True or False, got {ste!r}")

    @functools.wraps(fn)
    def emulated(*args, **kwargs):
        closed, out_shape = jax.make_jaxpr(fn, return_shape=True)(*args, **kwargs)
        ctx = _Context(pick=pick, key=key, backward=backward, ste=ste)
        flat = jax.tree.leaves((args, kwargs))
        outs = _eval(closed.jaxpr, closed.consts, flat, ctx)
        return jax.tree.unflatten(jax.tree.structure(out_shape), outs)

    return emulated
