"""RMSNorm, the one normalisation the decoder families use."""

from __future__ import annotations

import torch
from torch import nn

from pellucid.model.layers.linear import frozen
from pellucid.quant import kernels, native


class RMSNorm(nn.Module):
    """x / rms(x) * w, computed in float32 whatever the model dtype (as llama.cpp and HF do).

    Gemma multiplies by (1 + w): its HF checkpoints store w and are built with `offset=1` (added once here, in
    float32, as transformers does it); llama.cpp's converter has already added the 1 to GGUF norm weights.
    """

    def __init__(self, weight: torch.Tensor, eps: float, offset: float = 0.0):
        super().__init__()
        weight = weight if weight.dtype == torch.float32 else weight.float()
        self.weight = frozen(weight + offset if offset else weight)
        self.eps = eps

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if kernels.fused(x):
            return native.rms_norm(x, self.weight, self.eps)
        xf = x.float()
        xf = xf * torch.rsqrt(xf.pow(2).mean(-1, keepdim=True) + self.eps)
        return (xf * self.weight).to(x.dtype)
