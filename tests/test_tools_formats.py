"""Tool-call formats: replies as the models write them parsed into text, reasoning and calls (whole and
streamed in any pieces), malformed calls passed on as text with a warning, format detection on the real chat
templates, the generic prompt for template-less models, and grammars checked with llguidance on SmolLM2's
tokenizer. No model runs; the oracle for each format is its chat template's own syntax (shared fixtures)."""

from __future__ import annotations

import json
import logging
import random

import pytest

from conftest import fixtures_dir
from pellucid.tools import (
    GENERIC,
    Event,
    detect_format,
    generation_prompt_opens_thinking,
    generic_tools_prompt,
    messages_for_generic,
    parse_reply,
    template_supports_tools,
)
from pellucid.tools.formats import (
    DEEPSEEK,
    DEEPSEEK_R1,
    FIREFUNCTION,
    GRANITE,
    HARMONY,
    HERMES,
    KIMI,
    LLAMA3,
    MISTRAL,
    MISTRAL_ARGS,
    QWEN3_CODER,
)

TEMPLATES = fixtures_dir() / "chat_templates"  # ../shared/fixtures, else the copy in tests/fixtures

WEATHER = {"city": "Paris", "unit": "celsius"}
NESTED = {
    "query": {"filters": [{"field": "name", "op": "=", "value": 'say "hi"\\n'}], "limit": 3},
    "tags": ["ü", "日本"],
}

# (format, reply, content, [(name, arguments, id or None)], reasoning, parser options)
CASES = [
    # Hermes / Qwen: one block per call
    (
        HERMES,
        '<tool_call>\n{"name": "get_weather", "arguments": {"city": "Paris", "unit": "celsius"}}\n</tool_call>',
        "",
        [("get_weather", WEATHER, None)],
        None,
        {},
    ),
    (
        HERMES,
        'Let me look.\n<tool_call>\n{"name": "get_weather", "arguments": {"city": "Paris", "unit": "celsius"}}\n'
        '</tool_call>\n<tool_call>\n{"name": "search", "arguments": '
        + json.dumps(NESTED, ensure_ascii=False)
        + "}\n</tool_call>",
        "Let me look.",
        [("get_weather", WEATHER, None), ("search", NESTED, None)],
        None,
        {},
    ),
    (
        HERMES,
        '<tool_call>{"name":"get_weather","arguments":"{\\"city\\": \\"Paris\\", \\"unit\\": \\"celsius\\"}"}</tool_call>',
        "",
        [("get_weather", WEATHER, None)],
        None,
        {},
    ),
    (
        HERMES,
        '<tool_call>\n  {\n    "name": "now",\n    "arguments": {}\n  }\n</tool_call>\n',
        "",
        [("now", {}, None)],
        None,
        {},
    ),
    (
        HERMES,
        '<think>\nThe user wants weather.\n</think>\n\n<tool_call>\n{"name": "get_weather", "arguments": '
        '{"city": "Paris", "unit": "celsius"}}\n</tool_call>',
        "",
        [("get_weather", WEATHER, None)],
        "The user wants weather.",
        {},
    ),
    (
        HERMES,
        "I should greet.\n</think>\n\nHello! 1 < 2 and <b>bold</b>.",
        "Hello! 1 < 2 and <b>bold</b>.",
        [],
        "I should greet.",
        {"starts_in_thinking": True},
    ),
    (HERMES, "<think>\nhmm\n</think>\n\nHi", "<think>\nhmm\n</think>\n\nHi", [], None, {"reasoning": False}),
    (
        HERMES,
        "Plain answer with a <tool> tag and <tool_cal typo.",
        "Plain answer with a <tool> tag and <tool_cal typo.",
        [],
        None,
        {},
    ),
    (
        QWEN3_CODER,
        "<tool_call>\n<function=get_weather>\n<parameter=city>\nParis\n</parameter>\n<parameter=days>\n3\n"
        "</parameter>\n</function>\n</tool_call>",
        "",
        [("get_weather", {"city": "Paris", "days": 3}, None)],
        None,
        {},
    ),
    (
        GENERIC,
        'Sure.\n<tool_call>\n{"name": "now", "arguments": {}}\n</tool_call>',
        "Sure.",
        [("now", {}, None)],
        None,
        {},
    ),
    # Llama 3.x: a bare JSON object, "parameters" (or "arguments"), maybe after <|python_tag|>
    (
        LLAMA3,
        '{"name": "get_weather", "parameters": {"city": "Paris", "unit": "celsius"}}',
        "",
        [("get_weather", WEATHER, None)],
        None,
        {},
    ),
    (
        LLAMA3,
        '<|python_tag|>{"type": "function", "name": "get_weather", "arguments": {"city": "Paris", "unit": "celsius"}}',
        "",
        [("get_weather", WEATHER, None)],
        None,
        {},
    ),
    (
        LLAMA3,
        'I will call two tools.\n{"name": "now", "parameters": {}}; {"name": "search", "parameters": '
        + json.dumps(NESTED, ensure_ascii=False)
        + "}",
        "I will call two tools.",
        [("now", {}, None), ("search", NESTED, None)],
        None,
        {},
    ),
    (
        LLAMA3,
        '<|python_tag|>brave_search.call(query="weather in \\"Paris\\"")',
        "",
        [("brave_search", {"query": 'weather in "Paris"'}, None)],
        None,
        {},
    ),
    (
        LLAMA3,
        'Here is JSON: {"name": "Bob", "age": 3} and {braces}.',
        'Here is JSON: {"name": "Bob", "age": 3} and {braces}.',
        [],
        None,
        {},
    ),
    # Mistral: a JSON list after [TOOL_CALLS] (Nemo), or NAME[ARGS]{...} per call (Small 3.2, Devstral)
    (
        MISTRAL,
        '[TOOL_CALLS][{"name": "get_weather", "arguments": {"city": "Paris", "unit": "celsius"}, "id": "abcDEF123"}, '
        '{"name": "now", "arguments": {}, "id": "xyzXYZ789"}]',
        "",
        [("get_weather", WEATHER, "abcDEF123"), ("now", {}, "xyzXYZ789")],
        None,
        {},
    ),
    (
        MISTRAL_ARGS,
        'Checking.[TOOL_CALLS]get_weather[ARGS]{"city": "Paris", "unit": "celsius"}[TOOL_CALLS]search[ARGS]'
        + json.dumps(NESTED),
        "Checking.",
        [("get_weather", WEATHER, None), ("search", NESTED, None)],
        None,
        {},
    ),
    (
        MISTRAL_ARGS,
        '[THINK]Weather needed.[/THINK][TOOL_CALLS]get_weather[CALL_ID]a1b2c3d4e[ARGS]{"city": "Paris", '
        '"unit": "celsius"}',
        "",
        [("get_weather", WEATHER, "a1b2c3d4e")],
        "Weather needed.",
        {},
    ),
    # harmony: analysis = reasoning, final = answer, commentary to=functions.X = a call
    (
        HARMONY,
        "<|channel|>analysis<|message|>User wants weather. Call the tool.<|end|><|start|>assistant<|channel|>"
        'commentary to=functions.get_weather <|constrain|>json<|message|>{"city": "Paris", "unit": "celsius"}<|call|>',
        "",
        [("get_weather", WEATHER, None)],
        "User wants weather. Call the tool.",
        {},
    ),
    (
        HARMONY,
        "<|channel|>analysis<|message|>Think.<|end|><|start|>assistant to=functions.now<|channel|>commentary json"
        "<|message|>{}",
        "",
        [("now", {}, None)],
        "Think.",
        {},
    ),
    (
        HARMONY,
        "<|channel|>analysis<|message|>Simple.<|end|><|start|>assistant<|channel|>final<|message|>It is 20 °C <b>.<|return|>",
        "It is 20 °C <b>.",
        [],
        "Simple.",
        {},
    ),
    (HARMONY, "Warm today.<|end|>", "Warm today.", [], None, {}),
    # DeepSeek V3/R1 (type, name, fenced JSON) and V3.1 (name, JSON)
    (
        DEEPSEEK_R1,
        "<think>\nNeed a tool.\n</think>\n\n<｜tool▁calls▁begin｜><｜tool▁call▁begin｜>function<｜tool▁sep｜>"
        'get_weather\n```json\n{"city": "Paris", "unit": "celsius"}\n```<｜tool▁call▁end｜>\n<｜tool▁call▁begin｜>function'
        "<｜tool▁sep｜>now\n```json\n{}\n```<｜tool▁call▁end｜><｜tool▁calls▁end｜>",
        "",
        [("get_weather", WEATHER, None), ("now", {}, None)],
        "Need a tool.",
        {},
    ),
    (
        DEEPSEEK,
        'Sure.<｜tool▁calls▁begin｜><｜tool▁call▁begin｜>get_weather<｜tool▁sep｜>{"city": "Paris", "unit": "celsius"}'
        "<｜tool▁call▁end｜><｜tool▁calls▁end｜>",
        "Sure.",
        [("get_weather", WEATHER, None)],
        None,
        {},
    ),
    # Kimi K2
    (
        KIMI,
        "Let me check.<|tool_calls_section_begin|><|tool_call_begin|>functions.get_weather:0<|tool_call_argument_begin|>"
        '{"city": "Paris", "unit": "celsius"}<|tool_call_end|><|tool_call_begin|>functions.now:1<|tool_call_argument_begin|>{}'
        "<|tool_call_end|><|tool_calls_section_end|>",
        "Let me check.",
        [("get_weather", WEATHER, "functions.get_weather:0"), ("now", {}, "functions.now:1")],
        None,
        {},
    ),
    # Granite, firefunction: a JSON list after a marker
    (
        GRANITE,
        '<|tool_call|>[{"name": "get_weather", "arguments": {"city": "Paris", "unit": "celsius"}}]',
        "",
        [("get_weather", WEATHER, None)],
        None,
        {},
    ),
    (
        FIREFUNCTION,
        ' functools[{"name": "get_weather", "arguments": {"city": "Paris", "unit": "celsius"}}]',
        "",
        [("get_weather", WEATHER, None)],
        None,
        {},
    ),
]
CASE_IDS = [f"{i}-{case[0].name}" for i, case in enumerate(CASES)]


def run_parser(fmt, pieces, **options) -> list[Event]:
    parser = fmt.parser(**options)
    events = []
    for piece in pieces:
        events += parser.feed(piece)
    return events + parser.finish()


def joined(events: list[Event]) -> list[tuple]:
    """Events with adjacent text (reasoning) pieces joined, calls as (name, arguments)."""
    out: list[tuple] = []
    for e in events:
        if e.kind == "tool_call":
            out.append(("tool_call", e.call.name, e.call.arguments))
        elif out and out[-1][0] == e.kind:
            out[-1] = (e.kind, out[-1][1] + e.text)
        else:
            out.append((e.kind, e.text))
    return out


@pytest.mark.parametrize("fmt, reply, content, calls, reasoning, options", CASES, ids=CASE_IDS)
def test_parse_reply(fmt, reply, content, calls, reasoning, options):
    got_content, got_calls, got_reasoning = parse_reply(fmt, reply, **options)
    assert got_content == content
    assert got_reasoning == reasoning
    assert [(c.name, c.arguments) for c in got_calls] == [(name, args) for name, args, _ in calls]
    for call, (_, _, call_id) in zip(got_calls, calls):
        if call_id is None:
            assert call.id.startswith("call_") and len(call.id) == 29 and call.id[5:].isalnum()
        else:
            assert call.id == call_id


@pytest.mark.parametrize("fmt, reply, content, calls, reasoning, options", CASES, ids=CASE_IDS)
def test_streaming_matches_whole(fmt, reply, content, calls, reasoning, options, caplog):
    # A streamed event can't be taken back, so equal joined events also mean no piece of a marker was ever
    # sent as text: it would still be in the joined text.
    whole = joined(run_parser(fmt, [reply], **options))
    assert joined(run_parser(fmt, list(reply), **options)) == whole  # every character boundary
    rng = random.Random(len(reply))
    for _ in range(5):
        cuts = sorted(rng.sample(range(1, len(reply)), min(6, len(reply) - 1)))
        pieces = [reply[a:b] for a, b in zip([0, *cuts], [*cuts, len(reply)])]
        assert joined(run_parser(fmt, pieces, **options)) == whole
    assert not [r for r in caplog.records if r.name == "pellucid.tools"]


def test_text_is_streamed_before_the_reply_ends():
    parser = HERMES.parser()
    assert joined(parser.feed("Hello wor")) == [("text", "Hello wor")]
    assert parser.feed("ld <tool_") == [Event("text", "ld")]  # " <tool_" might be a call's marker
    assert joined(parser.feed("box>!")) == [("text", " <tool_box>!")]
    assert parser.feed("<think>") == []
    assert joined(parser.feed("\nhm")) == [("reasoning", "hm")]


MALFORMED = [
    (HERMES, '<tool_call>\n{"name": "get_weather", "arguments": {"city": Paris}}\n</tool_call>'),  # bad JSON
    (HERMES, '<tool_call>\n{"name": "get_weather", "arguments": {"city": "Paris"}}'),  # never closed
    (HERMES, '<tool_call>\n{"tool": "get_weather"}\n</tool_call>'),  # no name
    (HERMES, '<tool_call>\n{"name": "f", "arguments": [1, 2]}\n</tool_call>'),  # arguments not an object
    (MISTRAL, '[TOOL_CALLS][{"name": "get_weather", "arguments": {"city": "Par'),  # cut off
    (MISTRAL_ARGS, "[TOOL_CALLS]get_weather{city: Paris}"),  # no [ARGS]
    (LLAMA3, '{"name": "get_weather", "parameters": {"city": "Paris"'),  # cut off
    (DEEPSEEK, "<｜tool▁calls▁begin｜><｜tool▁call▁begin｜>get_weather{}<｜tool▁call▁end｜><｜tool▁calls▁end｜>"),
    (
        KIMI,
        "<|tool_calls_section_begin|><|tool_call_begin|>functions.f:0<|tool_call_argument_begin|>{]<|tool_call_end|>",
    ),
    (HARMONY, "<|channel|>commentary to=functions.get_weather <|constrain|>json<|message|>{city<|call|>"),
]


@pytest.mark.parametrize("fmt, reply", MALFORMED, ids=[f"{i}-{m[0].name}" for i, m in enumerate(MALFORMED)])
def test_malformed_call_becomes_text_with_warning(fmt, reply, caplog):
    with caplog.at_level(logging.WARNING, logger="pellucid.tools"):
        content, calls, _ = parse_reply(fmt, "Before. " + reply)
    assert calls == []
    assert content.startswith("Before.") and reply.strip()[-4:] in content
    assert any(r.name == "pellucid.tools" and r.levelno == logging.WARNING for r in caplog.records)


def test_qwen3_coder_types_parameters_by_schema():
    tools = [{"type": "function", "function": {"name": "f", "parameters": {"properties": {"zip": {"type": "string"}}}}}]
    reply = "<tool_call>\n<function=f>\n<parameter=zip>\n01234\n</parameter>\n<parameter=n>\n5\n</parameter>\n</function>\n</tool_call>"
    parser = QWEN3_CODER.parser(tools=tools)
    events = parser.feed(reply) + parser.finish()
    assert events[0].call.arguments == {"zip": "01234", "n": 5}


def test_generation_prompt_opens_thinking():
    assert generation_prompt_opens_thinking("<|im_start|>assistant\n<think>\n")
    assert not generation_prompt_opens_thinking("<|im_start|>assistant\n<think>\n\n</think>\n\n")
    assert not generation_prompt_opens_thinking("<|im_start|>assistant\n")
    assert generation_prompt_opens_thinking("<|start|>assistant<|channel|>analysis<|message|>")


def test_reasoning_only_reply_with_open_thinking():
    assert parse_reply(HERMES, "still thinking when tokens ran out", starts_in_thinking=True) == (
        "",
        [],
        "still thinking when tokens ran out",
    )


# ---------------------------------------------------------------------------------------------------------
# Templates

EXPECTED_FORMATS = {
    "HuggingFaceTB-SmolLM3-3B": "generic",  # this template version has no tool syntax
    "Mistral-Small-3.2-24B-Instruct-2506": "mistral",
    "NousResearch-Hermes-3-Llama-3.1-8B-tool_use": "hermes",
    "Qwen-QwQ-32B": "hermes",
    "Qwen-Qwen2.5-7B-Instruct": "hermes",
    "Qwen-Qwen3-0.6B": "hermes",
    "Qwen3-Coder": "qwen3_coder",
    "deepseek-ai-DeepSeek-R1-Distill-Llama-8B": "deepseek",
    "deepseek-ai-DeepSeek-R1-Distill-Qwen-32B": "deepseek",
    "deepseek-ai-DeepSeek-V3.1": "deepseek",
    "fireworks-ai-llama-3-firefunction-v2": "firefunction",
    "google-gemma-2-2b-it": "generic",
    "ibm-granite-granite-3.3-2B-Instruct": "granite",
    "meetkai-functionary-medium-v3.2": "generic",  # its `>>>NAME\n{...}` syntax is not supported yet
    "meta-llama-Llama-3.1-8B-Instruct": "llama3",
    "meta-llama-Llama-3.2-3B-Instruct": "llama3",
    "meta-llama-Llama-3.3-70B-Instruct": "llama3",
    "microsoft-Phi-3.5-mini-instruct": "generic",
    "mistralai-Mistral-Nemo-Instruct-2407": "mistral",
    "moonshotai-Kimi-K2": "kimi",
    "openai-gpt-oss-120b": "harmony",
    "unsloth-mistral-Devstral-Small-2507": "mistral",
}


def test_detect_format_on_every_template():
    files = {p.stem: p.read_text(encoding="utf-8") for p in TEMPLATES.glob("*.jinja")}
    assert set(files) == set(EXPECTED_FORMATS), "a template was added or removed: list its expected format"
    got = {name: detect_format(source).name for name, source in files.items()}
    assert got == EXPECTED_FORMATS
    assert detect_format(files["mistralai-Mistral-Nemo-Instruct-2407"]).variant == "list"
    assert detect_format(files["unsloth-mistral-Devstral-Small-2507"]).variant == "args"
    assert detect_format(files["deepseek-ai-DeepSeek-R1-Distill-Qwen-32B"]).variant == "r1"
    assert detect_format(files["deepseek-ai-DeepSeek-V3.1"]).variant == "v3.1"
    assert detect_format(None) is GENERIC
    for name in ("google-gemma-2-2b-it", "microsoft-Phi-3.5-mini-instruct", "HuggingFaceTB-SmolLM3-3B"):
        assert not template_supports_tools(files[name])
    for name in ("Qwen-Qwen3-0.6B", "meta-llama-Llama-3.1-8B-Instruct", "openai-gpt-oss-120b", "moonshotai-Kimi-K2"):
        assert template_supports_tools(files[name])
    assert not template_supports_tools(None)


def test_template_renders_calls_the_parser_reads():
    """Round trip: an assistant message's tool call rendered by the model's own template is parsed back."""
    from pellucid.tokenizer.chat_template import ChatTemplate

    call = {"id": "abcDEF123", "type": "function", "function": {"name": "get_weather", "arguments": WEATHER}}
    messages = [{"role": "user", "content": "Weather?"}, {"role": "assistant", "content": "", "tool_calls": [call]}]
    for stem, header in [
        ("Qwen-Qwen2.5-7B-Instruct", "<|im_start|>assistant\n"),
        ("Qwen-Qwen3-0.6B", "<|im_start|>assistant\n"),  # with an empty <think></think> block
        ("Qwen3-Coder", "<|im_start|>assistant\n"),
        ("mistralai-Mistral-Nemo-Instruct-2407", "[/INST]"),
        ("Mistral-Small-3.2-24B-Instruct-2506", "[/INST]"),
        ("unsloth-mistral-Devstral-Small-2507", "[/INST]"),
        ("moonshotai-Kimi-K2", "<|im_assistant|>assistant<|im_middle|>"),
        ("meta-llama-Llama-3.1-8B-Instruct", "<|start_header_id|>assistant<|end_header_id|>\n\n"),
        ("openai-gpt-oss-120b", "<|start|>assistant"),
        ("deepseek-ai-DeepSeek-R1-Distill-Qwen-32B", "<｜Assistant｜>"),
        ("deepseek-ai-DeepSeek-V3.1", "<｜Assistant｜>"),
    ]:
        source = (TEMPLATES / f"{stem}.jinja").read_text(encoding="utf-8")
        prompt = ChatTemplate(source, "<s>", "</s>").render(messages, add_generation_prompt=False)
        reply = prompt.split("Weather?", 1)[1].split(header, 1)[1]
        for end in ("<|im_end|>", "</s>", "<|eot_id|>", "<｜end▁of▁sentence｜>"):
            reply = reply.split(end)[0]
        content, calls, _ = parse_reply(detect_format(source), reply)
        assert (content, [(c.name, c.arguments) for c in calls]) == ("", [("get_weather", WEATHER)]), (stem, reply)


# ---------------------------------------------------------------------------------------------------------
# Template-less models

TOOLS = [
    {
        "type": "function",
        "function": {
            "name": "get_weather",
            "description": "Current weather in a city.",
            "parameters": {
                "type": "object",
                "properties": {"city": {"type": "string"}, "unit": {"enum": ["celsius", "fahrenheit"]}},
                "required": ["city"],
            },
        },
    },
    {"type": "function", "function": {"name": "now", "description": "The time."}},
]


def test_generic_tools_prompt_lists_tools_and_syntax():
    prompt = generic_tools_prompt(TOOLS)
    assert '"name": "get_weather"' in prompt and "Current weather in a city." in prompt
    assert json.dumps(TOOLS[0]["function"]["parameters"]) in prompt
    assert "<tool_call>" in prompt and "</tool_call>" in prompt
    # the example in the instructions is itself a call the generic parser reads
    example = prompt[prompt.index("<tool_call>\n") : prompt.index("\n</tool_call>") + len("\n</tool_call>")]
    assert [c.name for c in parse_reply(GENERIC, example)[1]] == ["tool_name"]


def test_messages_for_generic_folds_tool_traffic_into_text():
    from pellucid.tokenizer.chat_template import plain_chat_template

    messages = [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": "Weather in Paris and the time?"},
        {
            "role": "assistant",
            "content": None,
            "tool_calls": [
                {
                    "id": "call_1",
                    "type": "function",
                    "function": {"name": "get_weather", "arguments": json.dumps(WEATHER)},
                },
                {"id": "call_2", "type": "function", "function": {"name": "now", "arguments": {}}},
            ],
        },
        {"role": "tool", "tool_call_id": "call_1", "content": '{"temp": 21}'},
        {"role": "tool", "tool_call_id": "call_2", "content": "12:00"},
    ]
    folded = messages_for_generic(messages, TOOLS)
    assert [m["role"] for m in folded] == ["system", "user", "assistant", "user"]
    assert folded[0]["content"].startswith("Be brief.\n\n# Tools")
    assert parse_reply(GENERIC, folded[2]["content"])[1][0].arguments == WEATHER
    assert '"name": "get_weather", "tool_call_id": "call_1"' in folded[3]["content"]
    assert folded[3]["content"].count("<tool_response>") == 2
    assert messages[2]["content"] is None  # the input is not changed
    prompt = plain_chat_template().render(folded)
    assert "<tool_call>" in prompt and "<tool_response>" in prompt and prompt.endswith("Assistant:")
    assert messages_for_generic([{"role": "user", "content": "hi"}], TOOLS)[0]["role"] == "system"
    assert messages_for_generic([{"role": "user", "content": "hi"}], None) == [{"role": "user", "content": "hi"}]


# ---------------------------------------------------------------------------------------------------------
# Grammars, compiled by llguidance against SmolLM2's tokenizer


@pytest.fixture(scope="module")
def lltok():
    llguidance = pytest.importorskip("llguidance")
    from pellucid.store import resolve
    from pellucid.tokenizer import load_tokenizer

    try:
        tok = load_tokenizer(resolve("smollm2-135m"))
    except Exception as e:  # the default model not pulled on this machine
        pytest.skip(f"smollm2-135m is not available: {e}")
    special = [i for i in range(tok.vocab_size) if tok.is_special(i)]
    special_set = set(special)

    class Wrapper:
        eos_token_id = min(tok.eot_ids)
        bos_token_id = None
        tokens = [(b"\xff" if i in special_set else b"") + tok.token_bytes(i) for i in range(tok.vocab_size)]
        special_token_ids = special

        def __call__(self, s):
            return tok.encode(s.decode() if isinstance(s, bytes) else s, add_special=False)

    return tok, llguidance.LLTokenizer(llguidance.TokenizerWrapper(Wrapper()))


def accepts(lltok, grammar: str, text: str) -> bool:
    from llguidance import LLMatcher

    tok, lt = lltok
    matcher = LLMatcher(lt, grammar)
    assert not matcher.is_error(), matcher.get_error()
    return matcher.consume_tokens(tok.encode(text, add_special=False)) and matcher.is_accepting()


def hermes_call(name, arguments):
    return f"<tool_call>\n{json.dumps({'name': name, 'arguments': arguments})}\n</tool_call>"


def test_hermes_grammar(lltok):
    one = HERMES.call_grammar(TOOLS, parallel=False)
    assert accepts(lltok, one, hermes_call("get_weather", {"city": "Paris", "unit": "celsius"}))
    assert accepts(lltok, one, hermes_call("now", {}))
    assert not accepts(lltok, one, hermes_call("get_wether", {"city": "Paris"}))  # no such tool
    assert not accepts(lltok, one, hermes_call("get_weather", {"city": 3}))  # wrong type
    assert not accepts(lltok, one, hermes_call("get_weather", {"unit": "celsius"}))  # required missing
    assert not accepts(lltok, one, hermes_call("now", {}) + "\n" + hermes_call("now", {}))  # one call only
    many = GENERIC.call_grammar(TOOLS, parallel=True)
    assert accepts(lltok, many, hermes_call("now", {}) + "\n" + hermes_call("get_weather", {"city": "Oslo"}))
    named = HERMES.call_grammar(TOOLS, parallel=False, named="now")
    assert not accepts(lltok, named, hermes_call("get_weather", {"city": "Paris"}))
    assert accepts(lltok, named, hermes_call("now", {}))
    with pytest.raises(ValueError, match="not one of the tools"):
        HERMES.call_grammar(TOOLS, parallel=False, named="nope")


def test_hermes_trigger_and_body_grammar(lltok):
    assert HERMES.trigger() == "<tool_call>" and GENERIC.trigger() == "<tool_call>"
    body = HERMES.call_body_grammar(TOOLS)
    assert accepts(lltok, body, hermes_call("now", {}).removeprefix("<tool_call>"))
    assert not accepts(lltok, body, hermes_call("later", {}).removeprefix("<tool_call>"))


def test_llama3_grammar(lltok):
    grammar = LLAMA3.call_grammar(TOOLS, parallel=False)
    assert accepts(lltok, grammar, json.dumps({"name": "get_weather", "parameters": {"city": "Paris"}}))
    assert not accepts(lltok, grammar, json.dumps({"name": "get_weather", "parameters": {"city": ["Paris"]}}))
    assert LLAMA3.trigger() is None


def test_mistral_grammars(lltok):
    tok, _ = lltok
    listed = MISTRAL.call_grammar(TOOLS, parallel=True)
    call = {"name": "get_weather", "arguments": {"city": "Paris"}}
    assert accepts(lltok, listed, "[TOOL_CALLS]" + json.dumps([call, {"name": "now", "arguments": {}}]))
    assert not accepts(
        lltok, listed, "[TOOL_CALLS]" + json.dumps([{"name": "now", "arguments": {"x": {"city": 1}}}]) + "x"
    )
    assert not accepts(lltok, MISTRAL.call_grammar(TOOLS, parallel=False), "[TOOL_CALLS]" + json.dumps([call, call]))
    named = MISTRAL_ARGS.call_grammar(TOOLS, parallel=True)
    assert accepts(lltok, named, '[TOOL_CALLS]get_weather[ARGS]{"city": "Paris"}[TOOL_CALLS]now[ARGS]{}')
    assert not accepts(lltok, named, '[TOOL_CALLS]now[ARGS]{"city": "Paris"}[TOOL_CALLS]get_weather[ARGS]{}')
    # a marker that is a special token in the model's vocabulary is asked for as that token
    special = next(i for i in range(tok.vocab_size) if tok.is_special(i) and i not in tok.eot_ids)
    grammar = MISTRAL_ARGS.call_grammar(TOOLS, parallel=False, token_ids={"[TOOL_CALLS]": special})
    assert f"<[{special}]>" in grammar
    from llguidance import LLMatcher

    matcher = LLMatcher(lltok[1], grammar)
    tokens = [special, *tok.encode('now[ARGS]{"a": 1}', add_special=False)]
    assert matcher.consume_tokens(tokens) and matcher.is_accepting()
    assert not accepts(lltok, grammar, '[TOOL_CALLS]now[ARGS]{"a": 1}')  # the spelling is not the token


def test_formats_without_grammar_say_so():
    for fmt in (DEEPSEEK,):
        with pytest.raises(NotImplementedError, match="unconstrained"):
            fmt.call_grammar(TOOLS, parallel=False)


def test_harmony_grammar_with_its_markers_as_special_tokens(smollm2_path):
    """GPT-OSS's markers are special tokens; SmolLM2's vocabulary has none of them, so five of its own special
    tokens stand in for them (the grammar only sees ids)."""
    from pellucid.engine.constrain import Constraint
    from pellucid.tokenizer import load_tokenizer

    tok = load_tokenizer(smollm2_path)
    ids = {"<|channel|>": 1, "<|message|>": 3, "<|constrain|>": 5, "<|end|>": 6, "<|start|>": 7}
    grammar = HARMONY.call_grammar(TOOLS, parallel=True, token_ids=ids)

    def accepted(seq: list[int]) -> bool:
        constraint = Constraint(grammar, tok)
        for token in seq:
            if not constraint.allowed()[token]:
                return False
            constraint.accept(token)
        return constraint.accepting

    def enc(text: str) -> list[int]:
        return tok.encode(text, add_special=False)

    name = TOOLS[0]["function"]["name"]
    call = [1, *enc(f"commentary to=functions.{name} "), 5, *enc("json"), 3, *enc(json.dumps(WEATHER))]
    assert accepted(call)
    thought = [1, *enc("analysis"), 3, *enc("The user wants <data>.\nCall it."), 6, 7, *enc("assistant")]
    assert accepted(thought + call)
    assert not accepted([1, *enc("commentary to=functions.nope "), 5])
    assert not accepted([1, *enc(f"commentary to=functions.{name} "), 5, *enc("json"), 3, *enc("[1]")])


def test_tool_arguments_are_closed_unless_the_schema_says_otherwise():
    from pellucid.tools.grammar import closed

    schema = {
        "type": "object",
        "properties": {
            "properties": {"type": "object", "properties": {"a": {"type": "string"}}},  # a property named so
            "open": {"type": "object", "properties": {}, "additionalProperties": True},
            "rows": {"type": "array", "items": {"type": "object", "properties": {"b": {"enum": [{"properties": 1}]}}}},
        },
    }
    out = closed(schema)
    assert out["additionalProperties"] is False
    assert out["properties"]["properties"]["additionalProperties"] is False
    assert "additionalProperties" not in out["properties"]["properties"]["properties"]  # the mapping is not a schema
    assert out["properties"]["open"]["additionalProperties"] is True
    assert out["properties"]["rows"]["items"]["additionalProperties"] is False
    assert out["properties"]["rows"]["items"]["properties"]["b"]["enum"] == [{"properties": 1}]
    assert "additionalProperties" not in schema  # a copy


@pytest.mark.parametrize(
    "fmt_name, reply",
    [
        ("granite", '<|tool_call|>[{"name": "get_weather", "arguments": {"city": "Paris", "unit": "celsius"}}]'),
        ("kimi", '<|tool_calls_section_begin|><|tool_call_begin|>functions.get_weather:0<|tool_call_argument_begin|>'
                 '{"city": "Paris", "unit": "celsius"}<|tool_call_end|><|tool_calls_section_end|>'),
    ],
)  # fmt: skip
def test_granite_and_kimi_grammars_accept_their_calls_and_the_parser_reads_them(fmt_name, reply, lltok):
    from pellucid.tools import FORMATS

    fmt = FORMATS[fmt_name]
    grammar = fmt.call_grammar(TOOLS, parallel=True)  # markers as text here: SmolLM2 has none of them
    assert accepts(lltok, grammar, reply)
    assert not accepts(lltok, grammar, reply.replace("get_weather", "get_wether"))
    content, calls, _ = parse_reply(fmt, reply)
    assert content == "" and [(c.name, c.arguments) for c in calls] == [("get_weather", WEATHER)]
