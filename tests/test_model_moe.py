"""Mixture-of-experts layers against transformers' own MoE blocks (float32, random weights).

The Qwen 3 MoE family is checked end to end against both references in test_model_zoo.py; here are the router
variants that family does not use: DeepSeek V3's sigmoid scores, selection-only bias, grouped top-k, scaling and
shared experts (DeepseekV3MoE), and Qwen 2 MoE's gated shared expert (a whole tiny model from an HF folder, whose
experts are stored one matrix each). Tolerance: float32 summation order, 1e-5 of the largest output.
"""

from __future__ import annotations

import pytest
import torch

from pellucid.model.layers import Experts, GatedMLP, Linear, MoE

transformers = pytest.importorskip("transformers")


def _deepseek_block():
    from transformers.models.deepseek_v3.modeling_deepseek_v3 import DeepseekV3MoE

    config = transformers.DeepseekV3Config(
        hidden_size=32,
        moe_intermediate_size=16,
        n_routed_experts=16,
        num_experts_per_tok=4,
        n_group=4,
        topk_group=2,
        n_shared_experts=2,
        routed_scaling_factor=2.5,
        norm_topk_prob=True,
    )
    torch.manual_seed(0)
    block = DeepseekV3MoE(config).eval()
    with torch.no_grad():
        for p in block.parameters():
            p.normal_(0, 0.3)
        # a bias large enough to change which experts (and groups) are chosen, but not the weights
        block.gate.e_score_correction_bias.normal_(0, 0.3)
    return config, block


def _ours(config, block) -> MoE:
    """The same block as pellucid's layers, built from transformers' tensors."""
    experts = block.experts
    width = config.moe_intermediate_size
    gate_up, down = experts.gate_up_proj.detach(), experts.down_proj.detach()
    shared = block.shared_experts
    return MoE(
        Linear(block.gate.weight.detach()),
        Experts(
            [Linear(m[:width]) for m in gate_up],
            [Linear(m[width:]) for m in gate_up],
            [Linear(m) for m in down],
            "silu",
        ),
        config.num_experts_per_tok,
        gating="sigmoid",
        normalize=True,
        scale=config.routed_scaling_factor,
        selection_bias=block.gate.e_score_correction_bias.detach(),
        n_groups=config.n_group,
        n_groups_used=config.topk_group,
        shared=GatedMLP(
            Linear(shared.gate_proj.weight.detach()),
            Linear(shared.up_proj.weight.detach()),
            Linear(shared.down_proj.weight.detach()),
            "silu",
        ),
    )


@pytest.mark.parametrize("n_tokens", [1, 3, 40])
@torch.inference_mode()
def test_deepseek_v3_routing_matches_transformers(n_tokens, monkeypatch):
    """Sigmoid scores, bias for choosing only, 2 of 4 groups, top-4, normalised then x2.5, two shared experts;
    one token (the decode path: all its experts' gate/up in one call) and many (grouped by expert)."""
    monkeypatch.setenv("PELLUCID_COMPILE", "0")
    config, block = _deepseek_block()
    ours = _ours(config, block)
    x = torch.randn(1, n_tokens, config.hidden_size)
    _, weights, experts = block.gate(x)
    our_weights, our_experts = ours.route(x.view(-1, config.hidden_size))
    # the same experts (transformers does not sort its top-k by score: compare as sets, weights matched)
    order, our_order = experts.sort(-1), our_experts.sort(-1)
    assert torch.equal(order.values, our_order.values)
    torch.testing.assert_close(weights.gather(1, order.indices), our_weights.gather(1, our_order.indices))
    expected = block(x)
    torch.testing.assert_close(ours(x), expected, rtol=0, atol=1e-5 * float(expected.abs().max()))


def test_grouped_routing_keeps_to_the_best_groups():
    """A token whose best single expert sits in a weak group does not get it (DeepSeek V3's group-limited routing)."""
    from pellucid.model.layers import route

    # 4 groups of 2: group 0 = {0.9, 0.0} sums 0.9; groups 1-2 sum 1.0 and 1.2; group 3 sums 0.1
    logits = torch.tensor([[0.9, 0.0, 0.5, 0.5, 0.6, 0.6, 0.1, 0.0]])
    weights, experts = route(logits, 2, gating="sigmoid", n_groups=4, n_groups_used=2)
    assert sorted(experts[0].tolist()) == [4, 5]  # from group 2 (1.2), not expert 0 (0.9, in group 0)
    _, ungrouped = route(logits, 2, gating="sigmoid")
    assert 0 in ungrouped[0].tolist()


@torch.inference_mode()
def test_qwen2_moe_folder_matches_transformers(tmp_path, monkeypatch):
    """Qwen 2 MoE from a folder written by transformers: per-expert matrices, the sigmoid-gated shared expert,
    q/k/v biases, unnormalised top-2 weights."""
    from pellucid.model.loader import load_model

    monkeypatch.setenv("PELLUCID_COMPILE", "0")
    config = transformers.Qwen2MoeConfig(
        vocab_size=64,
        hidden_size=32,
        intermediate_size=64,
        moe_intermediate_size=32,
        shared_expert_intermediate_size=48,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        num_experts=8,
        num_experts_per_tok=2,
        tie_word_embeddings=False,
    )
    torch.manual_seed(0)
    theirs = transformers.AutoModelForCausalLM.from_config(config).eval()
    with torch.no_grad():
        for name, p in theirs.named_parameters():
            p.normal_(1.0 if "norm" in name else 0.0, 0.1 if "norm" in name else 0.3)
    theirs.save_pretrained(tmp_path)
    ours = load_model(tmp_path, device="cpu")
    assert ours.config.shared_expert_gate and ours.config.shared_expert_ffn_size == 48
    ids = torch.randint(0, 64, (1, 20))
    expected = theirs(ids).logits
    torch.testing.assert_close(ours(ids), expected, rtol=0, atol=1e-5 * float(expected.abs().max()))


# -- reading only the chosen experts, and saying what that costs ---------------------------------------------

ZOO = __import__("pathlib").Path(__file__).parent / "zoo" / "qwen3moe"


@torch.inference_mode()
def test_each_chosen_expert_is_read_once_per_forward(monkeypatch):
    """Prefill (and a batched decode step) groups tokens by expert: one product per chosen expert, however many
    tokens chose it; a GGUF expert is a view of the stack's packed bytes, as many bytes as its share."""
    from pellucid.model.loader import load_model

    model = load_model(ZOO / "kquant-q4_k_m.gguf", device="cpu")
    experts = model.blocks[0].mlp.experts
    stack = experts.gate[0].packed
    assert stack.n_bytes * len(experts) == sum(e.packed.n_bytes for e in experts.gate)
    assert experts.gate[1].packed.qs.untyped_storage().data_ptr() == stack.qs.untyped_storage().data_ptr()
    calls = []
    real = type(experts)._ffn
    monkeypatch.setattr(type(experts), "_ffn", lambda self, x, e: calls.append((e, x.shape[0])) or real(self, x, e))
    ids = torch.arange(3, 43).view(1, 40)
    model(ids)
    chosen = [e for e, _ in calls[: len(experts)]]  # layer 0 (the kquant model has one layer)
    assert len(chosen) == len(set(chosen)) and sum(n for _, n in calls) == 40 * model.config.n_experts_used


def test_active_parameters_and_bytes_per_token():
    """inspect / fit count k of E routed experts as active, and a decode step's bytes from them; the loaded
    model's count (bench) agrees for a file whose matrices are all read in place (Q8_0)."""
    from pellucid.bench import decode_bytes
    from pellucid.inspect import footprint
    from pellucid.model.loader import load_model
    from pellucid.store import resolve_path

    fp = footprint(resolve_path(ZOO / "tiny-q8_0.gguf"))
    c = fp.config
    per_expert = 3 * c.hidden_size * c.expert_ffn_size
    idle = c.n_layers * (c.n_experts - c.n_experts_used) * per_expert
    assert fp.n_active_parameters == fp.n_parameters - idle
    model = load_model(ZOO / "tiny-q8_0.gguf", device="cpu")
    assert decode_bytes(model) == fp.decode_bytes


def test_too_large_for_ram_says_so_before_loading(monkeypatch):
    """The check run/chat/serve/bench make: refused with the numbers and the disk estimate, or (--allow-disk) a
    warning with the same numbers."""
    from pellucid import memory
    from pellucid.errors import PellucidError
    from pellucid.inspect import footprint
    from pellucid.store import resolve_path

    fp = footprint(resolve_path(ZOO / "kquant-q4_k_m.gguf"))
    assert memory.check_ram(fp, 256, "m") is None  # it fits the RAM here
    monkeypatch.setattr(memory, "ram_budget", lambda: memory.Budget("RAM available", "cpu", 100_000))
    with pytest.raises(PellucidError, match=r"needs about .* RAM available here is 97.7 KiB.*from disk.*--allow-disk"):
        memory.check_ram(fp, 256, "m")
    assert "ms per token" in memory.check_ram(fp, 256, "m", allow_disk=True)


@torch.inference_mode()
def test_one_token_path_equals_grouped_path(arithmetic):
    """A decode step's token (its k experts' gate/up in one native call, their down products in another, each on
    its own input) computes what the grouped path (prefill, batched decode) does for the same row."""
    from pellucid.model.loader import load_model

    moe = load_model(ZOO / "kquant-q4_k_m.gguf", device="cpu").blocks[0].mlp
    x = torch.randn(1, moe.experts.gate[0].in_features)
    weights, experts = moe.route(x)
    one = moe.experts(x, weights, experts)
    grouped = moe.experts(x.repeat(3, 1), weights.repeat(3, 1), experts.repeat(3, 1))
    torch.testing.assert_close(one[0], grouped[2], rtol=1e-5, atol=1e-5 * float(one.abs().max()))


def test_run_refuses_a_model_larger_than_ram_unless_allow_disk(monkeypatch, capsys):
    """What run/chat/serve/bench do before loading: refuse, or with --allow-disk warn and keep every matrix in the
    file's layout (repacked copies would sit in anonymous memory, which the OS cannot page back to the file)."""
    import argparse
    import os

    from pellucid import memory
    from pellucid.cli.common import check_fits_in_ram
    from pellucid.errors import PellucidError
    from pellucid.store import resolve_path

    monkeypatch.setattr(memory, "ram_budget", lambda: memory.Budget("RAM available", "cpu", 100_000))
    monkeypatch.setenv("PELLUCID_REPACK", "1")
    model = resolve_path(ZOO / "kquant-q4_k_m.gguf")
    args = argparse.Namespace(device="cpu", quantize=None, allow_disk=False)
    with pytest.raises(PellucidError, match="--allow-disk"):
        check_fits_in_ram(args, model, 256)
    check_fits_in_ram(argparse.Namespace(device="cpu", quantize=None, allow_disk=True), model, 256)
    assert "warning: " in capsys.readouterr().err and os.environ["PELLUCID_REPACK"] == "0"


@torch.inference_mode()
def test_batched_decode_of_a_quantized_moe_equals_separate_steps(arithmetic):
    """The server's batched step on packed experts: each step's experts grouped over the sequences (the native
    grouped products in the default arithmetic) give what one decode step per sequence gives."""
    from pellucid.model.loader import load_model
    from test_model_batch import compare_batched_with_separate

    model = load_model(ZOO / "kquant-q4_k_m.gguf", device="cpu")
    compare_batched_with_separate(model, [1, 3, 8, 20], steps=6, capacity=64)


@pytest.mark.parametrize("top_k", [1, 2])
@pytest.mark.parametrize("n_tokens", [1, 3, 40])
@torch.inference_mode()
def test_llama4_weights_scale_the_expert_input(top_k, n_tokens, monkeypatch):
    """Llama 4's MoE (Llama4TextMoe): top-k by router logit, sigmoid(logit) multiplying each chosen expert's *input*,
    plus an ungated shared expert; its experts stored as (experts, in, out) stacks with gate and up fused. Llama 4
    routes top-1; top-2 checks that each slot gets its own scaled input. Scaling the outputs instead differs."""
    from transformers.models.llama4.modeling_llama4 import Llama4TextMoe

    monkeypatch.setenv("PELLUCID_COMPILE", "0")
    config = transformers.Llama4TextConfig(hidden_size=32, intermediate_size=16, num_local_experts=4,
                                           num_experts_per_tok=top_k)  # fmt: skip
    torch.manual_seed(0)
    block = Llama4TextMoe(config).eval()
    for p in block.parameters():
        p.normal_(0, 0.5)
    width, gate_up, down = 16, block.experts.gate_up_proj.transpose(1, 2), block.experts.down_proj.transpose(1, 2)
    shared = block.shared_expert

    def ours(on_input: bool) -> MoE:
        return MoE(
            Linear(block.router.weight),
            Experts(
                [Linear(m[:width]) for m in gate_up],
                [Linear(m[width:]) for m in gate_up],
                [Linear(m) for m in down],
                "silu",
            ),  # fmt: skip
            top_k,
            gating="sigmoid",
            shared=GatedMLP(
                Linear(shared.gate_proj.weight), Linear(shared.up_proj.weight), Linear(shared.down_proj.weight), "silu"
            ),  # fmt: skip
            weights_on_input=on_input,
        )

    x = torch.randn(1, n_tokens, 32)
    expected = block(x)[0].view(1, n_tokens, 32)
    torch.testing.assert_close(ours(True)(x), expected, rtol=0, atol=1e-5 * float(expected.abs().max()))
    assert (ours(False)(x) - expected).abs().max() > 0.01 * expected.abs().max()


@torch.inference_mode()
def test_batched_decode_step_reads_each_chosen_expert_once(arithmetic, monkeypatch):
    """A batched decode step (the server's) groups its sequences' tokens by expert: each expert any sequence
    chose is multiplied once per layer and step, on all the rows routed to it, so a step reads the union of the
    chosen experts once (in the default arithmetic: one native grouped product per projection)."""
    from pellucid.model.loader import load_model
    from pellucid.quant import kernels

    model = load_model(ZOO / "kquant-q4_k_m.gguf", device="cpu")
    experts = model.blocks[0].mlp.experts
    gate_of = {id(m.packed): e for e, m in enumerate(experts.gate)}
    products = []  # per product: the experts whose gate matrices it read
    real_grouped, real_ffn = kernels.matmul_grouped, type(experts)._ffn

    def grouped(x, counts, packed):
        y = real_grouped(x, counts, packed)
        if y is not None and id(packed[0]) in gate_of:  # None: not run here (the caller goes expert by expert)
            products.append([gate_of[id(p)] for p in packed])
        return y

    monkeypatch.setattr(kernels, "matmul_grouped", grouped)
    monkeypatch.setattr(type(experts), "_ffn", lambda self, x, e: products.append([e]) or real_ffn(self, x, e))
    chosen = []
    real_route = type(model.blocks[0].mlp).route
    monkeypatch.setattr(
        type(model.blocks[0].mlp), "route", lambda self, x: chosen.append(real_route(self, x)) or chosen[-1]
    )
    caches = [model.make_cache(capacity=16) for _ in range(5)]
    model.decode_batch(torch.tensor([3, 9, 27, 81, 100]), caches)
    union = sorted(set(chosen[0][1].flatten().tolist()))  # layer 0's experts over the 5 sequences
    read = sorted(e for p in products for e in p)
    assert len(chosen) == 1 and chosen[0][1].shape == (5, model.config.n_experts_used)
    assert read == union  # each once
    assert len(products) == (1 if arithmetic == "default" else len(union))


@pytest.mark.parametrize("gating", ["softmax", "sigmoid"])
@pytest.mark.parametrize("normalize", [True, False])
def test_native_router_matches_route(gating, normalize):
    """The native router op (a decode step's routing in the default arithmetic) chooses what `route` chooses
    and gives its weights; tolerance: float32 summation order of the router's product."""
    from pellucid.model.layers.moe import route
    from pellucid.quant import native

    if not native.available():
        pytest.skip("the native kernels need an x86 CPU with AVX512-VNNI")
    g = torch.Generator().manual_seed(0)
    x, w = torch.randn(5, 256, generator=g), torch.randn(32, 256, generator=g) * 0.1
    weights, ids = native.moe_route(x, w, 4, gating, normalize, 2.5)
    expected, expected_ids = route(x @ w.T, 4, gating=gating, normalize=normalize, scale=2.5)
    assert torch.equal(ids, expected_ids) and ids.dtype == torch.int64
    torch.testing.assert_close(weights, expected, rtol=1e-5, atol=1e-6)


@torch.inference_mode()
def test_fused_experts_op_matches_its_parts():
    """`native.moe_experts` (a decode step's k experts in one op) against the same products as separate native
    calls (gate/up, glu, down, weighted sum): the same rounding of x and of each activation, so only float32
    summation order differs (1e-5 of the largest output)."""
    from pellucid.model.loader import load_model
    from pellucid.quant import kernels, native

    if not native.available():
        pytest.skip("the native kernels need an x86 CPU with AVX512-VNNI")
    experts = load_model(ZOO / "kquant-q4_k_m.gguf", device="cpu").blocks[0].mlp.experts
    g = torch.Generator().manual_seed(0)
    x = torch.randn(1, experts.gate[0].in_features, generator=g)
    chosen, weights = [len(experts) - 1, 0, 1], torch.tensor([0.5, 0.3, 0.2])
    specs = [[kernels.native_spec(m[e].packed) for m in (experts.gate, experts.up, experts.down)] for e in chosen]
    fused = native.moe_experts(x, weights, [native.expert_spec(*s) for s in specs], experts.activation)
    gate_up = native.gemv(x, [s for e in specs for s in e[:2]]).view(3, 2, -1)
    h = native.glu(gate_up[:, 0], gate_up[:, 1], experts.activation)
    y = native.gemv_grouped(h, [1, 1, 1], [e[2] for e in specs])
    expected = (y * weights[:, None]).sum(0, keepdim=True)
    assert fused.shape == expected.shape
    torch.testing.assert_close(fused, expected, rtol=1e-5, atol=1e-5 * float(expected.abs().max()))
