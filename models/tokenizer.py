"""Tokenizers for the loaders: built from a GGUF's own vocabulary, or a HF ``tokenizer.json``.

A GGUF with ``tokenizer.ggml.model == "gpt2"`` holds a byte-level BPE vocabulary
(``tokenizer.ggml.tokens``, already in the GPT-2 byte-to-unicode alphabet) and its
merges (``tokenizer.ggml.merges``, ``"a b"`` strings, rank = position). llama.cpp
splits text with a list of regular expressions chosen by ``tokenizer.ggml.pre``,
applied one after the other (each one splits the pieces the previous one left,
keeping the unmatched gaps as pieces of their own), then runs the BPE merges on
each piece. We rebuild exactly that with the ``tokenizers`` library: one
``Split(behavior="isolated")`` per llama.cpp regex, then ``ByteLevel`` without its
own regex, then ``BPE`` with the GGUF's vocabulary and merges.

Tokens whose ``tokenizer.ggml.token_type`` is CONTROL (3) or USER_DEFINED (4)
are registered as special tokens, so ``"<|im_start|>"`` in a text becomes one id,
as llama.cpp does when it parses special tokens.

``tokenizer.ggml.model == "llama"`` (SentencePiece with byte fallback, as in the
LLaMA-2 GGUFs) is rebuilt the way Hugging Face converts such a vocabulary: BPE
with merges ranked by the score of the merged piece, ``▁`` for spaces, a ``▁``
prefix, byte fallback to ``<0xXX>`` tokens.
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

__all__ = ["Tokenizer", "from_gguf_vocab", "from_hf_folder", "PRE_TOKENIZER_REGEXES"]

# GPT-2's pre-tokenizer regex as llama.cpp writes it (llama-vocab.cpp).
_GPT2 = r"'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)"
_LLAMA3 = (
    r"(?:'[sS]|'[tT]|'[rR][eE]|'[vV][eE]|'[mM]|'[lL][lL]|'[dD])|[^\r\n\p{L}\p{N}]?\p{L}+"
    r"|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"
)
_QWEN2 = (
    r"(?:'[sS]|'[tT]|'[rR][eE]|'[vV][eE]|'[mM]|'[lL][lL]|'[dD])|[^\r\n\p{L}\p{N}]?\p{L}+"
    r"|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"
)

# Mistral's Tekken (tokenizer.json of Mistral-Nemo); llama.cpp rewrites it without the
# \p{Lu}/\p{Ll} classes its regex engine lacks, `tokenizers` runs the original.
_TEKKEN = (
    r"[^\r\n\p{L}\p{N}]?[\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}]*[\p{Ll}\p{Lm}\p{Lo}\p{M}]+"
    r"|[^\r\n\p{L}\p{N}]?[\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}]+[\p{Ll}\p{Lm}\p{Lo}\p{M}]*"
    r"|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n/]*|\s*[\r\n]+|\s+(?!\S)|\s+"
)

#: ``tokenizer.ggml.pre`` -> the regexes llama.cpp applies, in order (llama-vocab.cpp).
PRE_TOKENIZER_REGEXES: dict[str, tuple[str, ...]] = {
    "default": (_GPT2,),
    "gpt2": (_GPT2,),
    "gpt-2": (_GPT2,),
    "mpt": (_GPT2,),
    "olmo": (_GPT2,),
    "jais": (_GPT2,),
    "smollm": (r"\p{N}", _GPT2),
    "starcoder": (r"\p{N}", _GPT2),
    "refact": (r"\p{N}", _GPT2),
    "command-r": (r"\p{N}", _GPT2),
    "codeshell": (r"\p{N}", _GPT2),
    "exaone": (r"\p{N}", _GPT2),
    "minerva-7b": (r"\p{N}", _GPT2),
    "llama-bpe": (_LLAMA3,),
    "llama3": (_LLAMA3,),
    "smaug-bpe": (_LLAMA3,),
    "qwen2": (_QWEN2,),
    "tekken": (_TEKKEN,),
}

# Pre-tokenizers whose BPE takes a whole pre-token found in the vocabulary as one token
# before any merge (HF ``ignore_merges``; llama.cpp ``tokenizer_ignore_merges``).
_IGNORE_MERGES = frozenset({"llama-bpe", "llama3", "smaug-bpe", "tekken"})
# Unicode normalization the model's tokenizer.json applies before pre-tokenizing.
_NORMALIZER = {"qwen2": "NFC"}
# Names that are not llama.cpp pre-tokenizers, with what to do instead.
_NOT_PRE = {
    "mistral": "Mistral 7B v0.1-v0.3 GGUFs carry a SentencePiece vocabulary "
    "(tokenizer.ggml.model 'llama', supported); Tekken vocabularies use pre 'tekken'",
}
_CONTROL, _USER_DEFINED = 3, 4


def _require_tokenizers():
    try:
        import tokenizers
    except ImportError as e:  # pragma: no cover - depends on the environment
        raise ImportError(
            "the `tokenizers` package is needed to tokenize text; install it with "
            "`pip install 'scinjax[models]'` (or `pip install tokenizers`)"
        ) from e
    return tokenizers


@dataclass(eq=False)
class Tokenizer:
    """Text <-> token ids.

    ``encode(text)`` returns the ids llama.cpp (GGUF) or Hugging Face
    (``tokenizer.json``) would produce, with ``bos_id`` prepended iff ``add_bos``
    (GGUF: ``tokenizer.ggml.add_bos_token``). ``decode(ids)`` is its inverse on
    ids that ``encode`` produced.
    """

    backend: Any  # tokenizers.Tokenizer
    bos_id: int | None
    eos_id: int | None
    add_bos: bool = False
    source: str = ""
    special_ids: frozenset[int] = field(default_factory=frozenset)

    @property
    def vocab_size(self) -> int:
        return self.backend.get_vocab_size(with_added_tokens=True)

    def encode(self, text: str, *, add_bos: bool | None = None) -> list[int]:
        """Token ids of ``text`` (``add_bos=None``: the model's own default)."""
        if not isinstance(text, str):
            raise TypeError(f"encode expects a str, got {type(text).__name__}")
        ids = list(self.backend.encode(text, add_special_tokens=False).ids)
        add = self.add_bos if add_bos is None else add_bos
        if add and self.bos_id is not None:
            ids = [self.bos_id] + ids
        return ids

    def decode(self, ids: Sequence[int], *, skip_special: bool = False) -> str:
        """Text of ``ids`` (special tokens kept unless ``skip_special``)."""
        ids = [int(i) for i in ids]
        return self.backend.decode(ids, skip_special_tokens=skip_special)

    def token(self, token_id: int) -> str | None:
        """The vocabulary entry (in the tokenizer's own alphabet) of one id."""
        return self.backend.id_to_token(int(token_id))

    def __repr__(self) -> str:
        return (
            f"Tokenizer(vocab={self.vocab_size}, bos_id={self.bos_id}, eos_id={self.eos_id}, "
            f"add_bos={self.add_bos}, source={self.source!r})"
        )


def _split_merge(m: str) -> tuple[str, str]:
    parts = m.split(" ")
    if len(parts) != 2:
        # A merge of tokens that contain a literal space (not in byte-level vocabularies).
        a, _, b = m.partition(" ")
        return a, b
    return parts[0], parts[1]


def _bpe_gpt2(tokens, merges, token_types, pre: str):
    tk = _require_tokenizers()
    if pre in _NOT_PRE:
        raise ValueError(f"unsupported tokenizer.ggml.pre {pre!r}: {_NOT_PRE[pre]}")
    if pre not in PRE_TOKENIZER_REGEXES:
        raise ValueError(
            f"unsupported tokenizer.ggml.pre {pre!r} (llama.cpp pre-tokenizer); supported: "
            f"{sorted(PRE_TOKENIZER_REGEXES)}. Add its regexes to "
            "scinjax.models.tokenizer.PRE_TOKENIZER_REGEXES"
        )
    vocab = {t: i for i, t in enumerate(tokens)}
    model = tk.models.BPE(
        vocab=vocab,
        merges=[_split_merge(m) for m in merges],
        ignore_merges=pre in _IGNORE_MERGES,
    )
    tok = tk.Tokenizer(model)
    if pre in _NORMALIZER:
        tok.normalizer = getattr(tk.normalizers, _NORMALIZER[pre])()
    splits = [
        tk.pre_tokenizers.Split(tk.Regex(rx), behavior="isolated", invert=False)
        for rx in PRE_TOKENIZER_REGEXES[pre]
    ]
    tok.pre_tokenizer = tk.pre_tokenizers.Sequence(
        [*splits, tk.pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)]
    )
    tok.decoder = tk.decoders.ByteLevel()
    return tok


def _spm_merges(tokens, scores) -> list[tuple[str, str]]:
    """Merges of a SentencePiece vocabulary, ranked as HF's converter ranks them.

    Every pair (a, b) with a, b and a+b in the vocabulary is a merge; merges are
    ordered by the score of a+b (higher first), then by the ids of a and b.
    """
    vocab = {t: i for i, t in enumerate(tokens)}
    out = []
    for merged, mid in vocab.items():
        for k in range(1, len(merged)):
            a, b = merged[:k], merged[k:]
            if a in vocab and b in vocab:
                out.append((-float(scores[mid]), vocab[a], vocab[b], a, b))
    out.sort()
    return [(a, b) for *_, a, b in out]


def _bpe_spm(tokens, scores, unk_id):
    tk = _require_tokenizers()
    vocab = {t: i for i, t in enumerate(tokens)}
    model = tk.models.BPE(
        vocab=vocab,
        merges=_spm_merges(tokens, scores),
        unk_token=tokens[unk_id] if unk_id is not None else None,
        byte_fallback=True,
        fuse_unk=True,
    )
    tok = tk.Tokenizer(model)
    tok.normalizer = tk.normalizers.Sequence(
        [tk.normalizers.Prepend("▁"), tk.normalizers.Replace(" ", "▁")]
    )
    tok.decoder = tk.decoders.Sequence(
        [
            tk.decoders.Replace("▁", " "),
            tk.decoders.ByteFallback(),
            tk.decoders.Fuse(),
            tk.decoders.Strip(" ", 1, 0),
        ]
    )
    return tok


def from_gguf_vocab(
    *,
    model: str,
    tokens: Sequence[str],
    merges: Sequence[str] | None = None,
    token_types: Sequence[int] | None = None,
    scores: Sequence[float] | None = None,
    pre: str | None = None,
    bos_id: int | None = None,
    eos_id: int | None = None,
    unk_id: int | None = None,
    add_bos: bool | None = None,
    source: str = "",
) -> Tokenizer:
    """Build the tokenizer llama.cpp uses from a GGUF's ``tokenizer.ggml.*`` values.

    ``add_bos=None`` means the llama.cpp default for ``model``: no BOS for
    ``gpt2`` vocabularies, BOS for ``llama`` (SentencePiece) ones.
    """
    tokens = list(tokens)
    types = list(token_types) if token_types is not None else [1] * len(tokens)
    if model == "gpt2":
        if merges is None:
            raise ValueError(f"{source}: a gpt2 (BPE) vocabulary needs tokenizer.ggml.merges")
        backend = _bpe_gpt2(tokens, list(merges), types, pre or "default")
        default_bos = False
    elif model == "llama":
        if scores is None:
            raise ValueError(f"{source}: a llama (SentencePiece) vocabulary needs scores")
        backend = _bpe_spm(tokens, list(scores), unk_id)
        default_bos = True
    else:
        raise ValueError(
            f"{source}: unsupported tokenizer.ggml.model {model!r}; supported: 'gpt2' "
            "(byte-level BPE) and 'llama' (SentencePiece)"
        )
    tk = _require_tokenizers()
    special = [
        tk.AddedToken(tokens[i], special=True, normalized=False)
        for i, t in enumerate(types)
        if t in (_CONTROL, _USER_DEFINED)
    ]
    if special:
        backend.add_special_tokens(special)
    special_ids = frozenset(i for i, t in enumerate(types) if t in (_CONTROL, _USER_DEFINED))
    return Tokenizer(
        backend=backend,
        bos_id=bos_id,
        eos_id=eos_id,
        add_bos=default_bos if add_bos is None else bool(add_bos),
        source=source,
        special_ids=special_ids,
    )


def from_hf_folder(folder: str | os.PathLike, config: dict | None = None) -> Tokenizer:
    """The tokenizer of a Hugging Face folder (``tokenizer.json`` [+ ``tokenizer_config.json``]).

    ``add_bos`` follows ``tokenizer_config.json``'s ``add_bos_token`` when present,
    else whatever the ``tokenizer.json`` post-processor does.
    """
    tk = _require_tokenizers()
    folder = os.fspath(folder)
    path = os.path.join(folder, "tokenizer.json")
    if not os.path.isfile(path):
        raise FileNotFoundError(
            f"{folder}: no tokenizer.json; a Hugging Face model folder needs config.json, "
            "*.safetensors and tokenizer.json"
        )
    try:
        backend = tk.Tokenizer.from_file(path)
    except Exception as e:
        raise ValueError(f"{path}: not a valid tokenizer.json ({e})") from e
    config = dict(config or {})
    tcfg: dict = {}
    tcfg_path = os.path.join(folder, "tokenizer_config.json")
    if os.path.isfile(tcfg_path):
        with open(tcfg_path, encoding="utf-8") as f:
            tcfg = json.load(f)

    def _tok_id(key: str) -> int | None:
        v = config.get(f"{key}_id")
        if isinstance(v, list):
            v = v[0] if v else None
        if v is None:
            t = tcfg.get(key)
            if isinstance(t, dict):
                t = t.get("content")
            if isinstance(t, str):
                v = backend.token_to_id(t)
        return None if v is None else int(v)

    bos_id, eos_id = _tok_id("bos_token"), _tok_id("eos_token")
    if "add_bos_token" in tcfg:
        add_bos = bool(tcfg["add_bos_token"])
    else:
        probe = backend.encode("a", add_special_tokens=True).ids
        add_bos = bos_id is not None and bool(probe) and probe[0] == bos_id
    return Tokenizer(
        backend=backend,
        bos_id=bos_id,
        eos_id=eos_id,
        add_bos=add_bos,
        source=folder,
        special_ids=frozenset(
            k for k, v in backend.get_added_tokens_decoder().items() if v.special
        ),
    )
