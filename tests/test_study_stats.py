"""The study's statistics against closed forms and synthetic data with a known answer."""

from __future__ import annotations

import math

import numpy as np
import pytest

from scinjax.apps.study import VariantStats, batch_means_se
from scinjax.apps.study.metrics import log_softmax

LN3 = math.log(3.0)


def test_batch_means_se_closed_form():
    # counts [2, 2, 4], sums [1, 3, 10]: mean 14/8 = 1.75; residuals S_w - m n_w =
    # [-2.5, -0.5, 3]; SE^2 = W/(W-1) * sum(r^2) / N^2 = 3/2 * 15.5 / 64.
    assert batch_means_se([1, 3, 10], [2, 2, 4]) == pytest.approx(math.sqrt(1.5 * 15.5 / 64))
    # equal windows: the standard error of the mean of the window means
    means = np.array([0.2, 0.5, 0.1, 0.9])
    want = np.std(means, ddof=1) / math.sqrt(4)
    assert batch_means_se(means * 7, [7] * 4) == pytest.approx(want)
    assert math.isnan(batch_means_se([1.0], [3]))  # one window: undefined
    assert batch_means_se([2.0, 2.0], [2, 2]) == 0.0
    with pytest.raises(ValueError, match="equal 1-D shapes"):
        batch_means_se([1.0, 2.0], [1])


def _ar1_windows(rng, windows: int, n: int, phi: float) -> np.ndarray:
    """[windows, n] stationary AR(1) rows (variance 1), independent across rows."""
    x = np.empty((windows, n))
    x[:, 0] = rng.standard_normal(windows)
    noise = rng.standard_normal((windows, n)) * math.sqrt(1 - phi * phi)
    for t in range(1, n):
        x[:, t] = phi * x[:, t - 1] + noise[:, t]
    return x


def test_batch_means_se_on_correlated_tokens_matches_the_true_error():
    # Tokens correlated within a window (AR(1), phi = 0.8), windows independent. The
    # variance of the overall mean is known in closed form:
    #   Var = sum_{i,j} phi^|i-j| / (W n^2).
    # The batch-means SE^2 must be unbiased for it; the i.i.d. formula (what one gets by
    # ignoring the windows) underestimates it about (1 + phi) / (1 - phi) = 9 times.
    rng = np.random.default_rng(0)
    windows, n, phi, reps = 20, 50, 0.8, 400
    i = np.arange(n)
    true_var = np.sum(phi ** np.abs(i[:, None] - i[None, :])) / (windows * n * n)
    se2, naive2 = [], []
    for _ in range(reps):
        x = _ar1_windows(rng, windows, n, phi)
        se2.append(batch_means_se(x.sum(axis=1), [n] * windows) ** 2)
        naive2.append(np.var(x, ddof=1) / x.size)
    assert np.mean(se2) / true_var == pytest.approx(1.0, abs=0.06)  # ~1.6% sampling error
    assert np.mean(naive2) / true_var < 0.2
    # and the SE tracks the spread of the estimator itself across replications
    means = [_ar1_windows(rng, windows, n, phi).mean() for _ in range(reps)]
    assert np.var(means) / true_var == pytest.approx(1.0, abs=0.2)


def test_variant_stats_closed_form():
    # vocabulary of 2: reference p = [1/4, 3/4] (logits [0, ln 3]); variant q = [1/2, 1/2].
    ref = np.array([[0.0, LN3]] * 3)
    var = np.zeros((3, 2))
    st = VariantStats()
    st.add_window(ref[:2], log_softmax(ref[:2]), var[:2], [1, 1])
    st.add_window(ref[2:], log_softmax(ref[2:]), var[2:], [0])
    out = st.summary()
    kl = 0.25 * math.log(0.25 / 0.5) + 0.75 * math.log(0.75 / 0.5)
    nll_ref = [math.log(4 / 3), math.log(4 / 3), math.log(4)]
    nll = [math.log(2)] * 3
    d = [a - b for a, b in zip(nll, nll_ref, strict=True)]
    assert out["tokens"] == 3 and out["windows"] == 2
    assert out["kl_mean"] == pytest.approx(kl) and out["kl_max"] == pytest.approx(kl)
    assert out["kl_mean_se"] == pytest.approx(0.0, abs=1e-15)  # every token has the same KL
    assert out["ln_ppl_ratio"] == pytest.approx(sum(d) / 3)
    assert out["ppl_ratio"] == pytest.approx(math.exp(sum(d) / 3))
    assert out["ppl"] == pytest.approx(2.0)
    # windows: dNLL sums [2 d0, d2] with counts [2, 1]
    se = batch_means_se([d[0] + d[1], d[2]], [2, 1])
    assert out["ln_ppl_ratio_se"] == pytest.approx(se)
    assert out["ppl_ratio_se"] == pytest.approx(math.exp(sum(d) / 3) * se)
    # reference argmax = 1, variant's argmax of a tie = 0: never the same top-1
    assert out["top1"] == 0.0
    # dp = q(1) - p(1) = 0.5 - 0.75 on every token
    assert out["rms_dp"] == pytest.approx(0.25)
    assert out["max_dlogit"] == pytest.approx(LN3)
    for key in ("kl_p999", "kl_p50", "kl_p001"):
        assert out[key] == pytest.approx(kl, rel=1e-6)  # float32 storage of per-token KL


def test_variant_stats_percentiles_and_identity():
    rng = np.random.default_rng(1)
    ref = rng.standard_normal((40, 11)) * 3
    st = VariantStats()
    for w in range(4):  # the same logits shifted by a constant: the same distribution
        rows = slice(10 * w, 10 * w + 10)
        st.add_window(ref[rows], log_softmax(ref[rows]), ref[rows] + 5.0, np.arange(10) % 11)
    out = st.summary()
    assert out["kl_mean"] == pytest.approx(0.0, abs=1e-12) and out["top1"] == 1.0
    assert out["ppl_ratio"] == pytest.approx(1.0, abs=1e-12) and out["rms_dp"] < 1e-12
    # percentiles follow numpy's linear rule on the stored per-token values
    st2 = VariantStats()
    var = ref + rng.standard_normal(ref.shape)
    st2.add_window(ref, log_softmax(ref), var, np.zeros(40, int))
    kl = st2.kl_values().astype(np.float64)
    out2 = st2.summary()
    assert kl.shape == (40,)
    assert out2["kl_p90"] == pytest.approx(np.percentile(kl, 90))
    assert out2["kl_p001"] == pytest.approx(np.percentile(kl, 0.1))
    assert out2["kl_max"] == pytest.approx(kl.max(), rel=1e-6)
    assert math.isnan(out2["kl_mean_se"])  # one window
