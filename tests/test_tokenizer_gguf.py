"""GGUF tokenizers (SmolLM2: byte-level BPE, Gemma 3: SentencePiece) against llama.cpp's reference.json, and
the end-of-generation tokens of each dense family on small vocabularies written here.

Every comparison with llama.cpp is exact (token ids are integers; decoded text is compared as strings).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

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
        assert gguf.parts[0]._mmap is not None  # an open file passed in stays open
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


# -- end of generation: llama.cpp's EOG set on a small vocabulary of each family ---------------------------------
# llama_vocab::impl::load (src/llama-vocab.cpp) ends generation on the EOS/EOT/EOM ids of the metadata, on the
# fill-in-the-middle pad/repo/separator tokens, and on tokens by their text (<|eot_id|>, <|im_end|>, ...), except
# gpt-oss's <|end|> (which closes a message, not the reply) and a </s> that is ordinary text (Gemma 4). Each
# vocabulary below holds a family's special tokens around three ordinary ones; `eog` is what llama.cpp answers
# for it (llama_vocab_is_eog, llama-cpp-python 0.3.36; re-check with `python tests/test_tokenizer_gguf.py PY`
# where PY is a Python with llama-cpp-python).

BPE_BASE = ["a", "b", "ab"]  # byte-level BPE: three ordinary tokens and the merge "a b"
SPM_BASE = ["<unk>", "<0x0A>", "▁a", "a"]  # SentencePiece: the unknown token, a byte token and two pieces


@dataclass(frozen=True)
class FamilyVocab:
    model: str  # tokenizer.ggml.model: "gpt2" (byte-level BPE) or "llama" (SentencePiece)
    pre: str  # tokenizer.ggml.pre (BPE only)
    specials: tuple[str, ...]  # control tokens, after the base tokens
    ids: dict[str, str]  # tokenizer.ggml.<key>_token_id, given by token text
    eog: frozenset[str]  # the tokens llama.cpp ends generation on
    name: str = ""  # general.name (llama.cpp applies Phi-3's whitespace rules by name)
    mistyped: tuple[str, ...] = ()  # specials the file types as normal text (a conversion bug llama.cpp repairs)

    @property
    def tokens(self) -> list[str]:
        return (BPE_BASE if self.model == "gpt2" else SPM_BASE) + list(self.specials)


LLAMA3_SPECIALS = ("<|begin_of_text|>", "<|end_of_text|>", "<|start_header_id|>", "<|end_header_id|>")
FAMILY_VOCABS = {
    "llama-3.1-instruct": FamilyVocab(
        "gpt2",
        "llama-bpe",
        (*LLAMA3_SPECIALS, "<|eom_id|>", "<|eot_id|>", "<|python_tag|>"),
        {"bos": "<|begin_of_text|>", "eos": "<|eot_id|>"},
        frozenset({"<|end_of_text|>", "<|eom_id|>", "<|eot_id|>"}),
    ),
    "qwen2.5-instruct": FamilyVocab(
        "gpt2",
        "qwen2",
        ("<|endoftext|>", "<|im_start|>", "<|im_end|>", "<|fim_prefix|>", "<|fim_middle|>", "<|fim_suffix|>",
         "<|fim_pad|>", "<|repo_name|>", "<|file_sep|>", "<tool_call>", "</tool_call>"),
        {"bos": "<|endoftext|>", "eos": "<|im_end|>", "padding": "<|endoftext|>"},
        # the fill-in-the-middle pad, repo and file-separator tokens end generation too
        frozenset({"<|endoftext|>", "<|im_end|>", "<|fim_pad|>", "<|repo_name|>", "<|file_sep|>"}),
    ),
    "smollm3": FamilyVocab(
        "gpt2",
        "llama-bpe",
        (*LLAMA3_SPECIALS, "<|im_start|>", "<|im_end|>", "<think>", "</think>"),
        {"bos": "<|begin_of_text|>", "eos": "<|im_end|>"},
        frozenset({"<|end_of_text|>", "<|im_end|>"}),
        mistyped=("<|end_of_text|>",),
    ),
    "gemma-2-it": FamilyVocab(
        "llama",
        "",
        ("<pad>", "<eos>", "<bos>", "<mask>", "<start_of_turn>", "<end_of_turn>"),
        {"bos": "<bos>", "eos": "<eos>", "unknown": "<unk>", "padding": "<pad>"},
        frozenset({"<eos>", "<end_of_turn>"}),
    ),
    "phi-3.5-mini-instruct": FamilyVocab(
        "llama",
        "",
        ("<s>", "</s>", "<|endoftext|>", "<|assistant|>", "<|end|>", "<|user|>", "<|system|>"),
        {"bos": "<s>", "eos": "<|endoftext|>"},
        frozenset({"</s>", "<|endoftext|>", "<|end|>"}),
        name="Phi 3.5 Mini Instruct",
    ),
    "granite-3.3-instruct": FamilyVocab(
        "gpt2",
        "refact",
        ("<|end_of_text|>", "<fim_prefix>", "<fim_middle>", "<fim_suffix>", "<fim_pad>", "<filename>",
         "<reponame>", "<|start_of_role|>", "<|end_of_role|>", "<|tool_call|>"),
        {"bos": "<|end_of_text|>", "eos": "<|end_of_text|>"},
        frozenset({"<|end_of_text|>", "<fim_pad>", "<reponame>"}),
    ),
    "gpt-oss": FamilyVocab(
        "gpt2",
        "gpt-4o",
        ("<|startoftext|>", "<|endoftext|>", "<|return|>", "<|constrain|>", "<|channel|>", "<|start|>", "<|end|>",
         "<|message|>", "<|call|>"),
        {"bos": "<|startoftext|>", "eos": "<|return|>", "padding": "<|endoftext|>"},
        frozenset({"<|endoftext|>", "<|return|>", "<|call|>"}),  # not <|end|>: the reply goes on after it
    ),
    "deepseek-r1": FamilyVocab(
        "gpt2",
        "deepseek-v3",
        ("<｜begin▁of▁sentence｜>", "<｜end▁of▁sentence｜>", "<｜User｜>", "<｜Assistant｜>", "<think>", "</think>",
         "<｜tool▁calls▁begin｜>", "<｜tool▁calls▁end｜>"),
        {"bos": "<｜begin▁of▁sentence｜>", "eos": "<｜end▁of▁sentence｜>"},
        frozenset({"<｜end▁of▁sentence｜>"}),
    ),
    "mistral-v3": FamilyVocab(
        "llama",
        "",
        ("<s>", "</s>", "[INST]", "[/INST]", "[TOOL_CALLS]", "[AVAILABLE_TOOLS]", "[/AVAILABLE_TOOLS]"),
        {"bos": "<s>", "eos": "</s>"},
        frozenset({"</s>"}),
    ),
    "mistral-nemo": FamilyVocab(
        "gpt2",
        "tekken",
        ("<unk>", "<s>", "</s>", "[INST]", "[/INST]", "[TOOL_CALLS]"),
        {"bos": "<s>", "eos": "</s>", "unknown": "<unk>"},
        frozenset({"</s>"}),
    ),
    # ids named only by metadata: whatever their text, EOS, EOT and EOM end generation
    "metadata-ids": FamilyVocab(
        "gpt2",
        "llama-bpe",
        ("<|bos|>", "<|stop|>", "<|turn_done|>", "<|msg_done|>"),
        {"bos": "<|bos|>", "eos": "<|stop|>", "eot": "<|turn_done|>", "eom": "<|msg_done|>"},
        frozenset({"<|stop|>", "<|turn_done|>", "<|msg_done|>"}),
    ),
    # Gemma 4: its </s> is ordinary text, so it does not end generation
    "gemma-4-like": FamilyVocab(
        "llama",
        "",
        ("<pad>", "<eos>", "<bos>", "</s>", "<|turn>", "<turn|>", "<|tool_response>"),
        {"bos": "<bos>", "eos": "<eos>", "padding": "<pad>"},
        frozenset({"<eos>", "<turn|>", "<|tool_response>"}),
    ),
}  # fmt: skip


def write_vocab_gguf(path: Path, vocab: FamilyVocab) -> Path:
    """A GGUF file holding only `vocab` (and the few hyper-parameters llama.cpp reads before it)."""
    from gguf import GGUFWriter, TokenType

    tokens = vocab.tokens
    types = [
        TokenType.CONTROL
        if t in vocab.specials and t not in vocab.mistyped
        else TokenType.UNKNOWN
        if t == "<unk>"
        else TokenType.BYTE
        if t.startswith("<0x")
        else TokenType.NORMAL
        for t in tokens
    ]
    writer = GGUFWriter(str(path), "llama")
    writer.add_context_length(64)
    writer.add_embedding_length(8)
    writer.add_block_count(1)
    writer.add_feed_forward_length(16)
    writer.add_head_count(1)
    writer.add_layer_norm_rms_eps(1e-5)
    if vocab.name:
        writer.add_name(vocab.name)
    writer.add_tokenizer_model(vocab.model)
    if vocab.model == "gpt2":
        writer.add_tokenizer_pre(vocab.pre)
        writer.add_token_merges(["a b"])
    else:
        writer.add_token_scores([0.0] * len(tokens))
    writer.add_token_list(tokens)
    writer.add_token_types(types)
    for key, text in vocab.ids.items():
        writer.add_uint32(f"tokenizer.ggml.{key}_token_id", tokens.index(text))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return path


@pytest.mark.parametrize("family", sorted(FAMILY_VOCABS))
def test_end_of_generation_tokens_follow_llamacpp(family, tmp_path):
    vocab = FAMILY_VOCABS[family]
    tok = load_tokenizer(write_vocab_gguf(tmp_path / f"{family}.gguf", vocab))
    assert {tok.piece(i) for i in tok.eot_ids} == vocab.eog
    # they are control tokens (llama.cpp makes them so even when the file says otherwise), so they never show in
    # streamed text
    assert all(tok.is_special(i) for i in tok.eot_ids)
    if family == "gpt-oss":  # <|end|> is rendered as text, like <|channel|> and <|message|>
        assert not tok.is_special(tok.token_to_id("<|end|>"))


def _llama_cpp_eog(python: str) -> None:
    """Print, for each vocabulary above, the tokens llama.cpp ends generation on (run by `python` with
    llama-cpp-python), next to what FAMILY_VOCABS says."""
    import json
    import subprocess
    import tempfile

    script = (
        "import json, sys, llama_cpp\n"
        "out = {}\n"
        "for path in sys.argv[1:]:\n"
        "    params = llama_cpp.llama_model_default_params(); params.vocab_only = True\n"
        "    model = llama_cpp.llama_model_load_from_file(path.encode(), params)\n"
        "    vocab = llama_cpp.llama_model_get_vocab(model)\n"
        "    n = llama_cpp.llama_vocab_n_tokens(vocab)\n"
        "    out[path] = [i for i in range(n) if llama_cpp.llama_vocab_is_eog(vocab, i)]\n"
        "print(json.dumps(out))\n"
    )
    with tempfile.TemporaryDirectory() as tmp:
        paths = {name: str(write_vocab_gguf(Path(tmp) / f"{name}.gguf", v)) for name, v in FAMILY_VOCABS.items()}
        run = subprocess.run([python, "-c", script, *paths.values()], capture_output=True, text=True, check=True)
    eog = json.loads(run.stdout.strip().splitlines()[-1])
    for name, vocab in FAMILY_VOCABS.items():
        got = {vocab.tokens[i] for i in eog[paths[name]]}
        print(f"{'ok' if got == vocab.eog else 'DIFFERENT':9} {name}: llama.cpp {sorted(got)}")


if __name__ == "__main__":
    import sys

    _llama_cpp_eog(sys.argv[1])
