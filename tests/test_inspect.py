"""`inspect` on the three default models, checked against independent readers where one exists:
gguf-py (tensor sizes, where the metadata section ends), the safetensors library (parameter count), and
the models' published shapes (SmolLM2-135M: 30 layers, 9 heads / 3 KV heads; Gemma 3 270M: 18 layers,
sliding window 512 on five of every six layers)."""

from __future__ import annotations

import json

import gguf
import pytest

from pellucid.inspect import format_count, inspect_model, render_text, report_json
from pellucid.store import resolve


@pytest.fixture(scope="module")
def smollm2(smollm2_path):
    return inspect_model(resolve(smollm2_path))


@pytest.fixture(scope="module")
def smollm2_reader(smollm2_path):
    return gguf.GGUFReader(smollm2_path)


@pytest.fixture(scope="module")
def gemma3(gemma3_path):
    return inspect_model(resolve(gemma3_path))


@pytest.fixture(scope="module")
def minilm(minilm_path):
    return inspect_model(resolve(minilm_path))


def test_smollm2_shape(smollm2):
    c = smollm2.config
    assert smollm2.architecture == "llama"
    assert (c.n_layers, c.hidden_size, c.n_heads, c.n_kv_heads, c.gqa_ratio) == (30, 576, 9, 3, 3)
    assert (c.head_dim, c.ffn_size, c.context_length, c.rope_theta) == (64, 1536, 8192, 100_000.0)
    assert smollm2.identity.size_label == "135M" and smollm2.identity.license == "apache-2.0"
    assert smollm2.file_precision == "Q4_1"
    assert format_count(smollm2.n_parameters) == "135M"


def test_smollm2_tokenizer(smollm2):
    t = smollm2.tokenizer
    assert (t.kind, t.pre, t.vocab_size) == ("gpt2", "smollm", 49152)
    assert (t.special["bos"].id, t.special["bos"].text) == (1, "<|im_start|>")
    assert (t.special["eos"].id, t.special["eos"].text) == (2, "<|im_end|>")
    assert t.chat_template and "ChatML" in t.chat_note
    assert t.add_bos is False


def test_smollm2_quant_shares_and_bits_per_weight(smollm2, smollm2_reader):
    shares = {q.type: q for q in smollm2.quant}
    assert set(shares) == {"Q4_1", "Q8_0", "F32"}
    assert shares["Q4_1"].bits_per_weight == 5.0  # 20 bytes per 32 weights
    assert shares["Q8_0"].bits_per_weight == 8.5  # 34 bytes per 32 weights
    reader = smollm2_reader
    total_bytes = sum(int(t.n_bytes) for t in reader.tensors)
    total_weights = sum(int(t.n_elements) for t in reader.tensors)
    assert smollm2.n_parameters == total_weights
    assert smollm2.memory.weights == sum(q.n_bytes for q in smollm2.quant) == total_bytes
    # The engine keeps the matrices packed as in the file (Q4_1, Q8_0: views of its bytes) and the norms f32.
    assert smollm2.memory.weights_loaded == total_bytes
    assert smollm2.bits_per_weight == pytest.approx(8 * total_bytes / total_weights)


def test_smollm2_layout_matches_gguf_py(smollm2, smollm2_reader):
    lay = smollm2.layout
    reader = smollm2_reader
    first_info = min(int(t.field.offset) for t in reader.tensors)  # where the tensor descriptions start
    assert lay.metadata_bytes == first_info - 24  # after magic, version and the two counts
    assert lay.header_bytes + lay.padding_bytes + lay.tensor_bytes + lay.trailing_bytes == lay.file_size
    assert lay.first_tensor_offset == min(int(t.data_offset) for t in reader.tensors)
    assert lay.last_tensor_end == lay.file_size == 98_362_432
    assert (lay.alignment, lay.format, lay.n_tensors) == (32, "GGUF v3", len(reader.tensors))


def test_smollm2_memory(smollm2):
    m = smollm2.memory
    assert m.kv_bytes_per_token_by_type["f16"] == 30 * 3 * (64 + 64) * 2
    assert m.kv_bytes_per_token_by_type["q8_0"] == 30 * 3 * (64 + 64) // 32 * 34
    # the report's own type is the engine's default: f16, or f32 in the tests' exact mode
    assert m.kv_bytes_per_token == m.kv_bytes_per_token_by_type[m.kv_type]
    assert m.kv_at_context == m.kv_bytes_per_token * 8192
    assert m.kv_at_reference == m.kv_bytes_per_token * 4096
    assert m.weights < m.total_at_reference < m.total_at_context


def test_gemma3_is_reported_as_a_base_model_with_sliding_windows(gemma3):
    c = gemma3.config
    assert gemma3.architecture == "gemma3"
    assert (c.n_layers, c.n_heads, c.n_kv_heads, c.head_dim, c.sliding_window) == (18, 4, 1, 256, 512)
    assert [i for i, local in enumerate(c.sliding_layers) if not local] == [5, 11, 17]
    assert c.rope_theta == 1_000_000.0 and c.rope_theta_local == 10_000.0
    assert gemma3.file_precision == "Q4_K_M"
    t = gemma3.tokenizer
    assert (t.kind, t.vocab_size, t.add_bos, t.chat_template) == ("llama", 262_144, True, False)
    assert "base" in t.chat_note and "chat" in t.chat_note
    assert any("base" in note for note in gemma3.notes)
    text = render_text(gemma3)
    assert "no chat template" in text and "layers 5, 11, 17" in text


def test_gemma3_kv_cache_stops_growing_on_window_layers(gemma3):
    from pellucid.engine.kv_cache import REUSE_SLACK

    per_layer_token = 1 * (256 + 256) * {"f32": 4, "f16": 2}[gemma3.memory.kv_type]  # the default: f32 in exact mode
    # a sliding layer holds its 512-token ring and the prefill tail that lets a prefix be reused
    assert gemma3.memory.kv_at_context == per_layer_token * (15 * (2 * 512 + REUSE_SLACK) + 3 * 32768)


def test_minilm_hf_folder(minilm, minilm_path):
    from safetensors import safe_open

    with safe_open(str(minilm_path / "model.safetensors"), "pt") as f:
        slices = [f.get_slice(k) for k in f.keys()]  # noqa: SIM118 (safe_open is not iterable)
        float_params = sum(_numel(s.get_shape()) for s in slices if s.get_dtype().startswith(("F", "BF")))
    assert minilm.n_parameters == float_params == 22_713_216
    assert minilm.encoder_only and minilm.architecture == "bert"
    assert minilm.memory.kv_bytes_per_token == 0 and minilm.memory.kv_at_context == 0
    assert minilm.tokenizer.kind == "wordpiece"
    assert minilm.tokenizer.special["cls"].id == 101 and minilm.tokenizer.special["sep"].text == "[SEP]"
    assert minilm.identity.license == "apache-2.0"
    assert minilm.config.context_length == 512
    assert "no RoPE" in render_text(minilm)


def _numel(shape) -> int:
    n = 1
    for d in shape:
        n *= d
    return n


@pytest.mark.parametrize("name", ["smollm2", "gemma3", "minilm"])
def test_report_renders_and_serializes(name, request):
    report = request.getfixturevalue(name)
    text = render_text(report)
    for section in ("What it is", "Weights", "Shape", "Tokenizer", "File layout", "Memory"):
        assert section in text
    data = json.loads(json.dumps(report_json(report)))
    assert data["n_parameters"] == report.n_parameters
    assert data["config"]["n_layers"] == report.config.n_layers


def test_format_count():
    assert format_count(134_515_008) == "135M"
    assert format_count(22_713_216) == "22.7M"
    assert format_count(6_738_415_616) == "6.74B"
    assert format_count(999) == "999"


def test_mxfp4_matrices_are_shown_at_4_25_bits(tmp_path):
    from model_helpers import tiny_config, write_mxfp4_llama

    held = write_mxfp4_llama(tmp_path / "tiny-mxfp4.gguf", tiny_config("llama"))
    report = inspect_model(resolve(tmp_path / "tiny-mxfp4.gguf"))
    shares = {q.type: q for q in report.quant}
    n_mxfp4 = sum(t.numel() for name, t in held.items() if ".ffn_" in name and t.dim() == 2)
    assert shares["MXFP4"].n_elements == n_mxfp4 and shares["MXFP4"].bits_per_weight == 4.25  # 17 bytes per 32
    assert report.memory.weights_loaded == report.memory.weights  # packed in place: held as the file's bytes
    assert "MXFP4" in render_text(report)
