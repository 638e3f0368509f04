"""Per-call-site attribution: exact attributes nothing, stages and bounds hold."""

from __future__ import annotations

import math

import numpy as np
import pytest
from scinjax.models import build_model, get_config, random_weights

from scinjax.apps.study import attribute, exact_sites, plot_attribution


@pytest.fixture(scope="module")
def setup():
    config = get_config("tiny")
    model = build_model(config, random_weights(config, seed=5), tp=4, collective="scin")
    ids = np.random.default_rng(1).integers(0, config.vocab_size, (2, 16))
    return config, model, ids, exact_sites(model, ids)


def test_exact_attributes_zero_everywhere(setup):
    config, model, ids, exact = setup
    rows = attribute(model.with_collective("exact"), ids, exact=exact)
    assert [(r["layer"], r["label"]) for r in rows] == [
        (layer, label) for layer in range(config.num_layers) for label in ("attn_out", "mlp_out")
    ]
    for r in rows:
        assert r["rel_err"] == 0 and r["rel_err_accumulated"] == 0 and r["snr_db"] == math.inf
        assert r["rel_err_up"] == 0 and r["rel_err_down"] == 0


def test_bf16_wire_error_is_one_rounding(setup):
    """scin with bf16 partials: the uplink carries the partials themselves (no uplink error),
    the switch rounds the float32 sum to bf16 once: every element's relative error is at
    most 2**-9 (RNE to 8 significant bits), so the relative RMS error is too."""
    _, model, ids, exact = setup
    for r in attribute(model, ids, exact=exact):
        assert r["rel_err_up"] == 0
        assert r["rel_err_down"] == r["rel_err"]
        assert 0 < r["rel_err"] <= 2.0**-9
        assert r["snr_db"] == pytest.approx(-20 * math.log10(r["rel_err"]))
        assert r["rel_err_accumulated"] > 0


def test_int8_stages_and_policy_sites(setup, tmp_path):
    _, model, ids, exact = setup
    rows = attribute(model.with_collective("scin:int8"), ids, exact=exact)
    for r in rows:
        assert r["rel_err_up"] > 0 and r["rel_err_down"] > 0
        # the two stages' errors add in quadrature at most up to their sum
        assert r["rel_err"] <= r["rel_err_up"] + r["rel_err_down"] + 1e-7
    first = rows[0]  # nothing inherited at the first call: added error dominates
    assert first["rel_err"] > 0.5 * first["rel_err_accumulated"]
    mixed = attribute(model.with_collective("scin:int8@mlp_out"), ids, exact=exact)
    for r in mixed:
        assert (r["collective"] == "scin:int8") == (r["label"] == "mlp_out")
        assert (r["rel_err"] > 0) == (r["label"] == "mlp_out")
    ring = attribute(model.with_collective("ring"), ids, exact=exact)
    assert all(math.isnan(r["rel_err_up"]) and r["rel_err"] > 0 for r in ring)
    png = plot_attribution({"scin:int8": rows, "ring": ring}, tmp_path / "a.png")
    assert open(png, "rb").read(8) == b"\x89PNG\r\n\x1a\n"


def test_attribution_refuses_what_it_cannot_probe(setup):
    config, model, ids, _ = setup
    with pytest.raises(ValueError, match="tp >= 2"):
        attribute(build_model(config, random_weights(config), tp=1), ids)
    with pytest.raises(ValueError, match=r"\[B, T\]"):
        attribute(model, ids[0])
