"""Canonical weights: the contract between the loaders and the model.

A model's weights are a flat ``dict[str, np.ndarray]`` of float32 arrays with
these keys (D hidden, F intermediate, V vocab, Hq/Hkv query/key-value heads,
hd head width, L layers; the convention is ``y = x @ W``):

=========================  ===============  ==================================
key                        shape            meaning
=========================  ===============  ==================================
``embed``                  [V, D]           token embedding table
``layers.{i}.attn_norm``   [D]              RMSNorm weight before attention
``layers.{i}.wq``          [D, Hq*hd]       query projection
``layers.{i}.wk``          [D, Hkv*hd]      key projection
``layers.{i}.wv``          [D, Hkv*hd]      value projection
``layers.{i}.wo``          [Hq*hd, D]       attention output projection
``layers.{i}.mlp_norm``    [D]              RMSNorm weight before the MLP
``layers.{i}.w_gate``      [D, F]           SwiGLU gate projection
``layers.{i}.w_up``        [D, F]           SwiGLU up projection
``layers.{i}.w_down``      [F, D]           SwiGLU down projection
``final_norm``             [D]              RMSNorm weight before the head
``lm_head``                [D, V]           output head; absent when tied
``layers.{i}.bq``          [Hq*hd]          query bias (``qkv_bias`` only)
``layers.{i}.bk``          [Hkv*hd]         key bias (``qkv_bias`` only)
``layers.{i}.bv``          [Hkv*hd]         value bias (``qkv_bias`` only)
=========================  ===============  ==================================

for ``i`` in ``0 .. L-1``. With ``config.moe`` the keys ``router``, ``experts_gate``,
``experts_up``, ``experts_down`` (and ``shared_*``) of `models.moe_spec` replace
``w_gate``/``w_up``/``w_down``. Head ``h`` occupies columns ``h*hd .. (h+1)*hd`` of
``wq`` (and of ``wk``/``wv`` for key-value heads); query head ``h`` attends
with key-value head ``h // (Hq // Hkv)``. Rotary embeddings use the Hugging
Face "rotate_half" layout: within a head, dimension ``j < hd/2`` pairs with
``j + hd/2`` (loaders undo llama.cpp's interleaved Q/K permutation).
"""

from __future__ import annotations

from collections.abc import Mapping

import jax
import numpy as np

from .config import LlamaConfig
from .moe_spec import moe_keys, moe_shapes

__all__ = [
    "LAYER_KEYS",
    "BIAS_KEYS",
    "layer_keys",
    "weight_shapes",
    "validate_weights",
    "random_weights",
    "abstract_weights",
    "release_memory",
    "LazyArray",
    "materialize",
]

LAYER_KEYS = (
    "attn_norm",
    "wq",
    "wk",
    "wv",
    "wo",
    "mlp_norm",
    "w_gate",
    "w_up",
    "w_down",
)

#: Per-layer keys added by ``LlamaConfig.qkv_bias`` (Qwen2).
BIAS_KEYS = ("bq", "bk", "bv")


def layer_keys(config: LlamaConfig) -> tuple[str, ...]:
    """Per-layer canonical keys of `config`: LAYER_KEYS, then BIAS_KEYS with qkv_bias.

    With ``config.moe`` the MoE keys (`models.moe_spec`) replace w_gate/w_up/w_down."""
    keys = LAYER_KEYS + (BIAS_KEYS if config.qkv_bias else ())
    if config.moe is not None:
        keys = tuple(k for k in keys if k not in ("w_gate", "w_up", "w_down"))
        keys += moe_keys(config.moe)
    return keys


def _layer_shapes(config: LlamaConfig) -> dict[str, tuple[int, ...]]:
    d, f = config.hidden_size, config.intermediate_size
    return {
        "attn_norm": (d,),
        "wq": (d, config.q_dim),
        "wk": (d, config.kv_dim),
        "wv": (d, config.kv_dim),
        "wo": (config.q_dim, d),
        "mlp_norm": (d,),
        "w_gate": (d, f),
        "w_up": (d, f),
        "w_down": (f, d),
        "bq": (config.q_dim,),
        "bk": (config.kv_dim,),
        "bv": (config.kv_dim,),
    } | ({} if config.moe is None else moe_shapes(config.moe, d))


def weight_shapes(config: LlamaConfig) -> dict[str, tuple[int, ...]]:
    """Every canonical key of `config` and its shape, in a fixed order."""
    shapes: dict[str, tuple[int, ...]] = {"embed": (config.vocab_size, config.hidden_size)}
    layer = _layer_shapes(config)
    for i in range(config.num_layers):
        for key in layer_keys(config):
            shapes[f"layers.{i}.{key}"] = layer[key]
    shapes["final_norm"] = (config.hidden_size,)
    if not config.tie_embeddings:
        shapes["lm_head"] = (config.hidden_size, config.vocab_size)
    return shapes


def validate_weights(config: LlamaConfig, weights: Mapping[str, np.ndarray]) -> None:
    """Raise ValueError unless `weights` has exactly the keys and shapes of `config`.

    Missing keys, unexpected keys and wrong shapes are all listed (up to a few
    of each) in one message. Dtypes are not checked here: the model converts.
    """
    expected = weight_shapes(config)
    missing = [k for k in expected if k not in weights]
    extra = sorted(k for k in weights if k not in expected)
    wrong = [
        f"{k}: {tuple(np.shape(weights[k]))} (expected {shape})"
        for k, shape in expected.items()
        if k in weights and tuple(np.shape(weights[k])) != shape
    ]
    problems = []
    for what, items in (("missing", missing), ("unexpected", extra), ("wrong shape", wrong)):
        if items:
            shown = ", ".join(items[:5]) + (
                f", ... ({len(items)} in all)" if len(items) > 5 else ""
            )
            problems.append(f"{what}: {shown}")
    if problems:
        name = config.name or "the config"
        hint = ""
        if "lm_head" in extra and config.tie_embeddings:
            hint = " (the config ties the head to the embedding; drop lm_head or untie)"
        elif "lm_head" in missing:
            hint = " (an untied config needs lm_head; set tie_embeddings=True if it is tied)"
        raise ValueError(f"weights do not match {name}: " + "; ".join(problems) + hint)


def random_weights(config: LlamaConfig, seed: int = 0) -> dict[str, np.ndarray]:
    """Random float32 canonical weights for `config` (deterministic in `seed`).

    Projections are N(0, 1/fan_in) so activations stay O(1) through depth;
    norm weights are 1 + N(0, 0.1^2); Q/K/V biases N(0, 0.1^2); the embedding is N(0, 1).
    """
    rng = np.random.default_rng(seed)
    out: dict[str, np.ndarray] = {}
    for key, shape in weight_shapes(config).items():
        if key.rsplit(".", 1)[-1] in BIAS_KEYS:
            w = 0.1 * rng.standard_normal(shape, dtype=np.float32)
        elif len(shape) == 1:
            w = 1.0 + 0.1 * rng.standard_normal(shape, dtype=np.float32)
        elif key == "embed":
            w = rng.standard_normal(shape, dtype=np.float32)
        else:
            # fan-in is the second-to-last axis (experts [E, D, I] stack E matrices)
            w = rng.standard_normal(shape, dtype=np.float32) / np.float32(np.sqrt(shape[-2]))
        out[key] = w.astype(np.float32)
    return out


class LazyArray:
    """A weight read from its file when used: ``.shape``/``.dtype`` are known up front,
    ``np.asarray(x)`` reads (and converts) it, every time it is called.

    Loaders hand these to `TPPlan.params`, which pulls one tensor at a time into
    the stacked params, so no full copy of the model exists besides the params.
    """

    __slots__ = ("shape", "dtype", "_read")

    def __init__(self, shape, dtype, read) -> None:
        """`read(out)` returns the array, written into `out` ([shape], dtype) when not None."""
        self.shape = tuple(int(d) for d in shape)
        self.dtype = np.dtype(dtype)
        self._read = read

    @property
    def ndim(self) -> int:
        return len(self.shape)

    def read(self, out: np.ndarray | None = None) -> np.ndarray:
        """The array, written into `out` when given (no second copy of a large tensor)."""
        if out is not None and (out.shape != self.shape or out.dtype != self.dtype):
            raise ValueError(f"out {out.shape} {out.dtype} does not match {self!r}")
        return self._read(out)

    def __array__(self, dtype=None, copy=None):
        a = self._read(None)
        return a if dtype is None else a.astype(dtype, copy=False)

    def __repr__(self) -> str:
        return f"LazyArray(shape={self.shape}, dtype={self.dtype.name})"


def materialize(weights: dict) -> dict[str, np.ndarray]:
    """`weights` with every `LazyArray` read into a NumPy array, one at a time."""
    return {k: np.asarray(v) for k, v in weights.items()}


def release_memory() -> None:
    """Give freed heap pages back to the OS (glibc ``malloc_trim``; a no-op elsewhere).

    Loading frees many tensor-sized NumPy buffers while device buffers are being
    allocated; glibc keeps freed heap chunks mapped, so without this the resident
    set keeps the freed copies and the peak looks like two models.
    """
    global _TRIM
    if _TRIM is None:
        try:
            import ctypes

            _TRIM = ctypes.CDLL("libc.so.6").malloc_trim
        except (OSError, AttributeError):
            _TRIM = False
    if _TRIM:
        _TRIM(0)


_TRIM = None


def abstract_weights(config: LlamaConfig, dtype=np.float32) -> dict[str, jax.ShapeDtypeStruct]:
    """`jax.ShapeDtypeStruct` stand-ins for every canonical weight (nothing allocated)."""
    return {k: jax.ShapeDtypeStruct(s, np.dtype(dtype)) for k, s in weight_shapes(config).items()}
