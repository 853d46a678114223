"""ModelConfig: the one dataclass that describes a transformer's shape, built from a model file.

Everything the engine, `inspect` and the memory planner need to know about a model's architecture is
here, read once from GGUF metadata (`{arch}.block_count`, `{arch}.attention.head_count`, ...) or, for
Hugging Face folders, from config.json. Family-specific facts that files do not state (Gemma 3's
local RoPE base, its every-sixth-layer global attention, OLMo 2's norm placement) are filled in from the
family's file (model/families/), so there is one place to read what pellucid assumes about a family.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

from pellucid.errors import UnsupportedError


@dataclass
class RopeScaling:
    """How a model stretches RoPE past the context it was trained on.

    kind "linear": positions divided by `factor`. "llama3": low frequencies divided by `factor`, high ones
    kept, a smooth ramp between (`extra`: low_freq_factor, high_freq_factor); GGUF files carry the result as
    `rope_freqs.weight`. "longrope" (Phi-3): per-frequency divisors, `short_factors` up to
    `original_context_length` and `long_factors` beyond it (GGUF: rope_factors_short/long tensors). "yarn"
    (DeepSeek V2/V3): high frequencies kept, low ones divided by `factor`, a linear ramp between them set by the
    `extra` beta_fast / beta_slow rotation counts over `original_context_length`.
    """

    kind: str
    factor: float = 1.0
    original_context_length: int | None = None
    extra: dict[str, float] = field(default_factory=dict)
    # YaRN: round the ramp's ends outwards to whole pairs (llama.cpp always; transformers unless config.json's
    # `truncate` is false, as GPT-OSS's is)
    truncate: bool = True
    short_factors: tuple[float, ...] | None = None
    long_factors: tuple[float, ...] | None = None


@dataclass
class ModelConfig:
    architecture: str  # the GGUF architecture name, or config.json's model_type for HF folders
    n_layers: int
    hidden_size: int
    n_heads: int
    n_kv_heads: int
    head_dim: int  # per-head size of queries and keys
    value_head_dim: int  # per-head size of values (usually == head_dim)
    ffn_size: int
    vocab_size: int
    context_length: int  # the longest context the model was trained for
    norm_eps: float
    rope_theta: float
    rope_dim: int  # how many of each head's dims are rotated (== head_dim unless partial rotary)
    rope_style: str = "neox"  # "neox" (rotate-half, HF) or "interleaved" (adjacent pairs, llama GGUF files)
    rope_scaling: RopeScaling | None = None
    rope_attention_factor: float = 1.0  # cos and sin are multiplied by it (Phi-3 LongRoPE's "mscale")
    rope_theta_local: float | None = None  # RoPE base for sliding-window layers, where it differs
    # False for layers that apply no RoPE at all (SmolLM3: every fourth); empty = every layer rotates
    rope_layers: list[bool] = field(default_factory=list)
    sliding_window: int | None = None
    # True for layers that attend within the sliding window only; empty = every layer is global
    sliding_layers: list[bool] = field(default_factory=list)
    # Chunked attention (Llama 4's local layers): a query sees only the keys of its chunk of this many positions,
    # chunks starting at multiples of it; `chunked_layers` says which layers (empty = none)
    attention_chunk_size: int | None = None
    chunked_layers: list[bool] = field(default_factory=list)
    # Llama 4's attention temperature on RoPE-free layers, (floor_scale, scale): queries at position p multiplied by
    # 1 + scale * ln(1 + floor((p + 1) / floor_scale)); None = off
    attn_temperature: tuple[float, float] | None = None
    attn_logit_softcap: float | None = None  # scores become cap * tanh(scores / cap) (Gemma 2)
    final_logit_softcap: float | None = None  # the same on the output logits
    query_scale: float | None = None  # multiplier on q·k; None = 1/sqrt(head_dim)
    activation: str = "silu"  # "silu" (SwiGLU), "gelu_tanh" (GeGLU) or "swiglu_oai" (GPT-OSS's clamped SwiGLU)
    swiglu_alpha: float = 1.702  # swiglu_oai: (clamp(up, ±limit) + 1) * g * sigmoid(alpha * g), g = min(gate, limit)
    swiglu_limit: float = 7.0
    # A learned per-head logit that joins each query's softmax denominator (GPT-OSS's attention sinks)
    attention_sinks: bool = False
    embedding_scale_by_sqrt_hidden: bool = False  # Gemma
    embedding_multiplier: float | None = None  # Granite: embeddings times this constant
    residual_multiplier: float | None = None  # Granite: each branch's output times this before the residual add
    logits_divisor: float | None = None  # Granite's logits_scaling: logits divided by it
    pre_norms: bool = True  # RMSNorm before attention and before the FFN (every family but OLMo 2)
    post_norms: bool = False  # RMSNorm after attention and after the FFN, before the residual add (Gemma, OLMo 2)
    norm_weight_offset: float = 0.0  # norms multiply by (offset + w): 1 for Gemma's HF checkpoints
    # RMSNorm on queries and keys before RoPE: "" none, "head" over each head (Qwen 3, Gemma 3),
    # "projection" over the whole q / k projection, all heads at once (OLMo 2); or "post_rope": a weightless
    # RMSNorm over each head *after* RoPE, on RoPE layers only (Llama 4's "L2 norm")
    qk_norm: str = ""
    tie_embeddings: bool = True  # no separate output matrix: logits use the token embedding
    # Mixture-of-experts feed-forwards (model/layers/moe.py); n_experts 0 = every layer has a dense FFN
    n_experts: int = 0  # routed experts per MoE layer
    n_experts_used: int = 0  # how many each token is routed to (top-k)
    expert_ffn_size: int = 0  # each routed expert's FFN width
    n_shared_experts: int = 0  # experts every token goes through (DeepSeek; Qwen 2 MoE's one shared expert)
    shared_expert_ffn_size: int = 0  # their FFN width, all shared experts together
    shared_expert_gate: bool = False  # the shared experts' output times sigmoid(x . w) (Qwen 2 MoE)
    # router scores: "softmax" over all experts, "sigmoid" of each (DeepSeek V3), or "softmax_weight": experts
    # chosen by their logits, then a softmax over the chosen ones' logits (GPT-OSS)
    expert_gating: str = "softmax"
    expert_weights_norm: bool = False  # the chosen experts' scores divided by their sum
    expert_weights_scale: float = 1.0  # ... then multiplied by this (DeepSeek's routed_scaling_factor)
    expert_weights_on_input: bool = False  # each weight scales its expert's input, not its output (Llama 4)
    n_expert_groups: int = 0  # grouped top-k (DeepSeek V3): experts split into groups, tokens pick from the
    n_expert_groups_used: int = 0  # best `n_expert_groups_used` groups by the sum of each group's top-2 scores
    # False for layers with a dense FFN in a MoE model (DeepSeek's first k); empty = every layer is MoE
    moe_layers: list[bool] = field(default_factory=list)
    # Multi-head latent attention (DeepSeek V2/V3, Kimi K2): keys and values are decompressed per head from a
    # latent of kv_lora_rank values shared by all heads, plus a rope_dim-wide RoPE key also shared; queries are
    # head_dim - rope_dim dims without RoPE followed by rope_dim with it. 0 = ordinary attention.
    kv_lora_rank: int = 0
    q_lora_rank: int = 0  # MLA's low-rank query (q_a -> RMSNorm -> q_b); 0 = one q projection (V2-Lite)

    def __post_init__(self):
        if self.qk_norm is True:  # older callers said qk_norm=True for the per-head kind
            self.qk_norm = "head"
        elif self.qk_norm is False or self.qk_norm is None:
            self.qk_norm = ""
        if self.qk_norm not in ("", "head", "projection", "post_rope"):
            raise ValueError(f"qk_norm must be '', 'head', 'projection' or 'post_rope', not {self.qk_norm!r}")

    def is_moe_layer(self, i: int) -> bool:
        return bool(self.n_experts) and (not self.moe_layers or self.moe_layers[i])

    @property
    def gqa_ratio(self) -> int:
        return self.n_heads // self.n_kv_heads

    @property
    def kv_cache_shape(self) -> tuple[int, int, int]:
        """What one layer caches per token: (heads, key dims, value dims).

        Latent attention caches no per-head keys or values, only the normed latent and the RoPE key, as one
        "key" of kv_lora_rank + rope_dim values and no value (its values are the latent part of that key).
        """
        if self.kv_lora_rank:
            return 1, self.kv_lora_rank + self.rope_dim, 0
        return self.n_kv_heads, self.head_dim, self.value_head_dim

    def kv_bytes_per_token(self, bytes_per_element: float = 2.0) -> float:
        """K and V for one token across all layers (f16 = 2 bytes per element)."""
        heads, key_dim, value_dim = self.kv_cache_shape
        return self.n_layers * heads * (key_dim + value_dim) * bytes_per_element

    def kv_cache_bytes(self, n_tokens: int, bytes_per_element: float = 2.0) -> float:
        """KV cache for a context of n_tokens; sliding-window layers keep at most `sliding_window` tokens, plus,
        when the context is longer than the window, the prefill tail that lets a prefix be reused (engine/kv_cache.py)."""
        heads, key_dim, value_dim = self.kv_cache_shape
        return self.kv_cache_positions(n_tokens) * heads * (key_dim + value_dim) * bytes_per_element

    def kv_cache_positions(self, n_tokens: int) -> int:
        """Positions the KV cache of a context of n_tokens holds, summed over the layers (each position one key and
        one value row per KV head): n_tokens per global layer; a sliding-window layer's ring and prefill tail."""
        from pellucid.engine.kv_cache import REUSE_SLACK

        total = 0
        for i in range(self.n_layers):
            local = bool(self.sliding_layers) and self.sliding_layers[i] and self.sliding_window
            if local and n_tokens > self.sliding_window:
                total += 2 * self.sliding_window + REUSE_SLACK  # the ring and its prefill tail
            else:
                total += n_tokens
        return total


def sliding_pattern(n_layers: int, every: int) -> list[bool]:
    """Every `every`-th layer global, the others sliding (Gemma 2: 2, Gemma 3: 6), as llama.cpp's swa pattern."""
    return [(i + 1) % every != 0 for i in range(n_layers)]


# -- from a GGUF file -------------------------------------------------------------------------------------


def config_from_gguf(metadata: dict[str, Any], tensor_names: set[str] | None = None) -> ModelConfig:
    """Build a ModelConfig from GGUF metadata (and tensor names, to tell tied from untied embeddings).

    Keys are llama.cpp's (`{arch}.block_count`, ...); what a family's files leave implicit (its activation,
    norm placement, RoPE pairing) comes from the family's `gguf_defaults` (model/families/).
    """
    from pellucid.model.families import known_family

    arch = metadata.get("general.architecture")
    if not arch:
        raise UnsupportedError("the GGUF file has no general.architecture key; it is not a model file")

    def get(suffix: str, default: Any = None) -> Any:
        return metadata.get(f"{arch}.{suffix}", default)

    family = known_family(arch)
    defaults = dict(family.defaults, **family.gguf_defaults) if family is not None else {}
    n_layers = _required(get("block_count"), arch, "block_count")
    hidden = _required(get("embedding_length"), arch, "embedding_length")
    n_heads = _per_layer_scalar(_required(get("attention.head_count"), arch, "attention.head_count"))
    n_kv_heads = _per_layer_scalar(get("attention.head_count_kv", n_heads))
    head_dim = get("attention.key_length") or hidden // n_heads
    value_head_dim = get("attention.value_length") or head_dim
    tokens = metadata.get("tokenizer.ggml.tokens")
    vocab_size = get("vocab_size") or (len(tokens) if tokens is not None else 0)

    sliding_window = get("attention.sliding_window") or None  # Phi-3 files write 0 for "none"
    sliding_layers: list[bool] = []
    pattern = get("attention.sliding_window_pattern")
    if sliding_window and pattern is not None and not isinstance(pattern, int):
        sliding_layers = [bool(x) for x in pattern]
    elif sliding_window:
        every = int(pattern) if isinstance(pattern, int) else defaults.get("sliding_window_every")
        if every:
            sliding_layers = sliding_pattern(n_layers, every)
        elif defaults.get("ignores_sliding_window"):
            sliding_window = None  # llama.cpp runs these families with global attention (see the family file)
        else:
            sliding_layers = [True] * n_layers  # Mistral-style: every layer uses the window

    rope_scaling = None
    scaling_type = get("rope.scaling.type")
    if scaling_type and scaling_type != "none":
        rope_scaling = RopeScaling(
            kind=scaling_type,
            factor=float(get("rope.scaling.factor", 1.0)),
            original_context_length=get("rope.scaling.original_context_length"),
        )
    elif tensor_names and "rope_factors_long.weight" in tensor_names:
        # Phi-3 LongRoPE: the factors are tensors; the converter writes no scaling type for them
        rope_scaling = RopeScaling(kind="longrope", original_context_length=get("rope.scaling.original_context_length"))
    elif tensor_names and "rope_freqs.weight" in tensor_names:
        # Llama 3.1+: the converter stores the scaling's result (per-frequency divisors) as a tensor, no type
        rope_scaling = RopeScaling(kind="llama3", original_context_length=get("rope.scaling.original_context_length"))

    query_scale = get("attention.scale") or None  # Granite writes 0.0 for "the default"
    if query_scale is None and defaults.get("query_scale_from_key_length"):
        # Gemma scales queries by 1/sqrt(query_pre_attn_scalar), which the converter stores as key_length.
        query_scale = 1.0 / math.sqrt(head_dim)

    no_rope_every = defaults.get("no_rope_every")
    if get("attention.temperature_scale"):
        raise UnsupportedError(f"this {arch} model scales attention by position (Llama 4 style), not supported yet")
    fields = dict(
        architecture=arch,
        n_layers=n_layers,
        hidden_size=hidden,
        n_heads=n_heads,
        n_kv_heads=n_kv_heads,
        head_dim=head_dim,
        value_head_dim=value_head_dim,
        ffn_size=_per_layer_scalar(get("feed_forward_length", 0)),
        vocab_size=vocab_size,
        context_length=get("context_length", 2048),
        norm_eps=float(get("attention.layer_norm_rms_epsilon", get("attention.layer_norm_epsilon", 1e-5))),
        rope_theta=float(get("rope.freq_base", 10_000.0)),
        rope_dim=get("rope.dimension_count") or head_dim,
        rope_style=defaults.get("rope_style", "neox"),
        rope_scaling=rope_scaling,
        rope_attention_factor=float(get("rope.scaling.attn_factor", 1.0)),
        rope_theta_local=get("rope.freq_base_swa") or defaults.get("rope_theta_local"),
        rope_layers=sliding_pattern(n_layers, no_rope_every) if no_rope_every else [],
        sliding_window=sliding_window,
        sliding_layers=sliding_layers,
        attn_logit_softcap=get("attn_logit_softcapping") or None,
        final_logit_softcap=get("final_logit_softcapping") or None,
        query_scale=query_scale,
        activation=defaults.get("activation", "silu"),
        embedding_scale_by_sqrt_hidden=defaults.get("embedding_scale_by_sqrt_hidden", False),
        embedding_multiplier=get("embedding_scale") or None,
        residual_multiplier=get("residual_scale") or None,
        logits_divisor=get("logit_scale") or None,
        pre_norms=defaults.get("pre_norms", True),
        post_norms=defaults.get("post_norms", False),
        qk_norm=defaults.get("qk_norm", ""),
        attention_sinks=defaults.get("attention_sinks", False),
        tie_embeddings=tensor_names is None or "output.weight" not in tensor_names,
    )
    if rope_scaling is not None and rope_scaling.kind == "yarn":
        rope_scaling.extra = {
            "beta_fast": float(get("rope.scaling.yarn_beta_fast", 32.0)),
            "beta_slow": float(get("rope.scaling.yarn_beta_slow", 1.0)),
        }
        # llama.cpp's cos/sin multiplier: mscale(factor) = 1 + 0.1 ln(factor), or with yarn_log_multiplier
        # (mscale_all_dim) the ratio mscale(factor, 1) / mscale(factor, log_mul); times rope.scaling.attn_factor.
        log_mul = get("rope.scaling.yarn_log_multiplier")
        ratio = yarn_mscale(rope_scaling.factor) / yarn_mscale(rope_scaling.factor, log_mul) if log_mul else None
        fields["rope_attention_factor"] *= ratio if ratio is not None else yarn_mscale(rope_scaling.factor)
    fields.update(_gguf_moe_fields(get, defaults, n_layers))
    if family is not None and family.gguf_config is not None:
        fields.update(family.gguf_config(get, fields))
    return ModelConfig(**fields)


def yarn_mscale(factor: float, mscale: float = 1.0) -> float:
    """YaRN's attention temperature correction, 0.1 * mscale * ln(factor) + 1 (1 for factor <= 1)."""
    return 1.0 if factor <= 1 else 0.1 * mscale * math.log(factor) + 1.0


# llama.cpp's llama_expert_gating_func_type values (GGUF `{arch}.expert_gating_func`)
EXPERT_GATING_FUNCS = {1: "softmax", 2: "sigmoid", 3: "softmax_weight"}


def _gguf_moe_fields(get, defaults: dict[str, Any], n_layers: int) -> dict[str, Any]:
    """The mixture-of-experts switches from `{arch}.expert_*` keys (none when the file has no experts).

    Keys a converter leaves out are llama.cpp's per-architecture constants, which the family states in its
    `defaults` (Qwen 3 MoE: normalised top-k weights, which llama.cpp hard-codes for it).
    """
    n_experts = get("expert_count", 0) or 0
    if not n_experts:
        return {}
    gating = get("expert_gating_func")
    if gating is not None and int(gating) not in EXPERT_GATING_FUNCS:
        raise UnsupportedError(f"expert gating function {gating} (llama.cpp's enum) is not supported yet")
    n_dense = get("leading_dense_block_count", 0) or 0
    expert_ffn = get("expert_feed_forward_length") or 0
    n_shared = get("expert_shared_count", 0) or 0
    # DeepSeek writes no shared width (each shared expert is as wide as a routed one), Qwen 2 MoE no count (one)
    shared_ffn = get("expert_shared_feed_forward_length") or n_shared * expert_ffn
    return dict(
        n_experts=n_experts,
        n_experts_used=get("expert_used_count", 0) or 0,
        expert_ffn_size=expert_ffn,
        n_shared_experts=n_shared or (1 if shared_ffn else 0),
        shared_expert_ffn_size=shared_ffn,
        shared_expert_gate=defaults.get("shared_expert_gate", False),
        expert_gating=EXPERT_GATING_FUNCS[int(gating)]
        if gating is not None
        else defaults.get("expert_gating", "softmax"),
        expert_weights_norm=bool(get("expert_weights_norm", defaults.get("expert_weights_norm", False))),
        expert_weights_scale=float(get("expert_weights_scale") or 1.0),
        n_expert_groups=get("expert_group_count", 0) or 0,
        n_expert_groups_used=get("expert_group_used_count", 0) or 0,
        moe_layers=[i >= n_dense for i in range(n_layers)] if n_dense else [],
    )


# -- from a Hugging Face config.json ----------------------------------------------------------------------


def config_from_hf(config: dict[str, Any], tensor_names: set[str] | None = None) -> ModelConfig:
    """Build a ModelConfig from a Hugging Face config.json (as transformers 4.x or 5.x writes it).

    The keys shared by the decoder families are read here; what is particular to one family (Gemma's
    soft-caps, Granite's multipliers, SmolLM3's RoPE-free layers) comes from its `hf_config` hook.
    """
    from pellucid.model.families import known_family

    text = config.get("text_config") or config  # multimodal wrappers keep the decoder's keys in text_config
    model_type = text.get("model_type") or config.get("model_type") or "?"
    family = known_family(model_type)
    defaults = family.defaults if family is not None else {}

    def need(key: str) -> Any:
        if text.get(key) is None:
            raise UnsupportedError(f"config.json lacks {key!r}; cannot build a {model_type} model from it")
        return text[key]

    hidden, n_layers, n_heads = need("hidden_size"), need("num_hidden_layers"), need("num_attention_heads")
    head_dim = text.get("head_dim") or hidden // n_heads
    rope = hf_rope_parameters(text)
    partial = float(rope.get("partial_rotary_factor", text.get("partial_rotary_factor", 1.0)))
    sliding_window = text.get("sliding_window") if text.get("use_sliding_window", True) else None
    layer_types = text.get("layer_types")
    if not sliding_window:
        sliding_layers: list[bool] = []
    elif layer_types:
        sliding_layers = [t == "sliding_attention" for t in layer_types]
    elif defaults.get("sliding_window_every"):
        sliding_layers = sliding_pattern(n_layers, defaults["sliding_window_every"])
    else:
        sliding_layers = [True] * n_layers
    if sliding_layers and not any(sliding_layers):
        sliding_window, sliding_layers = None, []
    fields = dict(
        architecture=model_type,
        n_layers=n_layers,
        hidden_size=hidden,
        n_heads=n_heads,
        n_kv_heads=text.get("num_key_value_heads") or n_heads,
        head_dim=head_dim,
        value_head_dim=head_dim,
        ffn_size=need("intermediate_size"),
        vocab_size=need("vocab_size"),
        context_length=text.get("max_position_embeddings") or 2048,
        norm_eps=float(text.get("rms_norm_eps") or text.get("layer_norm_eps") or 1e-6),
        rope_theta=float(rope.get("rope_theta", 10_000.0)),
        rope_dim=int(head_dim * partial),
        rope_style="neox",  # HF checkpoints rotate halves (rotate_half); only llama.cpp's converter permutes
        rope_scaling=_hf_rope_scaling(rope, text),
        sliding_window=sliding_window,
        sliding_layers=sliding_layers,
        activation=_HF_ACTIVATIONS.get(text.get("hidden_act") or text.get("hidden_activation") or "silu", "?"),
        embedding_scale_by_sqrt_hidden=defaults.get("embedding_scale_by_sqrt_hidden", False),
        pre_norms=defaults.get("pre_norms", True),
        post_norms=defaults.get("post_norms", False),
        norm_weight_offset=defaults.get("hf_norm_weight_offset", 0.0),
        qk_norm=defaults.get("qk_norm", ""),
        attention_sinks=defaults.get("attention_sinks", False),
        tie_embeddings=bool(config.get("tie_word_embeddings", text.get("tie_word_embeddings", True)))
        or (tensor_names is not None and not any(n.endswith("lm_head.weight") for n in tensor_names)),
    )
    fields.update(_hf_moe_fields(text, defaults, n_layers))
    if fields["rope_scaling"] is not None and fields["rope_scaling"].kind == "longrope":
        fields["rope_attention_factor"] = _longrope_attention_factor(
            rope, fields["context_length"], fields["rope_scaling"]
        )
    if fields["rope_scaling"] is not None and fields["rope_scaling"].kind == "yarn":
        fields["rope_attention_factor"] = _yarn_attention_factor(rope, fields["rope_scaling"])
    if family is not None and family.hf_config is not None:
        fields.update(family.hf_config(text, fields))
    return ModelConfig(**fields)


def _hf_moe_fields(text: dict[str, Any], defaults: dict[str, Any], n_layers: int) -> dict[str, Any]:
    """The mixture-of-experts switches, as Qwen 2/3 MoE, Mixtral and DeepSeek V3 spell them in config.json."""
    n_experts = text.get("num_experts") or text.get("n_routed_experts") or text.get("num_local_experts") or 0
    if not n_experts:
        return {}
    expert_ffn = text.get("moe_intermediate_size") or text.get("intermediate_size")
    n_shared = text.get("n_shared_experts") or 0
    shared_ffn = text.get("shared_expert_intermediate_size") or n_shared * expert_ffn
    if shared_ffn and not n_shared:
        n_shared = 1  # Qwen 2 MoE: one shared expert of its own width
    # Which layers are MoE: Qwen's mlp_only_layers and decoder_sparse_step, DeepSeek's first_k_dense_replace
    dense_only = set(text.get("mlp_only_layers") or [])
    step = text.get("decoder_sparse_step") or 1
    first_dense = text.get("first_k_dense_replace") or 0
    moe_layers = [i not in dense_only and (i + 1) % step == 0 and i >= first_dense for i in range(n_layers)]
    return dict(
        n_experts=n_experts,
        n_experts_used=text.get("num_experts_per_tok") or 0,
        expert_ffn_size=expert_ffn,
        n_shared_experts=n_shared,
        shared_expert_ffn_size=shared_ffn,
        shared_expert_gate=defaults.get("shared_expert_gate", False),
        expert_gating=text.get("scoring_func") or defaults.get("expert_gating", "softmax"),
        expert_weights_norm=bool(text.get("norm_topk_prob", defaults.get("expert_weights_norm", False))),
        expert_weights_scale=float(text.get("routed_scaling_factor") or 1.0),
        n_expert_groups=text.get("n_group") or 0,
        n_expert_groups_used=text.get("topk_group") or 0,
        moe_layers=[] if all(moe_layers) else moe_layers,
    )


def _longrope_attention_factor(rope: dict[str, Any], context_length: int, scaling: RopeScaling) -> float:
    """Phi-3's cos/sin multiplier: sqrt(1 + ln(s) / ln(original)) for a stretch s = context / original."""
    if rope.get("attention_factor") is not None:
        return float(rope["attention_factor"])
    original = scaling.original_context_length
    stretch = context_length / original
    return math.sqrt(1 + math.log(stretch) / math.log(original)) if stretch > 1 else 1.0


def _yarn_attention_factor(rope: dict[str, Any], scaling: RopeScaling) -> float:
    """YaRN's cos/sin multiplier as transformers computes it: `attention_factor` if given, else
    mscale(factor, mscale) / mscale(factor, mscale_all_dim) when both are set (DeepSeek), else mscale(factor)."""
    if rope.get("attention_factor") is not None:
        return float(rope["attention_factor"])
    mscale, mscale_all_dim = rope.get("mscale"), rope.get("mscale_all_dim")
    if mscale and mscale_all_dim:
        return yarn_mscale(scaling.factor, mscale) / yarn_mscale(scaling.factor, mscale_all_dim)
    return yarn_mscale(scaling.factor)


_HF_ACTIVATIONS = {"silu": "silu", "swish": "silu", "gelu_pytorch_tanh": "gelu_tanh", "gelu_tanh": "gelu_tanh"}


def hf_rope_parameters(text: dict[str, Any], layer_type: str = "full_attention") -> dict[str, Any]:
    """RoPE settings as one dict, whichever way config.json spells them.

    transformers 4 writes `rope_theta` and an optional `rope_scaling` dict at the top level; transformers 5
    writes `rope_parameters` (rope_theta inside), or one such dict per layer type (Gemma 3).
    """
    params = dict(text.get("rope_scaling") or {})
    if "rope_theta" in text:
        params.setdefault("rope_theta", text["rope_theta"])
    given = text.get("rope_parameters")
    if isinstance(given, dict):
        if layer_type in given and isinstance(given[layer_type], dict):
            given = given[layer_type]
        params.update(given)
    if "type" in params and "rope_type" not in params:
        params["rope_type"] = params["type"]
    return params


def _hf_rope_scaling(rope: dict[str, Any], text: dict[str, Any]) -> RopeScaling | None:
    kind = rope.get("rope_type") or "default"
    original = rope.get("original_max_position_embeddings", text.get("original_max_position_embeddings"))
    if kind == "default":
        return None
    if kind == "linear":
        return RopeScaling(kind="linear", factor=float(rope["factor"]))
    if kind == "llama3":
        extra = {k: float(rope[k]) for k in ("low_freq_factor", "high_freq_factor")}
        return RopeScaling(kind="llama3", factor=float(rope["factor"]), original_context_length=original, extra=extra)
    if kind == "longrope":
        return RopeScaling(
            kind="longrope",
            original_context_length=original,
            short_factors=tuple(float(x) for x in rope["short_factor"]),
            long_factors=tuple(float(x) for x in rope["long_factor"]),
        )
    if kind == "yarn":
        factor = rope.get("factor") or text["max_position_embeddings"] / original
        extra = {"beta_fast": float(rope.get("beta_fast") or 32.0), "beta_slow": float(rope.get("beta_slow") or 1.0)}
        return RopeScaling(
            kind="yarn",
            factor=float(factor),
            original_context_length=original,
            extra=extra,
            truncate=rope.get("truncate") is not False,
        )
    return RopeScaling(kind=kind, factor=float(rope.get("factor", 1.0)), original_context_length=original)


def _required(value: Any, arch: str, suffix: str) -> Any:
    if value is None:
        raise UnsupportedError(f"the GGUF file lacks {arch}.{suffix}; cannot build a {arch} model from it")
    return value


def _per_layer_scalar(value: Any) -> int:
    """Some files store head counts per layer (an array); pellucid needs them equal across layers."""
    if hasattr(value, "__len__"):
        values = {int(v) for v in value}
        if len(values) != 1:
            raise UnsupportedError(f"per-layer head counts / FFN sizes that differ across layers ({sorted(values)})")
        return values.pop()
    return int(value)
