"""Helpers shared by the model/engine tests: loaded default models (once per session) and tiny random models.

Not a test module: pytest imports it from the test files (tests/ is on sys.path under pytest's default
"prepend" import mode).
"""

from __future__ import annotations

import functools
import math
from pathlib import Path

import torch

from pellucid.formats.gguf import split_part_path
from pellucid.model.config import ModelConfig
from pellucid.model.families import family_for
from pellucid.model.loader import Weights, build_transformer, load_model

SMOLLM2 = "smollm2-135m-instruct-q4_1"  # keys of reference.json
GEMMA3 = "gemma3-270m-q4_k_m"


@functools.cache
def loaded(path) -> torch.nn.Module:
    """A default model loaded on the CPU in float32, shared by every test module in the session."""
    return load_model(path, device="cpu")


def tiny_config(architecture: str, **overrides) -> ModelConfig:
    """A few-layer model with the family's switches, small enough to run in milliseconds."""
    gemma = architecture == "gemma3"
    fields = dict(
        architecture=architecture,
        n_layers=4,
        hidden_size=64,
        n_heads=4,
        n_kv_heads=2,
        head_dim=16,
        value_head_dim=16,
        ffn_size=96,
        vocab_size=101,
        context_length=128,
        norm_eps=1e-6,
        rope_theta=10_000.0 if not gemma else 1_000_000.0,
        rope_dim=16,
        rope_style="interleaved" if not gemma else "neox",
        rope_theta_local=10_000.0 if gemma else None,
        sliding_window=8 if gemma else None,
        sliding_layers=[True, True, False, True] if gemma else [],
        query_scale=0.3 if gemma else None,
        activation="gelu_tanh" if gemma else "silu",
        embedding_scale_by_sqrt_hidden=gemma,
        post_norms=gemma,
        qk_norm=gemma,
    )
    fields.update(overrides)
    return ModelConfig(**fields)


def random_weights(config: ModelConfig, seed: int = 0) -> dict[str, torch.Tensor]:
    """Random tensors under the family's GGUF names, shaped as the config says."""
    g = torch.Generator().manual_seed(seed)
    names = family_for(config.architecture).gguf_names
    h, d, dv = config.hidden_size, config.head_dim, config.value_head_dim

    def w(*shape, scale=None):
        return torch.randn(*shape, generator=g) * (scale if scale is not None else shape[-1] ** -0.5)

    def norm(n):
        return 1.0 + 0.1 * torch.randn(n, generator=g)

    out = {names.embed: w(config.vocab_size, h, scale=1.0), names.output_norm: norm(h)}
    if not config.tie_embeddings:
        out[names.output] = w(config.vocab_size, h)
    for i in range(config.n_layers):
        per_layer = {
            names.attn_norm: norm(h),
            names.q: w(config.n_heads * d, h),
            names.k: w(config.n_kv_heads * d, h),
            names.v: w(config.n_kv_heads * dv, h),
            names.o: w(h, config.n_heads * dv),
            names.ffn_norm: norm(h),
            names.gate: w(config.ffn_size, h),
            names.up: w(config.ffn_size, h),
            names.down: w(h, config.ffn_size),
        }
        if config.qk_norm:
            per_layer |= {names.q_norm: norm(d), names.k_norm: norm(d)}
        if config.post_norms:
            per_layer |= {names.post_attn_norm: norm(h), names.post_ffn_norm: norm(h)}
        out |= {name.format(i=i): t for name, t in per_layer.items()}
    return out


def tiny_model(architecture: str, seed: int = 0, **overrides):
    config = tiny_config(architecture, **overrides)
    weights = Weights.from_dict(random_weights(config, seed))
    return build_transformer(config, weights, family_for(architecture).gguf_names).eval()


@torch.inference_mode()
def greedy(model, prompt_ids: list[int], max_new: int, stop_ids: set[int]) -> list[int]:
    """Free-running greedy decoding through the KV cache (prefill once, then one token per step)."""
    cache = model.make_cache(capacity=len(prompt_ids) + max_new)
    logits = model(torch.tensor([prompt_ids]), cache)[0, -1]
    out: list[int] = []
    for _ in range(max_new):
        token = int(logits.argmax())
        if token in stop_ids:
            break
        out.append(token)
        logits = model(torch.tensor([[token]]), cache)[0, -1]
    return out


def write_split(src: Path, prefix: Path, parts: int, *, metadata_only_first: bool = False) -> list[Path]:
    """Split the GGUF file `src` into `parts` files as llama.cpp's gguf-split does; returns their paths in order.

    The parts are PREFIX-00001-of-0000N.gguf ..; the first holds every metadata key of `src`, the later ones
    only split.no (uint16), split.count (uint16) and split.tensors.count (int32), and every part holds its
    share of the tensors in `src`'s order. gguf-py's GGUFWriter writes exactly this when given
    split_max_tensors (its add_shard_kv_data mirrors gguf-split's split_strategy). `metadata_only_first` puts no
    tensors in the first part, as `gguf-split --no-tensor-first-split` does.
    """
    from gguf import GGUFReader, GGUFValueType, GGUFWriter

    reader = GGUFReader(src)
    tensor_parts = parts - 1 if metadata_only_first else parts
    writer = GGUFWriter(
        f"{prefix}.gguf",
        reader.fields["general.architecture"].contents(),
        split_max_tensors=math.ceil(len(reader.tensors) / tensor_parts),
        small_first_shard=metadata_only_first,
    )
    for name, field in reader.fields.items():
        if name.startswith("GGUF.") or name == "general.architecture":  # GGUF.*: the reader's own header fields
            continue
        sub_type = field.types[1] if field.types[0] == GGUFValueType.ARRAY else None
        writer.add_key_value(name, field.contents(), field.types[0], sub_type=sub_type)
    for tensor in reader.tensors:
        writer.add_tensor(tensor.name, tensor.data, raw_dtype=tensor.tensor_type)
    assert len(writer.tensors) == parts, f"{len(reader.tensors)} tensors do not split into {parts} parts"
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return [split_part_path(prefix, i + 1, parts) for i in range(parts)]


def llama_gguf_writer(path: Path, config: ModelConfig):
    """A gguf-py GGUFWriter for a llama-architecture file at `path`, its header keys from `config`; add tensors,
    then `finish_gguf(writer)`."""
    from gguf import GGUFWriter

    writer = GGUFWriter(str(path), "llama")
    writer.add_block_count(config.n_layers)
    writer.add_embedding_length(config.hidden_size)
    writer.add_feed_forward_length(config.ffn_size)
    writer.add_head_count(config.n_heads)
    writer.add_head_count_kv(config.n_kv_heads)
    writer.add_context_length(config.context_length)
    writer.add_layer_norm_rms_eps(config.norm_eps)
    return writer


def finish_gguf(writer) -> None:
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()


def write_mxfp4_llama(path: Path, config: ModelConfig, seed: int = 0) -> dict[str, torch.Tensor]:
    """A tiny llama GGUF whose FFN matrices gguf-py quantized to MXFP4 (llama.cpp's quantizer makes MXFP4 only
    for gpt-oss expert tensors), the rest float32. Returns the weights the file holds, MXFP4 ones as gguf-py
    dequantizes them: the oracle for a model loaded from `path`."""
    from gguf import GGMLQuantizationType
    from gguf.quants import dequantize as gguf_dequantize
    from gguf.quants import quantize as gguf_quantize

    writer = llama_gguf_writer(path, config)
    held = {}
    for name, t in random_weights(config, seed).items():
        if ".ffn_" in name and t.dim() == 2:
            raw = gguf_quantize(t.numpy(), GGMLQuantizationType.MXFP4)
            writer.add_tensor(name, raw, raw_dtype=GGMLQuantizationType.MXFP4)
            t = torch.from_numpy(gguf_dequantize(raw, GGMLQuantizationType.MXFP4).reshape(t.shape).copy())
        else:
            writer.add_tensor(name, t.numpy())
        held[name] = t
    finish_gguf(writer)
    return held
