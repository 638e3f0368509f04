"""Study metrics against hand-computed values, and a tiny end-to-end study run."""

from __future__ import annotations

import csv
import json
import math

import numpy as np
import pytest

from scinjax.apps.study import metrics as M

LN3 = math.log(3.0)


@pytest.mark.parametrize("shift", [0.0, 1000.0, -1000.0], ids=["plain", "big", "negative"])
def test_log_softmax_and_nll(shift):
    # softmax([0, ln 3]) = [1/4, 3/4]; a common shift changes nothing (stability).
    logits = np.array([[0.0, LN3], [LN3, 0.0]]) + shift
    np.testing.assert_allclose(np.exp(M.log_softmax(logits)), [[0.25, 0.75], [0.75, 0.25]])
    np.testing.assert_allclose(M.token_nll(logits, [1, 1]), [math.log(4 / 3), math.log(4)])


def test_perplexity():
    # exp(mean(ln 2, ln 8)) = exp(ln 4) = 4
    assert M.perplexity([math.log(2), math.log(8)]) == pytest.approx(4.0)
    assert M.perplexity([0.0, 0.0]) == 1.0


def test_kl():
    p = np.array([[0.0, LN3]])  # [1/4, 3/4]
    q = np.array([[5.0, 5.0]])  # [1/2, 1/2]
    want = 0.25 * math.log(0.25 / 0.5) + 0.75 * math.log(0.75 / 0.5)
    np.testing.assert_allclose(M.token_kl(p, q), [want])
    # KL is asymmetric: KL(q || p) = 1/2 ln(2) + 1/2 ln(2/3)
    np.testing.assert_allclose(M.token_kl(q, p), [0.5 * math.log(2) + 0.5 * math.log(2 / 3)])
    # identical distributions (also up to a logit shift) give exactly 0, never negative
    x = np.random.default_rng(0).standard_normal((4, 50)) * 10
    np.testing.assert_array_equal(M.token_kl(x, x), np.zeros(4))
    assert (M.token_kl(x, x + 3.0) >= 0).all()
    np.testing.assert_allclose(M.token_kl(x, x + 3.0), 0.0, atol=1e-12)


def test_top1_and_max_abs_diff():
    a = np.array([[1.0, 2.0], [3.0, 0.0], [0.0, 0.0]])
    b = np.array([[0.0, 5.0], [1.0, 2.0], [0.0, 0.0]])
    assert M.top1_agreement(a, b) == pytest.approx(2 / 3)  # argmax [1,0,0] vs [1,1,0]
    assert M.max_abs_diff(a, b) == 3.0
    assert M.max_abs_diff(a, a) == 0.0


def test_tokens_until_divergence():
    assert M.tokens_until_divergence([1, 2, 3, 4], [1, 2, 5, 4]) == 2
    assert M.tokens_until_divergence([1, 2, 3], [1, 2, 3]) == 3
    assert M.tokens_until_divergence([7], [8]) == 0
    assert M.tokens_until_divergence([1, 2, 3], [1, 2]) == 2


def test_compare_logits():
    ref = np.array([[0.0, LN3], [0.0, 0.0]])
    var = np.array([[0.0, 0.0], [0.0, 0.0]])
    r = M.compare_logits(ref, var, [1, 0])
    kl0 = 0.25 * math.log(0.5) + 0.75 * math.log(1.5)
    assert r["tokens"] == 2
    assert r["nll_sum"] == pytest.approx(2 * math.log(2))
    assert r["kl_sum"] == pytest.approx(kl0) and r["kl_max"] == pytest.approx(kl0)
    assert r["top1_agree"] == 1  # row 0: 1 vs 0; row 1: tie -> 0 in both
    assert r["max_abs_dlogit"] == pytest.approx(LN3)


# --------------------------------------------------------------------- study pieces


def test_pydoc_prose_is_prose():
    from scinjax.apps.study import pydoc_prose

    text = pydoc_prose()
    paras = text.split("\n\n")
    assert len(text) > 50_000 and len(paras) > 200
    assert not any(p[:1].isspace() or "\n" in p for p in paras)  # no code, one line each
    assert pydoc_prose() == text  # fixed order


def test_scoring_windows_second_half():
    from scinjax.apps.study import scoring_windows

    ids = np.arange(100)
    w = scoring_windows(ids, ctx=10)  # every whole window: 10 of them
    assert w.ids.shape == (10, 10) and w.ids.dtype == np.int32 and w.first == 5
    np.testing.assert_array_equal(w.ids[3], np.arange(30, 40))
    # positions 5..8 predict tokens 6..9: 4 scored tokens per window, each with >= 6 of context
    assert w.scored_per_window == 4 and w.scored_tokens == 40
    # a budget of 9 scored tokens needs ceil(9 / 4) = 3 windows
    assert scoring_windows(ids, ctx=10, tokens=9).ids.shape == (3, 10)
    assert scoring_windows(ids, ctx=11, tokens=None).ids.shape == (9, 11)  # first = 5, 5 scored
    # the budget is a cap: 100 / 14 -> 8 windows wanted, 3 whole windows of 30 available
    assert scoring_windows(ids, ctx=30, tokens=100).ids.shape == (3, 30)
    with pytest.raises(ValueError, match="fewer than one window of --ctx 101"):
        scoring_windows(ids, ctx=101)
    with pytest.raises(ValueError, match="--ctx must be >= 4"):
        scoring_windows(ids, ctx=3)


def test_read_text_file_errors(tmp_path):
    from scinjax.apps.study import read_jsonl, read_text_file

    good = tmp_path / "a.txt"
    good.write_text("héllo wörld", encoding="utf-8")
    assert read_text_file(good).text == "héllo wörld" and read_text_file(good).source == "a.txt"
    latin = tmp_path / "latin.txt"
    latin.write_bytes("héllo".encode("latin-1"))
    with pytest.raises(ValueError, match="is not UTF-8"):
        read_text_file(latin)
    binary = tmp_path / "b.bin"
    binary.write_bytes(b"\x89PNG\r\n\x1a\n\x00\x00")
    with pytest.raises(ValueError, match="looks binary"):
        read_text_file(binary)
    with pytest.raises(ValueError, match="no such file"):
        read_text_file(tmp_path / "missing.txt")
    lines = tmp_path / "d.jsonl"
    lines.write_text('{"text": "one"}\n\n{"text": "two", "x": 1}\n', encoding="utf-8")
    c = read_jsonl(lines)
    assert c.text == "one\n\ntwo" and c.source == "d.jsonl:text"
    with pytest.raises(ValueError, match="line 1 has no field 'body'"):
        read_jsonl(lines, "body")
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"text": "one"}\n{oops\n', encoding="utf-8")
    with pytest.raises(ValueError, match="line 2"):
        read_jsonl(bad)


def test_short_text_is_refused_before_the_model_loads(monkeypatch):
    from scinjax.apps.study import Corpus, run_study

    def boom(*_a, **_k):
        raise AssertionError("the model was loaded before the text was checked")

    monkeypatch.setattr("scinjax.models.load_weights", boom)
    with pytest.raises(ValueError, match="fewer than one window"):
        run_study(corpus=Corpus(text="too short", source="t"), ctx=64, tokens=1000)


def test_variants_parse_dedupe_and_reference_first():
    from scinjax import CallPolicy, Collective
    from scinjax.apps.study import parse_variants

    vs = parse_variants(["scin:int8", Collective.parse("scin:int8"), "exact", "scin@mlp_out"])
    assert [v.name for v in vs] == ["exact", "scin:int8", "scin@mlp_out"]
    assert isinstance(vs[2].spec, CallPolicy)
    with pytest.raises(ValueError, match="variant 'warp:int8'"):
        parse_variants(["warp:int8"])
    names = [v.name for v in parse_variants(["field", "scin:int8"])]
    assert names[:3] == ["exact", "scin", "scin:int8"] and len(names) == len(set(names))
    assert {"scin:nvfp4", "quickreduce-q4", "flashinfer-fp8", "trtllm-fp8"} <= set(names)


# ------------------------------------------------------------- tiny end-to-end run


@pytest.fixture(scope="module")
def tiny_gguf_path(tmp_path_factory):
    import tiny_gguf as tg
    from numpy_llama import random_weights

    config = tg.tiny_config()
    path = tmp_path_factory.mktemp("study") / "tiny.gguf"
    tg.write_gguf(path, config, random_weights(config, seed=3))
    return str(path)


TINY_ARGS = ["--tp", "2", "--ctx", "16", "--tokens", "21", "--batch", "2"]
TINY_ARGS += ["--prompts", "2", "--prompt-len", "4", "--gen-tokens", "3", "--quiet"]
STABLE_KEYS = (
    "ppl_ratio ppl_ratio_se ln_ppl_ratio ln_ppl_ratio_se kl_mean kl_mean_se kl_max kl_p999 "
    "kl_p99 kl_p95 kl_p90 kl_p50 kl_p10 kl_p05 kl_p01 kl_p001 top1 top1_se rms_dp"
).split()


def test_tiny_study_end_to_end(tiny_gguf_path, tmp_path, capsys):
    from scinjax.cli.study import main

    out = tmp_path / "out"
    variants = ["scin,scin:int8", "scin:bf16/int8"]  # exact is added as the reference
    args = ["--model", tiny_gguf_path, "--variants", *variants, "--out", str(out), "--attribution"]
    rc = main([*args, *TINY_ARGS])
    assert rc == 0
    table = capsys.readouterr().out
    assert "scin:int8" in table and "PPL ratio" in table and "±" in table and "p99.9" in table

    result = json.loads((out / "study.json").read_text())
    rows = {r["variant"]: r for r in result["rows"]}
    assert list(rows) == ["exact", "scin", "scin:int8", "scin:bf16/int8"]
    s = result["settings"]
    # ctx 16: positions 8..14 scored = 7 per window; a budget of 21 -> 3 windows
    assert s["tp"] == 2 and s["scored_tokens"] == 21 and s["windows"] == 3
    assert s["reference"] == "exact" and s["ctx"] == 16
    assert {"jax", "jaxlib", "flax", "numpy", "scinjax", "python"} <= set(result["versions"])
    for r in rows.values():
        assert set(STABLE_KEYS) <= set(r)
        assert r["tokens"] == 21 and r["windows"] == 3
        pct = [r[f"kl_{k}"] for k in ("p001", "p01", "p05", "p10", "p50", "p90", "p95", "p99")]
        assert pct == sorted(pct) and r["kl_p999"] <= r["kl_max"]
    ex = rows["exact"]
    assert ex["kl_mean"] == 0 and ex["kl_max"] == 0 and ex["top1"] == 1 and ex["ppl_ratio"] == 1
    assert ex["kl_mean_se"] == 0 and ex["ln_ppl_ratio"] == 0 and ex["rms_dp"] == 0
    assert ex["max_dlogit"] == 0 and ex["gen_agree_mean"] == 3
    # Bytes per element, closed form for N=2, D=64, the scin ledger (spec bytes):
    # exact: float32 partials, 4 B; bf16: 2 B; int8: 1 B + a float16 scale per 32 = 1.0625 B.
    assert (ex["up_bytes_per_elem"], ex["down_bytes_per_elem"]) == (4.0, 4.0)
    assert (rows["scin"]["up_bytes_per_elem"], rows["scin"]["down_bytes_per_elem"]) == (2.0, 2.0)
    r8 = rows["scin:int8"]
    assert (r8["up_bytes_per_elem"], r8["down_bytes_per_elem"]) == (1.0625, 1.0625)
    assert r8["wire_bytes_per_elem"] == 2.125
    mixed = rows["scin:bf16/int8"]
    assert (mixed["up_bytes_per_elem"], mixed["down_bytes_per_elem"]) == (2.0, 1.0625)
    # Per link per token: 2 All-Reduces per layer x 2 layers x 64 elements x bytes/element.
    assert r8["up_bytes_per_token"] == 2 * 2 * 64 * 1.0625
    for r in rows.values():
        assert r["kl_mean"] >= 0 and r["kl_max"] >= r["kl_mean"] and 0 <= r["top1"] <= 1
        assert 0 <= r["gen_agree_min"] <= r["gen_agree_mean"] <= 3
        assert r["ppl"] > 1
        # the ln ratio and the ratio are one statistic: ratio = exp(ln ratio)
        assert r["ppl_ratio"] == pytest.approx(math.exp(r["ln_ppl_ratio"]), rel=1e-12)
    assert r8["kl_mean"] > 0 and r8["kl_mean_se"] > 0  # quantization is visible

    with open(out / "study.csv", newline="") as f:
        csv_rows = list(csv.DictReader(f))
    assert [r["variant"] for r in csv_rows] == list(rows)
    assert float(csv_rows[2]["kl_mean"]) == pytest.approx(r8["kl_mean"])
    kl = np.load(out / "study_kl.npz")
    assert kl["scin:int8"].dtype == np.float32 and kl["scin:int8"].shape == (21,)
    assert np.mean(kl["scin:int8"], dtype=np.float64) == pytest.approx(r8["kl_mean"], rel=1e-6)
    png = (out / "study.png").read_bytes()
    assert png[:8] == b"\x89PNG\r\n\x1a\n"
    sites = json.loads((out / "attribution.json").read_text())
    assert list(sites) == ["scin", "scin:int8", "scin:bf16/int8"]
    assert len(sites["scin:int8"]) == 2 * 2  # two layers, two call sites each
    assert (out / "attribution.png").read_bytes()[:4] == b"\x89PNG"


def test_study_text_file_seeds_and_errors(tiny_gguf_path, tmp_path, capsys):
    from scinjax.cli.study import main

    text = tmp_path / "text.txt"
    text.write_text("the cat sat on the mat. " * 40)
    out = tmp_path / "o"
    args = ["--model", tiny_gguf_path, "--out", str(out), "--no-plot"]
    stoch = "scin:int8-b32-float16-stochastic"
    assert (
        main([*args, "--variants", stoch, "--seeds", "1,2", "--text", str(text), *TINY_ARGS]) == 0
    )
    result = json.loads((out / "study.json").read_text())
    assert result["settings"]["text"] == "text.txt" and not (out / "study.png").exists()
    assert [(r["variant"], r["seed"]) for r in result["rows"]] == [
        ("exact", None),
        (stoch, 1),
        (stoch, 2),
    ]
    spread = result["seed_spread"][stoch]["kl_mean"]
    assert spread["seeds"] == [1, 2] and spread["sd"] > 0  # two seeds, two noise draws
    capsys.readouterr()
    assert main([*args, "--text", str(text), *TINY_ARGS, "--ctx", "5000"]) == 2
    assert "fewer than one window" in capsys.readouterr().err
    assert main([*args, "--text", str(tmp_path / "missing.txt")]) == 2
    assert "no such file" in capsys.readouterr().err
    assert main([*args, "--variants", "warp:int8"]) == 2
    assert "unknown algorithm 'warp'" in capsys.readouterr().err
    binary = tmp_path / "x.bin"
    binary.write_bytes(bytes(range(256)))
    assert main([*args, "--text", str(binary)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "binary" in err  # one line, no traceback
