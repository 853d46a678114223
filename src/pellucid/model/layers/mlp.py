"""The gated feed-forward (SwiGLU, GeGLU, GPT-OSS's clamped SwiGLU) and its activations."""

from __future__ import annotations

from collections.abc import Callable
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


def swiglu_oai(gate: torch.Tensor, up: torch.Tensor, alpha: float = 1.702, limit: float = 7.0) -> torch.Tensor:
    """GPT-OSS's gated activation: the gate clamped from above, the up projection both ways, and a +1 on up that
    lets a zero gate pass nothing while a zero up still passes the gate (transformers' GptOssExperts._apply_gate,
    ggml_swiglu_oai; llama.cpp hard-codes alpha 1.702 and limit 7)."""
    gate = gate.clamp(max=limit)
    return (up.clamp(-limit, limit) + 1) * (gate * torch.sigmoid(gate * alpha))


def make_glu(
    activation: str, alpha: float = 1.702, limit: float = 7.0
) -> Callable[[torch.Tensor, torch.Tensor], torch.Tensor]:
    """(gate, up) -> the gated activation: act(gate) * up, in one native op where it applies, or swiglu_oai."""
    if activation == "swiglu_oai":
        return partial(swiglu_oai, alpha=alpha, limit=limit)
    act = ACTIVATIONS[activation]

    def glu(gate: torch.Tensor, up: torch.Tensor) -> torch.Tensor:
        if kernels.fused(gate):
            return native.glu(gate, up, activation)
        return act(gate) * up

    return glu


class GatedMLP(nn.Module):
    """down(act(gate(x)) * up(x)): the gated feed-forward of llama (SiLU) and Gemma (GELU)."""

    def __init__(self, gate_proj: nn.Module, up_proj: nn.Module, down_proj: nn.Module, activation: str):
        super().__init__()
        self.gate_proj, self.up_proj, self.down_proj = gate_proj, up_proj, down_proj
        self.activation = activation
        self.glu = make_glu(activation)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        gate, up = project(x, self.gate_proj, self.up_proj)
        return self.down_proj(self.glu(gate, up))
