"""A chat turn with tools through real chat templates (tools/turn.py): the plan renders, its grammar compiles
on a real vocabulary, and the reader takes calls and reasoning out of replies in each template's own syntax.

The templates are the models' own (../shared/fixtures/chat_templates); the vocabulary is the default
model's (a grammar's markers are text there, as they are for any model whose vocabulary lacks them).
"""

from __future__ import annotations

import pytest

from conftest import fixtures_dir
from pellucid.engine.constrain import Constraint
from pellucid.errors import TemplateError
from pellucid.tokenizer import load_tokenizer
from pellucid.tokenizer.chat_template import ChatTemplate, fold_system_message
from pellucid.tools.turn import ToolChoice, ToolsError, check_tools, parse_tool_choice, plan_turn

WEATHER = {"type": "function", "function": {"name": "get_weather", "description": "Weather in a city",
           "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}}}  # fmt: skip
HISTORY = [
    {"role": "system", "content": "You are helpful."},
    {"role": "user", "content": "Weather in Paris?"},
    {"role": "assistant", "content": "", "tool_calls": [
        {"id": "call_abcdefghijklmnopqrstuvwx", "type": "function",
         "function": {"name": "get_weather", "arguments": {"city": "Paris"}}}]},
    {"role": "tool", "tool_call_id": "call_abcdefghijklmnopqrstuvwx", "name": "get_weather", "content": "18C"},
    {"role": "assistant", "content": "It is 18C in Paris."},
    {"role": "user", "content": "And in Rome?"},
]  # fmt: skip

# template file -> (the format the plan uses, a reply in that model's syntax calling get_weather for Rome)
CASES = {
    "Qwen-Qwen3-0.6B.jinja": ("hermes", '<think>\nThe user wants Rome.\n</think>\n\n<tool_call>\n{"name": "get_weather", "arguments": {"city": "Rome"}}\n</tool_call>'),
    "Qwen-Qwen2.5-7B-Instruct.jinja": ("hermes", '<tool_call>\n{"name": "get_weather", "arguments": {"city": "Rome"}}\n</tool_call>'),
    "NousResearch-Hermes-3-Llama-3.1-8B-tool_use.jinja": ("hermes", '<tool_call>\n{"name": "get_weather", "arguments": {"city": "Rome"}}\n</tool_call>'),
    "meta-llama-Llama-3.1-8B-Instruct.jinja": ("llama3", '{"name": "get_weather", "parameters": {"city": "Rome"}}'),
    "mistralai-Mistral-Nemo-Instruct-2407.jinja": ("mistral", '[TOOL_CALLS][{"name": "get_weather", "arguments": {"city": "Rome"}, "id": "a1b2c3d4e"}]'),
    "openai-gpt-oss-120b.jinja": ("harmony", '<|channel|>analysis<|message|>Need Rome.<|end|><|start|>assistant<|channel|>commentary to=functions.get_weather <|constrain|>json<|message|>{"city": "Rome"}<|call|>'),
    "HuggingFaceTB-SmolLM3-3B.jinja": (None, None),  # whatever it detects: it must render and plan
    "google-gemma-2-2b-it.jinja": ("generic", '<tool_call>\n{"name": "get_weather", "arguments": {"city": "Rome"}}\n</tool_call>'),
}  # fmt: skip


@pytest.fixture(scope="module")
def tokenizer(smollm2_path):
    return load_tokenizer(smollm2_path)


def template(name: str) -> ChatTemplate:
    return ChatTemplate((fixtures_dir() / "chat_templates" / name).read_text(), "<s>", "</s>")


@pytest.mark.parametrize("name", sorted(CASES))
@pytest.mark.parametrize("mode", ["auto", "required"])
def test_a_turn_renders_constrains_and_reads(name, mode, tokenizer):
    fmt_name, reply = CASES[name]
    chat = template(name)
    plan = plan_turn(chat.source, HISTORY, tools=check_tools([WEATHER]), choice=ToolChoice(mode))
    if fmt_name is not None:
        assert plan.format.name == fmt_name
    try:
        prompt = chat.render(plan.messages, tools=plan.template_tools)
    except TemplateError:  # a template that refuses a system role: LLM.render_chat folds it, so do we here
        prompt = chat.render(fold_system_message(plan.messages), tools=plan.template_tools)
    assert "get_weather" in prompt, "the tools (or the history's call) must reach the prompt"
    plan.after_render(prompt)
    constraint = plan.constraint(tokenizer)
    if mode == "required" and plan.format.name in ("hermes", "generic", "llama3", "mistral"):
        assert isinstance(constraint, Constraint), plan.notes
    if reply is None:
        return
    reader = plan.reader()
    for piece in (reply[i : i + 7] for i in range(0, len(reply), 7)):
        reader.feed(piece)
    reader.finish()
    assert [(c.name, c.arguments) for c in reader.calls] == [("get_weather", {"city": "Rome"})]
    assert "get_weather" not in reader.text
    if "<think>" in reply or "analysis" in reply:
        assert reader.reasoning.strip() in ("The user wants Rome.", "Need Rome.")


def test_a_required_generic_call_is_accepted_by_its_grammar(tokenizer):
    plan = plan_turn(None, HISTORY[:2], tools=check_tools([WEATHER]), choice=ToolChoice("required"), parallel=False)
    constraint = plan.constraint(tokenizer)
    text = '<tool_call>\n{"name": "get_weather", "arguments": {"city": "Rome"}}\n</tool_call>'
    for token in tokenizer.encode(text, add_special=False):
        assert constraint.allowed()[token], f"token {token} of a valid call was masked"
        constraint.accept(token)
    assert constraint.finished


def test_tool_choice_shapes():
    assert parse_tool_choice(None, True) == ToolChoice("auto")
    assert parse_tool_choice(None, False) == ToolChoice("none")
    assert parse_tool_choice("any", True) == ToolChoice("required")
    assert parse_tool_choice({"type": "function", "function": {"name": "f"}}, True) == ToolChoice("named", "f")
    assert parse_tool_choice({"type": "tool", "name": "f"}, True) == ToolChoice("named", "f")
    with pytest.raises(ToolsError, match="tool_choice must be"):
        parse_tool_choice("sometimes", True)
    with pytest.raises(ToolsError, match="named 'f'|two tools"):
        check_tools([WEATHER, {"name": "get_weather"}])


@pytest.mark.parametrize("parallel", [True, False])
def test_without_parallel_calls_a_second_call_is_dropped_and_ends_the_reply(parallel):
    """`auto` has no grammar holding the reply to one call: the reader keeps the first, drops any other (and the
    repeat watch ends the reply there), as parallel_tool_calls false / disable_parallel_tool_use ask."""
    plan = plan_turn(None, HISTORY[:2], tools=check_tools([WEATHER]), choice=ToolChoice("auto"), parallel=parallel)
    reply = "".join(f'<tool_call>\n{{"name": "get_weather", "arguments": {{"city": "{c}"}}}}\n</tool_call>\n'
                    for c in ("Rome", "Oslo"))  # fmt: skip
    reader = plan.reader()
    reader.feed(reply)
    reader.finish()
    assert [call.arguments["city"] for call in reader.calls] == (["Rome", "Oslo"] if parallel else ["Rome"])
    watch = plan.call_watch()
    ended = [watch(line) for line in reply.splitlines(keepends=True)]  # 3 lines a call; the 6th closes the 2nd
    assert ended == [False] * 6 if parallel else ended == [False] * 5 + [True]
