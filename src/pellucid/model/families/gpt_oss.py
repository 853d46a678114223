"""GPT-OSS (gpt-oss-20b, gpt-oss-120b): OpenAI's mixture-of-experts decoder.

- Attention: 64 query heads and 8 KV heads of 64, biases on q/k/v/o, one learned **sink** logit per head that
  joins the softmax's denominator (`attention_sinks`; GGUF `attn_sinks`, HF `self_attn.sinks`). Layers alternate
  a 128-token sliding window (even layers) and full attention (llama.cpp's swa pattern 2, HF `layer_types`).
- RoPE: NEOX pairing, theta 150,000, YaRN x32 over 4,096 positions with cos/sin times 1 + 0.1 ln 32. config.json
  says `truncate: false` (the ramp's ends are not rounded to whole pairs), which transformers follows and
  llama.cpp does not (it always rounds): an HF folder runs as transformers runs it, a GGUF file as llama.cpp does.
- Every FFN is a mixture of experts (32 or 128, top-4) with no shared expert: the router has a bias, chooses the
  experts by its logits and weighs them by a softmax over the chosen logits only (`expert_gating
  "softmax_weight"`, llama.cpp's LLAMA_EXPERT_GATING_FUNC_TYPE_SOFTMAX_WEIGHT, not written in the file). Expert
  projections have biases (GGUF `ffn_{gate,up,down}_exps.bias`, (experts, out)) and the clamped SwiGLU
  (`activation "swiglu_oai"`: model/layers/mlp.py). The FFN's norm is GGUF's `post_attention_norm`.
- Released GGUF files keep the experts in MXFP4 (llama.cpp's MXFP4_MOE: experts MXFP4, the rest Q8_0 or F32).

Hugging Face checkpoints keep each layer's experts as two stacks, transposed against the usual (out, in) layout:
`mlp.experts.gate_up_proj` (experts, hidden, 2 x FFN) with gate and up columns interleaved (gate at even ones),
`mlp.experts.down_proj` (experts, FFN, hidden), and their biases `gate_up_proj_bias` (interleaved too) and
`down_proj_bias`. OpenAI's release stores the two weight stacks in MXFP4 instead, as `*_blocks` (experts, out,
in / 32, 16 bytes, already (out, in)) and `*_scales` (experts, out, in / 32): `hf_weights` offers both as
pellucid's per-projection stacks, the MXFP4 ones repacked into ggml's block layout (the bytes llama.cpp's
converter writes) without dequantizing.
"""

from __future__ import annotations

from typing import Any

import torch

from pellucid.model.families import Family, TensorNames, hf_names
from pellucid.quant.dequant import dequantize
from pellucid.quant.packed import pack
from pellucid.quant.types import GGMLType

_EXPERTS = "model.layers.{i}.mlp.experts."


def hf_config(text: dict[str, Any], fields: dict[str, Any]) -> dict[str, Any]:
    return {
        # OpenAI's config.json also spells top-k `experts_per_token`
        "n_experts_used": fields.get("n_experts_used") or text.get("experts_per_token") or 0,
        "activation": "swiglu_oai",
        "swiglu_alpha": float(text.get("swiglu_alpha") or 1.702),
        "swiglu_limit": float(text.get("swiglu_limit") or 7.0),
    }


def hf_weights(weights, config, config_json: dict[str, Any]) -> None:
    """Offer each layer's experts as gate / up / down stacks (experts, out, in) and their biases (experts, out)."""
    for i in range(config.n_layers):
        prefix = _EXPERTS.format(i=i)
        for part, pick in (("gate", 0), ("up", 1)):  # gate at even columns of gate_up, up at odd ones
            _offer_stack(weights, prefix, "gate_up_proj", f"{part}_proj", pick)
            bias = prefix + "gate_up_proj_bias"
            if weights.has(bias):
                n, width = weights.shape(bias)
                weights.derive(f"{prefix}{part}_proj.bias", (n, width // 2), (bias,), _loader(weights, bias, pick=pick))
        _offer_stack(weights, prefix, "down_proj", "down_proj", None)
        if weights.has(prefix + "down_proj_bias"):
            bias = prefix + "down_proj_bias"
            weights.derive(prefix + "down_proj.bias", weights.shape(bias), (bias,), _loader(weights, bias))


def _offer_stack(weights, prefix: str, stored: str, name: str, pick: int | None) -> None:
    """`name`.weight (experts, out, in) from the checkpoint's `stored` stack: dense (transposed, gate/up columns
    interleaved) or MXFP4 blocks and scales (rows already (out, in), gate/up rows interleaved)."""
    source = prefix + stored
    if weights.has(source):
        n, k, out = weights.shape(source)  # (experts, in, out [x 2 for gate_up])
        if pick is not None:
            out //= 2
        load = _loader(weights, source, pick=pick, transpose=True)
        weights.derive(f"{prefix}{name}.weight", (n, out, k), (source,), load)
    elif weights.has(source + "_blocks"):
        blocks, scales = source + "_blocks", source + "_scales"
        n, rows, n_blocks, _ = weights.shape(blocks)
        out = rows // 2 if pick is not None else rows
        shape = (n, out, n_blocks * 32)

        def ggml_bytes() -> torch.Tensor:  # ggml's MXFP4 blocks: the E8M0 scale byte, then 16 bytes of codes
            b, s = weights.stored(blocks), weights.stored(scales)
            if pick is not None:
                b, s = b[:, pick::2], s[:, pick::2]
            return torch.cat([s.unsqueeze(-1), openai_to_ggml_nibbles(b)], dim=-1).reshape(-1)

        weights.derive(
            f"{prefix}{name}.weight",
            shape,
            (blocks, scales),
            lambda: dequantize(ggml_bytes(), GGMLType.MXFP4, shape),
            lambda: pack(ggml_bytes(), GGMLType.MXFP4, (n * out, n_blocks * 32)),
        )


def _loader(weights, name: str, pick: int | None = None, transpose: bool = False):
    def load() -> torch.Tensor:
        t = weights.stored(name)
        if pick is not None:
            t = t[..., pick::2]
        return (t.transpose(-1, -2) if transpose else t).contiguous()

    return load


def openai_to_ggml_nibbles(blocks: torch.Tensor) -> torch.Tensor:
    """MXFP4 blocks of 16 bytes from OpenAI's order (byte j: values 2j low nibble, 2j + 1 high) to ggml's (byte j:
    values j low, j + 16 high); the E2M1 codes themselves are the same (llama.cpp's converter does this)."""
    values = torch.stack([blocks & 0x0F, blocks >> 4], dim=-1).flatten(-2)  # (..., 32) codes in order
    return values[..., :16] | (values[..., 16:] << 4)


FAMILY = Family(
    name="gpt_oss",
    architectures=("gpt-oss",),
    gguf_names=TensorNames(ffn_norm="blk.{i}.post_attention_norm.weight"),
    hf_model_types=("gpt_oss",),
    hf_names=hf_names(
        router="model.layers.{i}.mlp.router.weight",
        router_bias=None,
        gate_exps=_EXPERTS + "gate_proj.weight",
        up_exps=_EXPERTS + "up_proj.weight",
        down_exps=_EXPERTS + "down_proj.weight",
    ),
    defaults={
        "activation": "swiglu_oai",
        "expert_gating": "softmax_weight",
        "attention_sinks": True,
        "sliding_window_every": 2,
    },
    hf_config=hf_config,
    hf_weights=hf_weights,
)
