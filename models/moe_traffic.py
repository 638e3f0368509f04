"""One traffic report of an MoE model's forward: All-Reduces plus every MoE layer's bytes.

`scinjax.count_traffic` traces abstractly, so its MoE records carry spec/moe.md's
uniform-routing expectation (``routing="uniform"``). `concrete_traffic` runs the forward
once, reads the routing every layer produced (sown as ``moe_routing``) and replaces them
by one exact record per layer (``routing="concrete"``, `scinjax.moe.ep_traffic`'s ints).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from scinjax import TrafficReport, count_traffic
from scinjax.traffic._ep_records import EPRecord, ep_concrete_record

from .llama import layer_runs, split_layer_params

__all__ = ["concrete_traffic", "forward_with_routing", "layer_routing"]


def layer_routing(model, ids) -> list[tuple[np.ndarray, np.ndarray]]:
    """(experts ``[N, M/N, k]`` int32, gates ``[N, M/N, k]`` float32) of every layer, in
    layer order, for token ids ``[B, T]`` on a `LoadedModel` whose config has ``moe``."""
    return forward_with_routing(model, ids)[1]


def forward_with_routing(model, ids) -> tuple[np.ndarray, list]:
    """(logits ``[B, T, V]`` float32, `layer_routing`'s list) from one forward."""
    if model.config.moe is None:
        raise ValueError("layer_routing needs a model whose config has moe=MoeSpec(...)")
    module = model.module
    runs = layer_runs(module.reducer, model.config.num_layers)
    params = split_layer_params(model.params, runs)
    ids = jnp.asarray(ids, jnp.int32)
    logits, inter = jax.jit(lambda p, t: module.apply(p, t, mutable=["intermediates"]))(params, ids)
    inter = inter["intermediates"]
    out = []
    for i, (_, count) in enumerate(runs):
        ((experts, gates),) = inter["layers" if len(runs) == 1 else f"layers_{i}"]["moe_routing"]
        experts, gates = np.asarray(experts), np.asarray(gates)
        out.extend((experts[j], gates[j]) for j in range(count))
    return np.asarray(logits), out


def concrete_traffic(model, ids) -> TrafficReport:
    """All-Reduce records of `count_traffic` and one exact MoE record per layer.

    model: a `LoadedModel` with ``config.moe``; ids: token ids ``[B, T]`` (B*T divisible
    by tp). MoE records are labelled ``moe.{layer}``, ``calls=1``.
    """
    ids = jnp.asarray(ids, jnp.int32)
    module = model.module
    runs = layer_runs(module.reducer, model.config.num_layers)
    apply = lambda p, t: module.apply(split_layer_params(p, runs), t)  # noqa: E731
    report = count_traffic(apply, model.params, ids)
    uniform = [r for r in report.records if isinstance(r, EPRecord)]
    if not uniform:
        raise ValueError("the model's forward has no MoE layer (config.moe is None?)")
    spec = uniform[0].spec
    moe = [
        ep_concrete_record(spec, experts, label=f"moe.{layer}")
        for layer, (experts, _) in enumerate(layer_routing(model, ids))
    ]
    others = [r for r in report.records if not isinstance(r, EPRecord)]
    return TrafficReport(tuple(others + moe))
