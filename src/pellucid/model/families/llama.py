"""Llama (Llama 2, 3, 3.1, 3.2, 3.3; Mistral 7B, Nemo and Small; DeepSeek-R1-Distill-Llama; SmolLM2 and the many
models built the same way): the plain pre-norm decoder.

RMSNorm before attention and FFN, grouped-query attention with RoPE, a SwiGLU feed-forward; small models tie
the output projection to the token embedding. Llama 3.1+ stretches RoPE for long contexts ("llama3" scaling:
low frequencies divided by the factor, high ones kept, a ramp between); llama.cpp's converter stores the
result as per-frequency divisors in `rope_freqs.weight`, config.json as `rope_scaling`. Mistral Nemo's
heads are 128 wide although hidden / heads = 160 (`head_dim` in config.json, `attention.key_length` in GGUF).
llama.cpp converts Mistral models to the `llama` architecture, or to `mistral3` for Mistral Small 3.x, the
same graph (its optional attention-temperature scaling is refused by config.py); in HF form Mistral Small 3.1+
is `Mistral3ForConditionalGeneration`, whose text decoder (model_type mistral) runs here.

GGUF quirk: llama.cpp's converter permutes the rows of attn_q and attn_k within each head so that RoPE
rotates *adjacent* pairs (GGML_ROPE_TYPE_NORM) instead of HF's first-half/second-half pairs. We keep the
rows as stored and use the interleaved RoPE (`rope_style = "interleaved"` for GGUF files only); an HF
checkpoint of the same model rotates halves, as transformers does.
"""

from pellucid.model.families import Family, TensorNames

FAMILY = Family(
    name="llama",
    architectures=("llama", "mistral3"),
    gguf_names=TensorNames(),
    hf_model_types=("llama", "mistral"),
    gguf_defaults={"rope_style": "interleaved"},
)
