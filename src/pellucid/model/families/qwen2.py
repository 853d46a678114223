"""Qwen 2 and 2.5 (and DeepSeek-R1-Distill-Qwen): llama's skeleton with biases on the q, k and v projections.

The biases are separate tensors (`attn_q.bias` in GGUF, `q_proj.bias` in HF); the output projection and the
FFN have none. RoPE rotates halves (NeoX pairing) in both formats: llama.cpp's converter does not permute
Qwen's rows. Small models (0.5B-3B) tie the output head to the embedding.
"""

from pellucid.model.families import Family, TensorNames

FAMILY = Family(name="qwen2", architectures=("qwen2",), gguf_names=TensorNames(), hf_model_types=("qwen2",))
