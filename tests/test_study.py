"""Study metrics against hand-computed values, and a tiny end-to-end study run."""

from __future__ import annotations

import csv
import json
import math

import numpy as np
import pytest
from scinjax.models import metrics as M

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
    from scinjax.models.study import pydoc_prose

    text = pydoc_prose()
    paras = text.split("\n\n")
    assert len(text) > 50_000 and len(paras) > 200
    assert not any(p[:1].isspace() or "\n" in p for p in paras)  # no code, one line each
    assert pydoc_prose() == text  # fixed order


def test_token_windows():
    from scinjax.models.study import token_windows

    ids = np.arange(100)
    w = token_windows(ids, 3, 10)  # starts round(k * 90 / 2) = 0, 45, 90
    np.testing.assert_array_equal(w[:, 0], [0, 45, 90])
    np.testing.assert_array_equal(w[1], np.arange(45, 55))
    assert w.dtype == np.int32 and w.shape == (3, 10)
    np.testing.assert_array_equal(token_windows(ids, 1, 100)[0], ids)
    with pytest.raises(ValueError, match="fewer than 4 windows x 30 tokens"):
        token_windows(ids, 4, 30)


# ------------------------------------------------------------- tiny end-to-end run


@pytest.fixture(scope="module")
def tiny_gguf_path(tmp_path_factory):
    import tiny_gguf as tg
    from numpy_llama import random_weights

    config = tg.tiny_config()
    path = tmp_path_factory.mktemp("study") / "tiny.gguf"
    tg.write_gguf(path, config, random_weights(config, seed=3))
    return str(path)


TINY_ARGS = ["--tp", "2", "--windows", "3", "--window-len", "16", "--batch", "2"]
TINY_ARGS += ["--prompts", "2", "--prompt-len", "4", "--gen-tokens", "3", "--quiet"]


def test_tiny_study_end_to_end(tiny_gguf_path, tmp_path, capsys):
    from scinjax.models.study import main

    out = tmp_path / "out"
    variants = ["scin,scin:int8", "scin:bf16/int8"]  # exact is added as the reference
    rc = main(["--model", tiny_gguf_path, "--variants", *variants, "--out", str(out), *TINY_ARGS])
    assert rc == 0
    table = capsys.readouterr().out
    assert "scin:int8" in table and "ppl" in table and "wrote" in table

    result = json.loads((out / "study.json").read_text())
    rows = {r["variant"]: r for r in result["rows"]}
    assert list(rows) == ["exact", "scin", "scin:int8", "scin:bf16/int8"]
    s = result["settings"]
    assert s["tp"] == 2 and s["scored_tokens"] == 3 * 15 and s["reference"] == "exact"
    ex = rows["exact"]
    assert ex["kl_mean"] == 0 and ex["kl_max"] == 0 and ex["top1"] == 1 and ex["dppl_pct"] == 0
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
    assert r8["kl_mean"] > 0  # quantization is visible

    with open(out / "study.csv", newline="") as f:
        csv_rows = list(csv.DictReader(f))
    assert [r["variant"] for r in csv_rows] == list(rows)
    assert float(csv_rows[2]["kl_mean"]) == pytest.approx(r8["kl_mean"])
    png = (out / "study.png").read_bytes()
    assert png[:8] == b"\x89PNG\r\n\x1a\n"


def test_study_text_file_and_errors(tiny_gguf_path, tmp_path, capsys):
    from scinjax.models.study import main

    text = tmp_path / "text.txt"
    text.write_text("the cat sat on the mat. " * 40)
    out = tmp_path / "o"
    args = ["--model", tiny_gguf_path, "--variants", "exact", "--out", str(out), "--no-plot"]
    assert main([*args, "--text", str(text), *TINY_ARGS]) == 0
    result = json.loads((out / "study.json").read_text())
    assert result["settings"]["text"] == "text.txt" and not (out / "study.png").exists()
    capsys.readouterr()
    assert main([*args, "--text", str(text), *TINY_ARGS, "--windows", "100"]) == 2
    assert "fewer than 100 windows x 16 tokens" in capsys.readouterr().err
    assert main([*args, "--text", str(tmp_path / "missing.txt")]) == 2
    assert main([*args, "--variants", "warp:int8"]) == 2
