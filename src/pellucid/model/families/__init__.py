"""Model families: which GGUF architectures pellucid runs, and where each one keeps its tensors.

A family is data, not a model class: every family runs on the one generic `Transformer`. A family file
(`llama.py`, `gemma3.py`) names its tensors and explains its quirks; the architectural switches themselves
(activation, post-norms, QK-norm, RoPE style, sliding windows) live in `ModelConfig`, read from the file's
metadata plus `config.ARCH_DEFAULTS`.
"""

from __future__ import annotations

from dataclasses import dataclass

from pellucid.errors import UnsupportedError


@dataclass(frozen=True)
class TensorNames:
    """GGUF tensor names; `{i}` is the layer index. None = the family has no such tensor."""

    embed: str = "token_embd.weight"
    output: str = "output.weight"  # absent when the output projection is tied to the embedding
    output_norm: str = "output_norm.weight"
    rope_freqs: str = "rope_freqs.weight"  # optional per-pair RoPE frequency divisors (llama 3 long context)
    attn_norm: str = "blk.{i}.attn_norm.weight"
    q: str = "blk.{i}.attn_q.weight"
    k: str = "blk.{i}.attn_k.weight"
    v: str = "blk.{i}.attn_v.weight"
    o: str = "blk.{i}.attn_output.weight"
    ffn_norm: str = "blk.{i}.ffn_norm.weight"
    gate: str = "blk.{i}.ffn_gate.weight"
    up: str = "blk.{i}.ffn_up.weight"
    down: str = "blk.{i}.ffn_down.weight"
    q_norm: str | None = None
    k_norm: str | None = None
    post_attn_norm: str | None = None
    post_ffn_norm: str | None = None


@dataclass(frozen=True)
class Family:
    name: str
    architectures: tuple[str, ...]  # values of general.architecture this family reads
    gguf_names: TensorNames
    float16_ok: bool = True  # False where activations outgrow float16's range (65504) and turn into inf


def _registry() -> dict[str, Family]:
    from pellucid.model.families import gemma3, llama

    return {arch: family.FAMILY for family in (llama, gemma3) for arch in family.FAMILY.architectures}


def supported_architectures() -> list[str]:
    return sorted(_registry())


def family_for(architecture: str) -> Family:
    """The family that runs `architecture`, or an UnsupportedError that lists the ones pellucid runs."""
    family = _registry().get(architecture)
    if family is None:
        raise UnsupportedError(
            f"pellucid cannot run the {architecture!r} architecture yet; supported: "
            f"{', '.join(supported_architectures())}"
        )
    return family
