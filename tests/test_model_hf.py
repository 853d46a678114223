"""Loading decoder families from Hugging Face folders and GGUF files: --quantize at load, the Python API on every
family in both formats, and bad input (files that contradict themselves, architectures pellucid does not run).

The models are the zoo's tiny random-weight families (tests/zoo/); their numbers are checked against transformers
and llama.cpp in test_model_zoo.py. Everything here runs eagerly (PELLUCID_COMPILE=0): the compiled decode step
is test_model_zoo.py's business, and compiling one graph per family would cost minutes here.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import pellucid
from pellucid.errors import ModelFileError, UnsupportedError
from pellucid.formats.gguf import GGUFFile
from pellucid.model.families import family_for_hf
from pellucid.model.loader import load_model
from pellucid.quant.quantize import quantize
from pellucid.quant.types import GGMLType

ZOO = Path(__file__).parent / "zoo"
FAMILIES = sorted(p.name for p in ZOO.iterdir() if (p / "reference.json").is_file())


@pytest.fixture(autouse=True)
def eager(monkeypatch):
    monkeypatch.setenv("PELLUCID_COMPILE", "0")


@pytest.fixture(scope="module")
def hf_folders(tmp_path_factory):
    from zoo import specs

    def folder(family: str, variant: str = "tiny") -> Path:
        return specs.build_hf_folder(family, tmp_path_factory.mktemp(f"{family}-{variant}"), variant)

    return folder


# -- --quantize: the same blocks llama.cpp's quantizer writes ---------------------------------------------------------


@pytest.mark.parametrize(
    ("family", "variant", "gguf_name", "target"),
    [
        ("qwen3", "tiny", "tiny-q8_0.gguf", "q8_0"),  # tied head, QK-norm
        ("olmo2", "tiny", "tiny-q8_0.gguf", "q8_0"),  # untied head, norms after the branches
        ("olmo2", "kquant", "kquant-q4_k_m.gguf", "q4_k"),
    ],
)
def test_quantize_at_load_writes_llama_cpp_blocks(hf_folders, family, variant, gguf_name, target):
    """An HF folder loaded with --quantize holds, matrix for matrix, the bytes llama.cpp's quantizer wrote into
    the GGUF converted from the same folder (NeoX families: the converter does not permute their rows). Q4_K_M
    files mix Q4_K with Q6_K; the matrices llama.cpp made Q4_K are compared."""
    from pellucid.model.loader import QUANTIZE_TYPES

    model = load_model(hf_folders(family, variant), device="cpu", quantize=target)
    packed = {
        "blk.0.attn_q.weight": model.blocks[0].attn.q_proj.packed,
        "blk.0.attn_output.weight": model.blocks[0].attn.o_proj.packed,
        "blk.0.ffn_up.weight": model.blocks[0].mlp.up_proj.packed,
    }
    compared = 0
    with GGUFFile(ZOO / family / gguf_name) as gguf:
        for name, ours in packed.items():
            info = gguf.tensors[name]
            if info.ggml_type != QUANTIZE_TYPES[target]:
                continue
            assert ours.ggml_type == info.ggml_type
            weights = torch.from_numpy(gguf.tensor(name).numpy())  # the file's dequantized values...
            source = _hf_matrix(hf_folders(family, variant), family, name)  # ...came from this float matrix
            assert bytes(quantize(source, info.ggml_type).numpy()) == bytes(gguf.raw(name)), name
            assert torch.equal(_dequantized(ours), weights)
            compared += 1
    assert compared >= 2


def _hf_matrix(folder: Path, family: str, gguf_name: str) -> torch.Tensor:
    from pellucid.formats.safetensors import HFFolder

    names = family_for_hf(family).hf_names
    hf_name = {"attn_q": names.q, "attn_output": names.o, "ffn_up": names.up}[gguf_name.split(".")[2]]
    with HFFolder(folder) as f:
        return f.tensor(hf_name.format(i=0), torch.float32)


def _dequantized(packed) -> torch.Tensor:
    from pellucid.quant.kernels import dequantize

    return dequantize(packed)


def test_quantize_keeps_rows_that_are_not_whole_blocks_as_llama_quantize_does(hf_folders):
    """The tiny models' rows are 32 wide: Q4_K (256-weight blocks) falls back to Q5_0 for them."""
    model = load_model(hf_folders("qwen3"), device="cpu", quantize="q4_k")
    assert model.blocks[0].attn.q_proj.packed.ggml_type == GGMLType.Q5_0


def test_quantize_is_refused_for_an_unknown_format(hf_folders):
    with pytest.raises(UnsupportedError, match="q8_0, q4_0, q4_k"):
        load_model(hf_folders("qwen3"), quantize="q3_k")


# -- the Python API on every family, both formats ---------------------------------------------------------------------


@pytest.mark.parametrize("fmt", ["hf", "tiny-q8_0.gguf"])
@pytest.mark.parametrize("family", FAMILIES)
def test_python_api_chats_with_every_family(hf_folders, family, fmt):
    """load -> chat template -> generate -> text, in both formats, and the two formats agree on the prompt."""
    # SmolLM3's template writes a long system prompt (~1,000 of the zoo's nearly one-byte tokens): default context
    llm = pellucid.load(str(hf_folders(family)) if fmt == "hf" else str(ZOO / family / fmt))
    messages = [{"role": "user", "content": "Count the stars."}]
    result = llm.chat(messages, max_tokens=8, temperature=0, ignore_eos=True).result()  # random weights: EOS any time
    assert result.stats.generated_tokens == 8 and result.stats.stop_reason == "length"
    assert result.text == llm.detokenize(result.ids, skip_special=True)
    if llm.has_chat_template:
        assert "Count the stars." in llm.render_chat(messages)


@pytest.mark.parametrize("family", [f for f in FAMILIES if f not in ("olmo2", "llama4")])  # no template in the fixtures
def test_both_formats_render_the_same_chat_prompt(hf_folders, family):
    """The GGUF file carries the folder's chat template and tokenizer: the same prompt, the same token ids."""
    messages = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Count the stars."}]
    hf = pellucid.load(str(hf_folders(family)), ctx=64)
    gguf = pellucid.load(str(ZOO / family / "tiny-f32.gguf"), ctx=64)
    assert hf.has_chat_template and gguf.has_chat_template
    try:
        expected = hf.render_chat(messages)
    except Exception:  # Gemma's template refuses a system role
        messages = messages[1:]
        expected = hf.render_chat(messages)
    assert gguf.render_chat(messages) == expected
    assert gguf.chat_prompt_ids(messages) == hf.chat_prompt_ids(messages)


# -- bad input: one line that says what is wrong --------------------------------------------------------------------


def test_a_shard_whose_shapes_disagree_with_config_json(hf_folders):
    folder = hf_folders("qwen3")
    config = json.loads((folder / "config.json").read_text())
    config["intermediate_size"] = 64  # the weights say 32
    (folder / "config.json").write_text(json.dumps(config))
    with pytest.raises(
        ModelFileError, match=r"'model\.layers\.0\.mlp\.gate_proj\.weight' has shape \(32, 32\).*\(64, 32\)"
    ):
        load_model(folder)


def test_a_missing_shard(hf_folders):
    folder = hf_folders("llama")  # saved as two shards
    next(folder.glob("model-00002-of-*.safetensors")).unlink()
    with pytest.raises(ModelFileError, match="incomplete.*model-00002-of-00002.safetensors.*missing"):
        load_model(folder)


def test_an_unsupported_model_type_names_its_closest_family(hf_folders):
    folder = hf_folders("qwen3")
    config = json.loads((folder / "config.json").read_text())
    config["model_type"] = "olmoe"
    (folder / "config.json").write_text(json.dumps(config))
    with pytest.raises(UnsupportedError, match=r"'olmoe'.*supported:.*olmo2.*Closest supported family: olmo2"):
        load_model(folder)


def _patched_gguf(tmp_path: Path, family: str, old: bytes, new: bytes) -> Path:
    path = tmp_path / f"{family}.gguf"
    shutil.copy(ZOO / family / "tiny-f32.gguf", path)
    data = path.read_bytes()
    assert data.count(old) == 1 and len(old) == len(new)
    path.write_bytes(data.replace(old, new))
    return path


def _u32_key(key: str, value: int) -> bytes:
    """How GGUF writes a uint32 key/value pair: key length (u64), key, type 4 (u32), value."""
    return len(key).to_bytes(8, "little") + key.encode() + (4).to_bytes(4, "little") + value.to_bytes(4, "little")


def test_gguf_head_count_that_contradicts_the_tensors(tmp_path):
    head_count = GGUFFile(ZOO / "qwen2" / "tiny-f32.gguf").metadata["qwen2.attention.head_count"]
    path = _patched_gguf(
        tmp_path, "qwen2", _u32_key("qwen2.attention.head_count", head_count), _u32_key("qwen2.attention.head_count", 1)
    )
    with pytest.raises(ModelFileError, match=r"blk\.0\.attn_\w\.weight' has shape .*\(1 heads, .*re-download"):
        load_model(path)


def test_gguf_missing_a_norm(tmp_path):
    path = _patched_gguf(tmp_path, "llama", b"blk.1.ffn_norm.weight", b"blk.1.ffn_nrmm.weight")
    with pytest.raises(ModelFileError, match=r"has no tensor 'blk\.1\.ffn_norm\.weight'"):
        load_model(path)


def test_cli_prints_one_line_for_a_contradicting_file(tmp_path, hf_folders):
    folder = hf_folders("qwen3")
    config = json.loads((folder / "config.json").read_text())
    config["num_attention_heads"] = 3
    (folder / "config.json").write_text(json.dumps(config))
    proc = subprocess.run(
        [sys.executable, "-m", "pellucid", "run", str(folder), "hi", "-n", "2"], capture_output=True, text=True
    )
    assert proc.returncode != 0
    assert proc.stderr.startswith("error: ") and "Traceback" not in proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1


# -- multimodal checkpoints: the text decoder inside ------------------------------------------------------------------


def _multimodal(kind: str):
    """A tiny random Gemma3ForConditionalGeneration / Mistral3ForConditionalGeneration, by transformers."""
    import transformers as T

    small = dict(vocab_size=128, hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4)
    small |= dict(num_key_value_heads=2, head_dim=16)
    vision = dict(hidden_size=32, intermediate_size=64, num_hidden_layers=1, num_attention_heads=2, image_size=32)
    if kind == "gemma3":
        config = T.Gemma3Config(
            text_config=T.Gemma3TextConfig(**small, sliding_window=8),
            vision_config=T.SiglipVisionConfig(**vision, patch_size=8),
            mm_tokens_per_image=4,
            image_token_index=127,
            boi_token_index=125,
            eoi_token_index=126,
        )
        return T.Gemma3ForConditionalGeneration(config)
    if kind == "llama4":  # 4 layers: chunks of 8, a RoPE-free layer with its temperature, MoE on layers 1 and 3
        text = T.Llama4TextConfig(**small | dict(num_hidden_layers=4), intermediate_size_mlp=128, num_local_experts=4,
                                  interleave_moe_layer_step=2, attention_chunk_size=8, floor_scale=4)  # fmt: skip
        vision = dict(vision, vision_output_dim=32, projector_input_dim=32, projector_output_dim=64)
        config = T.Llama4Config(text_config=text, vision_config=T.Llama4VisionConfig(**vision, patch_size=8))
        return T.Llama4ForConditionalGeneration(config)
    config = T.Mistral3Config(
        text_config=T.MistralConfig(**small),
        vision_config=T.PixtralVisionConfig(**vision, patch_size=8, head_dim=16),
        image_token_index=127,
    )
    return T.Mistral3ForConditionalGeneration(config)


@pytest.mark.parametrize("kind", ["gemma3", "mistral3", "llama4"])
@torch.inference_mode()
def test_multimodal_folder_runs_its_text_decoder(tmp_path, kind):
    """Gemma 3 4B+, Mistral Small 3.1+ and Llama 4 are published as image+text checkpoints: the decoder sits under
    language_model.*, beside an image encoder that text generation does not need. Same logits as transformers
    on text input."""
    torch.manual_seed(0)
    model = _multimodal(kind).eval()
    model.save_pretrained(tmp_path)
    ids = torch.randint(0, 120, (1, 20), generator=torch.Generator().manual_seed(0))
    expected = model(input_ids=ids).logits
    ours = load_model(tmp_path, device="cpu")(ids)
    assert float((ours - expected).abs().max() / expected.abs().max()) <= 1e-4
