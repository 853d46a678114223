"""The fit planner: size parsing, the KV-cache and weight arithmetic, the context search, and real models.

Oracles: the rule of thumb that Llama-7B's f16 KV cache costs 0.5 MiB per token (2 x 32 layers x 32 heads
x 128 dims x 2 bytes, exact), and block sizes from ggml's type traits worked out by hand. (The weight bytes
of the real files are checked against gguf-py's reader in test_inspect.py.)
"""

from __future__ import annotations

import dataclasses

import pytest

from pellucid import memory
from pellucid.errors import PellucidError
from pellucid.memory import Footprint, GiB, KiB, MiB, TensorSize
from pellucid.model.config import ModelConfig, config_from_gguf
from pellucid.quant.types import GGMLType
from pellucid.store import resolve


def llama7b_config(**overrides) -> ModelConfig:
    """Llama-7B's shape, built the way a GGUF file's metadata would be read."""
    metadata = {
        "general.architecture": "llama",
        "llama.block_count": 32,
        "llama.embedding_length": 4096,
        "llama.attention.head_count": 32,
        "llama.attention.head_count_kv": 32,
        "llama.feed_forward_length": 11008,
        "llama.context_length": 4096,
        "llama.vocab_size": 32000,
    }
    config = config_from_gguf(metadata)
    assert config.head_dim == 128  # 4096 / 32
    return dataclasses.replace(config, **overrides)


def llama7b_footprint(**overrides) -> Footprint:
    c = llama7b_config(**overrides)
    tensors = [TensorSize("token_embd.weight", (c.vocab_size, c.hidden_size), c.vocab_size * c.hidden_size * 2)]
    for i in range(c.n_layers):
        for name, shape in [
            ("attn_q", (4096, 4096)),
            ("attn_k", (4096, 4096)),
            ("attn_v", (4096, 4096)),
            ("attn_output", (4096, 4096)),
            ("ffn_gate", (11008, 4096)),
            ("ffn_up", (11008, 4096)),
            ("ffn_down", (4096, 11008)),
        ]:
            tensors.append(TensorSize(f"blk.{i}.{name}.weight", shape, shape[0] * shape[1] * 2))
        tensors.append(TensorSize(f"blk.{i}.attn_norm.weight", (4096,), 4096 * 4))
    return Footprint(c, tuple(tensors), metadata_bytes=0, file_precision="F16")


# -- sizes ----------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "text, expected",
    [
        ("8GiB", 8 * GiB),
        ("8GB", 8 * 10**9),
        ("512MiB", 512 * MiB),
        ("1.5G", int(1.5 * GiB)),
        ("8 gib", 8 * GiB),
        ("4096", 4096),
        ("64k", 64 * KiB),
        ("2TB", 2 * 10**12),
    ],
)
def test_parse_size(text, expected):
    assert memory.parse_size(text) == expected


@pytest.mark.parametrize("text", ["lots", "8XB", "-1G", "0", "", "1.2.3G", "G"])
def test_parse_size_rejects_nonsense_with_a_hint(text):
    with pytest.raises(PellucidError, match="8GiB"):
        memory.parse_size(text)


def test_format_bytes():
    assert memory.format_bytes(512) == "512 B"
    assert memory.format_bytes(1536) == "1.5 KiB"
    assert memory.format_bytes(98_362_432) == "93.8 MiB"
    assert memory.format_bytes(8 * GiB) == "8 GiB"


# -- the arithmetic -------------------------------------------------------------------------------------


def test_kv_cache_rule_of_thumb_llama7b():
    """Llama-7B in f16: 2 (K and V) x 32 layers x 32 heads x 128 dims x 2 bytes = 0.5 MiB per token."""
    config = llama7b_config()
    assert memory.kv_cache_bytes(config, 1, "f16") == 512 * KiB
    assert memory.kv_cache_bytes(config, 4096, "f16") == 2 * GiB
    # q8_0 stores 32 values in 34 bytes, q4_0 in 18: the cache shrinks by exactly those ratios.
    assert memory.kv_cache_bytes(config, 4096, "q8_0") == 2 * GiB * 34 // 64
    assert memory.kv_cache_bytes(config, 4096, "q4_0") == 2 * GiB * 18 // 64
    assert memory.kv_cache_bytes(config, 4096, "f32") == 4 * GiB


def test_kv_cache_of_grouped_query_attention_shrinks_with_kv_heads():
    assert memory.kv_cache_bytes(llama7b_config(n_kv_heads=8), 1, "f16") == 128 * KiB


def test_kv_cache_sliding_window_layers_stop_growing():
    """Gemma-3-like: 5 of every 6 layers keep only the last 512 tokens, and a prefill tail of 512 + REUSE_SLACK
    positions for prefix reuse (engine/kv_cache.py)."""
    from pellucid.engine.kv_cache import REUSE_SLACK

    sliding = [(i + 1) % 6 != 0 for i in range(18)]
    config = llama7b_config(
        n_layers=18, n_kv_heads=1, head_dim=256, value_head_dim=256, sliding_window=512, sliding_layers=sliding
    )
    per_layer_token = 1 * (256 + 256) * 2
    expected = per_layer_token * (15 * (2 * 512 + REUSE_SLACK) + 3 * 32768)
    assert memory.kv_cache_bytes(config, 32768, "f16") == expected
    assert memory.kv_cache_bytes(config, 100, "f16") == per_layer_token * 18 * 100


def test_encoder_only_models_have_no_kv_cache():
    assert memory.kv_cache_bytes(llama7b_config(architecture="bert"), 512) == 0


def test_requantized_weights_use_ggml_block_sizes():
    fp = llama7b_footprint()
    n_matrix = sum(t.n_elements for t in fp.tensors if len(t.shape) == 2)
    n_norm = 32 * 4096
    assert memory.weight_bytes(fp.tensors, "file") == n_matrix * 2 + n_norm * 4
    assert memory.weight_bytes(fp.tensors, "f32") == (n_matrix + n_norm) * 4
    assert memory.weight_bytes(fp.tensors, "q8_0") == n_matrix // 32 * 34 + n_norm * 4
    assert memory.weight_bytes(fp.tensors, "q4_0") == n_matrix // 32 * 18 + n_norm * 4


def test_rows_that_are_not_whole_blocks_fall_back_to_f16():
    assert memory.requantized_type((10, 100), GGMLType.Q4_0) == GGMLType.F16
    assert memory.requantized_type((10, 128), GGMLType.Q4_0) == GGMLType.Q4_0
    assert memory.requantized_type((128,), GGMLType.Q4_0) == GGMLType.F32


def test_mxfp4_matrices_and_expert_stacks_are_held_as_stored():
    """MXFP4 is read in place (17 bytes per 32 weights), a 2-D matrix and a GPT-OSS-20B-shaped expert stack alike."""
    matrix = TensorSize("blk.0.attn_q.weight", (2880, 2880), 2880 * 90 * 17, ggml_type=GGMLType.MXFP4)
    stack = TensorSize("blk.0.ffn_down_exps.weight", (32, 2880, 2880), 32 * 2880 * 90 * 17, ggml_type=GGMLType.MXFP4)
    for t in (matrix, stack):
        assert memory.engine_bytes(t) == t.n_bytes == t.n_elements * 17 // 32


def test_unknown_precision_is_a_user_error():
    with pytest.raises(PellucidError, match="f16"):
        memory.kv_cache_bytes(llama7b_config(), 10, "q3")


def test_total_is_the_documented_sum():
    fp = llama7b_footprint()
    e = memory.estimate(fp, 4096, weights_as="q4_0", kv_type="f16")
    assert e.total == e.framework + e.metadata + e.allocator + e.weights + max(e.kv_cache + e.compute.peak, e.loading)
    assert e.runtime == e.framework + e.metadata + e.allocator and e.allocator == 0  # nothing dequantized at load
    assert e.kv_cache == 2 * GiB
    assert e.loading == 0  # a q4_0 file is mapped and used as it is
    assert memory.estimate(fp, 4096, weights_as="f32").loading == memory.weight_bytes(fp.tensors, "file")
    # Packed weights are unpacked one matrix at a time: the largest is the 32000 x 4096 embedding.
    assert e.compute.dequant == 32000 * 4096 * 4
    assert memory.estimate(fp, 4096, weights_as="f32").compute.dequant == 0


def test_estimate_grows_with_context_and_rejects_zero():
    fp = llama7b_footprint()
    totals = [memory.estimate(fp, n, weights_as="q4_0").total for n in (1, 512, 513, 2048, 4096)]
    assert totals == sorted(totals) and totals[0] < totals[-1]
    with pytest.raises(PellucidError):
        memory.estimate(fp, 0)


def test_max_context_is_the_boundary():
    fp = llama7b_footprint()
    budget = memory.estimate(fp, 3000, weights_as="q4_0").total
    n = memory.max_context(fp, budget, weights_as="q4_0")
    assert memory.estimate(fp, n, weights_as="q4_0").total <= budget
    assert memory.estimate(fp, n + 1, weights_as="q4_0").total > budget
    assert n >= 3000
    assert memory.max_context(fp, 100 * GiB, weights_as="q4_0") == 4096  # capped at the model's context
    assert memory.max_context(fp, 1 * MiB, weights_as="q4_0") == 0


def test_plan_fit_marks_what_fits():
    fp = llama7b_footprint()
    budget = memory.Budget("--memory", "cpu", 8 * GiB)
    plan = memory.plan_fit(fp, "llama7b", 4096, [budget], "f16")  # the default's type outside exact mode
    rows = {r.weights_as: r for r in plan.targets[0].rows}
    assert set(rows) == set(memory.WEIGHTS_AS)
    assert not rows["f32"].fits and rows["q4_0"].fits  # 27 GB of f32 weights; 3.8 GB at q4_0
    for r in rows.values():
        assert r.fits == (r.estimate.total <= budget.bytes)
    text = memory.render_fit(plan)
    assert "does not fit" in text and "q4_0" in text


def test_detected_ram_is_plausible():
    ram = memory.ram_budget()
    assert ram.device == "cpu"
    assert ram.bytes > 0
    if ram.total:
        assert ram.bytes <= ram.total


# -- real files -----------------------------------------------------------------------------------------


def test_smollm2_kv_cache_per_token(smollm2_path):
    """30 layers x 3 KV heads x (64 + 64) dims x 2 bytes = 23,040 bytes per token in f16."""
    from pellucid.inspect import footprint

    fp = footprint(resolve(smollm2_path))
    assert memory.kv_cache_bytes(fp.config, 1, "f16") == 23_040
    assert memory.kv_cache_bytes(fp.config, 8192, "f16") == 23_040 * 8192
