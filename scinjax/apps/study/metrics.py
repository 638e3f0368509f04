"""Accuracy metrics of the study: pure NumPy functions of logits and token ids.

All functions take logits ``[T, V]`` (any float dtype; computed in float64) and
return Python floats/ints, so they are easy to test against hand-computed values.
Natural logarithms throughout (KL in nats, perplexity = exp(mean NLL)).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np

__all__ = [
    "log_softmax",
    "token_nll",
    "perplexity",
    "perplexity_from_sum",
    "token_kl",
    "top1_agreement",
    "max_abs_diff",
    "tokens_until_divergence",
    "compare_logits",
]


def log_softmax(logits: np.ndarray) -> np.ndarray:
    """``log softmax`` over the last axis, float64, stable for large logits."""
    z = np.asarray(logits, dtype=np.float64)
    z = z - z.max(axis=-1, keepdims=True)
    return z - np.log(np.exp(z).sum(axis=-1, keepdims=True))


def token_nll(logits: np.ndarray, targets: Sequence[int]) -> np.ndarray:
    """Negative log-likelihood of ``targets[t]`` under ``logits[t]``: ``[T]`` float64."""
    lp = log_softmax(logits)
    t = np.asarray(targets, dtype=np.int64)
    if lp.shape[:-1] != t.shape:
        raise ValueError(f"logits {lp.shape} and targets {t.shape} disagree on the token axis")
    return -np.take_along_axis(lp, t[..., None], axis=-1)[..., 0]


def perplexity(nll: np.ndarray) -> float:
    """``exp(mean(nll))`` of per-token NLLs (all windows pooled)."""
    return float(np.exp(np.mean(np.asarray(nll, dtype=np.float64))))


def perplexity_from_sum(nll_sum: float, tokens: int) -> float:
    """``exp(nll_sum / tokens)``: perplexity from a running NLL sum."""
    if tokens <= 0:
        raise ValueError(f"perplexity of {tokens} tokens is undefined")
    return float(math.exp(nll_sum / tokens))


def token_kl(ref_logits: np.ndarray, logits: np.ndarray, *, ref_logp=None) -> np.ndarray:
    """``KL(ref || other)`` per token, ``[T]`` float64 nats: ``sum_v p_ref (log p_ref - log p)``.

    ``ref_logp``: ``log_softmax(ref_logits)`` if already computed (saves a pass).
    """
    lp_ref = log_softmax(ref_logits) if ref_logp is None else ref_logp
    lp = log_softmax(logits)
    kl = np.sum(np.exp(lp_ref) * (lp_ref - lp), axis=-1)
    return np.maximum(kl, 0.0)  # rounding can leave -1e-17 for identical rows


def top1_agreement(ref_logits: np.ndarray, logits: np.ndarray) -> float:
    """Fraction of tokens whose argmax agrees (ties resolved to the lowest id in both)."""
    a = np.argmax(np.asarray(ref_logits), axis=-1)
    b = np.argmax(np.asarray(logits), axis=-1)
    return float(np.mean(a == b))


def max_abs_diff(ref_logits: np.ndarray, logits: np.ndarray) -> float:
    """``max |ref - other|`` over all tokens and vocabulary entries."""
    d = np.abs(np.asarray(ref_logits, np.float64) - np.asarray(logits, np.float64))
    return float(d.max()) if d.size else 0.0


def tokens_until_divergence(ref: Sequence[int], other: Sequence[int]) -> int:
    """Length of the common prefix of two generated sequences."""
    n = 0
    for a, b in zip(ref, other, strict=False):
        if int(a) != int(b):
            break
        n += 1
    return n


def compare_logits(
    ref_logits: np.ndarray, logits: np.ndarray, targets: Sequence[int], *, ref_logp=None
) -> dict:
    """All logit metrics of one window ``[T, V]``: sums of NLL and KL over its T tokens,
    max KL, count of top-1 agreements, max |dlogit| (``ref_logp`` as in :func:`token_kl`)."""
    lp = log_softmax(logits)
    t = np.asarray(targets, dtype=np.int64)
    if lp.shape[:-1] != t.shape:
        raise ValueError(f"logits {lp.shape} and targets {t.shape} disagree on the token axis")
    nll = -np.take_along_axis(lp, t[..., None], axis=-1)[..., 0]
    lp_ref = log_softmax(ref_logits) if ref_logp is None else ref_logp
    kl = np.maximum(np.sum(np.exp(lp_ref) * (lp_ref - lp), axis=-1), 0.0)
    return {
        "tokens": int(nll.shape[0]),
        "nll_sum": float(nll.sum()),
        "kl_sum": float(kl.sum()),
        "kl_max": float(kl.max()) if kl.size else 0.0,
        "top1_agree": int(np.sum(np.argmax(ref_logits, axis=-1) == np.argmax(logits, axis=-1))),
        "max_abs_dlogit": max_abs_diff(ref_logits, logits),
    }
