"""The server command: serve (OpenAI- and Anthropic-compatible HTTP API and web chat page)."""

from __future__ import annotations

COMMANDS: list = []
