"""From a model file to a ready `Transformer`: read the config, pick the family, build each layer from its weights.

`load_model` is the entry point. Layers are built directly from named tensors (`Weights`), never
created empty and filled later, and every projection goes through `make_linear`.

Quantized (and float16/bfloat16) matrices stay packed: `make_linear` wraps the file's bytes, memory-mapped
and mostly not even copied, in a `QuantizedLinear` whose kernels read them directly (quant/kernels.py), and
the token embedding becomes a `QuantizedEmbedding` that unpacks only the rows it is asked for. So loading
reads little more than the headers, and memory holds the file's 4-8 bits per weight rather than float32.
Float32 matrices, norms and other vectors are copied as dense tensors in the requested dtype (activations:
float32 by default).

Any tensor in the file that the model did not use is an error: it means the file needs a feature we do not
implement (biases, a different layout), and running without it would produce wrong text silently.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Iterable

import torch
from torch import nn

from pellucid.device import pick_device
from pellucid.errors import UnsupportedError
from pellucid.formats.gguf import GGUFFile
from pellucid.model.config import ModelConfig, config_from_gguf
from pellucid.model.families import Family, TensorNames, family_for
from pellucid.model.layers import Attention, Block, Embedding, GatedMLP, Linear, RMSNorm, RotaryEmbedding, frozen
from pellucid.model.transformer import Transformer
from pellucid.quant.linear import QuantizedEmbedding, QuantizedLinear
from pellucid.quant.packed import PackedWeight, pack
from pellucid.quant.types import GGMLType


class Weights:
    """A model file's tensors by name, dense (dequantized to `dtype` on `device`) or packed, with a record of use.

    `pack(name)` (GGUF files) gives the matrix in its file format, or None where the file stores it as float32;
    asking twice returns the same object, which is how a tied output head shares the embedding.
    """

    def __init__(
        self,
        load: Callable[[str], torch.Tensor],
        names: Iterable[str],
        *,
        device,
        dtype,
        pack: Callable[[str], PackedWeight | None] | None = None,
    ):
        self._load = load
        self._pack = pack
        self.names = set(names)
        self.device = torch.device(device)
        self.dtype = dtype
        self.used: set[str] = set()
        self._loaded: dict[str, nn.Parameter] = {}
        self._packed: dict[str, PackedWeight | None] = {}

    @classmethod
    def from_gguf(cls, gguf: GGUFFile, *, device, dtype) -> Weights:
        def pack_matrix(name: str) -> PackedWeight | None:
            info = gguf.tensors[name]
            if len(info.shape) != 2 or info.ggml_type == GGMLType.F32:
                return None
            return pack(gguf.raw(name), info.ggml_type, info.shape)

        return cls(gguf.tensor, gguf.tensors, device=device, dtype=dtype, pack=pack_matrix)

    @classmethod
    def from_dict(cls, tensors: dict[str, torch.Tensor], *, device="cpu", dtype=torch.float32) -> Weights:
        return cls(tensors.__getitem__, tensors, device=device, dtype=dtype)

    def has(self, name: str) -> bool:
        return name in self.names

    def tensor(self, name: str, dtype: torch.dtype | None = None) -> nn.Parameter:
        """The named tensor on the target device, in `dtype` (default: the model's).

        Asking twice returns the same Parameter object, which is how a tied output head shares the embedding.
        """
        dtype = dtype or self.dtype
        key = f"{name}:{dtype}"
        if key not in self._loaded:
            self._loaded[key] = frozen(self._load(name).to(device=self.device, dtype=dtype))
            self.used.add(name)
        return self._loaded[key]

    def packed(self, name: str) -> PackedWeight | None:
        if self._pack is None:
            return None
        if name not in self._packed:
            self._packed[name] = self._pack(name)
            self.used.add(name)
        return self._packed[name]

    def unused(self) -> list[str]:
        return sorted(self.names - self.used)


def make_linear(weights: Weights, name: str) -> nn.Module:
    """The projection stored as `name` (out_features, in_features). Every linear layer is built here."""
    packed = weights.packed(name)
    return QuantizedLinear(packed) if packed is not None else Linear(weights.tensor(name))


def make_embedding(weights: Weights, name: str) -> nn.Module:
    """The token embedding table stored as `name` (vocab, hidden)."""
    packed = weights.packed(name)
    return QuantizedEmbedding(packed, weights.dtype) if packed is not None else Embedding(weights.tensor(name))


def load_model(model, *, device: str | torch.device | None = None, dtype: torch.dtype = torch.float32) -> Transformer:
    """Load a GGUF model (a ResolvedModel, a path, or an open GGUFFile) ready for `forward`."""
    started = time.perf_counter()
    gguf, opened_here = _open(model)
    try:
        family = family_for(gguf.architecture or "(none: general.architecture is missing)")
        if dtype == torch.float16 and not family.float16_ok:
            raise UnsupportedError(
                f"{family.name} models overflow float16 (activations exceed 65504); use bfloat16 or float32"
            )
        config = config_from_gguf(gguf.metadata, set(gguf.tensors))
        target = pick_device(device)
        weights = Weights.from_gguf(gguf, device=target, dtype=dtype)
        transformer = build_transformer(config, weights, family.gguf_names)
        _refuse_unused(weights, family, gguf.path.name)
    finally:
        if opened_here:
            gguf.close()
    transformer.eval()
    transformer.load_seconds = time.perf_counter() - started
    return transformer


def _open(model) -> tuple[GGUFFile, bool]:
    if isinstance(model, GGUFFile):
        return model, False
    path = getattr(model, "path", model)  # a store.ResolvedModel carries .path
    kind = getattr(model, "kind", "gguf")
    if kind != "gguf" or os.path.isdir(path):
        raise UnsupportedError(
            f"{path} is a Hugging Face folder; the transformer engine loads GGUF files only for now. "
            f"Use a .gguf release of the model."
        )
    return GGUFFile(path), True


def build_transformer(config: ModelConfig, weights: Weights, names: TensorNames) -> Transformer:
    """Wire a Transformer from `weights`, following `config` for every architectural switch."""
    _check_supported(config)
    blocks = [_build_block(config, weights, names, i) for i in range(config.n_layers)]
    embedding = make_embedding(weights, names.embed)
    output_name = names.embed if config.tie_embeddings else names.output
    freq_factors = weights.tensor(names.rope_freqs, torch.float32) if weights.has(names.rope_freqs) else None
    linear_scale = config.rope_scaling.factor if config.rope_scaling is not None else 1.0
    rope = RotaryEmbedding(
        config.rope_dim, config.rope_theta, config.rope_style, linear_scale=linear_scale, freq_factors=freq_factors
    )
    rope_local = None
    if config.rope_theta_local is not None and config.rope_theta_local != config.rope_theta:
        # Local (sliding-window) layers: their own base, and no long-context scaling (as in llama.cpp).
        rope_local = RotaryEmbedding(config.rope_dim, config.rope_theta_local, config.rope_style)
    return Transformer(
        config,
        embedding=embedding,
        blocks=blocks,
        final_norm=_norm(weights, names.output_norm, config),
        output=make_linear(weights, output_name),
        rope=rope,
        rope_local=rope_local,
        dtype=weights.dtype,
    ).to(weights.device)


def _build_block(config: ModelConfig, weights: Weights, names: TensorNames, i: int) -> Block:
    def name(template: str | None) -> str:
        if template is None:
            raise UnsupportedError(f"{config.architecture} needs a tensor pellucid has no name for")
        return template.format(i=i)

    sliding = bool(config.sliding_layers) and config.sliding_layers[i]
    attention = Attention(
        make_linear(weights, name(names.q)),
        make_linear(weights, name(names.k)),
        make_linear(weights, name(names.v)),
        make_linear(weights, name(names.o)),
        n_heads=config.n_heads,
        n_kv_heads=config.n_kv_heads,
        head_dim=config.head_dim,
        value_head_dim=config.value_head_dim,
        query_scale=config.query_scale,
        window=config.sliding_window if sliding else None,
        q_norm=_norm(weights, name(names.q_norm), config) if config.qk_norm else None,
        k_norm=_norm(weights, name(names.k_norm), config) if config.qk_norm else None,
    )
    mlp = GatedMLP(
        make_linear(weights, name(names.gate)),
        make_linear(weights, name(names.up)),
        make_linear(weights, name(names.down)),
        config.activation,
    )
    return Block(
        _norm(weights, name(names.attn_norm), config),
        attention,
        _norm(weights, name(names.ffn_norm), config),
        mlp,
        sliding=sliding,
        post_attn_norm=_norm(weights, name(names.post_attn_norm), config) if config.post_norms else None,
        post_ffn_norm=_norm(weights, name(names.post_ffn_norm), config) if config.post_norms else None,
    )


def _norm(weights: Weights, name: str, config: ModelConfig) -> RMSNorm:
    return RMSNorm(weights.tensor(name, torch.float32), config.norm_eps)


def _check_supported(config: ModelConfig) -> None:
    """Refuse features the generic decoder does not implement, rather than run them wrongly."""
    problems = []
    if config.n_experts:
        problems.append(f"mixture-of-experts layers ({config.n_experts} experts)")
    if config.attn_logit_softcap or config.final_logit_softcap:
        problems.append("logit soft-capping (Gemma 2)")
    if config.rope_scaling is not None and config.rope_scaling.kind != "linear":
        problems.append(f"{config.rope_scaling.kind!r} RoPE scaling")
    if config.activation not in ("silu", "gelu_tanh"):
        problems.append(f"the {config.activation!r} activation")
    if problems:
        raise UnsupportedError(
            f"this {config.architecture} model uses {', '.join(problems)}, which pellucid does not run yet"
        )


def _refuse_unused(weights: Weights, family: Family, filename: str) -> None:
    unused = weights.unused()
    if unused:
        shown = ", ".join(unused[:5]) + (f" and {len(unused) - 5} more" if len(unused) > 5 else "")
        raise UnsupportedError(
            f"{filename} holds tensors the {family.name} decoder does not use ({shown}); the model needs a "
            f"feature pellucid does not implement, and running without them would give wrong output"
        )
