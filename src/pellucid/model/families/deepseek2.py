"""DeepSeek-V2/V3/R1 and Kimi K2 (llama.cpp's `deepseek2`): multi-head latent attention, YaRN, MoE layers.

- Attention is MLA (`layers/latent_attention.py`, switched on by `kv_lora_rank`): a low-rank query (`q_a_proj` ->
  `q_a_layernorm` -> `q_b_proj`; V2-Lite has a plain `q_proj`), a shared latent and RoPE key (`kv_a_proj_with_mqa`
  -> [kv_lora_rank | qk_rope_head_dim], the latent normed by `kv_a_layernorm`), per-head decompression
  `kv_b_proj`. Query/key heads are qk_nope_head_dim + qk_rope_head_dim wide (RoPE on the last
  qk_rope_head_dim), values v_head_dim.
- RoPE rotates adjacent pairs (HF `rope_interleave`, default true; llama.cpp's NORM rope, weights unpermuted).
- YaRN: frequencies as usual for YaRN; the softmax scale is 1/sqrt(qk head dim) times mscale(factor,
  mscale_all_dim)^2, and cos/sin are multiplied by mscale(factor, mscale) / mscale(factor, mscale_all_dim)
  (1 for V3, whose two are equal). llama.cpp reads mscale_all_dim from `rope.scaling.yarn_log_multiplier`,
  which the converter writes as 0.1 x mscale_all_dim (llama.cpp divides it back), and assumes mscale ==
  mscale_all_dim.
- GGUF: the converter writes `attention.head_count_kv` 1, `key_length` kv_lora_rank + rope dims and
  `value_length` kv_lora_rank (the absorbed form's one shared "head"); the per-head sizes are
  `attention.key_length_mla` / `value_length_mla`. kv_b_proj is split into `attn_k_b` (heads, rank, nope:
  transposed) and `attn_v_b` (heads, v, rank); old files with one `attn_kv_b` load too.
- The feed-forward of the first `first_k_dense_replace` (GGUF `leading_dense_block_count`) layers is a dense
  gated MLP; the rest are mixtures of experts (`layers/moe.py`) with shared experts (`n_shared_experts`, each as
  wide as a routed one; GGUF `ffn_*_shexp`). V3 / R1 / Kimi K2 score experts by sigmoid, choose by the scores
  plus a selection-only bias (`e_score_correction_bias`, GGUF `exp_probs_b.bias`) within the best `topk_group`
  of `n_group` groups (a group scored by its two best biased scores), normalise the chosen weights and scale
  them by `routed_scaling_factor`. V2 / V2-Lite score by softmax, without groups (V2-Lite's "greedy") nor
  normalisation. transformers decides sigmoid or softmax by model type (V3 or V2), whatever `scoring_func`
  says; llama.cpp by `expert_gating_func`, which the converter writes from `scoring_func` (softmax when the
  key is absent). Full DeepSeek-V2's "group_limited_greedy" scores a group by its best expert, not its best
  two; llama.cpp and pellucid use the best two for every grouped model.
- MTP (multi-token prediction) layers past num_hidden_layers are not converted by llama.cpp and not read here.
"""

from dataclasses import replace
from typing import Any

from pellucid.model.config import hf_rope_parameters, yarn_mscale
from pellucid.model.families import Family, TensorNames, hf_names


def _experts(n_dense: int, n_layers: int, n_experts: int, n_used: int) -> dict[str, int]:
    """The expert counts the model runs with: none when every layer is dense (the converter writes the config's
    counts anyway, and llama.cpp builds no experts then), else the file's."""
    if n_dense >= n_layers:
        return {"n_experts": 0, "n_experts_used": 0}
    return {"n_experts": n_experts, "n_experts_used": n_used}


def _mla_query_scale(head_dim: int, factor: float, mscale_all_dim: float) -> float:
    return yarn_mscale(factor, mscale_all_dim) ** 2 / head_dim**0.5


def gguf_config(get, fields: dict[str, Any]) -> dict[str, Any]:
    rope_dim = fields["rope_dim"]
    head_dim = get("attention.key_length_mla") or fields["head_dim"]
    changes: dict[str, Any] = dict(
        kv_lora_rank=get("attention.kv_lora_rank"),
        q_lora_rank=get("attention.q_lora_rank", 0) or 0,
        n_kv_heads=fields["n_heads"],
        head_dim=head_dim,
        value_head_dim=get("attention.value_length_mla") or fields["value_head_dim"],
        rope_dim=rope_dim,
        **_experts(
            get("leading_dense_block_count", 0), fields["n_layers"], fields["n_experts"], fields["n_experts_used"]
        ),
    )
    scaling = fields["rope_scaling"]
    if scaling is not None and scaling.kind == "yarn":
        # the converter stores 0.1 x mscale_all_dim; llama.cpp takes mscale == mscale_all_dim, so cos/sin keep 1
        mscale_all_dim = (get("rope.scaling.yarn_log_multiplier") or 0.0) / 0.1
        changes["rope_attention_factor"] = float(get("rope.scaling.attn_factor", 1.0))
        changes["query_scale"] = _mla_query_scale(head_dim, scaling.factor, mscale_all_dim)
    return changes


def hf_config(text: dict[str, Any], fields: dict[str, Any]) -> dict[str, Any]:
    n_dense = (text.get("first_k_dense_replace") or 0) if text.get("n_routed_experts") else fields["n_layers"]
    head_dim = text["qk_nope_head_dim"] + text["qk_rope_head_dim"]
    changes: dict[str, Any] = dict(
        kv_lora_rank=text["kv_lora_rank"],
        q_lora_rank=text.get("q_lora_rank") or 0,
        n_kv_heads=fields["n_heads"],
        head_dim=head_dim,
        value_head_dim=text["v_head_dim"],
        rope_dim=text["qk_rope_head_dim"],
        rope_style="interleaved" if text.get("rope_interleave", True) else "neox",
        **_experts(
            n_dense, fields["n_layers"], text.get("n_routed_experts") or 0, text.get("num_experts_per_tok") or 0
        ),
    )
    if changes["n_experts"]:
        # transformers: V3 (and Kimi K2, a V3) sigmoid with groups, V2 softmax, grouped only by
        # "group_limited_greedy"
        v2 = text.get("model_type") == "deepseek_v2"
        changes["expert_gating"] = "softmax" if v2 else "sigmoid"
        if v2 and text.get("topk_method", "greedy") == "greedy":
            changes.update(n_expert_groups=0, n_expert_groups_used=0)
    scaling = fields["rope_scaling"]
    if scaling is not None:
        mscale_all_dim = hf_rope_parameters(text).get("mscale_all_dim") or 0.0
        changes["query_scale"] = _mla_query_scale(head_dim, scaling.factor, mscale_all_dim)
    return changes


_MLA_GGUF = TensorNames(
    q="blk.{i}.attn_q.weight",  # V2-Lite: no low-rank query
    k=None,
    v=None,
    q_a="blk.{i}.attn_q_a.weight",
    q_a_norm="blk.{i}.attn_q_a_norm.weight",
    q_b="blk.{i}.attn_q_b.weight",
    kv_a="blk.{i}.attn_kv_a_mqa.weight",
    kv_a_norm="blk.{i}.attn_kv_a_norm.weight",
    kv_b="blk.{i}.attn_kv_b.weight",  # files converted before the split
    k_b="blk.{i}.attn_k_b.weight",
    v_b="blk.{i}.attn_v_b.weight",
)

_ATTN = "model.layers.{i}.self_attn."
_MLA_HF = replace(
    hf_names(
        q=_ATTN + "q_proj.weight",
        q_a=_ATTN + "q_a_proj.weight",
        q_a_norm=_ATTN + "q_a_layernorm.weight",
        q_b=_ATTN + "q_b_proj.weight",
        kv_a=_ATTN + "kv_a_proj_with_mqa.weight",
        kv_a_norm=_ATTN + "kv_a_layernorm.weight",
        kv_b=_ATTN + "kv_b_proj.weight",
    ),
    k=None,
    v=None,
)

FAMILY = Family(
    name="deepseek2",
    architectures=("deepseek2",),
    gguf_names=_MLA_GGUF,
    hf_model_types=("deepseek_v2", "deepseek_v3", "kimi_k2"),
    hf_names=_MLA_HF,
    defaults={"rope_style": "interleaved"},
    gguf_config=gguf_config,
    hf_config=hf_config,
)
