"""BERT, the encoder behind sentence-embedding models such as all-MiniLM-L6-v2.

An encoder differs from the decoder in `transformer.py` in four ways, each visible below: every token sees
every other token (no causal mask; padding is masked instead), positions are learned absolute embeddings
(no RoPE), the residual stream is normalised *after* each branch (post-LN, with LayerNorm and biases), and
the feed-forward is a plain GELU MLP (no gate). The output is one hidden vector per token; pooling them
into a sentence embedding is the embedder's job (`pellucid.engine.embed`).

Weights come from a Hugging Face folder (config.json + safetensors) under the names transformers gives them
(`encoder.layer.{i}.attention.self.query.weight`, ...), optionally prefixed by `bert.` as task-head
checkpoints store them. Shapes: B = batch, T = tokens, H = heads, D = head_dim.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from pellucid.errors import UnsupportedError
from pellucid.formats.safetensors import HFFolder
from pellucid.model.layers import frozen

# Tensors a BERT checkpoint may carry that sentence embeddings never use: the pooler (a tanh layer over
# [CLS], trained for next-sentence prediction) and position_ids (a buffer transformers saved by mistake).
UNUSED_OK = ("pooler.", "embeddings.position_ids")
ACTIVATIONS = {"gelu": F.gelu, "gelu_new": lambda x: F.gelu(x, approximate="tanh"), "relu": F.relu}


@dataclass(frozen=True)
class BertConfig:
    vocab_size: int
    hidden_size: int
    n_layers: int
    n_heads: int
    ffn_size: int
    max_positions: int  # learned absolute positions: the longest input the model can read
    type_vocab_size: int  # segment ids (sentence A / B); embeddings use segment 0
    norm_eps: float
    activation: str

    @property
    def head_dim(self) -> int:
        return self.hidden_size // self.n_heads

    @classmethod
    def from_hf(cls, config: dict[str, Any]) -> BertConfig:
        """Read config.json of a `BertModel`; refuse the variants this encoder does not implement."""
        position_type = config.get("position_embedding_type", "absolute")
        if position_type != "absolute":
            raise UnsupportedError(f"BERT with {position_type!r} position embeddings is not supported (only absolute)")
        activation = config.get("hidden_act", "gelu")
        if activation not in ACTIVATIONS:
            raise UnsupportedError(
                f"BERT with the {activation!r} activation is not supported ({', '.join(ACTIVATIONS)})"
            )
        return cls(
            vocab_size=int(config["vocab_size"]),
            hidden_size=int(config["hidden_size"]),
            n_layers=int(config["num_hidden_layers"]),
            n_heads=int(config["num_attention_heads"]),
            ffn_size=int(config["intermediate_size"]),
            max_positions=int(config.get("max_position_embeddings", 512)),
            type_vocab_size=int(config.get("type_vocab_size", 2)),
            norm_eps=float(config.get("layer_norm_eps", 1e-12)),
            activation=activation,
        )


class LayerNorm(nn.Module):
    def __init__(self, weight: torch.Tensor, bias: torch.Tensor, eps: float):
        super().__init__()
        self.weight, self.bias, self.eps = frozen(weight), frozen(bias), eps

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.layer_norm(x, x.shape[-1:], self.weight, self.bias, self.eps)


class Linear(nn.Module):
    """y = x @ W.T + b (BERT's projections all have biases)."""

    def __init__(self, weight: torch.Tensor, bias: torch.Tensor):
        super().__init__()
        self.weight, self.bias = frozen(weight), frozen(bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.linear(x, self.weight, self.bias)


class EncoderLayer(nn.Module):
    """Post-LN block: x = norm(x + attn(x)); x = norm(x + mlp(x))."""

    def __init__(self, qkv: Linear, out: Linear, attn_norm: LayerNorm, up: Linear, down: Linear, ffn_norm, config):
        super().__init__()
        self.qkv, self.out, self.attn_norm = qkv, out, attn_norm
        self.up, self.down, self.ffn_norm = up, down, ffn_norm
        self.n_heads, self.head_dim = config.n_heads, config.head_dim
        self.act = ACTIVATIONS[config.activation]

    def forward(self, x: torch.Tensor, key_mask: torch.Tensor | None) -> torch.Tensor:
        B, T, C = x.shape
        # One matmul for Q, K and V (their weights were stacked at load): fewer, larger products run faster.
        q, k, v = self.qkv(x).view(B, T, 3, self.n_heads, self.head_dim).permute(2, 0, 3, 1, 4)  # 3 x (B, H, T, D)
        h = F.scaled_dot_product_attention(q, k, v, attn_mask=key_mask)  # (B, H, T, D); scale 1/sqrt(D)
        x = self.attn_norm(x + self.out(h.transpose(1, 2).reshape(B, T, C)))
        return self.ffn_norm(x + self.down(self.act(self.up(x))))


class BertEncoder(nn.Module):
    def __init__(self, config: BertConfig, word: torch.Tensor, position: torch.Tensor, token_type: torch.Tensor,
                 embed_norm: LayerNorm, layers: list[EncoderLayer]):  # fmt: skip
        super().__init__()
        self.config = config
        self.word_embeddings = frozen(word)  # (vocab, hidden)
        self.position_embeddings = frozen(position)  # (max_positions, hidden)
        self.token_type_embeddings = frozen(token_type)  # (type_vocab, hidden): segment A = 0, B = 1
        self.embed_norm = embed_norm
        self.layers = nn.ModuleList(layers)

    @property
    def device(self) -> torch.device:
        return self.word_embeddings.device

    def forward(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        token_type_ids: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Hidden states (B, T, hidden) for token ids (B, T). attention_mask (B, T) is 1 for real tokens, 0 for
        padding (None = no padding); padded positions come out as garbage that pooling must ignore.
        token_type_ids (B, T) mark a pair's second segment with 1 (None = one segment, as for embeddings)."""
        n_tokens = input_ids.shape[1]
        if n_tokens > self.config.max_positions:
            raise ValueError(f"{n_tokens} tokens exceed the encoder's {self.config.max_positions} positions; truncate")
        if token_type_ids is None:
            segment = self.token_type_embeddings[0]  # (hidden,): the same for every token
        else:
            segment = F.embedding(token_type_ids, self.token_type_embeddings)
        x = F.embedding(input_ids, self.word_embeddings) + self.position_embeddings[:n_tokens] + segment
        x = self.embed_norm(x)
        key_mask = None
        if attention_mask is not None and not bool(attention_mask.all()):
            key_mask = attention_mask.bool()[:, None, None, :]  # (B, 1, 1, T): no query attends to padding
        for layer in self.layers:
            x = layer(x, key_mask)
        return x


class BertClassifier(nn.Module):
    """BertForSequenceClassification: the [CLS] vector through the pooler (dense + tanh) and a linear head.
    A cross-encoder is one: it reads a (query, passage) pair and its logit scores their relevance."""

    def __init__(self, encoder: BertEncoder, pooler: Linear, classifier: Linear):
        super().__init__()
        self.encoder, self.pooler, self.classifier = encoder, pooler, classifier

    @property
    def device(self) -> torch.device:
        return self.encoder.device

    def forward(self, input_ids, attention_mask=None, token_type_ids=None) -> torch.Tensor:
        """Logits (B, n_labels)."""
        cls = self.encoder(input_ids, attention_mask, token_type_ids)[:, 0]  # (B, hidden)
        return self.classifier(torch.tanh(self.pooler(cls)))


# -- loading -------------------------------------------------------------------------------------------------


def load_bert(folder: HFFolder, *, device: torch.device | str = "cpu", dtype: torch.dtype = torch.float32):
    """A BertEncoder from an open HF folder whose config.json says model_type "bert"."""
    loader = _Loader(folder, device, dtype)
    encoder = loader.encoder()
    loader.refuse_unused(UNUSED_OK)
    return encoder.eval()


def load_bert_classifier(folder: HFFolder, *, device: torch.device | str = "cpu", dtype: torch.dtype = torch.float32):
    """A BertClassifier (BertForSequenceClassification: encoder under `bert.`, head under `classifier.`)."""
    loader = _Loader(folder, device, dtype)
    encoder = loader.encoder()
    model = BertClassifier(encoder, loader.linear("pooler.dense"), loader.linear("classifier", prefixed=False))
    loader.refuse_unused(("embeddings.position_ids",))
    return model.eval()


class _Loader:
    """Reads tensors by their transformers names and remembers which ones it used."""

    def __init__(self, folder: HFFolder, device, dtype):
        if folder.model_type != "bert":
            raise UnsupportedError(
                f"{folder.path.name} is a {folder.model_type!r} model; pellucid's encoder runs BERT models only"
            )
        self.folder, self.device, self.dtype = folder, device, dtype
        self.config = BertConfig.from_hf(folder.config)
        self.prefix = "bert." if "bert.embeddings.word_embeddings.weight" in folder.tensors else ""
        self.used: set[str] = set()

    def tensor(self, name: str, prefixed: bool = True) -> torch.Tensor:
        name = self.prefix + name if prefixed else name
        self.used.add(name)
        return self.folder.tensor(name, dtype=self.dtype, device=self.device)

    def linear(self, name: str, prefixed: bool = True) -> Linear:
        return Linear(self.tensor(f"{name}.weight", prefixed), self.tensor(f"{name}.bias", prefixed))

    def norm(self, name: str) -> LayerNorm:
        return LayerNorm(self.tensor(f"{name}.weight"), self.tensor(f"{name}.bias"), self.config.norm_eps)

    def encoder(self) -> BertEncoder:
        layers = []
        for i in range(self.config.n_layers):
            p = f"encoder.layer.{i}."
            parts = [self.linear(p + f"attention.self.{n}") for n in ("query", "key", "value")]
            qkv = Linear(torch.cat([q.weight for q in parts]), torch.cat([q.bias for q in parts]))
            layers.append(
                EncoderLayer(
                    qkv,
                    self.linear(p + "attention.output.dense"),
                    self.norm(p + "attention.output.LayerNorm"),
                    self.linear(p + "intermediate.dense"),
                    self.linear(p + "output.dense"),
                    self.norm(p + "output.LayerNorm"),
                    self.config,
                )
            )
        return BertEncoder(
            self.config,
            self.tensor("embeddings.word_embeddings.weight"),
            self.tensor("embeddings.position_embeddings.weight"),
            self.tensor("embeddings.token_type_embeddings.weight"),
            self.norm("embeddings.LayerNorm"),
            layers,
        )

    def refuse_unused(self, unused_ok: tuple[str, ...]) -> None:
        """A tensor we did not read means a feature we do not run (a task head, extra layers): say so."""
        folder, prefix = self.folder, self.prefix
        unused = [n for n in folder.tensors if n not in self.used and not n.removeprefix(prefix).startswith(unused_ok)]
        if unused:
            shown = ", ".join(sorted(unused)[:5]) + (f" and {len(unused) - 5} more" if len(unused) > 5 else "")
            raise UnsupportedError(
                f"{folder.path.name} holds tensors the BERT model does not use ({shown}); it needs a feature "
                f"pellucid does not implement, and running without them would give wrong output"
            )
