"""GGUF tokenizers against llama.cpp on a varied corpus, beyond the handful of cases in reference.json.

test_tokenizer_llamacpp_corpus.json.gz holds llama.cpp's answers (llama-cpp-python 0.3.36, the version that
made reference.json) for ~340 texts from test_tokenizer_corpus.corpus(): token ids three ways for both
default models, detokenized text for real and random id sequences, and token ids under other tokenizer
settings: SmolLM2's vocabulary with each family of `tokenizer.ggml.pre` pre-tokenizers, and flag variants
(SentencePiece with a space prefix and EOS, BPE with space clean-up and BOS, Phi-3's whitespace stripping).
The variants are the default files with some metadata replaced (written with gguf-py for llama.cpp, patched in
memory for us). Tolerance: none, ids and text must be identical. Regenerate (needs llama-cpp-python 0.3.36 in
some Python, gguf-py here):

    .venv/bin/python tests/test_tokenizer_llamacpp.py /path/to/python-with-llama-cpp
"""

from __future__ import annotations

import gzip
import json
from pathlib import Path

import pytest

from pellucid.formats.gguf import GGUFFile
from pellucid.tokenizer import GGUFTokenizer

CORPUS = Path(__file__).with_name("test_tokenizer_llamacpp_corpus.json.gz")
MODELS = {"smollm2-135m": "smollm2_path", "gemma3-270m": "gemma3_path"}
# Other tokenizer settings, as metadata overrides on a default model's file.
PRE_FAMILIES = [
    "default", "llama-bpe", "dbrx", "chatglm-bpe", "glm4", "deepseek-coder", "deepseek-v3", "falcon", "starcoder",
    "gpt-2", "trillion", "stablelm2", "qwen2", "qwen35", "minicpm5", "poro-chat", "bloom", "viking", "tekken",
    "gpt-4o", "seed-coder", "bailingmoe", "ufakzeka", "superbpe",
]  # fmt: skip
VARIANTS = [("smollm2-135m", {"tokenizer.ggml.pre": pre}) for pre in PRE_FAMILIES] + [
    ("smollm2-135m", {"tokenizer.ggml.pre": "gpt-2", "tokenizer.ggml.add_bos_token": True}),
    ("gemma3-270m", {"tokenizer.ggml.add_space_prefix": True, "tokenizer.ggml.add_eos_token": True}),
    # Phi-3 by name: llama.cpp strips spaces after special tokens (and needs <|endoftext|>, which Gemma lacks).
    ("gemma3-270m", {"general.name": "Phi-3 look-alike", "tokenizer.ggml.tokens": {"7": "<|endoftext|>"}}),
]


@pytest.fixture(scope="module")
def expected() -> dict:
    with gzip.open(CORPUS, "rt", encoding="utf-8") as f:
        return json.load(f)


def _tokenizer(request, model: str, overrides: dict | None = None) -> GGUFTokenizer:
    path = request.getfixturevalue(MODELS[model])
    with GGUFFile(path) as gguf:
        gguf.metadata.update(_apply_overrides(gguf.metadata, overrides or {}))
        return GGUFTokenizer.from_gguf(gguf)


def _apply_overrides(metadata: dict, overrides: dict) -> dict:
    """Metadata values to replace; a dict for tokenizer.ggml.tokens renames single tokens {id: text}."""
    out = dict(overrides)
    if isinstance(out.get("tokenizer.ggml.tokens"), dict):
        tokens = list(metadata["tokenizer.ggml.tokens"])
        for token_id, text in out["tokenizer.ggml.tokens"].items():
            tokens[int(token_id)] = text
        out["tokenizer.ggml.tokens"] = tokens
    return out


def _expand(stored: list, base_no_special: list[int] | None = None) -> tuple[list[int], list[int], list[int]]:
    """Stored ids are [no_special, special, with_bos], where null means "same as no_special" (and, for
    no_special of a variant, "same as the default model's")."""
    no_special = stored[0] if stored[0] is not None else base_no_special
    return (
        no_special,
        stored[1] if stored[1] is not None else no_special,
        stored[2] if stored[2] is not None else no_special,
    )


def _check_encodings(tok, texts, stored_ids, base_ids=None):
    assert len(stored_ids) == len(texts)
    for k, (text, stored) in enumerate(zip(texts, stored_ids)):
        no_special, special, with_bos = _expand(stored, base_ids[k][0] if base_ids else None)
        assert tok.encode(text, add_special=False) == no_special, repr(text)
        assert tok.encode(text, add_special=False, parse_special=True) == special, repr(text)
        assert tok.encode(text) == with_bos, repr(text)


@pytest.mark.parametrize("model", list(MODELS))
def test_encode_matches_llamacpp_on_corpus(model, expected, request):
    tok = _tokenizer(request, model)
    _check_encodings(tok, expected["texts"], expected["models"][model]["ids"])


@pytest.mark.parametrize("model", list(MODELS))
def test_decode_matches_llamacpp(model, expected, request):
    """llama_detokenize(remove_special, unparse_special) = (False, True) and (True, False), on encodings of
    the corpus and on random id sequences (which hit byte tokens, unused tokens, broken UTF-8)."""
    _check_decodings(_tokenizer(request, model), expected["models"][model]["detok"])


def _check_decodings(tok, stored):
    for ids, shown, skipped in stored:  # skipped is null when it equals shown
        assert tok.decode(ids) == shown, ids
        assert tok.decode(ids, skip_special=True) == (shown if skipped is None else skipped), ids


@pytest.mark.parametrize("variant", range(len(VARIANTS)), ids=lambda i: f"{VARIANTS[i][0]}-{VARIANTS[i][1]}")
def test_other_tokenizer_settings_match_llamacpp(variant, expected, request):
    model, overrides = VARIANTS[variant]
    ref = expected["variants"][variant]
    assert ref["model"] == model and ref["overrides"] == overrides
    tok = _tokenizer(request, model, overrides)
    picked = expected["variant_texts"]
    base_ids = [_expand(expected["models"][model]["ids"][k]) for k in picked]
    _check_encodings(tok, [expected["texts"][k] for k in picked], ref["ids"], base_ids)
    _check_decodings(tok, ref["detok"])


# -- regenerating the expected outputs --------------------------------------------------------------------

_ORACLE = r"""
import ctypes, json, sys
import llama_cpp
jobs = json.load(open(sys.argv[1]))
out = []
for job in jobs:
    m = llama_cpp.Llama(model_path=job["path"], vocab_only=True, verbose=False)
    vocab = m._model.vocab
    def detok(ids, remove, unparse):
        arr = (llama_cpp.llama_token * max(1, len(ids)))(*ids)
        buf = ctypes.create_string_buffer(1 << 16)
        n = llama_cpp.llama_detokenize(vocab, arr, len(ids), buf, 1 << 16, remove, unparse)
        return buf.raw[:n].decode("utf-8", "replace")
    ids = []
    for text in job["texts"]:
        b = text.encode("utf-8")
        ids.append([m.tokenize(b, add_bos=False, special=False), m.tokenize(b, add_bos=False, special=True),
                    m.tokenize(b, add_bos=True, special=False)])
    detoks = [[s, detok(s, False, True), detok(s, True, False)] for s in job["seqs"]]
    out.append({"ids": ids, "detok": [[s, a, None if b == a else b] for s, a, b in detoks]})
json.dump(out, open(sys.argv[2], "w"))
"""


def _write_variant(src: Path, dst: Path, overrides: dict) -> None:
    """A copy of src's metadata (no tensors) with some keys replaced, written with gguf-py."""
    from gguf import GGUFReader, GGUFValueType, GGUFWriter

    reader = GGUFReader(str(src))
    if isinstance(overrides.get("tokenizer.ggml.tokens"), dict):
        overrides = _apply_overrides(
            {"tokenizer.ggml.tokens": reader.fields["tokenizer.ggml.tokens"].contents()}, overrides
        )
    writer = GGUFWriter(str(dst), reader.fields["general.architecture"].contents())
    for name, field in reader.fields.items():
        if name.startswith("GGUF.") or name == "general.architecture" or name in overrides:
            continue
        if field.types[0] == GGUFValueType.ARRAY:
            writer.add_key_value(name, field.contents(), field.types[0], sub_type=field.types[1])
        else:
            writer.add_key_value(name, field.contents(), field.types[0])
    for name, value in overrides.items():
        if isinstance(value, list):
            writer.add_key_value(name, value, GGUFValueType.ARRAY, sub_type=GGUFValueType.STRING)
        else:
            writer.add_key_value(name, value, GGUFValueType.BOOL if isinstance(value, bool) else GGUFValueType.STRING)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()


CLEANUP_TEXTS = [
    "Hello , world ! Is it ? Yes . it 's I 'm we 're they 've , don 't he 'd we 'll",
    "a ' b , and ' ' c . x ,y",
]


def _compact(ids: list[list[int]], base_no_special: list[int] | None = None) -> list:
    no_special, special, with_bos = ids
    return [
        None if no_special == base_no_special else no_special,
        None if special == no_special else special,
        None if with_bos == no_special else with_bos,
    ]


def _regenerate(llama_python: str) -> None:
    import random
    import subprocess
    import tempfile

    from pellucid import store
    from pellucid.tokenizer import load_tokenizer
    from test_tokenizer_corpus import MULTILINGUAL, corpus

    n_prose = 40
    texts = corpus(n_random=250, n_prose=n_prose, seed=2024)
    # The variants run on the hand-written texts and the first 30 random ones (prose adds little there).
    picked = list(range(len(MULTILINGUAL))) + list(range(len(MULTILINGUAL) + n_prose, len(MULTILINGUAL) + n_prose + 30))
    rng = random.Random(2024)
    with tempfile.TemporaryDirectory() as tmp:
        jobs, meta = [], []
        for model in MODELS:
            path = store.resolve(model).path
            tok = load_tokenizer(path)
            seqs = [tok.encode(t, parse_special=bool(i % 2)) for i, t in enumerate(texts[::8])]
            seqs += [[rng.randrange(tok.vocab_size) for _ in range(rng.randint(1, 24))] for _ in range(80)]
            jobs.append({"path": str(path), "texts": texts, "seqs": seqs})
            meta.append(("model", model, None))
        for i, (model, overrides) in enumerate(VARIANTS):
            path = Path(tmp) / f"variant{i}.gguf"
            _write_variant(store.resolve(model).path, path, overrides)
            seqs = [[rng.randrange(200) for _ in range(rng.randint(1, 24))] for _ in range(20)]
            seqs += [[2] + jobs[list(MODELS).index(model)]["seqs"][k] for k in range(5)]
            # Text that llama.cpp's detokenizer clean-up (clean_spaces) changes, in the model's own tokens.
            base_tok = load_tokenizer(store.resolve(model).path)
            seqs += [base_tok.encode(t, add_special=False) for t in CLEANUP_TEXTS]
            jobs.append({"path": str(path), "texts": [texts[k] for k in picked], "seqs": seqs})
            meta.append(("variant", model, overrides))
        Path(tmp, "jobs.json").write_text(json.dumps(jobs))
        subprocess.run([llama_python, "-c", _ORACLE, f"{tmp}/jobs.json", f"{tmp}/out.json"], check=True)
        results = json.loads(Path(tmp, "out.json").read_text())
    data = {"llama_cpp_python": "0.3.36", "texts": texts, "variant_texts": picked, "models": {}, "variants": []}
    for (kind, model, overrides), result in zip(meta, results):
        if kind == "model":
            result["ids"] = [_compact(ids) for ids in result["ids"]]
            data["models"][model] = result
        else:
            base = [_expand(data["models"][model]["ids"][k])[0] for k in picked]
            result["ids"] = [_compact(ids, b) for ids, b in zip(result["ids"], base)]
            data["variants"].append({"model": model, "overrides": overrides, **result})
    with gzip.open(CORPUS, "wt", encoding="utf-8") as f:
        json.dump(data, f, ensure_ascii=False, separators=(",", ":"))
    print(f"wrote {CORPUS} ({CORPUS.stat().st_size:,} bytes)")


if __name__ == "__main__":
    import sys

    _regenerate(sys.argv[1])
