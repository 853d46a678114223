"""The BERT encoder against transformers on tiny random models, and the cross-encoder reranker built on it.

A random BertForSequenceClassification (2 layers, hidden 32) is saved as a safetensors folder with MiniLM's
WordPiece tokenizer; our classifier must reproduce transformers' logits for (query, passage) pairs, token
types and padding included, to 1e-4 (float32 on both sides, different operation order). The sentence-
embedding path on the real MiniLM weights is test_embed.py.
"""

from __future__ import annotations

import os
import shutil

import pytest
import torch

from pellucid.errors import UnsupportedError
from pellucid.formats.safetensors import HFFolder
from pellucid.model.bert import load_bert
from pellucid.rag.rerank import CrossEncoderReranker, _longest_first, load_reranker

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # the oracle must never reach for the network
transformers = pytest.importorskip("transformers")

PAIRS = [
    ("how long do cats sleep", "Cats sleep between 12 and 16 hours a day."),
    ("espresso pressure", "An espresso is brewed at 9 bar of pressure for about 25 seconds. " * 3),
    ("a", "b"),
    ("what is the capital of france?", "Paris is the capital of France. " * 40),  # truncated to 128 tokens
]


@pytest.fixture(scope="module")
def cross_encoder_folder(tmp_path_factory, minilm_path):
    folder = tmp_path_factory.mktemp("tiny-cross-encoder")
    torch.manual_seed(0)
    config = transformers.BertConfig(
        vocab_size=30522, hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=64,
        max_position_embeddings=128, num_labels=1, architectures=["BertForSequenceClassification"],
    )  # fmt: skip
    model = transformers.BertForSequenceClassification(config).eval()
    model.save_pretrained(folder, safe_serialization=True)
    for name in ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "vocab.txt"):
        shutil.copy(minilm_path / name, folder / name)
    return folder


def test_cross_encoder_matches_transformers(cross_encoder_folder):
    reranker = CrossEncoderReranker(cross_encoder_folder, device="cpu", batch_size=3)
    assert reranker.max_tokens == 128
    model = transformers.BertForSequenceClassification.from_pretrained(cross_encoder_folder).eval()
    tokenizer = transformers.AutoTokenizer.from_pretrained(cross_encoder_folder)
    queries, passages = zip(*PAIRS)
    batch = tokenizer(list(queries), list(passages), padding=True, truncation=True, max_length=128, return_tensors="pt")
    with torch.no_grad():
        expected = model(**batch).logits[:, 0]
    for (query, passage), ids, types in zip(PAIRS, batch["input_ids"], batch["token_type_ids"]):
        ours_ids, ours_types = reranker.pair_ids(query, passage)
        assert ours_ids == [i for i in ids.tolist() if i != 0] and ours_types == types.tolist()[: len(ours_ids)]
    scores = []
    for query, passage in PAIRS:  # one query per call, as retrieval uses it; padding differs per batch
        scores += reranker.score(query, [passage])
    assert torch.allclose(torch.tensor(scores), expected, atol=1e-4)
    assert reranker.score("q", [p for _, p in PAIRS]) == pytest.approx(
        [reranker.score("q", [p])[0] for _, p in PAIRS], abs=1e-5
    )


def test_load_reranker_picks_the_cross_encoder(cross_encoder_folder):
    assert isinstance(load_reranker(str(cross_encoder_folder), device="cpu"), CrossEncoderReranker)


def test_encoder_refuses_a_classifier_checkpoint(cross_encoder_folder):
    """Loading a classifier as a plain encoder would silently drop its head: refused, by name."""
    with HFFolder(cross_encoder_folder) as folder, pytest.raises(UnsupportedError, match="classifier"):
        load_bert(folder)


def test_longest_first_truncation():
    assert _longest_first(5, 100, 50) == (5, 45)  # the longer one pays
    assert _longest_first(30, 30, 50) == (25, 25)
    assert _longest_first(10, 10, 50) == (10, 10)
