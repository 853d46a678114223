"""Layers whose weights stay packed: `QuantizedLinear` (a projection) and `QuantizedEmbedding` (a token lookup).

They replace the dense `Linear` and embedding table where a model file stores a matrix quantized (or in
float16 / bfloat16): `loader.make_linear` builds them from a `PackedWeight`, and a tied output head shares the
embedding's packed weight object, so the 262k x 640 table of Gemma 3 exists once, as the file's bytes.
"""

from __future__ import annotations

import torch
from torch import nn

from pellucid.quant import kernels
from pellucid.quant.packed import PackedWeight


class QuantizedLinear(nn.Module):
    """y = x @ W.T (+ b) with W packed; same `forward(x)` as the dense `Linear`. The bias stays float32."""

    def __init__(self, packed: PackedWeight, bias: torch.Tensor | None = None):
        super().__init__()
        self.packed = packed
        self.bias = nn.Parameter(bias, requires_grad=False) if bias is not None else None

    @property
    def in_features(self) -> int:
        return self.packed.in_features

    @property
    def out_features(self) -> int:
        return self.packed.out_features

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = kernels.matmul(x, self.packed)
        return y if self.bias is None else y + self.bias.to(y.dtype)


class QuantizedEmbedding(nn.Module):
    """Token ids -> vectors, unpacking only the rows asked for (never the whole table)."""

    def __init__(self, packed: PackedWeight, dtype: torch.dtype = torch.float32):
        super().__init__()
        self.packed = packed
        self.dtype = dtype

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        flat = kernels.rows(self.packed, tokens.reshape(-1), self.dtype)  # (B*T, hidden)
        return flat.view(*tokens.shape, -1)
