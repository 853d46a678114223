"""The zoo fixtures are what they claim: specs.build_hf_folder rebuilds, byte for byte, the HF folders the GGUF
files were converted from; transformers loads each folder; the committed files are intact; the recorded checks
say the models are well-conditioned.

The rebuild needs transformers (a dev dependency) for each family's parameter names; if its version differs from
the one that made the fixtures, a changed config.json is reported as such (regenerate with make_fixtures.py).
"""

from __future__ import annotations

import hashlib
import json

import numpy as np
import pytest
import specs

transformers = pytest.importorskip("transformers")
torch = pytest.importorskip("torch")

FAMILIES = list(specs.FAMILIES)


def reference(name: str) -> dict:
    return json.loads((specs.HERE / name / "reference.json").read_text())


@pytest.mark.parametrize("variant", specs.VARIANTS)
@pytest.mark.parametrize("name", FAMILIES)
def test_build_hf_folder_reproduces_the_converted_folder(tmp_path, name, variant):
    ref = reference(name)
    built = specs.sha256_files(specs.build_hf_folder(name, tmp_path, variant))
    expected = ref["hf"][variant]["files"]
    if built != expected and ref["versions"]["transformers"] != transformers.__version__:
        pytest.fail(
            f"{name}/{variant}: rebuilt files differ ({sorted(k for k in built if built[k] != expected.get(k))}); the "
            f"fixtures were made with transformers {ref['versions']['transformers']}, this is {transformers.__version__}"
        )
    assert built == expected


@pytest.mark.parametrize("name", FAMILIES)
def test_gguf_files_are_intact(name):
    for fname, info in reference(name)["gguf"].items():
        assert hashlib.sha256((specs.HERE / name / fname).read_bytes()).hexdigest() == info["sha256"], fname


@pytest.mark.parametrize("name", FAMILIES)
def test_transformers_loads_the_folder_and_agrees_with_llamacpp(tmp_path, name):
    """transformers (float32) on the tiny folder vs llama.cpp on tiny-f32.gguf: the agreement make_fixtures.py
    measured (max |a - b| / max |b| ~ 1e-6; Gemma ~1e-4 once llama.cpp's fp16-table GELU is reproduced) still
    holds, within 3x or 1e-4 for other CPUs and BLAS builds."""
    ref = reference(name)
    folder = specs.build_hf_folder(name, tmp_path, "tiny")
    tokenizer = transformers.AutoTokenizer.from_pretrained(folder)
    config = transformers.AutoConfig.from_pretrained(folder)
    for key, value in specs.FAMILIES[name].llamacpp_config.items():  # what llama.cpp hard-codes (Llama 4)
        setattr(config, key, value)
    model = transformers.AutoModelForCausalLM.from_pretrained(
        folder, config=config, dtype=torch.float32, attn_implementation="eager"
    )
    assert model.num_parameters() == ref["hf"]["tiny"]["num_parameters"]
    measured = ref["checks"]["tiny-f32 max rel diff vs transformers"]
    if name.startswith("gemma"):
        specs.use_llamacpp_gelu(model)
        measured = ref["checks"]["tiny-f32 max rel diff vs transformers with llama.cpp's fp16-table GELU"]
    arrays = np.load(specs.HERE / name / "reference.npz")
    for i, prompt in enumerate(ref["prompts"]):
        assert tokenizer(prompt["text"])["input_ids"] == prompt["ids"]
        with torch.no_grad():
            logits = model(torch.tensor([prompt["ids"]])).logits[0].numpy()
        expected = arrays[f"tiny-f32.logits.{i}"]
        assert np.abs(logits - expected).max() / np.abs(expected).max() < max(1e-4, 3 * measured)


@pytest.mark.parametrize("name", FAMILIES)
def test_fixtures_are_well_conditioned(name):
    """What makes the references usable by an engine that computes in float32 (README, "Conditioning"), as
    make_fixtures.py recorded it: llama.cpp's rounding of activations (f16, Q8_0, Q8_K) moves the logits little,
    the logits are peaked, the perplexity text is predictable but not trivial, the family's feature bites, and the
    Q4_K_M file holds both K-quants. Fails when specs.GAINS is retuned badly and the fixtures regenerated."""
    ref = reference(name)
    checks = ref["checks"]
    assert checks["tiny-f16 max rel diff vs llama.cpp on its dequantized f32 copy"] < 6e-4
    for key in ("tiny-q8_0", "kquant-q4_k_m"):
        assert checks[f"{key} top-1 == llama.cpp on its dequantized f32 copy"] >= 0.98
        assert abs(checks[f"{key} mean nll - dequantized f32 mean nll"]) <= 0.003
        assert 0.5 < ref["perplexity"][key]["mean_nll"] < 4
    assert checks["margin min/median/mean"][1] >= 2
    assert checks["positions with margin < 0.1"] <= 3
    assert checks[next(k for k in checks if k.startswith("feature effect"))] >= 0.1
    assert {"Q4_K", "Q6_K"} <= set(ref["gguf"]["kquant-q4_k_m.gguf"]["tensors"].values())
