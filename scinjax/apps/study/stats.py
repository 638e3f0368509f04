"""Streaming statistics of a variant against the reference, with standard errors.

Every statistic is a mean over scored tokens. Tokens of one window share their
context, so they are correlated; treating them as independent understates the
error. The standard error therefore uses **per-window batch means**: with
``S_w`` the sum of a per-token quantity over window ``w`` (``n_w`` tokens), ``W``
windows, ``N = sum n_w`` and ``m = sum S_w / N``,

    SE(m)^2 = W / (W - 1) * sum_w (S_w - m n_w)^2 / N^2,

the ratio (cluster-robust) estimator; with equal ``n_w`` it is the standard
error of the mean of the W window means. Windows are taken as independent of
each other (non-overlapping text). It needs W >= 2 (NaN otherwise).

Paired quantities (the per-token difference of NLLs, KL, top-1 agreement) are
computed per token first, so the error of a difference comes from the paired
differences, not from two independent errors. ``ppl_ratio = exp(mean dNLL)`` and
its error by the delta method, ``exp(m) * SE(m)``; likewise ``ppl``.

Memory: per window a handful of float64 sums, per token one float32 KL value
(for the percentiles), so a corpus of a million tokens costs ~4 MB per variant.
"""

from __future__ import annotations

import math

import numpy as np

from . import metrics

__all__ = [
    "PERCENTILES",
    "batch_means_se",
    "WindowSums",
    "VariantStats",
]

# JSON key suffix -> percentile of the per-token KL distribution (numpy's linear rule).
PERCENTILES = {
    "p999": 99.9,
    "p99": 99.0,
    "p95": 95.0,
    "p90": 90.0,
    "p50": 50.0,
    "p10": 10.0,
    "p05": 5.0,
    "p01": 1.0,
    "p001": 0.1,
}


def batch_means_se(sums, counts) -> float:
    """Standard error of ``sum(sums) / sum(counts)`` from per-window sums (see module doc)."""
    s = np.asarray(sums, dtype=np.float64)
    n = np.asarray(counts, dtype=np.float64)
    if s.shape != n.shape or s.ndim != 1:
        raise ValueError(f"sums {s.shape} and counts {n.shape} must be equal 1-D shapes")
    w = s.shape[0]
    total = n.sum()
    if w < 2 or total <= 0:
        return float("nan")
    mean = s.sum() / total
    return float(math.sqrt(w / (w - 1) * np.sum((s - mean * n) ** 2)) / total)


class WindowSums:
    """Per-window sums of named per-token quantities (appended one window at a time)."""

    def __init__(self, names):
        self.names = tuple(names)
        self.counts: list[int] = []
        self._sums: dict[str, list[float]] = {k: [] for k in self.names}

    def add(self, count: int, **sums: float) -> None:
        if set(sums) != set(self.names):
            raise ValueError(f"expected sums of {self.names}, got {sorted(sums)}")
        self.counts.append(int(count))
        for k, v in sums.items():
            self._sums[k].append(float(v))

    @property
    def tokens(self) -> int:
        return int(sum(self.counts))

    @property
    def windows(self) -> int:
        return len(self.counts)

    def mean(self, name: str) -> float:
        return float(np.sum(self._sums[name]) / self.tokens) if self.tokens else float("nan")

    def se(self, name: str) -> float:
        return batch_means_se(self._sums[name], self.counts)


class VariantStats:
    """Everything the study reports for one variant, accumulated window by window."""

    def __init__(self):
        self.sums = WindowSums(("nll", "nll_ref", "dnll", "kl", "top1", "dp2"))
        self._kl: list[np.ndarray] = []  # float32 per token
        self.kl_max = 0.0
        self.max_dlogit = 0.0

    def add_window(self, ref_logits, ref_logp, logits, targets) -> None:
        """One window's scored positions: the reference's logits ``[S, V]`` and their
        ``log_softmax`` (float64), the variant's ``logits`` ``[S, V]``, ``targets`` ``[S]``."""
        lp = metrics.log_softmax(logits)
        t = np.asarray(targets, dtype=np.int64)
        if lp.shape != ref_logp.shape or lp.shape[:-1] != t.shape:
            raise ValueError(f"logits {lp.shape}, reference {ref_logp.shape}, targets {t.shape}")
        nll = -np.take_along_axis(lp, t[:, None], axis=-1)[:, 0]
        nll_ref = -np.take_along_axis(ref_logp, t[:, None], axis=-1)[:, 0]
        p_ref = np.exp(ref_logp)
        kl = np.maximum(np.sum(p_ref * (ref_logp - lp), axis=-1), 0.0)
        top_ref = np.argmax(ref_logp, axis=-1)
        agree = top_ref == np.argmax(lp, axis=-1)
        p_top_ref = np.take_along_axis(p_ref, top_ref[:, None], axis=-1)[:, 0]
        p_top = np.exp(np.take_along_axis(lp, top_ref[:, None], axis=-1)[:, 0])
        dp = p_top - p_top_ref
        self.sums.add(
            t.shape[0],
            nll=nll.sum(),
            nll_ref=nll_ref.sum(),
            dnll=(nll - nll_ref).sum(),
            kl=kl.sum(),
            top1=agree.sum(),
            dp2=(dp * dp).sum(),
        )
        self._kl.append(kl.astype(np.float32))
        if kl.size:
            self.kl_max = max(self.kl_max, float(kl.max()))
            self.max_dlogit = max(self.max_dlogit, metrics.max_abs_diff(ref_logits, logits))

    def kl_values(self) -> np.ndarray:
        """Per-token KL, float32 ``[tokens]`` in scoring order."""
        return np.concatenate(self._kl) if self._kl else np.zeros(0, np.float32)

    def summary(self) -> dict:
        """The stable JSON keys of one study row (natural logs, KL in nats)."""
        s = self.sums
        mean_nll, mean_d = s.mean("nll"), s.mean("dnll")
        ppl = math.exp(mean_nll)
        ratio = math.exp(mean_d)
        kl = self.kl_values().astype(np.float64)
        out = {
            "tokens": s.tokens,
            "windows": s.windows,
            "ppl": ppl,
            "ppl_se": ppl * s.se("nll"),
            "ppl_ratio": ratio,
            "ppl_ratio_se": ratio * s.se("dnll"),
            "ln_ppl_ratio": mean_d,
            "ln_ppl_ratio_se": s.se("dnll"),
            "kl_mean": s.mean("kl"),
            "kl_mean_se": s.se("kl"),
            "kl_max": self.kl_max,
        }
        for key, q in PERCENTILES.items():
            out[f"kl_{key}"] = float(np.percentile(kl, q)) if kl.size else float("nan")
        out.update(
            top1=s.mean("top1"),
            top1_se=s.se("top1"),
            rms_dp=math.sqrt(s.mean("dp2")),
            max_dlogit=self.max_dlogit,
        )
        return out
