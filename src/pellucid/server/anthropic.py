"""The Anthropic Messages API: POST /v1/messages (and /v1/messages/count_tokens), and its error shape.

Follows https://docs.anthropic.com/en/api/messages closely enough that the official SDK and Claude Code
(pointed here with ANTHROPIC_BASE_URL) work unchanged: `system`, `messages` of text content blocks,
`max_tokens` (required, as Anthropic requires it), `stop_sequences`, `temperature`, `top_p`, `top_k`.
A stream is the event sequence message_start -> content_block_start -> ping -> content_block_delta ... ->
content_block_stop -> message_delta (stop_reason, usage) -> message_stop.

usage follows Anthropic's accounting: `input_tokens` counts the prompt tokens that were computed and
`cache_read_input_tokens` the ones the KV cache already held; their sum is the prompt's length. `tools` are
accepted and ignored (logged): the model answers in text.
"""

from __future__ import annotations

import logging

from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from pellucid.engine.results import GenerationStats
from pellucid.server.backend import Backend, sampling_params
from pellucid.server.errors import ApiError, bad_request
from pellucid.server.schemas import AnthropicBlock, CountTokensRequest, MessagesRequest, parse
from pellucid.server.streams import EventStream, Stream, sse, until_done

log = logging.getLogger("pellucid.server")

ERROR_TYPES = {  # HTTP status -> Anthropic's error.type
    400: "invalid_request_error",
    401: "authentication_error",
    403: "permission_error",
    404: "not_found_error",
    413: "request_too_large",
    429: "rate_limit_error",
    503: "overloaded_error",
}


def error_body(e: ApiError) -> dict:
    kind = ERROR_TYPES.get(e.status, "api_error" if e.status >= 500 else "invalid_request_error")
    return {"type": "error", "error": {"type": kind, "message": e.message}}


async def messages(request: Request) -> Response:
    backend: Backend = request.app.state.backend
    body = await parse(request, MessagesRequest)
    model = backend.find(body.model, "chat")
    if body.tools:
        rid = request.scope.get("state", {}).get("request_id", "")
        log.warning("%s: tools ignored; the model answers in text (pellucid does not parse tool calls)", rid)
    prompt_ids, internal_stops = await backend.chat_prompt(template_messages(body.system, body.messages))
    params = sampling_params(temperature=body.temperature, top_p=body.top_p, top_k=body.top_k)
    stream = backend.generate(
        prompt_ids, params, max_tokens=body.max_tokens, stop=list(body.stop_sequences or []) + internal_stops
    )
    request.state.generation = stream
    rid = request.scope.get("state", {}).get("request_id", "")
    head = {"id": f"msg_{rid}", "type": "message", "role": "assistant", "model": model.name}
    user_stops = set(body.stop_sequences or [])
    if body.stream:
        return EventStream(message_events(stream, head, user_stops), stream)
    done = await until_done(request, stream)
    if done is None:
        return Response(status_code=499)
    if done.error:
        raise ApiError(500, f"generation failed: {done.error}", kind="server_error")
    reason, sequence = stop_reason(done.stats, done.stop_string, user_stops)
    return JSONResponse(
        {
            **head,
            "content": [{"type": "text", "text": done.text}],
            "stop_reason": reason,
            "stop_sequence": sequence,
            "usage": usage_of(done.stats, done.stats.cached_tokens),
        }
    )


async def message_events(stream: Stream, head: dict, user_stops: set[str]):
    """Anthropic's streaming event sequence. message_start waits for the first update, after the prefill,
    so that its usage can say how much of the prompt came from the cache."""
    first = await anext(stream)
    prompt_tokens = len(stream.request.prompt_ids)
    cached = stream.request.cached_tokens
    start_usage = {"input_tokens": prompt_tokens - cached, "output_tokens": 0, "cache_read_input_tokens": cached,
                   "cache_creation_input_tokens": 0}  # fmt: skip
    message = {**head, "content": [], "stop_reason": None, "stop_sequence": None, "usage": start_usage}
    yield sse({"type": "message_start", "message": message}, "message_start")
    block = {"type": "content_block_start", "index": 0, "content_block": {"type": "text", "text": ""}}
    yield sse(block, "content_block_start")
    yield sse({"type": "ping"}, "ping")
    update = first
    while True:
        if update.error:
            yield sse(error_body(ApiError(500, update.error)), "error")
            return
        if update.text:
            delta = {"type": "content_block_delta", "index": 0, "delta": {"type": "text_delta", "text": update.text}}
            yield sse(delta, "content_block_delta")
        if update.final:
            break
        update = await anext(stream)
    yield sse({"type": "content_block_stop", "index": 0}, "content_block_stop")
    reason, sequence = stop_reason(update.stats, update.stop_string, user_stops)
    delta = {"type": "message_delta", "delta": {"stop_reason": reason, "stop_sequence": sequence},
             "usage": usage_of(update.stats, cached)}  # fmt: skip
    yield sse(delta, "message_delta")
    yield sse({"type": "message_stop"}, "message_stop")


async def count_tokens(request: Request) -> Response:
    backend: Backend = request.app.state.backend
    body = await parse(request, CountTokensRequest)
    backend.find(body.model, "chat")
    prompt_ids, _ = await backend.chat_prompt(template_messages(body.system, body.messages))
    return JSONResponse({"input_tokens": len(prompt_ids)})


def template_messages(system, messages) -> list[dict]:
    """Anthropic's system + messages as chat-template messages (role, plain-text content)."""
    out = []
    if system:
        out.append({"role": "system", "content": block_text(system, "system")})
    for i, m in enumerate(messages):
        out.append({"role": m.role, "content": block_text(m.content, f"messages[{i}].content")})
    return out


def block_text(content: str | list[AnthropicBlock], where: str) -> str:
    if isinstance(content, str):
        return content
    other = next((b.type for b in content if b.type != "text"), None)
    if other is not None:
        raise bad_request(
            f"{where} has a {other!r} block; pellucid serves text models, so only 'text' blocks are supported"
        )
    return "\n".join(b.text or "" for b in content)


def stop_reason(stats: GenerationStats, stop_string: str | None, user_stops: set[str]) -> tuple[str, str | None]:
    """(stop_reason, stop_sequence). A stop string the client did not ask for (the plain template's
    "\\nUser:") ended the turn, as an end token would."""
    if stats.stop_reason in ("length", "context"):
        return "max_tokens", None
    if stop_string is not None and stop_string in user_stops:
        return "stop_sequence", stop_string
    return "end_turn", None


def usage_of(stats: GenerationStats, cached: int) -> dict:
    return {
        "input_tokens": stats.prompt_tokens - cached,
        "output_tokens": stats.generated_tokens,
        "cache_read_input_tokens": cached,
        "cache_creation_input_tokens": 0,
    }
