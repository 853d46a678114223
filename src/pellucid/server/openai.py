"""The OpenAI API: /v1/chat/completions, /v1/completions, /v1/models, /v1/embeddings, and its error shape.

Responses follow OpenAI's reference (https://platform.openai.com/docs/api-reference) closely enough that
the official SDKs parse them: `chat.completion` / `chat.completion.chunk` objects, SSE streams ending in
`data: [DONE]`, `usage` with real token counts and `prompt_tokens_details.cached_tokens` (the prompt tokens
the KV cache already held), `logprobs` as OpenAI reports them. Each response also carries llama-server's
`timings` object (prompt and generation speed), which its users and our web page read, and vLLM's
`stop_reason` on the finished choice (the stop string, or the id of the end token, that ended it). With
vLLM's `return_token_ids: true`, the response also has `prompt_token_ids` (the first chunk of a stream) and
each choice (or streamed delta) its `token_ids`: `pellucid run --json` reads them.

Structured output and tools (chat): `response_format` (`json_object`, `json_schema`; the schema is enforced
token by token whether or not `strict` is set) and llama-server's `json_schema` / `grammar` fields
constrain the reply (engine/constrain.py); `tools`, `tool_choice` (auto, none, required, a named function),
`parallel_tool_calls`, assistant `tool_calls` and `role: tool` results go through tools/turn.py, and a reply's
calls come back as `message.tool_calls` (streamed as `tool_calls` deltas) with finish_reason "tool_calls";
a reasoning model's thinking comes back as `reasoning_content`, not in `content`.

Sampling fields that are not set keep llama.cpp's defaults (temperature 0.8, top_k 40, top_p 0.95,
min_p 0.05), as llama-server does; OpenAI's own defaults differ (temperature 1, no truncation).
"""

from __future__ import annotations

import base64
import json
import logging
import time

from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from pellucid.engine.constrain import Grammar, GrammarError
from pellucid.engine.results import GenerationStats
from pellucid.engine.sampling import TokenLogprobs
from pellucid.engine.scheduler import Update
from pellucid.server.backend import Backend, max_tokens_param, sampling_params
from pellucid.server.errors import ApiError, bad_request
from pellucid.server.schemas import (
    ChatCompletionRequest,
    ChatMessage,
    CompletionRequest,
    EmbeddingRequest,
    SamplingFields,
    parse,
)
from pellucid.server.streams import Completion, EventStream, Stream, sse, until_done
from pellucid.tools.turn import ToolsError, check_tools, parse_tool_choice, plan_turn

log = logging.getLogger("pellucid.server")

FINISH_REASONS = {"stop": "stop", "length": "length", "context": "length"}  # GenerationStats.stop_reason ->
MAX_EMBEDDING_INPUTS = 2048  # OpenAI's limit per request


def error_body(e: ApiError) -> dict:
    return {"error": {"message": e.message, "type": e.kind, "param": e.param, "code": e.code}}


# -- /v1/chat/completions -----------------------------------------------------------------------------------


async def chat_completions(request: Request) -> Response:
    backend: Backend = request.app.state.backend
    body = await parse(request, ChatCompletionRequest)
    model = backend.find(body.model, "chat")
    refuse_unsupported(body)
    if body.top_logprobs is not None and not body.logprobs:
        raise bad_request("top_logprobs needs logprobs: true", param="top_logprobs")
    plan = turn_plan(backend, body)
    for note in plan.notes:
        log.warning("%s: %s", _id(request), note)
    prompt_ids, stops, constraint = await backend.chat_turn(plan)
    params = sampling_params(**sampling_fields(body), logprobs=(body.top_logprobs or 0) if body.logprobs else None)
    max_tokens = max_tokens_param(
        body.max_completion_tokens if body.max_completion_tokens is not None else body.max_tokens,
        "max_completion_tokens" if body.max_completion_tokens is not None else "max_tokens",
    )
    stream = backend.generate(
        prompt_ids, params, max_tokens=max_tokens, stop=stop_list(body.stop) + stops, ignore_eos=body.ignore_eos,
        constraint=constraint, keep_special=plan.keep_special, watch=plan.call_watch(),
    )  # fmt: skip
    request.state.generation = stream
    head = {"id": f"chatcmpl-{_id(request)}", "created": int(time.time()), "model": model.name}
    tokenizer = backend.llm.tokenizer
    ids = prompt_ids if body.return_token_ids else None
    if body.stream:
        usage = body.stream_options is not None and body.stream_options.include_usage
        events = chat_events(stream, head, tokenizer, plan.reader(), include_usage=usage, prompt_ids=ids)
        return EventStream(events, stream)
    done = await until_done(request, stream)
    if done is None:
        return Response(status_code=499)  # nginx's "client closed request": nobody reads it
    check_error(done)
    reader = plan.reader()
    reader.feed(done.text)
    reader.finish()
    message = {"role": "assistant", "content": reader.text if reader.text or not reader.calls else None}
    if reader.reasoning:
        message["reasoning_content"] = reader.reasoning
    if reader.calls:
        message["tool_calls"] = [tool_call_json(call) for call in reader.calls]
    logprobs = {"content": [logprob_entry(tokenizer, lp) for lp in done.logprobs]} if body.logprobs else None
    finish = finish_of(done, token_ids=ids is not None, tool_calls=bool(reader.calls))
    choice = {"index": 0, "message": message, "logprobs": logprobs, **finish}
    return JSONResponse(
        {
            **head,
            "object": "chat.completion",
            "choices": [choice],
            "usage": usage_of(done.stats),
            "timings": timings_of(done.stats),
            **({"prompt_token_ids": ids} if ids is not None else {}),
        }
    )


async def chat_events(stream: Stream, head: dict, tokenizer, reader, *, include_usage: bool, prompt_ids=None):
    """The chat.completion.chunk events: the role first, then the answer as it comes (reasoning as
    `reasoning_content` deltas, each finished tool call as a `tool_calls` delta: its id, type and name, then
    its arguments, which is how the OpenAI SDK assembles them), then finish_reason. With `prompt_ids`
    (return_token_ids), the first carries them and each piece of text its token ids."""
    head = {**head, "object": "chat.completion.chunk"}
    extra = {"usage": None} if include_usage else {}
    with_ids = prompt_ids is not None

    def chunk(delta: dict, logprobs=None, fields: dict | None = None, **more) -> str:
        choice = {"index": 0, "delta": delta, "logprobs": logprobs, "finish_reason": None, **(fields or {})}
        return sse({**head, "choices": [choice], **extra, **more})

    def event_chunks(events, logprobs=None, fields=None):
        for event in events:
            if event.kind == "tool_call":
                index = calls_sent[0]
                calls_sent[0] += 1
                call = tool_call_json(event.call)
                head_delta = {"index": index, "id": call["id"], "type": "function",
                              "function": {"name": call["function"]["name"], "arguments": ""}}  # fmt: skip
                yield chunk({"tool_calls": [head_delta]})
                yield chunk(
                    {"tool_calls": [{"index": index, "function": {"arguments": call["function"]["arguments"]}}]}
                )
            elif event.kind == "reasoning":
                yield chunk({"reasoning_content": event.text})
            elif event.text:
                yield chunk({"content": event.text}, logprobs, fields)
                logprobs = fields = None
        if logprobs is not None or fields is not None:  # token ids / logprobs of text held back or parsed away
            yield chunk({"content": ""}, logprobs, fields)

    calls_sent = [0]
    yield chunk({"role": "assistant", "content": ""}, **({"prompt_token_ids": prompt_ids} if with_ids else {}))
    async for update in stream:
        if update.error:
            yield sse(error_body(ApiError(500, update.error, kind="server_error")))
            return
        lps = {"content": [logprob_entry(tokenizer, lp) for lp in update.logprobs]} if update.logprobs else None
        fields = {"token_ids": update.token_ids} if with_ids and update.token_ids else None
        for frame in event_chunks(reader.feed(update.text) if update.text else [], lps, fields):
            yield frame
        if update.final:
            for frame in event_chunks(reader.finish()):
                yield frame
            finish = finish_of(update, token_ids=False, tool_calls=bool(reader.calls))
            yield chunk({}, fields=finish, timings=timings_of(update.stats))
            if include_usage:
                yield sse({**head, "choices": [], "usage": usage_of(update.stats)})
    yield sse("[DONE]")


def tool_call_json(call) -> dict:
    """A parsed call as OpenAI writes it: arguments as a JSON string."""
    arguments = json.dumps(call.arguments, ensure_ascii=False)
    return {"id": call.id, "type": "function", "function": {"name": call.name, "arguments": arguments}}


def turn_plan(backend: Backend, body: ChatCompletionRequest):
    """The request's tools, tool choice and response format, checked, as a tools.turn.TurnPlan."""
    try:
        tools = check_tools(body.tools)
        plan = plan_turn(
            backend.llm.template_source,
            template_messages(body.messages),
            tools=tools,
            choice=parse_tool_choice(body.tool_choice, bool(tools)),
            parallel=body.parallel_tool_calls,
            response_grammar=response_grammar(body),
            tokenizer=backend.llm.tokenizer,
        )
    except ToolsError as e:
        raise bad_request(str(e), param=e.param) from None
    return plan


def response_grammar(body) -> Grammar | None:
    """The grammar that response_format (or llama-server's json_schema / grammar fields) asks for."""
    asked = []
    fmt = getattr(body, "response_format", None)
    try:
        if fmt is not None and fmt.type == "json_object":
            asked.append(("response_format", Grammar.any_json_object()))
        elif fmt is not None and fmt.type == "json_schema":
            if fmt.json_schema is None or fmt.json_schema.schema_ is None:
                raise ToolsError("response_format json_schema needs json_schema.schema", "response_format.json_schema")
            asked.append(("response_format.json_schema.schema", Grammar.json_schema(fmt.json_schema.schema_)))
        if body.json_schema is not None:
            asked.append(("json_schema", Grammar.json_schema(body.json_schema)))
        if body.grammar:
            asked.append(("grammar", Grammar.from_grammar_text(body.grammar)))
    except GrammarError as e:
        raise ToolsError(str(e), "response_format") from None
    if len(asked) > 1:
        raise ToolsError(f"give one of {', '.join(p for p, _ in asked)}, not several", asked[1][0])
    if not asked:
        return None
    param, grammar = asked[0]
    try:
        grammar.compile()  # a wrong schema is this request's 400, before anything runs
    except GrammarError as e:
        raise ToolsError(str(e), param) from None
    return grammar


def template_messages(messages: list[ChatMessage]) -> list[dict]:
    """OpenAI messages as chat templates want them: plain-text content, an assistant's tool_calls with their
    arguments as objects, a tool result with its call's id and function name. A result for a call no earlier
    assistant message made is a 400."""
    out, names = [], {}
    for i, message in enumerate(messages):
        entry = template_message(message, i)
        if message.tool_calls:
            calls = []
            for j, call in enumerate(message.tool_calls):
                calls.append({"id": call.id, "type": "function",
                              "function": {"name": call.function.name,
                                           "arguments": call_arguments(call.function.arguments,
                                                                       f"messages[{i}].tool_calls[{j}].function.arguments")}})  # fmt: skip
                names[call.id] = call.function.name
            entry["tool_calls"] = calls  # content stays "" beside them: several templates fail on a missing one
        if message.role == "tool":
            if message.tool_call_id is None:
                raise bad_request(f"messages[{i}] (tool) needs tool_call_id", param=f"messages[{i}].tool_call_id")
            if message.tool_call_id not in names:
                raise bad_request(
                    f"messages[{i}].tool_call_id {message.tool_call_id!r} answers no tool call of an earlier "
                    f"assistant message",
                    param=f"messages[{i}].tool_call_id",
                )
            entry["tool_call_id"] = message.tool_call_id
            entry["name"] = names[message.tool_call_id]
        if message.reasoning_content:
            entry["reasoning_content"] = message.reasoning_content
        out.append(entry)
    return out


def call_arguments(arguments: str | dict, param: str) -> dict:
    if isinstance(arguments, dict):
        return arguments
    try:
        value = json.loads(arguments or "{}")
    except json.JSONDecodeError as e:
        raise bad_request(f"{param} is not valid JSON: {e}", param=param) from None
    if not isinstance(value, dict):
        raise bad_request(f"{param} must be a JSON object", param=param)
    return value


def template_message(message: ChatMessage, index: int) -> dict:
    """An OpenAI message as the chat template wants it: role and plain-text content."""
    role = "system" if message.role == "developer" else message.role  # OpenAI's newer name for system
    content = message.content
    if isinstance(content, list):
        other = next((p.type for p in content if p.type != "text"), None)
        if other is not None:
            raise bad_request(
                f"messages[{index}].content has a {other!r} part; pellucid serves text models, so only 'text' "
                f"parts are supported",
                param=f"messages[{index}].content",
            )
        content = "\n".join(p.text or "" for p in content)
    return {"role": role, "content": content or ""}


# -- /v1/completions ----------------------------------------------------------------------------------------


async def completions(request: Request) -> Response:
    backend: Backend = request.app.state.backend
    body = await parse(request, CompletionRequest)
    model = backend.find(body.model, "chat")
    refuse_unsupported(body)
    if body.echo:
        raise bad_request("echo is not supported: the response has the completion only", param="echo")
    if body.suffix:
        raise bad_request("suffix (fill-in-the-middle) is not supported", param="suffix")
    if body.best_of not in (None, 1):
        raise bad_request("best_of > 1 is not supported: send separate requests", param="best_of")
    prompt = body.prompt
    if isinstance(prompt, list) and prompt and isinstance(prompt[0], str):
        if len(prompt) != 1:
            raise bad_request("one prompt per request: send the prompts as separate requests", param="prompt")
        prompt = prompt[0]
    if isinstance(prompt, str):
        prompt_ids = await backend.tokenize(prompt)
    else:
        prompt_ids = backend.check_token_ids(list(prompt), "prompt")
    if not prompt_ids:
        raise bad_request("prompt is empty", param="prompt")
    params = sampling_params(**sampling_fields(body), logprobs=body.logprobs)
    try:
        grammar = response_grammar(body)
    except ToolsError as e:
        raise bad_request(str(e), param=e.param) from None
    stream = backend.generate(
        prompt_ids,
        params,
        max_tokens=max_tokens_param(body.max_tokens, "max_tokens"),
        stop=stop_list(body.stop),
        ignore_eos=body.ignore_eos,
        prompt_param="prompt",
        constraint=await backend.constraint(grammar, "json_schema" if body.json_schema is not None else "grammar"),
    )
    request.state.generation = stream
    head = {"id": f"cmpl-{_id(request)}", "object": "text_completion", "created": int(time.time()), "model": model.name}
    tokenizer = backend.llm.tokenizer
    ids = prompt_ids if body.return_token_ids else None
    if body.stream:
        usage = body.stream_options is not None and body.stream_options.include_usage
        return EventStream(completion_events(stream, head, tokenizer, include_usage=usage, prompt_ids=ids), stream)
    done = await until_done(request, stream)
    if done is None:
        return Response(status_code=499)
    check_error(done)
    logprobs = completion_logprobs(tokenizer, done.logprobs) if body.logprobs is not None else None
    choice = {"index": 0, "text": done.text, "logprobs": logprobs, **finish_of(done, token_ids=ids is not None)}
    more = {"prompt_token_ids": ids} if ids is not None else {}
    return JSONResponse(
        {**head, "choices": [choice], "usage": usage_of(done.stats), "timings": timings_of(done.stats), **more}
    )


async def completion_events(stream: Stream, head: dict, tokenizer, *, include_usage: bool, prompt_ids=None):
    """The text_completion events: the text as it comes, finish_reason with the last. With `prompt_ids`
    (return_token_ids), the first event carries them and each event the token ids of its text."""
    extra = {"usage": None} if include_usage else {}
    with_ids = prompt_ids is not None
    more = {"prompt_token_ids": prompt_ids} if with_ids else {}  # on the first event only
    async for update in stream:
        if update.error:
            yield sse(error_body(ApiError(500, update.error, kind="server_error")))
            return
        if update.text or update.logprobs or update.final or (with_ids and update.token_ids):
            lps = completion_logprobs(tokenizer, update.logprobs) if update.logprobs else None
            choice = {"index": 0, "text": update.text, "logprobs": lps, "finish_reason": None}
            if with_ids:
                choice["token_ids"] = update.token_ids
            if update.final:
                choice |= finish_of(update, token_ids=False)
                more["timings"] = timings_of(update.stats)
            yield sse({**head, "choices": [choice], **extra, **more})
            more = {}
        if update.final and include_usage:
            yield sse({**head, "choices": [], "usage": usage_of(update.stats)})
    yield sse("[DONE]")


# -- /v1/models, /v1/embeddings -----------------------------------------------------------------------------


def models_list(backend: Backend, created: int) -> dict:
    data = [
        {
            "id": m.name,
            "object": "model",
            "created": created,
            "owned_by": "pellucid",
            "kind": m.kind,
            "context_length": m.context_length,
            "aliases": sorted(m.aliases),
        }  # fmt: skip
        for m in backend.models
    ]
    return {"object": "list", "data": data}


async def embeddings(request: Request) -> Response:
    backend: Backend = request.app.state.backend
    body = await parse(request, EmbeddingRequest)
    model = backend.find(body.model, "embedding")
    texts = [body.input] if isinstance(body.input, str) else body.input
    if not texts:
        raise bad_request("input is empty: give a string or a list of strings", param="input")
    if not all(isinstance(t, str) for t in texts):
        raise bad_request("input must be text (a string or a list of strings); token ids are not supported", "input")
    if len(texts) > MAX_EMBEDDING_INPUTS:
        raise bad_request(f"input has {len(texts):,} texts; the limit is {MAX_EMBEDDING_INPUTS:,}", "input")
    embedder = backend.embedder
    if body.dimensions is not None and body.dimensions != embedder.dim:
        raise bad_request(f"{model.name} makes {embedder.dim}-dimensional vectors; dimensions cannot change that",
                          param="dimensions")  # fmt: skip
    vectors, n_tokens = await backend.embed(texts)
    request.state.embedded_tokens = n_tokens
    data = [
        {"object": "embedding", "index": i, "embedding": encode_vector(v, body.encoding_format)}
        for i, v in enumerate(vectors)
    ]
    usage = {"prompt_tokens": n_tokens, "total_tokens": n_tokens}
    return JSONResponse({"object": "list", "data": data, "model": model.name, "usage": usage})


def encode_vector(vector, encoding_format: str):
    """A vector as a list of floats, or as OpenAI's base64 of little-endian float32 (what the SDK asks for)."""
    if encoding_format == "base64":
        return base64.b64encode(vector.float().numpy().astype("<f4").tobytes()).decode("ascii")
    return vector.tolist()


# -- shared pieces ------------------------------------------------------------------------------------------


def refuse_unsupported(body: SamplingFields) -> None:
    if body.n not in (None, 1):
        raise bad_request(f"n={body.n} is not supported: one choice per request; send {body.n} requests", "n")
    if body.logit_bias:
        raise bad_request("logit_bias is not supported", param="logit_bias")


def sampling_fields(body: SamplingFields) -> dict:
    names = ("temperature", "top_p", "top_k", "min_p", "typical_p", "repeat_penalty", "repeat_last_n",
             "presence_penalty", "frequency_penalty", "seed")  # fmt: skip
    return {name: getattr(body, name) for name in names}


def stop_list(stop: str | list[str] | None) -> list[str]:
    return [stop] if isinstance(stop, str) else list(stop or [])


def check_error(done: Completion) -> None:
    if done.error:
        raise ApiError(500, f"generation failed: {done.error}", kind="server_error")


def finish_reason(stats: GenerationStats | None) -> str | None:
    return FINISH_REASONS.get(stats.stop_reason) if stats is not None else None


def finish_of(done: Completion | Update, *, token_ids: bool, tool_calls: bool = False) -> dict:
    """A finished choice's fields: finish_reason ("tool_calls" when the answer called tools and ended by
    itself), vLLM's stop_reason (the stop string or the end token's id; None when max_tokens or the context
    ended it), and with `token_ids` the ids of the whole answer."""
    stop = done.stop_string if done.stop_string is not None else done.stop_token
    reason = finish_reason(done.stats)
    fields = {"finish_reason": "tool_calls" if tool_calls and reason == "stop" else reason, "stop_reason": stop}
    return fields | ({"token_ids": done.token_ids} if token_ids else {})


def usage_of(stats: GenerationStats) -> dict:
    return {
        "prompt_tokens": stats.prompt_tokens,
        "completion_tokens": stats.generated_tokens,
        "total_tokens": stats.prompt_tokens + stats.generated_tokens,
        "prompt_tokens_details": {"cached_tokens": stats.cached_tokens},
    }


def timings_of(stats: GenerationStats) -> dict:
    """llama-server's `timings`: what the prompt and the generation cost."""
    return {
        "cache_n": stats.cached_tokens,
        "prompt_n": stats.prompt_tokens - stats.cached_tokens,
        "prompt_ms": round(stats.prefill_s * 1000, 2),
        "prompt_per_second": round(stats.prefill_tok_s, 2),
        "predicted_n": stats.generated_tokens,
        "predicted_ms": round(stats.decode_s * 1000, 2),
        "predicted_per_second": round(stats.decode_tok_s, 2),
        "ttft_ms": round(stats.ttft_s * 1000, 2),
    }


def token_text(tokenizer, token_id: int) -> tuple[str, list[int]]:
    raw = tokenizer.token_bytes(token_id)
    return raw.decode("utf-8", errors="replace"), list(raw)


def logprob_entry(tokenizer, lp: TokenLogprobs) -> dict:
    """One token of chat logprobs.content: the token, its logprob, its bytes and the top alternatives."""
    text, raw = token_text(tokenizer, lp.token_id)
    top = []
    for token_id, logprob in lp.top:
        alt_text, alt_raw = token_text(tokenizer, token_id)
        top.append({"token": alt_text, "logprob": logprob, "bytes": alt_raw})
    return {"token": text, "logprob": lp.logprob, "bytes": raw, "top_logprobs": top}


def completion_logprobs(tokenizer, lps: list[TokenLogprobs]) -> dict:
    """The legacy completions shape: parallel lists of tokens, their logprobs and {token: logprob} tops."""
    tokens = [token_text(tokenizer, lp.token_id)[0] for lp in lps]
    offsets, at = [], 0
    for t in tokens:
        offsets.append(at)
        at += len(t)
    return {
        "tokens": tokens,
        "token_logprobs": [lp.logprob for lp in lps],
        "top_logprobs": [{token_text(tokenizer, i)[0]: v for i, v in lp.top} for lp in lps],
        "text_offset": offsets,
    }


def _id(request: Request) -> str:
    return request.scope.get("state", {}).get("request_id", "")
