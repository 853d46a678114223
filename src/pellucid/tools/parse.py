"""Reading tool calls and reasoning back out of a model's reply, as it streams.

A reply is text with *regions* marked by the model's own markers: a `<think>...</think>` block (reasoning),
a `<tool_call>...</tool_call>` block (a call), a `[TOOL_CALLS]` followed by a JSON list (Mistral), a bare
`{"name": ..., "parameters": ...}` object (Llama 3.x) and so on. `ReplyParser` walks the text once, left to
right, in one of two states:

- outside any region it streams text, holding back only a tail that could still be the start of a marker
  (`<tool_` might become `<tool_call>`), so no text event ever carries a piece of a marker;
- inside a region it streams reasoning the same way, or buffers a call until its end is known (a closing
  marker, or the end of a JSON value) and then parses it.

Whitespace that only separates a marker from what is around it (the "\n" between `</think>` and the answer,
between two calls) is dropped; everything else reaches the caller as the model wrote it. Feeding a reply in
any pieces gives the same events (adjacent text joined) as feeding it whole.

A call that does not parse (bad JSON, no name, a closing marker that never came) is passed on as text, with a
warning on the "pellucid.tools" logger: the user sees what the model wrote rather than an error or nothing.

GPT-OSS's harmony format is not text with regions but a sequence of messages with headers
(`<|channel|>analysis<|message|>...<|end|>`), so it has its own small state machine, `HarmonyParser`.
"""

from __future__ import annotations

import json
import logging
import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

from pellucid.tools.calls import Event, ToolCall, new_call_id

if TYPE_CHECKING:
    from pellucid.tools.formats import ToolFormat

log = logging.getLogger("pellucid.tools")

WARN_SNIPPET = 200  # characters of a malformed call quoted in the warning


class MalformedCall(ValueError):
    """A region that opened like a call but is not one; the message says what is wrong."""


# ---------------------------------------------------------------------------------------------------------
# Markers: a fixed string, or (Llama 3's bare JSON calls) a pattern plus the forms its start can take.


@dataclass(frozen=True)
class Marker:
    text: str = ""  # a fixed marker
    pattern: re.Pattern | None = None  # or a pattern; its match is part of the region's body (zero-width marker)
    starts: tuple[str, ...] = ()  # for a pattern: whitespace-free forms of its beginning, to hold back a tail

    def find(self, buf: str) -> tuple[int, int] | None:
        """(where the marker starts, where the region's body starts), or None."""
        if self.pattern is None:
            i = buf.find(self.text)
            return None if i < 0 else (i, i + len(self.text))
        m = self.pattern.search(buf)
        return None if m is None else (m.start(), m.start())

    def held_from(self, buf: str) -> int:
        """Where the tail of `buf` that could still grow into this marker begins (len(buf) if nowhere)."""
        if self.pattern is None:
            for k in range(min(len(self.text) - 1, len(buf)), 0, -1):
                if buf.endswith(self.text[:k]):
                    return len(buf) - k
            return len(buf)
        lookback = max(map(len, self.starts)) * 4  # whitespace may separate the characters of a start
        for i in range(max(0, len(buf) - lookback), len(buf)):
            if buf[i] in "{[":
                squeezed = re.sub(r"\s+", "", buf[i:])
                if any(start.startswith(squeezed) for start in self.starts):
                    return i
        return len(buf)


def _earliest(buf: str, markers: list[Marker]) -> tuple[int, int, int] | None:
    """(marker start, body start, index of the marker) of the first marker in `buf`."""
    best = None
    for n, marker in enumerate(markers):
        hit = marker.find(buf)
        if hit is not None and (best is None or hit[0] < best[0]):
            best = (*hit, n)
    return best


# ---------------------------------------------------------------------------------------------------------
# Regions and what each format's call bodies look like.


@dataclass(frozen=True)
class Region:
    """A marked part of a reply: reasoning (streamed) or calls (buffered, then parsed)."""

    kind: str  # "reasoning" | "calls"
    opener: Marker
    close: str | None = None  # the closing marker; None: `body_end` says where the body ends
    body_end: Callable[[str], int | None] | None = None  # end index of the body in the buffer, None if not yet
    parse: Callable[[str], list[ToolCall] | None] | None = None  # None: not a call after all, plain text
    close_optional: bool = False  # at the end of generation an unclosed body is still parsed
    separators: str = ""  # characters besides whitespace dropped after a region (";" between Llama calls)


_JSON_TOKENS = re.compile(r'"(?:[^"\\]|\\.)*"|"|[\[\]{}]', re.S)


def json_end(s: str, start: int = 0) -> int | None:
    """End index of the JSON object/array that begins at or after `start` (after whitespace), None if it has
    not closed yet. Only brackets outside strings are counted; json.loads judges the rest."""
    depth = 0
    for m in _JSON_TOKENS.finditer(s, start):
        token = m.group()
        if token == '"':
            return None  # a string still open: the value goes on
        if token[0] == '"':
            continue
        depth += 1 if token in "{[" else -1
        if depth == 0:
            return m.end()
    return None


def _load_json(text: str, what: str):
    try:
        return json.loads(text)
    except json.JSONDecodeError as e:
        raise MalformedCall(f"{what} is not valid JSON ({e.msg} at character {e.pos})") from None


def call_from_object(obj, *, need_arguments: bool = False) -> ToolCall:
    """A ToolCall from {"name": ..., "arguments"|"parameters": {...} or a JSON string of one, "id"?: ...};
    an OpenAI-shaped {"type": "function", "function": {...}} is unwrapped first."""
    if not isinstance(obj, dict):
        raise MalformedCall(f"a call must be a JSON object, got {type(obj).__name__}")
    if isinstance(obj.get("function"), dict):
        obj = {**obj["function"], "id": obj.get("id")}
    name = obj.get("name")
    if not isinstance(name, str) or not name.strip():
        raise MalformedCall('the call has no "name" string')
    key = "arguments" if "arguments" in obj else "parameters"
    if need_arguments and key not in obj:
        raise MalformedCall('the call has no "arguments" or "parameters"')
    arguments = obj.get(key)
    if isinstance(arguments, str):  # some models write the arguments as a JSON string, as OpenAI's API does
        arguments = _load_json(arguments, "the arguments string") if arguments.strip() else {}
    if arguments is None:
        arguments = {}
    if not isinstance(arguments, dict):
        raise MalformedCall(f"the arguments must be a JSON object, got {type(arguments).__name__}")
    call_id = obj.get("id")
    return ToolCall(name.strip(), arguments, call_id if isinstance(call_id, str) and call_id else new_call_id())


def calls_from_json(text: str, *, need_arguments: bool = False) -> list[ToolCall]:
    """One call object, or a list of them."""
    value = _load_json(text.strip(), "the call")
    items = value if isinstance(value, list) else [value]
    if not items:
        raise MalformedCall("the list of calls is empty")
    return [call_from_object(item, need_arguments=need_arguments) for item in items]


# Hermes / Qwen / generic: `<tool_call>\n{"name": ..., "arguments": {...}}\n</tool_call>`; Qwen3-Coder writes
# the body as XML: `<function=NAME>\n<parameter=KEY>\nVALUE\n</parameter>\n</function>`.
_XML_FUNCTION = re.compile(r"\s*<function=([^>\n]+)>(.*?)</function>\s*", re.S)
_XML_PARAMETER = re.compile(r"<parameter=([^>\n]+)>\n?(.*?)\n?</parameter>", re.S)


def parse_tagged_body(body: str, tools: list[dict] | None = None) -> list[ToolCall]:
    m = _XML_FUNCTION.fullmatch(body)
    if m is None:
        return calls_from_json(body)
    name, inner = m.group(1).strip(), m.group(2)
    leftover = _XML_PARAMETER.sub("", inner)
    if leftover.strip():
        raise MalformedCall(f"unexpected text between the parameters: {leftover.strip()[:60]!r}")
    schema = _parameters_schema(tools, name)
    arguments = {k.strip(): _xml_value(v, schema.get(k.strip())) for k, v in _XML_PARAMETER.findall(inner)}
    return [ToolCall(name, arguments, new_call_id())]


def _parameters_schema(tools: list[dict] | None, name: str) -> dict:
    for tool in tools or []:
        function = tool.get("function", tool)
        if function.get("name") == name:
            return (function.get("parameters") or {}).get("properties") or {}
    return {}


def _xml_value(text: str, schema: dict | None):
    """A parameter's value is raw text; the tool's schema says whether it is a string or JSON (a number, an
    object...). Without a schema, text that is valid JSON other than a plain string is taken as JSON."""
    kind = (schema or {}).get("type")
    if kind == "string":
        return text
    try:
        return json.loads(text)
    except json.JSONDecodeError:
        return text


# Mistral: `[TOOL_CALLS][{"name": ..., "arguments": {...}, "id": "abcDEF123"}, ...]` (Nemo), or one
# `[TOOL_CALLS]NAME[ARGS]{...}` per call (Small 3.2 adds `[CALL_ID]ID` before `[ARGS]`; Devstral).
_MISTRAL_NAMED = re.compile(r"\s*([^\[\]{}\s]+)\s*(?:\[CALL_ID\]\s*([A-Za-z0-9_-]+)\s*)?\[ARGS\]", re.S)


def mistral_body_end(buf: str) -> int | None:
    stripped = len(buf) - len(buf.lstrip())
    if buf[stripped : stripped + 1] in ("[", "{"):
        return json_end(buf, stripped)
    m = _MISTRAL_NAMED.match(buf)
    return None if m is None else json_end(buf, m.end())


def parse_mistral_body(body: str) -> list[ToolCall]:
    m = _MISTRAL_NAMED.match(body)
    if m is None:
        return calls_from_json(body)
    arguments = _load_json(body[m.end() :].strip(), "the arguments")
    if not isinstance(arguments, dict):
        raise MalformedCall(f"the arguments must be a JSON object, got {type(arguments).__name__}")
    return [ToolCall(m.group(1), arguments, m.group(2) or new_call_id())]


# Llama 3.x: a bare `{"name": ..., "parameters": {...}}` (optionally `"type": "function"` first), or a list
# of them, anywhere in the reply; or after `<|python_tag|>`, JSON or a builtin tool's `NAME.call(k="v")`.
LLAMA_JSON_START = re.compile(r'\[?\s*\{\s*"(?:type"\s*:\s*"function"\s*,\s*")?name"\s*:')
LLAMA_JSON_STARTS = ('{"name":', '{"type":"function","name":', '[{"name":', '[{"type":"function","name":')
_BUILTIN_CALL = re.compile(r"\s*([A-Za-z_][\w]*)\.call\((.*)\)\s*", re.S)
_BUILTIN_ARG = re.compile(r'\s*([A-Za-z_]\w*)\s*=\s*("(?:[^"\\]|\\.)*")\s*(?:,|$)', re.S)


def json_body_end(buf: str) -> int | None:
    return json_end(buf)


def parse_llama_json(body: str) -> list[ToolCall] | None:
    """A JSON value that starts like a call but is some other JSON the model wrote is text, not an error."""
    try:
        value = json.loads(body)
    except json.JSONDecodeError as e:
        raise MalformedCall(f"the call is not valid JSON ({e.msg} at character {e.pos})") from None
    items = value if isinstance(value, list) else [value]
    try:
        return [call_from_object(item, need_arguments=True) for item in items]
    except MalformedCall:
        return None


def parse_python_tag(body: str) -> list[ToolCall]:
    if body.lstrip()[:1] in ("{", "["):
        end = json_end(body)
        if end is None or body[end:].strip():
            raise MalformedCall("the JSON after <|python_tag|> is unterminated or followed by more text")
        return calls_from_json(body[:end], need_arguments=True)
    m = _BUILTIN_CALL.fullmatch(body)
    if m is None:
        raise MalformedCall('after <|python_tag|> expected JSON or NAME.call(key="value", ...)')
    arguments, rest = {}, m.group(2)
    while rest.strip():
        arg = _BUILTIN_ARG.match(rest)
        if arg is None:
            raise MalformedCall(f"cannot read the arguments of {m.group(1)}.call(...)")
        arguments[arg.group(1)] = json.loads(arg.group(2))
        rest = rest[arg.end() :]
    return [ToolCall(m.group(1), arguments, new_call_id())]


# DeepSeek: a section `<｜tool▁calls▁begin｜>` ... `<｜tool▁calls▁end｜>` of calls
# `<｜tool▁call▁begin｜>function<｜tool▁sep｜>NAME\n```json\n{...}\n```<｜tool▁call▁end｜>` (V3, R1) or
# `<｜tool▁call▁begin｜>NAME<｜tool▁sep｜>{...}<｜tool▁call▁end｜>` (V3.1).
DEEPSEEK_CALLS_BEGIN = "<｜tool▁calls▁begin｜>"
DEEPSEEK_CALLS_END = "<｜tool▁calls▁end｜>"
DEEPSEEK_CALL_BEGIN = "<｜tool▁call▁begin｜>"
DEEPSEEK_CALL_END = "<｜tool▁call▁end｜>"
DEEPSEEK_SEP = "<｜tool▁sep｜>"
_FENCED_JSON = re.compile(r"\s*([^\n]+?)\s*\n\s*```(?:json)?\s*\n?(.*?)\n?\s*```\s*", re.S)


def _section_calls(body: str, begin: str, end: str, what: str) -> list[str]:
    """The bodies of the calls in a section; anything but whitespace between them is malformed."""
    pieces, pos = [], 0
    while body[pos:].strip():
        start = body.find(begin, pos)
        if start < 0 or body[pos:start].strip():
            raise MalformedCall(f"expected {begin} in the {what} section, got {body[pos:].strip()[:60]!r}")
        stop = body.find(end, start)
        if stop < 0:
            raise MalformedCall(f"a call in the {what} section has no {end}")
        pieces.append(body[start + len(begin) : stop])
        pos = stop + len(end)
    if not pieces:
        raise MalformedCall(f"the {what} section has no calls")
    return pieces


def parse_deepseek_section(body: str) -> list[ToolCall]:
    calls = []
    for piece in _section_calls(body, DEEPSEEK_CALL_BEGIN, DEEPSEEK_CALL_END, "DeepSeek"):
        head, sep, tail = piece.partition(DEEPSEEK_SEP)
        if not sep:
            raise MalformedCall(f"a DeepSeek call has no {DEEPSEEK_SEP}")
        fenced = _FENCED_JSON.fullmatch(tail)
        if head.strip() == "function" and fenced:  # V3 / R1: type, then the name and fenced JSON
            name, arguments = fenced.group(1), fenced.group(2)
        else:  # V3.1: the name, then the JSON
            name, arguments = head, tail
        calls.append(call_from_object({"name": name.strip(), "arguments": _load_json(arguments, "the arguments")}))
    return calls


# Kimi K2: `<|tool_calls_section_begin|><|tool_call_begin|>functions.NAME:0<|tool_call_argument_begin|>{...}
# <|tool_call_end|><|tool_calls_section_end|>`; the id names the function.
KIMI_CALLS_BEGIN = "<|tool_calls_section_begin|>"
KIMI_CALLS_END = "<|tool_calls_section_end|>"
KIMI_CALL_BEGIN = "<|tool_call_begin|>"
KIMI_CALL_END = "<|tool_call_end|>"
KIMI_ARGS = "<|tool_call_argument_begin|>"
_KIMI_ID = re.compile(r"(?:functions\.)?(.+?)(?::\d+)?")


def parse_kimi_section(body: str) -> list[ToolCall]:
    calls = []
    for piece in _section_calls(body, KIMI_CALL_BEGIN, KIMI_CALL_END, "Kimi"):
        call_id, sep, arguments = piece.partition(KIMI_ARGS)
        if not sep or not call_id.strip():
            raise MalformedCall(f"a Kimi call has no id or no {KIMI_ARGS}")
        name = _KIMI_ID.fullmatch(call_id.strip()).group(1)
        obj = {"name": name, "arguments": _load_json(arguments, "the arguments"), "id": call_id.strip()}
        calls.append(call_from_object(obj))
    return calls


# ---------------------------------------------------------------------------------------------------------
# The streaming parser


class ReplyParser:
    """Feed a reply's text as it is generated; get back the events that are certain so far."""

    def __init__(
        self,
        fmt: ToolFormat,
        *,
        reasoning: bool = True,
        starts_in_thinking: bool = False,
        tools: list[dict] | None = None,
    ):
        self.format = fmt
        self.reasoning = reasoning
        self._regions = _regions(fmt, reasoning, tools)
        self._openers = [r.opener for r in self._regions]
        self._buf = ""
        self._region: Region | None = None  # the region being read, None outside any
        self._opened_with = ""  # the marker text that opened it (to give back as text if the call is bad)
        self._strip_lead = ""  # characters to drop at the start of what comes next ("" = none)
        self._checked = 0  # how much of a body `body_end` has seen (it only needs to look again after a "}]")
        self._gap = ""  # the whitespace dropped before the region's marker
        if starts_in_thinking and reasoning and fmt.think:
            self._region = self._regions[0]
            self._strip_lead = " \t\r\n"

    def feed(self, text: str) -> list[Event]:
        self._buf += text
        return self._drain(final=False)

    def finish(self) -> list[Event]:
        return self._drain(final=True)

    # -- the walk -------------------------------------------------------------------------------------------

    def _drain(self, final: bool) -> list[Event]:
        events: list[Event] = []
        while self._step(events, final):
            pass
        return events

    def _step(self, events: list[Event], final: bool) -> bool:
        """Advance once; False when nothing more can be decided now."""
        if self._region is None:
            hit = self._stream("text", self._openers, events, final)
            if hit is None:
                return False
            start, body_start, n = hit
            self._opened_with = self._buf[start:body_start]
            self._buf = self._buf[body_start:]
            self._region, self._checked = self._regions[n], 0
            self._strip_lead = " \t\r\n" if self._region.kind == "reasoning" else ""
            return True
        region = self._region
        if region.kind == "reasoning":
            hit = self._stream("reasoning", [Marker(region.close)], events, final)
            if hit is None:
                return False
            self._buf = self._buf[hit[1] :]
            self._close_region()
            return True
        return self._read_call(region, events, final)

    def _read_call(self, region: Region, events: list[Event], final: bool) -> bool:
        body, consumed = None, 0
        if region.close is not None:
            i = self._buf.find(region.close)
            if i >= 0:
                body, consumed = self._buf[:i], i + len(region.close)
        elif any(c in self._buf[self._checked :] for c in "}]"):
            end = region.body_end(self._buf)
            if end is not None:
                body, consumed = self._buf[:end], end
        self._checked = len(self._buf)
        if body is None:
            if not final:
                return False
            if not region.close_optional:
                self._give_back_as_text(
                    events, self._opened_with + self._buf, f"the call never closed ({region.close or 'JSON'})"
                )
                self._buf = ""
                self._close_region(as_text=True)
                return False
            body, consumed = self._buf, len(self._buf)
        raw = self._opened_with + self._buf[:consumed]
        self._buf = self._buf[consumed:]
        try:
            calls = region.parse(body)
        except MalformedCall as e:
            self._give_back_as_text(events, raw, str(e))
            calls = None
        else:
            if calls is None:  # JSON that only looked like the start of a call
                _add(events, "text", self._gap + raw)
            else:
                events.extend(Event("tool_call", call=call) for call in calls)
        self._close_region(as_text=calls is None)
        return True

    def _close_region(self, as_text: bool = False) -> None:
        """Leave the region; the whitespace after it separates it from what follows, unless it was text."""
        separators = self._region.separators if self._region else ""
        self._region = None
        self._strip_lead = "" if as_text else " \t\r\n" + separators

    def _give_back_as_text(self, events: list[Event], raw: str, reason: str) -> None:
        text = raw  # the marker that opened the region and everything after it
        log.warning(
            "the model wrote a malformed %s tool call (%s); passing it on as text: %r",
            self.format.name,
            reason,
            text[:WARN_SNIPPET],
        )
        _add(events, "text", self._gap + text)

    def _stream(self, kind: str, markers: list[Marker], events: list[Event], final: bool):
        """Emit the buffer as `kind` up to the first marker: returns (start, body start, marker index) with the
        text before it emitted and consumed, or None once all that is certain has been emitted. Whitespace just
        before a marker is dropped, so it is held back until what follows it is known."""
        if self._strip_lead:
            self._buf = self._buf.lstrip(self._strip_lead)
            if not self._buf:
                return None
            self._strip_lead = ""
        hit = _earliest(self._buf, markers)
        if hit is not None:
            before = self._buf[: hit[0]]
            _add(events, kind, before.rstrip())
            self._gap = before[len(before.rstrip()) :]  # given back if the region turns out to be text
            self._buf = self._buf[hit[0] :]
            return (0, hit[1] - hit[0], hit[2])
        if final:
            _add(events, kind, self._buf)
            self._buf = ""
            return None
        held = min((m.held_from(self._buf) for m in markers), default=len(self._buf))
        keep = len(self._buf[:held].rstrip())
        _add(events, kind, self._buf[:keep])
        self._buf = self._buf[keep:]
        return None


def _add(events: list[Event], kind: str, text: str) -> None:
    """Append text/reasoning, joined to the previous event when it is of the same kind."""
    if not text:
        return
    if events and events[-1].kind == kind and kind != "tool_call":
        events[-1].text += text
    else:
        events.append(Event(kind, text=text))


def _regions(fmt: ToolFormat, reasoning: bool, tools: list[dict] | None) -> list[Region]:
    regions = []
    if reasoning and fmt.think:
        regions.append(Region("reasoning", Marker(fmt.think[0]), close=fmt.think[1]))
    if fmt.name in ("hermes", "generic", "qwen3_coder"):
        regions.append(
            Region("calls", Marker(fmt.start), close=fmt.end, parse=lambda body: parse_tagged_body(body, tools))
        )
    elif fmt.name in ("mistral", "granite", "firefunction"):
        # a JSON list (or Mistral's NAME[ARGS]{...}) after the marker; it ends where the JSON ends
        regions.append(
            Region(
                "calls",
                Marker(fmt.start),
                body_end=mistral_body_end,
                parse=parse_mistral_body,
                close_optional=True,
            )
        )
    elif fmt.name == "llama3":
        regions.append(
            Region(
                "calls", Marker("<|python_tag|>"), body_end=_python_tag_end, parse=parse_python_tag, close_optional=True
            )
        )
        regions.append(
            Region(
                "calls",
                Marker(pattern=LLAMA_JSON_START, starts=LLAMA_JSON_STARTS),
                body_end=json_body_end,
                parse=parse_llama_json,
                separators=";",
            )
        )
    elif fmt.name == "deepseek":
        regions.append(
            Region(
                "calls",
                Marker(DEEPSEEK_CALLS_BEGIN),
                close=DEEPSEEK_CALLS_END,
                parse=parse_deepseek_section,
                close_optional=True,
            )
        )
    elif fmt.name == "kimi":
        regions.append(
            Region(
                "calls", Marker(KIMI_CALLS_BEGIN), close=KIMI_CALLS_END, parse=parse_kimi_section, close_optional=True
            )
        )
    elif fmt.name != "harmony":  # harmony has no regions: HarmonyParser reads its messages
        raise ValueError(f"no parser for the tool format {fmt.name!r}")
    return regions


def _python_tag_end(buf: str) -> int | None:
    """JSON after <|python_tag|> ends with the JSON; a builtin call `NAME.call(...)` runs to the end of the reply."""
    if buf.lstrip()[:1] in ("{", "["):
        return json_end(buf)
    return None


# ---------------------------------------------------------------------------------------------------------
# Harmony (GPT-OSS)

HARMONY_START = "<|start|>"
HARMONY_CHANNEL = "<|channel|>"
HARMONY_MESSAGE = "<|message|>"
HARMONY_ENDS = ("<|end|>", "<|call|>", "<|return|>")
HARMONY_MAX_HEADER = 256  # a header is a role, a channel, a recipient and a content type: short
_HARMONY_RECIPIENT = re.compile(r"to=([^\s<]+)")
_HARMONY_CHANNEL = re.compile(re.escape(HARMONY_CHANNEL) + r"\s*(\w+)")


class HarmonyParser(ReplyParser):
    """GPT-OSS replies are messages: `<|channel|>analysis<|message|>...<|end|>` is reasoning,
    `<|channel|>final<|message|>...` the answer, `<|channel|>commentary to=functions.NAME <|constrain|>json
    <|message|>{...}<|call|>` a call (the recipient may also come before the channel); every message after the
    first starts with `<|start|>assistant`. Commentary without a recipient is a preamble the user may see: text.
    The stop tokens (<|call|>, <|return|>) may be cut off by the engine, so a message may end with the reply."""

    def __init__(self, fmt: ToolFormat, *, reasoning: bool = True, starts_in_thinking: bool = False, **_):
        super().__init__(fmt, reasoning=reasoning)
        self._state = "between"  # between messages | header | body | loose (text outside a message)
        self._channel = ""
        self._recipient = ""
        if starts_in_thinking:  # the prompt ended with <|channel|>analysis<|message|>
            self._state, self._channel = "body", "analysis"

    def _step(self, events: list[Event], final: bool) -> bool:
        if self._state == "between":
            return self._between(events, final)
        if self._state == "header":
            return self._header(events, final)
        if self._state == "loose":
            return self._loose(events, final)
        return self._body(events, final)

    def _between(self, events: list[Event], final: bool) -> bool:
        self._buf = self._buf.lstrip()
        if not self._buf:
            return False
        starts = (HARMONY_START, HARMONY_CHANNEL, "to=")
        if any(self._buf.startswith(s) for s in starts):
            self._state = "header"
            return True
        if not final and any(s.startswith(self._buf) for s in starts):
            return False
        self._state = "loose"  # text outside any message (a model that skipped the header)
        return True

    def _loose(self, events: list[Event], final: bool) -> bool:
        """Text up to the next message, or up to an end marker."""
        markers = [Marker(HARMONY_START), Marker(HARMONY_CHANNEL)] + [Marker(e) for e in HARMONY_ENDS]
        hit = self._stream("text", markers, events, final)
        if hit is None:
            return False
        if hit[2] >= 2:  # an end marker: dropped
            self._buf = self._buf[hit[1] :]
        self._state = "between"
        return True

    def _header(self, events: list[Event], final: bool) -> bool:
        i = self._buf.find(HARMONY_MESSAGE)
        if i < 0:
            if len(self._buf) > HARMONY_MAX_HEADER or final:
                self._malformed(events, self._buf, "a message header without <|message|>")
                self._buf = ""
            return False
        header = self._buf[:i]
        self._opened_with = self._buf[: i + len(HARMONY_MESSAGE)]
        self._buf = self._buf[i + len(HARMONY_MESSAGE) :]
        channel = _HARMONY_CHANNEL.search(header)
        recipient = _HARMONY_RECIPIENT.search(header)
        self._channel = channel.group(1) if channel else "final"
        self._recipient = recipient.group(1) if recipient else ""
        self._state = "body"
        if self._channel == "analysis" and not self.reasoning:
            _add(events, "text", self._opened_with)  # reasoning left in the text as the model wrote it
        return True

    def _body(self, events: list[Event], final: bool) -> bool:
        ends = [Marker(e) for e in HARMONY_ENDS] + [Marker(HARMONY_START)]
        if self._recipient:  # a call: buffered until its end marker, or the end of the reply
            hit = _earliest(self._buf, ends)
            if hit is None:
                if not final:
                    return False
                body, end_marker, rest = self._buf, "", ""
            elif hit[2] < len(HARMONY_ENDS):
                body, end_marker, rest = self._buf[: hit[0]], self._buf[hit[0] : hit[1]], self._buf[hit[1] :]
            else:  # the next message began without an end marker
                body, end_marker, rest = self._buf[: hit[0]], "", self._buf[hit[0] :]
            self._buf = rest
            self._add_call(events, body, end_marker)
            self._state = "between"
            return True
        kind = "reasoning" if self._channel == "analysis" and self.reasoning else "text"
        hit = self._stream(kind, ends, events, final)
        if hit is None:
            if final:
                self._state = "between"
            return False
        if hit[2] < len(HARMONY_ENDS):  # <|end|> / <|return|>: consumed; a <|start|> begins the next message
            if kind == "text" and self._channel == "analysis":
                _add(events, "text", self._buf[: hit[1]])
            self._buf = self._buf[hit[1] :]
        self._strip_lead = " \t\r\n"
        self._state = "between"
        return True

    def _add_call(self, events: list[Event], body: str, end_marker: str) -> None:
        name = self._recipient.removeprefix("functions.")
        try:
            arguments = _load_json(body.strip(), "the arguments")
            calls = [call_from_object({"name": name, "arguments": arguments})]
        except MalformedCall as e:
            self._malformed(events, self._opened_with + body + end_marker, str(e))
        else:
            events.extend(Event("tool_call", call=call) for call in calls)

    def _malformed(self, events: list[Event], text: str, reason: str) -> None:
        log.warning("the model wrote a malformed harmony message (%s); passing it on as text: %r", reason, text[:200])
        _add(events, "text", text)
