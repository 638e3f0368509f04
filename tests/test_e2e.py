"""End-to-end TTFT/TPOT: roofline compute from the config, communication from the ledger."""

from __future__ import annotations

import json

import pytest
from scinjax.models import get_config, model_traffic

from scinjax.apps import e2e
from scinjax.cli.e2e import main as e2e_main
from scinjax.timing import get_profile, report_time
from scinjax.traffic import TrafficReport, collective_record

H200 = get_profile("h200-nvswitch-8").replace(cuda_graphs=True)


def _weights_per_rank(cfg, tp):
    """bf16 bytes of one rank's matmul weights (all layers + LM head), closed form."""
    d, f = cfg.hidden_size, cfg.intermediate_size
    per_layer = d * (cfg.q_dim + 2 * cfg.kv_dim) + cfg.q_dim * d + 3 * d * f
    return 2 * (cfg.num_layers * per_layer + d * cfg.vocab_size) / tp


def test_decode_batch_one_is_weight_streaming():
    cfg = get_config("llama2-7b")  # every split is exact at TP=8
    c = e2e.compute_time(cfg, tp=8, tokens=1, batch=1, context=1, profile=H200)
    ideal = _weights_per_rank(cfg, 8) / (H200.hbm_bw * H200.hbm_efficiency)
    assert ideal < c.total < 1.01 * ideal


def test_long_prefill_is_matmul_bound_and_counts_attention():
    cfg, t, tp = get_config("llama2-13b"), 4096, 8
    c = e2e.compute_time(cfg, tp=tp, tokens=t, batch=1, context=t, profile=H200)
    d, hd = cfg.hidden_size, cfg.head_dim
    dense = 2 * t * (_weights_per_rank(cfg, tp) / 2 - d * cfg.vocab_size / tp)
    attention = cfg.num_layers * 4 * (cfg.num_heads // tp) * hd * t * (t + 1) / 2
    head = 2 * d * cfg.vocab_size / tp  # last token only
    assert c.flops == pytest.approx(dense + attention + head, rel=1e-12)
    peak = H200.peak_flops * H200.flops_efficiency
    # + the replicated residual stream (norms, adds) and SwiGLU, memory-bound: ~25% at TP=8
    assert c.flops / peak < c.total < 1.3 * c.flops / peak


def test_decode_reads_the_kv_cache():
    cfg = get_config("llama2-70b")  # GQA: 8 KV heads, one per rank at TP=8
    short = e2e.compute_time(cfg, tp=8, tokens=1, batch=32, context=1, profile=H200)
    long = e2e.compute_time(cfg, tp=8, tokens=1, batch=32, context=4097, profile=H200)
    kv = cfg.num_layers * 32 * 4096 * 2 * cfg.head_dim * 2  # K and V, bf16, one KV head
    assert long.bytes - short.bytes == kv


def test_step_time_overlap_bounds():
    cfg = get_config("llama2-7b")
    comp = e2e.compute_time(cfg, tp=8, tokens=512, batch=1, context=512, profile=H200)
    rep = model_traffic(cfg, tp=8, collective="nvls", tokens=512, batch=1)
    off = e2e.step_time(comp, rep, H200, overlap=False)
    on = e2e.step_time(comp, rep, H200, overlap=True)
    assert off.comm == report_time(rep, H200) and off.total == pytest.approx(comp.total + off.comm)
    assert max(comp.total, on.comm) <= on.total <= off.total
    assert off.comm_calls == 2 * cfg.num_layers


@pytest.mark.parametrize("coll", ["ring", "two_shot:int8", "scin:int8", "scin:bf16/mxint8"])
def test_retarget_equals_tracing_again(coll):
    cfg = get_config("llama2-7b")
    traced = model_traffic(cfg, tp=8, collective="nvls", tokens=3, batch=5)
    direct = model_traffic(cfg, tp=8, collective=coll, tokens=3, batch=5)
    assert e2e.retarget(traced, coll) == direct


def test_run_matches_compute_plus_ledger_and_scin_beats_nvls():
    res = e2e.run(("llama2-7b",), profile=H200, prefill=(256,), decode_batches=(4,), context=512)
    cfg = get_config("llama2-7b")
    row = res["models"]["llama2-7b"]["tpot"][4]
    comp = e2e.compute_time(cfg, tp=8, tokens=1, batch=4, context=513, profile=H200)
    rep = model_traffic(cfg, tp=8, collective="scin:int8", tokens=1, batch=4)
    assert row["scin:int8"]["total"] == pytest.approx(comp.total + report_time(rep, H200))
    for key, v in res["speedups"].items():
        if key.endswith("vs nvls"):
            assert all(s > 1 for s in v["per_point"].values()), key


def test_run_with_a_hand_made_ledger():
    def ledger(cfg, *, tp, collective, tokens, batch):  # two [B*T, D] All-Reduces per layer
        shape = (batch * tokens, cfg.hidden_size)
        return TrafficReport(
            tuple(
                collective_record(collective, n_ranks=tp, shape=shape, label=lab,
                                  calls=cfg.num_layers)
                for lab in ("attn_out", "mlp_out")
            )
        )  # fmt: skip

    a = e2e.run(("llama2-13b",), profile=H200, prefill=(128,), decode_batches=(1,))
    b = e2e.run(
        ("llama2-13b",), profile=H200, prefill=(128,), decode_batches=(1,), traffic_fn=ledger
    )
    assert a == b


def test_bad_inputs():
    cfg = get_config("llama2-7b")
    with pytest.raises(ValueError, match="compute model"):
        e2e.compute_time(cfg, tp=4, tokens=1, batch=1, context=1, profile="scin-fpga-4")
    with pytest.raises(ValueError, match="context"):
        e2e.compute_time(cfg, tp=8, tokens=16, batch=1, context=8, profile=H200)
    with pytest.raises(ValueError, match="batch"):
        e2e.compute_time(cfg, tp=8, tokens=1, batch=0, context=8, profile=H200)


def test_e2e_cli(tmp_path, capsys):
    argv = ["--models", "llama2-7b", "--prefill", "128,8192", "--decode-batch", "1..4"]
    assert e2e_main(argv + ["--out", str(tmp_path)]) == 0
    text = capsys.readouterr().out
    assert "1.74x" in text and "1.12x" in text and "TTFT" in text and "TPOT" in text
    data = json.loads((tmp_path / "e2e.json").read_text())
    assert set(data["models"]["llama2-7b"]["tpot"]) == {"1", "2", "4"}
    assert data["cuda_graphs"] is True and data["overlap"] is False
    assert (tmp_path / "e2e.png").stat().st_size > 10_000
    assert e2e_main(["--decode-batch", "0..4", "--out", str(tmp_path), "--no-plot"]) == 2
