"""HTTP errors: `ApiError` (status + message + which field), and pellucid's errors mapped onto statuses.

A route raises ApiError for anything the client got wrong; app.py turns it into the JSON error shape of the
API the client speaks (openai.error_body or anthropic.error_body). The rule: a client mistake is a 4xx that
says what to change, never a 500; a 500 means a bug in pellucid, and the server keeps serving.
"""

from __future__ import annotations

from dataclasses import dataclass

from pellucid.engine.sampling import SamplingParamsError
from pellucid.engine.scheduler import QueueFullError
from pellucid.errors import ContextLengthError, PellucidError, TemplateError


@dataclass
class ApiError(Exception):
    status: int
    message: str
    kind: str = "invalid_request_error"  # OpenAI's error.type; anthropic.py maps it to its own names
    param: str | None = None  # the request field at fault
    code: str | None = None  # OpenAI's error.code, e.g. "context_length_exceeded"

    def __str__(self) -> str:
        return self.message


def bad_request(message: str, param: str | None = None, code: str | None = None) -> ApiError:
    return ApiError(400, message, param=param, code=code)


def from_pellucid(e: PellucidError, prompt_param: str = "messages") -> ApiError:
    """An error the engine raised about the request, as an HTTP error (`prompt_param`: where the prompt was)."""
    if isinstance(e, QueueFullError):
        return ApiError(429, str(e), kind="rate_limit_error", code="queue_full")
    if isinstance(e, ContextLengthError):
        return ApiError(400, str(e), param=prompt_param, code="context_length_exceeded")
    if isinstance(e, SamplingParamsError):
        return ApiError(400, str(e), param=str(e).split(" ", 1)[0])  # the message starts with the field name
    if isinstance(e, TemplateError):
        return ApiError(400, f"the chat template cannot render these messages: {e}", param="messages")
    return ApiError(400, str(e))
