"""A large, varied corpus for tokenizer tests, and the checks that need no external oracle on it.

`corpus()` mixes English prose and code (Python's own documentation, shipped with every Python as
pydoc_data), text in many scripts, and random strings built to hit tokenizer edge cases: runs of spaces,
tabs and newlines, digits, contractions, special-token text, byte-token look-alikes, unusual whitespace,
unassigned and private-use code points. It is deterministic for a given Python version.

Checks here: the fast path (word cache, SentencePiece word cutting) gives exactly the reference path's ids,
decode(encode(text)) gives the text back, and SmolLM2's byte-level BPE agrees with the `tokenizers` library
configured the way the Hugging Face original is (an independent implementation of the same algorithm).
"""

from __future__ import annotations

import random

import pytest

MULTILINGUAL = [
    "日本語のテキストを正しく分割できますか？東京は日本の首都です。",
    "中文分词测试：我爱北京天安门，天安门上太阳升。",
    "한국어 텍스트도 잘 처리해야 합니다. 서울은 대한민국의 수도입니다.",
    "Привет, мир! Как дела? Москва — столица России.",
    "Ελληνικά: Καλημέρα κόσμε, η Αθήνα είναι η πρωτεύουσα.",
    "مرحبا بالعالم. القاهرة هي عاصمة مصر.",
    "שלום עולם! ירושלים.",
    "हिन्दी में परीक्षण: नमस्ते दुनिया। दिल्ली भारत की राजधानी है।",
    "ภาษาไทย ทดสอบการตัดคำ สวัสดีชาวโลก",
    "Tiếng Việt: Xin chào thế giới! Hà Nội là thủ đô.",
    "Türkçe: İstanbul'da ılık bir gün; ÇĞİÖŞÜ çğıöşü.",
    "Deutsch: Größenwahn, Straße, Übermäßig – „Anführungszeichen“.",
    "Français : « Où est la bibliothèque ? » — déjà vu, naïveté, cœur.",
    "Español: ¿Dónde está el baño? ¡Olé! Año, niño, pingüino.",
    "Polski: Zażółć gęślą jaźń. Čeština: Příliš žluťoučký kůň.",
    "emoji: 😀😃😄 👍🏽👍🏿 👨‍👩‍👧‍👦 🇫🇷🇯🇵 ❤️ ✨🎉",
    "math: ∀x∈ℝ, x² ≥ 0; ∑ᵢ aᵢ = ∫₀¹ f(x) dx ≈ 3.14159… ≠ ∞",
    "combining: e\u0301 a\u0308 n\u0303 Z\u0335\u0321a\u0337\u0322l\u0336g\u0338o\u0334",
    "zero width: a\u200bb\u200cc\u200dd\ufeffe \u2060f",
    "odd spaces: a\u00a0b\u3000c\u2002d\u2009e\u202ff\u205fg\u1680h\u2028i\u2029j\x85k",
    "odd spaces next to symbols: x \u2009< y \u3000> z\u2002+ \u00a0\u00a0= \u2028(\u205f)",
    "controls: a\x00b\x01c\x07d\x1be\x7ff\x1cg\x1dh\x1ei\x1fj",
    "unassigned and private use: \u0378\u0379 \U000e0080 \ue000\uf8ff \U000f0000",
    "fullwidth: ＡＢＣ１２３！？ ｶﾀｶﾅ",
    "digits of other scripts: ٠١٢٣٤٥٦٧٨٩ ०१२३ ๑๒๓ ²³¹ ½ ⅓ Ⅻ ①②③",
    "Ünïcödé façade naïve café résumé coöperate",
    "\t\ttabs\tand  spaces   \n\n\n   trailing   ",
    "'s 't 're 've 'm 'll 'd 'S 'T 'RE 'Ve 'LL don't I'm you're they've we'll he'd",
    "<|im_start|>system\nYou are helpful.<|im_end|>\n<|im_start|>user\nhi<|im_end|>\n<|im_start|>assistant\n",
    "<start_of_turn>user\nhello<end_of_turn>\n<start_of_turn>model\n",
    "<bos><eos><pad><unk><mask>[multimodal]<start_of_image><end_of_image>",
    "<b>bold</b> <i>it</i> <table><tr><td>x</td></tr></table> </s><s> <h1>T</h1>",
    "byte look-alikes: <0x41><0x0A><0xFF> <0x> <0xZZ> ▁▁▁ Ġ Ċ ĠĠ",
    "<|endoftext|><|im_start|><|im_end|><repo_name><reponame><file_sep><filename><gh_stars>",
    "URL: https://example.com/path?q=1&r=2#frag email: a.b+c@d-e.org 192.168.0.1",
    "code: for (int i = 0; i < n; ++i) { x[i] = y[i] * 2; } // comment\n#include <stdio.h>",
    "    def f(self, *args, **kwargs):\n        return {k: v for k, v in kwargs.items()}\n",
    "numbers 0 00 000 0000 12345678901234567890 3.14159 -42 1e10 1,000,000 0x1F 1_000",
    "aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa",
    "!!!???...,,,;;;:::---___***+++===<<<>>>|||~~~^^^$$$%%%&&&@@@###",
    "\n",
    " ",
    "  ",
    "\r\n\r\n",
    "x",
]

# Pieces the random strings are made of: each hits a different rule somewhere.
POOL = [
    " ", "  ", "   ", "    ", "\t", "\n", "\n\n", "\r\n", "\u00a0", "\u3000", "\u2009", "\x85", "\v", "\f",
    "a", "b", "Z", "the", " the", "Hello", " world", "ing", "tion", "é", "ß", "İ", "ı", "ñ", "ø",
    "0", "1", "7", "42", "123", "2024", "3.14", "١", "²", "½", "Ⅻ",
    "'", "'s", "'t", "'re", "'ll", "'D", "\"", "`", ".", ",", "!", "?", ";", ":", "-", "--", "_", "/", "\\",
    "(", ")", "[", "]", "{", "}", "<", ">", "<<", ">>", "=", "==", "+", "*", "&", "|", "^", "~", "$", "%", "#", "@",
    "日", "本", "語", "中", "文", "한", "국", "ш", "я", "α", "ω", "ا", "ب", "ה", "क", "ก",
    "😀", "👍", "🏽", "\u200d", "\u200b", "\ufeff", "\u0301", "\u0308", "\u0378", "\ue000", "\U000e0080", "\U0010fffd",
    "▁", "Ġ", "Ċ", "<0x41>", "<0x0A>", "<0x",
    "<|im_start|>", "<|im_end|>", "<|endoftext|>", "<start_of_turn>", "<end_of_turn>", "<bos>", "<eos>",
    "<unk>", "<pad>", "<mask>", "[multimodal]", "<b>", "</b>", "<s>", "</s>", "<table>", "<td>", ">\u2581</",
    "<unused0>", "<unused99>", "<reponame>",
]  # fmt: skip


def corpus(n_random: int = 400, n_prose: int = 150, seed: int = 1234) -> list[str]:
    """Deterministic test texts (same list for the same Python version)."""
    import pydoc_data.topics

    rng = random.Random(seed)
    docs = "\n\n".join(pydoc_data.topics.topics[k] for k in sorted(pydoc_data.topics.topics))
    texts = list(MULTILINGUAL)
    for _ in range(n_prose):
        start = rng.randrange(len(docs) - 2000)
        texts.append(docs[start : start + rng.randint(20, 1500)])
    for _ in range(n_random):
        texts.append("".join(rng.choice(POOL) for _ in range(rng.randint(1, 40))))
    return texts


@pytest.fixture(scope="module")
def texts() -> list[str]:
    return corpus()


@pytest.fixture(scope="module")
def smollm2(smollm2_path):
    from pellucid.tokenizer import load_tokenizer

    return load_tokenizer(smollm2_path)


@pytest.fixture(scope="module")
def gemma3(gemma3_path):
    from pellucid.tokenizer import load_tokenizer

    return load_tokenizer(gemma3_path)


@pytest.mark.parametrize("model", ["smollm2", "gemma3"])
def test_fast_path_matches_reference_path(model, texts, request):
    """The word cache and SentencePiece's word cutting are optimizations: ids must not change at all."""
    tok = request.getfixturevalue(model)
    mismatches = []
    for text in texts:
        for add_special, parse_special in ((False, False), (False, True), (True, False)):
            fast = tok.encode(text, add_special=add_special, parse_special=parse_special)
            ref = tok.encode_reference(text, add_special=add_special, parse_special=parse_special)
            if fast != ref:
                mismatches.append((text, add_special, parse_special))
    assert not mismatches, f"{len(mismatches)} texts tokenize differently on the fast path: {mismatches[:3]}"


@pytest.mark.parametrize("model", ["smollm2", "gemma3"])
def test_decode_inverts_encode(model, texts, request):
    """Decoding the plain encoding gives the text back exactly (with special tokens parsed and shown, too),
    except for bytes the vocabulary cannot spell: SmolLM2 lacks 21 of the 256 byte tokens (0x04, 0x1d, ...,
    which llama.cpp then drops), while Gemma has byte fallback for all but writes spaces as '▁', so a '▁'
    in the text comes back as a space."""
    tok = request.getfixturevalue(model)
    missing = _unspellable_bytes(tok)
    assert len(missing) == {"smollm2": 21, "gemma3": 0}[model]
    for text in texts:
        data = text.encode("utf-8")
        expected = bytes(b for b in data if b not in missing).decode("utf-8", "replace")
        if tok.kind == "spm":
            expected = expected.replace("\u2581", " ")
        assert tok.decode(tok.encode(text, add_special=False)) == expected
        assert tok.decode(tok.encode(text, add_special=False, parse_special=True)) == expected
        assert tok.decode(tok.encode(text), skip_special=True) == expected


def _unspellable_bytes(tok) -> set[int]:
    if tok.kind == "bpe":
        from pellucid.tokenizer.bpe import byte_to_unicode

        return {b for b, ch in byte_to_unicode().items() if tok.token_to_id(ch) is None}
    return {b for b in range(256) if tok.token_to_id(f"<0x{b:02X}>") is None}


def test_smollm2_matches_hf_tokenizers_library(smollm2, texts):
    """An independent oracle: the `tokenizers` library set up as SmolLM2's tokenizer.json is (BPE on the
    same vocab and merges, digits split one by one, GPT-2 byte-level pre-tokenization, special tokens)."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers

    vocab = smollm2.vocab
    hf = Tokenizer(
        models.BPE(
            vocab=dict(vocab.token_to_id),
            merges=[tuple(m.split(" ", 1)) for m in vocab.merges],
            ignore_merges=False,
        )
    )
    hf.pre_tokenizer = pre_tokenizers.Sequence(
        [pre_tokenizers.Digits(individual_digits=True), pre_tokenizers.ByteLevel(add_prefix_space=False)]
    )
    hf.decoder = decoders.ByteLevel()
    special = [vocab.tokens[i] for i in range(vocab.n_tokens) if smollm2.is_special(i)]
    hf.add_special_tokens(special)
    for text in texts:
        assert smollm2.encode(text, add_special=False, parse_special=True) == hf.encode(text).ids, repr(text)
