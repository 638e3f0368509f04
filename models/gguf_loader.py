"""Read a LLaMA-style GGUF file (``llama``: Llama 1-3.x, Mistral; ``qwen2``) into canonical
weights, a config and a tokenizer.

Layout facts this module relies on (llama.cpp ``convert_hf_to_gguf.py`` and ``ggml``):

- A GGUF tensor of shape ``[ne0, ne1]`` (``ne0`` contiguous) is a PyTorch
  ``nn.Linear`` weight ``[out=ne1, in=ne0]``; ``gguf.GGUFReader`` exposes it as a
  NumPy array ``[ne1, ne0]`` and ``gguf.quants.dequantize`` keeps that shape. The
  canonical layout is ``y = x @ W`` with ``W [in, out]``, so every matrix is
  transposed once here.
- llama.cpp applies its "NORM" rotary embedding to adjacent pairs
  ``(x[2j], x[2j+1])``, Hugging Face's LLaMA to ``(x[j], x[j + hd/2])``
  (``rotate_half``). The converter therefore permutes the output rows of
  ``attn_q`` (with ``n_head``) and ``attn_k`` (with ``n_head_kv``)::

      w.reshape(n, 2, hd // 2, in).swapaxes(1, 2).reshape(n * hd, in)

  We undo it exactly with ``w.reshape(n, hd // 2, 2, in).swapaxes(1, 2)``, so the
  canonical weights use Hugging Face's rotary layout.
  Only ``llama`` is permuted: ``qwen2`` uses the NEOX (rotate_half) rope in llama.cpp
  and is stored in the HF layout.
- No ``output.weight`` tensor means the output head is tied to ``token_embd``.
- ``rope_freqs.weight`` [hd/2] (Llama-3.1+) divides each rotary frequency (ggml's
  ``freq_factors``): it becomes ``RopeScaling(rope_type="freq_factors")``.
"""

from __future__ import annotations

import dataclasses
import mmap
import os
from typing import Any

import numpy as np

__all__ = [
    "ARCHITECTURES",
    "read_gguf",
    "read_gguf_config",
    "permute_qk_to_gguf",
    "unpermute_qk_from_gguf",
    "gguf_metadata",
]


def _require_gguf():
    try:
        import gguf
    except ImportError as e:  # pragma: no cover - depends on the environment
        raise ImportError(
            "reading GGUF files needs the `gguf` package; install it with "
            "`pip install 'scinjax[models]'` (or `pip install gguf`)"
        ) from e
    return gguf


def permute_qk_to_gguf(w: np.ndarray, n_head: int) -> np.ndarray:
    """llama.cpp's converter permutation of a Q or K weight ``[n_head * hd, in]`` (HF layout)."""
    out = w.shape[0]
    return w.reshape(n_head, 2, out // n_head // 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


def unpermute_qk_from_gguf(w: np.ndarray, n_head: int) -> np.ndarray:
    """Inverse of :func:`permute_qk_to_gguf`: GGUF rows ``[n_head * hd, in]`` -> HF layout."""
    out = w.shape[0]
    if out % (2 * n_head):
        raise ValueError(
            f"Q/K weight with {out} rows does not split into {n_head} heads of even size"
        )
    return w.reshape(n_head, out // n_head // 2, 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


def _open(path: str):
    gguf = _require_gguf()
    if not os.path.exists(path):
        raise FileNotFoundError(f"GGUF file not found: {path}")
    if os.path.isdir(path):
        raise ValueError(f"{path} is a folder, not a GGUF file")
    try:
        reader = gguf.GGUFReader(path)
    except Exception as e:
        raise ValueError(
            f"{path}: not a readable GGUF file ({type(e).__name__}: {e}). The file is corrupt, "
            "truncated or not GGUF; download or convert it again"
        ) from e
    size = os.path.getsize(path)
    for t in reader.tensors:
        end = int(t.data_offset) + int(t.n_bytes)
        if end > size or t.data.nbytes != int(t.n_bytes):
            raise ValueError(
                f"{path}: truncated GGUF file: tensor {t.name!r} needs bytes up to {end} but the "
                f"file has {size}; download or convert it again"
            )
    return gguf, reader


def _value(reader, key: str, default: Any = None) -> Any:
    f = reader.fields.get(key)
    if f is None:
        return default
    v = f.contents()
    if isinstance(v, np.floating | float) and not isinstance(v, bool):
        # GGUF stores float32; take the shortest decimal that round-trips (1e-05, not
        # 9.99999974e-06), which is the value the converter was given.
        v = float(str(np.float32(v)))
    elif isinstance(v, np.integer):
        v = int(v)
    return v


def gguf_metadata(path: str | os.PathLike) -> dict[str, Any]:
    """All scalar and string metadata of a GGUF file (arrays left out), for inspection."""
    _, reader = _open(os.fspath(path))
    out = {}
    for k, f in reader.fields.items():
        if len(f.types) == 1 or k == "general.languages":
            try:
                out[k] = f.contents()
            except Exception:  # pragma: no cover - exotic field types
                continue
    return out


_LAYER_TENSORS = {
    "attn_norm": "attn_norm",
    "attn_q": "wq",
    "attn_k": "wk",
    "attn_v": "wv",
    "attn_output": "wo",
    "ffn_norm": "mlp_norm",
    "ffn_gate": "w_gate",
    "ffn_up": "w_up",
    "ffn_down": "w_down",
}
_BIAS_TENSORS = {"attn_q": "bq", "attn_k": "bk", "attn_v": "bv"}
_CHUNK_ELEMENTS = 1 << 20  # dequantize ~1M weights at a time (its temporaries are ~10x)


@dataclasses.dataclass(frozen=True)
class _Arch:
    """What one ``general.architecture`` means for the canonical model.

    permute_qk: llama.cpp's converter permuted the Q/K rows (its "NORM" rope);
    architectures with the NEOX rope (Qwen2) keep the HF layout.
    qkv_bias: the Q/K/V projections carry ``.bias`` tensors.
    """

    permute_qk: bool
    qkv_bias: bool


#: Supported GGUF architectures (a new family: one entry, plus its tensors if it has more).
ARCHITECTURES = {
    "llama": _Arch(permute_qk=True, qkv_bias=False),  # Llama 1/2/3.x, Mistral, SmolLM2
    "qwen2": _Arch(permute_qk=False, qkv_bias=True),  # Qwen2, Qwen2.5
}


def _shape(t) -> tuple[int, ...]:
    """NumPy shape [ne1, ne0] of a GGUF tensor (``t.shape`` is ne0-first)."""
    return tuple(int(d) for d in reversed(t.shape))


def _config_from_reader(path: str, reader, name: str | None):
    """(LlamaConfig, _Arch, {tensor name: tensor}) from metadata and tensor shapes only."""
    from .config import LlamaConfig, RopeScaling

    arch_name = _value(reader, "general.architecture")
    arch = ARCHITECTURES.get(arch_name)
    if arch is None:
        raise ValueError(
            f"{path}: unsupported architecture {arch_name!r}; scinjax models the GGUF "
            f"architectures {sorted(ARCHITECTURES)} (LLaMA-style decoders) only"
        )

    def meta(key: str, default: Any = None, *, required: bool = False):
        v = _value(reader, f"{arch_name}.{key}", default)
        if required and v is None:
            raise ValueError(f"{path}: GGUF metadata {arch_name}.{key} is missing")
        return v

    n_head = int(meta("attention.head_count", required=True))
    n_kv = int(meta("attention.head_count_kv", n_head))
    hidden = int(meta("embedding_length", required=True))
    head_dim = int(meta("attention.key_length", hidden // n_head))
    rope_dims = int(meta("rope.dimension_count", head_dim))
    if rope_dims != head_dim:
        raise ValueError(f"{path}: partial rotary (rope.dimension_count={rope_dims}) unsupported")
    tensors = {t.name: t for t in reader.tensors}
    scaling = None
    kind = meta("rope.scaling.type", "none")
    if kind == "linear":
        scaling = RopeScaling(rope_type="linear", factor=float(meta("rope.scaling.factor", 1.0)))
    elif kind not in (None, "none"):
        raise ValueError(
            f"{path}: {arch_name}.rope.scaling.type {kind!r} is not supported by scinjax models "
            "(none, linear, or per-frequency factors in rope_freqs)"
        )
    if "rope_freqs.weight" in tensors:
        if scaling is not None:
            raise ValueError(f"{path}: both rope scaling {kind!r} and rope_freqs; unsupported")
        t = tensors["rope_freqs.weight"]
        factors = np.asarray(_require_gguf().quants.dequantize(t.data, t.tensor_type))
        scaling = RopeScaling(
            rope_type="freq_factors", freq_factors=tuple(float(v) for v in factors.ravel())
        )
    if "token_embd.weight" not in tensors:
        raise ValueError(f"{path}: tensor 'token_embd.weight' is missing; is this a LLaMA GGUF?")
    vocab, width = _shape(tensors["token_embd.weight"])
    if width != hidden:
        raise ValueError(f"{path}: token_embd has width {width}, expected {hidden}")
    n_layers = int(meta("block_count", required=True))
    gate = tensors.get("blk.0.ffn_gate.weight")
    ffn = _shape(gate)[0] if gate is not None else int(meta("feed_forward_length", 0))
    moe = None
    if meta("expert_count"):  # Mixtral: `llama` with ffn_*_exps expert tensors
        from .moe_spec import MoeSpec

        exps = tensors.get("blk.0.ffn_gate_exps.weight")
        width = _shape(exps)[1] if exps is not None else ffn  # [E, I, H]
        top_k = int(meta("expert_used_count", required=True))
        moe = MoeSpec(n_experts=int(meta("expert_count")), top_k=top_k, intermediate=width)
        ffn = ffn or width
    window = meta("attention.sliding_window")
    config = LlamaConfig(
        vocab_size=int(vocab),
        hidden_size=hidden,
        intermediate_size=int(ffn),
        num_layers=n_layers,
        num_heads=n_head,
        num_kv_heads=n_kv,
        head_dim=head_dim,
        rms_norm_eps=float(meta("attention.layer_norm_rms_epsilon", 1e-5)),
        rope_theta=float(meta("rope.freq_base", 10000.0)),
        max_position=int(meta("context_length", 2048)),
        tie_embeddings="output.weight" not in tensors,
        qkv_bias=arch.qkv_bias,
        rope_scaling=scaling,
        sliding_window=None if window in (None, 0) else int(window),
        moe=moe,
        name=name or os.path.splitext(os.path.basename(path))[0],
    )
    return config, arch, tensors


def _drop_file_pages(reader) -> None:
    """Unmap the file pages read so far from this process (they stay in the page cache):
    without this the whole quantized file counts in the resident set on top of the weights."""
    mm = getattr(reader.data, "_mmap", None)
    if mm is not None and hasattr(mmap, "MADV_DONTNEED"):
        try:
            mm.madvise(mmap.MADV_DONTNEED)
        except (OSError, ValueError):  # pragma: no cover - platform dependent
            pass


def read_gguf_config(path: str | os.PathLike, *, name: str | None = None):
    """The ``LlamaConfig`` of a GGUF file from its metadata and tensor shapes (no weights read)."""
    path = os.fspath(path)
    _, reader = _open(path)
    return _config_from_reader(path, reader, name)[0]


def read_gguf(
    path: str | os.PathLike, *, name: str | None = None, dtype=np.float32, lazy: bool = False
):
    """``(LlamaConfig, weights, Tokenizer)`` of a LLaMA-style GGUF file (llama, qwen2).

    Weights are in the canonical layout (see ``models.weights``), dequantized with
    ``gguf.quants.dequantize`` one tensor at a time and stored as ``dtype``
    (float32, or bfloat16/float16 to halve the memory): F32, F16, BF16, Q4_0/1,
    Q5_0/1, Q8_0, K-quants, IQ-quants: whatever the installed ``gguf`` supports.
    With ``lazy``, the weights are `LazyArray`s read when used (the file stays open).
    """
    from .tokenizer import from_gguf_vocab
    from .weights import LazyArray, materialize

    path = os.fspath(path)
    gguf, reader = _open(path)
    config, arch, tensors = _config_from_reader(path, reader, name)
    n_layers, n_head, n_kv = config.num_layers, config.num_heads, config.num_kv_heads

    def dequantize(t, rows=slice(None)) -> np.ndarray:
        try:
            return np.asarray(gguf.quants.dequantize(t.data[rows], t.tensor_type), np.float32)
        except NotImplementedError as e:
            raise ValueError(
                f"{path}: tensor {t.name!r} has type {t.tensor_type.name}, which the installed "
                f"gguf package cannot dequantize ({e}); upgrade gguf or convert the file to a "
                "supported type (F32, F16, BF16, Q8_0, Q4_0, Q4_1, K-quants)"
            ) from e

    def load(
        tname: str, *, transpose: bool = True, heads: int | None = None, out=None
    ) -> np.ndarray:
        """Canonical array of one tensor in `dtype`: ``[out, in]`` rows dequantized a chunk
        at a time straight into place (transposed; Q/K rows un-permuted with `heads`), so
        the float32 temporaries are one chunk, not the whole tensor."""
        t = tensors.get(tname)
        if t is None:
            raise ValueError(f"{path}: tensor {tname!r} is missing; is this a LLaMA GGUF?")
        shape = _shape(t)
        if len(shape) == 1:
            w = np.asarray(dequantize(t).reshape(shape), dtype=dtype)
            if out is not None:
                out[...] = w
            return w if out is None else out
        rows = shape[0]
        dst = np.arange(rows)  # GGUF row i -> canonical row/column dst[i]
        if heads is not None:
            dst = np.argsort(unpermute_qk_from_gguf(np.arange(rows)[:, None], heads)[:, 0])
        if out is None:
            out = np.empty(shape[::-1] if transpose else shape, dtype=dtype)
        step = max(1, _CHUNK_ELEMENTS // shape[1])
        for r0 in range(0, rows, step):
            part = dequantize(t, slice(r0, r0 + step))
            if transpose:
                out[:, dst[r0 : r0 + step]] = part.T
            else:
                out[dst[r0 : r0 + step]] = part
        _drop_file_pages(reader)
        return out

    layer = {f"{g}.weight": c for g, c in _LAYER_TENSORS.items()}
    if arch.qkv_bias:
        layer |= {f"{g}.bias": c for g, c in _BIAS_TENSORS.items()}
    known = {"token_embd.weight", "output_norm.weight", "output.weight", "rope_freqs.weight"}
    if config.moe is not None:  # the expert tensors replace the dense MLP
        layer = {g: c for g, c in layer.items() if c not in ("w_gate", "w_up", "w_down")}
        exps = ("ffn_gate_inp", "ffn_gate_exps", "ffn_up_exps", "ffn_down_exps")
        known |= {f"blk.{i}.{g}.weight" for i in range(n_layers) for g in exps}
    known |= {f"blk.{i}.{g}" for i in range(n_layers) for g in layer}
    extra = sorted(set(tensors) - known)
    if extra:
        raise ValueError(
            f"{path}: tensors a {config.name or 'LLaMA'} model of this architecture does not "
            f"have: {extra[:6]}{' ...' if len(extra) > 6 else ''}; this GGUF is not supported"
        )

    def lazy_load(tname: str, *, transpose: bool = True, heads: int | None = None):
        t = tensors.get(tname)
        if t is None:
            raise ValueError(f"{path}: tensor {tname!r} is missing; is this a LLaMA GGUF?")
        shape = _shape(t)
        shape = shape[::-1] if transpose and len(shape) == 2 else shape
        return LazyArray(
            shape, dtype, lambda out: load(tname, transpose=transpose, heads=heads, out=out)
        )

    weights = {"embed": lazy_load("token_embd.weight", transpose=False)}
    for i in range(n_layers):
        for gname, cname in layer.items():
            heads = None
            if arch.permute_qk and gname == "attn_q.weight":
                heads = n_head
            elif arch.permute_qk and gname == "attn_k.weight":
                heads = n_kv
            weights[f"layers.{i}.{cname}"] = lazy_load(f"blk.{i}.{gname}", heads=heads)
    if config.moe is not None:  # read eagerly by the Mixtral MoE reader (models.moe_loader)
        from .moe_loader import read_mixtral_gguf_moe

        _, moe = read_mixtral_gguf_moe(path)
        names = ("router", "router"), ("w_gate", "experts_gate"), ("w_up", "experts_up")
        for src, dst in names + (("w_down", "experts_down"),):
            for i in range(n_layers):
                weights[f"layers.{i}.{dst}"] = np.asarray(moe[src][i], dtype=dtype)
    weights["final_norm"] = lazy_load("output_norm.weight")
    if not config.tie_embeddings:
        weights["lm_head"] = lazy_load("output.weight")
    if not lazy:
        weights = materialize(weights)

    tok_model = _value(reader, "tokenizer.ggml.model")
    if tok_model is None:
        raise ValueError(f"{path}: the GGUF has no tokenizer (tokenizer.ggml.model missing)")
    tokenizer = from_gguf_vocab(
        model=str(tok_model),
        tokens=_value(reader, "tokenizer.ggml.tokens"),
        merges=_value(reader, "tokenizer.ggml.merges"),
        token_types=_value(reader, "tokenizer.ggml.token_type"),
        scores=_value(reader, "tokenizer.ggml.scores"),
        pre=_value(reader, "tokenizer.ggml.pre"),
        bos_id=_value(reader, "tokenizer.ggml.bos_token_id"),
        eos_id=_value(reader, "tokenizer.ggml.eos_token_id"),
        unk_id=_value(reader, "tokenizer.ggml.unknown_token_id"),
        add_bos=_value(reader, "tokenizer.ggml.add_bos_token"),
        source=path,
    )
    # The parsed metadata (a NumPy view per vocabulary entry and merge: ~100 MB for a
    # 49k vocabulary) is not needed by the lazy tensors; drop it before they are read.
    reader.fields.clear()
    return config, weights, tokenizer
