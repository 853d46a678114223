"""Tool calling and structured output through `pellucid serve`, driven by the official openai and anthropic SDKs.

One real server for the module (SmolLM2, 2 slots of 4,096 tokens: tool prompts are long). SmolLM2's plain ChatML
template has no tool syntax, so the server uses the generic format (tools/generic.py): the tools listed in the
system prompt and `<tool_call>{...}</tool_call>` blocks, grammar-constrained whole when a call is required
(tools/turn.py). The oracle for a call is the tool's own JSON schema (`jsonschema`): a required call must always
parse and validate, whatever a 135M model makes of the question. What the model *says* is not checked beyond its
shape (a text answer, a call to the named tool): the point is the protocol.

Greedy sampling (temperature 0) throughout, so a streamed reply can be compared with the same request unstreamed.
"""

from __future__ import annotations

import json
import shlex
import subprocess
from pathlib import Path

import anthropic
import httpx
import jsonschema
import openai
import pydantic
import pytest
from openai.lib.streaming.chat import ChatCompletionStreamState

from server_helpers import HTTP_TIMEOUT_S, running_server

pytestmark = pytest.mark.slow

MODEL = "smollm2-135m"
GREEDY = {"temperature": 0}

# Strict function tools, as OpenAI's SDK wants them for `.stream()` to parse the arguments: every property
# required, no others allowed.
WEATHER = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "Get the current weather in a city.",
        "strict": True,
        "parameters": {
            "type": "object",
            "properties": {
                "city": {"type": "string", "description": "The city's name, e.g. Paris"},
                "unit": {"type": "string", "enum": ["celsius", "fahrenheit"]},
            },
            "required": ["city", "unit"],
            "additionalProperties": False,
        },
    },
}
TIME = {
    "type": "function",
    "function": {
        "name": "get_time",
        "description": "Get the current time in a time zone.",
        "strict": True,
        "parameters": {
            "type": "object",
            "properties": {"timezone": {"type": "string", "description": "An IANA time zone, e.g. Europe/Paris"}},
            "required": ["timezone"],
            "additionalProperties": False,
        },
    },
}
OPENAI_TOOLS = [WEATHER, TIME]
PARIS = [{"role": "user", "content": "What is the weather in Paris?"}]


def anthropic_tool(tool: dict) -> dict:
    f = tool["function"]
    return {"name": f["name"], "description": f["description"], "input_schema": f["parameters"]}


ANTHROPIC_TOOLS = [anthropic_tool(t) for t in OPENAI_TOOLS]
SCHEMAS = {t["function"]["name"]: t["function"]["parameters"] for t in OPENAI_TOOLS}


@pytest.fixture(scope="module")
def server(smollm2_path):
    with running_server(MODEL, "--parallel", "2", "--ctx", "4096") as server:
        yield server


@pytest.fixture(scope="module")
def oai(server):
    return openai.OpenAI(base_url=server.url + "/v1", api_key="unused", max_retries=0, timeout=HTTP_TIMEOUT_S)


@pytest.fixture(scope="module")
def claude(server):
    return anthropic.Anthropic(base_url=server.url, api_key="unused", max_retries=0, timeout=HTTP_TIMEOUT_S)


def valid_calls(message, schemas: dict = SCHEMAS) -> list[tuple[str, dict]]:
    """An OpenAI message's tool calls as (name, arguments), each checked against its tool's schema."""
    calls = []
    for call in message.tool_calls or []:
        assert call.type == "function" and call.id
        arguments = json.loads(call.function.arguments)
        jsonschema.validate(arguments, schemas[call.function.name])
        calls.append((call.function.name, arguments))
    return calls


def shape(completion) -> tuple:
    """What must agree between a streamed and an unstreamed chat completion (ids and timings differ)."""
    choice = completion.choices[0]
    calls = [(c.type, c.function.name, json.loads(c.function.arguments)) for c in choice.message.tool_calls or []]
    return choice.message.role, choice.message.content or None, calls, choice.finish_reason


def tool_result_messages(message, results: dict[str, str]) -> list[dict]:
    """The assistant's message as the next request carries it, and one `role: tool` message per call."""
    out = [message.model_dump(exclude_none=True, include={"role", "content", "tool_calls"})]
    out += [{"role": "tool", "tool_call_id": c.id, "content": results[c.function.name]} for c in message.tool_calls]
    return out


def final_completion(stream):
    """The SDK's assembled completion, also when max_tokens cut it short (the SDK's accumulator then raises,
    carrying the completion)."""
    try:
        return stream.get_final_completion()
    except openai.LengthFinishReasonError as e:
        return e.completion


WEATHER_RESULT = {"get_weather": json.dumps({"city": "Paris", "temperature": 18, "unit": "celsius", "sky": "sunny"})}


@pytest.fixture(scope="module")
def weather_call(oai):
    """One required call for the Paris question, unstreamed: the reference the streamed forms must equal."""
    return oai.chat.completions.create(
        model=MODEL, messages=PARIS, tools=OPENAI_TOOLS, tool_choice="required", parallel_tool_calls=False,
        max_tokens=80, **GREEDY,
    )  # fmt: skip


# -- OpenAI --------------------------------------------------------------------------------------------------


def test_openai_round_trip(oai, weather_call):
    choice = weather_call.choices[0]
    assert choice.finish_reason == "tool_calls"
    assert choice.message.content is None
    assert [name for name, _ in valid_calls(choice.message)] == ["get_weather"]
    # The call and its result fed back; with tool_choice "none" the model must answer in text.
    r = oai.chat.completions.create(
        model=MODEL, messages=PARIS + tool_result_messages(choice.message, WEATHER_RESULT), tools=OPENAI_TOOLS,
        tool_choice="none", max_tokens=24, **GREEDY,
    )  # fmt: skip
    answer = r.choices[0]
    assert answer.message.tool_calls is None and answer.message.content.strip()
    assert answer.finish_reason in ("stop", "length")


def test_openai_round_trip_streamed(oai, weather_call):
    request = dict(model=MODEL, messages=PARIS, tools=OPENAI_TOOLS, tool_choice="required", parallel_tool_calls=False,
                   max_tokens=80, **GREEDY)  # fmt: skip
    with oai.chat.completions.stream(**request) as stream:
        events = [event.type for event in stream]
        final = stream.get_final_completion()
    assert shape(final) == shape(weather_call)
    assert "tool_calls.function.arguments.done" in events
    (call,) = final.choices[0].message.tool_calls
    assert call.function.parsed_arguments == json.loads(call.function.arguments)  # the SDK parsed a strict tool's
    # Fed back with tool_choice "auto": the result is there, so the model answers.
    request["messages"] = PARIS + tool_result_messages(final.choices[0].message, WEATHER_RESULT)
    request.update(tool_choice="auto", max_tokens=24)
    del request["parallel_tool_calls"]
    with oai.chat.completions.stream(**request) as stream:
        answer = final_completion(stream).choices[0]
    assert answer.message.content.strip() and not answer.message.tool_calls
    assert answer.finish_reason in ("stop", "length")


def test_openai_tool_call_chunks(oai, weather_call):
    """The raw chunks: a call's first delta has its index, id, type and name; later ones only the index and
    pieces of the arguments. The SDK's own accumulator assembles them into the unstreamed reply."""
    chunks = list(
        oai.chat.completions.create(
            model=MODEL,
            messages=PARIS,
            tools=OPENAI_TOOLS,
            tool_choice="required",
            parallel_tool_calls=False,
            max_tokens=80,
            stream=True,
            **GREEDY,
        )  # fmt: skip
    )
    deltas = [c.choices[0].delta.tool_calls[0] for c in chunks if c.choices and c.choices[0].delta.tool_calls]
    assert all(len(c.choices[0].delta.tool_calls or []) <= 1 for c in chunks if c.choices)
    first, rest = deltas[0], deltas[1:]
    assert first.index == 0 and first.id.startswith("call_") and first.type == "function"
    assert first.function.name == "get_weather"
    assert rest and all(d.index == 0 and d.id is None and d.type is None and d.function.name is None for d in rest)
    arguments = (first.function.arguments or "") + "".join(d.function.arguments for d in rest)
    jsonschema.validate(json.loads(arguments), SCHEMAS["get_weather"])
    assert [c.choices[0].finish_reason for c in chunks if c.choices and c.choices[0].finish_reason] == ["tool_calls"]
    state = ChatCompletionStreamState()
    for chunk in chunks:
        state.handle_chunk(chunk)
    assert shape(state.get_final_completion()) == shape(weather_call)


def test_openai_named_tool(oai):
    """Asked the time but told to call get_weather: every call is to get_weather, never the other tool."""
    r = oai.chat.completions.create(
        model=MODEL, messages=[{"role": "user", "content": "What time is it in Tokyo?"}], tools=OPENAI_TOOLS,
        tool_choice={"type": "function", "function": {"name": "get_weather"}}, max_tokens=80, **GREEDY,
    )  # fmt: skip
    calls = valid_calls(r.choices[0].message)
    assert calls and {name for name, _ in calls} == {"get_weather"}


def test_openai_parallel_calls(oai):
    two_cities = [{"role": "user", "content": "What is the weather in Paris and in London?"}]
    request = dict(model=MODEL, messages=two_cities, tools=OPENAI_TOOLS, tool_choice="required", **GREEDY)
    several = oai.chat.completions.create(**request, parallel_tool_calls=True, max_tokens=120)
    calls = valid_calls(several.choices[0].message)
    assert len(calls) >= 2
    assert len({json.dumps(c, sort_keys=True) for c in calls}) == len(calls)  # a repeated call is dropped
    one = oai.chat.completions.create(**request, parallel_tool_calls=False, max_tokens=120)
    assert len(valid_calls(one.choices[0].message)) == 1
    assert one.choices[0].finish_reason == "tool_calls"
    # With one tool, SmolLM2 makes the same call again and again: the reply ends at the first repeat.
    r = oai.chat.completions.create(
        model=MODEL, messages=[{"role": "user", "content": "What time is it in Tokyo?"}], tools=[TIME],
        tool_choice="required", max_tokens=120, **GREEDY,
    )  # fmt: skip
    assert len(valid_calls(r.choices[0].message)) == 1 and r.choices[0].message.content is None
    assert r.choices[0].finish_reason == "tool_calls" and r.usage.completion_tokens < 120


def test_openai_no_parallel_calls_in_auto(oai):
    """tool_choice auto has no grammar holding the reply to one call: parallel_tool_calls false must still give
    at most one. Two earlier turns that each made two calls lead the model to make two again."""

    def calls(*cities):
        return {"role": "assistant", "content": None, "tool_calls": [
            {"id": f"call_{c}", "type": "function",
             "function": {"name": "get_weather", "arguments": json.dumps({"city": c, "unit": "celsius"})}}
            for c in cities]}  # fmt: skip

    messages = [
        {"role": "user", "content": "Weather in Rome and Oslo?"}, calls("Rome", "Oslo"),
        {"role": "user", "content": "Weather in Paris and London?"}, calls("Paris", "London"),
        {"role": "user", "content": "Weather in Berlin and Madrid?"},
    ]  # fmt: skip
    request = dict(model=MODEL, messages=messages, tools=OPENAI_TOOLS, tool_choice="auto", max_tokens=100, **GREEDY)
    several = oai.chat.completions.create(**request, parallel_tool_calls=True)
    assert len(valid_calls(several.choices[0].message)) >= 2  # what the model does when it may
    one = oai.chat.completions.create(**request, parallel_tool_calls=False)
    assert valid_calls(one.choices[0].message) == valid_calls(several.choices[0].message)[:1]
    assert one.choices[0].finish_reason == "tool_calls"


class City(pydantic.BaseModel):
    name: str
    country: str
    population: int = pydantic.Field(ge=0, le=99_999_999)  # bounded: unbounded, the model writes 1111... forever


def test_openai_response_format(oai):
    ask = [{"role": "user", "content": "Describe Paris as JSON."}]
    # json_schema, strict, through the SDK's own parser (which builds the schema from the pydantic model).
    r = oai.chat.completions.parse(model=MODEL, messages=ask, response_format=City, max_tokens=60, **GREEDY)
    assert r.choices[0].finish_reason == "stop"
    assert isinstance(r.choices[0].message.parsed, City)
    jsonschema.validate(json.loads(r.choices[0].message.content), City.model_json_schema())
    # json_object: any JSON object.
    r = oai.chat.completions.create(
        model=MODEL, messages=ask, response_format={"type": "json_object"}, max_tokens=60, **GREEDY
    )
    assert r.choices[0].finish_reason == "stop"
    assert isinstance(json.loads(r.choices[0].message.content), dict)


def test_openai_cut_off_call_is_text_not_an_error(oai):
    """A call cut off by max_tokens does not parse: the reply is the text so far, finish_reason "length"."""
    request = dict(model=MODEL, messages=PARIS, tools=OPENAI_TOOLS, tool_choice="required", max_tokens=8, **GREEDY)
    r = oai.chat.completions.create(**request)
    assert r.choices[0].finish_reason == "length" and r.choices[0].message.tool_calls is None
    assert r.choices[0].message.content.startswith("<tool_call>")
    with oai.chat.completions.stream(**request) as stream:
        assert shape(final_completion(stream)) == shape(r)
    # tool_choice auto, cut short whatever the model was writing.
    r = oai.chat.completions.create(**{**request, "tool_choice": "auto", "max_tokens": 5})
    assert r.choices[0].finish_reason == "length" and r.choices[0].message.content


# -- Anthropic -----------------------------------------------------------------------------------------------


def valid_uses(message, tools: list[dict] = ANTHROPIC_TOOLS) -> list[tuple[str, dict]]:
    """An Anthropic message's tool_use blocks as (name, input), each checked against its tool's input_schema."""
    schemas = {t["name"]: t["input_schema"] for t in tools}
    uses = []
    for block in message.content:
        if block.type == "tool_use":
            assert block.id.startswith("toolu_")
            jsonschema.validate(block.input, schemas[block.name])
            uses.append((block.name, block.input))
    return uses


def block_shape(message) -> tuple:
    """What must agree between a streamed and an unstreamed message."""
    blocks = [(b.type, b.text) if b.type == "text" else (b.type, b.name, b.input) for b in message.content]
    return message.role, blocks, message.stop_reason, message.stop_sequence, message.usage.output_tokens


SYSTEM = "You are a helpful assistant."


@pytest.mark.parametrize(
    "choice, names",
    [
        ({"type": "any", "disable_parallel_tool_use": True}, {"get_weather", "get_time"}),
        ({"type": "tool", "name": "get_time", "disable_parallel_tool_use": True}, {"get_time"}),
    ],
)
def test_anthropic_required_call(claude, choice, names):
    r = claude.messages.create(
        model=MODEL, system=SYSTEM, messages=PARIS, tools=ANTHROPIC_TOOLS, tool_choice=choice, max_tokens=80,
        extra_body=GREEDY,
    )  # fmt: skip
    uses = valid_uses(r)
    assert len(uses) == 1 and uses[0][0] in names
    assert r.stop_reason == "tool_use"
    assert [b.type for b in r.content] == ["tool_use"]


def test_anthropic_auto_and_none(claude):
    request = dict(model=MODEL, system=SYSTEM, messages=PARIS, tools=ANTHROPIC_TOOLS, max_tokens=40, extra_body=GREEDY)
    auto = claude.messages.create(**request, tool_choice={"type": "auto"})
    if valid_uses(auto):  # the model's choice; either way the reply must be consistent
        assert auto.stop_reason == "tool_use"
    else:
        assert [b.type for b in auto.content] == ["text"] and auto.content[0].text
        assert auto.stop_reason in ("end_turn", "max_tokens")
    none = claude.messages.create(**request, tool_choice={"type": "none"})
    assert [b.type for b in none.content] == ["text"] and none.content[0].text
    assert none.stop_reason in ("end_turn", "max_tokens")


def test_anthropic_streaming(claude, server):
    """`messages.stream` yields input_json_delta events and assembles the unstreamed message; `system` as a list
    of text blocks means the same as the string."""
    request = dict(model=MODEL, messages=PARIS, tools=ANTHROPIC_TOOLS, max_tokens=80, extra_body=GREEDY,
                   tool_choice={"type": "any", "disable_parallel_tool_use": True})  # fmt: skip
    whole = claude.messages.create(**request, system=SYSTEM)
    with claude.messages.stream(**request, system=[{"type": "text", "text": SYSTEM}]) as stream:
        events = list(stream)
        final = stream.get_final_message()
    assert block_shape(final) == block_shape(whole)
    assert final.stop_reason == "tool_use" and valid_uses(final)
    deltas = [e.delta for e in events if e.type == "content_block_delta"]
    assert deltas and all(d.type == "input_json_delta" for d in deltas)
    # The raw events, as Anthropic's API sends them for a tool_use block.
    body = {**{k: v for k, v in request.items() if k != "extra_body"}, **GREEDY, "system": SYSTEM, "stream": True}
    with (
        httpx.Client(base_url=server.url, timeout=HTTP_TIMEOUT_S) as http,
        http.stream("POST", "/v1/messages", json=body) as r,
    ):
        data = [json.loads(line[6:]) for line in r.iter_lines() if line.startswith("data: ")]
    types = [d["type"] for d in data]
    assert types[:3] == ["message_start", "content_block_start", "ping"] and types[-2:] == [
        "message_delta",
        "message_stop",
    ]
    start = data[1]["content_block"]
    assert start["type"] == "tool_use" and start["name"] == whole.content[0].name and start["input"] == {}
    pieces = [d["delta"] for d in data if d["type"] == "content_block_delta"]
    assert {p["type"] for p in pieces} == {"input_json_delta"}
    assert json.loads("".join(p["partial_json"] for p in pieces)) == whole.content[0].input
    assert data[-2]["delta"]["stop_reason"] == "tool_use"


def test_anthropic_cut_off_call_is_text_not_an_error(claude):
    r = claude.messages.create(
        model=MODEL, messages=PARIS, tools=ANTHROPIC_TOOLS, tool_choice={"type": "any"}, max_tokens=8,
        extra_body=GREEDY,
    )  # fmt: skip
    assert r.stop_reason == "max_tokens" and [b.type for b in r.content] == ["text"]
    assert r.content[0].text.startswith("<tool_call>")


# -- An agent loop, as a coding agent drives it ----------------------------------------------------------------

# Tool definitions shaped like Claude Code's: descriptions, required fields, no extra properties.
AGENT_TOOLS = [
    {
        "name": "read_file",
        "description": "Reads a file from the local filesystem and returns its contents. The path is relative to "
        "the working directory.",
        "input_schema": {
            "type": "object",
            "properties": {"path": {"type": "string", "description": "The path of the file to read"}},
            "required": ["path"],
            "additionalProperties": False,
            "$schema": "http://json-schema.org/draft-07/schema#",
        },
    },
    {
        "name": "list_directory",
        "description": "Lists the files and directories in a directory of the local filesystem.",
        "input_schema": {
            "type": "object",
            "properties": {"path": {"type": "string", "description": "The directory to list, e.g. ."}},
            "required": ["path"],
            "additionalProperties": False,
            "$schema": "http://json-schema.org/draft-07/schema#",
        },
    },
    {
        "name": "run_command",
        "description": "Executes a shell command in the working directory and returns its output. Only ls, cat, "
        "echo and wc are allowed.",
        "input_schema": {
            "type": "object",
            "properties": {
                "command": {"type": "string", "description": "The command to execute"},
                "timeout": {"type": "number", "description": "Optional timeout in seconds (max 10)"},
            },
            "required": ["command"],
            "additionalProperties": False,
            "$schema": "http://json-schema.org/draft-07/schema#",
        },
    },
]
ALLOWED_COMMANDS = {"ls", "cat", "echo", "wc"}
AGENT_SYSTEM = "You are a coding agent. Use the tools to look at the project in the working directory."
AGENT_TASK = "How many lines does main.py have? Look at the files first."


@pytest.fixture
def project(tmp_path) -> Path:
    (tmp_path / "main.py").write_text("def add(a, b):\n    return a + b\n\nprint(add(2, 3))\n")
    (tmp_path / "README.md").write_text("# demo\nA tiny project.\n")
    (tmp_path / "src").mkdir()
    (tmp_path / "src" / "util.py").write_text("X = 1\n")
    return tmp_path


def run_tool(root: Path, name: str, tool_input: dict) -> tuple[str, bool]:
    """Really runs a call in `root`: (the result's text, whether it is an error). Paths stay inside `root`;
    commands are limited to ALLOWED_COMMANDS, run without a shell."""

    def inside(path: str) -> Path:
        target = (root / path).resolve()
        if not target.is_relative_to(root.resolve()):
            raise ValueError(f"{path} is outside the working directory")
        return target

    try:
        if name == "read_file":
            return inside(tool_input["path"]).read_text()[:400], False
        if name == "list_directory":
            return "\n".join(sorted(p.name for p in inside(tool_input["path"]).iterdir())), False
        argv = shlex.split(tool_input["command"])
        if not argv or argv[0] not in ALLOWED_COMMANDS:
            return f"command not allowed: only {', '.join(sorted(ALLOWED_COMMANDS))}", True
        for arg in argv[1:]:
            if not arg.startswith("-"):
                inside(arg)
        timeout = min(float(tool_input.get("timeout") or 10), 10)
        done = subprocess.run(argv, cwd=root, capture_output=True, text=True, timeout=timeout)
        return (done.stdout + done.stderr)[:400] or f"(exit status {done.returncode})", done.returncode != 0
    except (OSError, ValueError, subprocess.TimeoutExpired) as e:
        return f"{type(e).__name__}: {e}", True


def agent_turn(claude, messages: list[dict], *, stream: bool, **request):
    # Claude Code's habits: the system prompt as text blocks, cache_control marks (which a local server ignores).
    system = [{"type": "text", "text": AGENT_SYSTEM, "cache_control": {"type": "ephemeral"}}]
    tools = AGENT_TOOLS[:-1] + [{**AGENT_TOOLS[-1], "cache_control": {"type": "ephemeral"}}]
    request = dict(model=MODEL, system=system, messages=messages, tools=tools, extra_body=GREEDY, **request)
    if not stream:
        return claude.messages.create(**request)
    with claude.messages.stream(**request) as s:
        events = {e.type for e in s}
        message = s.get_final_message()
    if any(b.type == "tool_use" for b in message.content):
        assert "input_json" in events  # the SDK's event for each input_json_delta
    return message


def run_agent(claude, root: Path, *, turns: int, stream: bool) -> tuple[list[dict], list[str]]:
    """`turns` turns with a required call (tool_choice any), each call run for real and its result sent back as a
    tool_result block; returns the conversation and the names of the tools called."""
    messages: list[dict] = [{"role": "user", "content": AGENT_TASK}]
    called = []
    for _ in range(turns):
        reply = agent_turn(claude, messages, stream=stream, tool_choice={"type": "any"}, max_tokens=100)
        uses = valid_uses(reply, AGENT_TOOLS)
        assert uses, reply
        assert reply.stop_reason in ("tool_use", "max_tokens")
        messages.append({"role": "assistant", "content": [b.model_dump(exclude_none=True) for b in reply.content]})
        results = []
        for block in reply.content:
            if block.type == "tool_use":
                text, is_error = run_tool(root, block.name, block.input)
                # Content as a string, or (as agents also send it) a list of text blocks.
                content = text if is_error else [{"type": "text", "text": text}]
                results.append(
                    {"type": "tool_result", "tool_use_id": block.id, "content": content, "is_error": is_error}
                )
                called.append(block.name)
        messages.append({"role": "user", "content": results})
    return messages, called


def test_agent_loop(claude, project):
    messages, called = run_agent(claude, project, turns=5, stream=False)
    assert len(called) >= 5
    final = agent_turn(claude, messages, stream=False, tool_choice={"type": "none"}, max_tokens=60)
    assert [b.type for b in final.content] == ["text"] and final.content[0].text.strip()
    assert final.stop_reason in ("end_turn", "max_tokens")


def test_agent_loop_streamed(claude, project):
    messages, called = run_agent(claude, project, turns=3, stream=True)
    assert len(called) >= 3
    final = agent_turn(claude, messages, stream=True, tool_choice={"type": "auto"}, max_tokens=60)
    assert final.stop_reason in ("end_turn", "max_tokens", "tool_use")
    assert final.content and (final.stop_reason == "tool_use" or final.content[0].text.strip())


def test_run_tool_refuses_what_is_not_allowed(project):
    """The test's own sandbox: what the model asks for outside it is an error result, not an action."""
    assert run_tool(project, "run_command", {"command": "rm main.py"})[1]
    assert run_tool(project, "run_command", {"command": "cat ../../etc/passwd"})[1]
    assert run_tool(project, "read_file", {"path": "/etc/passwd"})[1]
    assert run_tool(project, "run_command", {"command": "wc -l main.py"}) == ("4 main.py\n", False)
    assert (project / "main.py").exists()
