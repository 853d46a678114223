"""The Anthropic Messages API: POST /v1/messages (and /v1/messages/count_tokens), and its error shape.

Follows https://docs.anthropic.com/en/api/messages closely enough that the official SDK and Claude Code
(pointed here with ANTHROPIC_BASE_URL) work unchanged: `system` (a string or text blocks), `messages` of
text, tool_use, tool_result and thinking blocks, `max_tokens` (required, as Anthropic requires it),
`stop_sequences`, `temperature`, `top_p`, `top_k`, `tools` and `tool_choice` (auto, any, tool, none;
`disable_parallel_tool_use`). A reply is content blocks: `thinking` (a reasoning model's thinking, split from
the answer), `text`, and `tool_use` for each call (stop_reason "tool_use"); how calls are prompted, constrained
and parsed is tools/turn.py. A stream is the event sequence message_start -> for each block content_block_start (the first
followed by a ping), content_block_delta (text_delta / thinking_delta / input_json_delta) ...,
content_block_stop -> message_delta (stop_reason, usage) -> message_stop.

usage follows Anthropic's accounting: `input_tokens` counts the prompt tokens that were computed and
`cache_read_input_tokens` the ones the KV cache already held; their sum is the prompt's length.
"""

from __future__ import annotations

import json
import logging

from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from pellucid.engine.results import GenerationStats
from pellucid.server.backend import Backend, sampling_params
from pellucid.server.errors import ApiError, bad_request
from pellucid.server.schemas import AnthropicBlock, CountTokensRequest, MessagesRequest, parse
from pellucid.server.streams import EventStream, Stream, sse, until_done
from pellucid.tools.turn import ToolChoice, ToolsError, check_tools, plan_turn

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
    plan = turn_plan(backend, body)
    rid = request.scope.get("state", {}).get("request_id", "")
    for note in plan.notes:
        log.warning("%s: %s", rid, note)
    prompt_ids, internal_stops, constraint = await backend.chat_turn(plan)
    params = sampling_params(temperature=body.temperature, top_p=body.top_p, top_k=body.top_k)
    stream = backend.generate(
        prompt_ids, params, max_tokens=body.max_tokens, stop=list(body.stop_sequences or []) + internal_stops,
        constraint=constraint, keep_special=plan.keep_special, watch=plan.call_watch(),
    )  # fmt: skip
    request.state.generation = stream
    head = {"id": f"msg_{rid}", "type": "message", "role": "assistant", "model": model.name}
    user_stops = set(body.stop_sequences or [])
    if body.stream:
        return EventStream(message_events(stream, head, user_stops, plan.reader()), stream)
    done = await until_done(request, stream)
    if done is None:
        return Response(status_code=499)
    if done.error:
        raise ApiError(500, f"generation failed: {done.error}", kind="server_error")
    reader = plan.reader()
    content = [block_json(e) for e in reader.feed(done.text) + reader.finish()]
    content = merge_blocks(content) or [{"type": "text", "text": ""}]
    reason, sequence = stop_reason(done.stats, done.stop_string, user_stops, tool_use=bool(reader.calls))
    return JSONResponse(
        {
            **head,
            "content": content,
            "stop_reason": reason,
            "stop_sequence": sequence,
            "usage": usage_of(done.stats, done.stats.cached_tokens),
        }
    )


def block_json(event) -> dict:
    """A reply event as an Anthropic content block."""
    if event.kind == "tool_call":
        return {"type": "tool_use", "id": tool_use_id(event.call.id), "name": event.call.name,
                "input": event.call.arguments}  # fmt: skip
    if event.kind == "reasoning":
        return {"type": "thinking", "thinking": event.text, "signature": ""}
    return {"type": "text", "text": event.text}


def merge_blocks(blocks: list[dict]) -> list[dict]:
    """Adjacent text (or thinking) pieces as one block; empty text blocks dropped."""
    out: list[dict] = []
    for block in blocks:
        if out and block["type"] == out[-1]["type"] == "text":
            out[-1]["text"] += block["text"]
        elif out and block["type"] == out[-1]["type"] == "thinking":
            out[-1]["thinking"] += block["thinking"]
        else:
            out.append(dict(block))
    return [b for b in out if b["type"] != "text" or b["text"]]


def tool_use_id(call_id: str) -> str:
    return call_id if call_id.startswith("toolu_") else "toolu_" + call_id.removeprefix("call_")


async def message_events(stream: Stream, head: dict, user_stops: set[str], reader):
    """Anthropic's streaming event sequence. message_start waits for the first update, after the prefill,
    so that its usage can say how much of the prompt came from the cache. Content blocks open as the reply
    needs them: thinking (thinking_delta), text (text_delta), each tool call a tool_use block whose input
    arrives as input_json_delta."""
    first = await anext(stream)
    prompt_tokens = len(stream.request.prompt_ids)
    cached = stream.request.cached_tokens
    start_usage = {"input_tokens": prompt_tokens - cached, "output_tokens": 0, "cache_read_input_tokens": cached,
                   "cache_creation_input_tokens": 0}  # fmt: skip
    message = {**head, "content": [], "stop_reason": None, "stop_sequence": None, "usage": start_usage}
    yield sse({"type": "message_start", "message": message}, "message_start")
    blocks = _Blocks()
    update = first
    while True:
        if update.error:
            yield sse(error_body(ApiError(500, update.error)), "error")
            return
        for frame in blocks.frames(reader.feed(update.text) if update.text else []):
            yield frame
        if update.final:
            break
        update = await anext(stream)
    for frame in blocks.frames(reader.finish()):
        yield frame
    for frame in blocks.close(ensure_one=True):
        yield frame
    reason, sequence = stop_reason(update.stats, update.stop_string, user_stops, tool_use=bool(reader.calls))
    delta = {"type": "message_delta", "delta": {"stop_reason": reason, "stop_sequence": sequence},
             "usage": usage_of(update.stats, cached)}  # fmt: skip
    yield sse(delta, "message_delta")
    yield sse({"type": "message_stop"}, "message_stop")


class _Blocks:
    """The open content block of a stream and the next index: events in, SSE frames out."""

    def __init__(self):
        self.index = -1
        self.open: str | None = None  # the type of the open block

    def frames(self, events):
        for event in events:
            if event.kind == "tool_call":
                yield from self.close()
                block = block_json(event)
                yield from self._start({**block, "input": {}})
                partial = json.dumps(block["input"], ensure_ascii=False)
                yield self._delta({"type": "input_json_delta", "partial_json": partial})
                yield from self.close()
            elif event.kind == "reasoning" and event.text:
                if self.open != "thinking":
                    yield from self.close()
                    yield from self._start({"type": "thinking", "thinking": "", "signature": ""})
                yield self._delta({"type": "thinking_delta", "thinking": event.text})
            elif event.text:
                if self.open != "text":
                    yield from self.close()
                    yield from self._start({"type": "text", "text": ""})
                yield self._delta({"type": "text_delta", "text": event.text})

    def close(self, *, ensure_one: bool = False):
        if self.open is None and ensure_one and self.index < 0:
            yield from self._start({"type": "text", "text": ""})
        if self.open is not None:
            if self.open == "thinking":
                yield self._delta({"type": "signature_delta", "signature": ""})
            yield sse({"type": "content_block_stop", "index": self.index}, "content_block_stop")
            self.open = None

    def _start(self, block: dict):
        self.index += 1
        self.open = block["type"]
        yield sse({"type": "content_block_start", "index": self.index, "content_block": block}, "content_block_start")
        if self.index == 0:
            yield sse({"type": "ping"}, "ping")  # where Anthropic's API sends it

    def _delta(self, delta: dict) -> str:
        return sse({"type": "content_block_delta", "index": self.index, "delta": delta}, "content_block_delta")


async def count_tokens(request: Request) -> Response:
    backend: Backend = request.app.state.backend
    body = await parse(request, CountTokensRequest)
    backend.find(body.model, "chat")
    plan = turn_plan(backend, body)
    prompt_ids, _, _ = await backend.chat_turn(plan)
    return JSONResponse({"input_tokens": len(prompt_ids)})


def turn_plan(backend: Backend, body):
    """The request's tools and tool choice, checked, as a tools.turn.TurnPlan."""
    try:
        tools = anthropic_tools(body.tools)
        choice, parallel = anthropic_tool_choice(getattr(body, "tool_choice", None), bool(tools))
        return plan_turn(
            backend.llm.template_source,
            template_messages(body.system, body.messages),
            tools=tools,
            choice=choice,
            parallel=parallel,
            tokenizer=backend.llm.tokenizer,
        )
    except ToolsError as e:
        raise bad_request(str(e), param=e.param) from None


def anthropic_tools(tools: list | None) -> list[dict]:
    """Anthropic's tools ({"name", "description", "input_schema"}) in OpenAI's shape, checked."""
    converted = []
    for i, tool in enumerate(tools or []):
        if not isinstance(tool, dict):
            raise ToolsError(f"tools[{i}] must be an object with name, description and input_schema", f"tools[{i}]")
        kind = tool.get("type")
        if kind not in (None, "custom") and "input_schema" not in tool:
            # Anthropic's own server tools (web_search_..., code_execution_...) run on Anthropic's side; an
            # agent sends them beside its own tools, so the request goes on without them rather than failing.
            log.warning("tools[%d]: Anthropic's server tool %r is not available here; left out", i, kind)
            continue
        if not isinstance(tool.get("name"), str) or not tool["name"].strip():
            raise ToolsError(f"tools[{i}].name is missing: every tool needs a name", f"tools[{i}].name")
        function = {"name": tool["name"], "parameters": tool.get("input_schema", {"type": "object"})}
        if tool.get("description"):
            function["description"] = tool["description"]
        converted.append({"type": "function", "function": function})
    try:
        return check_tools(converted)
    except ToolsError as e:  # name the field as the client wrote it
        param = e.param.replace(".function.parameters", ".input_schema").replace(".function.name", ".name")
        raise ToolsError(str(e).replace(".function.parameters", ".input_schema"), param) from None


def anthropic_tool_choice(choice, has_tools: bool) -> tuple[ToolChoice, bool]:
    """(the tool choice, whether parallel calls are allowed) from Anthropic's tool_choice."""
    if choice is None:
        return ToolChoice("auto" if has_tools else "none"), True
    parallel = not choice.disable_parallel_tool_use
    if choice.type == "tool":
        if not choice.name:
            raise ToolsError("tool_choice {'type': 'tool'} needs the tool's name", "tool_choice.name")
        return ToolChoice("named", choice.name), parallel
    return ToolChoice({"any": "required"}.get(choice.type, choice.type)), parallel


def template_messages(system, messages) -> list[dict]:
    """Anthropic's system + messages as chat-template messages, OpenAI-shaped: text content, an assistant's
    tool_use blocks as tool_calls, a user's tool_result blocks as `tool` messages (before its text, as
    Anthropic orders them). A tool_result for an id no earlier tool_use had is a 400 naming the block."""
    out = []
    # System text: the `system` field, then any `role: system` message (Claude Code sends them among the
    # others); one system message at the start, where every template accepts one.
    systems = [block_text(system, "system")] if system else []
    systems += [block_text(m.content, f"messages[{i}].content") for i, m in enumerate(messages) if m.role == "system"]
    if systems:
        out.append({"role": "system", "content": "\n\n".join(systems)})
    names: dict[str, str] = {}
    for i, m in enumerate(messages):
        where = f"messages[{i}].content"
        if m.role == "system":
            continue
        if isinstance(m.content, str):
            out.append({"role": m.role, "content": m.content})
            continue
        texts, calls, results, thinking = [], [], [], []
        for j, block in enumerate(m.content):
            at = f"{where}[{j}]"
            if block.type == "text":
                texts.append(block.text or "")
            elif block.type == "tool_use" and m.role == "assistant":
                if not block.id or not block.name:
                    raise bad_request(f"{at}: a tool_use block needs an id and a name", param=at)
                names[block.id] = block.name
                calls.append({"id": block.id, "type": "function",
                              "function": {"name": block.name, "arguments": block.input or {}}})  # fmt: skip
            elif block.type == "tool_result" and m.role == "user":
                if block.tool_use_id not in names:
                    raise bad_request(
                        f"{at}.tool_use_id {block.tool_use_id!r} answers no tool_use block of an earlier assistant "
                        f"message",
                        param=f"{at}.tool_use_id",
                    )
                text = block_text(block.content or "", f"{at}.content")
                results.append({"role": "tool", "tool_call_id": block.tool_use_id, "name": names[block.tool_use_id],
                                "content": f"Error: {text}" if block.is_error else text})  # fmt: skip
            elif block.type in ("thinking", "redacted_thinking") and m.role == "assistant":
                thinking.append(block.thinking or "")
            else:
                raise bad_request(
                    f"{at} is a {block.type!r} block; pellucid serves text models: it reads text, tool_use, "
                    f"tool_result and thinking blocks",
                    param=at,
                )
        out.extend(results)
        if m.role == "assistant" and (calls or texts or thinking):
            message = {"role": "assistant", "content": "\n".join(texts)}
            if calls:
                message["tool_calls"] = calls
            if thinking:
                message["reasoning_content"] = "\n".join(thinking)
            out.append(message)
        elif texts or not results:
            out.append({"role": m.role, "content": "\n".join(texts)})
    return out


def block_text(content: str | list[AnthropicBlock], where: str) -> str:
    if isinstance(content, str):
        return content
    other = next((b.type for b in content if b.type != "text"), None)
    if other is not None:
        raise bad_request(
            f"{where} has a {other!r} block; pellucid serves text models, so only 'text' blocks are supported",
            param=where,
        )
    return "\n".join(b.text or "" for b in content)


def stop_reason(
    stats: GenerationStats, stop_string: str | None, user_stops: set[str], *, tool_use: bool = False
) -> tuple[str, str | None]:
    """(stop_reason, stop_sequence). A stop string the client did not ask for (the plain template's
    "\\nUser:") ended the turn, as an end token would; a reply that called tools stops for "tool_use"."""
    if stats.stop_reason in ("length", "context"):
        return "max_tokens", None
    if tool_use:
        return "tool_use", None
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
