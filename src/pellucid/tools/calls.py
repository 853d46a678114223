"""What a parsed reply is made of: `ToolCall`s and the ordered `Event`s (text, reasoning, calls) of a reply."""

from __future__ import annotations

import secrets
import string
from dataclasses import dataclass

CALL_ID_PREFIX = "call_"
CALL_ID_LENGTH = 24  # OpenAI's ids are "call_" + 24 alphanumerics
_ID_ALPHABET = string.ascii_letters + string.digits


def new_call_id() -> str:
    """A fresh id for a call the model wrote without one."""
    return CALL_ID_PREFIX + "".join(secrets.choice(_ID_ALPHABET) for _ in range(CALL_ID_LENGTH))


@dataclass
class ToolCall:
    name: str
    arguments: dict  # the parsed JSON arguments object
    id: str  # the model's own id where the format has one, else new_call_id()


@dataclass
class Event:
    """One piece of a parsed reply, in order: text for the user, reasoning, or a finished tool call."""

    kind: str  # "text" | "reasoning" | "tool_call"
    text: str = ""  # for text / reasoning
    call: ToolCall | None = None
