"""Sentence embeddings: text -> one L2-normalised vector, as sentence-transformers computes it.

    embedder = load_embedder("minilm-l6")
    vectors = embedder.embed(["The cat sat.", "A dog ran."])   # (2, 384) float32, unit length
    vectors @ vectors.T                                          # cosine similarities

A sentence-transformers folder describes its pipeline in files next to the BERT weights, and we follow them:
modules.json lists the stages (Transformer -> Pooling -> Normalize), `1_Pooling/config.json` says how token
vectors become one (mean over real tokens for MiniLM), sentence_bert_config.json says how many tokens the
model reads (`max_seq_length`, 256 for MiniLM although BERT has 512 positions: it was trained on 256).
Longer texts are truncated, as sentence-transformers does; chunk them first (`pellucid.rag.chunk`).

Speed: texts are tokenized first and sorted by token count, so each batch pads to a similar length and
little compute goes to padding (sentence-transformers sorts by characters, which predicts tokens less well).
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path

import torch
import torch.nn.functional as F

from pellucid.device import pick_device
from pellucid.errors import ModelFileError, PellucidError, UnsupportedError
from pellucid.formats.safetensors import HFFolder
from pellucid.store import ResolvedModel, models_dir, resolve
from pellucid.tokenizer import load_tokenizer

# Pooling modes and their 1_Pooling/config.json flags, in sentence-transformers' order when several are on.
POOLING_MODES = {
    "cls": "pooling_mode_cls_token",
    "max": "pooling_mode_max_tokens",
    "mean": "pooling_mode_mean_tokens",
    "mean_sqrt_len": "pooling_mode_mean_sqrt_len_tokens",
}
EMBEDDING_KINDS = "a Hugging Face BERT folder (config.json model_type 'bert'), such as the catalog's minilm-l6"


@dataclass(frozen=True)
class Pooling:
    modes: tuple[str, ...]  # concatenated in POOLING_MODES order when more than one
    normalize: bool  # L2-normalise the pooled vector (a Normalize stage in modules.json)


class Embedder:
    """An encoder model, its tokenizer and its pooling: `embed(texts)` -> (N, dim) vectors."""

    def __init__(
        self, name: str, folder: Path, *, device=None, dtype: torch.dtype = torch.float32, source: str | None = None
    ):
        from pellucid.model.bert import load_bert

        self.name = name
        self.folder = folder
        self.source = source or str(Path(folder).resolve())  # what load_embedder(...) takes to load it again
        self.device = pick_device(device)
        with HFFolder(folder) as hf:
            self.model = load_bert(hf, device=self.device, dtype=dtype)
            self.weight_files = list(hf.files)
        self.tokenizer = load_tokenizer(folder)
        st_config = _read_json(folder / "sentence_bert_config.json")
        self.pooling = read_pooling(folder)
        self.lowercase = bool(st_config.get("do_lower_case", False))
        positions = self.model.config.max_positions
        self.max_tokens = min(int(st_config.get("max_seq_length", positions)), positions)
        self.dim = self.model.config.hidden_size * len(self.pooling.modes)
        self._prefix = [self.tokenizer.bos_id] if self.tokenizer.add_bos else []  # [CLS]
        self._suffix = [self.tokenizer.eos_id] if self.tokenizer.add_eos else []  # [SEP]
        self.pad_id = self.tokenizer.pad_id if self.tokenizer.pad_id is not None else 0

    def __repr__(self) -> str:
        return f"Embedder({self.name!r}, dim={self.dim}, max_tokens={self.max_tokens}, pooling={self.pooling})"

    @property
    def n_special(self) -> int:
        """Tokens the encoder adds around every text ([CLS] and [SEP] for BERT)."""
        return len(self._prefix) + len(self._suffix)

    @cached_property
    def fingerprint(self) -> str:
        """sha256 over the weight files: a RAG index records it so that it never mixes two models' vectors."""
        digest = hashlib.sha256()
        for path in self.weight_files:
            with open(path, "rb") as f:
                while block := f.read(1 << 22):
                    digest.update(block)
        return digest.hexdigest()

    # -- tokens -------------------------------------------------------------------------------------------
    def content_ids(self, text: str) -> list[int]:
        """The text's token ids without the added special tokens, before truncation. Special-token text in
        the input ("[SEP]") is read as that token, as sentence-transformers' tokenizer does."""
        return self.tokenizer.encode(text.lower() if self.lowercase else text, add_special=False, parse_special=True)

    def count_tokens(self, text: str) -> int:
        """Tokens the encoder would read for `text`, special tokens included, before truncation: a text with
        more than `max_tokens` is truncated by `embed`."""
        return len(self.content_ids(text)) + self.n_special

    def input_ids(self, text: str) -> list[int]:
        """What the encoder reads: [CLS] + the first max_tokens - 2 tokens + [SEP] (HF's truncation)."""
        return self._prefix + self.content_ids(text)[: self.max_tokens - self.n_special] + self._suffix

    # -- vectors ------------------------------------------------------------------------------------------
    @torch.inference_mode()
    def embed(self, texts: list[str], *, batch_size: int = 32) -> torch.Tensor:
        """(N, dim) float32 vectors on the CPU, pooled and (if the model says so) L2-normalised."""
        if isinstance(texts, str):
            raise TypeError("embed takes a list of texts; wrap a single text in a list")
        ids = [self.input_ids(t) for t in texts]
        order = sorted(range(len(ids)), key=lambda i: -len(ids[i]))  # longest first: a memory spike shows early
        out = torch.empty(len(ids), self.dim, dtype=torch.float32)
        for start in range(0, len(order), batch_size):
            batch = order[start : start + batch_size]
            out[batch] = self._embed_batch([ids[i] for i in batch]).float().cpu()
        return out

    def _embed_batch(self, batch: list[list[int]]) -> torch.Tensor:
        longest = max(len(ids) for ids in batch)
        tokens = torch.full((len(batch), longest), self.pad_id, dtype=torch.long)
        mask = torch.zeros((len(batch), longest), dtype=torch.long)
        for row, ids in enumerate(batch):
            tokens[row, : len(ids)] = torch.tensor(ids)
            mask[row, : len(ids)] = 1
        tokens, mask = tokens.to(self.device), mask.to(self.device)
        hidden = self.model(tokens, mask)  # (B, T, hidden)
        pooled = pool(hidden, mask, self.pooling.modes)
        return F.normalize(pooled, p=2, dim=1) if self.pooling.normalize else pooled


def pool(hidden: torch.Tensor, mask: torch.Tensor, modes: tuple[str, ...]) -> torch.Tensor:
    """Token vectors (B, T, C) -> sentence vectors (B, C * len(modes)), ignoring padded positions."""
    m = mask.unsqueeze(-1).to(hidden.dtype)  # (B, T, 1)
    n_tokens = m.sum(1).clamp(min=1e-9)  # (B, 1); the clamp is sentence-transformers' guard against 0
    parts = []
    for mode in POOLING_MODES:
        if mode not in modes:
            continue
        if mode == "cls":
            parts.append(hidden[:, 0])
        elif mode == "max":
            parts.append(hidden.masked_fill(m == 0, -1e9).amax(1))
        elif mode == "mean":
            parts.append((hidden * m).sum(1) / n_tokens)
        else:  # mean_sqrt_len
            parts.append((hidden * m).sum(1) / n_tokens.sqrt())
    return torch.cat(parts, dim=1)


def read_pooling(folder: Path) -> Pooling:
    """The pooling stages of a sentence-transformers folder; a bare BERT folder gets mean + normalise, the
    convention of embedding APIs (and of every all-*-MiniLM model)."""
    modules = _read_json_list(folder / "modules.json")
    if not modules:
        return Pooling(("mean",), normalize=True)
    kinds = [str(m.get("type", "")).rsplit(".", 1)[-1] for m in modules]
    unknown = [k for k in kinds if k not in ("Transformer", "Pooling", "Normalize")]
    if unknown:
        raise UnsupportedError(
            f"{folder.name}: modules.json has stage(s) {', '.join(unknown)} after the encoder; pellucid runs "
            f"Transformer -> Pooling -> Normalize only"
        )
    pooling_module = next((m for m in modules if str(m.get("type", "")).endswith("Pooling")), None)
    modes: tuple[str, ...] = ("mean",)
    if pooling_module is not None:
        config = _read_json(folder / str(pooling_module.get("path", "")) / "config.json")
        modes = tuple(mode for mode, key in POOLING_MODES.items() if config.get(key))
        others = [
            k for k, v in config.items() if k.startswith("pooling_mode_") and v and k not in POOLING_MODES.values()
        ]
        if others or not modes:
            raise UnsupportedError(f"{folder.name}: pooling {others or 'with no mode set'} is not supported")
    return Pooling(modes, normalize="Normalize" in kinds)


def load_embedder(model, *, device=None) -> Embedder:
    """An Embedder for MODEL: a catalog/store name, a ResolvedModel, or a path to a Hugging Face folder."""
    resolved = model if isinstance(model, ResolvedModel) else resolve(model)
    if resolved.kind != "hf":
        raise PellucidError(
            f"{resolved.name} is a {resolved.kind.upper()} file, a text generator; it cannot make embeddings. "
            f'Embeddings come from {EMBEDDING_KINDS}: e.g. `pellucid embed minilm-l6 "some text"`.'
        )
    model_type = _read_json(resolved.path / "config.json").get("model_type")
    if model_type != "bert":
        raise PellucidError(f"{resolved.name} is a {model_type!r} model; embeddings come from {EMBEDDING_KINDS}")
    # A model in the store is found again by its store name (models/<name>/...); any other folder by its path.
    path, store = resolved.path.resolve(), models_dir().resolve()
    source = path.relative_to(store).parts[0] if path.is_relative_to(store) else str(path)
    return Embedder(resolved.name, resolved.path, device=device, source=source)


def _read_json(path: Path) -> dict:
    value = _load_json(path)
    return value if isinstance(value, dict) else {}


def _read_json_list(path: Path) -> list[dict]:
    value = _load_json(path)
    return [v for v in value if isinstance(v, dict)] if isinstance(value, list) else []


def _load_json(path: Path):
    if not os.path.isfile(path):
        return None
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as e:
        raise ModelFileError(f"cannot read {path}: {e}; re-download the model folder") from None
