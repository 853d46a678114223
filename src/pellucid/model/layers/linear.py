"""Projections and the token embedding, dense: the float matrices every family multiplies by.

Packed (quantized, float16, bfloat16) matrices use `quant.linear.QuantizedLinear` / `QuantizedEmbedding`, which
have the same `forward`; `loader.make_linear` picks one or the other.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from pellucid.quant import kernels
from pellucid.quant.linear import QuantizedLinear


def frozen(tensor: torch.Tensor) -> nn.Parameter:
    """An inference-only parameter; an existing Parameter is reused, so tied weights stay one object."""
    if isinstance(tensor, nn.Parameter):
        return tensor
    return nn.Parameter(tensor, requires_grad=False)


class Linear(nn.Module):
    """y = x @ W.T (+ b) with a dense weight (out_features, in_features) and an optional bias (out_features,).

    Every projection in the model is built by `loader.make_linear`, which uses this dense layer for float32
    matrices and `quant.linear.QuantizedLinear` (same `forward(x)`) for the packed ones.
    """

    def __init__(self, weight: torch.Tensor, bias: torch.Tensor | None = None):
        super().__init__()
        self.weight = frozen(weight)
        self.bias = frozen(bias) if bias is not None else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.linear(x, self.weight, self.bias)


def project(x: torch.Tensor, *projections: nn.Module) -> list[torch.Tensor]:
    """[p(x) for p in projections]; packed ones that read the same x run as one product in decode (q/k/v,
    gate/up: `kernels.matmul_many` quantizes x once for all of them)."""
    if all(isinstance(p, QuantizedLinear) for p in projections):
        outputs = kernels.matmul_many(x, [p.packed for p in projections])
        return [y if p.bias is None else y + p.bias.to(y.dtype) for y, p in zip(outputs, projections)]
    return [p(x) for p in projections]


class Embedding(nn.Module):
    """Token ids -> rows of a dense (vocab, hidden) table. A quantized table is `quant.linear.QuantizedEmbedding`."""

    def __init__(self, weight: torch.Tensor):
        super().__init__()
        self.weight = frozen(weight)

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        return F.embedding(tokens, self.weight)
