"""Chat templates: turn a list of messages into the exact prompt text a chat model was trained on.

A chat model ships its own prompt format as a Jinja template: GGUF metadata `tokenizer.chat_template` (named
variants under `tokenizer.chat_template.<name>`), or in a Hugging Face folder `chat_template.jinja` or
tokenizer_config.json's `chat_template`. We render it the way transformers' `apply_chat_template` does, byte
for byte (tests/test_chat_template_families.py checks the real templates of the dense families against it):
Jinja2's ImmutableSandboxedEnvironment with trim_blocks/lstrip_blocks, the loopcontrols extension and the
`{% generation %}` tag, the variables `messages`, `tools`, `documents`, `add_generation_prompt`, `bos_token`,
`eos_token`, and the helpers `raise_exception`, `strftime_now`, a `namespace()` that refuses "_" names and a
`tojson` filter that writes JSON like `json.dumps` (non-ASCII kept, `indent`/`sort_keys`/`separators`
honoured, no HTML escaping). Messages reach the template as transformers passes them: keys whose value is
None are dropped, and a message's reasoning (`reasoning_content`, `thinking` or `reasoning`) is given under
both `reasoning_content` and `thinking`. One deliberate difference: like llama.cpp we also pass `date_string`
(today, "26 Jul 2024" style), which Llama 3.x templates print; transformers leaves Llama 3.1 at its fallback
"26 Jul 2024" (pass `date_string` to get that).

A template is code from the internet, so rendering is bounded, not just sandboxed. The sandbox already blocks
`__class__`-style attribute access (we fail loudly instead of printing nothing) and mutation of lists/dicts.
On top of it, every render carries a budget (`RenderLimits`) that these checkpoints enforce:

- time: a wall-clock deadline, checked on every loop iteration (each `{% for %}` iterable is wrapped), on
  every call (functions, methods, macros, so recursion is covered), on every filter and on every output;
- loops: `range()` is at most `max_range` long and all loops together run at most `max_iterations` times;
- size: no string/list/int the template builds may exceed `max_chars` (`*`, `+`, `**`, `%`, `~` are
  intercepted and their result size predicted before it is computed; so are amplifying methods and filters
  such as `center`, `replace`, `join`, `indent`, `format`, `tojson(indent=...)`), and all text written by
  `{{ }}` or literal template text, including inside macros and `{% set %}` blocks, may total at most
  `max_emitted_chars`; the prompt itself at most `max_chars`;
- recursion: Python's recursion limit, reported as a TemplateError.

What is not bounded: one builtin operation on a value already within the size limits (say sorting a list of
four million items) runs to completion before the next checkpoint; with the default limits that is around a
second at worst.

`chat_template_for()` finds a model's template; a model without one (a base model such as Gemma 3 270M) gets
`None`, and `plain_chat_template()` is the clearly-labelled fallback a chat command may use with a warning.
"""

from __future__ import annotations

import contextvars
import functools
import json
import os
import re
import time
import types
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from string import Formatter
from typing import Any

import jinja2
import jinja2.exceptions as jinja_errors
from jinja2 import nodes
from jinja2.ext import Extension, loopcontrols
from jinja2.sandbox import ImmutableSandboxedEnvironment
from jinja2.utils import Namespace
from jinja2.visitor import NodeTransformer

from pellucid.errors import TemplateError

GGUF_TEMPLATE_KEY = "tokenizer.chat_template"  # the default template; named ones are `<key>.<name>`
GGUF_TEMPLATE_NAMES_KEY = "tokenizer.chat_templates"  # list of the named templates' names
DEFAULT_TEMPLATE_NAME = "default"
MIN_JINJA_VERSION = (3, 1, 6)  # older versions have known sandbox escapes (CVE-2024-56326, CVE-2025-27516)
MAX_INT_BITS = 4096  # integers a template computes with; chat templates count messages, not RSA moduli
MAX_DATA_DEPTH = 64  # nesting of the messages/tools data we pass in
MAX_TOJSON_INDENT = 32
REASONING_FIELDS = ("reasoning_content", "thinking", "reasoning")  # a message's reasoning, first one present wins
TOOL_RESULT_ROLES = ("tool", "ipython", "tool_results")  # roles whose content may be a dict (a tool's result)


@dataclass(frozen=True)
class RenderLimits:
    """The budget of one render. The defaults are orders of magnitude above what real templates need."""

    seconds: float = 1.0  # wall-clock time for one render
    max_chars: int = 4_000_000  # largest prompt, and largest string/list a template may build (~1M tokens)
    max_emitted_chars: int = 16_000_000  # all text output, counting text inside macros and {% set %} blocks
    max_range: int = 100_000  # longest range(); the same limit Jinja's sandbox uses
    max_iterations: int = 1_000_000  # for-loop iterations in one render, all loops together


DEFAULT_LIMITS = RenderLimits()


class ChatTemplate:
    """A compiled chat template. `render(messages)` returns the prompt text (tokenize it with special tokens)."""

    def __init__(
        self,
        source: str,
        bos_token: str = "",
        eos_token: str = "",
        *,
        name: str = DEFAULT_TEMPLATE_NAME,
        limits: RenderLimits = DEFAULT_LIMITS,
    ):
        if not isinstance(source, str) or not source.strip():
            raise TemplateError("the chat template is empty; pass the Jinja source of the model's chat template")
        if len(source) > limits.max_chars:
            raise TemplateError(
                f"the chat template is {len(source):,} characters long, over the {limits.max_chars:,} limit"
            )
        self.source = source
        self.bos_token = bos_token
        self.eos_token = eos_token
        self.name = name
        self.limits = limits
        self._template = _compile(source)

    def __repr__(self) -> str:
        return f"ChatTemplate(name={self.name!r}, {len(self.source):,} chars, bos={self.bos_token!r}, eos={self.eos_token!r})"

    def render(
        self,
        messages: list[dict],
        *,
        add_generation_prompt: bool = True,
        tools: list[dict] | None = None,
        now: datetime | None = None,
        **extra: Any,
    ) -> str:
        """Render `messages` (and `tools`, OpenAI style) into prompt text.

        `add_generation_prompt` appends the header that starts the assistant's turn. `now` fixes the clock that
        `strftime_now` and `date_string` read (for reproducible prompts). `extra` becomes template variables
        (e.g. `enable_thinking=False`, `documents=[...]`, `date_string="26 Jul 2024"`) and may override the
        defaults above.
        """
        now = now or datetime.now()
        variables = {
            "messages": _validate_messages(messages),
            "tools": _validate_tools(tools),
            "documents": None,
            "add_generation_prompt": bool(add_generation_prompt),
            "bos_token": self.bos_token,
            "eos_token": self.eos_token,
            "date_string": now.strftime("%d %b %Y"),
            "strftime_now": lambda fmt: _bounded_strftime(now, fmt),
        }
        variables.update(_plain_data(extra, "extra"))
        return _render(self._template, variables, self.limits)


# ---------------------------------------------------------------------------------------------------------
# Finding a model's template


def chat_template_for(
    source: Mapping[str, Any] | str | os.PathLike[str] | Any,
    name: str | None = None,
    *,
    limits: RenderLimits = DEFAULT_LIMITS,
) -> ChatTemplate | None:
    """The chat template of a model, or None when it has none (a base model).

    `source` is a GGUF metadata mapping, an object with a `.metadata` mapping (GGUFFile), a .gguf path, or a
    Hugging Face model folder. `name` picks a named template (e.g. "tool_use"); asking for a name the model
    does not have is an error that lists the names it does have.
    """
    metadata = getattr(source, "metadata", source)
    if isinstance(metadata, Mapping):
        templates, bos, eos = _gguf_templates(metadata)
    else:
        path = Path(source)
        if path.is_dir():
            templates, bos, eos = _hf_templates(path)
        elif path.is_file():
            from pellucid.formats.gguf import GGUFFile

            with GGUFFile(path) as gguf:
                templates, bos, eos = _gguf_templates(gguf.metadata)
        else:
            raise TemplateError(f"{path} is neither a GGUF file nor a model folder; cannot look for a chat template")
    wanted = name or DEFAULT_TEMPLATE_NAME
    if wanted not in templates:
        if name is None:
            return None
        have = ", ".join(sorted(templates)) or "none"
        raise TemplateError(f"the model has no chat template named {name!r} (it has: {have})")
    return ChatTemplate(templates[wanted], bos, eos, name=wanted, limits=limits)


def _gguf_templates(metadata: Mapping[str, Any]) -> tuple[dict[str, str], str, str]:
    templates = {}
    if isinstance(metadata.get(GGUF_TEMPLATE_KEY), str):
        templates[DEFAULT_TEMPLATE_NAME] = metadata[GGUF_TEMPLATE_KEY]
    for template_name in metadata.get(GGUF_TEMPLATE_NAMES_KEY) or []:
        source = metadata.get(f"{GGUF_TEMPLATE_KEY}.{template_name}")
        if isinstance(source, str):
            templates[str(template_name)] = source
    tokens = metadata.get("tokenizer.ggml.tokens")
    return (
        templates,
        _token_text(tokens, metadata.get("tokenizer.ggml.bos_token_id")),
        _token_text(tokens, metadata.get("tokenizer.ggml.eos_token_id")),
    )


def _token_text(tokens: Any, token_id: Any) -> str:
    if tokens is None or token_id is None or not 0 <= int(token_id) < len(tokens):
        return ""
    return str(tokens[int(token_id)])


def _hf_templates(folder: Path) -> tuple[dict[str, str], str, str]:
    """Templates of a transformers folder, in the order transformers prefers them."""
    config = _read_json(folder / "tokenizer_config.json")
    templates: dict[str, str] = {}
    configured = config.get("chat_template")
    if isinstance(configured, str):
        templates[DEFAULT_TEMPLATE_NAME] = configured
    elif isinstance(configured, list):  # [{"name": ..., "template": ...}, ...]
        templates.update({t["name"]: t["template"] for t in configured if isinstance(t, dict) and "name" in t})
    processor = _read_json(folder / "chat_template.json").get("chat_template")
    if isinstance(processor, str):
        templates.setdefault(DEFAULT_TEMPLATE_NAME, processor)
    if (folder / "chat_template.jinja").is_file():
        templates[DEFAULT_TEMPLATE_NAME] = (folder / "chat_template.jinja").read_text(encoding="utf-8")
    extra_dir = folder / "additional_chat_templates"
    if extra_dir.is_dir():
        for file in sorted(extra_dir.glob("*.jinja")):
            templates[file.stem] = file.read_text(encoding="utf-8")
    return templates, _added_token_text(config.get("bos_token")), _added_token_text(config.get("eos_token"))


def _read_json(path: Path) -> dict:
    if not path.is_file():
        return {}
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise TemplateError(f"cannot read {path}: {e}; re-download the model folder") from e
    return data if isinstance(data, dict) else {}


def _added_token_text(token: Any) -> str:
    """tokenizer_config.json writes special tokens as a string or as an AddedToken dict {"content": ...}."""
    if isinstance(token, dict):
        token = token.get("content")
    return token if isinstance(token, str) else ""


# ---------------------------------------------------------------------------------------------------------
# Fallback for models without a template (base models): a plain transcript, no special tokens.

NO_TEMPLATE_WARNING = (
    "this model has no chat template (it is probably a base model, not a chat model); using a plain "
    "'User: ... / Assistant:' transcript, which the model was not trained on, so expect weak replies"
)

PLAIN_TEMPLATE_SOURCE = """\
{%- macro text(content) -%}
{%- if content is string -%}{{ content | trim }}
{%- else -%}{{ content | selectattr('type', 'equalto', 'text') | map(attribute='text') | join('\\n') | trim }}
{%- endif -%}
{%- endmacro -%}
{%- for message in messages -%}
{{ message['role'] | capitalize }}: {{ text(message['content']) }}
{% endfor -%}
{%- if add_generation_prompt %}Assistant:{% endif -%}
"""


def plain_chat_template(*, limits: RenderLimits = DEFAULT_LIMITS) -> ChatTemplate:
    """A transcript template for base models: "User: hi\\nAssistant:". Show NO_TEMPLATE_WARNING when using it."""
    return ChatTemplate(PLAIN_TEMPLATE_SOURCE, name="plain", limits=limits)


# ---------------------------------------------------------------------------------------------------------
# Validating what goes in: messages and tools become plain JSON-like data (copies), or a clear error.


def _validate_messages(messages: Any) -> list[dict]:
    if not isinstance(messages, (list, tuple)):
        raise TemplateError(
            f"messages must be a list of {{'role': ..., 'content': ...}} dicts, got {type(messages).__name__}"
        )
    if not messages:
        raise TemplateError("messages is empty: a chat needs at least one message")
    for i, message in enumerate(messages):
        where = f"messages[{i}]"
        if not isinstance(message, Mapping):
            raise TemplateError(f"{where} is a {type(message).__name__}, expected a dict with 'role' and 'content'")
        role = message.get("role")
        if not isinstance(role, str) or not role:
            raise TemplateError(
                f"{where} has no 'role' string (got {role!r}); use 'system', 'user', 'assistant' or 'tool'"
            )
        content = message.get("content")
        if content is None and not message.get("tool_calls"):
            raise TemplateError(
                f"{where} ({role}) has no 'content'; only an assistant message with 'tool_calls' may omit it"
            )
        if isinstance(content, list):
            for j, part in enumerate(content):
                if not isinstance(part, Mapping) or not isinstance(part.get("type"), str):
                    raise TemplateError(
                        f"{where}['content'][{j}] must be a content part dict with a 'type', got {part!r:.80}"
                    )
        elif isinstance(content, Mapping) and role in TOOL_RESULT_ROLES:
            pass  # a tool's result as data: Llama 3.x templates write it with tojson, Mistral's read `.content`
        elif content is not None and not isinstance(content, str):
            raise TemplateError(
                f"{where}['content'] must be a string or a list of content parts, got {type(content).__name__}"
            )
    return [_as_transformers_passes_it(m) for m in _plain_data(list(messages), "messages")]


def fold_system_message(messages: list[dict]) -> list[dict] | None:
    """The messages with a leading system message's text put before the first user message's (for templates
    that refuse a system role, as llama.cpp does for them); None when there is no leading system message or
    no user message after it to carry it."""
    if not messages or messages[0].get("role") != "system" or not isinstance(messages[0].get("content"), str):
        return None
    rest = list(messages[1:])
    first_user = next((i for i, m in enumerate(rest) if m.get("role") == "user"), None)
    if first_user is None or not isinstance(rest[first_user].get("content"), str):
        return None
    rest[first_user] = {**rest[first_user], "content": messages[0]["content"] + "\n\n" + rest[first_user]["content"]}
    return rest


def _as_transformers_passes_it(message: dict) -> dict:
    """The message as apply_chat_template hands it to the template: keys whose value is None dropped (an OpenAI
    client's `"content": null` beside tool calls is *missing*, which templates test with `is defined`), and the
    reasoning, under whichever of REASONING_FIELDS it came, copied to both `thinking` (gpt-oss) and
    `reasoning_content` (Qwen3, DeepSeek), in transformers' key order (templates may iterate a message)."""
    message = {key: value for key, value in message.items() if value is not None}
    reasoning = next((message[key] for key in REASONING_FIELDS if key in message), None)
    if reasoning is not None:
        message = {"thinking": reasoning, **message, "reasoning_content": reasoning}
    return message


def _validate_tools(tools: Any) -> list[dict] | None:
    if tools is None:
        return None
    if not isinstance(tools, (list, tuple)) or not all(isinstance(t, Mapping) for t in tools):
        raise TemplateError("tools must be a list of dicts (OpenAI style: {'type': 'function', 'function': {...}})")
    return _plain_data(list(tools), "tools")


def _plain_data(value: Any, where: str, depth: int = 0) -> Any:
    """A copy made of dict/list/str/int/float/bool/None only, so a template sees no methods of caller objects."""
    if depth > MAX_DATA_DEPTH:
        raise TemplateError(f"{where} is nested more than {MAX_DATA_DEPTH} levels deep")
    if value is None or type(value) in (str, int, float, bool):
        return value
    for base, plain in ((str, str.__str__), (int, int.__int__), (float, float.__float__)):
        if isinstance(value, base):  # subclasses (enums, numpy float64) are reduced to the plain value
            return plain(value)
    if isinstance(value, Mapping):  # keys stay what they were (an int key prints as 1, not '1'), as in transformers
        return {
            _plain_data(k, where, depth + 1): _plain_data(v, f"{where}[{k!r}]", depth + 1) for k, v in value.items()
        }
    if isinstance(value, (list, tuple)):  # a tuple stays a tuple: it prints as (1, 2)
        items = [_plain_data(v, f"{where}[{i}]", depth + 1) for i, v in enumerate(value)]
        return items if isinstance(value, list) else tuple(items)
    raise TemplateError(f"{where} has type {type(value).__name__}; chat template inputs must be JSON-like data")


# ---------------------------------------------------------------------------------------------------------
# The per-render budget. Hooks called from template code find it through a context variable, so one
# environment serves every template and concurrent renders in different threads keep separate budgets.


class _Budget:
    def __init__(self, limits: RenderLimits):
        self.limits = limits
        self.deadline = time.monotonic() + limits.seconds
        self.iterations = 0
        self.emitted = 0

    def tick(self) -> None:
        if time.monotonic() > self.deadline:
            raise TemplateError(
                f"the chat template ran for more than {self.limits.seconds:g} s and was stopped; it is broken or "
                "hostile (real templates render in milliseconds)"
            )

    def loop_step(self) -> None:
        self.iterations += 1
        if self.iterations > self.limits.max_iterations:
            raise TemplateError(
                f"the chat template looped more than {self.limits.max_iterations:,} times and was stopped"
            )
        self.tick()

    def check_size(self, n: int, what: str) -> None:
        if n > self.limits.max_chars:
            raise TemplateError(
                f"{what} would be {n:,} characters/items long, over the {self.limits.max_chars:,} limit; "
                "the chat template is broken or hostile"
            )

    def check_value(self, value: Any, what: str) -> None:
        if isinstance(value, (str, list, tuple, dict)):
            self.check_size(len(value), what)
        elif isinstance(value, int) and value.bit_length() > MAX_INT_BITS:
            raise TemplateError(f"{what} produced an integer over {MAX_INT_BITS} bits; the chat template is hostile")

    def emit(self, n: int) -> None:
        self.emitted += n
        if self.emitted > self.limits.max_emitted_chars:
            raise TemplateError(
                f"the chat template wrote more than {self.limits.max_emitted_chars:,} characters (counting text "
                "inside macros and {% set %} blocks) and was stopped"
            )


_ACTIVE_BUDGET: contextvars.ContextVar[_Budget] = contextvars.ContextVar("pellucid_chat_template_budget")


def _budget() -> _Budget:
    try:
        return _ACTIVE_BUDGET.get()
    except LookupError:  # a template function called outside render(): should not happen, fail closed
        raise TemplateError("chat template code ran outside ChatTemplate.render()") from None


def _str_len(value: Any, limit: int | None = None) -> int:
    """Length of str(value), computed without building it; stops counting once past `limit`.

    Containers can hold many references to one big object (`[big] * n`), so their text can be far larger than
    their item count; this walk is what keeps `{{ [big] * n }}` from allocating gigabytes.
    """
    limit = _budget().limits.max_chars if limit is None else limit
    total, stack = 0, [value]
    while stack and total <= limit:
        item = stack.pop()
        if isinstance(item, str):
            total += len(item) + 2  # quotes (inside a container repr)
        elif isinstance(item, (list, tuple, set, frozenset)):
            total += 2 + 2 * len(item)
            stack.extend(item)
        elif isinstance(item, Mapping):
            total += 2 + 4 * len(item)
            stack.extend(item.keys())
            stack.extend(item.values())
        elif isinstance(item, Namespace):
            stack.append(dict(item._Namespace__attrs))  # its repr shows its attributes
        elif isinstance(item, int):
            total += 1 + item.bit_length() * 30103 // 100000
        else:
            total += 32  # floats, None, bools, Undefined, macros: short reprs
    return total


def _bounded_str(value: Any, budget: _Budget, what: str) -> str:
    if not isinstance(value, str):
        budget.check_size(_str_len(value, budget.limits.max_chars), what)
    return str(value)


# ---------------------------------------------------------------------------------------------------------
# Guarded operators, calls, filters and globals.

_PRINTF_SPEC = re.compile(r"%(?:\([^)]*\))?[#0\- +]*(\*|\d+)?(?:\.(\*|\d+))?[hlL]?([a-zA-Z%])")


def _printf_len(fmt: str, args: Any, limit: int | None = None) -> int:
    """An upper bound on len(fmt % args): the format text plus every field at its width, precision and value."""
    values = list(args.values()) if isinstance(args, Mapping) else list(args) if isinstance(args, tuple) else [args]
    widest_value = max((_str_len(v, limit) for v in values), default=0)
    numbers = [v for v in values if isinstance(v, int)]
    total = len(fmt)
    for width, precision, _ in _PRINTF_SPEC.findall(fmt):
        for n in (width, precision):
            total += max(numbers, default=0) if n == "*" else int(n or 0)
        total += widest_value
    return total


def _format_len(fmt: str, args: tuple, kwargs: dict, limit: int) -> int:
    """An upper bound on len(fmt.format(*args, **kwargs))."""
    widest_value = max((_str_len(v, limit) for v in (*args, *kwargs.values())), default=0)
    total = len(fmt)
    for _, field, spec, _ in Formatter().parse(fmt):
        if field is not None:
            total += widest_value + sum(int(n) for n in re.findall(r"\d+", spec or ""))
    return total


def _binop_result_len(op: str, left: Any, right: Any, limit: int) -> int | None:
    """Predicted size of `left op right` for the operators that can blow up memory; None when harmless."""
    sequence = (str, list, tuple)
    if op == "*":
        if isinstance(left, sequence) and isinstance(right, int):
            return len(left) * max(right, 0)
        if isinstance(right, sequence) and isinstance(left, int):
            return len(right) * max(left, 0)
    elif op == "+" and isinstance(left, sequence) and isinstance(right, sequence):
        return len(left) + len(right)
    elif op == "%" and isinstance(left, str):
        return _printf_len(left, right, limit)
    return None


def _int_bits(op: str, left: Any, right: Any) -> int:
    """An upper bound on the bit length of integer `*` and `**`, so `2 ** 10 ** 9` is refused, not computed."""
    if not (isinstance(left, int) and isinstance(right, int)):
        return 0
    if op == "*":
        return left.bit_length() + right.bit_length()
    if op == "**" and right > 0 and abs(left) > 1:
        return left.bit_length() * right
    return 0


# Builtin methods whose result can dwarf their inputs, and a bound on that result's length.
_METHOD_LEN = {
    "center": lambda s, width, *a: max(len(s), width),
    "ljust": lambda s, width, *a: max(len(s), width),
    "rjust": lambda s, width, *a: max(len(s), width),
    "zfill": lambda s, width: max(len(s), width),
    "expandtabs": lambda s, tabsize=8: len(s) + s.count("\t") * max(tabsize, 0),
    "replace": lambda s, old, new, count=-1: len(s) + (len(s) + 1 if not old else s.count(old)) * len(new),
}


def _check_call(obj: Any, args: tuple, kwargs: dict, budget: _Budget) -> tuple:
    """Refuse calls to builtins whose result would exceed the size limit; returns (possibly materialized) args."""
    limit = budget.limits.max_chars
    if not isinstance(obj, (types.BuiltinMethodType, types.BuiltinFunctionType)) and not hasattr(obj, "__wrapped__"):
        return args  # macros and our own globals check themselves
    for arg in (*args, *kwargs.values()):
        if isinstance(arg, int) and not isinstance(arg, bool) and abs(arg) > limit:
            raise TemplateError(
                f"the chat template called {_callable_name(obj)} with {arg:,}, over the {limit:,} limit"
            )
    name, owner = getattr(obj, "__name__", ""), getattr(obj, "__self__", None)
    wrapped = getattr(obj, "__wrapped__", None)  # the sandbox's wrapper around str.format / str.format_map
    if wrapped is not None and isinstance(getattr(wrapped, "__self__", None), str):
        fields = args[0] if name == "format_map" and args else kwargs
        positional = () if name == "format_map" else args
        budget.check_size(_format_len(wrapped.__self__, positional, dict(fields), limit), f"str.{name}()")
    elif isinstance(owner, str) and name == "join" and args:
        items = list(args[0])
        budget.check_size(sum(_str_len(i, limit) for i in items) + len(owner) * len(items), "str.join()")
        args = (items, *args[1:])
    elif isinstance(owner, str) and name in _METHOD_LEN:
        budget.check_size(_predicted(_METHOD_LEN[name], owner, *args, **kwargs), f"str.{name}()")
    return args


def _predicted(bound: Any, *args: Any, **kwargs: Any) -> int:
    """A size bound, or 0 when the arguments are malformed (the real call then raises a clearer error)."""
    try:
        return bound(*args, **kwargs)
    except (TypeError, ValueError):
        return 0


def _callable_name(obj: Any) -> str:
    owner = getattr(obj, "__self__", None)
    name = getattr(obj, "__name__", type(obj).__name__)
    return (
        f"{type(owner).__name__}.{name}()"
        if owner is not None and not isinstance(owner, types.ModuleType)
        else f"{name}()"
    )


class _GuardedEnvironment(ImmutableSandboxedEnvironment):
    """The sandbox plus the budget checkpoints described in the module docstring."""

    intercepted_binops = frozenset({"+", "*", "**", "%"})

    def call_binop(self, context: Any, operator: str, left: Any, right: Any) -> Any:
        budget = _budget()
        budget.tick()
        predicted = _binop_result_len(operator, left, right, budget.limits.max_chars)
        if predicted is not None:
            budget.check_size(predicted, f"the {operator!r} operation")
        if _int_bits(operator, left, right) > MAX_INT_BITS:
            raise TemplateError(f"the {operator!r} operation would produce an integer over {MAX_INT_BITS} bits")
        return super().call_binop(context, operator, left, right)

    def call(self, context: Any, obj: Any, /, *args: Any, **kwargs: Any) -> Any:
        budget = _budget()
        budget.tick()
        args = _check_call(obj, args, kwargs, budget)
        result = super().call(context, obj, *args, **kwargs)
        budget.check_value(result, _callable_name(obj))
        return result

    def unsafe_undefined(self, obj: Any, attribute: str) -> Any:
        # The stock sandbox returns an Undefined that only fails when used, so `{{ x.__class__ }}` would print
        # nothing. A template that reaches for internals is hostile: stop it.
        raise jinja_errors.SecurityError(f"access to attribute {attribute!r} of a {type(obj).__name__} is not allowed")


class _GenerationTag(Extension):
    """`{% generation %}...{% endgeneration %}` marks assistant text for training masks in transformers; when
    rendering a prompt it prints its body. Like transformers we run the body as a `{% call %}` block, so a
    `{% set %}` inside it stays inside it."""

    tags = {"generation"}

    def parse(self, parser: Any) -> nodes.Node:
        lineno = next(parser.stream).lineno
        body = parser.parse_statements(("name:endgeneration",), drop_needle=True)
        return nodes.CallBlock(self.call_method("_body"), [], [], body).set_lineno(lineno)

    def _body(self, caller: Any) -> str:
        return caller()


class _Namespace(Namespace):
    """transformers' `namespace()`: a name starting with "_" is refused (the sandbox hides such attributes, so a
    template that stores one is broken or probing)."""

    def __init__(*args: Any, **kwargs: Any) -> None:  # Namespace's signature trick: `namespace(self=...)` works
        self, args = args[0], args[1:]
        attrs = dict(*args, **kwargs)
        for name in attrs:
            _check_namespace_name(name)
        Namespace.__init__(self, attrs)

    def __setitem__(self, name: str, value: Any) -> None:
        _check_namespace_name(name)
        Namespace.__setitem__(self, name, value)


def _check_namespace_name(name: Any) -> None:
    if isinstance(name, str) and name.startswith("_"):
        raise jinja_errors.SecurityError(f"a namespace attribute may not start with '_' (got {name!r})")


class _Guards(NodeTransformer):
    """Rewrites a parsed template so its loops, `~` concatenations and literal text reach the budget."""

    def visit_For(self, node: nodes.For) -> nodes.Node:
        self.generic_visit(node)
        node.iter = nodes.Filter(node.iter, "pellucid_loop", [], [], None, None, lineno=node.lineno)
        return node

    def visit_Concat(self, node: nodes.Concat) -> nodes.Node:
        self.generic_visit(node)
        return nodes.Filter(
            nodes.List(node.nodes, lineno=node.lineno), "pellucid_concat", [], [], None, None, lineno=node.lineno
        )

    def visit_Output(self, node: nodes.Output) -> nodes.Node:
        self.generic_visit(node)
        # Literal text is normally folded into constants at compile time; as a Const it is counted at runtime.
        node.nodes = [
            nodes.Const(n.data, lineno=n.lineno) if isinstance(n, nodes.TemplateData) else n for n in node.nodes
        ]
        return node


def _loop_guard(iterable: Any) -> Iterator[Any]:
    budget = _budget()
    for item in iterable:
        budget.loop_step()
        yield item


def _concat_guard(parts: list[Any]) -> str:
    budget = _budget()
    texts = [_bounded_str(p, budget, "the '~' operation") for p in parts]
    budget.check_size(sum(map(len, texts)), "the '~' operation")
    return "".join(texts)


@jinja2.pass_context  # a context-taking finalize also stops Jinja from folding output into constants
def _finalize(context: Any, value: Any) -> str:
    budget = _budget()
    budget.tick()
    text = _bounded_str(value, budget, "an output value")
    budget.emit(len(text))
    return text


def _bounded_range(*args: int) -> range:
    budget = _budget()
    r = range(*args)
    if len(r) > budget.limits.max_range:
        raise TemplateError(
            f"the chat template asked for range() of {len(r):,} numbers, over the {budget.limits.max_range:,} limit"
        )
    return r


def _bounded_strftime(now: datetime, fmt: str) -> str:
    budget = _budget()
    budget.check_size(len(str(fmt)) * 16, "strftime_now()")  # a directive expands to at most a few dozen chars
    return now.strftime(str(fmt))


def _raise_exception(message: Any) -> None:
    raise TemplateError(f"the chat template refused these messages: {message}")


def _tojson(
    value: Any,
    ensure_ascii: bool = False,
    indent: int | str | None = None,
    separators: Any = None,
    sort_keys: bool = False,
) -> str:
    """transformers' tojson (json.dumps without HTML escaping), streamed so a huge result is cut off early."""
    budget = _budget()
    if indent is not None and (len(indent) if isinstance(indent, str) else indent) > MAX_TOJSON_INDENT:
        raise TemplateError(f"tojson(indent={indent!r}) is over the {MAX_TOJSON_INDENT} limit")
    if separators is not None:
        separators = tuple(separators)
    encoder = json.JSONEncoder(ensure_ascii=ensure_ascii, indent=indent, separators=separators, sort_keys=sort_keys)
    chunks, total = [], 0
    try:
        for chunk in encoder.iterencode(value):
            total += len(chunk)
            budget.check_size(total, "tojson")
            if len(chunks) % 1024 == 0:
                budget.tick()
            chunks.append(chunk)
    except (TypeError, ValueError) as e:
        raise TemplateError(f"tojson cannot serialize this value: {e}") from e
    return "".join(chunks)


# Filters whose result can dwarf their input: a bound on the result's length, from (value, *args, **kwargs).
def _indent_len(s: Any, width: Any = 4, first: bool = False, blank: bool = False) -> int:
    s = str(s)
    return len(s) + (s.count("\n") + 1) * (len(width) if isinstance(width, str) else max(int(width), 0))


def _wordwrap_len(
    s: Any, width: int = 79, break_long_words: bool = True, wrapstring: str | None = None, break_on_hyphens: bool = True
) -> int:
    s = str(s)
    return len(s) + (len(s) + 1) * len(wrapstring or "\n")


_FILTER_LEN = {
    "center": lambda value, width=80: max(len(str(value)), width),
    "indent": _indent_len,
    "wordwrap": _wordwrap_len,
    "replace": lambda s, old, new, count=None: _METHOD_LEN["replace"](str(s), str(old), str(new)),
    "format": lambda value, *args, **kwargs: _printf_len(str(value), kwargs or args),
    # join's items (or their `attribute`) print no longer than the list itself does
    "join": lambda value, d="", attribute=None: _str_len(value) + len(str(d)) * len(value),
    "batch": lambda value, linecount, fill_with=None: linecount,
    "slice": lambda value, slices, fill_with=None: slices,
    "truncate": lambda s, length=255, killwords=False, end="...", leeway=None: len(str(s)) + len(str(end)),
}
# Filters that turn their input into text: a container input is measured first (see _str_len).
_STRINGIFYING_FILTERS = {
    "string",
    "trim",
    "upper",
    "lower",
    "title",
    "capitalize",
    "center",
    "indent",
    "replace",
    "wordwrap",
    "wordcount",
    "striptags",
    "escape",
    "e",
    "forceescape",
    "urlize",
    "urlencode",
    "pprint",
    "safe",
    "format",
    "truncate",
}


def _guard_filter(name: str, fn: Any) -> Any:
    """Wrap a builtin filter: deadline before, predicted size before (amplifiers), actual size after."""
    n_lead = 1 if getattr(fn, "jinja_pass_arg", None) is not None else 0  # context/environment comes first

    @functools.wraps(fn)
    def guarded(*args: Any, **kwargs: Any) -> Any:
        budget = _budget()
        budget.tick()
        lead, value, rest = args[:n_lead], args[n_lead], args[n_lead + 1 :]
        if name == "join" and not isinstance(value, str):
            value = list(value)  # materialized once, so the size bound and the join see the same items
        if name in _STRINGIFYING_FILTERS:
            _bounded_str(value, budget, f"the '{name}' filter's input")
        if name in _FILTER_LEN:
            budget.check_size(_predicted(_FILTER_LEN[name], value, *rest, **kwargs), f"the '{name}' filter")
        result = fn(*lead, value, *rest, **kwargs)
        budget.check_value(result, f"the '{name}' filter")
        return result

    return guarded


_ENVIRONMENT: _GuardedEnvironment | None = None


def _environment() -> _GuardedEnvironment:
    global _ENVIRONMENT
    if _ENVIRONMENT is None:
        version = tuple(int(p) for p in re.findall(r"\d+", jinja2.__version__)[:3])
        if version < MIN_JINJA_VERSION:
            raise TemplateError(
                f"jinja2 {jinja2.__version__} has known sandbox escapes; chat templates need jinja2 >= 3.1.6 "
                "(pip install -U jinja2)"
            )
        env = _GuardedEnvironment(
            trim_blocks=True, lstrip_blocks=True, extensions=[loopcontrols, _GenerationTag], finalize=_finalize
        )
        env.filters["tojson"] = _tojson
        env.filters = {name: _guard_filter(name, fn) for name, fn in env.filters.items()}
        env.filters["pellucid_loop"] = _loop_guard
        env.filters["pellucid_concat"] = _concat_guard
        env.globals.pop("lipsum", None)  # lipsum(n=10**9): a text generator templates never need
        env.globals.update(range=_bounded_range, raise_exception=_raise_exception, namespace=_Namespace)
        _ENVIRONMENT = env
    return _ENVIRONMENT


def _compile(source: str) -> jinja2.Template:
    env = _environment()
    try:
        tree = _Guards().visit(env.parse(source))
        tree.set_environment(env)
        return env.from_string(tree)
    except jinja_errors.TemplateSyntaxError as e:
        raise TemplateError(f"the chat template does not parse (line {e.lineno}): {e.message}") from e
    except jinja_errors.TemplateError as e:
        raise TemplateError(f"the chat template cannot be compiled: {e}") from e


def _render(template: jinja2.Template, variables: dict[str, Any], limits: RenderLimits) -> str:
    budget = _Budget(limits)
    token = _ACTIVE_BUDGET.set(budget)
    chunks, total = [], 0
    try:
        for chunk in template.generate(**variables):
            total += len(chunk)
            budget.check_size(total, "the rendered prompt")
            chunks.append(chunk)
    except TemplateError:
        raise
    except jinja_errors.SecurityError as e:
        raise TemplateError(f"the chat template is unsafe and was stopped: {e}") from e
    except jinja_errors.UndefinedError as e:
        raise TemplateError(
            f"the chat template used an undefined value ({e}); do the messages lack a field it needs?"
        ) from e
    except RecursionError as e:
        raise TemplateError("the chat template recursed too deeply and was stopped") from e
    except MemoryError as e:
        raise TemplateError("the chat template ran out of memory and was stopped") from e
    except Exception as e:  # any other error raised by template logic (TypeError, ZeroDivisionError, ...)
        raise TemplateError(f"the chat template failed: {type(e).__name__}: {e}") from e
    finally:
        _ACTIVE_BUDGET.reset(token)
    return "".join(chunks)


__all__ = [
    "DEFAULT_LIMITS",
    "NO_TEMPLATE_WARNING",
    "PLAIN_TEMPLATE_SOURCE",
    "ChatTemplate",
    "RenderLimits",
    "chat_template_for",
    "plain_chat_template",
]
