"""Public entry points: `load` (real weights) and `build_model` (any weights).

A `LoadedModel` holds one model split over `tp` emulated ranks with one
All-Reduce configuration; `.logits(ids)` runs it (jit-compiled once per
sequence length) and `.greedy(ids, n)` continues a prompt with a KV cache.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

from scinjax import CallPolicy, Collective
from scinjax.collectives import parse_collective_or_policy

from .config import LlamaConfig
from .llama import AXIS_NAME, Llama, Reducer, layer_runs, split_layer_params
from .tp import PER_RANK_AXES, TPPlan, check_ranks, make_plan
from .weights import release_memory

__all__ = ["MODES", "DTYPES", "LoadedModel", "build_model", "load", "make_module"]

MODES = ("vmap", "vmap_ranks", "shard_map")
DTYPES = ("float32", "bfloat16", "float16")


def _check_dtype(what: str, value) -> str:
    name = jnp.dtype(value).name if not isinstance(value, str) else value
    if name not in DTYPES:
        raise ValueError(f"{what} must be one of {DTYPES}, got {value!r}")
    return name


def _settings(tp, collective, wire_dtype, compute_dtype, mode):
    """Validated (Collective, wire dtype, compute dtype); ValueError naming a bad value."""
    check_ranks(tp)
    if mode not in MODES:
        raise ValueError(f"unknown mode {mode!r}; use one of {MODES}")
    coll = parse_collective_or_policy(collective)
    wire = _check_dtype("wire_dtype", wire_dtype)
    compute = _check_dtype("compute_dtype", compute_dtype)
    if isinstance(coll, Collective) and coll.algorithm == "exact":
        wire = compute
    return coll, wire, compute


def make_module(
    config: LlamaConfig,
    *,
    tp: int = 1,
    collective: str | Collective | CallPolicy = "exact",
    wire_dtype: str = "bfloat16",
    compute_dtype: str = "float32",
    mode: str = "vmap",
) -> tuple[Llama, TPPlan]:
    """The Flax module of one program and its TP plan (no weights involved).

    mode "vmap": one program holds all `tp` ranks (full-width math, all
    partial sums, All-Reduce under `jax.vmap`); "vmap_ranks" and
    "shard_map": the module is one rank's program, to run where the axis
    "tp" is bound. With tp=1 every mode is the plain model (no All-Reduce).
    In "exact" mode the partials are not cast to `wire_dtype`.
    """
    coll, wire, compute = _settings(tp, collective, wire_dtype, compute_dtype, mode)
    plan = make_plan(config, tp)
    batched = mode == "vmap" or tp == 1
    reducer = Reducer(
        collective=coll,
        wire_dtype=wire,
        compute_dtype=compute,
        batched=batched,
    )
    if batched:
        layout, shapes = plan.batched_layout(), plan.layer_shapes("batched")
    else:
        layout, shapes = plan.rank_layout(), plan.layer_shapes("rank")
    return Llama(config=config, layout=layout, reducer=reducer, layer_shapes=shapes), plan


def _rank_axes(params: dict) -> dict:
    """Rank axis of every leaf of a global per-rank params tree (None: replicated)."""
    p = params["params"]
    axes = {k: None for k in p if k != "layers"}
    axes["layers"] = {k: PER_RANK_AXES[k] for k in p["layers"]}
    return {"params": axes}


def _spec(axis):
    return P() if axis is None else P(*([None] * axis), AXIS_NAME)


def _specs(axes: dict) -> dict:
    """PartitionSpec of every leaf of a rank-axes tree (P() for replicated leaves)."""
    return jax.tree.map(_spec, axes, is_leaf=lambda a: a is None)


class LoadedModel:
    """A model on the emulated fabric.

    Attributes:
      config: the `LlamaConfig`.
      tokenizer: `encode(str) -> list[int]`, `decode(ids) -> str` (None for
        random weights).
      tp: number of ranks N; plan: the `TPPlan` (which rank holds what).
      collective: the `Collective` of both All-Reduces of every layer.
      wire_dtype, compute_dtype, mode: as given to `build_model`.
      params: the Flax params of the program (device arrays).
    """

    def __init__(self, *, module, plan, params, mode, mesh=None, tokenizer=None):
        self.module = module
        self.plan = plan
        self.config = plan.config
        self.tp = plan.n_ranks
        self.mode = mode
        self.mesh = mesh
        self.tokenizer = tokenizer
        reducer = module.reducer
        self.collective = reducer.collective
        self.wire_dtype = reducer.wire_dtype
        self.compute_dtype = reducer.compute_dtype
        self.params = params
        self._traces = 0
        # One jit for the forward (cache=None) and for prefill/decode steps with a
        # cache: each argument structure and shape gets its own cache entry.
        self._jitted = jax.jit(self._counted(self._run))

    def __repr__(self) -> str:
        return (
            f"LoadedModel({self.config.name or 'custom'}, tp={self.tp}, "
            f"collective={str(self.collective)!r}, wire={self.wire_dtype}, "
            f"compute={self.compute_dtype}, mode={self.mode!r})"
        )

    def with_collective(
        self, collective: str | Collective | CallPolicy, *, wire_dtype: str = "bfloat16"
    ) -> LoadedModel:
        """The same model on the same ranks with another All-Reduce; params are shared.

        Compute dtype, mode, mesh and tokenizer carry over; `wire_dtype` is as in
        `build_model` (ignored by "exact").
        """
        module, plan = make_module(
            self.config,
            tp=self.tp,
            collective=collective,
            wire_dtype=wire_dtype,
            compute_dtype=self.compute_dtype,
            mode=self.mode,
        )
        return LoadedModel(
            module=module,
            plan=plan,
            params=self.params,
            mode=self.mode,
            mesh=self.mesh,
            tokenizer=self.tokenizer,
        )

    # ---- programs ------------------------------------------------------------------------

    def _counted(self, fn):
        def traced(*args):
            self._traces += 1  # runs only while tracing
            return fn(*args)

        return traced

    @property
    def trace_count(self) -> int:
        """How many times a jitted program was traced (compiles; cache hits add nothing)."""
        return self._traces

    def _run(self, params, tokens, key, cache=None, start=0):
        """tokens [B, T] -> logits [B, T, V] (and the cache when one is given)."""
        module = self.module
        runs = layer_runs(module.reducer, self.config.num_layers)
        apply = lambda p, *args: module.apply(split_layer_params(p, runs), *args)  # noqa: E731
        if self.tp == 1 or self.mode == "vmap":
            return apply(params, tokens, key, cache, start)
        axes = _rank_axes(params)
        cache_axis = 3  # cache [L, B, C, N*Kh, hd]: ranks' kv heads side by side
        if self.mode == "shard_map":
            cache_spec = None if cache is None else (_spec(cache_axis),) * 2
            out_specs = P() if cache is None else (P(), cache_spec)
            body = jax.shard_map(
                lambda p, t, k, c, s: apply(p, t, k, c, s),
                mesh=self.mesh,
                in_specs=(_specs(axes), P(), P(), cache_spec, P()),
                out_specs=out_specs,
                check_vma=False,
            )
            return body(params, tokens, key, cache, start)
        # vmap_ranks: the per-rank program vmapped over its rank axis (naive emulation).
        n = self.tp
        split = lambda a, ax: a if ax is None else _split_axis(a, ax, n)  # noqa: E731
        local = jax.tree.map(split, params, axes)
        if cache is not None:
            cache = jax.tree.map(lambda a: _split_axis(a, cache_axis, n), cache)
        fn = jax.vmap(
            lambda p, c: apply(p, tokens, key, c, start),
            in_axes=(axes, None if cache is None else cache_axis),
            out_axes=0 if cache is None else (0, cache_axis),
            axis_name=AXIS_NAME,
        )
        out = fn(local, cache)
        if cache is None:
            return out[0]
        logits, new_cache = out
        merge = lambda a: a.reshape(a.shape[:cache_axis] + (-1,) + a.shape[cache_axis + 2 :])  # noqa: E731
        return logits[0], jax.tree.map(merge, new_cache)

    # ---- public --------------------------------------------------------------------------

    def forward(self, tokens, key=None) -> jax.Array:
        """Logits float32 [B, T, V] of token ids [B, T] (positions 0 .. T-1)."""
        tokens = self._check_ids(tokens, ndim=2)
        return self._jitted(self.params, tokens, key)

    def logits(self, token_ids, key=None) -> np.ndarray:
        """Logits float32 [T, V] of a 1-D sequence of token ids (positions 0 .. T-1).

        `key` feeds stochastic rounding (collectives with a stochastic format).
        """
        tokens = self._check_ids(token_ids, ndim=1)
        return np.asarray(self._jitted(self.params, tokens[None], key)[0])

    def lower(self, length: int, batch: int = 1):
        """The forward of [batch, length] ids lowered ahead of time (`.compile()` compiles it).

        For measuring compile time; `forward`/`logits` keep their own jit cache.
        """
        ids = jax.ShapeDtypeStruct((batch, length), jnp.int32)
        return self._jitted.lower(self.params, ids, None)

    def init_cache(self, batch: int, length: int):
        """Zero KV cache (k, v), each [L, B, C, Kh, hd] in the compute dtype."""
        c = self.config
        kh = c.num_kv_heads
        if self.tp > 1 and self.mode != "vmap":
            kh = self.tp * (self.plan.head_slot_count // self.plan.kv_group)
        shape = (c.num_layers, batch, length, kh, c.head_dim)
        zeros = jnp.zeros(shape, self.compute_dtype)
        if self.mode == "shard_map" and self.tp > 1:
            zeros = jax.device_put(zeros, NamedSharding(self.mesh, _spec(3)))
        return (zeros, zeros)

    def greedy(self, prompt_ids, n_new: int, key=None, *, return_logits: bool = False):
        """The `n_new` token ids greedy decoding appends to `prompt_ids` (1-D ids).

        The prompt is prefilled in one pass; each further token is one decode
        step of one token through a KV cache, so every All-Reduce of a step
        carries [1, D] per rank, as in a deployment. With `return_logits`,
        also the float32 logits [n_new, V] each choice was made from.
        """
        prompt = self._check_ids(prompt_ids, ndim=1)
        if isinstance(n_new, bool) or not isinstance(n_new, int) or n_new < 0:
            raise ValueError(f"n_new must be an int >= 0, got {n_new!r}")
        p = prompt.shape[0]
        if p + n_new > self.config.max_position:
            raise ValueError(
                f"prompt ({p}) + n_new ({n_new}) exceeds max_position {self.config.max_position}"
            )
        out, rows = [], []
        if n_new:
            length = min(self.config.max_position, -(-(p + n_new) // 64) * 64)  # few shapes
            cache = self.init_cache(1, length)
            step_key = lambda pos: None if key is None else jax.random.fold_in(key, pos)  # noqa: E731
            logits, cache = self._jitted(self.params, prompt[None], step_key(0), cache, 0)
            for i in range(n_new):
                rows.append(logits[0, -1])
                out.append(int(jnp.argmax(rows[-1])))
                if i + 1 < n_new:
                    tok = jnp.asarray([[out[-1]]], jnp.int32)
                    pos = p + i
                    logits, cache = self._jitted(
                        self.params, tok, step_key(pos), cache, jnp.int32(pos)
                    )
        if not return_logits:
            return out
        v = self.config.vocab_size
        return out, (
            np.stack([np.asarray(r) for r in rows]) if rows else np.zeros((0, v), np.float32)
        )

    def _check_ids(self, ids, *, ndim: int) -> jax.Array:
        arr = np.asarray(ids)
        what = "[T]" if ndim == 1 else "[B, T]"
        if arr.ndim != ndim or arr.shape[-1] == 0:
            raise ValueError(f"token ids must be a non-empty {what} array, got shape {arr.shape}")
        if not np.issubdtype(arr.dtype, np.integer):
            raise ValueError(f"token ids must be integers, got dtype {arr.dtype}")
        v = self.config.vocab_size
        if arr.min() < 0 or arr.max() >= v:
            raise ValueError(f"token ids must lie in [0, {v}), got {arr.min()}..{arr.max()}")
        if arr.shape[-1] > self.config.max_position:
            raise ValueError(
                f"{arr.shape[-1]} tokens exceed max_position {self.config.max_position}"
            )
        return jnp.asarray(arr, jnp.int32)


def _split_axis(a, axis: int, n: int):
    """[..., n*k, ...] -> [..., n, k, ...] at `axis`."""
    return a.reshape(a.shape[:axis] + (n, a.shape[axis] // n) + a.shape[axis + 1 :])


def build_model(
    config: LlamaConfig,
    weights,
    *,
    tp: int = 1,
    collective: str | Collective | CallPolicy = "exact",
    wire_dtype: str = "bfloat16",
    compute_dtype: str = "float32",
    mode: str = "vmap",
    mesh: Mesh | None = None,
    tokenizer=None,
    weights_dtype: str | None = None,
    consume_weights: bool = False,
) -> LoadedModel:
    """A `LoadedModel` from canonical `weights` (see `models.weights`).

    Args:
      config: the model's shapes.
      weights: canonical float32 weights (validated against `config`).
      tp: number of tensor-parallel ranks N (>= 1).
      collective: spec string `ALGO[:UPLINK[/DOWNLINK]]` or a `Collective`
        for both All-Reduces of every layer ("exact": fixed-order float32
        sum of float32 partials, no wire cast).
      wire_dtype: dtype of the partial sums on the wire (bfloat16).
      compute_dtype: dtype of weights and activations (float32).
      mode: "vmap" (default: one program emulates all ranks, full-width math,
        only the row-parallel partial sums per rank), "vmap_ranks" (the
        per-rank program under `jax.vmap`, the naive emulation) or
        "shard_map" (the per-rank program on a mesh of `tp` devices).
      mesh: for "shard_map": a Mesh with an axis "tp" of size `tp` (default:
        the first `tp` devices).
      tokenizer: passed through to `.tokenizer`.
      weights_dtype: dtype the params are stored in (default: `compute_dtype`);
        "bfloat16"/"float16" halve their memory, matmuls with float32
        activations still accumulate in float32.
      consume_weights: delete each array from `weights` once it is on the
        device (the dict ends empty): peak memory about the final params plus
        one stacked leaf instead of two full copies.
    """
    if not isinstance(config, LlamaConfig):
        raise TypeError(f"config must be a LlamaConfig, got {type(config).__name__}")
    module, plan = make_module(
        config,
        tp=tp,
        collective=collective,
        wire_dtype=wire_dtype,
        compute_dtype=compute_dtype,
        mode=mode,
    )
    dtype = jnp.dtype(_check_dtype("weights_dtype", weights_dtype or module.reducer.compute_dtype))
    view = "batched" if tp == 1 or mode == "vmap" else "global"

    def put(a):
        # On CPU, may_alias lets XLA adopt the (64-byte aligned) NumPy buffer instead of
        # copying it; on a GPU it is a host-to-device copy and the host buffer is freed.
        try:
            out = jax.device_put(a, may_alias=True)
        except TypeError:  # jax without may_alias: a copy
            out = jnp.asarray(a)
        if consume_weights:
            release_memory()
        return out

    params = plan.params(weights, view, dtype, put=put, consume=consume_weights)
    if mode == "shard_map" and tp > 1:
        if mesh is None:
            devices = jax.devices()
            if len(devices) < tp:
                raise ValueError(
                    f"shard_map with tp={tp} needs {tp} devices, found {len(devices)}; on CPU "
                    "set XLA_FLAGS=--xla_force_host_platform_device_count=N before importing jax"
                )
            mesh = Mesh(np.asarray(devices[:tp]), (AXIS_NAME,))
        if dict(mesh.shape).get(AXIS_NAME) != tp:
            raise ValueError(f"mesh needs an axis {AXIS_NAME!r} of size {tp}, got {mesh.shape}")
        shardings = jax.tree.map(lambda s: NamedSharding(mesh, s), _specs(_rank_axes(params)))
        params = jax.device_put(params, shardings)
    return LoadedModel(
        module=module, plan=plan, params=params, mode=mode, mesh=mesh, tokenizer=tokenizer
    )


def load(
    name_or_path: str | None = "smollm2-135m",
    *,
    tp: int = 1,
    collective: str | Collective | CallPolicy = "exact",
    wire_dtype: str = "bfloat16",
    compute_dtype: str = "float32",
    mode: str = "vmap",
    weights_dtype: str | None = None,
) -> LoadedModel:
    """Load real weights (GGUF file, Hugging Face folder, or "smollm2-135m") onto `tp` ranks.

    See `models.loaders.load_weights` for what `name_or_path` may be and
    `build_model` for the other arguments. The tp/collective/dtype settings
    are checked before any file is read. Tensors are read, converted to
    `weights_dtype` (default: `compute_dtype`) and moved to the device one at
    a time (peak memory about 1.3x the final params; benchmarks/load_memory.py).
    """
    _settings(tp, collective, wire_dtype, compute_dtype, mode)  # fail before reading files
    wdtype = _check_dtype("weights_dtype", weights_dtype or compute_dtype)
    from .loaders import load_weights

    config, weights, tokenizer = load_weights(name_or_path, dtype=wdtype, lazy=True)
    return build_model(
        config,
        weights,
        tp=tp,
        collective=collective,
        wire_dtype=wire_dtype,
        compute_dtype=compute_dtype,
        mode=mode,
        tokenizer=tokenizer,
        weights_dtype=wdtype,
        consume_weights=True,
    )
