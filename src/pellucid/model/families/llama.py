"""Llama (Llama 2/3, SmolLM2 and the many models converted as "llama"): the plain pre-norm decoder.

RMSNorm before attention and FFN, grouped-query attention with RoPE, a SwiGLU feed-forward; small models tie
the output projection to the token embedding (no `output.weight`). Llama 3's long-context RoPE scaling
arrives as per-frequency divisors in `rope_freqs.weight`.

GGUF quirk: llama.cpp's converter permutes the rows of attn_q and attn_k within each head so that RoPE
rotates *adjacent* pairs (GGML_ROPE_TYPE_NORM) instead of HF's first-half/second-half pairs. We keep the
rows as stored and use the interleaved RoPE (`ModelConfig.rope_style = "interleaved"`, from
`ARCH_DEFAULTS`); an HF checkpoint of the same model would use "neox" instead.
"""

from pellucid.model.families import Family, TensorNames

FAMILY = Family(name="llama", architectures=("llama",), gguf_names=TensorNames())
