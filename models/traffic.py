"""Bytes on every link of a full-size model's forward pass, by abstract tracing.

`model_traffic` builds the emulated model with `jax.ShapeDtypeStruct`
parameters and token ids and hands it to `scinjax.count_traffic`: nothing
is allocated and no arithmetic runs, so LLaMA-2-70B costs a trace.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from scinjax import Collective, TrafficReport, count_traffic

from .api import make_module
from .config import LlamaConfig
from .llama import layer_runs, split_layer_params

__all__ = ["model_traffic"]


def model_traffic(
    config: LlamaConfig,
    *,
    tp: int,
    collective: str | Collective,
    tokens: int,
    batch: int = 1,
    wire_dtype: str = "bfloat16",
    compute_dtype: str = "float32",
) -> TrafficReport:
    """Traffic of one forward pass of `batch` sequences of `tokens` tokens on `tp` ranks.

    Prefill of a prompt of T tokens: ``tokens=T``. One decode step of B
    sequences: ``tokens=1, batch=B`` (each All-Reduce then carries [B, D] per
    rank; the bytes of a step do not depend on how long the sequences are).
    Every layer makes two All-Reduces ("attn_out", "mlp_out") of
    [batch*tokens, hidden] partial sums in `wire_dtype` (the compute dtype
    for "exact"); records carry ``calls = num_layers``.
    """
    for name, value in (("tokens", tokens), ("batch", batch)):
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ValueError(f"{name} must be an int >= 1, got {value!r}")
    if tokens > config.max_position:
        raise ValueError(f"tokens={tokens} exceeds max_position {config.max_position}")
    module, plan = make_module(
        config,
        tp=tp,
        collective=collective,
        wire_dtype=wire_dtype,
        compute_dtype=compute_dtype,
    )
    params = plan.abstract_params("batched", compute_dtype)
    ids = jax.ShapeDtypeStruct((batch, tokens), jnp.int32)
    runs = layer_runs(module.reducer, config.num_layers)
    apply = lambda p, *args: module.apply(split_layer_params(p, runs), *args)  # noqa: E731
    if module.reducer.collective.stochastic:
        key = jax.eval_shape(lambda: jax.random.key(0))
        return count_traffic(apply, params, ids, key)
    return count_traffic(apply, params, ids)
