"""Retrieval commands: embed, and rag index/search/ask/eval."""

from __future__ import annotations

COMMANDS: list = []
