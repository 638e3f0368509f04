"""Independent NumPy reference of MoE dispatch / combine (docs/spec/moe.md).

Written from the spec and docs/semantics.md ("MoE expert parallelism") only. One global
view: ``xs [N, T, H]`` (rank s's tokens), ``experts [N, T, k]``, ``gates [N, T, k]``
float32; returns the combined outputs ``[N, T, H]`` in the activation dtype d.

- Dispatch: each token is quantized once in the dispatch format and every destination
  (its own rank included) dequantizes the same codes to d.
- Capacity: expert e keeps the first ``capacity`` pairs that reach it in (source rank,
  token) order; the rest are dropped (no output for that pair). ``None``: dropless.
- Expert outputs come from ``expert_fn(e, rows [m, H] d) -> [m, H]`` row by row.
- Weighting on the expert's rank: ``cast_d(ftz(f32(y) * ftz(g)))``.
- Partial P_{t,r}: float32 sum, expert-index order, of rank r's kept weighted outputs.
- Combine per algorithm, spec/moe.md "Numerics".
"""

from __future__ import annotations

import numpy as np
import reference_np as R

F32 = np.float32


def _sum_f32(values):
    """Float32 sum in list order, the first operand taken as is; None for no operand."""
    total = None
    for v in values:
        total = v if total is None else R.f32_add(total, v)
    return total


def _wire(v_f32, fmt):
    """What the receiver gets: f32 value of ``v`` after quantize -> dequantize in fmt."""
    codes, scales = R.quantize(v_f32, fmt)
    return R.dequantize_f32(codes, scales, fmt)


def ep_moe(
    xs,
    experts,
    gates,
    expert_fn,
    *,
    n_experts,
    algorithm,
    dispatch_format="bf16",
    combine_format="bf16",
    capacity=None,
    placement=None,
):
    xs = np.asarray(xs)
    d = xs.dtype
    n, t_per, k = np.asarray(experts).shape
    if placement is None:
        placement = np.arange(n_experts) // (n_experts // n)
    # --- dispatch: quantize once at the source, dequantize to d everywhere
    codes, scales = R.quantize(xs, dispatch_format)
    xin = R.cast(R.dequantize_f32(codes, scales, dispatch_format), R.dtype_name(d))
    # --- capacity: arrival order (source rank, token) per expert
    count = [0] * n_experts
    kept = np.zeros((n, t_per, k), bool)
    for s in range(n):
        for t in range(t_per):
            for j in range(k):
                e = int(experts[s, t, j])
                kept[s, t, j] = capacity is None or count[e] < capacity
                count[e] += 1
    out = np.zeros_like(xs)
    for s in range(n):
        for t in range(t_per):
            # weighted outputs per kept pair, in expert-index order
            pairs = []
            for j in np.argsort(experts[s, t], kind="stable"):
                if not kept[s, t, j]:
                    continue
                e = int(experts[s, t, j])
                y = np.asarray(expert_fn(e, xin[s, t][None]))[0]
                w = R.cast(R.f32_mul(R.to_f32(y), R.ftz(F32(gates[s, t, j]))), R.dtype_name(d))
                pairs.append((e, int(placement[e]), R.to_f32(w)))
            if not pairs:
                continue  # +0
            partial = {}
            for r in range(n):
                mine = [w for _, rr, w in pairs if rr == r]
                if mine:
                    partial[r] = _sum_f32(mine)
            if algorithm == "all_to_all":
                terms = [w if r == s else _wire(w, combine_format) for _, r, w in pairs]
                total = _sum_f32(terms)
            elif algorithm == "dedup":
                terms = [
                    p if r == s else _wire(p, combine_format) for r, p in sorted(partial.items())
                ]
                total = _sum_f32(terms)
            elif algorithm == "dysharp":
                remote = [_wire(p, combine_format) for r, p in sorted(partial.items()) if r != s]
                switch = _sum_f32(remote)
                if switch is not None:
                    switch = _wire(switch, combine_format)
                parts = [v for v in (partial.get(s), switch) if v is not None]
                total = _sum_f32(parts)
            else:
                raise ValueError(algorithm)
            out[s, t] = R.cast(total, R.dtype_name(d))
    return out, kept


def dispatched_inputs(xs, dispatch_format):
    """The d-valued expert input of every token: ``[N, T, H]``."""
    codes, scales = R.quantize(np.asarray(xs), dispatch_format)
    return R.cast(R.dequantize_f32(codes, scales, dispatch_format), R.dtype_name(xs.dtype))
