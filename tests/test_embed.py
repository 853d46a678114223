"""Sentence embeddings (BERT encoder + pooling) against sentence-transformers, the reference implementation.

Both sides compute in float32 from the same weights; they differ only in the order of floating-point
operations (we stack Q/K/V into one matmul, pad differently), so vectors agree to ~1e-6. The issue's bar is
cosine >= 0.999 per sentence; we also hold every component to 1e-4, which catches a wrong LayerNorm eps or
a pooling that counts padding long before the cosine notices.
"""

from __future__ import annotations

import json
import os
import shutil

import pytest
import torch

from pellucid.engine.embed import Embedder, Pooling, load_embedder, read_pooling
from pellucid.errors import PellucidError

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # the oracle must never reach for the network

SENTENCES = [
    "The cat sat on the mat.",
    "A man is playing a guitar.",
    "Hello, world!",
    "hello world",
    "HELLO WORLD",
    "What is the capital of France?",
    "Paris is the capital and most populous city of France.",
    "I love programming in Python.",
    "def fibonacci(n): return n if n < 2 else fibonacci(n - 1) + fibonacci(n - 2)",
    "SELECT name, email FROM users WHERE created_at > '2024-01-01' ORDER BY name;",
    "The quick brown fox jumps over the lazy dog.",
    "Ünïcödé façade naïve café résumé",
    "日本語のテキストと中文的句子",
    "Привет, как дела?",
    "¿Dónde está la biblioteca?",
    "Der schnelle braune Fuchs springt über den faulen Hund.",
    "🙂 emoji 🚀 and symbols ∑ ∫ √",
    "numbers 1234567890 3.14159 -42 1e-9",
    "tabs\tand\nnewlines  and   spaces",
    "a [SEP] inside [CLS] text [MASK]",
    "x",
    "",
    "   ",
    "!!!???...",
    "e-mail: someone@example.com, URL: https://example.com/path?query=1#frag",
    "The stock market fell sharply today amid fears of rising interest rates.",
    "Researchers discovered a new species of frog in the Amazon rainforest.",
    "The recipe calls for two cups of flour and a pinch of salt.",
    "My flight was delayed by three hours because of the storm.",
    "Quantum computers use qubits, which can be in superpositions of states.",
    "She won the gold medal in the 100 metres at the Olympic Games.",
    "The patient was prescribed antibiotics for a bacterial infection.",
    "Photosynthesis converts light energy into chemical energy.",
    "The novel explores themes of memory, loss and identity.",
    "Please remember to submit your timesheet by Friday.",
    "apt-get install debian-faq",
    "How do I upgrade my Debian system to the next release?",
    "Error: ENOENT: no such file or directory, open '/etc/config.yaml'",
    "The mitochondria is the powerhouse of the cell.",
    "Water boils at 100 degrees Celsius at sea level.",
    "An espresso is brewed by forcing hot water through finely ground coffee.",
    "It's raining cats and dogs.",
    "I can't believe it's not butter!",
    "The Eiffel Tower was completed in 1889.",
    "To be, or not to be, that is the question.",
    "Machine learning models can overfit when trained on small datasets.",
    "The train leaves at 7:45 a.m. from platform 9¾.",
    "Glaciers are retreating due to global warming.",
    "Can you recommend a good book about the history of mathematics?",
    "user@host:~$ ls -la /var/log | grep syslog",
    "The meeting has been moved to Thursday afternoon.",
    "Dogs are loyal companions and need daily exercise.",
    " ".join(["long"] * 300),  # 300 words: truncated to 256 tokens on both sides
    "Transformers process all tokens of a sequence in parallel. " * 40,  # ~400 tokens: truncated
]


@pytest.fixture(scope="module")
def embedder(minilm_path) -> Embedder:
    return load_embedder(minilm_path, device="cpu")


@pytest.fixture(scope="module")
def oracle(minilm_path):
    st = pytest.importorskip("sentence_transformers")
    return st.SentenceTransformer(str(minilm_path), device="cpu")


def test_facts(embedder):
    assert (embedder.dim, embedder.max_tokens, embedder.n_special) == (384, 256, 2)
    assert embedder.source == "minilm-l6"  # in the store: an index records the name
    assert embedder.pooling == Pooling(("mean",), normalize=True)


def test_matches_sentence_transformers(embedder, oracle):
    assert len(SENTENCES) >= 50
    ours = embedder.embed(SENTENCES, batch_size=16)
    reference = oracle.encode(SENTENCES, batch_size=16, convert_to_tensor=True).cpu()
    cosine = torch.nn.functional.cosine_similarity(ours, reference, dim=1)
    worst = int(cosine.argmin())
    assert cosine.min() >= 0.999, f"cosine {cosine.min():.6f} for {SENTENCES[worst][:60]!r}"
    assert (ours - reference).abs().max() < 1e-4
    assert torch.allclose(ours.norm(dim=1), torch.ones(len(SENTENCES)), atol=1e-5)


def test_input_ids_match_sentence_transformers_truncation(embedder, oracle):
    for text in SENTENCES:
        reference = oracle.tokenize([text])["input_ids"][0].tolist()
        assert embedder.input_ids(text) == reference, text[:60]


def test_count_tokens_counts_before_truncation(embedder):
    assert embedder.count_tokens("hello world") == 4  # [CLS] hello world [SEP]
    assert embedder.count_tokens(" ".join(["long"] * 300)) == 302
    assert len(embedder.input_ids(" ".join(["long"] * 300))) == embedder.max_tokens


def test_batching_and_padding_do_not_change_vectors(embedder):
    """A short text padded next to a long one must come out as when it is embedded alone."""
    texts = ["short one", "a much longer sentence that forces the short one to be padded by many tokens " * 3]
    alone = torch.cat([embedder.embed([t]) for t in texts])
    together = embedder.embed(texts, batch_size=2)
    assert (alone - together).abs().max() < 1e-5


def test_empty_list_and_order(embedder):
    assert embedder.embed([]).shape == (0, 384)
    texts = ["b" * 5, "a", "c c c c c c c c"]
    vectors = embedder.embed(texts, batch_size=1)  # sorted by length internally; output in input order
    for text, vector in zip(texts, vectors):
        assert torch.allclose(embedder.embed([text])[0], vector, atol=1e-6)


def test_other_pooling_modes_match_sentence_transformers(minilm_path, tmp_path, oracle):
    """CLS + max pooling without normalisation, from a copy of the folder with another pooling config."""
    st = pytest.importorskip("sentence_transformers")
    folder = tmp_path / "minilm-cls-max"
    shutil.copytree(minilm_path, folder, ignore=shutil.ignore_patterns("model.safetensors"))
    (folder / "model.safetensors").symlink_to(minilm_path / "model.safetensors")
    config = json.loads((folder / "1_Pooling" / "config.json").read_text())
    config.update(pooling_mode_mean_tokens=False, pooling_mode_cls_token=True, pooling_mode_max_tokens=True)
    (folder / "1_Pooling" / "config.json").write_text(json.dumps(config))
    modules = [m for m in json.loads((folder / "modules.json").read_text()) if not m["type"].endswith("Normalize")]
    (folder / "modules.json").write_text(json.dumps(modules))
    assert read_pooling(folder) == Pooling(("cls", "max"), normalize=False)
    embedder = load_embedder(folder, device="cpu")
    assert embedder.dim == 768
    assert embedder.source == str(folder.resolve())  # outside the store: an index records the path
    texts = SENTENCES[:12]
    reference = st.SentenceTransformer(str(folder), device="cpu").encode(texts, convert_to_tensor=True).cpu()
    assert (embedder.embed(texts) - reference).abs().max() < 1e-4


def test_a_decoder_gguf_cannot_embed(smollm2_path):
    with pytest.raises(PellucidError, match="cannot make embeddings.*BERT"):
        load_embedder(smollm2_path)
