"""ModelConfig: the one dataclass that describes a transformer's shape, built from a model file.

Everything the engine, `inspect` and the memory planner need to know about a model's architecture is
here, read once from GGUF metadata (`{arch}.block_count`, `{arch}.attention.head_count`, ...) or, for
Hugging Face folders, from config.json. Family-specific facts that files do not state (Gemma 3's
local RoPE base, its every-sixth-layer global attention) are filled in from `ARCH_DEFAULTS`, so there is
one place to read what pellucid assumes about a family.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

from pellucid.errors import UnsupportedError

# Facts a family's GGUF files leave implicit. Keys mirror ModelConfig fields.
# `rope_style` is llama.cpp's rope type for the architecture: its HF->GGUF converter permutes llama's Q/K rows
# so that the "interleaved" form (rotate pairs 2i, 2i+1; GGML_ROPE_TYPE_NORM) applies to the stored weights,
# while most newer families keep HF's "neox" form (rotate dim i with dim i + d/2).
ARCH_DEFAULTS: dict[str, dict[str, Any]] = {
    "llama": {"activation": "silu", "rope_style": "interleaved"},
    "mistral": {"activation": "silu", "rope_style": "interleaved"},
    "qwen2": {"activation": "silu", "rope_style": "neox"},
    "qwen3": {"activation": "silu", "qk_norm": True, "rope_style": "neox"},
    "gemma3": {
        "activation": "gelu_tanh",
        "rope_style": "neox",
        "embedding_scale_by_sqrt_hidden": True,
        "post_norms": True,
        "qk_norm": True,
        "rope_theta_local": 10_000.0,  # local (sliding-window) layers use their own, shorter RoPE base
        "sliding_window_every": 6,  # every 6th layer is global; the other five use the sliding window
    },
}


@dataclass
class RopeScaling:
    kind: str  # "linear", "yarn", "llama3", ...
    factor: float = 1.0
    original_context_length: int | None = None
    extra: dict[str, float] = field(default_factory=dict)


@dataclass
class ModelConfig:
    architecture: str
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
    rope_theta_local: float | None = None  # RoPE base for sliding-window layers, where it differs
    sliding_window: int | None = None
    # True for layers that attend within the sliding window only; empty = every layer is global
    sliding_layers: list[bool] = field(default_factory=list)
    attn_logit_softcap: float | None = None
    final_logit_softcap: float | None = None
    query_scale: float | None = None  # multiplier on q·k; None = 1/sqrt(head_dim)
    activation: str = "silu"  # "silu" (SwiGLU) or "gelu_tanh" (GeGLU)
    embedding_scale_by_sqrt_hidden: bool = False
    post_norms: bool = False  # extra RMSNorm after attention and after the FFN (Gemma 2/3)
    qk_norm: bool = False  # RMSNorm on each query and key head before RoPE
    tie_embeddings: bool = True  # no separate output matrix: logits use the token embedding
    n_experts: int = 0
    n_experts_used: int = 0

    @property
    def gqa_ratio(self) -> int:
        return self.n_heads // self.n_kv_heads

    def kv_bytes_per_token(self, bytes_per_element: float = 2.0) -> float:
        """K and V for one token across all layers (f16 = 2 bytes per element)."""
        per_layer = self.n_kv_heads * (self.head_dim + self.value_head_dim) * bytes_per_element
        return self.n_layers * per_layer

    def kv_cache_bytes(self, n_tokens: int, bytes_per_element: float = 2.0) -> float:
        """KV cache for a context of n_tokens; sliding-window layers keep at most `sliding_window` tokens."""
        per_layer = self.n_kv_heads * (self.head_dim + self.value_head_dim) * bytes_per_element
        total = 0.0
        for i in range(self.n_layers):
            local = bool(self.sliding_layers) and self.sliding_layers[i] and self.sliding_window
            total += per_layer * (min(n_tokens, self.sliding_window) if local else n_tokens)
        return total


def config_from_gguf(metadata: dict[str, Any], tensor_names: set[str] | None = None) -> ModelConfig:
    """Build a ModelConfig from GGUF metadata (and tensor names, to tell tied from untied embeddings)."""
    arch = metadata.get("general.architecture")
    if not arch:
        raise UnsupportedError("the GGUF file has no general.architecture key; it is not a model file")

    def get(suffix: str, default: Any = None) -> Any:
        return metadata.get(f"{arch}.{suffix}", default)

    defaults = ARCH_DEFAULTS.get(arch, {})
    n_layers = _required(get("block_count"), arch, "block_count")
    hidden = _required(get("embedding_length"), arch, "embedding_length")
    n_heads = _per_layer_scalar(_required(get("attention.head_count"), arch, "attention.head_count"))
    n_kv_heads = _per_layer_scalar(get("attention.head_count_kv", n_heads))
    head_dim = get("attention.key_length") or hidden // n_heads
    value_head_dim = get("attention.value_length") or head_dim
    tokens = metadata.get("tokenizer.ggml.tokens")
    vocab_size = get("vocab_size") or (len(tokens) if tokens is not None else 0)

    sliding_window = get("attention.sliding_window")
    sliding_layers: list[bool] = []
    pattern = get("attention.sliding_window_pattern")
    if sliding_window and pattern is not None and not isinstance(pattern, int):
        sliding_layers = [bool(x) for x in pattern]
    elif sliding_window:
        every = int(pattern) if isinstance(pattern, int) else defaults.get("sliding_window_every")
        if every:
            sliding_layers = [(i + 1) % every != 0 for i in range(n_layers)]
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

    query_scale = get("attention.scale")
    if query_scale is None and arch == "gemma3":
        # Gemma 3 scales queries by 1/sqrt(query_pre_attn_scalar), which the converter stores as key_length.
        query_scale = 1.0 / math.sqrt(head_dim)

    tie = tensor_names is None or "output.weight" not in tensor_names
    return ModelConfig(
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
        rope_theta_local=get("rope.freq_base_swa") or defaults.get("rope_theta_local"),
        sliding_window=sliding_window,
        sliding_layers=sliding_layers,
        attn_logit_softcap=get("attn_logit_softcapping"),
        final_logit_softcap=get("final_logit_softcapping"),
        query_scale=query_scale,
        activation=defaults.get("activation", "silu"),
        embedding_scale_by_sqrt_hidden=defaults.get("embedding_scale_by_sqrt_hidden", False),
        post_norms=defaults.get("post_norms", False),
        qk_norm=defaults.get("qk_norm", False),
        tie_embeddings=tie,
        n_experts=get("expert_count", 0) or 0,
        n_experts_used=get("expert_used_count", 0) or 0,
    )


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
