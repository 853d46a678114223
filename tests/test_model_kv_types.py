"""The KV cache types on the catalog models against llama.cpp's references (reference.json, made with llama.cpp's
default f16 cache), in the default arithmetic (the native kernels read the typed cache where the CPU has them).

f16 and bf16 round keys and values far below what moves a greedy choice: free-running greedy continuations are the
f32 cache's. q8_0 rounds to 8 bits per value: its teacher-forced top-1 through the cache must still agree with
llama.cpp's next token at >= 90% of positions (the bound test_model_llamacpp.py calibrates for the f32 cache).
"""

from __future__ import annotations

import pytest
import torch

from model_helpers import GEMMA3, SMOLLM2, greedy, loaded

MODELS = {SMOLLM2: "smollm2_path", GEMMA3: "gemma3_path"}


def with_kv_type(monkeypatch, model, kv_type: str):
    monkeypatch.setattr(model, "kv_type_k", kv_type, raising=False)
    monkeypatch.setattr(model, "kv_type_v", kv_type, raising=False)
    return model


@pytest.mark.slow
@pytest.mark.parametrize("key", [SMOLLM2, GEMMA3])
def test_f16_and_bf16_caches_keep_the_greedy_continuations(request, reference, key, default_arithmetic, monkeypatch):
    model = loaded(request.getfixturevalue(MODELS[key]))
    for case in reference[key]["greedy"][:2]:
        n = len(case["greedy_ids"])
        want = greedy(with_kv_type(monkeypatch, model, "f32"), case["prompt_ids"], n, set())
        for kv_type in ("f16", "bf16"):
            got = greedy(with_kv_type(monkeypatch, model, kv_type), case["prompt_ids"], n, set())
            assert got == want, f"{key} {kv_type}: {case['prompt']!r}"


@torch.inference_mode()
@pytest.mark.parametrize("key", [SMOLLM2, GEMMA3])
def test_q8_0_cache_teacher_forced_agreement(request, reference, key, default_arithmetic, monkeypatch):
    model = with_kv_type(monkeypatch, loaded(request.getfixturevalue(MODELS[key])), "q8_0")
    hits = total = 0
    for case in reference[key]["greedy"]:
        tokens = torch.tensor([case["prompt_ids"] + case["greedy_ids"]])
        cache = model.make_cache(capacity=tokens.shape[1])
        assert cache.kv_types == ("q8_0", "q8_0")
        hidden = model.hidden(tokens, cache)[0, len(case["prompt_ids"]) - 1 : -1]
        predicted = model.logits(hidden).argmax(-1).tolist()
        hits += sum(p == t for p, t in zip(predicted, case["greedy_ids"]))
        total += len(case["greedy_ids"])
    assert hits / total >= 0.90, f"{key}: q8_0 cache argmax matched llama.cpp at {hits}/{total} positions"
