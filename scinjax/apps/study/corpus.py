"""Texts and scoring windows of the study.

Texts: the default English prose shipped with CPython (``pydoc_data.topics``), a
UTF-8 file (``--text``), or one field of a JSON-lines file (``--jsonl --field``).
Windows follow ``llama-perplexity``: the token stream is cut into
non-overlapping windows of ``ctx`` tokens, and only the second half of each
window is scored, so every scored token sees at least ``ctx/2`` tokens of context.
"""

from __future__ import annotations

import dataclasses
import json
import os
import sys
from collections.abc import Sequence

import numpy as np

__all__ = [
    "Corpus",
    "ScoringWindows",
    "default_corpus",
    "pydoc_prose",
    "read_jsonl",
    "read_text_file",
    "scoring_windows",
    "check_length",
]


@dataclasses.dataclass(frozen=True, kw_only=True)
class Corpus:
    """A text to score and where it came from (shown in the table and JSON)."""

    text: str
    source: str


def pydoc_prose() -> str:
    """English prose shipped with CPython: ``pydoc_data.topics``, code and headings removed.

    Topics in sorted order; a paragraph (blank-line separated) is kept when none
    of its lines is indented (code, grammar) and it is not a heading or its
    underline; its lines are joined with single spaces.
    """
    from pydoc_data.topics import topics

    paragraphs = []
    for name in sorted(topics):
        for para in topics[name].split("\n\n"):
            lines = [ln for ln in para.split("\n") if ln.strip()]
            if not lines or any(ln[:1].isspace() for ln in lines):
                continue
            if len(lines) == 2 and set(lines[1].strip()) <= set("*=-~^"):
                continue  # heading + underline
            if all(set(ln.strip()) <= set("*=-~^") for ln in lines):
                continue
            text = " ".join(ln.strip() for ln in lines)
            if len(text.split()) >= 8:  # sentences, not labels
                paragraphs.append(text)
    return "\n\n".join(paragraphs)


def default_corpus() -> Corpus:
    return Corpus(
        text=pydoc_prose(), source="pydoc_data.topics (CPython " + sys.version.split()[0] + ")"
    )


def _read_utf8(path: str | os.PathLike, what: str) -> str:
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise ValueError(f"{what} {path!r}: no such file")
    with open(path, "rb") as f:
        raw = f.read()
    if b"\x00" in raw:
        raise ValueError(
            f"{what} {path!r} looks binary (it holds NUL bytes); give a UTF-8 text file"
        )
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError as err:
        raise ValueError(
            f"{what} {path!r} is not UTF-8 (byte {err.start}: {raw[err.start : err.start + 1]!r}); "
            "convert it, e.g. `iconv -t UTF-8`"
        ) from None


def read_text_file(path: str | os.PathLike) -> Corpus:
    """A UTF-8 text file (ValueError naming the file if it is missing, binary or not UTF-8)."""
    text = _read_utf8(path, "--text")
    if not text.strip():
        raise ValueError(f"--text {os.fspath(path)!r} is empty")
    return Corpus(text=text, source=os.path.basename(os.fspath(path)))


def read_jsonl(path: str | os.PathLike, field: str = "text") -> Corpus:
    """The string ``field`` of every JSON object of a JSON-lines file, joined by blank lines."""
    raw = _read_utf8(path, "--jsonl")
    parts = []
    for number, line in enumerate(raw.splitlines(), 1):
        if not line.strip():
            continue
        try:
            obj = json.loads(line)
        except json.JSONDecodeError as err:
            raise ValueError(f"--jsonl {os.fspath(path)!r} line {number}: {err.msg}") from None
        if not isinstance(obj, dict) or field not in obj:
            raise ValueError(
                f"--jsonl {os.fspath(path)!r} line {number} has no field {field!r}; "
                "choose the field with --field"
            )
        if not isinstance(obj[field], str):
            raise ValueError(
                f"--jsonl {os.fspath(path)!r} line {number}: field {field!r} is "
                f"{type(obj[field]).__name__}, not a string"
            )
        parts.append(obj[field])
    if not parts:
        raise ValueError(f"--jsonl {os.fspath(path)!r} holds no records")
    return Corpus(text="\n\n".join(parts), source=f"{os.path.basename(os.fspath(path))}:{field}")


@dataclasses.dataclass(frozen=True, kw_only=True)
class ScoringWindows:
    """Token windows ``ids`` int32 ``[W, ctx]``; positions ``first .. ctx-2`` are scored.

    Position ``j`` predicts token ``j + 1``, so each window scores ``ctx - 1 - first``
    tokens, each with at least ``first + 1 >= ctx/2`` tokens of context.
    """

    ids: np.ndarray
    first: int

    @property
    def ctx(self) -> int:
        return int(self.ids.shape[1])

    @property
    def scored_per_window(self) -> int:
        return self.ctx - 1 - self.first

    @property
    def scored_tokens(self) -> int:
        return self.scored_per_window * int(self.ids.shape[0])


def _window_count(ctx: int, tokens: int | None) -> int | None:
    per = ctx - 1 - ctx // 2
    return None if tokens is None else -(-tokens // per)


def check_length(n_chars_or_tokens: int, *, ctx: int, tokens: int | None, unit: str) -> None:
    """ValueError when a text of this many tokens (or UTF-8 bytes, an upper bound on the
    tokens of a byte-level tokenizer) cannot fill one window of ``ctx`` tokens."""
    if ctx < 4:
        raise ValueError(f"--ctx must be >= 4 (half of it is context), got {ctx}")
    if tokens is not None and tokens < 1:
        raise ValueError(f"--tokens must be >= 1, got {tokens}")
    if n_chars_or_tokens < ctx:
        raise ValueError(
            f"the text has {n_chars_or_tokens} {unit}, fewer than one window of --ctx {ctx} "
            "tokens; pass a longer text or a smaller --ctx"
        )


def scoring_windows(ids: Sequence[int], *, ctx: int, tokens: int | None = None) -> ScoringWindows:
    """Non-overlapping windows of ``ctx`` tokens from the start of ``ids``.

    ``tokens``: the budget of scored tokens: windows are added until it is met or the
    text ends (None: every whole window of the text). A final partial window is dropped.
    """
    ids = np.asarray(ids, dtype=np.int32)
    check_length(int(ids.shape[0]), ctx=ctx, tokens=tokens, unit="tokens")
    available = ids.shape[0] // ctx
    wanted = _window_count(ctx, tokens)
    n = available if wanted is None else min(wanted, available)
    return ScoringWindows(ids=ids[: n * ctx].reshape(n, ctx), first=ctx // 2)
