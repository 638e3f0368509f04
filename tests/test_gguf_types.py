"""Every GGUF tensor type the installed `gguf` package dequantizes loads into canonical weights.

Three levels of evidence, per type:

- Types the package can also *quantize* (F32, F16, BF16, Q8_0, Q4_0, Q4_1, Q5_0,
  Q5_1, TQ1_0, TQ2_0, MXFP4): a tiny model is written with every matrix in that
  type; the loaded weights correlate with the original ones (a wrong transpose
  or a Q/K permutation left in place would not) and equal the package's
  dequantization of the written bytes.
- Q8_0, Q4_0, Q4_1, Q5_0 are in addition decoded from the raw bytes by NumPy
  decoders written here from ggml's block layouts (``ggml-common.h``), not by
  the package.
- Types the package only dequantizes (Q2_K..Q6_K, IQ*, NVFP4): random block
  bytes are written as that type; the loader must give the package's
  dequantization in canonical layout. These are covered only through the
  package's own dequantizer.

Types it cannot dequantize (Q8_1, Q8_K, I8..I64, F64, ...) are refused naming the type.
"""

from __future__ import annotations

import numpy as np
import pytest
import tiny_gguf as tg
from numpy_llama import random_weights
from scinjax.models.loaders import load_weights

gguf = pytest.importorskip("gguf")
T = gguf.GGMLQuantizationType

QUANTIZABLE = ["F32", "F16", "BF16", "Q8_0", "Q4_0", "Q4_1", "Q5_0", "Q5_1", "TQ1_0", "TQ2_0"]
QUANTIZABLE += ["MXFP4"] if hasattr(T, "MXFP4") else []
DEQUANT_ONLY = ["Q2_K", "Q3_K", "Q4_K", "Q5_K", "Q6_K", "IQ4_NL", "IQ4_XS", "IQ3_S", "IQ3_XXS"]
DEQUANT_ONLY += ["IQ2_XXS", "IQ2_XS", "IQ2_S", "IQ1_S", "IQ1_M"]
DEQUANT_ONLY += ["NVFP4"] if hasattr(T, "NVFP4") else []
UNSUPPORTED = ["Q8_1", "Q8_K", "F64", "I16", "I32"]


@pytest.fixture(scope="module")
def model():
    # Rows of 256 so that every block size (32 .. 256) divides them; one layer.
    config = tg.tiny_config(
        hidden_size=256,
        intermediate_size=256,
        num_layers=1,
        num_heads=4,
        num_kv_heads=2,
        head_dim=64,
    )
    return config, random_weights(config, seed=11)


def _raw(path) -> dict:
    r = gguf.GGUFReader(str(path))
    return {t.name: (np.array(t.data), t.tensor_type) for t in r.tensors}


def _canonical_of(config, name: str, hf: np.ndarray) -> tuple[str, np.ndarray]:
    """GGUF tensor [out, in] (Q/K permuted) -> (canonical key, expected canonical array)."""
    if name == "token_embd.weight":
        return "embed", hf
    if name == "output.weight":
        return "lm_head", hf.T
    if name == "output_norm.weight":
        return "final_norm", hf
    blk, i, g, _ = name.split(".")
    key = {v: k for k, v in tg._GGUF_NAMES.items()}[g]
    if hf.ndim == 1:
        return f"layers.{i}.{key}", hf
    if key in ("wq", "wk"):  # undo by checking against the writer's own permutation
        n = config.num_heads if key == "wq" else config.num_kv_heads
        inv = np.argsort(tg.llamacpp_permute(np.arange(hf.shape[0])[:, None], n)[:, 0])
        hf = hf[inv]
    return f"layers.{i}.{key}", hf.T


# ------------------------------------------------- independent block decoders (ggml)


def _f16(b: np.ndarray) -> np.ndarray:
    return b.copy().view(np.float16).astype(np.float32)


def _decode(qtype: str, raw: np.ndarray) -> np.ndarray:
    """Rows of raw block bytes [rows, nbytes] -> float32 [rows, n] (ggml-common.h layouts)."""
    rows = raw.shape[0]
    size = {"Q8_0": 34, "Q4_0": 18, "Q4_1": 20, "Q5_0": 22}[qtype]
    b = raw.reshape(rows, -1, size)
    if qtype == "Q8_0":  # d (f16), qs[32] int8: x = d * q
        d = _f16(b[..., :2])
        return (d * b[..., 2:].view(np.int8)).reshape(rows, -1)
    if qtype in ("Q4_0", "Q4_1"):  # qs[16]: low nibbles are x[0..15], high x[16..31]
        d = _f16(b[..., :2])
        qs = b[..., 4:] if qtype == "Q4_1" else b[..., 2:]
        q = np.concatenate([qs & 0x0F, qs >> 4], axis=-1).astype(np.float32)
        if qtype == "Q4_0":
            return (d * (q - 8)).reshape(rows, -1)
        return (d * q + _f16(b[..., 2:4])).reshape(rows, -1)
    # Q5_0: d (f16), qh (u32: 5th bit of x[j] is bit j), qs[16] as in Q4_0; x = d (q - 16)
    d = _f16(b[..., :2])
    qh = b[..., 2:6].copy().view("<u4")  # [rows, blocks, 1]
    bits = (qh >> np.arange(32, dtype=np.uint32)) & 1  # [rows, blocks, 32]
    qs = b[..., 6:]
    q = np.concatenate([qs & 0x0F, qs >> 4], axis=-1).astype(np.uint32) | (bits << 4)
    return (d * (q.astype(np.float32) - 16)).reshape(rows, -1)


# ----------------------------------------------------------------------------- tests


@pytest.mark.parametrize("qtype", QUANTIZABLE)
def test_quantized_model_loads(tmp_path, model, qtype):
    config, w = model
    path = tmp_path / f"{qtype}.gguf"
    written = tg.write_gguf(path, config, w, qtype=qtype)
    cfg, got, _ = load_weights(str(path))
    assert cfg.hidden_size == 256 and set(got) == set(w)
    for name, hf in written.items():
        key, want = _canonical_of(config, name, hf)
        np.testing.assert_array_equal(got[key], want, err_msg=f"{qtype} {key}")
        if w[key].ndim == 2:
            corr = np.corrcoef(got[key].ravel(), w[key].ravel())[0, 1]
            assert corr > 0.5, (qtype, key, corr)  # a layout error gives ~0


@pytest.mark.parametrize("qtype", ["Q8_0", "Q4_0", "Q4_1", "Q5_0"])
def test_independent_block_decoders(tmp_path, model, qtype):
    config, w = model
    path = tmp_path / f"{qtype}.gguf"
    tg.write_gguf(path, config, w, qtype=qtype)
    _, got, _ = load_weights(str(path))
    n = 0
    for name, (raw, t) in _raw(path).items():
        if t.name != qtype:
            continue
        key, want = _canonical_of(config, name, _decode(qtype, raw))
        np.testing.assert_array_equal(got[key], want, err_msg=f"{qtype} {key}")
        n += 1
    assert n == 9  # embed, head and the 7 matrices of the layer


@pytest.mark.parametrize("qtype", DEQUANT_ONLY)
def test_dequantize_only_types(tmp_path, model, qtype):
    config, w = model
    block, nbytes = gguf.GGML_QUANT_SIZES[T[qtype]]
    rng = np.random.default_rng(abs(hash(qtype)) % 2**32)
    overrides, raw = {}, {}
    for name, arr in tg.hf_layout(config, w).items():
        if arr.ndim == 2:
            overrides[name] = qtype
            raw[name] = rng.integers(
                0, 256, (arr.shape[0], arr.shape[1] // block * nbytes), np.uint8
            )
    path = tmp_path / f"{qtype}.gguf"
    tg.write_gguf(path, config, w, override_types=overrides, raw_data=raw)
    with np.errstate(all="ignore"):
        _, got, _ = load_weights(str(path))
        for name, data in raw.items():
            key, want = _canonical_of(config, name, gguf.quants.dequantize(data, T[qtype]))
            np.testing.assert_array_equal(got[key], want, err_msg=f"{qtype} {key}")


@pytest.mark.parametrize("qtype", UNSUPPORTED)
def test_unsupported_types_named(tmp_path, model, qtype):
    config, w = model
    if qtype not in T.__members__:
        pytest.skip(f"gguf has no {qtype}")
    block, nbytes = gguf.GGML_QUANT_SIZES[T[qtype]]
    arr = tg.hf_layout(config, w)["blk.0.ffn_up.weight"]
    data = np.zeros((arr.shape[0], arr.shape[1] // block * nbytes), np.uint8)
    path = tmp_path / f"{qtype}.gguf"
    tg.write_gguf(
        path,
        config,
        w,
        override_types={"blk.0.ffn_up.weight": qtype},
        raw_data={"blk.0.ffn_up.weight": data},
    )
    with pytest.raises(ValueError, match=f"'blk.0.ffn_up.weight' has type {qtype}"):
        load_weights(str(path))
