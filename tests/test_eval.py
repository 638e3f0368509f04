"""scinjax eval: task files, and accuracy against the independent NumPy forward."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest

from scinjax.apps.eval import Item, read_tasks, run_eval


def _loglik_np(config, weights, tok, context: str, choice: str) -> float:
    """Reference: lm-eval-harness's rule, the NumPy forward (tests/numpy_llama.py)."""
    from numpy_llama import forward

    stripped = context.rstrip()
    cont = context[len(stripped) :] + choice
    ctx_ids, whole = tok.encode(stripped), tok.encode(stripped + cont)
    assert whole[: len(ctx_ids)] == ctx_ids  # the words below never merge across the boundary
    logits = forward(config, weights, whole).astype(np.float64)
    z = logits - logits.max(axis=-1, keepdims=True)
    lp = z - np.log(np.exp(z).sum(axis=-1, keepdims=True))
    return float(sum(lp[t - 1, whole[t]] for t in range(len(ctx_ids), len(whole))))


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    import tiny_gguf as tg
    from numpy_llama import random_weights
    from scinjax.models import load_weights

    config = tg.tiny_config()
    path = tmp_path_factory.mktemp("eval") / "tiny.gguf"
    tg.write_gguf(path, config, random_weights(config, seed=7))
    return load_weights(str(path))


CONTEXTS = ["the cat sat on the", "a dog ran to the", "we saw the", "it is a", "he got the"]
CHOICES = [" mat", " hat", " red box", " sun"]


def test_accuracy_matches_the_numpy_reference(tiny):
    config, weights, tok = tiny
    ref = [[_loglik_np(config, weights, tok, c, ch) for ch in CHOICES] for c in CONTEXTS]
    best = [int(np.argmax(r)) for r in ref]
    best_norm = [int(np.argmax(np.array(r) / [len(ch) for ch in CHOICES])) for r in ref]
    # known answer: items 0, 2, 4 are answered with the reference's choice, 1 and 3 with
    # another one, so exact's accuracy must be exactly 3/5
    answers = [b if i % 2 == 0 else (b + 1) % len(CHOICES) for i, b in enumerate(best)]
    items = [
        Item(context=c, choices=tuple(CHOICES), answer=a)
        for c, a in zip(CONTEXTS, answers, strict=True)
    ]
    res = run_eval(
        items, loaded=tiny, tp=2, variants=["exact", "scin:int4"], batch=4, progress=False
    )
    rows = {r["variant"]: r for r in res["rows"]}
    assert res["predictions"]["exact"]["acc"] == best
    assert res["predictions"]["exact"]["acc_norm"] == best_norm
    ex = rows["exact"]
    assert ex["acc"] == pytest.approx(0.6) and ex["flips"] == 0 and ex["flips_norm"] == 0
    correct = np.array([1, 0, 1, 0, 1], float)
    assert ex["acc_se"] == pytest.approx(np.std(correct, ddof=1) / math.sqrt(5))
    want_norm = np.mean([b == a for b, a in zip(best_norm, answers, strict=True)])
    assert ex["acc_norm"] == pytest.approx(want_norm)
    q = rows["scin:int4"]
    flips = sum(a != b for a, b in zip(res["predictions"]["scin:int4"]["acc"], best, strict=True))
    assert q["flips"] == flips and q["items"] == 5


def test_task_files(tmp_path):
    lines = tmp_path / "t.jsonl"
    lines.write_text(
        json.dumps({"context": "Q: 2+2? A:", "choices": [" 4", " 5"], "answer": 0})
        + "\n\n"
        + json.dumps({"context": "sky is", "choices": [" blue", " green", " red"], "answer": 2})
        + "\n",
        encoding="utf-8",
    )
    items, info = read_tasks(lines)
    assert info["format"] == "jsonl" and [i.answer for i in items] == [0, 2]
    assert items[1].choices == (" blue", " green", " red")
    bb = tmp_path / "task.json"
    bb.write_text(
        json.dumps(
            {
                "name": "toy",
                "examples": [
                    {"input": "1+1=", "target_scores": {"2": 1, "3": 0}},
                    {"input": "tie", "target_scores": {"a": 1, "b": 1}},
                    {"input": "x", "target_scores": {"p": 0, "q": 0.5, "r": 1}},
                ],
            }
        ),
        encoding="utf-8",
    )
    items, info = read_tasks(bb)
    assert info == {"format": "bigbench", "skipped_ties": 1}
    assert [(i.context, i.choices, i.answer) for i in items] == [
        ("1+1= ", ("2", "3"), 0),
        ("x ", ("p", "q", "r"), 2),
    ]


@pytest.mark.parametrize(
    "line,match",
    [
        ('{"context": "c", "choices": ["a", "b"], "answer": 2}', "line 1: answer must index"),
        ('{"context": "c", "choices": ["a"], "answer": 0}', "line 1: an item needs >= 2"),
        ('{"choices": ["a", "b"], "answer": 0}', "line 1: missing field 'context'"),
        ("{oops", "line 1:"),
    ],
)
def test_bad_task_lines(tmp_path, line, match):
    f = tmp_path / "bad.jsonl"
    f.write_text(line + "\n", encoding="utf-8")
    with pytest.raises(ValueError, match=match):
        read_tasks(f)


def test_eval_cli_errors(tmp_path, capsys):
    from scinjax.cli.eval import main

    assert main(["--tasks", str(tmp_path / "none.jsonl")]) == 2
    assert "no such file" in capsys.readouterr().err
    latin = tmp_path / "latin.jsonl"
    latin.write_bytes("é".encode("latin-1"))
    assert main(["--tasks", str(latin)]) == 2
    assert "not UTF-8" in capsys.readouterr().err
