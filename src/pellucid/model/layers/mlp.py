"""The gated feed-forward (SwiGLU, GeGLU) and its activations."""

from __future__ import annotations

from functools import partial

import torch
import torch.nn.functional as F
from torch import nn

from pellucid.model.layers.linear import project
from pellucid.quant import kernels, native

ACTIVATIONS = {
    "silu": F.silu,  # SwiGLU (llama)
    "gelu_tanh": partial(F.gelu, approximate="tanh"),  # GeGLU (Gemma; ggml_gelu is the tanh approximation)
}


class GatedMLP(nn.Module):
    """down(act(gate(x)) * up(x)): the gated feed-forward of llama (SiLU) and Gemma (GELU)."""

    def __init__(self, gate_proj: nn.Module, up_proj: nn.Module, down_proj: nn.Module, activation: str):
        super().__init__()
        self.gate_proj, self.up_proj, self.down_proj = gate_proj, up_proj, down_proj
        self.act = ACTIVATIONS[activation]
        self.activation = activation

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        gate, up = project(x, self.gate_proj, self.up_proj)
        if kernels.fused(gate):
            return self.down_proj(native.glu(gate, up, self.activation))
        return self.down_proj(self.act(gate) * up)
