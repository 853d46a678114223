"""Phi-3 and Phi-3.5 mini, Phi-4-mini: llama's skeleton with fused projections and LongRoPE.

- q, k and v are one matrix (`qkv_proj` / `attn_qkv`: rows of q, then k, then v), and so are the FFN's gate
  and up (`gate_up_proj`; in GGUF `ffn_up` holds both, 2 x ffn rows: gate first). The loader splits them into
  row views of the same bytes, so the shared blocks see ordinary projections.
- LongRoPE: each frequency is divided by its own factor, "short" factors for contexts up to the original
  4,096 tokens and "long" ones beyond; cos and sin are also multiplied by sqrt(1 + ln(s) / ln(4096)) for the
  stretch s = context / 4096. Which set applies is decided by the context the model runs with (llama.cpp's
  rule, and the only one under which a KV cache stays valid); transformers decides per forward call from the
  sequence length, which gives the same numbers whenever the two contexts fall on the same side of 4,096.
- Phi-4-mini rotates only the first 3/4 of each head (`partial_rotary_factor`, GGUF `rope.dimension_count`).
- config.json's `sliding_window` (2,047 for Phi-3-mini-4k; 262,144 elsewhere) is applied as transformers
  does for HF folders; llama.cpp ignores it for this architecture ("Phi SWA is currently disabled"), and so
  do GGUF files here, to match it.
NeoX RoPE pairing in both formats.
"""

from dataclasses import replace

from pellucid.model.families import Family, TensorNames, hf_names

FAMILY = Family(
    name="phi3",
    architectures=("phi3",),
    # GGUF: the fused names; a file with separate attn_q/k/v (some converters) loads too
    gguf_names=TensorNames(qkv="blk.{i}.attn_qkv.weight", gate=None, up=None, gate_up="blk.{i}.ffn_up.weight"),
    hf_model_types=("phi3",),
    hf_names=replace(
        hf_names(qkv="model.layers.{i}.self_attn.qkv_proj.weight", gate_up="model.layers.{i}.mlp.gate_up_proj.weight"),
        q=None,
        k=None,
        v=None,
        gate=None,
        up=None,
    ),
    gguf_defaults={"ignores_sliding_window": True},
)
