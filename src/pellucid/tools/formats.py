"""The tool-call formats models are trained on, and which one a chat template uses.

Every format, as its models write it (the chat templates in ../shared/fixtures/chat_templates show the same
syntax for calls in the history):

- hermes (Hermes 2/3, Qwen2.5, Qwen3, QwQ): `<tool_call>\\n{"name": ..., "arguments": {...}}\\n</tool_call>`,
  one block per call;
- qwen3_coder: the same markers around XML, `<function=NAME>\\n<parameter=KEY>\\nVALUE\\n</parameter>\\n</function>`;
- llama3 (Llama 3.1/3.2/3.3): a bare `{"name": ..., "parameters": {...}}` ("arguments" accepted too), possibly
  after `<|python_tag|>`, which also introduces builtin tools' `brave_search.call(query="...")`;
- mistral (Nemo): `[TOOL_CALLS][{"name": ..., "arguments": {...}, "id": "abcDEF123"}]`; (Small 3.2,
  Devstral) `[TOOL_CALLS]NAME[ARGS]{...}` per call, optionally `[CALL_ID]ID` before `[ARGS]`;
- harmony (GPT-OSS): `<|channel|>commentary to=functions.NAME <|constrain|>json<|message|>{...}<|call|>`,
  reasoning in the analysis channel, the answer in the final channel;
- deepseek: `<｜tool▁calls▁begin｜><｜tool▁call▁begin｜>function<｜tool▁sep｜>NAME\\n```json\\n{...}\\n```
  <｜tool▁call▁end｜><｜tool▁calls▁end｜>` (V3, R1) or `...<｜tool▁call▁begin｜>NAME<｜tool▁sep｜>{...}...` (V3.1);
- kimi (K2): `<|tool_calls_section_begin|><|tool_call_begin|>functions.NAME:0<|tool_call_argument_begin|>
  {...}<|tool_call_end|><|tool_calls_section_end|>`;
- granite (3.x): `<|tool_call|>[{"name": ..., "arguments": {...}}]`; firefunction (v2): ` functools[{...}]`;
- generic: for a model whose template has no tool syntax at all (SmolLM2's plain ChatML): Hermes's markers,
  with instructions of our own in the system prompt (see generic.py).

Reasoning is a `<think>...</think>` block (Qwen3, QwQ, DeepSeek-R1, SmolLM3, Kimi), `[THINK]...[/THINK]`
(Magistral), or harmony's analysis channel.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass

from pellucid.tools import grammar
from pellucid.tools.calls import ToolCall
from pellucid.tools.parse import (
    DEEPSEEK_CALLS_BEGIN,
    DEEPSEEK_CALLS_END,
    KIMI_CALLS_BEGIN,
    KIMI_CALLS_END,
    HarmonyParser,
    ReplyParser,
)

THINK = ("<think>", "</think>")


@dataclass(frozen=True)
class ToolFormat:
    name: str  # "hermes", "qwen3_coder", "llama3", "mistral", "harmony", "deepseek", "kimi", "granite", ...
    start: str | None = None  # the marker that opens a call (or a section of calls) in free text
    end: str | None = None  # the marker that closes it; None: the call ends with its JSON
    think: tuple[str, str] | None = THINK  # reasoning block markers, None where reasoning is not a block
    variant: str = ""  # a spelling within the format (mistral "list" or "args"; deepseek "r1" or "v3.1")

    def parser(
        self, *, reasoning: bool = True, starts_in_thinking: bool = False, tools: list[dict] | None = None
    ) -> ReplyParser:
        """A fresh streaming parser. `starts_in_thinking`: the prompt opened the reasoning block itself (see
        generation_prompt_opens_thinking). `tools` lets formats that write arguments as text (qwen3_coder)
        type them by the tools' schemas."""
        cls = HarmonyParser if self.name == "harmony" else ReplyParser
        return cls(self, reasoning=reasoning, starts_in_thinking=starts_in_thinking, tools=tools)

    def call_grammar(
        self,
        tools: list[dict],
        *,
        parallel: bool,
        named: str | None = None,
        token_ids: Mapping[str, int] | None = None,
    ) -> str:
        """llguidance Lark grammar for a reply that is exactly one call (or one or more, `parallel`) of one of
        `tools` (only `named`, if given), its arguments valid against that tool's parameter schema.
        `token_ids` maps markers that are special tokens in the model's vocabulary to their ids (Mistral's
        "[TOOL_CALLS]", "[ARGS]"), so the grammar asks for the token rather than its spelling.
        NotImplementedError for formats without one."""
        return grammar.call_grammar(self, tools, parallel=parallel, named=named, token_ids=token_ids)

    def trigger(self) -> str | None:
        """The text that starts a call in free text ("<tool_call>"), None where there is none a grammar can
        start from (a bare JSON object, special-token markers)."""
        return self.start if self.name in ("hermes", "generic") else None

    def call_body_grammar(self, tools: list[dict]) -> str:
        """llguidance Lark grammar for what follows trigger(): one call's body through its closing marker."""
        return grammar.call_body_grammar(self, tools)


HERMES = ToolFormat("hermes", "<tool_call>", "</tool_call>")
GENERIC = ToolFormat("generic", "<tool_call>", "</tool_call>")
QWEN3_CODER = ToolFormat("qwen3_coder", "<tool_call>", "</tool_call>")
LLAMA3 = ToolFormat("llama3")
MISTRAL = ToolFormat("mistral", "[TOOL_CALLS]", think=("[THINK]", "[/THINK]"), variant="list")
MISTRAL_ARGS = ToolFormat("mistral", "[TOOL_CALLS]", think=("[THINK]", "[/THINK]"), variant="args")
HARMONY = ToolFormat("harmony", think=None)
DEEPSEEK = ToolFormat("deepseek", DEEPSEEK_CALLS_BEGIN, DEEPSEEK_CALLS_END, variant="v3.1")
DEEPSEEK_R1 = ToolFormat("deepseek", DEEPSEEK_CALLS_BEGIN, DEEPSEEK_CALLS_END, variant="r1")
KIMI = ToolFormat("kimi", KIMI_CALLS_BEGIN, KIMI_CALLS_END)
GRANITE = ToolFormat("granite", "<|tool_call|>")
FIREFUNCTION = ToolFormat("firefunction", "functools")

FORMATS = {
    f.name: f for f in (HERMES, GENERIC, QWEN3_CODER, LLAMA3, MISTRAL, HARMONY, DEEPSEEK, KIMI, GRANITE, FIREFUNCTION)
}


def detect_format(template_source: str | None) -> ToolFormat:
    """The tool format a chat template's Jinja source uses, found by its markers; GENERIC for None or a
    template without tool syntax. The checks go from the most specific markers to the least."""
    src = template_source or ""
    if "<|channel|>" in src:
        return HARMONY
    if "tool▁call▁begin" in src:
        return DEEPSEEK_R1 if "'<｜tool▁sep｜>' + tool['function']['name']" in src else DEEPSEEK
    if "<|tool_calls_section_begin|>" in src:
        return KIMI
    if "[TOOL_CALLS]" in src:
        return MISTRAL_ARGS if "[ARGS]" in src else MISTRAL
    if "<|tool_call|>" in src:
        return GRANITE
    if "<tool_call>" in src:
        return QWEN3_CODER if "<function=" in src else HERMES
    if "functools[" in src:
        return FIREFUNCTION
    if "<|python_tag|>" in src or ('"parameters"' in src and "<|start_header_id|>" in src):
        return LLAMA3
    return GENERIC


_TOOLS_VARIABLE = re.compile(r"\b(?:custom_)?tools\b")


def template_supports_tools(template_source: str | None) -> bool:
    """Whether the template places `tools` in the prompt itself (it reads the `tools` variable)."""
    return bool(template_source) and _TOOLS_VARIABLE.search(template_source) is not None


_OPEN_THINKING = (("<think>", "</think>"), ("[THINK]", "[/THINK]"))
HARMONY_ANALYSIS_OPEN = "<|channel|>analysis<|message|>"


def generation_prompt_opens_thinking(prompt_text: str) -> bool:
    """Whether the rendered prompt ends inside an open reasoning block (`...<|im_start|>assistant\\n<think>\\n`),
    so the reply starts with reasoning and only its closing marker will appear."""
    tail = prompt_text.rstrip()
    if tail.endswith(HARMONY_ANALYSIS_OPEN):
        return True
    return any(tail.endswith(opening) for opening, _ in _OPEN_THINKING)


def parse_reply(
    fmt: ToolFormat, text: str, *, reasoning: bool = True, starts_in_thinking: bool = False
) -> tuple[str, list[ToolCall], str | None]:
    """(content text with calls and thinking removed, the calls, the reasoning text or None)."""
    parser = fmt.parser(reasoning=reasoning, starts_in_thinking=starts_in_thinking)
    events = parser.feed(text) + parser.finish()
    content = "".join(e.text for e in events if e.kind == "text")
    thoughts = [e.text for e in events if e.kind == "reasoning"]
    calls = [e.call for e in events if e.kind == "tool_call"]
    return content, calls, "\n\n".join(thoughts) if thoughts else None
