"""Hugging Face folder tokenizers (MiniLM: BERT WordPiece) against the `tokenizers` library used directly.

The library is the reference implementation of tokenizer.json, so ids must be identical; what we add is
the interface (special-token facts, parse_special, no padding/truncation), which is what these tests pin.
"""

from __future__ import annotations

import json

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


# -- end of generation -------------------------------------------------------------------------------------------
# transformers and vLLM stop on the tokenizer's EOS and on generation_config.json's `eos_token_id` (config.json's
# when there is no generation config); pellucid also stops on the special tokens llama.cpp ends generation on by
# their text, minus llama.cpp's exceptions. Small folders: a word-level tokenizer with each family's tokens.

LLAMA31 = ["<|begin_of_text|>", "<|end_of_text|>", "<|start_header_id|>", "<|end_header_id|>", "<|eom_id|>",
           "<|eot_id|>", "<|python_tag|>"]  # fmt: skip
GPT_OSS = ["<|startoftext|>", "<|endoftext|>", "<|return|>", "<|constrain|>", "<|channel|>", "<|start|>", "<|end|>",
           "<|message|>", "<|call|>"]  # fmt: skip
GEMMA3 = ["<pad>", "<eos>", "<bos>", "<start_of_turn>", "<end_of_turn>"]
PHI35 = ["<s>", "</s>", "<|endoftext|>", "<|assistant|>", "<|end|>", "<|user|>"]
QWEN25 = ["<|endoftext|>", "<|im_start|>", "<|im_end|>", "<|fim_pad|>"]
CUSTOM = ["<|bos|>", "<|stop|>", "<|done|>", "<|im_end|>"]


def write_hf_folder(folder, specials, eos, *, text_tokens=(), generation_eos=None, config_eos=None):
    """A tokenizer.json (word-level) with `specials` as special added tokens and `text_tokens` as normal added
    tokens, a tokenizer_config.json naming `eos`, and the eos_token_id of generation_config.json / config.json
    (given by token text; None leaves the file out)."""
    from tokenizers import AddedToken
    from tokenizers import Tokenizer as HFLibTokenizer
    from tokenizers.models import WordLevel

    tok = HFLibTokenizer(WordLevel({"<unk>": 0, "hello": 1}, unk_token="<unk>"))
    tok.add_special_tokens([AddedToken(t, special=True) for t in specials])
    tok.add_tokens([AddedToken(t, special=False) for t in text_tokens])
    tok.save(str(folder / "tokenizer.json"))
    (folder / "tokenizer_config.json").write_text(json.dumps({"eos_token": eos}))
    for name, value in (("generation_config.json", generation_eos), ("config.json", config_eos)):
        if value is not None:
            ids = [tok.token_to_id(t) for t in value] if isinstance(value, list) else tok.token_to_id(value)
            (folder / name).write_text(json.dumps({"eos_token_id": ids}))
    return folder


@pytest.mark.parametrize(
    "specials, eos, kwargs, expected",
    [
        pytest.param(
            LLAMA31, "<|eot_id|>", {"generation_eos": ["<|end_of_text|>", "<|eom_id|>", "<|eot_id|>"]},
            {"<|end_of_text|>", "<|eom_id|>", "<|eot_id|>"}, id="llama-3.1",
        ),
        pytest.param(LLAMA31, "<|eot_id|>", {}, {"<|end_of_text|>", "<|eom_id|>", "<|eot_id|>"}, id="llama-3.1-bare"),
        pytest.param(
            GPT_OSS, "<|return|>", {"generation_eos": ["<|return|>", "<|endoftext|>", "<|call|>"]},
            {"<|return|>", "<|endoftext|>", "<|call|>"}, id="gpt-oss",  # not <|end|>: the reply goes on after it
        ),
        pytest.param(GPT_OSS, "<|return|>", {}, {"<|return|>", "<|endoftext|>", "<|call|>"}, id="gpt-oss-bare"),
        pytest.param(
            GEMMA3, "<eos>", {"text_tokens": ["</s>"], "generation_eos": ["<eos>", "<end_of_turn>"]},
            {"<eos>", "<end_of_turn>"}, id="gemma-3",  # its "</s>" is a normal token: an HTML tag
        ),
        pytest.param(
            PHI35, "<|endoftext|>", {"config_eos": "<|endoftext|>"}, {"</s>", "<|endoftext|>", "<|end|>"}, id="phi-3.5"
        ),
        pytest.param(
            QWEN25, "<|im_end|>", {"generation_eos": ["<|im_end|>", "<|endoftext|>"]},
            {"<|im_end|>", "<|endoftext|>"}, id="qwen-2.5",
        ),
        pytest.param(CUSTOM, "<|stop|>", {"config_eos": "<|done|>"}, {"<|stop|>", "<|done|>", "<|im_end|>"},
                     id="config-json"),
        pytest.param(
            CUSTOM, "<|stop|>", {"config_eos": "<|done|>", "generation_eos": "<|bos|>"},
            {"<|stop|>", "<|bos|>", "<|im_end|>"}, id="generation-config-wins",
        ),
    ],
)  # fmt: skip
def test_end_of_generation_tokens(tmp_path, specials, eos, kwargs, expected):
    tok = load_tokenizer(write_hf_folder(tmp_path, specials, eos, **kwargs))
    assert {tok.piece(i) for i in tok.eot_ids} == expected
