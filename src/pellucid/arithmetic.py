"""Which arithmetic the user asked for, read from the environment without importing torch.

The engine multiplies as llama.cpp does by default (activations rounded to int8 in decode, bfloat16 in prefill:
quant/kernels.fast_mode, on CPUs with the native kernels); `--exact` sets PELLUCID_EXACT=1 for float32
everywhere (PELLUCID_FAST=0 means the same). The server registry (servers.py) compares this between a client
and a server, so a client is never answered in another arithmetic than it would compute itself.
"""

from __future__ import annotations

import os


def exact_requested() -> bool:
    """Whether float32 arithmetic everywhere was asked for (--exact, PELLUCID_EXACT=1, PELLUCID_FAST=0)."""
    return os.environ.get("PELLUCID_EXACT", "0") not in ("", "0") or os.environ.get("PELLUCID_FAST") == "0"


def compile_requested() -> bool:
    """Whether torch.compile may be used (PELLUCID_COMPILE=0 runs eagerly, which rounds differently)."""
    return os.environ.get("PELLUCID_COMPILE", "1") != "0"
