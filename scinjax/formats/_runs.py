"""Quantize-dequantize where each owner's run of blocks is its own array (nv's tensor scale).

In quantized two_shot every owner quantizes only its run of the reduced buffer, so nv's
tensor scale ``G`` is the max over that run (docs/semantics.md). For every other format
blocks are independent and this equals ``dequantize(quantize(x))``.
"""

from __future__ import annotations

import jax.numpy as jnp
import numpy as np
from jax import lax

from scinjax.formats._f32 import to_f32
from scinjax.formats._fp import ELEMENTS, _tensor_scale, fp_dequantize, fp_quantize
from scinjax.formats._quant import _from_blocks, _to_blocks, dequantize, quantize
from scinjax.formats._spec import FpFormat, get

__all__ = ["roundtrip_runs"]


def roundtrip_runs(x, fmt, run_blocks, *, noise=None, dtype=None):
    """``x`` ``[..., H]`` quantized run by run and dequantized to ``dtype`` (default x's).

    ``run_blocks``: the number of blocks in each run; the blocks of all rows (row-major,
    blocks tiling the last axis) are cut into consecutive runs of these sizes.
    ``noise``: float32 ``[..., H]`` in [0, 1) for stochastic rounding.
    """
    fmt = get(fmt)
    dtype = x.dtype if dtype is None else dtype
    if not (isinstance(fmt, FpFormat) and fmt.scale == "nv"):
        return dequantize(quantize(x, fmt, noise=noise), dtype)
    run_blocks = [int(k) for k in run_blocks]
    h, block = x.shape[-1], fmt.block_size
    vb = _to_blocks(to_f32(x), block)  # [..., nb, B]
    lead = vb.shape[:-1]
    total = int(np.prod(lead))
    if sum(run_blocks) != total:
        raise ValueError(f"run_blocks {run_blocks} must sum to the {total} blocks of {x.shape}")
    flat = vb.reshape(total, block)  # [K blocks, B]
    magnitude = lax.bitcast_convert_type(flat, jnp.uint32) & jnp.uint32(0x7FFFFFFF)
    amax_bits = jnp.max(magnitude, axis=-1)
    poisoned = amax_bits >= jnp.uint32(0x7F800000)
    a = jnp.where(poisoned, 0.0, lax.bitcast_convert_type(amax_bits, jnp.float32))
    el = ELEMENTS[fmt.element]
    t_enc, t_dec, start = [], [], 0
    for count in run_blocks:
        if count:
            te, td = _tensor_scale(a[start : start + count], el)
            t_enc.append(jnp.broadcast_to(te, (count,)))
            t_dec.append(jnp.broadcast_to(td, (count,)))
        start += count
    t_enc, t_dec = jnp.concatenate(t_enc), jnp.concatenate(t_dec)  # [K]
    ub = None if noise is None else _to_blocks(noise, block).reshape(total, block)
    codes, stored, _ = fp_quantize(flat, a, poisoned, fmt, ub, t_scale=(t_enc, t_dec))
    y = fp_dequantize(codes, stored, fmt, t_dec[:, None])  # [K, B]
    return _from_blocks(y.reshape(vb.shape), h).astype(dtype)
