"""Benchmark commands: bench (speed against peers, llama-bench style)."""

from __future__ import annotations

COMMANDS: list = []
