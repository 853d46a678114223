"""Kimi K2's pre-tokenizer (`tokenizer.ggml.pre` "kimi-k2") against llama.cpp, on a multilingual corpus.

Kimi K2's vocabulary is tiktoken's (163,840 byte-level BPE tokens, merges rebuilt by llama.cpp's converter), and
llama.cpp splits its text with a hand-written matcher (unicode.cpp, unicode_regex_split_custom_kimi_k2): runs of
Han ideographs, words of other letters with an optional leading character and English contraction, digits in
threes, punctuation runs, newlines and spaces. No Kimi K2 tokenizer can be downloaded here, so the fixture is a
small byte-level BPE vocabulary (all 256 bytes, ~1,200 merges learned by the `tokenizers` library from the corpus
below: CJK, Cyrillic, Arabic, digits, contractions) with Kimi K2's special tokens, written into a vocabulary-only
GGUF with pre "kimi-k2" (tests/data/kimi_k2_vocab.gguf, metadata otherwise as the zoo's deepseek2 file).
llama.cpp's ids for every text (llama-cpp-python 0.3.36, vocab_only) are in tests/data/kimi_k2_llamacpp.json.gz.
Tolerance: none, ids and decoded text must be identical. Regenerate (llama-cpp-python 0.3.36 in some Python,
gguf-py and tokenizers here):

    PYTHONPATH=src:tests .venv/bin/python tests/test_tokenizer_kimi_k2.py /path/to/python-with-llama-cpp
"""

from __future__ import annotations

import gzip
import json
from pathlib import Path

import pytest

from pellucid.formats.gguf import GGUFFile
from pellucid.tokenizer import GGUFTokenizer
from pellucid.tokenizer.pretokenize import PRE_TOKENIZERS, compile_pre_tokenizer

DATA = Path(__file__).parent / "data"
VOCAB = DATA / "kimi_k2_vocab.gguf"
EXPECTED = DATA / "kimi_k2_llamacpp.json.gz"
# Kimi K2's special tokens (its tokenizer_config.json), at the end of the vocabulary as there
SPECIAL = ["[BOS]", "[EOS]", "<|im_end|>", "<|im_user|>", "<|im_assistant|>", "<|im_system|>", "<|im_middle|>"]
SPECIAL += ["<|tool_calls_section_begin|>", "<|tool_call_begin|>", "<|tool_call_argument_begin|>", "[EOT]"]
N_MERGES = 1200


@pytest.fixture(scope="module")
def expected() -> dict:
    with gzip.open(EXPECTED, "rt", encoding="utf-8") as f:
        return json.load(f)


@pytest.fixture(scope="module")
def kimi() -> GGUFTokenizer:
    with GGUFFile(VOCAB) as gguf:
        return GGUFTokenizer.from_gguf(gguf)


def test_encode_matches_llamacpp(kimi, expected):
    assert kimi.vocab.pre == "kimi-k2"
    for text, (plain, special) in zip(expected["texts"], expected["ids"]):
        assert kimi.encode(text, add_special=False) == plain, repr(text)
        assert kimi.encode(text, add_special=False, parse_special=True) == (special or plain), repr(text)
        assert kimi.encode_reference(text, add_special=False) == plain, repr(text)


def test_decode_matches_llamacpp(kimi, expected):
    for ids, text in expected["detok"]:
        assert kimi.decode(ids) == text, ids


def test_words_are_split_as_llamacpp_splits_them():
    """What distinguishes K2's split (llama.cpp's matcher) from its neighbours': Han runs stand alone, even
    inside a word of other letters; other letters (kana, Hangul, Latin) join words with their leading space or
    punctuation, without a case split; contractions stick to words in any case; digits go in threes."""
    split = compile_pre_tokenizer(PRE_TOKENIZERS["kimi-k2"].regexes).split
    assert split("abc中文def 日本語のテキスト") == ["abc", "中文", "def", " ", "日本語", "のテキスト"]
    assert split("HelloWorld, DON'T we'Ll") == ["HelloWorld", ",", " DON'T", " we'Ll"]
    assert split("1234567 x\n\n  y") == ["123", "456", "7", " x", "\n\n", " ", " y"]


# -- regenerating the fixture -----------------------------------------------------------------------------------

_ORACLE = r"""
import ctypes, json, sys
import llama_cpp
job = json.load(open(sys.argv[1]))
m = llama_cpp.Llama(model_path=job["path"], vocab_only=True, verbose=False)
vocab = m._model.vocab
def detok(ids):
    arr = (llama_cpp.llama_token * max(1, len(ids)))(*ids)
    buf = ctypes.create_string_buffer(1 << 16)
    n = llama_cpp.llama_detokenize(vocab, arr, len(ids), buf, 1 << 16, False, True)
    return buf.raw[:n].decode("utf-8", "replace")
ids = [[m.tokenize(t.encode(), add_bos=False, special=False), m.tokenize(t.encode(), add_bos=False, special=True)]
       for t in job["texts"]]
json.dump({"ids": ids, "detok": [[s, detok(s)] for s in job["seqs"]]}, open(sys.argv[2], "w"))
"""


def _texts() -> list[str]:
    from test_tokenizer_corpus import corpus

    extra = [
        "中文English混合text，日本語とEnglish、한국어와 English.",
        "HelloWorld camelCase XMLHttpRequest iPhone McDonald's",
        "I'M YOU'RE THEY'VE we'Ll he'D it'S x'y 'tis rock'n'roll",
        "1 12 123 1234 12345 123456 1234567 ١٢٣٤ 一二三 3.14159 1,000,000",
        "<|im_user|>user<|im_middle|>你好，Kimi！<|im_end|><|im_assistant|>assistant<|im_middle|>",
        "𠀀𠀁 𪜀 丽丸 鿿 㐀㐁 \U0002b820",
    ]
    return corpus(n_random=300, n_prose=30, seed=2025) + extra


def _train_vocab(texts: list[str]) -> tuple[list[str], list[str]]:
    """Byte-level BPE (GPT-2's byte characters), every byte a token, merges learned from the texts."""
    from tokenizers import Tokenizer, models, pre_tokenizers, trainers

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    alphabet = pre_tokenizers.ByteLevel.alphabet()
    trainer = trainers.BpeTrainer(vocab_size=256 + N_MERGES, initial_alphabet=alphabet, show_progress=False)
    tok.train_from_iterator(texts * 3, trainer)
    model = json.loads(tok.to_str())["model"]
    tokens = sorted(model["vocab"], key=model["vocab"].get)
    merges = [m if isinstance(m, str) else " ".join(m) for m in model["merges"]]
    return tokens, merges


def _write_vocab_gguf(dest: Path, tokens: list[str], merges: list[str]) -> None:
    """The zoo's deepseek2 metadata (llama.cpp needs an architecture's keys even for its vocabulary alone) with
    this vocabulary, pre "kimi-k2", no tensors."""
    from gguf import GGUFReader, GGUFValueType, GGUFWriter

    reader = GGUFReader(str(Path(__file__).parent / "zoo" / "deepseek2" / "tiny-f32.gguf"))
    writer = GGUFWriter(str(dest), "deepseek2")
    for name, field in reader.fields.items():
        if name.startswith(("GGUF.", "tokenizer.")) or name in ("general.architecture", "deepseek2.vocab_size"):
            continue
        if field.types[0] == GGUFValueType.ARRAY:
            writer.add_key_value(name, field.contents(), field.types[0], sub_type=field.types[1])
        else:
            writer.add_key_value(name, field.contents(), field.types[0])
    vocab = tokens + SPECIAL
    writer.add_vocab_size(len(vocab))
    writer.add_tokenizer_model("gpt2")
    writer.add_tokenizer_pre("kimi-k2")
    writer.add_token_list(vocab)
    writer.add_token_types([1] * len(tokens) + [3] * len(SPECIAL))  # NORMAL, then CONTROL
    writer.add_token_merges(merges)
    writer.add_bos_token_id(len(tokens))
    writer.add_eos_token_id(len(tokens) + 1)
    writer.add_add_bos_token(False)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()


def _regenerate(llama_python: str) -> None:
    import random
    import subprocess
    import tempfile

    texts = _texts()
    tokens, merges = _train_vocab(texts)
    _write_vocab_gguf(VOCAB, tokens, merges)
    with GGUFFile(VOCAB) as gguf:
        ours = GGUFTokenizer.from_gguf(gguf)
    rng = random.Random(2025)
    seqs = [ours.encode(t, add_special=False, parse_special=True) for t in texts[::7]]
    seqs += [[rng.randrange(ours.vocab_size) for _ in range(rng.randint(1, 24))] for _ in range(40)]
    with tempfile.TemporaryDirectory() as tmp:
        Path(tmp, "job.json").write_text(json.dumps({"path": str(VOCAB), "texts": texts, "seqs": seqs}))
        subprocess.run([llama_python, "-c", _ORACLE, f"{tmp}/job.json", f"{tmp}/out.json"], check=True)
        out = json.loads(Path(tmp, "out.json").read_text())
    ids = [[plain, None if special == plain else special] for plain, special in out["ids"]]
    data = {"llama_cpp_python": "0.3.36", "texts": texts, "ids": ids, "detok": out["detok"]}
    with gzip.open(EXPECTED, "wt", encoding="utf-8") as f:
        json.dump(data, f, ensure_ascii=False, separators=(",", ":"))
    print(f"wrote {VOCAB} ({VOCAB.stat().st_size:,} bytes), {EXPECTED} ({EXPECTED.stat().st_size:,} bytes)")


if __name__ == "__main__":
    import sys

    _regenerate(sys.argv[1])
