"""RMSNorm, the one normalisation the decoder families use."""

from __future__ import annotations

import torch
from torch import nn

from pellucid.model.layers.linear import frozen


class RMSNorm(nn.Module):
    """x / rms(x) * w, computed in float32 whatever the model dtype (as llama.cpp and HF do).

    The weight is used as stored: Gemma's "(1 + w)" is already folded into its GGUF norm weights by the
    converter, so no family needs an offset here.
    """

    def __init__(self, weight: torch.Tensor, eps: float):
        super().__init__()
        self.weight = frozen(weight if weight.dtype == torch.float32 else weight.float())
        self.eps = eps

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        xf = x.float()
        xf = xf * torch.rsqrt(xf.pow(2).mean(-1, keepdim=True) + self.eps)
        return (xf * self.weight).to(x.dtype)
