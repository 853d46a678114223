"""Incremental detokenization: streamed text equals decode() and never contains half a UTF-8 character."""

from __future__ import annotations

import pytest

from pellucid.tokenizer import load_tokenizer
from pellucid.tokenizer.stream import ByteStreamDecoder, DiffStreamDecoder

TEXTS = [
    "hieroglyph \U00013000 via byte tokens",
    "emoji 😀🎉👍🏽 and 👨‍👩‍👧‍👦 family",
    "日本語のテキスト",
    "Ünïcödé façade naïve café",
    "<|im_start|>user\nhi<|im_end|> <start_of_turn>model\n",
    "plain ascii, nothing to hold back.",
]


@pytest.mark.parametrize("fixture", ["smollm2_path", "gemma3_path"])
def test_stream_equals_decode_and_never_splits_a_character(fixture, request):
    tok = load_tokenizer(request.getfixturevalue(fixture))
    for text in TEXTS:
        ids = tok.encode(text, parse_special=True)
        for skip_special in (True, False):
            stream = tok.stream_decoder(skip_special=skip_special)
            pieces = [stream.push(i) for i in ids]
            assert all("\ufffd" not in p for p in pieces), pieces
            assert "".join(pieces) + stream.flush() == tok.decode(ids, skip_special=skip_special)


def test_gemma_emoji_is_spelled_with_byte_tokens_and_held_back(gemma3_path):
    """The test above would be vacuous if no token ended mid-character; make sure one does."""
    tok = load_tokenizer(gemma3_path)
    ids = tok.encode("\U00013000", add_special=False)  # an Egyptian hieroglyph: not in the vocabulary
    assert [tok.piece(i) for i in ids] == ["<0xF0>", "<0x93>", "<0x80>", "<0x80>"]
    stream = tok.stream_decoder()
    assert [stream.push(i) for i in ids] == ["", "", "", "\U00013000"]


def test_byte_stream_decoder_holds_back_and_flushes():
    pieces = {1: b" Hi", 2: b"\xe2\x82", 3: b"\xac", 4: b" x"}
    stream = ByteStreamDecoder(pieces.__getitem__)
    assert stream.push(1) == " Hi"  # generated text continues a prompt: its leading space stays
    assert stream.push(2) == ""
    assert stream.push(3) == "\u20ac"
    assert stream.push(4) == " x"
    assert stream.push(2) == ""
    assert stream.flush() == "\ufffd"  # an unfinished character at the end becomes U+FFFD


def test_diff_stream_decoder_holds_incomplete_characters():
    table = {1: "a", 2: "\ufffd", 3: "b"}

    def decode(ids):
        # Like a byte-level decoder: id 2 alone is an incomplete character, 2 followed by 3 completes it.
        text = "".join(table[i] for i in ids)
        return text.replace("\ufffdb", "€")

    stream = DiffStreamDecoder(decode)
    assert stream.push(1) == "a"
    assert stream.push(2) == ""
    assert stream.push(3) == "€"
    assert stream.flush() == ""
