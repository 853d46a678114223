"""Llama 4 (Scout 17B-16E, Maverick 17B-128E; the text decoder): llama's blocks with four changes.

- **Mixture of experts** on every `interleave_moe_layer_step`-th layer (Scout: every layer, Maverick: every
  second; the others a dense FFN of `intermediate_size_mlp`): a router picks the top-1 expert by its logit, and
  sigmoid(logit) scales the expert's *input* (`expert_weights_on_input`); a shared expert of the experts' width
  (`intermediate_size`) runs on every token, ungated.
- **Chunked attention** on RoPE layers: a token attends only within its chunk of `attention_chunk_size` (8192)
  positions, chunks starting at multiples of it (`chunked_layers`; a full KV cache with a mask: see
  layers/attention.py).
- **RoPE-free global layers** every fourth (`no_rope_layers`: 1 = rotate), whose queries get the attention
  temperature 1 + attn_scale * ln(1 + floor((p + 1) / floor_scale)) (`attn_temperature_tuning`).
- **QK "L2" norm** (`use_qk_norm`; Scout yes, Maverick no): a weightless RMSNorm over each head of q and k,
  after RoPE, on RoPE layers only (`qk_norm = "post_rope"`).

RoPE rotates adjacent pairs in both formats: Meta's checkpoints were never permuted to HF's rotate-half layout
(transformers applies it as complex multiplication), and llama.cpp's converter leaves q/k as they are. RoPE is
llama3-scaled (config.json `rope_scaling`; GGUF `rope_freqs.weight`).

GGUF (llama.cpp's `llama4`): llama.cpp hard-codes the chunk (8192), floor_scale (8192), attn_scale (0.1) and the
RoPE-free pattern (every fourth layer), ignoring the config's values, unless the file says
`llama4.attention.sliding_window` = 0 (MobileLLM-style: no chunks, RoPE everywhere); it applies the QK norm unless
the model has 128 experts (Maverick); the shared expert is as wide as a routed one. We read files the same way.

Hugging Face: model_type `llama4_text` (inside `text_config` of Llama4ForConditionalGeneration, whose decoder is
under `language_model.model.`), experts stored as two 3-D stacks, transposed (see `TensorNames.gate_up_exps`);
the image encoder's tensors (`vision_model.`, `multi_modal_projector.`) are not read.
"""

from typing import Any

from pellucid.model.config import sliding_pattern
from pellucid.model.families import Family, TensorNames, hf_names

# llama.cpp's constants for Llama 4 (src/models/llama4.cpp), which its GGUF files do not carry
GGUF_CHUNK = 8192
GGUF_TEMPERATURE = (8192.0, 0.1)  # floor_scale, attn_scale
NO_ROPE_EVERY = 4

_MOE = "model.layers.{i}.feed_forward."


def _moe_switches(n_layers: int, step: int, expert_ffn: int) -> dict[str, Any]:
    return {
        "n_shared_experts": 1,
        "shared_expert_ffn_size": expert_ffn,
        "expert_gating": "sigmoid",  # of the chosen logit: top-1 by logit is top-1 by sigmoid
        "expert_weights_norm": False,
        "expert_weights_on_input": True,
        "moe_layers": [(i + 1) % step == 0 for i in range(n_layers)] if step > 1 else [],
    }


def gguf_config(get, fields: dict[str, Any]) -> dict[str, Any]:
    n_layers = fields["n_layers"]
    out = {}
    if fields.get("n_experts"):
        out = _moe_switches(n_layers, int(get("interleave_moe_layer_step", 1) or 1), fields["expert_ffn_size"])
    out["qk_norm"] = "post_rope" if fields.get("n_experts") != 128 else ""
    if get("attention.sliding_window") == 0:  # llama.cpp: no chunks, and RoPE on every layer
        return {**out, "sliding_window": None, "sliding_layers": [], "rope_layers": []}
    rope_layers = sliding_pattern(n_layers, NO_ROPE_EVERY)
    return {
        **out,
        "sliding_window": None,  # the GGUF key means the chunk here, never a sliding window
        "sliding_layers": [],
        "rope_layers": rope_layers,
        "attention_chunk_size": GGUF_CHUNK,
        "chunked_layers": rope_layers,
        "attn_temperature": GGUF_TEMPERATURE,
    }


def hf_config(text: dict[str, Any], fields: dict[str, Any]) -> dict[str, Any]:
    n_layers = fields["n_layers"]
    flags = text.get("no_rope_layers")
    if not flags:
        every = int(text.get("no_rope_layer_interval") or NO_ROPE_EVERY)
        flags = [(i + 1) % every != 0 for i in range(n_layers)]
    rope_layers = [bool(x) for x in flags]
    chunk = text.get("attention_chunk_size")
    layer_types = text.get("layer_types") or [
        "chunked_attention" if r and chunk is not None else "full_attention" for r in rope_layers
    ]
    chunked = [t == "chunked_attention" for t in layer_types]
    out = {
        "ffn_size": text.get("intermediate_size_mlp") or fields["ffn_size"],
        "rope_layers": rope_layers,
        "attention_chunk_size": chunk if any(chunked) else None,
        "chunked_layers": chunked if any(chunked) else [],
        "qk_norm": "post_rope" if text.get("use_qk_norm", True) else "",
        "rope_style": "interleaved",  # transformers rotates adjacent pairs (complex multiplication) for Llama 4
    }
    if text.get("attn_temperature_tuning", True):
        out["attn_temperature"] = (float(text.get("floor_scale", 8192)), float(text.get("attn_scale", 0.1)))
    if fields.get("n_experts"):
        out.update(_moe_switches(n_layers, int(text.get("interleave_moe_layer_step") or 1), fields["expert_ffn_size"]))
        if text.get("moe_layers") is not None:
            moe = set(text["moe_layers"])
            out["moe_layers"] = [i in moe for i in range(n_layers)]
    return out


FAMILY = Family(
    name="llama4",
    architectures=("llama4",),
    gguf_names=TensorNames(),
    hf_model_types=("llama4_text",),
    hf_names=hf_names(
        gate=_MOE + "gate_proj.weight",
        up=_MOE + "up_proj.weight",
        down=_MOE + "down_proj.weight",
        router=_MOE + "router.weight",
        router_bias=None,
        gate_exps=None,
        up_exps=None,
        gate_up_exps=_MOE + "experts.gate_up_proj",
        down_exps=_MOE + "experts.down_proj",
        gate_shexp=_MOE + "shared_expert.gate_proj.weight",
        up_shexp=_MOE + "shared_expert.up_proj.weight",
        down_shexp=_MOE + "shared_expert.down_proj.weight",
    ),
    gguf_defaults={"rope_style": "interleaved"},
    gguf_config=gguf_config,
    hf_config=hf_config,
)
