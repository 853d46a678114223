"""Dequantize ggml blocks to torch tensors.

TEMPORARY STUB: delegates to gguf-py until pellucid's own torch dequantizers land (issue 2).
"""

from __future__ import annotations

import numpy as np
import torch

from pellucid.quant.types import GGMLType


def dequantize(raw: np.ndarray, ggml_type: GGMLType, shape: tuple[int, ...], dtype=None) -> torch.Tensor:
    """Decode `raw` (uint8 bytes of whole blocks) into a tensor of `shape` (PyTorch order)."""
    from gguf.quants import dequantize as ref

    out = torch.from_numpy(np.ascontiguousarray(ref(raw, int(ggml_type)), dtype=np.float32)).reshape(shape)
    return out.to(dtype) if dtype is not None else out
