"""The dense families against their two references: transformers on Hugging Face folders, llama.cpp on GGUF files.

No real weights of these families can be downloaded here, so each family is a tiny random-weight model
(tests/zoo/: built by `specs.build_hf_folder` with transformers' own config classes, converted and quantized by
llama.cpp's own tools, whose outputs `make_fixtures.py` recorded). The models' logits are peaked (median top-1
margin of several logits), so greedy and top-1 comparisons test the arithmetic, not ties. Tolerances:

- HF folder vs transformers (run live, float32): 1e-4 of the largest logit; both compute in float32 with the
  same weights, so only summation order differs (measured ~1e-6).
- GGUF f32 / f16 vs llama.cpp's logits: 1e-3 of the largest logit. llama.cpp rounds activations to float16
  before F16 products and reads GELU from a float16 table; pellucid keeps float32 (measured 1e-6 for f32 files).
- GGUF Q8_0 / Q4_K_M / MXFP4: llama.cpp also rounds activations to 8 bits in quantized products, which pellucid does not
  (outside PELLUCID_FAST): teacher-forced top-1 agreement >= 95% and perplexity within 1% of llama.cpp's on the
  same file. Against llama.cpp run on its own dequantized float32 copy of the file, the same arithmetic as
  pellucid's, agreement must be exact (top-1 everywhere, mean NLL to 1e-3).
- Incremental decode through the KV cache (sliding-window rings wrapping several times) vs one full forward:
  float32 rounding (as tests/test_model_tiny.py).

These run eagerly (PELLUCID_COMPILE=0) except the incremental-decode test, which runs the compiled decode step
every family uses in production.
"""

from __future__ import annotations

import json
import math
from functools import cache
from pathlib import Path

import numpy as np
import pytest
import torch

from pellucid.model.loader import load_model

transformers = pytest.importorskip("transformers")

ZOO = Path(__file__).parent / "zoo"
FAMILIES = sorted(p.name for p in ZOO.iterdir() if (p / "reference.json").is_file())
HF_TOL = 1e-4
GGUF_TOL = 1e-3


@cache
def reference(family: str) -> dict:
    return json.loads((ZOO / family / "reference.json").read_text())


@cache
def reference_arrays(family: str):
    return np.load(ZOO / family / "reference.npz")


@pytest.fixture(scope="module")
def hf_folders(tmp_path_factory):
    """family (and variant) -> the HF folder, built once per module (deterministic: tests/zoo/test_specs.py)."""
    from zoo import specs

    built: dict[tuple[str, str], Path] = {}

    def folder(family: str, variant: str = "tiny") -> Path:
        if (family, variant) not in built:
            built[family, variant] = specs.build_hf_folder(family, tmp_path_factory.mktemp(family), variant)
        return built[family, variant]

    return folder


@pytest.fixture
def eager(monkeypatch):
    monkeypatch.setenv("PELLUCID_COMPILE", "0")


def prompts(family: str) -> list[list[int]]:
    return [p["ids"] for p in reference(family)["prompts"]]


def relative_error(ours: np.ndarray, theirs: np.ndarray) -> float:
    """max |ours - theirs| over max |theirs|: the error relative to the size of the logits."""
    return float(np.abs(ours - theirs).max() / np.abs(theirs).max())


@torch.inference_mode()
def pellucid_logits(model, ids: list[int]) -> np.ndarray:
    return model(torch.tensor([ids])).float()[0].numpy()


@torch.inference_mode()
def pellucid_greedy(model, ids: list[int], n: int = 32) -> list[int]:
    """n argmax tokens through the KV cache, one decode step each (EOS does not stop, as in the references)."""
    cache = model.make_cache(capacity=len(ids) + n)
    logits = model(torch.tensor([ids]), cache)[0, -1]
    out = []
    for _ in range(n):
        out.append(int(logits.argmax()))
        logits = model(torch.tensor([[out[-1]]]), cache)[0, -1]
    return out


@torch.inference_mode()
def transformers_greedy(model, ids: list[int], n: int = 32) -> list[int]:
    """n argmax tokens, each from a full forward over everything so far. Not `generate()`: with the zoo's
    tokenizers bos == pad, and generate() would mask every BOS in the prompt out as padding."""
    out = []
    for _ in range(n):
        out.append(int(model(torch.tensor([ids + out])).logits[0, -1].argmax()))
    return out


def load_gguf(family: str, name: str):
    model = load_model(ZOO / family / name, device="cpu")
    model.use_context(reference(family)["llamacpp_settings"]["n_ctx"])  # Phi-3 picks its RoPE factors from it
    return model


# -- Hugging Face folders vs transformers ---------------------------------------------------------------------


@pytest.mark.parametrize("family", FAMILIES)
@torch.inference_mode()
def test_hf_folder_matches_transformers(family, hf_folders, eager):
    folder = hf_folders(family)
    theirs = transformers.AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32).eval()
    ours = load_model(folder, device="cpu")
    for ids in prompts(family):
        # transformers picks Phi-3's LongRoPE factors from the sequence length; tell ours the same context
        ours.use_context(len(ids) + 32)
        expected = theirs(torch.tensor([ids])).logits[0].float().numpy()
        assert relative_error(pellucid_logits(ours, ids), expected) <= HF_TOL
        assert pellucid_greedy(ours, ids) == transformers_greedy(theirs, ids)


# -- GGUF files vs llama.cpp ----------------------------------------------------------------------------------


@pytest.mark.parametrize("kind", ["tiny-f32", "tiny-f16"])
@pytest.mark.parametrize("family", FAMILIES)
def test_gguf_float_matches_llama_cpp(family, kind, eager):
    model = load_gguf(family, f"{kind}.gguf")
    arrays, ref = reference_arrays(family), reference(family)
    for i, ids in enumerate(prompts(family)):
        assert relative_error(pellucid_logits(model, ids), arrays[f"{kind}.logits.{i}"]) <= GGUF_TOL, f"prompt {i}"
        assert pellucid_greedy(model, ids) == ref[kind]["greedy"][i], f"prompt {i}"


def perplexity_reference(family: str, kind: str) -> tuple[list[int], dict]:
    """The token ids of the perplexity text for one file, and llama.cpp's record for it."""
    ppl = reference(family)["perplexity"]
    record = ppl[kind]
    return record.get("ids", ppl.get("ids")), record


def mean_nll(logits: np.ndarray, ids: list[int]) -> float:
    """Mean negative log-likelihood of tokens 2..n given their prefixes (llama-perplexity over one window)."""
    logp = torch.log_softmax(torch.from_numpy(logits[:-1]).double(), dim=-1)
    return float(-logp[torch.arange(len(ids) - 1), torch.tensor(ids[1:])].mean())


def quantized_files() -> list[tuple[str, str]]:
    """(family, file) for every quantized file with a perplexity record: tiny-q8_0 and kquant-q4_k_m of each family,
    and a family's extras (GPT-OSS: tiny-mxfp4, llama.cpp's MXFP4_MOE)."""
    return [(f, k) for f in FAMILIES for k in reference(f)["perplexity"] if k != "definition"]


@pytest.mark.parametrize(("family", "kind"), quantized_files())
def test_gguf_quantized_matches_llama_cpp(family, kind, eager, arithmetic):
    ids, record = perplexity_reference(family, kind)
    logits = pellucid_logits(load_gguf(family, f"{kind}.gguf"), ids)
    ours_top1, ours_nll = logits.argmax(-1), mean_nll(logits, ids)
    # llama.cpp on the same file (its products round activations to 8 bits; the default arithmetic's prefill
    # multiplies in bfloat16, exact mode in float32)
    assert (ours_top1 == np.array(record["argmax"])).mean() >= 0.95
    assert abs(ours_nll - record["mean_nll"]) <= math.log(1.01), "perplexity differs by more than 1%"
    if arithmetic == "exact":
        # llama.cpp on its own float32 dequantization of the file: the same arithmetic, so the same answers
        exact = record["dequantized_f32"]
        assert (ours_top1 == np.array(exact["argmax"])).all()
        assert abs(ours_nll - exact["mean_nll"]) <= 1e-3


# -- both formats -------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("fmt", ["hf", "tiny-f32.gguf"])
@pytest.mark.parametrize("family", FAMILIES)
@torch.inference_mode()
def test_incremental_decode_equals_full_forward(family, fmt, hf_folders):
    """Prefill, then the compiled decode step token by token, then a chunk: sliding windows (8 tokens in the zoo)
    wrap several times. Equal to one full forward over the same tokens, to float32 rounding."""
    model = load_model(hf_folders(family) if fmt == "hf" else ZOO / family / fmt, device="cpu")
    ids = (prompts(family)[2] * 3)[:44]
    full = model(torch.tensor([ids]))
    cache = model.make_cache(capacity=len(ids))
    parts, start = [], 0
    for n in [5] + [1] * 30 + [9]:
        parts.append(model(torch.tensor([ids[start : start + n]]), cache))
        start += n
    torch.testing.assert_close(torch.cat(parts, dim=1), full, rtol=1e-4, atol=1e-4 * float(full.abs().max()))


@pytest.mark.parametrize("family", FAMILIES)
def test_parameter_count_equals_transformers(family, hf_folders):
    """`inspect` and `fit` count parameters from the tensor shapes: as many as transformers' num_parameters(), for
    the HF folder and for the GGUF file converted from it."""
    from pellucid.inspect import footprint
    from pellucid.store import resolve_path

    folder = hf_folders(family)
    expected = transformers.AutoModelForCausalLM.from_pretrained(folder).num_parameters()
    assert expected == reference(family)["hf"]["tiny"]["num_parameters"]
    hf = footprint(resolve_path(folder))
    assert hf.n_parameters == expected
    gguf = footprint(resolve_path(ZOO / family / "tiny-f32.gguf"))
    # llama.cpp's converter trims Gemma 3's embedding to the tokenizer's rows; nothing else changes the count
    trimmed = (hf.config.vocab_size - gguf.config.vocab_size) * hf.config.hidden_size
    assert gguf.n_parameters == expected - trimmed


@pytest.mark.parametrize("family", FAMILIES)
@torch.inference_mode()
def test_batched_decode_equals_separate_steps(family, hf_folders, eager):
    """The server's batched step (`decode_batch`: every sequence at its own position) with each family's features:
    biases, soft-caps, RoPE-free layers, post-norms, Granite's multipliers. Sequences before, at and past the point
    where an 8-token sliding window wraps."""
    from test_model_batch import compare_batched_with_separate

    model = load_model(hf_folders(family), device="cpu")
    compare_batched_with_separate(model, [1, 3, 8, 20], steps=10, capacity=64)
