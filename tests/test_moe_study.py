"""moe-study: metrics vs formulas written here; the tiny MoE LM's loss falls."""

from __future__ import annotations

import math

import numpy as np
import pytest
from scinjax.models.moe_lm import MoELMConfig

from scinjax.apps import moe_study


@pytest.fixture(scope="module")
def result():
    cfg = MoELMConfig(hidden=32, layers=1, heads=2, intermediate=32)
    return moe_study.run_study(
        variants=("dedup:fp32/fp32", "dysharp:bf16/int4"),
        steps=8,
        ranks=2,
        batch=2,
        seq=32,
        windows=8,
        cfg=cfg,
        show_progress=False,
    )


def test_reference_against_itself_is_exact(result):
    same = result["variants"][0]
    assert same["kl"] == 0.0 and same["top1"] == 1.0 and same["dnll"] == 0.0


def test_quantized_variant_differs_and_errors_are_finite(result):
    q = result["variants"][1]
    assert q["kl"] > 0 and 0 < q["top1"] <= 1
    assert all(math.isfinite(q[k]) and q[k] >= 0 for k in ("kl_se", "top1_se", "dnll_se"))


def test_training_lowers_the_loss(result):
    # byte vocabulary: an untrained model is near log(256) = 5.55 nats
    assert result["train"]["last_loss"] < result["train"]["first_loss"]


def test_batch_means_se_formula():
    from scinjax.apps.study.stats import batch_means_se

    sums = np.array([1.0, 3.0, 2.0, 6.0])
    counts = np.array([4, 4, 4, 4])
    means = sums / counts  # equal counts: the SE of the mean of the window means
    assert batch_means_se(sums, counts) == pytest.approx(means.std(ddof=1) / 2)


def test_bad_variant():
    with pytest.raises(ValueError, match="ALGO:DISPATCH/COMBINE"):
        moe_study.parse_variant("dysharp", 8)
