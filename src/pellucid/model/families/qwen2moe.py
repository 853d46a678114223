"""Qwen 2 MoE (Qwen1.5-MoE-A2.7B, Qwen2-57B-A14B): Qwen 2's attention (q/k/v biases) with a mixture-of-experts FFN:
softmax router, top-k without normalising the chosen weights (llama.cpp hard-codes that; config.json's
`norm_topk_prob` is read for HF folders), plus one shared expert that every token goes through, scaled by
sigmoid(x . w) (`shared_expert_gate`, GGUF `ffn_gate_inp_shexp`, a vector). Its width is
`shared_expert_intermediate_size` (GGUF `expert_shared_feed_forward_length`).
"""

from pellucid.model.families import Family, TensorNames, hf_names

_SHARED = "model.layers.{i}.mlp.shared_expert."

FAMILY = Family(
    name="qwen2moe",
    architectures=("qwen2moe",),
    gguf_names=TensorNames(),
    hf_model_types=("qwen2_moe",),
    hf_names=hf_names(
        gate_shexp=_SHARED + "gate_proj.weight",
        up_shexp=_SHARED + "up_proj.weight",
        down_shexp=_SHARED + "down_proj.weight",
        shexp_gate="model.layers.{i}.mlp.shared_expert_gate.weight",
    ),
    defaults={"shared_expert_gate": True},
)
