"""Grammars that make a reply a valid tool call: llguidance Lark text, with each call's JSON an inline
`%json { schema }` whose `anyOf` ties a tool's name to its own parameters' schema.

Two shapes, for the engine's two uses:
- `call_grammar`: the whole reply is one call (or, `parallel`, one or more), for `tool_choice: required` or a
  named tool;
- `call_body_grammar`: what follows the format's trigger (`<tool_call>`), for `tool_choice: auto`, where the
  model writes freely until it writes the trigger and the call's body is constrained from there.

A call's arguments may hold only the properties their schema lists, unless it says otherwise (`closed`).

The JSON is written the one way `json.dumps` writes it (`{"a": 1, "b": [2, 3]}`), as the chat templates
render calls in the prompt: a small model given free whitespace can wander into newlines forever.

A marker that is a special token in the model's vocabulary (Mistral's `[TOOL_CALLS]` and `[ARGS]`) cannot be
written as text in a grammar, which matches the bytes of ordinary tokens: pass `token_ids` ({"[TOOL_CALLS]": 9,
...}) and it is written as that token; harmony's markers (<|channel|>, <|message|>...) the same. DeepSeek and Kimi
raise NotImplementedError; the engine then generates unconstrained and parses. Granite and Kimi write their
markers the same way.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from pellucid.tools.formats import ToolFormat

# llguidance's JSON options (the "x-guidance" key of a schema): json.dumps's separators, no free whitespace.
# lenient: a tool's keywords that cannot be enforced were accepted (with a warning) by tools.turn.check_tools.
JSON_STYLE = {"whitespace_flexible": False, "item_separator": ", ", "key_separator": ": ", "lenient": True}
ANY_OBJECT = {"type": "object"}


def tool_functions(tools: list[dict], named: str | None = None) -> list[dict]:
    """The `function` parts of OpenAI-shaped tools ({"type": "function", "function": {...}}; a bare function
    dict is accepted too), only `named` if given."""
    if not tools:
        raise ValueError("a tool-call grammar needs at least one tool")
    functions = []
    for i, tool in enumerate(tools):
        function = tool.get("function", tool) if isinstance(tool, dict) else None
        if not isinstance(function, dict) or not isinstance(function.get("name"), str):
            raise ValueError(
                f"tools[{i}] has no function name; expected {{'type': 'function', 'function': {{'name': ...}}}}"
            )
        functions.append(function)
    if named is not None:
        functions = [f for f in functions if f["name"] == named]
        if not functions:
            have = ", ".join(f["name"] for f in tool_functions(tools))
            raise ValueError(f"tool_choice names {named!r}, which is not one of the tools ({have})")
    return functions


def call_schema(functions: list[dict], arguments_key: str = "arguments") -> dict:
    """JSON schema of one call object: {"name": <a tool's name>, <arguments_key>: <that tool's parameters>}."""
    choices = [
        {
            "type": "object",
            "properties": {"name": {"const": f["name"]}, arguments_key: closed(f.get("parameters") or ANY_OBJECT)},
            "required": ["name", arguments_key],
            "additionalProperties": False,
        }
        for f in functions
    ]
    schema = choices[0] if len(choices) == 1 else {"anyOf": choices}
    return {**schema, "x-guidance": JSON_STYLE}


def _json_rule(schema: dict) -> str:
    return "%json " + json.dumps(schema, ensure_ascii=False)


def call_grammar(
    fmt: ToolFormat,
    tools: list[dict],
    *,
    parallel: bool,
    named: str | None = None,
    token_ids: Mapping[str, int] | None = None,
) -> str:
    functions = tool_functions(tools, named)
    repeat = "+" if parallel else ""
    if fmt.name in ("hermes", "generic"):
        call = f'"{fmt.start}\\n" call_json "\\n{fmt.end}"'
        rules = [f"call_json: {_json_rule(call_schema(functions))}"]
        repeat = ' ("\\n" call)*' if parallel else ""
    elif fmt.name == "llama3":
        call = "call_json"  # the template's own words: {"name": function name, "parameters": dictionary ...}
        rules = [f"call_json: {_json_rule(call_schema(functions, 'parameters'))}"]
        repeat = ' ("\\n" call)*' if parallel else ""
    elif fmt.name == "mistral" and fmt.variant == "list":
        # [TOOL_CALLS][{"name": ..., "arguments": {...}}, ...]: parallel calls share one list
        more = ' (", " call_json)*' if parallel else ""
        call = f'{_marker(fmt.start, token_ids)} "[" call_json{more} "]"'
        rules = [f"call_json: {_json_rule(call_schema(functions))}"]
        repeat = ""
    elif fmt.name == "mistral":
        # [TOOL_CALLS]NAME[ARGS]{...} per call; one alternative per tool ties the name to its arguments
        args = _marker("[ARGS]", token_ids)
        names = " | ".join(f"tool_{i}" for i in range(len(functions)))
        call = f"{_marker(fmt.start, token_ids)} ({names})"
        rules = [
            f"tool_{i}: {json.dumps(f['name'])} {args} {_json_rule(_arguments_schema(f))}"
            for i, f in enumerate(functions)
        ]
    elif fmt.name == "granite":
        # <|tool_call|>[{"name": ..., "arguments": {...}}, ...]: Mistral's list after Granite's marker
        more = ' (", " call_json)*' if parallel else ""
        call = f'{_marker(fmt.start, token_ids)} "[" call_json{more} "]"'
        rules = [f"call_json: {_json_rule(call_schema(functions))}"]
        repeat = ""
    elif fmt.name == "kimi":
        # <|tool_calls_section_begin|><|tool_call_begin|>functions.NAME:0<|tool_call_argument_begin|>{...}
        # <|tool_call_end|>...<|tool_calls_section_end|>; the index after the name counts the calls
        names = " | ".join(f"tool_{i}" for i in range(len(functions)))
        one = f'{_marker("<|tool_call_begin|>", token_ids)} "functions." ({names}) {_marker("<|tool_call_end|>", token_ids)}'
        calls = "kimi_call+" if parallel else "kimi_call"
        call = f"{_marker(fmt.start, token_ids)} {calls} {_marker(fmt.end, token_ids)}"
        args = _marker("<|tool_call_argument_begin|>", token_ids)
        rules = [f"kimi_call: {one}", "INDEX: /:[0-9]+/"]
        rules += [
            f"tool_{i}: {json.dumps(f['name'])} INDEX {args} {_json_rule(_arguments_schema(f))}"
            for i, f in enumerate(functions)
        ]
        repeat = ""
    elif fmt.name == "harmony":
        return _harmony_grammar(functions, token_ids)
    else:
        raise NotImplementedError(_not_implemented(fmt))
    return "\n".join([f"start: call{repeat}", f"call: {call}", *rules]) + "\n"


def _harmony_grammar(functions: list[dict], token_ids: Mapping[str, int] | None) -> str:
    """GPT-OSS's harmony: the generation prompt ends with `<|start|>assistant`; the reply may think first in
    the analysis channel, then calls a function in the commentary channel:
    `<|channel|>analysis<|message|>...<|end|><|start|>assistant<|channel|>commentary to=functions.NAME
    <|constrain|>json<|message|>{...}`, ended by `<|call|>` (an end-of-generation token, so the grammar stops
    before it and the end is the model's). Harmony makes one call per message: `parallel` changes nothing."""

    def m(marker: str) -> str:
        return _marker(marker, token_ids)

    tools = " | ".join(f"tool_{i}" for i in range(len(functions)))
    rules = [
        f'start: analysis? {m("<|channel|>")} "commentary to=functions." ({tools})',
        f'analysis: {m("<|channel|>")} "analysis" {m("<|message|>")} THOUGHT {m("<|end|>")} {m("<|start|>")} "assistant"',
        # the thinking: any text where the markers are special tokens (text never spells one), else up to a "<"
        "THOUGHT: /(.|\\n)*/" if token_ids and "<|end|>" in token_ids else "THOUGHT: /[^<]*/",
    ]
    for i, f in enumerate(functions):
        head = json.dumps(f["name"] + " ")
        rules.append(
            f'tool_{i}: {head} {m("<|constrain|>")} "json" {m("<|message|>")} {_json_rule(_arguments_schema(f))}'
        )
    return "\n".join(rules) + "\n"


def _arguments_schema(function: dict) -> dict:
    return {**closed(function.get("parameters") or ANY_OBJECT), "x-guidance": JSON_STYLE}


def closed(schema):
    """A tool's parameter schema with `additionalProperties: false` on every object that lists its properties
    and says nothing about others (a copy). JSON Schema allows extra properties by default, and a model
    given that freedom inside a call keeps inventing arguments until max_tokens; a tool takes the arguments
    it declares (llama.cpp's grammars close such objects too). An explicit `additionalProperties` is kept."""
    if isinstance(schema, list):
        return [closed(item) for item in schema]
    if not isinstance(schema, dict):
        return schema
    out = {}
    for key, value in schema.items():
        if key in ("properties", "$defs", "definitions", "patternProperties") and isinstance(value, dict):
            out[key] = {name: closed(sub) for name, sub in value.items()}  # a mapping of names to schemas
        elif key in ("const", "enum", "default", "examples"):
            out[key] = value  # data, not schemas
        else:
            out[key] = closed(value)
    if "properties" in schema and "additionalProperties" not in schema and "patternProperties" not in schema:
        out["additionalProperties"] = False
    return out


def _marker(text: str, token_ids: Mapping[str, int] | None) -> str:
    """A marker in a grammar: the special token it is in the model's vocabulary (`<[id]>`), else its text."""
    if token_ids and text in token_ids:
        return f"<[{int(token_ids[text])}]>"
    return json.dumps(text)


def call_body_grammar(fmt: ToolFormat, tools: list[dict]) -> str:
    if fmt.name not in ("hermes", "generic"):
        raise NotImplementedError(_not_implemented(fmt))
    functions = tool_functions(tools)
    return f'start: "\\n" call_json "\\n{fmt.end}"\ncall_json: {_json_rule(call_schema(functions))}\n'


def _not_implemented(fmt: ToolFormat) -> str:
    return (
        f"no tool-call grammar for the {fmt.name!r} format yet (grammars exist for hermes, generic, llama3, mistral, granite, kimi and harmony); "
        "generate unconstrained and parse the calls from the text"
    )
