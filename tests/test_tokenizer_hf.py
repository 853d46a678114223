"""Hugging Face folder tokenizers (MiniLM: BERT WordPiece) against the `tokenizers` library used directly.

The library is the reference implementation of tokenizer.json, so ids must be identical; what we add is
the interface (special-token facts, parse_special, no padding/truncation), which is what these tests pin.
"""

from __future__ import annotations

import pytest

from pellucid.errors import ModelFileError
from pellucid.tokenizer import HFTokenizer, Tokenizer, load_tokenizer

TEXTS = [
    "Hello, World!",
    "The QUICK brown fox jumps over the lazy dog.",
    "Ünïcödé façade naïve café",
    "日本語のテキスト and 中文",
    "unbelievably tokenization-heavy hyphenated-words",
    "numbers 1234567890 3.14159 -42",
    "tabs\tand\nnewlines  and   spaces",
    "a [SEP] inside [CLS] text [MASK]",
    "",
]


@pytest.fixture(scope="module")
def minilm(minilm_path):
    return load_tokenizer(minilm_path)


@pytest.fixture(scope="module")
def reference_tokenizer(minilm_path):
    from tokenizers import Tokenizer as HFLibTokenizer

    tok = HFLibTokenizer.from_file(str(minilm_path / "tokenizer.json"))
    tok.no_padding()
    tok.no_truncation()
    return tok


def test_minilm_facts(minilm):
    assert isinstance(minilm, HFTokenizer) and isinstance(minilm, Tokenizer)
    assert (minilm.kind, minilm.vocab_size) == ("wordpiece", 30522)
    # BERT has no BOS/EOS: [CLS] and [SEP] play those parts (llama.cpp does the same for BERT GGUFs).
    assert (minilm.bos_id, minilm.eos_id, minilm.pad_id, minilm.unk_id) == (101, 102, 0, 100)
    assert (minilm.add_bos, minilm.add_eos) == (True, True)
    assert minilm.eot_ids == {102}
    assert minilm.is_special(101) and not minilm.is_special(minilm.token_to_id("hello"))
    assert minilm.piece(101) == "[CLS]"
    assert minilm.token_bytes(minilm.token_to_id("##ing")) == b"ing"


def test_encode_matches_tokenizers_library(minilm, reference_tokenizer):
    """The library parses special-token text by default; our parse_special=False is its
    encode_special_tokens=True (special-token text encoded as ordinary text)."""
    for text in TEXTS:
        reference_tokenizer.encode_special_tokens = False
        assert minilm.encode(text, parse_special=True) == reference_tokenizer.encode(text).ids
        no_special = reference_tokenizer.encode(text, add_special_tokens=False).ids
        assert minilm.encode(text, add_special=False, parse_special=True) == no_special
        reference_tokenizer.encode_special_tokens = True
        assert minilm.encode(text) == reference_tokenizer.encode(text).ids


def test_cls_sep_and_lowercasing(minilm):
    ids = minilm.encode("Hello World")
    assert ids[0] == 101 and ids[-1] == 102
    assert minilm.encode("HELLO world") == ids
    assert minilm.decode(ids, skip_special=True) == "hello world"
    assert minilm.decode(ids) == "[CLS] hello world [SEP]"


def test_parse_special_controls_special_token_text(minilm):
    sep = minilm.eos_id
    assert sep in minilm.encode("a [SEP] b", add_special=False, parse_special=True)
    assert sep not in minilm.encode("a [SEP] b", add_special=False)  # "[", "sep", "]" as text


def test_no_padding_or_truncation(minilm):
    """tokenizer.json asks for padding and truncation to 128; encode returns the whole text, unpadded."""
    assert len(minilm.encode("word " * 300)) == 302
    assert minilm.encode("hi") == [101, 7632, 102]


def test_stream_decoder_matches_decode(minilm):
    ids = minilm.encode("Streaming works, piece by piece: unbelievably!")
    stream = minilm.stream_decoder()
    text = "".join(stream.push(i) for i in ids) + stream.flush()
    assert text == minilm.decode(ids, skip_special=True)


def test_folder_without_tokenizer_json_is_an_error(tmp_path):
    (tmp_path / "vocab.txt").write_text("[PAD]\n")
    with pytest.raises(ModelFileError, match=r"tokenizer\.json"):
        load_tokenizer(tmp_path)
