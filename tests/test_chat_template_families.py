"""The real chat templates of the dense families, rendered by pellucid and by transformers, byte for byte.

The templates are llama.cpp's collection (tests/chat_templates/llamacpp/, see its README). The oracle is live:
transformers' own `apply_chat_template(..., tokenize=False)` on the same template text, called through a
tokenizer object that carries the model's BOS/EOS (transformers hands the template `special_tokens_map`,
and drops message keys whose value is None, before rendering). Both sides get the same clock, so templates
that print today's date (`strftime_now`) render the same text.

Every template renders every conversation of `conversations()`, with and without the generation prompt, with
tool-call arguments in the shape that template reads (a dict, or the JSON string that some templates
concatenate), and once more for each set of variables its clients pass (FAMILIES: enable_thinking,
builtin_tools, reasoning_effort, documents...). A conversation a template refuses (Gemma 2 has no system
role; Llama 3.1 takes one tool call per message) must be refused by both, with the template's own message:
REFUSALS lists each one, so a template that stops rendering is a failure, not a pass.

A single missing newline changes the tokens the model sees, so renders are compared exactly.
"""

from __future__ import annotations

import copy
import functools
import json
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path

import pytest

from pellucid.errors import TemplateError
from pellucid.tokenizer.chat_template import ChatTemplate

chat_template_utils = pytest.importorskip("transformers.utils.chat_template_utils")

TEMPLATES = Path(__file__).parent / "chat_templates" / "llamacpp"
NOW = datetime(2025, 3, 4, 15, 30)  # the clock both renderers read (strftime_now)


@dataclass(frozen=True)
class Family:
    """How a model's clients call its template: its special tokens and the variables they pass."""

    bos: str | None  # None: the model has no BOS token (transformers then passes no `bos_token`)
    eos: str
    arguments: str = "dict"  # tool-call arguments as a "dict" or as a JSON "string" (templates that do `+ arguments`)
    call_content: str | None = None  # content beside tool calls: OpenAI's null, or "" where the template reads it
    variables: dict = field(default_factory=dict)  # passed to every render
    variants: dict[str, dict] = field(default_factory=dict)  # more variable sets, each rendered too
    always_tools: bool = False  # the template is a tool-use template: every conversation comes with tools


# Tools with the schema features the templates translate (enums, defaults, limits, examples, nested objects,
# arrays, type unions, oneOf), so their TypeScript/XML/JSON renderings are exercised.
TOOLS = [
    {
        "type": "function",
        "function": {
            "name": "get_weather",
            "description": "Get the current weather in a city",
            "parameters": {
                "type": "object",
                "properties": {
                    "city": {"type": "string", "description": "City name, e.g. Zürich"},
                    "unit": {"type": "string", "enum": ["celsius", "fahrenheit"], "default": "celsius"},
                    "days": {"type": "integer", "description": "Days ahead.", "minimum": 0, "maximum": 7},
                },
                "required": ["city"],
            },
        },
    },
    {
        "type": "function",
        "function": {
            "name": "search_docs",
            "description": 'Search the documentation <and> return "hits"',
            "parameters": {
                "type": "object",
                "properties": {
                    "query": {"type": "string", "examples": ["rope scaling", "kv cache"]},
                    "filters": {
                        "type": "object",
                        "properties": {"lang": {"type": "string"}, "year": {"type": "integer"}},
                        "required": ["lang"],
                    },
                    "tags": {"type": "array", "items": {"type": "string"}},
                    "limit": {"type": ["integer", "string"], "default": 10},
                    "sort": {"oneOf": [{"type": "string", "description": "a field"}, {"type": "number"}]},
                },
                "required": ["query"],
            },
        },
    },
]
LLAMA3 = ("<|begin_of_text|>", "<|eot_id|>")
DEEPSEEK = ("<｜begin▁of▁sentence｜>", "<｜end▁of▁sentence｜>")
QWEN_EOS = "<|im_end|>"
LLAMA31_VARIANTS = {
    "builtin_tools": {"builtin_tools": ["brave_search", "wolfram_alpha"]},
    "tools_in_system": {"tools_in_user_message": False},
    "custom_tools": {"custom_tools": TOOLS[:1]},
}
GRANITE_DOCUMENTS = [
    {"doc_id": 1, "title": "Weather", "text": "Zürich is mild in spring."},
    {"doc_id": "2", "title": "Climate", "text": "Average March high: 11 °C."},
]

FAMILIES = {
    "HuggingFaceTB-SmolLM3-3B": Family(None, QWEN_EOS, variants={"no_think": {"enable_thinking": False}}),
    "Mistral-Small-3.2-24B-Instruct-2506": Family("<s>", "</s>"),
    "NousResearch-Hermes-3-Llama-3.1-8B-tool_use": Family("<|begin_of_text|>", QWEN_EOS, always_tools=True),
    "Qwen-QwQ-32B": Family(None, QWEN_EOS, call_content="", variants={"think": {"enable_thinking": True}}),
    "Qwen-Qwen2.5-7B-Instruct": Family(None, QWEN_EOS),
    "Qwen-Qwen3-0.6B": Family(None, QWEN_EOS, call_content="", variants={"no_think": {"enable_thinking": False}}),
    "Qwen3-Coder": Family(None, QWEN_EOS),
    "deepseek-ai-DeepSeek-R1-Distill-Llama-8B": Family(*DEEPSEEK, arguments="string", call_content=""),
    "deepseek-ai-DeepSeek-R1-Distill-Qwen-32B": Family(
        *DEEPSEEK, call_content="", variants={"think": {"enable_thinking": True}}
    ),
    "deepseek-ai-DeepSeek-V3.1": Family(*DEEPSEEK, variants={"thinking": {"thinking": True}}),
    "fireworks-ai-llama-3-firefunction-v2": Family(
        *LLAMA3,
        # its server passes the tools as a JSON string and the time as text (the template reads both)
        variables={"functions": json.dumps([t["function"] for t in TOOLS], indent=2), "datetime": "2025-03-04 15:30"},
    ),
    "google-gemma-2-2b-it": Family("<bos>", "<eos>"),
    "ibm-granite-granite-3.3-2B-Instruct": Family(
        "<|end_of_text|>",
        "<|end_of_text|>",
        call_content="",
        variants={
            "thinking": {"thinking": True},
            "documents": {"documents": GRANITE_DOCUMENTS, "controls": {"citations": True, "hallucinations": True}},
        },
    ),
    "meetkai-functionary-medium-v3.2": Family(*LLAMA3, arguments="string"),
    # Llama 3.1/3.3 print "26 Jul 2024" when no date_string is given; pellucid passes today's date then (see
    # test_llama31_date_defaults_to_today), so clients that want transformers' text pass it
    "meta-llama-Llama-3.1-8B-Instruct": Family(
        *LLAMA3, variables={"date_string": "26 Jul 2024"}, variants=LLAMA31_VARIANTS
    ),
    "meta-llama-Llama-3.2-3B-Instruct": Family(*LLAMA3, variants={"tools_in_system": {"tools_in_user_message": False}}),
    "meta-llama-Llama-3.3-70B-Instruct": Family(
        *LLAMA3, variables={"date_string": "26 Jul 2024"}, variants=LLAMA31_VARIANTS
    ),
    "microsoft-Phi-3.5-mini-instruct": Family("<s>", "<|endoftext|>", call_content=""),
    "mistralai-Mistral-Nemo-Instruct-2407": Family("<s>", "</s>"),
    "moonshotai-Kimi-K2": Family("[BOS]", "[EOS]"),
    "openai-gpt-oss-120b": Family(
        "<|startoftext|>",
        "<|return|>",
        variants={
            "high_effort": {
                "reasoning_effort": "high",
                "builtin_tools": ["browser", "python"],
                "model_identity": "You are a test model.",
            }
        },
    ),
    "unsloth-mistral-Devstral-Small-2507": Family("<s>", "</s>", call_content=""),
}

WEATHER_ARGS = {"city": "Zürich", "days": 2}
SEARCH_ARGS = {"query": "kv cache", "tags": ["engine", "memory"], "filters": {"lang": "en"}}


def _call(call_id: str, name: str, arguments: dict, shape: str) -> dict:
    """An OpenAI-style tool call; `shape` "string" sends the arguments as JSON text, as the OpenAI API does."""
    args = json.dumps(arguments, ensure_ascii=False) if shape == "string" else arguments
    return {"id": call_id, "type": "function", "function": {"name": name, "arguments": args}}


def conversations(family: Family) -> dict[str, list[dict]]:
    """The conversations every template renders, tool calls written as `family`'s clients write them."""
    shape, call_content = family.arguments, family.call_content
    return {
        "user": [{"role": "user", "content": "Hello!"}],
        "system": [
            {"role": "system", "content": "You are a terse assistant."},
            {"role": "user", "content": "Name three primary colors."},
        ],
        "multi_turn": [
            {"role": "system", "content": "Be brief. Answer in English."},
            {"role": "user", "content": "Hi"},
            {"role": "assistant", "content": "  Hello! How can I help?  "},
            {"role": "user", "content": "And in German? Ä ö ü, 日本語."},
            {"role": "assistant", "content": "Hallo!\n"},
        ],
        # A tool call (with the reasoning that led to it) and its result, last.
        "tools": [
            {"role": "user", "content": "What's the weather in Zürich?"},
            {
                "role": "assistant",
                "content": call_content,
                "reasoning_content": "The user wants the weather; call get_weather.",
                "tool_calls": [_call("call12345", "get_weather", WEATHER_ARGS, shape)],
            },
            {"role": "tool", "tool_call_id": "call12345", "name": "get_weather", "content": '{"temp_c": 21}'},
        ],
        # Two calls at once, their results, an answer and a new turn.
        "parallel_tools": [
            {"role": "system", "content": "Use tools when needed."},
            {"role": "user", "content": "Weather in Zürich, and docs on the KV cache?"},
            {
                "role": "assistant",
                "content": call_content,
                "tool_calls": [
                    _call("call12345", "get_weather", WEATHER_ARGS, shape),
                    _call("call67890", "search_docs", SEARCH_ARGS, shape),
                ],
            },
            {"role": "tool", "tool_call_id": "call12345", "name": "get_weather", "content": '{"temp_c": 21}'},
            {"role": "tool", "tool_call_id": "call67890", "name": "search_docs", "content": "3 hits"},
            {"role": "assistant", "content": "21 °C; the docs have 3 hits."},
            {"role": "user", "content": "Thanks!"},
        ],
        # A Llama 3.1 built-in tool (brave_search): rendered as <|python_tag|> code when builtin_tools lists it.
        "builtin_tool": [
            {"role": "user", "content": "Search the web for pellucid."},
            {
                "role": "assistant",
                "content": call_content,
                "tool_calls": [_call("call00001", "brave_search", {"query": "pellucid"}, shape)],
            },
            {"role": "tool", "tool_call_id": "call00001", "content": "pellucid: a local LLM runtime."},
        ],
        # Reasoning as a separate field (Qwen3/DeepSeek `reasoning_content`; gpt-oss reads it as `thinking`).
        "reasoning": [
            {"role": "user", "content": "What is 2+2?"},
            {"role": "assistant", "reasoning_content": "Simple arithmetic: 2+2=4.", "content": "4"},
            {"role": "user", "content": "And 3+3?"},
            {"role": "assistant", "thinking": "\n3+3=6.\n", "content": "6"},
        ],
        # Reasoning inline in the content, as R1-style models write it (QwQ/R1 templates cut it off).
        "reasoning_inline": [
            {"role": "user", "content": "What is 2+2?"},
            {"role": "assistant", "content": "<think>\nSimple arithmetic.\n</think>\n\n4"},
            {"role": "user", "content": "And 3+3?"},
        ],
        # Content as a list of parts (text and an image), as multimodal clients send it.
        "content_parts": [
            {"role": "system", "content": [{"type": "text", "text": "Describe images."}]},
            {
                "role": "user",
                "content": [
                    {"type": "text", "text": "What is this?"},
                    {"type": "image_url", "image_url": {"url": "https://example.com/cat.png"}},
                ],
            },
        ],
    }


CONVERSATION_NAMES = list(conversations(Family(None, "")))

# Templates that add `content` to a string, so content given as a list of parts cannot render (their clients
# flatten the parts to text first).
TEXT_ONLY = [
    "NousResearch-Hermes-3-Llama-3.1-8B-tool_use",
    "Qwen-QwQ-32B",
    "Qwen-Qwen2.5-7B-Instruct",
    "Qwen-Qwen3-0.6B",
    "Qwen3-Coder",
    "deepseek-ai-DeepSeek-R1-Distill-Llama-8B",
    "deepseek-ai-DeepSeek-R1-Distill-Qwen-32B",
    "deepseek-ai-DeepSeek-V3.1",
    "ibm-granite-granite-3.3-2B-Instruct",
    "meetkai-functionary-medium-v3.2",
    "microsoft-Phi-3.5-mini-instruct",
    "mistralai-Mistral-Nemo-Instruct-2407",
    "openai-gpt-oss-120b",
]
LLAMA_3 = ["meta-llama-Llama-3.1-8B-Instruct", "meta-llama-Llama-3.2-3B-Instruct", "meta-llama-Llama-3.3-70B-Instruct"]
# Conversations a template refuses: (template, conversation) -> the text of the error transformers raises.
# Every other combination must render. pellucid must raise TemplateError containing the same text.
REFUSALS = {
    ("google-gemma-2-2b-it", "system"): "System role not supported",
    ("google-gemma-2-2b-it", "multi_turn"): "System role not supported",
    ("google-gemma-2-2b-it", "parallel_tools"): "System role not supported",
    ("google-gemma-2-2b-it", "content_parts"): "System role not supported",
    ("google-gemma-2-2b-it", "tools"): "Conversation roles must alternate user/assistant/user/assistant/...",
    ("google-gemma-2-2b-it", "builtin_tool"): "Conversation roles must alternate user/assistant/user/assistant/...",
    **{(stem, "parallel_tools"): "This model only supports single tool-calls at once!" for stem in LLAMA_3},
    **{(stem, "content_parts"): 'can only concatenate str (not "list") to str' for stem in TEXT_ONLY},
    ("HuggingFaceTB-SmolLM3-3B", "content_parts"): "'list object' has no attribute 'replace'",
}


def render_transformers(stem: str, messages: list[dict], add_generation_prompt: bool, variables: dict) -> str:
    family = FAMILIES[stem]
    return _oracle_tokenizer(family.bos, family.eos).apply_chat_template(
        copy.deepcopy(messages),
        tools=copy.deepcopy(TOOLS) if _with_tools(stem, messages) else None,
        chat_template=_source(stem),
        add_generation_prompt=add_generation_prompt,
        tokenize=False,
        **copy.deepcopy(variables),
    )


def render_pellucid(stem: str, messages: list[dict], add_generation_prompt: bool, variables: dict) -> str:
    return _pellucid_template(stem).render(
        messages,
        tools=TOOLS if _with_tools(stem, messages) else None,
        add_generation_prompt=add_generation_prompt,
        now=NOW,
        **variables,
    )


def _with_tools(stem: str, messages: list[dict]) -> bool:
    return FAMILIES[stem].always_tools or any("tool_calls" in m for m in messages)


@functools.cache
def _source(stem: str) -> str:
    return (TEMPLATES / f"{stem}.jinja").read_text(encoding="utf-8")


@functools.cache
def _pellucid_template(stem: str) -> ChatTemplate:
    family = FAMILIES[stem]
    return ChatTemplate(_source(stem), family.bos or "", family.eos)


@functools.cache
def _oracle_tokenizer(bos: str | None, eos: str):
    """A one-word tokenizer whose only job is to carry the special tokens apply_chat_template passes on."""
    from tokenizers import Tokenizer
    from tokenizers.models import WordLevel
    from transformers import PreTrainedTokenizerFast

    return PreTrainedTokenizerFast(
        tokenizer_object=Tokenizer(WordLevel({"<unk>": 0}, unk_token="<unk>")), bos_token=bos, eos_token=eos
    )


class _FixedClock(datetime):
    @classmethod
    def now(cls, tz=None):
        return NOW


@pytest.fixture(autouse=True)
def fixed_transformers_clock(monkeypatch):
    """transformers' strftime_now reads `datetime.now()` from its module at call time."""
    monkeypatch.setattr(chat_template_utils, "datetime", _FixedClock)


def _cases():
    for stem, family in FAMILIES.items():
        for variant in ("", *family.variants):
            for name in CONVERSATION_NAMES:
                for add_generation_prompt in (True, False):
                    case_id = f"{stem}-{variant or 'default'}-{name}-{'gen' if add_generation_prompt else 'nogen'}"
                    yield pytest.param(stem, variant, name, add_generation_prompt, id=case_id)


def test_every_fixture_template_is_covered():
    assert sorted(FAMILIES) == sorted(p.stem for p in TEMPLATES.glob("*.jinja"))


@pytest.mark.parametrize("stem, variant, name, add_generation_prompt", list(_cases()))
def test_family_template_matches_transformers(stem, variant, name, add_generation_prompt):
    family = FAMILIES[stem]
    messages = conversations(family)[name]
    variables = {**family.variables, **family.variants.get(variant, {})}
    try:
        expected = render_transformers(stem, messages, add_generation_prompt, variables)
    except Exception as e:  # the template refused these messages (raise_exception, or a failing expression)
        refusal = REFUSALS.get((stem, name))
        assert refusal is not None, f"transformers cannot render {name} with {stem}: {type(e).__name__}: {e}"
        assert refusal in str(e)
        with pytest.raises(TemplateError) as raised:
            render_pellucid(stem, messages, add_generation_prompt, variables)
        assert refusal in str(raised.value)
        return
    assert (stem, name) not in REFUSALS, "transformers renders a conversation listed in REFUSALS"
    assert render_pellucid(stem, messages, add_generation_prompt, variables) == expected


def test_reasoning_reaches_the_templates_that_print_it():
    """The comparisons above are not vacuous for reasoning: each spelling of it reaches the template that reads
    the other one (Qwen3 reads `reasoning_content`, gpt-oss `thinking`)."""
    qwen3 = "Qwen-Qwen3-0.6B"
    reasoning = conversations(FAMILIES[qwen3])["reasoning"]  # the last assistant turn gives `thinking`
    assert "<think>\n3+3=6.\n</think>\n\n6" in render_pellucid(qwen3, reasoning, False, {})
    gpt_oss = "openai-gpt-oss-120b"
    tools = conversations(FAMILIES[gpt_oss])["tools"]  # the tool call gives `reasoning_content`
    analysis = "<|channel|>analysis<|message|>The user wants the weather; call get_weather.<|end|>"
    assert analysis in render_pellucid(gpt_oss, tools, True, {})


# --- the Jinja environment itself, feature by feature --------------------------------------------------------

X = {"b": "Zürich <&>", "a": [1, 2.5, None, True], "nested": {"z": 1, "y": {"k": "v"}}, "pair": (1, 2), "ids": {1: "a"}}
FEATURE_MESSAGES = [
    {"role": "system", "content": "  Be brief, please.  "},
    {"role": "user", "content": "Hi there, World"},
    {"role": "assistant", "content": None, "reasoning": "why", "tool_calls": [{"function": {"name": "f"}}]},
]
FEATURES = {
    "tojson": "{{ x | tojson }}|{{ x | tojson(indent=2) }}|{{ x | tojson(indent='\t') }}",
    "tojson options": "{{ x | tojson(ensure_ascii=true, sort_keys=true, separators=(',', ':')) }}|{{ x | tojson(true, 4) }}",
    "tojson scalars": "{{ none | tojson }}|{{ '<a href=\"x\">&\\'</a>' | tojson }}|{{ [1e100, 1.0, -0.5] | tojson }}",
    "messages as transformers passes them": "{{ messages | tojson }}|{{ messages }}",
    "python values print as python": "{{ none }}|{{ true }}|{{ x.pair }}|{{ x.ids }}|{{ 1 / 3 }}|{{ 1e20 }}|{{ x.missing }}",
    "None and undefined": "{{ x.missing is none }}|{{ none is none }}|{{ x.get('missing') }}|{{ none | default('d') }}"
    "|{{ none | default('d', true) }}|{{ nothing | default('d') }}|{{ nothing | length }}|{{ 'a' ~ none ~ nothing }}",
    "string methods": "{{ messages[1].content.split(',') }}|{{ 'a  b'.split() }}|{{ 'a,b,c'.split(',', 1) }}"
    "|{{ 'x</think>y'.split('</think>')[-1] }}|{{ 'hello'.startswith('he') }}|{{ 'hello'.endswith(('lo', 'x')) }}"
    "|{{ '\\nx\\n'.lstrip('\\n') }}|{{ messages[0].content.strip() }}|{{ 'aaa'.replace('a', 'b', 2) }}"
    "|{{ 'ab cd'.title() }}|{{ 'ß'.upper() }}|{{ 'a-b'.partition('-') }}|{{ ', '.join(['a', 'b']) }}"
    "|{{ '{} {x}'.format(1, x=2) }}|{{ '%s-%05.1f' % ('a', 3.14159) }}",
    "filters": "{{ messages | map(attribute='role') | join(',') }}|{{ messages | selectattr('role', 'equalto', 'user')"
    " | list | length }}|{{ [3, 1, 2] | sort }}|{{ [1, 2, 2] | unique | list }}|{{ x | items | list }}|{{ x | dictsort }}"
    "|{{ messages[0].content | trim }}|{{ 'a\\nb' | indent(2, true) }}|{{ '%.2f' | format(1.234) }}|{{ 2.567 | round(1) }}",
    "tests": "{{ 'a' is string }}|{{ x is mapping }}|{{ 'a' is iterable }}|{{ x.pair is sequence }}|{{ nothing is defined }}"
    "|{{ 1.0 is float }}|{{ messages[2].tool_calls is defined }}|{{ messages[2].content is defined }}",
    "loop controls and variables": "{% for i in range(6) if i != 4 %}{% if i == 1 %}{% continue %}{% endif %}"
    "{% if i == 5 %}{% break %}{% endif %}{{ i }}{{ loop.index }}{{ loop.first }}{{ loop.last }}{{ loop.length }}"
    "{{ loop.previtem }}{{ loop.nextitem }}{{ loop.cycle('a', 'b') }};{% else %}empty{% endfor %}"
    "{% for n in [{'c': [{'c': []}]}] recursive %}[{{ loop.depth }}{{ loop(n.c) }}]{% endfor %}",
    "namespace, dict, macros, call blocks": "{% set ns = namespace(a=1) %}{% set ns.a = ns.a + 1 %}{{ ns.a }}{{ ns }}"
    "|{{ dict(a=1) | tojson }}|{% macro f(a, b='d') %}{{ a }}{{ b }}{{ varargs }}{{ kwargs }}{% endmacro %}{{ f(1, 2, 3, z=4) }}"
    "|{% macro w() %}<{{ caller() }}>{% endmacro %}{% call w() %}in{% endcall %}",
    "generation tag": "{% for m in messages %}{% generation %}{% set inner = m.role %}{{ m.content }}{% endgeneration %}"
    "{% endfor %}|{% generation %}{% set leaked = 'no' %}{% endgeneration %}{{ leaked }}",
    "whitespace control": "  {% if true %}\n   a\n  {% endif %}\n{%- if true -%}  b  {%- endif -%}\n  c\n{# c #}\n"
    "{% set s %}\n  x {{ 1 }}\n{% endset %}[{{ s }}]{% filter upper %}abc{% endfilter %}",
    "strftime_now": "{{ strftime_now('%Y-%m-%d %H:%M %A %B %d %b %Y') }}",
}


@pytest.mark.parametrize("name", sorted(FEATURES))
def test_jinja_feature_matches_transformers(name):
    expected = _oracle_tokenizer("<s>", "</s>").apply_chat_template(
        copy.deepcopy(FEATURE_MESSAGES), chat_template=FEATURES[name], tokenize=False, x=X
    )
    got = ChatTemplate(FEATURES[name], "<s>", "</s>").render(
        FEATURE_MESSAGES, add_generation_prompt=False, now=NOW, x=X
    )
    assert got == expected


@pytest.mark.parametrize(
    "source, message",
    [
        ("{{ raise_exception('no ' ~ messages[0].role ~ ' role') }}", "no system role"),
        ("{% set ns = namespace(_hidden=1) %}", "may not start with '_'"),
        ("{% set ns = namespace() %}{% set ns._hidden = 1 %}", "may not start with '_'"),
        ("{{ [].append(1) }}", "not allowed"),
        ("{{ nothing | tojson }}", "not JSON serializable"),
    ],
)
def test_what_transformers_refuses_pellucid_refuses(source, message):
    with pytest.raises(Exception):  # noqa: B017 (transformers raises several types; pellucid one: TemplateError)
        _oracle_tokenizer("<s>", "</s>").apply_chat_template(FEATURE_MESSAGES, chat_template=source, tokenize=False)
    with pytest.raises(TemplateError, match=message):
        ChatTemplate(source).render(FEATURE_MESSAGES)


def test_llama31_date_defaults_to_today():
    """The one deliberate difference: with no `date_string`, transformers leaves Llama 3.1/3.3 at the template's
    fallback "26 Jul 2024"; pellucid passes today's date, as llama.cpp does (Meta's own prompt format states
    the real date). Passing date_string gives transformers' text (the family test above does)."""
    stem = "meta-llama-Llama-3.1-8B-Instruct"
    messages = conversations(FAMILIES[stem])["user"]
    assert "Today Date: 26 Jul 2024\n" in render_transformers(stem, messages, True, {})
    assert "Today Date: 04 Mar 2025\n" in render_pellucid(stem, messages, True, {})
    assert render_pellucid(stem, messages, True, {"date_string": "26 Jul 2024"}) == render_transformers(
        stem, messages, True, {}
    )


@pytest.mark.parametrize("stem", ["meta-llama-Llama-3.1-8B-Instruct", "mistralai-Mistral-Nemo-Instruct-2407"])
def test_tool_result_as_data_matches_transformers(stem):
    """A tool result may be a dict: Llama 3.x writes it as JSON, Mistral Nemo reads its `content` key."""
    messages = conversations(FAMILIES[stem])["tools"]
    messages[-1] = {**messages[-1], "content": {"content": 21, "unit": "°C"}}
    variables = FAMILIES[stem].variables
    assert render_pellucid(stem, messages, True, variables) == render_transformers(stem, messages, True, variables)
