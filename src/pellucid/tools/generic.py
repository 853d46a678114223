"""Tools for a model whose chat template has no tool syntax (SmolLM2's plain ChatML, Gemma 2, Phi-3.5).

Such a template ignores `tools`, `tool_calls` and `role: tool`, so we say it all in plain messages:

- the system message gains `generic_tools_prompt(tools)`: each tool's name, description and JSON parameter
  schema, and the instruction to answer a call with `<tool_call>{"name": ..., "arguments": {...}}</tool_call>`,
  one block per call: Hermes's markers (the most common format in training data, so the likeliest to be
  followed), with instructions of our own. `GENERIC` in formats.py parses them back;
- an assistant message's `tool_calls` become those blocks in its text;
- a tool's result becomes a user message `<tool_response>\\n{"name": ..., "tool_call_id": ..., "content": ...}
  \\n</tool_response>` (consecutive results in one message), as Hermes templates write them.
"""

from __future__ import annotations

import json

from pellucid.tools.grammar import tool_functions

GENERIC_INSTRUCTIONS = """\
# Tools

You can call the following tools. Each is given as JSON: its name, what it does, and a JSON schema of its \
arguments.

<tools>
{tools}
</tools>

To call a tool, reply with a JSON object holding the tool's name and its arguments inside <tool_call></tool_call> \
tags, exactly like this:
<tool_call>
{{"name": "tool_name", "arguments": {{"argument_name": "value"}}}}
</tool_call>
Write one <tool_call> block per call; you may make several calls in one reply. The arguments must match the \
tool's schema. The results will come back in <tool_response></tool_response> tags. If no tool is needed, answer \
normally without any <tool_call> tags."""


def generic_tools_prompt(tools: list[dict]) -> str:
    """The system-prompt text that teaches a template-less model the tools and the <tool_call> syntax."""
    lines = []
    for function in tool_functions(tools):
        entry = {"name": function["name"]}
        if function.get("description"):
            entry["description"] = function["description"]
        entry["parameters"] = function.get("parameters") or {"type": "object", "properties": {}}
        lines.append(json.dumps(entry, ensure_ascii=False))
    return GENERIC_INSTRUCTIONS.format(tools="\n".join(lines))


def messages_for_generic(messages: list[dict], tools: list[dict] | None) -> list[dict]:
    """OpenAI-shaped messages folded into plain system/user/assistant text messages (copies; the input is not
    changed). Consecutive tool results become one user message, with the user's next message if one follows."""
    out: list[dict] = []
    if tools:
        prompt = generic_tools_prompt(tools)
        if messages and messages[0].get("role") == "system":
            system = _text(messages[0].get("content"))
            out.append({"role": "system", "content": f"{system}\n\n{prompt}" if system else prompt})
            messages = messages[1:]
        else:
            out.append({"role": "system", "content": prompt})
    names_by_id: dict[str, str] = {}
    for message in messages:
        role = message.get("role")
        if role == "assistant" and message.get("tool_calls"):
            blocks = [_call_block(call, names_by_id) for call in message["tool_calls"]]
            text = _text(message.get("content"))
            out.append({"role": "assistant", "content": "\n".join(([text] if text else []) + blocks)})
        elif role in ("tool", "ipython", "tool_results"):
            response = _response_block(message, names_by_id)
            if out and out[-1]["role"] == "user" and out[-1].get("_tool_results"):
                out[-1]["content"] += "\n" + response
            else:
                out.append({"role": "user", "content": response, "_tool_results": True})
        elif role == "user" and out and out[-1].get("_tool_results"):
            # the user's next words right after tool results: one user turn, as templates that insist on
            # alternating roles (Gemma 2, Mistral's) need
            out[-1]["content"] += "\n\n" + _text(message.get("content"))
            out[-1]["_tool_results"] = False
        else:
            out.append({k: v for k, v in message.items() if k != "tool_calls"})
    for message in out:
        message.pop("_tool_results", None)
    return out


def _call_block(call: dict, names_by_id: dict[str, str]) -> str:
    function = call.get("function", call)
    name = function.get("name")
    if not isinstance(name, str):
        raise ValueError(f"a tool call in the messages has no function name: {call!r:.120}")
    arguments = function.get("arguments")
    if isinstance(arguments, str):
        try:
            arguments = json.loads(arguments) if arguments.strip() else {}
        except json.JSONDecodeError as e:
            raise ValueError(
                f"the arguments of the call to {name!r} are not valid JSON ({e.msg}): {arguments!r:.120}"
            ) from None
    if call.get("id"):
        names_by_id[call["id"]] = name
    body = json.dumps({"name": name, "arguments": arguments or {}}, ensure_ascii=False)
    return f"<tool_call>\n{body}\n</tool_call>"


def _response_block(message: dict, names_by_id: dict[str, str]) -> str:
    call_id = message.get("tool_call_id")
    result = {}
    name = message.get("name") or names_by_id.get(call_id)
    if name:
        result["name"] = name
    if call_id:
        result["tool_call_id"] = call_id
    content = message.get("content")
    result["content"] = content if isinstance(content, (dict, list)) and not _is_parts(content) else _text(content)
    return f"<tool_response>\n{json.dumps(result, ensure_ascii=False)}\n</tool_response>"


def _is_parts(content) -> bool:
    return isinstance(content, list) and all(isinstance(p, dict) and "type" in p for p in content)


def _text(content) -> str:
    """A message's content as text: a string, or the text of its content parts."""
    if content is None:
        return ""
    if isinstance(content, str):
        return content
    if _is_parts(content):
        return "\n".join(p.get("text", "") for p in content if p.get("type") == "text")
    return json.dumps(content, ensure_ascii=False)
