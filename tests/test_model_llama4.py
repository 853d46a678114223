"""Llama 4 past llama.cpp's chunk of 8192 positions, where its chunked layers restart and the RoPE-free layer's
attention temperature starts to grow.

tests/test_model_zoo.py checks the llama4 fixture like every family: its HF folder (chunks of 8, floor_scale 4, so
both bite within the prompts) against transformers, its GGUF files against llama.cpp. llama.cpp ignores the
config's chunk and temperature constants and uses the real models' (8192, 8192, 0.1), so the zoo's short prompts
never reach a chunk boundary in the GGUF runs; make_fixtures.py records llama.cpp's logits at positions 8160-8255 of
an 8,256-token sequence (`tiny-f32-chunks`), which this test compares with pellucid on the same file (1e-3 of the
largest logit, as the zoo's f32 files). The prompt is prefilled in pieces through the KV cache, as a long prompt is.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from pellucid.model.loader import load_model

FIXTURE = Path(__file__).parent / "zoo" / "llama4"
PIECE = 1024


def _reference():
    import sys

    sys.path.insert(0, str(FIXTURE.parent))
    from make_fixtures import chunk_text

    ref = json.loads((FIXTURE / "reference.json").read_text())
    ids = chunk_text(ref["perplexity"]["tiny-q8_0"]["ids"])
    start, end = ref["tiny-f32-chunks"]["kept"]
    return ids, start, end, np.load(FIXTURE / "reference.npz")["tiny-f32-chunks.logits.0"]


@torch.inference_mode()
def _logits(model, ids: list[int], start: int, end: int) -> np.ndarray:
    cache = model.make_cache(capacity=len(ids))
    kept = []
    for lo in range(0, len(ids), PIECE):
        hidden = model.hidden(torch.tensor([ids[lo : lo + PIECE]]), cache)[0]
        a, b = max(start, lo) - lo, min(end, lo + PIECE) - lo
        if a < b:
            kept.append(model.logits(hidden[a:b]))
    return torch.cat(kept).numpy()


@pytest.mark.slow
def test_chunk_boundary_and_temperature_match_llama_cpp(monkeypatch):
    monkeypatch.setenv("PELLUCID_COMPILE", "0")
    ids, start, end, expected = _reference()
    model = load_model(FIXTURE / "tiny-f32.gguf", device="cpu")
    assert model.config.attention_chunk_size == 8192 and model.config.attn_temperature == (8192.0, 0.1)
    ours = _logits(model, ids, start, end)
    assert np.abs(ours - expected).max() / np.abs(expected).max() <= 1e-3
    # the check can fail: without chunks (every layer global) the logits after position 8192 move
    for block in model.blocks:
        block.attn.chunk = None
    unchunked = _logits(model, ids, start, end)
    after = slice(8192 - start, None)
    assert np.abs(unchunked[after] - expected[after]).max() / np.abs(expected).max() > 0.05
