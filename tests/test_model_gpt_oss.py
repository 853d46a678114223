"""GPT-OSS's mechanisms beyond what the zoo's end-to-end checks (tests/test_model_zoo.py, family gpt_oss) cover.

- Attention sinks in the native decode kernels (attend_one, store_attend) against the same arithmetic in PyTorch.
- OpenAI's released Hugging Face layout: experts stored as MXFP4 `*_blocks` / `*_scales` (OpenAI's nibble order,
  gate and up rows interleaved), loaded without dequantizing, against transformers on the same weights dequantized.
- The explicit attention path (sinks, soft-caps) in chunks of queries; a harmony reply read by `chat`.
"""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
import torch

from pellucid.model.families.gpt_oss import openai_to_ggml_nibbles
from pellucid.quant import native
from test_model_zoo import ZOO, prompts, relative_error

transformers = pytest.importorskip("transformers")


def _eager_attention_with_sinks(q, k, v, sinks, scale):
    """q (B, 1, H, D), k/v (B, Hkv, S, D), sinks (H,) -> (B, 1, H * D): transformers' GPT-OSS eager attention."""
    B, _, H, D = q.shape
    group = H // k.shape[1]
    k, v = k.repeat_interleave(group, 1), v.repeat_interleave(group, 1)  # (B, H, S, D)
    scores = torch.einsum("bhd,bhsd->bhs", q[:, 0], k) * scale
    weights = torch.softmax(torch.cat([scores, sinks.view(1, H, 1).expand(B, H, 1)], -1), -1)[..., :-1]
    return torch.einsum("bhs,bhsd->bhd", weights, v).reshape(B, 1, H * D)


@pytest.mark.skipif(not native.available(), reason="the native kernels need an x86-64 CPU with AVX512-VNNI")
def test_native_decode_attention_with_sinks():
    g = torch.Generator().manual_seed(0)
    B, H, Hkv, S, D = 2, 4, 2, 11, 16
    q = torch.randn(B, 1, H, D, generator=g)
    k, v = torch.randn(B, Hkv, S, D, generator=g), torch.randn(B, Hkv, S, D, generator=g)
    sinks = torch.tensor([-1.0, 0.5, 2.0, 4.0])  # large ones take most of a head's attention
    expected = _eager_attention_with_sinks(q, k, v, sinks, 0.25)
    torch.testing.assert_close(native.attend_one(q, k, v, None, 0.25, None, sinks=sinks), expected)
    without = native.attend_one(q, k, v, None, 0.25, None)
    assert (without - expected).abs().max() > 0.1  # the sinks bite

    # the batched step: each sequence's new key and value written into its cache, then attention over its slots
    keys, values = [k[b : b + 1].clone() for b in range(B)], [v[b : b + 1].clone() for b in range(B)]
    new_k, new_v = torch.randn(B, 1, Hkv, D, generator=g), torch.randn(B, 1, Hkv, D, generator=g)
    out = native.store_attend(q, new_k, new_v, keys, values, [S - 1, 3], [S, S], 0.25, None, sinks=sinks)
    for b, slot in enumerate([S - 1, 3]):
        kb, vb = k[b : b + 1].clone(), v[b : b + 1].clone()
        kb[0, :, slot], vb[0, :, slot] = new_k[b, 0], new_v[b, 0]
        torch.testing.assert_close(out[b : b + 1], _eager_attention_with_sinks(q[b : b + 1], kb, vb, sinks, 0.25))


def _ggml_to_openai_nibbles(codes: np.ndarray) -> np.ndarray:
    """ggml's 16 code bytes (byte j: values j low, j + 16 high) in OpenAI's order (byte j: values 2j, 2j + 1)."""
    values = np.concatenate([codes & 0x0F, codes >> 4], axis=-1)  # (..., 32) in order
    return values[..., 0::2] | (values[..., 1::2] << 4)


def test_openai_nibble_order_round_trip():
    codes = np.random.default_rng(0).integers(0, 256, (5, 16), dtype=np.uint8)
    back = openai_to_ggml_nibbles(torch.from_numpy(_ggml_to_openai_nibbles(codes)))
    assert np.array_equal(back.numpy(), codes)


def _mxfp4_folder(hf_folder, dest, dense_dest):
    """The tiny GPT-OSS folder with its experts as OpenAI ships them: MXFP4 blocks and scales, taken from llama.cpp's
    MXFP4_MOE quantization (tiny-mxfp4.gguf) and put back into OpenAI's layout. `dense_dest`: the same folder with
    those experts dequantized, in transformers' own (dense) layout."""
    from safetensors.torch import load_file, save_file

    from pellucid.formats.gguf import GGUFFile
    from pellucid.quant.dequant import dequantize
    from pellucid.quant.types import GGMLType

    tensors = load_file(hf_folder / "model.safetensors")
    blocks_out, dense = dict(tensors), dict(tensors)
    with GGUFFile(ZOO / "gpt_oss" / "tiny-mxfp4.gguf") as gguf:
        n_layers = 1 + max(int(n.split(".")[1]) for n in gguf.tensors if n.startswith("blk."))
        for i in range(n_layers):
            prefix = f"model.layers.{i}.mlp.experts."
            parts = {}
            for part in ("gate", "up", "down"):
                name = f"blk.{i}.ffn_{part}_exps.weight"
                shape = gguf.tensors[name].shape  # (experts, out, in)
                raw = np.array(gguf.raw(name)).reshape(*shape[:2], shape[2] // 32, 17)
                parts[part] = (
                    torch.from_numpy(_ggml_to_openai_nibbles(raw[..., 1:])),
                    torch.from_numpy(raw[..., 0].copy()),
                    dequantize(gguf.raw(name), GGMLType.MXFP4, shape),
                )
            gate_up_blocks = torch.stack([parts["gate"][0], parts["up"][0]], 2).flatten(1, 2)  # rows interleaved
            gate_up_scales = torch.stack([parts["gate"][1], parts["up"][1]], 2).flatten(1, 2)
            for name in ("gate_up_proj", "down_proj"):
                del blocks_out[prefix + name]
            blocks_out[prefix + "gate_up_proj_blocks"], blocks_out[prefix + "gate_up_proj_scales"] = (
                gate_up_blocks.contiguous(),
                gate_up_scales.contiguous(),
            )
            blocks_out[prefix + "down_proj_blocks"] = parts["down"][0].contiguous()
            blocks_out[prefix + "down_proj_scales"] = parts["down"][1].contiguous()
            gate_up = torch.stack([parts["gate"][2], parts["up"][2]], 2).flatten(1, 2)  # (experts, 2 x FFN, hidden)
            dense[prefix + "gate_up_proj"] = gate_up.transpose(1, 2).contiguous()
            dense[prefix + "down_proj"] = parts["down"][2].transpose(1, 2).contiguous()
    for folder, weights in ((dest, blocks_out), (dense_dest, dense)):
        shutil.copytree(hf_folder, folder)
        save_file(weights, folder / "model.safetensors", metadata={"format": "pt"})
    config = json.loads((dest / "config.json").read_text())
    config["quantization_config"] = {"quant_method": "mxfp4", "modules_to_not_convert": ["model.layers.*.self_attn"]}
    (dest / "config.json").write_text(json.dumps(config))


@torch.inference_mode()
def test_hf_folder_with_openai_mxfp4_experts(tmp_path, monkeypatch):
    """OpenAI's release format loads with the experts kept in MXFP4 (17 bytes per 32 weights, as in a GGUF file),
    and computes what transformers computes on the same weights dequantized (exact arithmetic: float32)."""
    from pellucid.model.loader import load_model
    from pellucid.quant.linear import QuantizedLinear
    from pellucid.quant.types import GGMLType

    monkeypatch.setenv("PELLUCID_COMPILE", "0")
    monkeypatch.setenv("PELLUCID_EXACT", "1")
    from pellucid.quant import kernels

    monkeypatch.setattr(kernels, "_fast", None)
    from zoo import specs

    folder = specs.build_hf_folder("gpt_oss", tmp_path / "tiny")
    _mxfp4_folder(folder, tmp_path / "mxfp4", tmp_path / "dense")
    ours = load_model(tmp_path / "mxfp4", device="cpu")
    experts = ours.blocks[0].mlp.experts
    for projection in (experts.gate[3], experts.up[3], experts.down[3]):
        assert isinstance(projection, QuantizedLinear) and projection.packed.ggml_type == GGMLType.MXFP4
    theirs = transformers.AutoModelForCausalLM.from_pretrained(tmp_path / "dense", dtype=torch.float32).eval()
    from pellucid.inspect import footprint
    from pellucid.store import resolve_path

    # `inspect` / `fit` count each MXFP4 block stack as the matrix it holds (its scales are no parameters)
    assert footprint(resolve_path(tmp_path / "mxfp4")).n_parameters == theirs.num_parameters()
    for ids in prompts("gpt_oss"):
        expected = theirs(torch.tensor([ids])).logits[0].numpy()
        assert relative_error(ours(torch.tensor([ids]))[0].numpy(), expected) <= 1e-4


def test_explicit_attention_in_chunks_of_queries(monkeypatch):
    """Sinks (and soft-caps) take the explicit path, which holds at most EXPLICIT_SCORES scores at once: a prompt cut
    into chunks of queries gives the same attention, sliding window included."""
    from pellucid.model.layers import attention

    torch.manual_seed(0)
    att = attention.Attention(
        None, None, None, None, n_heads=4, n_kv_heads=2, head_dim=16, value_head_dim=16, window=8, sinks=torch.randn(4)
    )
    q, k, v = torch.randn(1, 4, 50, 16), torch.randn(1, 2, 50, 16), torch.randn(1, 2, 50, 16)
    whole = att._attend(q, k, v)
    monkeypatch.setattr(attention, "EXPLICIT_SCORES", 4 * 50 * 7)  # 7 queries at a time
    torch.testing.assert_close(att._attend(q, k, v), whole)


@torch.inference_mode()
def test_chat_reads_a_harmony_reply(monkeypatch):
    """A GPT-OSS GGUF (with its real harmony chat template) answering in channels: the analysis channel becomes the
    reasoning, the final channel the answer, and <|return|> ends it. The tiny model is made to say the reply."""
    from pellucid import api

    monkeypatch.setenv("PELLUCID_COMPILE", "0")
    llm = api.load(str(ZOO / "gpt_oss" / "tiny-mxfp4.gguf"))
    reply = (
        "<|channel|>analysis<|message|>Count the stars.<|end|>"
        "<|start|>assistant<|channel|>final<|message|>one, two<|return|>"
    )
    script = iter(llm.tokenizer.encode(reply, add_special=False, parse_special=True))
    model, logits = llm.session.model, llm.session.model.logits

    def scripted(hidden):  # each call picks the next token: the reply's, whatever the model would say
        out = torch.full_like(logits(hidden), -100.0)
        out[..., next(script)] = 100.0
        return out

    monkeypatch.setattr(model, "logits", scripted)
    generation = llm.chat([{"role": "user", "content": "Count the stars."}], max_tokens=60, temperature=0)
    assert "".join(chunk.text for chunk in generation) == "one, two"
    assert generation.reasoning == "Count the stars."
    assert generation.stats.stop_reason == "stop"


@pytest.mark.parametrize("n_tokens", [1, 5, 200])
@torch.inference_mode()
def test_biased_packed_experts_in_the_native_paths(n_tokens, monkeypatch):
    """Expert biases and the clamped SwiGLU around the native products: one token (all its experts' gate/up in one
    call), a few (grouped by expert), many (an expert's matrices unpacked for a GEMM). The default arithmetic rounds
    activations to int8 (~1%); a bias added to the wrong expert or row would move the output by ~30%."""
    from pellucid.model.layers import Experts, MoE
    from pellucid.model.layers.linear import Linear
    from pellucid.quant import kernels
    from pellucid.quant.dequant import dequantize
    from pellucid.quant.linear import QuantizedLinear
    from pellucid.quant.packed import pack
    from pellucid.quant.quantize import quantize
    from pellucid.quant.types import GGMLType

    monkeypatch.setenv("PELLUCID_COMPILE", "0")
    g = torch.Generator().manual_seed(1)
    E, hidden, width = 8, 64, 32
    mats = [torch.randn(E, width, hidden, generator=g) * 0.4, torch.randn(E, width, hidden, generator=g) * 0.4]
    mats.append(torch.randn(E, hidden, width, generator=g) * 0.2)
    biases = tuple(torch.randn(E, m.shape[1], generator=g) * 0.3 for m in mats)
    raws = [[quantize(m[e], GGMLType.Q8_0) for e in range(E)] for m in mats]
    packed = [[QuantizedLinear(pack(r, GGMLType.Q8_0, tuple(m.shape[1:]))) for r in rs] for rs, m in zip(raws, mats)]
    dense = [torch.stack([dequantize(r, GGMLType.Q8_0, tuple(m.shape[1:])) for r in rs]) for rs, m in zip(raws, mats)]
    router = Linear(torch.randn(E, hidden, generator=g) * 0.5, torch.randn(E, generator=g))
    moe = MoE(router, Experts(*packed, "swiglu_oai", biases=biases), 2, gating="softmax_weight")
    x = torch.randn(n_tokens, hidden, generator=g) * 3  # large enough for the clamp at 7 to bite

    weights, chosen = moe.route(x)  # the reference: transformers' GPT-OSS arithmetic on the dequantized matrices
    expected = torch.zeros(n_tokens, hidden)
    for t in range(n_tokens):
        for w, e in zip(weights[t], chosen[t].tolist()):
            gate, up = dense[0][e] @ x[t] + biases[0][e], dense[1][e] @ x[t] + biases[1][e]
            gate, up = gate.clamp(max=7.0), up.clamp(-7.0, 7.0)
            expected[t] += w * (dense[2][e] @ ((up + 1) * gate * torch.sigmoid(1.702 * gate)) + biases[2][e])
    outs = []
    for mode in ("1", ""):  # exact, then the default arithmetic (the native kernels where the CPU has them)
        monkeypatch.setenv("PELLUCID_EXACT", mode)
        monkeypatch.setattr(kernels, "_fast", None)
        outs.append(moe(x))
        tol = 1e-5 if mode else 3e-2
        torch.testing.assert_close(outs[-1], expected, rtol=0, atol=tol * float(expected.abs().max()))
    if native.available():  # the default arithmetic did take the native products (int8 activations)
        assert not torch.equal(outs[0], outs[1])
