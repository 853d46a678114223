"""`pellucid inspect`: what is in a model file, and will it fit — read from the file alone, no weights loaded.

`inspect_model(model)` returns a `ModelReport` (identity, shape, quantization, tokenizer, file layout and
the memory math from `pellucid.memory`); `render_text(report)` lays it out for a newcomer and
`report_json(report)` for a program. `footprint(model)` is the part `pellucid fit` needs.

A GGUF file answers everything from its header. A Hugging Face folder answers from config.json, the
safetensors headers, tokenizer.json / tokenizer_config.json and the README's front matter; what such a
folder cannot say (a license missing from the README, RoPE for a BERT) is reported as n/a, not guessed.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pellucid import memory
from pellucid.errors import PellucidError
from pellucid.formats.gguf import GGUFFile
from pellucid.formats.naming import parse_gguf_name
from pellucid.memory import Footprint, TensorSize, format_bytes
from pellucid.model.config import ModelConfig, config_from_gguf, config_from_hf
from pellucid.quant.types import FILE_TYPE_NAMES, KV_CACHE_TYPES, GGMLType
from pellucid.store import ResolvedModel

if TYPE_CHECKING:  # imported where used: it brings torch (2 s), which a GGUF header never needs
    from pellucid.formats.safetensors import HFFolder

KV_REFERENCE_CONTEXT = 4096  # a second context length to quote, common across models

# GGUF special-token roles, in the order they are shown: role -> metadata key suffix.
GGUF_SPECIAL_TOKENS = {
    "bos": "bos_token_id",
    "eos": "eos_token_id",
    "eot": "eot_token_id",
    "eom": "eom_token_id",
    "unk": "unknown_token_id",
    "pad": "padding_token_id",
    "sep": "seperator_token_id",  # sic: llama.cpp's key is spelled this way
    "cls": "cls_token_id",
    "mask": "mask_token_id",
}
HF_SPECIAL_TOKENS = ("bos", "eos", "unk", "pad", "sep", "cls", "mask")

TOKENIZER_KINDS = {
    "gpt2": "byte-level BPE (GPT-2 style)",
    "llama": "SentencePiece (BPE over Unicode, byte fallback)",
    "t5": "SentencePiece Unigram",
    "bert": "WordPiece (BERT)",
    "bpe": "BPE (tokenizer.json)",
    "wordpiece": "greedy longest-match subwords (BERT); ## marks the rest of a word",
    "unigram": "SentencePiece Unigram",
}
# Markers that name a chat template's turn format.
TEMPLATE_STYLES = {
    "<|im_start|>": "ChatML (<|im_start|>role ... <|im_end|>)",
    "<start_of_turn>": "Gemma (<start_of_turn>role ... <end_of_turn>)",
    "<|start_header_id|>": "Llama 3 (<|start_header_id|>role<|end_header_id|>)",
    "[INST]": "Llama 2 / Mistral ([INST] ... [/INST])",
}
# Words in a name or fine-tune tag that mark a model trained to follow instructions.
INSTRUCT_WORDS = ("instruct", "chat", "-it", "_it", " it", "rlhf", "sft", "dpo")

FFN_NAMES = {"silu": "SwiGLU", "gelu_tanh": "GeGLU", "gelu": "GELU MLP", "relu": "ReLU MLP"}
_GGUF_FIXED_HEADER = 4 + 4 + 8 + 8  # magic, version, tensor count, metadata count


# -- the report -----------------------------------------------------------------------------------------


@dataclass
class Identity:
    name: str | None = None
    basename: str | None = None
    size_label: str | None = None
    finetune: str | None = None
    version: str | None = None
    organization: str | None = None
    license: str | None = None
    model_type: str | None = None  # general.type ("model", "adapter") or config.json's model_type
    from_filename: dict[str, Any] | None = None  # the file name parsed by the GGUF naming convention


@dataclass
class QuantShare:
    """How much of the model one storage type holds."""

    type: str  # ggml type (Q4_K, F32, ...) or safetensors dtype
    n_tensors: int
    n_elements: int
    n_bytes: int
    bits_per_weight: float


@dataclass
class SpecialToken:
    id: int | None
    text: str


@dataclass
class TokenizerReport:
    kind: str | None  # tokenizer.ggml.model, or tokenizer.json's model.type
    description: str
    pre: str | None  # tokenizer.ggml.pre: which pre-tokenizer regex splits the text
    vocab_size: int
    special: dict[str, SpecialToken] = field(default_factory=dict)
    add_bos: bool | None = None
    add_eos: bool | None = None
    chat_template: bool = False
    chat_template_chars: int = 0
    chat_note: str = ""


@dataclass
class FileLayout:
    format: str  # "GGUF v3", "safetensors"
    files: list[str]
    file_size: int  # every file above, together
    header_bytes: int  # everything before the tensor data (GGUF: fixed header + metadata + tensor infos)
    metadata_bytes: int  # GGUF: the key/value section; safetensors: the JSON headers
    tensor_info_bytes: int  # GGUF: name, shape, type and offset of each tensor; 0 for safetensors
    padding_bytes: int  # between the header and the first tensor (alignment)
    tensor_bytes: int
    trailing_bytes: int  # after the last tensor's end (0 in a well-formed file)
    alignment: int | None
    n_metadata: int
    n_tensors: int
    first_tensor: str
    first_tensor_offset: int
    last_tensor: str
    last_tensor_end: int
    first_tensor_file: str = ""  # which of `files` holds it (the byte offsets count from that file's start)
    last_tensor_file: str = ""


@dataclass
class MemoryReport:
    """The memory math at the model's context length and at KV_REFERENCE_CONTEXT (see pellucid.memory)."""

    weights: int  # as stored in the file
    weights_loaded: int  # as pellucid's engine holds them (memory.ENGINE_WEIGHTS)
    weights_loaded_as: str
    kv_bytes_per_token: int  # in kv_type
    kv_at_context: int
    kv_at_reference: int
    total_at_context: int  # memory.estimate(): weights as loaded, the default KV type, compute, runtime
    total_at_reference: int
    context_length: int
    reference_context: int = KV_REFERENCE_CONTEXT
    kv_type: str = "f16"  # the engine's default KV cache type
    # KV cache bytes per token in each type the model's head dimension allows (--kv-type, -ctk/-ctv)
    kv_bytes_per_token_by_type: dict[str, int] = field(default_factory=dict)


@dataclass
class ModelReport:
    path: str
    kind: str  # "gguf" or "hf"
    architecture: str
    identity: Identity
    n_parameters: int
    n_active_parameters: int  # what one token passes through (k of E routed experts); == n_parameters if dense
    decode_bytes: int  # bytes of weights a decode step reads (active parameters as stored, one embedding row)
    file_size: int
    file_precision: str  # general.file_type (Q4_K_M, ...) or the dominant dtype
    bits_per_weight: float  # over every tensor
    quant: list[QuantShare]
    config: ModelConfig
    encoder_only: bool
    tokenizer: TokenizerReport
    layout: FileLayout
    memory: MemoryReport
    notes: list[str] = field(default_factory=list)
    origin: dict[str, Any] = field(default_factory=dict)  # where the store got it: source, revision, pulled_at


# -- building it ----------------------------------------------------------------------------------------


def inspect_model(model: ResolvedModel, quantize: str | None = None) -> ModelReport:
    """The report on `model`; with `quantize` ("q8_0", "q4_0", "q4_k") its memory math counts the float
    matrices packed into that format at load, as `--quantize` runs them."""
    report = _inspect_gguf(model.path, quantize) if model.kind == "gguf" else _inspect_hf(model.path, quantize)
    report.origin = dict(model.origin)
    return report


def footprint(model: ResolvedModel, quantize: str | None = None) -> Footprint:
    """What the memory planner needs: the model's shape, its tensors and the size of its metadata."""
    if model.kind == "gguf":
        with GGUFFile(model.path) as g:
            return _at_load(_gguf_footprint(g), quantize)
    from pellucid.formats.safetensors import HFFolder

    with HFFolder(model.path) as folder:
        return _at_load(_hf_footprint(folder), quantize)


def _at_load(fp: Footprint, quantize: str | None) -> Footprint:
    if quantize is None:
        return fp
    from pellucid.model.loader import QUANTIZE_TYPES

    return memory.quantized_at_load(fp, QUANTIZE_TYPES[quantize])


def _is_buffer(name: str) -> bool:
    """DeepSeek V3's selection-only router bias: a buffer in transformers (set by a load-balancing rule, not
    trained), so not counted among the parameters, as num_parameters() does not."""
    return name.endswith(("e_score_correction_bias", "exp_probs_b.bias"))


def _gguf_footprint(g: GGUFFile) -> Footprint:
    config = config_from_gguf(g.metadata, set(g.tensors))
    # llama.cpp's converter stores RoPE frequency factors as tensors; they are constants (buffers in HF), not
    # parameters, so they are left out of the parameter count, as transformers' num_parameters() does.
    tensors = tuple(
        TensorSize(
            t.name,
            t.shape,
            t.n_bytes,
            is_parameter=not t.name.startswith("rope_") and not _is_buffer(t.name),
            ggml_type=t.ggml_type,
        )
        for t in g.tensors.values()
    )
    return Footprint(config, tensors, metadata_bytes=g.header_size, file_precision=_gguf_precision(g))


def _gguf_precision(g: GGUFFile) -> str:
    file_type = g.get("general.file_type")
    if file_type is not None:
        return FILE_TYPE_NAMES.get(file_type, f"file_type {file_type}")
    return _dominant_type(_quant_shares((t.ggml_type.name, t.n_elements, t.n_bytes) for t in g.tensors.values()))


def _inspect_gguf(path: Path, quantize: str | None = None) -> ModelReport:
    with GGUFFile(path) as g:
        fp = _at_load(_gguf_footprint(g), quantize)
        md = g.metadata
        identity = Identity(
            name=md.get("general.name"),
            basename=md.get("general.basename"),
            size_label=md.get("general.size_label"),
            finetune=md.get("general.finetune"),
            version=md.get("general.version"),
            organization=md.get("general.organization"),
            license=md.get("general.license"),
            model_type=md.get("general.type"),
            from_filename=_name_parts(path.name),
        )
        quant = _quant_shares((t.ggml_type.name, t.n_elements, t.n_bytes) for t in g.tensors.values())
        tokenizer = _gguf_tokenizer(md, fp.config, identity)
        layout = _gguf_layout(g)
        return _assemble(path, "gguf", identity, quant, fp, tokenizer, layout, g.file_size)


def _assemble(path, kind, identity, quant, fp: Footprint, tokenizer, layout, file_size) -> ModelReport:
    n_bytes = sum(q.n_bytes for q in quant)
    n_elements = sum(q.n_elements for q in quant)
    report = ModelReport(
        path=str(path),
        kind=kind,
        architecture=fp.config.architecture,
        identity=identity,
        n_parameters=fp.n_parameters,
        n_active_parameters=fp.n_active_parameters,
        decode_bytes=fp.decode_bytes,
        file_size=file_size,
        file_precision=fp.file_precision,
        bits_per_weight=8 * n_bytes / max(n_elements, 1),
        quant=quant,
        config=fp.config,
        encoder_only=fp.encoder_only,
        tokenizer=tokenizer,
        layout=layout,
        memory=_memory_report(fp),
    )
    report.notes = _notes(report)
    return report


def _quant_shares(rows: Iterable[tuple[str, int, int]]) -> list[QuantShare]:
    """(type, n_elements, n_bytes) per tensor -> one row per type, biggest share of bytes first."""
    by_type: dict[str, list[int]] = {}
    for type_name, n_elements, n_bytes in rows:
        acc = by_type.setdefault(type_name, [0, 0, 0])
        acc[0] += 1
        acc[1] += n_elements
        acc[2] += n_bytes
    shares = [QuantShare(t, n, e, b, 8 * b / max(e, 1)) for t, (n, e, b) in by_type.items()]
    return sorted(shares, key=lambda q: -q.n_bytes)


def _dominant_type(shares: list[QuantShare]) -> str:
    return shares[0].type if shares else "?"


def _memory_report(fp: Footprint) -> MemoryReport:
    ctx = fp.config.context_length
    kv_type = memory.kv_label(*memory.kv_pair(None))
    by_type = {}
    for name in KV_CACHE_TYPES:
        try:
            by_type[name] = memory.kv_cache_bytes(fp.config, 1, name)
        except PellucidError:  # a block type the head dimension does not divide
            continue
    at_ctx = memory.estimate(fp, ctx, kv_type=kv_type)
    at_ref = memory.estimate(fp, KV_REFERENCE_CONTEXT, kv_type=kv_type)
    return MemoryReport(
        kv_type=kv_type,
        kv_bytes_per_token_by_type=by_type,
        weights=sum(t.n_bytes for t in fp.tensors),
        weights_loaded=at_ctx.weights,
        weights_loaded_as=at_ctx.weights_as,
        kv_bytes_per_token=memory.kv_cache_bytes(fp.config, 1, kv_type),
        kv_at_context=at_ctx.kv_cache,
        kv_at_reference=at_ref.kv_cache,
        total_at_context=at_ctx.total,
        total_at_reference=at_ref.total,
        context_length=ctx,
    )


def _name_parts(file_name: str) -> dict[str, Any]:
    """What the file name says under the GGUF naming convention; a hint, the metadata is the authority."""
    parsed = parse_gguf_name(file_name)
    fields = ("base_name", "size_label", "fine_tune", "version", "encoding", "type", "shard", "shard_count")
    return {f: getattr(parsed, f) for f in fields if getattr(parsed, f) is not None}


# -- GGUF details ---------------------------------------------------------------------------------------


def _gguf_tokenizer(md: dict[str, Any], config: ModelConfig, identity: Identity) -> TokenizerReport:
    tokens = md.get("tokenizer.ggml.tokens") or []
    kind = md.get("tokenizer.ggml.model")
    special = {}
    for role, suffix in GGUF_SPECIAL_TOKENS.items():
        token_id = md.get(f"tokenizer.ggml.{suffix}")
        if token_id is not None:
            text = tokens[token_id] if 0 <= token_id < len(tokens) else "<out of range>"
            special[role] = SpecialToken(int(token_id), text)
    template = md.get("tokenizer.chat_template")
    return TokenizerReport(
        kind=kind,
        description=TOKENIZER_KINDS.get(kind, "unknown to pellucid") if kind else "no tokenizer in the file",
        pre=md.get("tokenizer.ggml.pre"),
        vocab_size=len(tokens) or config.vocab_size,
        special=special,
        add_bos=md.get("tokenizer.ggml.add_bos_token"),
        add_eos=md.get("tokenizer.ggml.add_eos_token"),
        chat_template=bool(template),
        chat_template_chars=len(template or ""),
        chat_note=_chat_note(template, identity),
    )


def _gguf_layout(g: GGUFFile) -> FileLayout:
    """The layout of the model's file, or of all its parts together for a split model (gguf-split)."""
    # Each tensor info: name (u64 length + bytes), n_dims u32, dims u64 each, type u32, offset u64.
    info_bytes = sum(8 + len(t.name.encode()) + 4 + 8 * len(t.shape) + 4 + 8 for t in g.tensors.values())
    ordered = sorted(g.tensors.values(), key=lambda t: (t.part, t.offset))
    first, last = (ordered[0], ordered[-1]) if ordered else (None, None)
    first_part, last_part = g.parts[0], g.parts[-1]
    return FileLayout(
        format=f"GGUF v{g.version}",
        files=[part.path.name for part in g.parts],
        file_size=g.file_size,
        header_bytes=g.header_size,
        metadata_bytes=g.header_size - _GGUF_FIXED_HEADER * len(g.parts) - info_bytes,
        tensor_info_bytes=info_bytes,
        padding_bytes=sum(part.data_offset - part.header_size for part in g.parts),
        tensor_bytes=g.tensor_data_bytes,
        trailing_bytes=sum(part.trailing_bytes for part in g.parts),
        alignment=g.alignment,
        n_metadata=len(g.metadata),
        n_tensors=len(g.tensors),
        first_tensor=first.name if first else "",
        first_tensor_offset=first.offset if first else first_part.data_offset,
        last_tensor=last.name if last else "",
        last_tensor_end=last.offset + last.n_bytes if last else last_part.data_offset,
        first_tensor_file=g.parts[first.part].path.name if first else first_part.path.name,
        last_tensor_file=g.parts[last.part].path.name if last else last_part.path.name,
    )


def _chat_note(template: str | None, identity: Identity) -> str:
    if template:
        style = next((s for marker, s in TEMPLATE_STYLES.items() if marker in template), "custom format")
        return f"{style}; `chat` formats conversations with it"
    words = " ".join(filter(None, [identity.name, identity.finetune])).lower()
    if any(w in f" {words}" for w in INSTRUCT_WORDS):
        return (
            "no chat template, although the name says the model is instruction-tuned: chat needs its "
            "template; look for a release of the model that includes one"
        )
    return (
        "no chat template: this is a base (pretrained) model. It continues text; it was not trained to "
        "follow a conversation, so use it for completion, not chat"
    )


# -- Hugging Face folders -------------------------------------------------------------------------------


def _hf_footprint(folder: HFFolder) -> Footprint:
    tensors = tuple(_hf_tensor_size(folder, t) for t in folder.tensors.values())
    side_files = [folder.path / n for n in ("tokenizer.json", "tokenizer_config.json", "config.json")]
    headers = sum(h.data_offset for h in folder.headers.values())
    metadata = headers + sum(p.stat().st_size for p in side_files if p.is_file())
    config = hf_config(folder.config, set(folder.tensors))
    return Footprint(config, tensors, metadata_bytes=metadata, file_precision=_dominant_type(_hf_quant(folder)))


def _hf_tensor_size(folder: HFFolder, t) -> TensorSize:
    """One safetensors tensor as the planner sees it. OpenAI's MXFP4 checkpoints (GPT-OSS) store a matrix as U8
    `*_blocks` (..., in / 32, 16) beside U8 `*_scales` (..., in / 32): the blocks count as the MXFP4 matrix they
    hold (..., in), bytes of both included, the scales as no parameters of their own."""
    if t.dtype == "U8" and t.name.endswith("_blocks") and t.name.removesuffix("_blocks") + "_scales" in folder.tensors:
        scales = folder.tensors[t.name.removesuffix("_blocks") + "_scales"]
        shape = (*t.shape[:-2], t.shape[-2] * 32)
        return TensorSize(t.name, shape, t.n_bytes + scales.n_bytes, ggml_type=GGMLType.MXFP4)
    if t.dtype == "U8" and t.name.endswith("_scales") and t.name.removesuffix("_scales") + "_blocks" in folder.tensors:
        return TensorSize(t.name, t.shape, 0, is_parameter=False)  # counted with its blocks
    return TensorSize(
        t.name,
        t.shape,
        t.n_bytes,
        is_parameter=t.dtype.startswith(("F", "BF")) and not _is_buffer(t.name),  # not I64 buffers
        ggml_type=GGMLType[t.dtype] if t.dtype in ("F32", "F16", "BF16") else None,
    )


def _hf_quant(folder: HFFolder) -> list[QuantShare]:
    return _quant_shares((t.dtype, t.n_elements, t.n_bytes) for t in folder.tensors.values())


def hf_config(cfg: dict[str, Any], tensor_names: set[str] | None = None) -> ModelConfig:
    """ModelConfig from a config.json, as far as `inspect` and `fit` need it: the engine's own reading
    (model.config.config_from_hf) for the decoder families pellucid runs, else the keys BERT- and Llama-style
    configs share (an encoder, or a decoder family pellucid can describe but not run)."""
    from pellucid.errors import PellucidError
    from pellucid.model.families import known_family

    model_type = (cfg.get("text_config") or cfg).get("model_type")
    if model_type and known_family(model_type) is not None:
        try:
            return config_from_hf(cfg, tensor_names)
        except (PellucidError, KeyError, TypeError, ValueError, ZeroDivisionError):
            pass  # a config the engine would refuse still gets described as far as its keys allow
    n_heads = cfg.get("num_attention_heads", 1)
    hidden = cfg.get("hidden_size", 0)
    head_dim = cfg.get("head_dim") or hidden // max(n_heads, 1)
    sliding_window = cfg.get("sliding_window") if cfg.get("use_sliding_window", True) else None
    n_layers = cfg.get("num_hidden_layers", 0)
    return ModelConfig(
        architecture=cfg.get("model_type") or (cfg.get("architectures") or ["?"])[0],
        n_layers=n_layers,
        hidden_size=hidden,
        n_heads=n_heads,
        n_kv_heads=cfg.get("num_key_value_heads") or n_heads,
        head_dim=head_dim,
        value_head_dim=head_dim,
        ffn_size=cfg.get("intermediate_size", 0),
        vocab_size=cfg.get("vocab_size", 0),
        context_length=cfg.get("max_position_embeddings", 0),
        norm_eps=float(cfg.get("rms_norm_eps") or cfg.get("layer_norm_eps") or 1e-5),
        rope_theta=float(cfg.get("rope_theta", 0.0)),  # 0 = no RoPE (BERT's learned absolute positions)
        rope_dim=head_dim if "rope_theta" in cfg else 0,
        sliding_window=sliding_window,
        sliding_layers=[True] * n_layers if sliding_window else [],
        activation={"gelu_pytorch_tanh": "gelu_tanh"}.get(cfg.get("hidden_act", ""), cfg.get("hidden_act", "silu")),
        tie_embeddings=bool(cfg.get("tie_word_embeddings", True)),
    )


def _inspect_hf(path: Path, quantize: str | None = None) -> ModelReport:
    from pellucid.formats.safetensors import HFFolder

    with HFFolder(path) as folder:
        fp = _at_load(_hf_footprint(folder), quantize)
        identity = Identity(
            name=path.name,
            basename=folder.config.get("_name_or_path") or None,
            license=_readme_front_matter(path / "README.md").get("license"),
            model_type=folder.model_type,
        )
        tokenizer = _hf_tokenizer(folder, fp.config, identity)
        layout = _hf_layout(folder)
        return _assemble(path, "hf", identity, _hf_quant(folder), fp, tokenizer, layout, layout.file_size)


def _hf_tokenizer(folder: HFFolder, config: ModelConfig, identity: Identity) -> TokenizerReport:
    from pellucid.tokenizer import load_tokenizer

    tok = load_tokenizer(folder.path)  # tokenizer.json through the `tokenizers` library: ids, kind, BOS/EOS
    tok_config = folder.tokenizer_config or {}
    special = {}
    for role in HF_SPECIAL_TOKENS:
        value = tok_config.get(f"{role}_token")
        text = value.get("content") if isinstance(value, dict) else value
        if text:
            special[role] = SpecialToken(tok.token_to_id(text), text)
    for role, token_id in (("bos", tok.bos_id), ("eos", tok.eos_id)):  # BERT: [CLS] and [SEP] play these
        if role not in special and token_id is not None:
            special[role] = SpecialToken(token_id, tok.piece(token_id))
    template = folder.chat_template
    return TokenizerReport(
        kind=tok.kind,
        description=TOKENIZER_KINDS.get(tok.kind, "unknown to pellucid"),
        pre=None,  # tokenizer.json describes its pre-tokenizer as a pipeline, not by one name
        vocab_size=tok.vocab_size,
        special=special,
        add_bos=tok.add_bos,
        add_eos=tok.add_eos,
        chat_template=bool(template),
        chat_template_chars=len(template or ""),
        chat_note=_hf_chat_note(template, identity, config),
    )


def _hf_chat_note(template: str | None, identity: Identity, config: ModelConfig) -> str:
    if not template and memory.is_encoder_only(config):
        return "no chat template: an encoder (embeddings / classification), not a text generator"
    return _chat_note(template, identity)


def _hf_layout(folder: HFFolder) -> FileLayout:
    ordered = sorted(folder.tensors.values(), key=lambda t: (t.file.name, t.offset))
    first, last = (ordered[0], ordered[-1]) if ordered else (None, None)
    file_size = sum(p.stat().st_size for p in folder.files)
    header_bytes = sum(h.data_offset for h in folder.headers.values())
    tensor_bytes = folder.tensor_data_bytes
    return FileLayout(
        format="safetensors",
        files=[p.name for p in folder.files],
        file_size=file_size,
        header_bytes=header_bytes,
        metadata_bytes=header_bytes - 8 * len(folder.files),  # each file: an 8-byte length, then JSON
        tensor_info_bytes=0,
        padding_bytes=0,
        tensor_bytes=tensor_bytes,
        trailing_bytes=file_size - header_bytes - tensor_bytes,
        alignment=None,
        n_metadata=len(folder.config),
        n_tensors=len(folder.tensors),
        first_tensor=first.name if first else "",
        first_tensor_offset=first.offset if first else 0,
        last_tensor=last.name if last else "",
        last_tensor_end=last.offset + last.n_bytes if last else 0,
        first_tensor_file=first.file.name if first else "",
        last_tensor_file=last.file.name if last else "",
    )


def _readme_front_matter(readme: Path) -> dict[str, str]:
    """The `key: value` lines of a model card's YAML front matter (only the scalar ones)."""
    try:
        lines = readme.read_text(encoding="utf-8", errors="replace").splitlines()
    except OSError:
        return {}
    if not lines or lines[0].strip() != "---":
        return {}
    out = {}
    for line in lines[1:]:
        if line.strip() == "---":
            break
        key, sep, value = line.partition(":")
        if sep and value.strip() and not line.startswith((" ", "-")):
            out[key.strip()] = value.strip()
    return out


# -- notes: what a newcomer should not miss -------------------------------------------------------------


def _notes(r: ModelReport) -> list[str]:
    notes = []
    c = r.config
    if r.layout.trailing_bytes:
        notes.append(f"{r.layout.trailing_bytes:,} bytes follow the last tensor; the file may be damaged")
    if r.encoder_only:
        notes.append("encoder-only: it turns text into vectors (`embed`); it does not generate text")
    elif not r.tokenizer.chat_template:
        notes.append(r.tokenizer.chat_note)
    if c.rope_scaling is not None:
        notes.append(f"RoPE is stretched to reach its context length ({_scaling_text(c.rope_scaling)})")
    if r.memory.context_length and r.memory.context_length < KV_REFERENCE_CONTEXT and not r.encoder_only:
        notes.append(f"its context is {r.memory.context_length:,} tokens; the 4,096-token figures are beyond it")
    return notes


# -- output ---------------------------------------------------------------------------------------------


def report_json(report: ModelReport) -> dict[str, Any]:
    return _jsonable(dataclasses.asdict(report))


def _jsonable(value: Any) -> Any:
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    if hasattr(value, "tolist"):  # numpy arrays and scalars
        return value.tolist()
    if isinstance(value, Path):
        return str(value)
    return value


def format_count(n: int) -> str:
    """134_515_008 -> '135M': three significant figures, as model sizes are quoted."""
    for suffix, size in (("T", 1e12), ("B", 1e9), ("M", 1e6), ("K", 1e3)):
        if n >= size:
            return f"{n / size:.3g}{suffix}"
    return str(n)


def render_text(r: ModelReport) -> str:
    sections = [
        [Path(r.path).name, f"  {r.path}", *_origin_lines(r.origin)],
        _what_it_is(r),
        _weights_section(r),
        _shape_section(r),
        _tokenizer_section(r),
        _layout_section(r),
        _memory_section(r),
    ]
    if r.notes:
        sections.append(["Notes", *(f"  - {n}" for n in r.notes)])
    return "\n\n".join("\n".join(lines) for lines in sections)


def _origin_lines(origin: dict[str, Any]) -> list[str]:
    """Where the model came from, when the store (or another tool's store) knows."""
    if not origin.get("source"):
        return []
    line = f"  from {origin['source']}"
    if origin.get("revision"):
        line += f", commit {origin['revision'][:12]}"
    if origin.get("pulled_at"):
        line += f", pulled {origin['pulled_at']}"
    return [line]


def _rows(title: str, rows: list[tuple[str, str]]) -> list[str]:
    width = max(len(k) for k, _ in rows)
    return [title, *(f"  {k.ljust(width)}  {v}" for k, v in rows)]


def _na(value: Any) -> str:
    return "n/a" if value is None or value == "" else str(value)


def _what_it_is(r: ModelReport) -> list[str]:
    i = r.identity
    rows = [("architecture", r.architecture), ("name", _na(i.name))]
    parts = [
        f"{k} {v}"
        for k, v in (
            ("base name", i.basename),
            ("size label", i.size_label),
            ("fine-tune", i.finetune),
            ("version", i.version),
        )
        if v
    ]
    if parts:
        rows.append(("", ", ".join(parts)))
    if i.from_filename:
        parts = ", ".join(f"{k.replace('_', ' ')} {v}" for k, v in i.from_filename.items())
        rows.append(("file name says", parts))
    if i.organization:
        rows.append(("organization", i.organization))
    rows.append(("license", _na(i.license)))
    rows.append(("parameters", f"{format_count(r.n_parameters)} ({r.n_parameters:,}), counted from the tensor shapes"))
    if r.n_active_parameters != r.n_parameters:
        c = r.config
        rows.append(
            (
                "active per token",
                f"{format_count(r.n_active_parameters)} ({r.n_active_parameters:,}): {c.n_experts_used} of "
                f"{c.n_experts} experts in each MoE layer",
            )
        )
    if not r.encoder_only:
        rows.append(("read per token", f"{format_bytes(r.decode_bytes)} of weights in a decode step"))
    in_files = f" in {len(r.layout.files)} files" if len(r.layout.files) > 1 else ""
    rows.append(("file size", f"{format_bytes(r.file_size)} ({r.file_size:,} bytes){in_files}"))
    return _rows("What it is", rows)


def _weights_section(r: ModelReport) -> list[str]:
    title = f"Weights: {r.file_precision} overall, {r.bits_per_weight:.2f} bits per weight on average"
    table = [("type", "tensors", "weights", "bytes", "bits/weight")]
    for q in r.quant:
        table.append(
            (q.type, str(q.n_tensors), f"{q.n_elements:,}", format_bytes(q.n_bytes), f"{q.bits_per_weight:.2f}")
        )
    widths = [max(len(row[k]) for row in table) for k in range(5)]
    lines = [title]
    for row in table:
        lines.append("  " + row[0].ljust(widths[0]) + "".join("  " + c.rjust(w) for c, w in zip(row[1:], widths[1:])))
    return lines


def _shape_section(r: ModelReport) -> list[str]:
    c = r.config
    heads = f"{c.n_heads} query, {c.n_kv_heads} key/value"
    if c.n_kv_heads and c.n_heads != c.n_kv_heads:
        heads += f" (grouped-query attention: {c.gqa_ratio} query heads share each KV head)"
    if c.kv_lora_rank:
        heads += (
            f" (multi-head latent attention: every head's keys and values decompressed from one {c.kv_lora_rank}-dim "
            f"latent per token, plus a shared {c.rope_dim}-dim RoPE key"
            + (f"; queries through a {c.q_lora_rank}-dim bottleneck)" if c.q_lora_rank else ")")
        )
    rows = [
        ("layers", str(c.n_layers)),
        ("hidden size", str(c.hidden_size)),
        ("attention heads", heads),
        ("head dim", str(c.head_dim) + ("" if c.value_head_dim == c.head_dim else f" (values: {c.value_head_dim})")),
        ("FFN size", f"{c.ffn_size} ({FFN_NAMES.get(c.activation, c.activation)})"),
        ("context length", f"{c.context_length:,} tokens"),
        ("positions", _rope_text(c)),
        ("sliding window", _window_text(c)),
    ]
    if not r.encoder_only:
        rows.append(
            ("output head", "tied: reuses the token embedding" if c.tie_embeddings else "its own matrix (untied)")
        )
    if c.n_experts:
        rows.append(("experts", _experts_text(c)))
    return _rows("Shape", rows)


def _experts_text(c: ModelConfig) -> str:
    scores = f"{c.expert_gating} scores" + (", normalised" if c.expert_weights_norm else "")
    if c.expert_weights_scale != 1.0:
        scores += f", x{c.expert_weights_scale:g}"
    text = f"{c.n_experts_used} of {c.n_experts} per token (FFN {c.expert_ffn_size}; {scores})"
    if c.n_expert_groups > 1:
        text += f", from the best {c.n_expert_groups_used} of {c.n_expert_groups} groups"
    if c.n_shared_experts:
        gated = ", gated" if c.shared_expert_gate else ""
        text += f"; {c.n_shared_experts} shared (FFN {c.shared_expert_ffn_size}{gated})"
    n_dense = sum(not c.is_moe_layer(i) for i in range(c.n_layers))
    if n_dense:
        text += f"; {n_dense} dense layers"
    return text


def _rope_text(c: ModelConfig) -> str:
    if not c.rope_dim:
        return "learned absolute position embeddings (no RoPE)"
    text = f"RoPE, base {c.rope_theta:,.0f}"
    if c.rope_theta_local and c.rope_theta_local != c.rope_theta:
        text += f" (sliding-window layers: {c.rope_theta_local:,.0f})"
    if c.rope_dim != c.head_dim:
        text += f", {c.rope_dim} of {c.head_dim} dims rotated"
    return text + (f", {_scaling_text(c.rope_scaling)}" if c.rope_scaling else ", no scaling")


def _scaling_text(s) -> str:
    """How RoPE is stretched, in words: the kinds differ in what their numbers mean."""
    original = f" (trained for {s.original_context_length:,} tokens)" if s.original_context_length else ""
    if s.kind == "llama3":
        if s.factor == 1.0:  # a GGUF file: the per-frequency divisors are a tensor (rope_freqs.weight)
            return f"llama3 scaling, per-frequency divisors from the file{original}"
        return f"llama3 scaling: low frequencies divided by {s.factor:g}{original}"
    if s.kind == "longrope":
        return f"LongRoPE: per-frequency factors, the long set beyond {s.original_context_length:,} tokens of context"
    return f"{s.kind} scaling x{s.factor:g}{original}"


def _window_text(c: ModelConfig) -> str:
    if not c.sliding_window or not any(c.sliding_layers):
        return "none: every layer attends to the whole context"
    n_local = sum(c.sliding_layers)
    if n_local == c.n_layers:
        return f"{c.sliding_window:,} tokens on every layer"
    global_layers = [str(i) for i, local in enumerate(c.sliding_layers) if not local]
    return (
        f"{c.sliding_window:,} tokens on {n_local} of {c.n_layers} layers; "
        f"layers {', '.join(global_layers)} (from 0) see the whole context"
    )


def _tokenizer_section(r: ModelReport) -> list[str]:
    t = r.tokenizer
    kind = f"{t.kind}: {t.description}" if t.kind else t.description
    if t.pre:
        kind += f"; pre-tokenizer {t.pre}"
    special = ", ".join(f"{role} {s.id if s.id is not None else '?'} {s.text!r}" for role, s in t.special.items())
    adds = [
        f"{role.upper()} {t.special[role].text!r} at the {where}"
        if role in t.special
        else f"{role.upper()} at the {where}"
        for role, where, flag in (("bos", "start", t.add_bos), ("eos", "end", t.add_eos))
        if flag
    ]
    rows = [
        ("type", kind),
        ("vocabulary", f"{t.vocab_size:,} tokens"),
        ("special tokens", special or "none listed"),
        ("adds", " and ".join(adds) + " of each text" if adds else "no BOS/EOS of its own"),
        (
            "chat template",
            f"yes, {t.chat_template_chars:,} characters: {t.chat_note}" if t.chat_template else t.chat_note,
        ),
    ]
    return _rows("Tokenizer", rows)


def _layout_section(r: ModelReport) -> list[str]:
    lay = r.layout
    title = f"File layout ({lay.format}" + (f", tensors aligned to {lay.alignment} bytes)" if lay.alignment else ")")
    if lay.tensor_info_bytes:
        header = (
            f"{format_bytes(lay.header_bytes)}: {lay.n_metadata} metadata keys {format_bytes(lay.metadata_bytes)}, "
            f"{lay.n_tensors} tensor descriptions {format_bytes(lay.tensor_info_bytes)}"
        )
    else:
        header = f"{format_bytes(lay.header_bytes)}: JSON headers describing {lay.n_tensors} tensors"
    rows = [
        ("files", ", ".join(lay.files)),
        ("header", header),
        (
            "tensor data",
            f"{format_bytes(lay.tensor_bytes)} ({100 * lay.tensor_bytes / max(lay.file_size, 1):.1f}% of the "
            f"{'files' if len(lay.files) > 1 else 'file'})",
        ),
        (
            "first tensor",
            f"{lay.first_tensor} at byte {lay.first_tensor_offset:,}{_of_file(lay, lay.first_tensor_file)}",
        ),
        (
            "last tensor",
            f"{lay.last_tensor}, ends at byte {lay.last_tensor_end:,}{_of_file(lay, lay.last_tensor_file)}",
        ),
    ]
    if lay.padding_bytes:
        rows.insert(2, ("padding", f"{lay.padding_bytes} bytes, so the tensor data starts aligned"))
    if lay.trailing_bytes:
        rows.append(("after the data", f"{lay.trailing_bytes:,} unexplained bytes"))
    return _rows(title, rows)


def _of_file(lay: FileLayout, file: str) -> str:
    """Which file a byte offset counts in, when the model has several."""
    return f" of {file}" if len(lay.files) > 1 and file else ""


def _memory_section(r: ModelReport) -> list[str]:
    m, c = r.memory, r.config
    ctx, ref = m.context_length, m.reference_context
    rows = [
        (
            "weights",
            f"{format_bytes(m.weights)} in the file; {format_bytes(m.weights_loaded)} as {m.weights_loaded_as}, "
            "how pellucid holds them in memory today",
        ),
    ]
    if r.encoder_only:
        rows.append(("KV cache", "none: an encoder reads its whole input in one pass and caches nothing"))
    else:
        size = f"{memory.bytes_per_element(m.kv_type):g} bytes" if "/" not in m.kv_type else f"{m.kv_type} bytes"
        formula = f"{c.n_layers} layers x {c.n_kv_heads} KV heads x ({c.head_dim} + {c.value_head_dim}) dims x {size}"
        if c.kv_lora_rank:  # latent attention caches one latent + RoPE key per token, shared by the heads
            formula = f"{c.n_layers} layers x (latent {c.kv_lora_rank} + RoPE key {c.rope_dim}) dims x {size}"
        if any(c.sliding_layers):
            formula += f"; sliding-window layers stop at {c.sliding_window:,} tokens"
        others = ", ".join(f"{name} {format_bytes(n)}" for name, n in m.kv_bytes_per_token_by_type.items())
        rows += [
            ("KV cache per token", f"{format_bytes(m.kv_bytes_per_token)} in {m.kv_type} ({formula})"),
            ("KV cache types", f"per token: {others} (--kv-type, -ctk/-ctv)"),
            (f"KV cache at {ctx:,}", format_bytes(m.kv_at_context)),
            (f"KV cache at {ref:,}", format_bytes(m.kv_at_reference)),
        ]
    rows.append((f"total at {ctx:,}", f"{format_bytes(m.total_at_context)} (weights, KV cache, activations, PyTorch)"))
    if not r.encoder_only:
        rows.append((f"total at {ref:,}", format_bytes(m.total_at_reference)))
    lines = _rows("Memory", rows)
    lines.append("  (`pellucid fit MODEL` compares this with your RAM, for other precisions and context lengths)")
    return lines
