"""Pre-tokenizer regexes and the Unicode table behind them.

Their agreement with llama.cpp for every supported `tokenizer.ggml.pre` family is tested end to end in
test_tokenizer_llamacpp.py; here are the properties that need no oracle but can still fail.
"""

from __future__ import annotations

import unicodedata

import pytest

from pellucid.errors import UnsupportedError
from pellucid.tokenizer.gen_unicode_data import CATEGORY_GROUPS
from pellucid.tokenizer.pretokenize import PRE_TOKENIZERS, compile_pre_tokenizer, translate
from pellucid.tokenizer.unicode_data import RANGES, UNICODE_VERSION
from test_tokenizer_corpus import corpus


def test_unicode_table_agrees_with_pythons_unicodedata():
    """The committed table (Unicode 15.1, as llama.cpp's) against this Python's unicodedata, on every code
    point both versions assign: the group (letter, number, ...) must be the same."""
    assert UNICODE_VERSION == "15.1.0"
    group_of_category = {cat: group for group, cats in CATEGORY_GROUPS.items() for cat in cats}
    ours = {}
    for group, spans in RANGES.items():
        for item in "".join(spans).split():
            first, _, last = item.partition("-")
            for cp in range(int(first, 16), int(last or first, 16) + 1):
                ours[cp] = group
    checked = 0
    for cp in range(0x110000):
        category = unicodedata.category(chr(cp))
        if category != "Cn":
            assert ours.get(cp) == group_of_category.get(category), hex(cp)
            checked += 1
    assert checked > 250_000


def test_translate_spells_out_llamacpp_classes():
    import re

    letter = re.compile(translate(r"\p{L}+"))
    assert letter.fullmatch("Ünïcödé") and letter.fullmatch("日本語") and not letter.fullmatch("a1")
    assert re.fullmatch(translate(r"\p{Lu}"), "a")  # llama.cpp reads every \p{L?} as "any letter"
    assert re.fullmatch(translate(r"\p{N}"), "\u0663") and not re.fullmatch(translate(r"\d"), "\u0663")
    assert re.fullmatch(translate(r"\s"), "\u3000") and not re.fullmatch(translate(r"\s"), "\x1c")
    assert re.fullmatch(translate(r"[^\s\p{L}\p{N}]+"), "!\U0001f600\u0378")  # unassigned counts as "other"
    assert re.search(translate(r"\s+$"), "a \n") and not re.search(translate(r"b$"), "b\n")
    # Han: not a category but llama.cpp's unicode_cpt_is_han (Kimi K2): the CJK ideograph blocks, assigned or not
    han = re.compile(translate(r"\p{Han}+"))
    assert han.fullmatch("中文\u9fff\U00020000") and not han.search("のテ한")
    with pytest.raises(UnsupportedError):
        translate(r"\p{Greek}")


@pytest.mark.parametrize("name", sorted({f.names[0] for f in PRE_TOKENIZERS.values()}))
def test_split_loses_nothing_and_ascii_patterns_agree(name):
    """Words joined give the text back, and the small ASCII-only regexes split ASCII text exactly as the
    full Unicode ones do (they are a speed-up, not a different tokenizer)."""
    pre = compile_pre_tokenizer(PRE_TOKENIZERS[name].regexes)
    for text in corpus(n_random=150, n_prose=30, seed=99):
        words = pre.split(text)
        assert "".join(words) == text
        assert all(words)
        if text.isascii():
            full = [text[s:e] for s, e in _full_pattern_spans(pre, text)]
            assert words == full


def _full_pattern_spans(pre, text):
    from pellucid.tokenizer.pretokenize import _split_spans

    spans = [(0, len(text))]
    for pattern in pre.patterns:
        spans = _split_spans(pattern, text, spans)
    return spans


def test_smollm_split_example():
    """Digits one by one (starcoder family), then GPT-2's rules; whitespace before a word keeps one space."""
    pre = compile_pre_tokenizer(PRE_TOKENIZERS["smollm"].regexes)
    assert pre.split("Hello, world! 1234 it's   a test\n\n  x") == [
        "Hello", ",", " world", "!", " ", "1", "2", "3", "4", " it", "'s", "  ", " a", " test", "\n\n ", " x",
    ]  # fmt: skip
