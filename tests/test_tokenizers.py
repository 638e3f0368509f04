"""GGUF-vocabulary tokenizers equal the `tokenizers` library run from the equivalent tokenizer.json.

For each supported pre-tokenizer a small byte-level BPE vocabulary is trained
(with `tokenizers`, on a mixed-script corpus), written out the way a GGUF holds
it (token list, ``"a b"`` merges, CONTROL token types) and rebuilt with
``from_gguf_vocab(pre=...)``. The reference is a `tokenizers.Tokenizer` built
from a ``tokenizer.json`` as the model families publish it: Llama-3 and Qwen2's
``(?i:'s|'t|...)`` split regex (written differently from llama.cpp's, which the
loader uses), Qwen2's NFC normalizer, Llama-3's ``ignore_merges``, SmolLM2's
``Digits(individual_digits)`` + GPT-2 ``ByteLevel``, GPT-2's ``ByteLevel`` regex,
Mistral-Nemo's Tekken regex. Both must give the same ids on fixed adversarial
strings and on random ones (digits, whitespace runs, CJK, emoji, special tokens,
mixed scripts, decomposed accents); ``FUZZ`` random strings per pre-tokenizer.
"""

from __future__ import annotations

import json
import random

import pytest

tk = pytest.importorskip("tokenizers")
from scinjax.models.tokenizer import from_gguf_vocab  # noqa: E402

FUZZ = 400

# Published split regexes (tokenizer.json of Meta-Llama-3-8B, Qwen2.5-7B, Mistral-Nemo).
LLAMA3_JSON = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}"
    r"| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"
)
QWEN2_JSON = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}"
    r"| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"
)
TEKKEN_JSON = (
    r"[^\r\n\p{L}\p{N}]?[\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}]*[\p{Ll}\p{Lm}\p{Lo}\p{M}]+"
    r"|[^\r\n\p{L}\p{N}]?[\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}]+[\p{Ll}\p{Lm}\p{Lo}\p{M}]*"
    r"|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n/]*|\s*[\r\n]+|\s+(?!\S)|\s+"
)
SPECIALS = ["<|begin_of_text|>", "<|eot_id|>", "<|im_start|>", "<|endoftext|>"]


def _reference_parts(pre: str):
    """(normalizer, pre_tokenizer, ignore_merges) of the published tokenizer.json."""
    pt, n = tk.pre_tokenizers, tk.normalizers
    byte_level = pt.ByteLevel(add_prefix_space=False, use_regex=False)

    def split(rx):
        return pt.Sequence([pt.Split(tk.Regex(rx), behavior="isolated"), byte_level])

    if pre == "llama-bpe":
        return None, split(LLAMA3_JSON), True
    if pre == "qwen2":
        return n.NFC(), split(QWEN2_JSON), False
    if pre == "tekken":
        return None, split(TEKKEN_JSON), True
    if pre == "smollm":
        digits = pt.Digits(individual_digits=True)
        return None, pt.Sequence([digits, pt.ByteLevel(add_prefix_space=False)]), False
    assert pre == "gpt2"
    return None, pt.ByteLevel(add_prefix_space=False, use_regex=True), False


CORPUS = [
    "The quick brown fox jumps over the lazy dog. It's 2024; we'll pay $1,234.56 (or 99%).",
    "Don't STOP: I'M here, YOU'LL see, they'd've gone. camelCaseWords and HTTPServer.",
    "def f(x):\n    return x**2  # comment\n\n\tindent\r\nwindows line\n",
    "東京は日本の首都です。北京是中国的首都。서울은 한국의 수도입니다.",
    "Привет, как дела? Γειά σου κόσμε! مرحبا بالعالم हिन्दी भाषा",
    "emoji 🙂🙂 👍🏽 👨‍👩‍👧 🇫🇷 ✓ ★ …",
    "numbers 1 12 123 1234 12345 3.14159 0x1F 1e-9 ½ ² ٣ ४",
    "café naïve résumé Ünïcödé façade — “quotes” «guillemets»",
] * 3


# Whole words added to the vocabulary with no merges leading to them: only a BPE with
# ignore_merges (Llama-3, Tekken) emits them as one token.
EXTRA_WORDS = ["Ġleading", "Ġtrailing", "Ġcomment", "frag", "ĠSTOP"]


@pytest.fixture(scope="module", params=["llama-bpe", "qwen2", "tekken", "smollm", "gpt2"])
def pair(request):
    """(pre, ours, reference) for one pre-tokenizer, sharing a vocabulary trained here."""
    pre = request.param
    norm, pre_tok, ignore = _reference_parts(pre)
    trainer_tok = tk.Tokenizer(tk.models.BPE())
    trainer_tok.pre_tokenizer = pre_tok
    trainer = tk.trainers.BpeTrainer(
        vocab_size=700,
        special_tokens=SPECIALS,
        initial_alphabet=tk.pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    trainer_tok.train_from_iterator(CORPUS, trainer)
    model = json.loads(trainer_tok.to_str())["model"]
    vocab = dict(model["vocab"])
    for word in EXTRA_WORDS:
        vocab.setdefault(word, len(vocab))
    merges = [tuple(m.split(" ")) if isinstance(m, str) else tuple(m) for m in model["merges"]]
    # The reference: what a tokenizer.json with this model, normalizer and pre-tokenizer gives.
    ref = tk.Tokenizer(tk.models.BPE(vocab=vocab, merges=merges, ignore_merges=ignore))
    if norm is not None:
        ref.normalizer = norm
    ref.pre_tokenizer = pre_tok
    ref.decoder = tk.decoders.ByteLevel()
    ref.add_special_tokens([tk.AddedToken(t, special=True, normalized=False) for t in SPECIALS])
    # Ours: the same vocabulary as GGUF metadata holds it.
    tokens = [None] * len(vocab)
    for t, i in vocab.items():
        tokens[i] = t
    types = [3 if t in SPECIALS else 1 for t in tokens]
    ours = from_gguf_vocab(
        model="gpt2",
        tokens=tokens,
        merges=[" ".join(m) for m in merges],
        token_types=types,
        pre=pre,
    )
    return pre, ours, ref


ADVERSARIAL = [
    "",
    " ",
    "   leading and trailing   ",
    "a leading comment STOP frag",
    "\n\n\n",
    "\t \t\n \r\n\r\n  x",
    "a\u00a0b\u3000c\u2009d",
    "1234567890 00000 1,000,000 3.0e10",
    "I'M YOU'LL he'S we'Ve it'd 's 'll",
    "東京タワー 北京烤鸭 한국어 テスト",
    "👨‍👩‍👧‍👦 🏳️‍🌈 👍🏿👍 🙂🙂🙂",
    "<|im_start|>user\nhi<|im_end|>",
    "<|begin_of_text|><|begin_of_text|>x<|eot_id|>",
    "text<|endoftext|>more<|endoftext|>",
    "e\u0301 cafe\u0301 A\u030a n\u0303",  # decomposed accents (NFC changes them)
    "Ωmega ΣΊΣΥΦΟΣ ǅemal İstanbul ß ẞ",
    "mixedРусскийEnglish中文123🙂",
    "http://x.y/z?a=1&b=2#frag //comment /* c */",
    "((([[[{{{}}}]]])))///\\\\\\",
]

_POOLS = [
    list("0123456789"),
    [" ", "  ", "\t", "\n", "\r\n", "\u00a0", "\u3000", "   \n "],
    list("東京北京日本中国的首都한국어テスト"),
    ["🙂", "👍🏽", "👨‍👩‍👧", "🇫🇷", "✓", "…"],
    list("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ"),
    list("Приветмирأهلاनमस्तेΓειάçéñüß"),
    ["'s", "'T", "'re", "'LL", "'d", "'", '"'],
    list(".,;:!?()[]{}<>/\\-_=+*&^%$#@~`|"),
    SPECIALS + ["<|im_end|>"],
    ["e\u0301", "A\u030a", "\u0301"],
]


def _random_strings(n: int, seed: int) -> list[str]:
    rng = random.Random(seed)
    out = []
    for _ in range(n):
        parts = []
        for _ in range(rng.randint(1, 12)):
            pool = rng.choice(_POOLS)
            parts.append("".join(rng.choice(pool) for _ in range(rng.randint(1, 4))))
        out.append("".join(parts))
    return out


def test_adversarial_strings_match(pair):
    pre, ours, ref = pair
    for text in ADVERSARIAL:
        want = ref.encode(text, add_special_tokens=False).ids
        assert ours.encode(text, add_bos=False) == want, (pre, text)


def test_fuzz_matches(pair):
    pre, ours, ref = pair
    texts = _random_strings(FUZZ, seed=sum(map(ord, pre)))
    bad = [
        t
        for t in texts
        if ours.encode(t, add_bos=False) != ref.encode(t, add_special_tokens=False).ids
    ]
    assert not bad, (pre, len(bad), bad[:3])


def test_round_trip(pair):
    """Byte-level vocabularies decode back to the text (NFC-normalized for Qwen2)."""
    import unicodedata

    pre, ours, _ = pair
    for text in ADVERSARIAL + _random_strings(50, seed=1):
        want = unicodedata.normalize("NFC", text) if pre == "qwen2" else text
        assert ours.decode(ours.encode(text, add_bos=False)) == want


def test_mistral_pre_named():
    with pytest.raises(ValueError, match="'mistral'.*SentencePiece"):
        from_gguf_vocab(model="gpt2", tokens=["a"], merges=[], pre="mistral")
