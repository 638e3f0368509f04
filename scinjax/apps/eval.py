"""``scinjax eval``: multiple-choice accuracy per collective, lm-eval-harness style.

Each item has a ``context``, ``choices`` and the index of the right ``answer``. A
choice is scored by the log-likelihood of its tokens given the context (the sum of
``log p(token | everything before it)``), as lm-eval-harness does: trailing
whitespace of the context moves to the front of the choice, the pair is encoded
whole, and the choice's tokens are those past the context's own encoding.

- ``acc``: the choice of highest log-likelihood is the answer;
- ``acc_norm``: the same after dividing each log-likelihood by the choice's length
  in characters (lm-eval-harness's length normalisation);
- standard errors: items are independent, ``SE = sd(correct) / sqrt(n)``;
- ``flips``: items whose predicted choice differs from the exact reduction's.

Files: JSON lines ``{"context": str, "choices": [str, ...], "answer": int}``, or a
BIG-bench ``task.json`` (``examples`` with ``input`` and ``target_scores``; the
answer is the choice of highest score, and items whose top score is shared are
skipped and counted).
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import time

import numpy as np

from scinjax._progress import progress as progress_bar
from scinjax.apps._files import write_result_files

__all__ = ["Item", "read_tasks", "score_choices", "run_eval", "format_eval", "write_eval"]


@dataclasses.dataclass(frozen=True, kw_only=True)
class Item:
    context: str
    choices: tuple[str, ...]
    answer: int

    def __post_init__(self):
        if not isinstance(self.context, str) or not self.context.strip():
            raise ValueError("an item needs a non-empty string 'context'")
        if len(self.choices) < 2 or not all(isinstance(c, str) and c for c in self.choices):
            raise ValueError(f"an item needs >= 2 non-empty string choices, got {self.choices!r}")
        if not isinstance(self.answer, int) or not 0 <= self.answer < len(self.choices):
            raise ValueError(
                f"answer must index the {len(self.choices)} choices, got {self.answer!r}"
            )


def _read_jsonl(path: str, text: str) -> list[Item]:
    items = []
    for number, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        try:
            obj = json.loads(line)
            items.append(
                Item(context=obj["context"], choices=tuple(obj["choices"]), answer=obj["answer"])
            )
        except (json.JSONDecodeError, KeyError, TypeError, ValueError) as err:
            what = f"missing field {err}" if isinstance(err, KeyError) else str(err)
            raise ValueError(
                f"{path} line {number}: {what} (fields: context, choices, answer)"
            ) from None
    return items


def _read_bigbench(path: str, doc: dict) -> tuple[list[Item], int]:
    if not isinstance(doc.get("examples"), list):
        raise ValueError(f"{path}: a BIG-bench task.json has a list 'examples'")
    prefix = doc.get("example_input_prefix", "")
    suffix = doc.get("example_output_prefix", " ")
    items, skipped = [], 0
    for k, ex in enumerate(doc["examples"]):
        scores = ex.get("target_scores") if isinstance(ex, dict) else None
        if not isinstance(scores, dict) or "input" not in ex or len(scores) < 2:
            raise ValueError(f"{path} example {k}: needs 'input' and >= 2 'target_scores'")
        choices = tuple(scores)
        best = max(scores.values())
        winners = [i for i, c in enumerate(choices) if scores[c] == best]
        if len(winners) != 1:
            skipped += 1
            continue
        items.append(
            Item(context=f"{prefix}{ex['input']}{suffix}", choices=choices, answer=winners[0])
        )
    return items, skipped


def read_tasks(path: str | os.PathLike) -> tuple[list[Item], dict]:
    """Items of a JSONL file or a BIG-bench task.json; ``(items, info)``."""
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise ValueError(f"--tasks {path!r}: no such file")
    try:
        with open(path, encoding="utf-8") as f:
            text = f.read()
    except UnicodeDecodeError:
        raise ValueError(f"--tasks {path!r} is not UTF-8 text") from None
    try:
        doc = json.loads(text)
    except json.JSONDecodeError:
        doc = None  # not one JSON document: JSON lines
    if isinstance(doc, dict) and "examples" in doc:
        items, skipped = _read_bigbench(path, doc)
        return items, {"format": "bigbench", "skipped_ties": skipped}
    return _read_jsonl(path, text), {"format": "jsonl", "skipped_ties": 0}


def _encode_pairs(tokenizer, items: list[Item]):
    """[(item index, choice index, ids, n_context)] of every choice."""
    out = []
    for i, item in enumerate(items):
        ctx = item.context
        stripped = ctx.rstrip()
        for j, choice in enumerate(item.choices):
            cont = ctx[len(stripped) :] + choice  # trailing whitespace joins the choice
            ctx_ids = tokenizer.encode(stripped)
            whole = tokenizer.encode(stripped + cont)
            if len(whole) <= len(ctx_ids) or whole[: len(ctx_ids)] != ctx_ids:
                # the pair's tokens cross the boundary: keep the whole, score past the context
                n_ctx = min(len(ctx_ids), len(whole) - 1)
            else:
                n_ctx = len(ctx_ids)
            if n_ctx < 1:
                raise ValueError(f"item {i}: the context encodes to no token")
            out.append((i, j, whole, n_ctx))
    return out


def score_choices(model, pairs, *, batch: int = 8, key=None, pad_to: int = 32) -> np.ndarray:
    """Log-likelihood (float64) of each pair's tokens past its context, in ``pairs`` order.

    Sequences are right-padded to a multiple of ``pad_to`` (a causal model's scores of
    real positions do not see the padding) and run ``batch`` at a time.
    """
    from scinjax.apps.study.metrics import log_softmax

    order = sorted(range(len(pairs)), key=lambda k: len(pairs[k][2]))
    out = np.zeros(len(pairs))
    for start in range(0, len(order), batch):
        idx = order[start : start + batch]
        length = -(-max(len(pairs[k][2]) for k in idx) // pad_to) * pad_to
        length = min(length, model.config.max_position)
        ids = np.zeros((batch, length), np.int32)
        for row, k in enumerate(idx):
            seq = pairs[k][2]
            if len(seq) > length:
                raise ValueError(f"a context+choice of {len(seq)} tokens exceeds max_position")
            ids[row, : len(seq)] = seq
        logits = np.asarray(model.forward(ids, key=key))
        for row, k in enumerate(idx):
            seq, n_ctx = pairs[k][2], pairs[k][3]
            lp = log_softmax(logits[row, n_ctx - 1 : len(seq) - 1])
            out[k] = float(np.sum(lp[np.arange(len(seq) - n_ctx), seq[n_ctx:]]))
    return out


def _accuracy(correct: np.ndarray) -> tuple[float, float]:
    n = correct.size
    mean = float(correct.mean()) if n else float("nan")
    se = float(np.std(correct, ddof=1) / math.sqrt(n)) if n > 1 else float("nan")
    return mean, se


def run_eval(
    items: list[Item],
    *,
    model=None,
    loaded=None,
    tp: int = 8,
    variants=("exact", "scin", "scin:int8"),
    wire_dtype: str = "bfloat16",
    weights_dtype: str = "float32",
    batch: int = 8,
    seed: int = 0,
    progress: bool = True,
) -> dict:
    """Every variant on the same items; ``{"settings", "rows", "predictions"}``."""
    import jax

    from scinjax.apps.study.runner import versions
    from scinjax.apps.study.variants import parse_variants
    from scinjax.models import build_model

    if not items:
        raise ValueError("no items to evaluate")
    parsed = parse_variants(variants)
    t0 = time.perf_counter()
    own = loaded is None  # loaded here: read lazily and hand the arrays over to the model
    if own:
        from scinjax.models import load_weights

        loaded = load_weights(model, dtype=weights_dtype, lazy=True)
    config, weights, tok = loaded
    pairs = _encode_pairs(tok, items)
    base = build_model(
        config,
        weights,
        tp=tp,
        collective="exact",
        wire_dtype=wire_dtype,
        weights_dtype=weights_dtype,
        consume_weights=own,
    )
    lengths = np.array([len(c) for item in items for c in item.choices], dtype=np.float64)
    answers = np.array([item.answer for item in items])
    bar = progress_bar(len(parsed), desc="eval", unit="variant", enabled=progress)
    rows, preds = [], {}
    for v in parsed:
        bar.set_description(f"eval {v.name}")
        m = base if v.name == "exact" else base.with_collective(v.spec, wire_dtype=wire_dtype)
        key = jax.random.key(seed) if v.stochastic else None
        ll = score_choices(m, pairs, batch=batch, key=key)
        pred, pred_norm, k = [], [], 0
        for item in items:
            n = len(item.choices)
            scores = ll[k : k + n]
            pred.append(int(np.argmax(scores)))
            pred_norm.append(int(np.argmax(scores / lengths[k : k + n])))
            k += n
        pred, pred_norm = np.array(pred), np.array(pred_norm)
        preds[v.name] = {"acc": pred.tolist(), "acc_norm": pred_norm.tolist()}
        acc, acc_se = _accuracy((pred == answers).astype(np.float64))
        norm, norm_se = _accuracy((pred_norm == answers).astype(np.float64))
        ref = preds["exact"]
        rows.append(
            {
                "variant": v.name,
                "acc": acc,
                "acc_se": acc_se,
                "acc_norm": norm,
                "acc_norm_se": norm_se,
                "flips": int(np.sum(pred != np.array(ref["acc"]))),
                "flips_norm": int(np.sum(pred_norm != np.array(ref["acc_norm"]))),
                "items": len(items),
            }
        )
        bar.update(1)
    bar.close()
    settings = {
        "model": config.name,
        "tp": tp,
        "wire_dtype": wire_dtype,
        "weights_dtype": weights_dtype,
        "items": len(items),
        "choices": int(lengths.size),
        "seed": seed,
        "seconds": time.perf_counter() - t0,
    }
    return {"settings": settings, "versions": versions(), "rows": rows, "predictions": preds}


def format_eval(result: dict) -> str:
    s = result["settings"]
    head = f"{'variant':<22} {'acc ± SE':>17} {'acc_norm ± SE':>17} {'flips':>6} {'flips_n':>7}"
    lines = [
        f"scinjax eval: {s['model']}, tp={s['tp']}, {s['items']} items ({s['choices']} choices)",
        head,
        "-" * len(head),
    ]
    for r in result["rows"]:
        lines.append(
            f"{r['variant']:<22} {r['acc']:>8.4f} ± {r['acc_se']:.4f} "
            f"{r['acc_norm']:>8.4f} ± {r['acc_norm_se']:.4f} {r['flips']:>6} {r['flips_norm']:>7}"
        )
    lines.append("flips: items whose predicted choice differs from exact's (acc / acc_norm).")
    return "\n".join(lines)


def write_eval(result: dict, out_dir) -> dict[str, str]:
    return write_result_files(
        out_dir, "eval", doc=result, rows=result["rows"], text=format_eval(result), indent=1
    )
