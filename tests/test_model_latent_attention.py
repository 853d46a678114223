"""Multi-head latent attention (DeepSeek's MLA, `layers/latent_attention.py`) beyond what the zoo checks.

The zoo (tests/zoo/deepseek2, tests/test_model_zoo.py) checks a DeepSeek-V3-shaped tiny model (low-rank query,
YaRN) against transformers and llama.cpp. Here: a DeepSeek-V2-Lite-shaped one (no low-rank query), which
llama.cpp cannot convert at a tiny size (it requires q_lora_rank unless a model has 26 or 27 layers), against
transformers alone, with mscale != mscale_all_dim so YaRN's cos/sin factor is not 1, dense and with V2-Lite's
mixture of experts; the two ways of attending (absorbed and decompressed) against each other; the latent KV
cache's size; which routing config.json selects.
Tolerances as in test_model_zoo.py (1e-4 of the largest logit vs transformers; float32 rounding between paths).
"""

from __future__ import annotations

import pytest
import torch

from pellucid.model.config import config_from_hf
from pellucid.model.layers import attention_mask
from pellucid.model.loader import load_model

transformers = pytest.importorskip("transformers")
TOL = dict(rtol=1e-5, atol=1e-5)  # two orders of the same float32 sums

V2_LITE = dict(  # DeepSeek-V2-Lite's attention at a tiny size: no q_lora_rank, YaRN with mscale 1 vs 0.707
    vocab_size=64,
    hidden_size=32,
    intermediate_size=48,
    moe_intermediate_size=16,
    num_hidden_layers=2,
    first_k_dense_replace=2,
    n_routed_experts=4,
    num_experts_per_tok=2,
    num_attention_heads=4,
    num_key_value_heads=4,
    q_lora_rank=None,
    kv_lora_rank=24,
    qk_nope_head_dim=16,
    qk_rope_head_dim=8,
    v_head_dim=12,
    max_position_embeddings=2048,
    tie_word_embeddings=False,
    rope_parameters={
        "rope_type": "yarn",
        "rope_theta": 10000.0,
        "factor": 8.0,
        "original_max_position_embeddings": 256,
        "beta_fast": 32.0,
        "beta_slow": 1.0,
        "mscale": 1.0,
        "mscale_all_dim": 0.707,
    },
)


@pytest.fixture(scope="module")
def v2_lite(tmp_path_factory):
    """A tiny DeepseekV2ForCausalLM with random weights (scaled up so attention is not uniform), saved as a folder."""
    torch.manual_seed(0)
    config = transformers.DeepseekV2Config(**V2_LITE)
    model = transformers.DeepseekV2ForCausalLM(config).eval()
    with torch.no_grad():
        for name, p in model.named_parameters():
            if not name.endswith("norm.weight"):
                p.normal_(0.0, 1.0 / p.shape[-1] ** 0.5)
    folder = tmp_path_factory.mktemp("deepseek-v2-lite")
    model.save_pretrained(folder)
    return folder, model


@torch.inference_mode()
def test_v2_lite_without_low_rank_query_matches_transformers(v2_lite, monkeypatch):
    monkeypatch.setenv("PELLUCID_COMPILE", "0")
    folder, theirs = v2_lite
    ours = load_model(folder, device="cpu")
    assert ours.config.q_lora_rank == 0 and ours.config.rope_attention_factor != 1.0
    ids = torch.randint(0, 64, (1, 40), generator=torch.Generator().manual_seed(2))
    expected = theirs(ids).logits
    got = ours(ids)
    assert float((got - expected).abs().max() / expected.abs().max()) <= 1e-4
    # through the cache: prefill (decompressed), decode steps (absorbed), a chunk over a longer cache (absorbed)
    cache = ours.make_cache(capacity=40)
    steps = torch.cat(
        [ours(ids[:, :12], cache)]
        + [ours(ids[:, t : t + 1], cache) for t in range(12, 33)]
        + [ours(ids[:, 33:], cache)],
        1,
    )
    torch.testing.assert_close(steps, got, rtol=1e-4, atol=1e-4 * float(got.abs().max()))


@torch.inference_mode()
def test_absorbed_and_decompressed_attention_agree(v2_lite, monkeypatch):
    """The two orders of the same sums: K_b folded into the queries (decode) or applied to the cached latents."""
    monkeypatch.setenv("PELLUCID_COMPILE", "0")
    model = load_model(v2_lite[0], device="cpu")
    attn = model.blocks[0].attn
    g = torch.Generator().manual_seed(3)
    T, S = 6, 15
    q_nope = torch.randn(1, T, attn.n_heads, attn.nope_dim, generator=g)
    q_pe = torch.randn(1, T, attn.n_heads, attn.rope_dim, generator=g)
    keys = torch.randn(1, 1, S, attn.rank + attn.rope_dim, generator=g)
    assert not attn._decompress_is_cheaper(T, S)  # a short chunk over a longer cache absorbs
    mask = attention_mask(T, S, None, keys.device)
    absorbed = attn._attend_absorbed(q_nope, q_pe, keys, mask, False)
    torch.testing.assert_close(absorbed, attn._attend_decompressed(q_nope, q_pe, keys, mask, False), **TOL)
    keys = keys[:, :, :T]  # a fresh prompt: causal, decompressed
    assert attn._decompress_is_cheaper(T, T)
    absorbed = attn._attend_absorbed(q_nope, q_pe, keys, None, True)
    torch.testing.assert_close(absorbed, attn._attend_decompressed(q_nope, q_pe, keys, None, True), **TOL)


def test_latent_cache_holds_latent_and_rope_key_per_token(v2_lite):
    model = load_model(v2_lite[0], device="cpu")
    c = model.config
    assert c.kv_cache_shape == (1, 24 + 8, 0)
    assert c.kv_bytes_per_token(2) == 2 * (24 + 8) * 2  # layers x (kv_lora_rank + rope dims) x f16
    mha = c.n_layers * c.n_heads * (c.head_dim + c.value_head_dim) * 2  # the decompressed keys and values
    assert mha == 2 * 4 * (24 + 12) * 2
    cache = model.make_cache(capacity=100)
    assert cache.n_bytes == 100 * c.kv_bytes_per_token(4)


@torch.inference_mode()
def test_v2_lite_mixture_of_experts_matches_transformers(tmp_path, monkeypatch):
    """DeepSeek-V2-Lite's MoE layers after its first dense one: softmax scores, top-3 of 8 chosen without groups
    ("greedy") and not normalised, two shared experts; MLA without a low-rank query. The zoo's deepseek2moe
    checks V3's routing (sigmoid, bias, groups) against both references; llama.cpp cannot convert this shape at
    a tiny size (see the module docstring), so transformers is the only reference here."""
    monkeypatch.setenv("PELLUCID_COMPILE", "0")
    torch.manual_seed(1)
    config = transformers.DeepseekV2Config(
        **dict(V2_LITE, num_hidden_layers=3, first_k_dense_replace=1, n_routed_experts=8, num_experts_per_tok=3),
        n_shared_experts=2,
        routed_scaling_factor=1.0,
        norm_topk_prob=False,
        topk_method="greedy",
    )
    theirs = transformers.DeepseekV2ForCausalLM(config).eval()
    for name, p in theirs.named_parameters():
        if not name.endswith("norm.weight"):
            p.normal_(0.0, (2.0 if name.endswith("mlp.gate.weight") else 1.0) / p.shape[-1] ** 0.5)
    theirs.save_pretrained(tmp_path)
    ours = load_model(tmp_path, device="cpu")
    c = ours.config
    assert (c.n_experts, c.n_experts_used, c.expert_gating, c.n_expert_groups) == (8, 3, "softmax", 0)
    assert c.moe_layers == [False, True, True] and c.shared_expert_ffn_size == 2 * 16
    ids = torch.randint(0, 64, (1, 40), generator=torch.Generator().manual_seed(4))
    expected = theirs(ids).logits
    got = ours(ids)
    assert float((got - expected).abs().max() / expected.abs().max()) <= 1e-4
    cache = ours.make_cache(capacity=40)
    steps = torch.cat([ours(ids[:, :9], cache)] + [ours(ids[:, t : t + 1], cache) for t in range(9, 40)], 1)
    torch.testing.assert_close(steps, got, rtol=1e-4, atol=1e-4 * float(got.abs().max()))


def test_v3_routing_is_read_from_config_json():
    """V3 (and Kimi K2, model_type kimi_k2) route by sigmoid within groups, V2 by softmax; the counts are what
    `inspect` shows, and an all-dense config has no experts."""
    v3_json = transformers.DeepseekV3Config(**dict(V2_LITE, first_k_dense_replace=1), n_group=2, topk_group=1).to_dict()
    for config_json in (v3_json, dict(v3_json, model_type="kimi_k2")):
        c = config_from_hf(config_json)
        assert (c.n_experts, c.n_experts_used, c.expert_gating, c.n_expert_groups) == (4, 2, "sigmoid", 2)
    assert config_from_hf(transformers.DeepseekV3Config(**V2_LITE).to_dict()).n_experts == 0  # all dense
    v2 = config_from_hf(transformers.DeepseekV2Config(**dict(V2_LITE, first_k_dense_replace=1)).to_dict())
    assert (v2.expert_gating, v2.n_expert_groups) == ("softmax", 0)


@pytest.mark.parametrize("family", ["deepseek2", "deepseek2moe"])
def test_server_answers_a_chat_request_on_the_tiny_deepseek_gguf(family):
    """One real request through `pellucid serve` on the zoo's DeepSeek-V3-shaped files, dense and with experts
    (its real chat template, the latent KV cache, the batched decode step, the MoE layers)."""
    import json
    import urllib.request
    from pathlib import Path

    from server_helpers import HTTP_TIMEOUT_S, running_server

    gguf = Path(__file__).parent / "zoo" / family / "tiny-q8_0.gguf"
    with running_server(gguf, "--ctx", "128", "--parallel", "2") as server:
        body = {"messages": [{"role": "user", "content": "Count the stars."}], "max_tokens": 8, "temperature": 0}
        request = urllib.request.Request(
            server.url + "/v1/chat/completions", json.dumps(body).encode(), {"Content-Type": "application/json"}
        )
        with urllib.request.urlopen(request, timeout=HTTP_TIMEOUT_S) as r:
            reply = json.loads(r.read())
    assert reply["usage"]["completion_tokens"] >= 1
    assert reply["usage"]["prompt_tokens"] > 5
    assert reply["choices"][0]["finish_reason"] in ("length", "stop")
