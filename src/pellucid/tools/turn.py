"""One chat turn with tools: what goes into the prompt, which grammar holds the reply, how the reply is read.

Both HTTP APIs and `LLM.chat(tools=...)` take the same steps, so they live here once:

1. `plan_turn` looks at the model's chat template. A template that places `tools` itself (Qwen, Llama 3.x,
   Mistral, Hermes, GPT-OSS, DeepSeek...) gets the tools and the OpenAI-shaped history (assistant
   `tool_calls`, `role: tool` results) as they are; one without tool syntax (the default model's plain
   ChatML) gets the generic format: a system prompt listing the tools and asking for
   `<tool_call>{"name": ..., "arguments": {...}}</tool_call>`, with the history folded into plain text
   (tools/formats.py, `generic_tools_prompt`).
2. The tool choice picks the grammar: `auto` lets the model write freely and constrains a call only once
   the model opens one (a `TriggeredConstraint` on the format's opening marker: the call then always
   parses and matches a tool's parameters); `required` (Anthropic's `any`) and a named tool constrain the
   whole reply to one call (or several with parallel calls); `none` renders no tools and parses no calls.
3. `TurnReader` turns the streamed text into events: answer text, reasoning (`<think>`, harmony's
   analysis channel), and finished tool calls (a malformed call stays text, with a logged warning).
"""

from __future__ import annotations

import hashlib
import json
import logging
from dataclasses import dataclass, field

from pellucid.engine.constrain import Constraint, Grammar, GrammarError, TriggeredConstraint
from pellucid.errors import PellucidError
from pellucid.tools.calls import Event, ToolCall
from pellucid.tools.formats import (
    GENERIC,
    ToolFormat,
    detect_format,
    generation_prompt_opens_thinking,
    template_supports_tools,
)
from pellucid.tools.generic import messages_for_generic

log = logging.getLogger("pellucid.tools")


class ToolsError(PellucidError, ValueError):
    """A tool definition or tool choice the request got wrong; `param` names the field."""

    def __init__(self, message: str, param: str):
        super().__init__(message)
        self.param = param


@dataclass(frozen=True)
class ToolChoice:
    """ "auto", "none", "required", or one named function (mode "named")."""

    mode: str = "auto"
    name: str | None = None


def parse_tool_choice(value, has_tools: bool, where: str = "tool_choice") -> ToolChoice:
    """A tool choice as OpenAI writes it ("auto" | "none" | "required" | {"type": "function", "function":
    {"name": ...}}), or as Anthropic does ({"type": "auto" | "any" | "tool" | "none", "name": ...}; "any" is
    "required"). None: "auto" when there are tools."""
    if value is None:
        return ToolChoice("auto" if has_tools else "none")
    if isinstance(value, ToolChoice):
        return value
    if value in ("auto", "none", "required", "any"):
        return ToolChoice("required" if value == "any" else value)
    if isinstance(value, dict):
        kind = value.get("type", "function")
        if kind == "function" and isinstance((value.get("function") or {}).get("name"), str):
            return ToolChoice("named", value["function"]["name"])
        if kind == "tool" and isinstance(value.get("name"), str):
            return ToolChoice("named", value["name"])
        if kind in ("auto", "none", "any"):
            return ToolChoice("required" if kind == "any" else kind)
    raise ToolsError(
        f"{where} must be 'auto', 'none', 'required' or {{'type': 'function', 'function': {{'name': ...}}}}, "
        f"got {json.dumps(value, default=str)[:80]}",
        where,
    )


def check_tools(tools: list | None, where: str = "tools") -> list[dict]:
    """OpenAI-shaped tools ({"type": "function", "function": {"name", "description", "parameters"}}), checked:
    each has a name, and its parameters are a JSON schema our grammars can enforce."""
    out = []
    for i, tool in enumerate(tools or []):
        at = f"{where}[{i}]"
        if not isinstance(tool, dict):
            raise ToolsError(f"{at} must be an object like {{'type': 'function', 'function': {{...}}}}", at)
        if (
            "function" not in tool and "name" in tool
        ):  # the bare function ({"name", "parameters"}), as Python users write it
            tool = {"type": "function", "function": tool}
        if tool.get("type", "function") != "function":
            raise ToolsError(f"{at}.type {tool.get('type')!r} is not supported; only 'function' tools", f"{at}.type")
        function = tool.get("function")
        if not isinstance(function, dict):
            raise ToolsError(f"{at}.function is missing: give {{'name': ..., 'parameters': {{...}}}}", f"{at}.function")
        name = function.get("name")
        if not isinstance(name, str) or not name.strip():
            raise ToolsError(f"{at}.function.name is missing: every tool needs a name", f"{at}.function.name")
        parameters = function.get("parameters", {"type": "object"})
        try:
            Grammar.json_schema(parameters).compile()
        except GrammarError as e:
            # Agents' real tools use keywords no grammar library enforces (Claude Code's propertyNames): a call
            # is then held to the rest of its schema, said in the log, rather than the agent refused. A
            # response_format schema has no such leeway: there the client asked for the guarantee.
            try:
                Grammar.json_schema(parameters, lenient=True).compile()
            except GrammarError:
                raise ToolsError(f"{at}.function.parameters: {e}", f"{at}.function.parameters") from None
            log.warning("%s.function.parameters (%s): %s; calls are held to the rest of the schema", at, name, e)
        out.append({"type": "function", "function": {**function, "parameters": parameters}})
    names = [t["function"]["name"] for t in out]
    duplicate = next((n for n in names if names.count(n) > 1), None)
    if duplicate is not None:
        raise ToolsError(f"two tools are named {duplicate!r}; tool names must be unique", where)
    return out


def check_choice(choice: ToolChoice, tools: list[dict], where: str = "tool_choice") -> ToolChoice:
    names = {t["function"]["name"] for t in tools}
    if choice.mode in ("required", "named") and not tools:
        raise ToolsError(f"{where} asks for a tool call, but the request has no tools", where)
    if choice.mode == "named" and choice.name not in names:
        raise ToolsError(f"{where} names {choice.name!r}, which is not among the tools ({', '.join(sorted(names))})",
                         where)  # fmt: skip
    return choice


@dataclass
class TurnPlan:
    """What a chat turn with tools needs: the rendering inputs, the grammar, the reader's settings."""

    messages: list[dict]  # what the template renders
    template_tools: list[dict] | None  # what the template's `tools` variable gets
    tools: list[dict]  # the request's tools (checked)
    choice: ToolChoice
    format: ToolFormat
    parallel: bool = True
    grammar: str | Grammar | None = None  # a whole-reply grammar (a required call, or response_format)
    trigger: str | None = None  # auto: the marker that starts a constrained call ...
    body_grammar: str | None = None  # ... and the grammar of what follows it
    keep_special: bool = False  # the format's markers are special tokens: keep them in the text to parse
    starts_in_thinking: bool = False  # set by `after_render` from the rendered prompt
    notes: list[str] = field(default_factory=list)  # what fell back, for the log

    @property
    def calls_possible(self) -> bool:
        return bool(self.tools) and self.choice.mode != "none"

    def after_render(self, prompt_text: str) -> None:
        self.starts_in_thinking = generation_prompt_opens_thinking(prompt_text)

    def constraint(self, tokenizer):
        """A fresh per-request constraint (or None)."""
        if self.grammar is not None:
            return Constraint(self.grammar, tokenizer)
        if self.trigger and self.body_grammar:
            return TriggeredConstraint(self.trigger, self.body_grammar, tokenizer)
        return None

    def reader(self) -> TurnReader:
        return TurnReader(self)

    def call_watch(self):
        """For the scheduler (Request.watch): a function of each new piece of text that says when the reply
        has started repeating a call it already made, to end it there. Small models, once they may make
        several calls, tend to make the same one again and again until max_tokens; an identical call in the
        same reply is never useful (the reader drops it). Without parallel calls, a second call ends it the
        same way (an `auto` reply is not held to one call by a grammar). None when no calls are possible."""
        if not self.calls_possible:
            return None
        reader = TurnReader(self)

        def watch(text: str) -> bool:
            reader.feed(text)
            return reader.extra_call

        return watch


def plan_turn(
    template_source: str | None,
    messages: list[dict],
    *,
    tools: list[dict] | None = None,
    choice: ToolChoice | None = None,
    parallel: bool = True,
    response_grammar: Grammar | None = None,
    tokenizer=None,
) -> TurnPlan:
    """The plan for one turn (see the module docstring). `tools` must have passed `check_tools`. With the
    model's `tokenizer`, a grammar asks for a marker that is a special token ([TOOL_CALLS]) as that token."""
    tools = list(tools or [])
    choice = check_choice(choice or ToolChoice(), tools)
    # A template whose tool syntax we cannot read (Functionary's `>>>NAME`) gets the generic format too: the
    # model then writes calls we can parse, instead of calls nobody would see.
    fmt = detect_format(template_source) if template_supports_tools(template_source) else GENERIC
    own_syntax = fmt is not GENERIC
    calls = bool(tools) and choice.mode != "none"
    if own_syntax:
        rendered_messages, template_tools = messages, (tools if calls else None)
        if fmt.name == "mistral":
            rendered_messages = mistral_call_ids(messages)
    else:
        rendered_messages, template_tools = messages_for_generic(messages, tools if calls else None), None
    plan = TurnPlan(rendered_messages, template_tools, tools, choice, fmt, parallel=parallel)
    # Special tokens stay in the text only where parsing needs them (harmony's channels; a call marker that is
    # a special token of this vocabulary, as Mistral's [TOOL_CALLS]): elsewhere they would leak into answers.
    plan.keep_special = fmt.name == "harmony" or (calls and marker_is_special(fmt, tokenizer))
    if response_grammar is not None and calls:
        raise ToolsError(
            "response_format with tools is not supported together: constrain the reply to JSON, or let it call "
            "tools (tool_choice 'none' keeps the tools out and applies response_format)",
            "response_format",
        )
    if response_grammar is not None:
        plan.grammar = response_grammar
    elif calls and choice.mode in ("required", "named"):
        try:
            plan.grammar = fmt.call_grammar(
                tools, parallel=parallel, named=choice.name, token_ids=special_marker_ids(tokenizer)
            )
        except NotImplementedError as e:
            plan.notes.append(f"{fmt.name} calls are not constrained: {e}")
    elif calls:
        try:
            plan.trigger = fmt.trigger()
            plan.body_grammar = fmt.call_body_grammar(tools) if plan.trigger else None
        except NotImplementedError as e:
            plan.trigger, plan.body_grammar = None, None
            plan.notes.append(f"{fmt.name} calls are not constrained: {e}")
    return plan


def marker_is_special(fmt: ToolFormat, tokenizer) -> bool:
    """Whether the format's call marker is a special token of the vocabulary (decoding would drop it);
    without a tokenizer to ask, whether the format's markers usually are."""
    if tokenizer is None:
        return fmt.name in ("mistral", "deepseek", "kimi", "granite")
    token = tokenizer.token_to_id(fmt.start) if fmt.start else None
    return token is not None and tokenizer.is_special(token)


MARKERS_AS_TOKENS = (
    "[TOOL_CALLS]",
    "[ARGS]",
    "<|channel|>",
    "<|message|>",
    "<|constrain|>",
    "<|end|>",
    "<|start|>",
    "<|tool_call|>",
    "<|tool_calls_section_begin|>",
    "<|tool_calls_section_end|>",
    "<|tool_call_begin|>",
    "<|tool_call_end|>",
    "<|tool_call_argument_begin|>",
)


def special_marker_ids(tokenizer) -> dict[str, int]:
    """The call markers that are special tokens of this vocabulary, and their ids."""
    if tokenizer is None:
        return {}
    found = {marker: tokenizer.token_to_id(marker) for marker in MARKERS_AS_TOKENS}
    return {marker: i for marker, i in found.items() if i is not None and tokenizer.is_special(i)}


def mistral_call_ids(messages: list[dict]) -> list[dict]:
    """Mistral's templates refuse call ids that are not 9 letters or digits (its own ids' form): map ours
    (call_ + 24) onto 9-character ones, the same for a call and its result."""

    def short(call_id: str) -> str:
        if len(call_id) == 9 and call_id.isalnum():
            return call_id
        return hashlib.sha256(call_id.encode()).hexdigest()[:9]

    out = []
    for message in messages:
        message = dict(message)
        if message.get("tool_calls"):
            message["tool_calls"] = [{**call, "id": short(call["id"])} for call in message["tool_calls"]]
        if message.get("tool_call_id"):
            message["tool_call_id"] = short(message["tool_call_id"])
        out.append(message)
    return out


class TurnReader:
    """Streamed reply text in, events out: ("text", str), ("reasoning", str), ("tool_call", ToolCall)."""

    def __init__(self, plan: TurnPlan):
        self.plan = plan
        self._parser = plan.format.parser(reasoning=True, starts_in_thinking=plan.starts_in_thinking, tools=plan.tools)
        self.calls: list[ToolCall] = []
        self.text = ""
        self.reasoning = ""
        # A call came that the reply may not make: the same name and arguments again, or a second call when
        # parallel calls are off (parallel_tool_calls false, disable_parallel_tool_use). Dropped; the reply
        # should end there (call_watch).
        self.extra_call = False
        self._seen: set[str] = set()

    def feed(self, text: str) -> list[Event]:
        return self._keep(self._parser.feed(text))

    def finish(self) -> list[Event]:
        return self._keep(self._parser.finish())

    def _keep(self, events: list[Event]) -> list[Event]:
        out = []
        for event in events:
            if event.kind == "tool_call" and not self.plan.calls_possible:
                event = Event("text", text=_call_as_text(event.call))  # tool_choice none: a call is just text
            if event.kind == "tool_call":
                key = json.dumps([event.call.name, event.call.arguments], sort_keys=True)
                if key in self._seen or (self.calls and not self.plan.parallel):
                    self.extra_call = True
                    continue
                self._seen.add(key)
                self.calls.append(event.call)
            elif event.kind == "reasoning":
                self.reasoning += event.text
            else:
                self.text += event.text
            out.append(event)
        return out


def _call_as_text(call: ToolCall) -> str:
    return json.dumps({"name": call.name, "arguments": call.arguments}, ensure_ascii=False)


__all__ = [
    "ToolChoice",
    "ToolsError",
    "TurnPlan",
    "TurnReader",
    "check_choice",
    "check_tools",
    "parse_tool_choice",
    "plan_turn",
]
