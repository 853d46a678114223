"""Request bodies: what each endpoint accepts (pydantic models) and `parse()`, which reads one or says why not.

Unknown fields are ignored, as OpenAI's and Anthropic's servers and llama-server do, so clients that send
extra options keep working. Wrong types are a 400 that names the field ("temperature: Input should be a
valid number"); malformed JSON is a 400 that says where it broke. Fields whose meaning pellucid does not
implement (n > 1, logit_bias, echo) are accepted by the schema and refused by the
endpoint with a message, never silently ignored.

Beyond OpenAI's fields, the chat and completion bodies take llama-server's sampling extensions (top_k,
min_p, typical_p, repeat_penalty, repeat_last_n, ignore_eos) and vLLM's `return_token_ids` (the prompt's and
the answer's token ids in the response, which `pellucid run --json` prints when a server answers it).
"""

from __future__ import annotations

import json
from typing import Any, Literal, TypeVar

from pydantic import BaseModel, ConfigDict, Field, ValidationError
from starlette.requests import Request

from pellucid.server.errors import ApiError, bad_request

MAX_BODY_BYTES = 32 * 1024 * 1024  # 32 MiB: ~8M tokens of text, far beyond any context we serve


class _Body(BaseModel):
    model_config = ConfigDict(extra="ignore")


# -- OpenAI ------------------------------------------------------------------------------------------------


class ContentPart(_Body):
    type: str
    text: str | None = None


class FunctionCall(_Body):
    name: str
    arguments: str | dict = "{}"  # OpenAI sends a JSON string; some clients send the object


class ToolCallItem(_Body):
    id: str
    type: Literal["function"] = "function"
    function: FunctionCall


class ChatMessage(_Body):
    role: Literal["system", "developer", "user", "assistant", "tool"]
    content: str | list[ContentPart] | None = None
    tool_calls: list[ToolCallItem] | None = None  # an assistant's earlier calls
    tool_call_id: str | None = None  # a tool result: which call it answers
    name: str | None = None
    reasoning_content: str | None = None  # an assistant's earlier reasoning (vLLM / DeepSeek field)


class StreamOptions(_Body):
    include_usage: bool = False


class JsonSchemaFormat(_Body):
    name: str | None = None
    description: str | None = None
    schema_: dict | bool | None = Field(default=None, alias="schema")
    strict: bool | None = None


class ResponseFormat(_Body):
    type: Literal["text", "json_object", "json_schema"] = "text"
    json_schema: JsonSchemaFormat | None = None


class SamplingFields(_Body):
    """What /v1/chat/completions and /v1/completions share: the model, sampling, stopping, streaming."""

    model: str | None = None
    temperature: float | None = None
    top_p: float | None = None
    top_k: int | None = None
    min_p: float | None = None
    typical_p: float | None = None
    repeat_penalty: float | None = None
    repeat_last_n: int | None = None
    presence_penalty: float | None = None
    frequency_penalty: float | None = None
    seed: int | None = None
    max_tokens: int | None = None
    stop: str | list[str] | None = None
    stream: bool = False
    stream_options: StreamOptions | None = None
    n: int | None = None
    logit_bias: dict[str, float] | None = None
    ignore_eos: bool = False  # llama-server's: generate past end-of-text tokens (until max_tokens or the context)
    return_token_ids: bool = False  # vLLM's: prompt_token_ids on the response, token_ids on each choice/delta


class ChatCompletionRequest(SamplingFields):
    messages: list[ChatMessage] = Field(min_length=1)
    max_completion_tokens: int | None = None  # OpenAI's newer name for max_tokens; wins when both are set
    logprobs: bool = False
    top_logprobs: int | None = Field(default=None, ge=0, le=20)
    response_format: ResponseFormat | None = None
    tools: list[Any] | None = None
    tool_choice: str | dict | None = None
    parallel_tool_calls: bool = True
    json_schema: dict | None = None  # llama-server's: constrain the reply to this JSON schema
    grammar: str | None = None  # llama-server's: a GBNF (or Lark) grammar for the reply


class CompletionRequest(SamplingFields):
    prompt: str | list[str] | list[int]
    logprobs: int | None = Field(default=None, ge=0, le=20)
    echo: bool = False
    suffix: str | None = None
    best_of: int | None = None
    json_schema: dict | None = None  # llama-server's: constrain the completion to this JSON schema
    grammar: str | None = None  # llama-server's: a GBNF (or Lark) grammar for the completion


class EmbeddingRequest(_Body):
    input: str | list[str] | list[int] | list[list[int]]
    model: str | None = None
    encoding_format: Literal["float", "base64"] = "float"
    dimensions: int | None = None


# -- Anthropic ---------------------------------------------------------------------------------------------


class AnthropicBlock(_Body):
    type: str
    text: str | None = None
    id: str | None = None  # tool_use
    name: str | None = None  # tool_use
    input: dict | None = None  # tool_use
    tool_use_id: str | None = None  # tool_result
    content: str | list[AnthropicBlock] | None = None  # tool_result
    is_error: bool | None = None  # tool_result
    thinking: str | None = None  # thinking


class AnthropicMessage(_Body):
    role: Literal["user", "assistant", "system"]  # Claude Code sends system messages among the others
    content: str | list[AnthropicBlock]


class AnthropicToolChoice(_Body):
    type: Literal["auto", "any", "tool", "none"] = "auto"
    name: str | None = None
    disable_parallel_tool_use: bool = False


class MessagesRequest(_Body):
    model: str | None = None
    messages: list[AnthropicMessage] = Field(min_length=1)
    system: str | list[AnthropicBlock] | None = None
    max_tokens: int = Field(ge=1)
    stop_sequences: list[str] | None = None
    temperature: float | None = None
    top_p: float | None = None
    top_k: int | None = None
    stream: bool = False
    tools: list[Any] | None = None
    tool_choice: AnthropicToolChoice | None = None


class CountTokensRequest(_Body):
    model: str | None = None
    messages: list[AnthropicMessage] = Field(min_length=1)
    system: str | list[AnthropicBlock] | None = None
    tools: list[Any] | None = None


# -- reading a body ------------------------------------------------------------------------------------------

Body = TypeVar("Body", bound=BaseModel)


async def parse(request: Request, schema: type[Body]) -> Body:
    """The request's JSON body as `schema`, or a 400 that says what is wrong and where."""
    raw = await request.body()
    if len(raw) > MAX_BODY_BYTES:
        raise ApiError(413, f"the request body is {len(raw):,} bytes; the limit is {MAX_BODY_BYTES:,}")
    try:
        data = json.loads(raw)
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise bad_request(f"the request body is not valid JSON: {e}") from None
    if not isinstance(data, dict):
        raise bad_request(f"the request body must be a JSON object, got {type(data).__name__}")
    try:
        return schema.model_validate(data)
    except ValidationError as e:
        raise validation_error(e) from None


def validation_error(e: ValidationError) -> ApiError:
    """The first problem pydantic found, as "field.path: what is wrong (got ...)"."""
    errors = e.errors()
    first = errors[0]
    param = field_path(first["loc"])
    # A union field (stop: str | list[str]) fails once per branch; say which types would have done.
    branches = [tag for err in errors if field_path(err["loc"]) == param for tag in err["loc"] if _is_type_tag(tag)]
    what = f"expected {' or '.join(dict.fromkeys(branches))}" if len(branches) > 1 else first["msg"]
    got = "" if first["type"] == "missing" else f" (got {json.dumps(first.get('input'), default=str)[:80]})"
    others = {field_path(err["loc"]) for err in errors} - {param}
    more = f"; also wrong: {', '.join(sorted(others))}" if others else ""
    return bad_request(f"{param}: {what}{got}{more}", param=param)


_TYPE_TAGS = {"str", "int", "float", "bool", "dict", "list"}


def _is_type_tag(part) -> bool:
    """pydantic names the branch of a union in the error location: 'str', 'list[ContentPart]'."""
    return isinstance(part, str) and ("[" in part or part in _TYPE_TAGS)


def field_path(loc: tuple) -> str:
    """('messages', 0, 'content', 'str') -> 'messages[0].content' (union branch names are dropped)."""
    out = ""
    for part in loc:
        if isinstance(part, int):
            out += f"[{part}]"
        elif not _is_type_tag(part):
            out += f".{part}" if out else str(part)
    return out or "body"
