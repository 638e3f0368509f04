"""``scinjax train``: exact DP x TP training equals single-device training; the DP
gradient All-Reduce with INQ and error feedback against the NumPy reference; the
ledger's bytes per step against closed forms; no retracing of the jitted step."""

from __future__ import annotations

import dataclasses
import json
import math

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest
import reference_np as R
from reference_np import assert_bits

from scinjax.apps.train import TrainConfig, Trainer, synthetic_batches, train
from scinjax.cli import main as cli_main

TINY = dict(steps=4, batch=4, seq_len=8)


def _n_params(trainer) -> list[tuple[int, ...]]:
    return [tuple(p.shape) for p in jax.tree.leaves(trainer.params)]


def test_exact_data_parallel_matches_single_device():
    single = train(TrainConfig(**TINY))["losses"]
    assert single[-1] < single[0]  # it trains
    for dp, tp in ((2, 1), (4, 1), (2, 2)):
        parallel = train(TrainConfig(dp=dp, tp=tp, **TINY))["losses"]
        assert parallel[0] == pytest.approx(single[0], rel=1e-6)  # same init, same data
        np.testing.assert_allclose(parallel, single, rtol=2e-6, atol=0)


def test_sequence_parallel_training_equals_the_allreduce_layout():
    """Exact RS + AG move the same bits as the exact All-Reduce, forward and backward."""
    base = train(TrainConfig(dp=2, tp=2, **TINY))["losses"]
    sp = train(TrainConfig(dp=2, tp=2, sequence_parallel=True, **TINY))
    assert sp["losses"] == base
    assert {k.split("/")[0] for k in sp["bytes_per_step"]} == {"tp", "dp_grad"}


def test_data_order_and_init_depend_only_on_the_seed():
    a = synthetic_batches(128, 3, 4, 8, seed=5)
    assert np.array_equal(a, synthetic_batches(128, 3, 4, 8, seed=5))
    assert not np.array_equal(a, synthetic_batches(128, 3, 4, 8, seed=6))
    assert a.shape == (3, 4, 9) and a.min() >= 0 and a.max() < 128


def _per_rank_grads(cfg, params, tokens):
    """Each DP rank's gradients from the plain (tp=1, dp=1) model: [dp] list of trees."""
    plain = Trainer(dataclasses.replace(cfg, dp=1, tp=1, dp_collective="exact"))
    grad = jax.jit(jax.grad(plain._rank_loss))
    return [grad(params, t, None) for t in tokens]


def test_int8_gradient_allreduce_and_error_feedback_vs_reference():
    """The DP reduce of given per-rank gradients, and the EF residuals, bit for bit."""
    cfg = TrainConfig(dp=2, dp_collective="scin:int8", error_feedback=True, **TINY)
    trainer = Trainer(cfg)
    params, _, residual = trainer.init_state()
    tokens = jnp.asarray(trainer.data()[0])
    ranks = _per_rank_grads(cfg, params, tokens)
    grads = jax.tree.map(lambda *g: jnp.stack(g), *ranks)  # [dp, ...] per leaf
    reduce = jax.jit(jax.vmap(lambda g, r: trainer._dp_reduce(g, r, None), axis_name="dp"))
    fmt = R.PRESETS["int8"]

    def q_error(v):
        codes, scales = R.quantize(v, fmt)
        return (v - R.dequantize_f32(codes, scales, fmt)).astype(np.float32)

    res = residual
    for step in range(2):  # step 2 adds the carried residual before quantizing
        mean, new_res = reduce(grads, res)
        for name in ("final_norm", "embed", "lm_head"):
            g = np.asarray(grads["params"][name])
            v = g + np.asarray(res["params"][name])  # what each rank sends
            want = R.allreduce(v, "scin", uplink=fmt, downlink=fmt) / np.float32(2)
            got = np.asarray(mean["params"][name])
            for i in range(2):
                assert_bits(got[i], want, f"step {step} {name} mean, rank {i}")
                assert_bits(
                    np.asarray(new_res["params"][name])[i], q_error(v[i]), f"residual {name}"
                )
        res = new_res


def test_int8_training_runs_and_stays_close_to_exact():
    exact = train(TrainConfig(dp=2, **TINY))["losses"]
    q = train(TrainConfig(dp=2, dp_collective="scin:int8", **TINY))["losses"]
    assert q[0] == exact[0]  # same init and data: the first loss precedes any update
    assert q != exact  # the quantized gradients do change the trajectory
    np.testing.assert_allclose(q, exact, rtol=0.05)


def _int8_wire(shape) -> int:
    rows, h = math.prod(shape[:-1]), shape[-1]
    return rows * h + rows * math.ceil(h / 32) * 2  # int8 codes + float16 scale per 32


@pytest.mark.parametrize("coll", ["exact", "scin:int8"])
def test_dp_bytes_per_step_closed_form(coll):
    trainer = Trainer(TrainConfig(dp=4, dp_collective=coll, **TINY))
    shapes = _n_params(trainer)
    rep = trainer.traffic
    dp_records = [r for r in rep.records if r.label.startswith("dp_grad")]
    assert {r.n_ranks for r in dp_records} == {4}
    up = sum(r.calls * r.up[0] for r in dp_records)
    down = sum(r.calls * r.down[0] for r in dp_records)
    if coll == "exact":
        want = 4 * sum(math.prod(s) for s in shapes)  # float32 gradients, n b per link
        assert (up, down) == (want, want)
    else:
        want = sum(_int8_wire(s) for s in shapes)
        assert (up, down) == (want, want)


def test_tp_forward_and_backward_bytes_closed_form():
    cfg = TrainConfig(dp=2, tp=2, tp_collective="scin:int8", tp_backward="scin:int4", **TINY)
    trainer = Trainer(cfg)
    hidden, layers = trainer.config.hidden_size, trainer.config.num_layers
    rows = cfg.batch // cfg.dp * cfg.seq_len  # one DP rank's tokens, [rows, D] per call
    per_call = {
        "forward": rows * hidden + rows * math.ceil(hidden / 32) * 2,  # int8 + f16 scales
        "backward": rows * hidden // 2 + rows * math.ceil(hidden / 32) * 2,  # int4
    }
    for phase, want in per_call.items():
        recs = [r for r in trainer.traffic.records if r.n_ranks == 2 and r.phase == phase]
        recs = [r for r in recs if not r.label.startswith("dp_grad")]
        assert sum(r.calls for r in recs) == 2 * layers  # attn_out + mlp_out per layer
        assert all(r.up[0] == want and r.down[0] == want for r in recs), phase


def test_jitted_step_does_not_retrace():
    trainer = Trainer(TrainConfig(dp=2, dp_collective="scin:int8", error_feedback=True, **TINY))
    step = jax.jit(chex.assert_max_traces(trainer._step, n=1))
    state = trainer.init_state()
    data = trainer.data()
    for s in range(2):
        params, opt_state, residual, loss = step(*state, jnp.asarray(data[s]), jax.random.key(s))
        state = (params, opt_state, residual)
    chex.assert_tree_all_finite(state[0])
    chex.assert_trees_all_equal_shapes(state[0], trainer.params)
    assert np.isfinite(float(loss))


def test_cli_writes_curves_json_and_png(tmp_path, capsys):
    rc = cli_main(
        ["train", "--dp", "2", "--steps", "4", "--batch", "4", "--seq-len", "8"]
        + ["--seeds", "0", "--out", str(tmp_path), "--no-progress"]
    )
    assert rc == 0
    result = json.loads((tmp_path / "train.json").read_text())
    labels = [r["label"] for r in result["runs"]]
    assert labels == [
        "dp2[exact] x tp1[exact/exact]",
        "dp2[scin:int8] x tp1[exact/exact]",
        "dp2[scin:int8+ef] x tp1[exact/exact]",
    ]
    assert result["runs"][0]["final_gap_mean"] == 0.0
    assert all(len(s["losses"]) == 4 for r in result["runs"] for s in r["seeds"])
    assert (tmp_path / "train_loss.png").stat().st_size > 1000
    assert "final loss" in capsys.readouterr().out


@pytest.mark.parametrize(
    "kw,match",
    [
        (dict(dp=3, batch=4), "multiple of 3"),
        (dict(dp=0), "dp must be an int >= 1"),
        (dict(dp_collective="scin:int9"), "int9"),
        (dict(optimizer="lion"), "unknown optimizer"),
        (dict(tp=3, seq_len=8, batch=4, sequence_parallel=True), "multiple"),
        (
            dict(dp_collective="scin:int8-b32-float16-stochastic", error_feedback=True),
            "stochastically",
        ),
    ],
)
def test_bad_config_is_a_clear_error(kw, match):
    with pytest.raises(ValueError, match=match):
        TrainConfig(**kw)
