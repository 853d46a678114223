"""GGUF tokenizers (SmolLM2: byte-level BPE, Gemma 3: SentencePiece) against llama.cpp's reference.json.

Every comparison with llama.cpp is exact (token ids are integers; decoded text is compared as strings).
"""

from __future__ import annotations

import pytest

from pellucid.errors import ModelFileError, UnsupportedError
from pellucid.formats.gguf import GGUFFile
from pellucid.tokenizer import GGUFTokenizer, Tokenizer, load_tokenizer

REF_KEYS = {"smollm2": "smollm2-135m-instruct-q4_1", "gemma3": "gemma3-270m-q4_k_m"}


@pytest.fixture(scope="module")
def smollm2(smollm2_path):
    return load_tokenizer(smollm2_path)


@pytest.fixture(scope="module")
def gemma3(gemma3_path):
    return load_tokenizer(gemma3_path)


def _ref(reference, model):
    return reference[REF_KEYS[model]]


# -- reference.json -------------------------------------------------------------------------------------


@pytest.mark.parametrize("model", ["smollm2", "gemma3"])
def test_tokenize_cases_match_llamacpp(model, reference, request):
    tok = request.getfixturevalue(model)
    cases = _ref(reference, model)["tokenize"]
    assert len(cases) >= 20
    for case in cases:
        text = case["text"]
        assert tok.encode(text, add_special=False, parse_special=False) == case["ids_no_special"], repr(text)
        assert tok.encode(text, add_special=False, parse_special=True) == case["ids_special"], repr(text)
        assert tok.encode(text, add_special=True, parse_special=False) == case["ids_with_bos"], repr(text)
        assert tok.decode(case["ids_no_special"]) == text
        assert tok.decode(case["ids_special"]) == text  # special tokens shown as their text
        assert tok.decode(case["ids_with_bos"], skip_special=True) == text


@pytest.mark.parametrize("model", ["smollm2", "gemma3"])
def test_greedy_prompts_and_texts_match_llamacpp(model, reference, request):
    """Prompts are tokenized as llama-cpp-python's completion does (add_special=True, parse_special=True);
    greedy_text is llama.cpp's detokenization of greedy_ids."""
    tok = request.getfixturevalue(model)
    for case in _ref(reference, model)["greedy"]:
        assert tok.encode(case["prompt"], parse_special=True) == case["prompt_ids"]
        assert tok.decode(case["greedy_ids"]) == case["greedy_text"]


def test_chat_prompts_match_llamacpp(smollm2, reference):
    chats = _ref(reference, "smollm2")["chat"]
    assert chats
    for case in chats:
        assert smollm2.encode(case["prompt_text"], parse_special=True) == case["prompt_ids"]
        assert smollm2.decode(case["reply_ids"]) == case["reply"]


@pytest.mark.parametrize("model", ["smollm2", "gemma3"])
def test_perplexity_text_length_matches_llamacpp(model, reference, request):
    tok = request.getfixturevalue(model)
    ppl = _ref(reference, model)["perplexity"]
    assert len(tok.encode(ppl["text"])) == ppl["n_tokens"]


# -- vocabulary facts (checked against llama.cpp's llama_vocab_* answers for these files) ------------------


def test_smollm2_vocabulary_facts(smollm2):
    assert isinstance(smollm2, Tokenizer)
    assert (smollm2.kind, smollm2.vocab_size) == ("bpe", 49152)
    assert (smollm2.bos_id, smollm2.eos_id, smollm2.unk_id, smollm2.pad_id) == (1, 2, 0, 2)
    assert (smollm2.add_bos, smollm2.add_eos) == (False, False)
    # llama.cpp's end-of-generation set: EOS <|im_end|>, <|endoftext|> by its text, and <reponame>, which
    # it takes for a fill-in-the-middle "repo" token.
    assert smollm2.eot_ids == {0, 2, 4}
    assert smollm2.token_to_id("<|im_end|>") == 2 and smollm2.token_to_id("no such token") is None
    world = smollm2.token_to_id("Ġworld")
    assert smollm2.piece(2) == "<|im_end|>" and smollm2.piece(world) == "Ġworld"
    assert smollm2.token_bytes(world) == b" world"
    assert smollm2.token_bytes(2) == b"<|im_end|>"
    assert smollm2.is_special(1) and not smollm2.is_special(world)
    for bad in (-1, 49152):
        with pytest.raises(IndexError):
            smollm2.piece(bad)
        with pytest.raises(IndexError):
            smollm2.decode([bad])


def test_gemma3_vocabulary_facts(gemma3):
    assert (gemma3.kind, gemma3.vocab_size) == ("spm", 262144)
    assert (gemma3.bos_id, gemma3.eos_id, gemma3.unk_id, gemma3.pad_id) == (2, 1, 3, 0)
    assert (gemma3.add_bos, gemma3.add_eos) == (True, False)
    # <eos>, <end_of_turn>, and </s>: llama.cpp ends generation on "</s>" by its text (and makes it a control
    # token, so it is no longer cut out of plain text as Gemma's other HTML tags are).
    assert gemma3.eot_ids == {1, 106, 212}
    assert gemma3.piece(248) == "<0x0A>" and gemma3.token_bytes(248) == b"\n"
    assert gemma3.token_bytes(gemma3.token_to_id("▁the")) == b" the"
    assert gemma3.is_special(106) and gemma3.is_special(6)  # <end_of_turn>, <unused0>
    assert not gemma3.is_special(248) and not gemma3.is_special(108)  # byte token, user-defined "\n\n"


def test_user_defined_tokens_are_always_split_control_tokens_only_on_request(gemma3):
    """llama.cpp's tokenizer_st_partition: USER_DEFINED tokens (Gemma's "\\n\\n", "<b>") are cut out even
    with parse_special=False; CONTROL tokens (<start_of_turn>) only with parse_special=True."""
    nl2, bold, start = gemma3.token_to_id("\n\n"), gemma3.token_to_id("<b>"), gemma3.token_to_id("<start_of_turn>")
    plain = gemma3.encode("a\n\n<b>x<start_of_turn>", add_special=False)
    assert nl2 in plain and bold in plain and start not in plain
    parsed = gemma3.encode("a\n\n<b>x<start_of_turn>", add_special=False, parse_special=True)
    assert parsed[-1] == start


def test_longest_special_token_wins_even_when_not_leftmost(smollm2):
    """llama.cpp cuts special tokens longest first, not leftmost first: with tokens "ab" (2 chars) and
    "bcd" (3 chars), "abcd" becomes a + <bcd>, not <ab> + cd."""
    from pellucid.tokenizer.special import SpecialToken, SpecialTokenSplitter

    splitter = SpecialTokenSplitter([SpecialToken("ab", 100), SpecialToken("bcd", 200)])
    assert splitter.split("abcd") == ["a", 200]
    assert splitter.split("xabyabcd") == ["x", 100, "ya", 200]
    assert splitter.split("") == [] and splitter.split("zzz") == ["zzz"]
    stripping = SpecialTokenSplitter([SpecialToken("<x>", 7, lstrip=True, rstrip=True)])
    assert stripping.split("a \t<x>\n b") == ["a", 7, "b"]


def test_decode_skip_special(smollm2, gemma3):
    ids = smollm2.encode("<|im_start|>user\nhi<|im_end|>", parse_special=True)
    assert smollm2.decode(ids) == "<|im_start|>user\nhi<|im_end|>"
    assert smollm2.decode(ids, skip_special=True) == "user\nhi"
    ids = gemma3.encode("<start_of_turn>user\nhi<end_of_turn>", parse_special=True)
    assert ids[0] == gemma3.bos_id
    assert gemma3.decode(ids) == "<bos><start_of_turn>user\nhi<end_of_turn>"
    assert gemma3.decode(ids, skip_special=True) == "user\nhi"


def test_clean_up_spaces_follows_llamacpp():
    """llama_detokenize's clean-up (used by pre-tokenizers such as gpt-2; verified against llama.cpp on the
    corpus in test_tokenizer_llamacpp.py), including its in-place quirk on " ' ' "."""
    from pellucid.tokenizer.gguf_tokenizer import clean_up_spaces

    assert clean_up_spaces(b"Hello , world ! ok ? yes .") == b"Hello, world! ok? yes."
    assert clean_up_spaces(b"it 's I 'm we 're they 've") == b"it's I'm we're they've"
    assert clean_up_spaces(b"don 't he 'd we 'll") == b"don 't he 'd we 'll"
    assert clean_up_spaces(b"a ' b") == b"a'b"
    assert clean_up_spaces(b"a ' ' b") == b"a'' b"
    assert clean_up_spaces(b"") == b"" and clean_up_spaces(b" ") == b" "


# -- loading ----------------------------------------------------------------------------------------------


def test_load_tokenizer_accepts_resolved_model_path_and_open_file(smollm2_path):
    from pellucid import store

    by_name = load_tokenizer(store.resolve(str(smollm2_path)))
    by_path = load_tokenizer(str(smollm2_path))
    with GGUFFile(smollm2_path) as gguf:
        by_file = load_tokenizer(gguf)
        assert gguf._mmap is not None  # an open file passed in stays open
    text = "Tokenizers: 3 ways to load."
    assert by_name.encode(text) == by_path.encode(text) == by_file.encode(text)


def test_unknown_pre_tokenizer_is_an_error(smollm2_path):
    """An error, not a fallback: a wrong pre-tokenizer feeds the model token sequences it never saw."""
    with GGUFFile(smollm2_path) as gguf:
        gguf.metadata["tokenizer.ggml.pre"] = "no-such-pre"
        with pytest.raises(UnsupportedError, match="no-such-pre"):
            GGUFTokenizer.from_gguf(gguf)


def test_missing_pre_tokenizer_warns_and_uses_default(smollm2_path):
    with GGUFFile(smollm2_path) as gguf:
        del gguf.metadata["tokenizer.ggml.pre"]
        with pytest.warns(UserWarning, match="pre-tokenizer"):
            tok = GGUFTokenizer.from_gguf(gguf)
    assert tok.encode("ok 123", add_special=False)


def test_unsupported_tokenizer_model_and_missing_vocab_are_errors(smollm2_path, tmp_path):
    with GGUFFile(smollm2_path) as gguf:
        gguf.metadata["tokenizer.ggml.model"] = "rwkv"
        with pytest.raises(UnsupportedError, match="rwkv"):
            GGUFTokenizer.from_gguf(gguf)
        del gguf.metadata["tokenizer.ggml.model"]
        with pytest.raises(ModelFileError, match="no tokenizer"):
            GGUFTokenizer.from_gguf(gguf)
    with pytest.raises(ModelFileError, match="no such file"):
        load_tokenizer(tmp_path / "missing.gguf")
