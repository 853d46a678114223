"""Chat templates: exact renders against llama.cpp's fixture and transformers' apply_chat_template, template
discovery in GGUF and HF folders, message validation, and hostile templates stopped quickly.

The real-world templates in tests/chat_templates/ are the published ones (Llama 3.1 8B Instruct, Qwen2.5
Instruct, Gemma 3 IT, Mistral v3 with tools, Phi-3.5 mini); expected.json holds what transformers renders
for them (regenerate with tests/chat_templates/make_expected.py). Renders must match exactly: a single
missing newline changes the tokens the model sees.
"""

import json
import time
from datetime import datetime
from pathlib import Path

import pytest

from pellucid.errors import TemplateError
from pellucid.tokenizer.chat_template import (
    NO_TEMPLATE_WARNING,
    ChatTemplate,
    RenderLimits,
    chat_template_for,
    plain_chat_template,
)

TEMPLATES = Path(__file__).parent / "chat_templates"
EXPECTED = json.loads((TEMPLATES / "expected.json").read_text())
HI = [{"role": "user", "content": "hi"}]


def render_case(key: str) -> str:
    stem, case = key.split("/")
    bos, eos = EXPECTED["special_tokens"][stem]
    conversation = EXPECTED["conversations"][case]
    template = ChatTemplate((TEMPLATES / f"{stem}.jinja").read_text(), bos, eos)
    return template.render(
        conversation["messages"],
        tools=conversation.get("tools"),
        add_generation_prompt=conversation.get("add_generation_prompt", True),
        date_string="26 Jul 2024",  # transformers passes no date; the Llama 3.1 template then uses this one
    )


# --- the default models -----------------------------------------------------------------------------------


def test_smollm2_renders_llama_cpp_prompt_text(smollm2_path, reference):
    template = chat_template_for(smollm2_path)
    assert template is not None
    assert (template.bos_token, template.eos_token) == ("<|im_start|>", "<|im_end|>")
    chats = reference["smollm2-135m-instruct-q4_1"]["chat"]
    assert chats, "the fixture has no chat cases"
    for chat in chats:
        assert template.render(chat["messages"], add_generation_prompt=True) == chat["prompt_text"]


def test_smollm2_prompt_tokenizes_to_llama_cpp_ids(smollm2_path, reference):
    try:
        from pellucid.tokenizer import load_tokenizer
    except ImportError:
        pytest.skip("pellucid.tokenizer.load_tokenizer has not landed yet (tokenizer is written concurrently)")
    tokenizer = load_tokenizer(smollm2_path)
    template = chat_template_for(smollm2_path)
    for chat in reference["smollm2-135m-instruct-q4_1"]["chat"]:
        text = template.render(chat["messages"])
        assert tokenizer.encode(text, add_special=True, parse_special=True) == chat["prompt_ids"]


def test_base_model_has_no_template(gemma3_path, minilm_path):
    assert chat_template_for(gemma3_path) is None
    assert chat_template_for(minilm_path) is None


def test_plain_fallback_for_base_models():
    messages = [
        {"role": "system", "content": "Be brief. "},
        {"role": "user", "content": "Hi"},
        {"role": "assistant", "content": "Hello!"},
        {"role": "user", "content": [{"type": "text", "text": "Bye"}]},
    ]
    plain = plain_chat_template()
    assert plain.render(messages) == "System: Be brief.\nUser: Hi\nAssistant: Hello!\nUser: Bye\nAssistant:"
    assert plain.render(messages[:3], add_generation_prompt=False) == "System: Be brief.\nUser: Hi\nAssistant: Hello!\n"
    assert "base model" in NO_TEMPLATE_WARNING


# --- real-world templates against transformers --------------------------------------------------------------


@pytest.mark.parametrize("key", sorted(EXPECTED["expected"]))
def test_real_template_matches_transformers(key):
    assert render_case(key) == EXPECTED["expected"][key]


def test_real_templates_against_live_transformers():
    """Re-derive the expectations when transformers is installed (it is a test oracle, not a dependency)."""
    chat_utils = pytest.importorskip("transformers.utils.chat_template_utils")
    for key in EXPECTED["expected"]:
        stem, case = key.split("/")
        bos, eos = EXPECTED["special_tokens"][stem]
        conversation = EXPECTED["conversations"][case]
        rendered, _ = chat_utils.render_jinja_template(
            conversations=[conversation["messages"]],
            tools=conversation.get("tools"),
            chat_template=(TEMPLATES / f"{stem}.jinja").read_text(),
            add_generation_prompt=conversation.get("add_generation_prompt", True),
            bos_token=bos,
            eos_token=eos,
            date_string="26 Jul 2024",
        )
        assert render_case(key) == rendered[0], key


def test_template_exceptions_become_template_errors():
    gemma = ChatTemplate((TEMPLATES / "gemma-3-it.jinja").read_text(), "<bos>", "<eos>")
    with pytest.raises(TemplateError, match="roles must alternate"):
        gemma.render([{"role": "user", "content": "a"}, {"role": "user", "content": "b"}])


def test_tojson_writes_like_json_dumps_without_html_escaping():
    template = ChatTemplate(
        "{{ x | tojson }}|{{ x | tojson(indent=2) }}|{{ x | tojson(sort_keys=true, separators=(',', ':')) }}"
    )
    x = {"b": "Zürich <&>", "a": [1, 2]}
    assert template.render(HI, x=x) == (
        json.dumps(x, ensure_ascii=False)
        + "|"
        + json.dumps(x, ensure_ascii=False, indent=2)
        + "|"
        + json.dumps(x, ensure_ascii=False, sort_keys=True, separators=(",", ":"))
    )


def test_clock_variables_follow_now():
    template = ChatTemplate("{{ date_string }}|{{ strftime_now('%Y-%m-%d') }}")
    assert template.render(HI, now=datetime(2025, 3, 4)) == "04 Mar 2025|2025-03-04"
    assert template.render(HI, now=datetime(2025, 3, 4), date_string="26 Jul 2024") == "26 Jul 2024|2025-03-04"


def test_jinja_extensions_used_by_real_templates():
    template = ChatTemplate(
        "{% for m in messages %}{% if loop.index > 1 %}{% break %}{% endif %}{% generation %}{{ m.content }}"
        "{% endgeneration %}{% endfor %}"
    )
    assert template.render([{"role": "user", "content": "a"}, {"role": "assistant", "content": "b"}]) == "a"


def test_syntax_error_is_reported_with_its_line():
    with pytest.raises(TemplateError, match=r"does not parse \(line 2\)"):
        ChatTemplate("ok\n{% for %}")


# --- finding templates ------------------------------------------------------------------------------------


def test_gguf_named_templates():
    metadata = {
        "tokenizer.chat_template": "default:{{ messages[0].content }}",
        "tokenizer.chat_templates": ["tool_use"],
        "tokenizer.chat_template.tool_use": "tools:{{ bos_token }}",
        "tokenizer.ggml.tokens": ["<unk>", "<s>", "</s>"],
        "tokenizer.ggml.bos_token_id": 1,
        "tokenizer.ggml.eos_token_id": 2,
    }
    assert chat_template_for(metadata).render(HI) == "default:hi"
    assert chat_template_for(metadata, "tool_use").render(HI) == "tools:<s>"
    with pytest.raises(TemplateError, match=r"no chat template named 'rag' \(it has: default, tool_use\)"):
        chat_template_for(metadata, "rag")


def test_hf_folder_templates(tmp_path):
    config = {
        "bos_token": {"content": "<s>", "lstrip": False},
        "eos_token": "</s>",
        "chat_template": [
            {"name": "default", "template": "cfg:{{ bos_token }}{{ eos_token }}"},
            {"name": "rag", "template": "rag"},
        ],
    }
    (tmp_path / "tokenizer_config.json").write_text(json.dumps(config))
    assert chat_template_for(tmp_path).render(HI) == "cfg:<s></s>"
    assert chat_template_for(tmp_path, "rag").render(HI) == "rag"
    (tmp_path / "chat_template.jinja").write_text("jinja file")  # transformers prefers the separate file
    assert chat_template_for(tmp_path).render(HI) == "jinja file"


def test_missing_source_is_a_clear_error(tmp_path):
    with pytest.raises(TemplateError, match="neither a GGUF file nor a model folder"):
        chat_template_for(tmp_path / "nope")


# --- validating messages ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "messages, match",
    [
        ("hello", "must be a list"),
        ([], "empty"),
        (["hi"], r"messages\[0\] is a str"),
        ([{"content": "hi"}], r"messages\[0\] has no 'role'"),
        ([{"role": "user", "content": 3}], r"messages\[0\]\['content'\] must be a string"),
        ([{"role": "user"}], r"messages\[0\] \(user\) has no 'content'"),
        ([{"role": "user", "content": [{"text": "x"}]}], r"content part dict with a 'type'"),
        ([{"role": "user", "content": "ok", "meta": object()}], r"messages\[0\]\['meta'\] has type object"),
    ],
)
def test_malformed_messages_are_named(messages, match):
    with pytest.raises(TemplateError, match=match):
        ChatTemplate("{{ messages }}").render(messages)


def test_tool_call_messages_may_omit_content_and_inputs_are_not_modified():
    messages = [
        {"role": "user", "content": "weather?"},
        {"role": "assistant", "tool_calls": [{"function": {"name": "f", "arguments": {}}}]},
    ]
    snapshot = json.dumps(messages)
    assert ChatTemplate("{{ messages | length }}").render(messages) == "2"
    assert json.dumps(messages) == snapshot


# --- hostile templates ------------------------------------------------------------------------------------

HOSTILE = {
    "dunder attribute": "{{ ''.__class__ }}",
    "subclasses": "{{ ''.__class__.__mro__[1].__subclasses__() }}",
    "function globals": "{{ raise_exception.__globals__ }}",
    "dunder via attr filter": "{{ '' | attr('__class__') }}",
    "dunder via format": "{{ '{0.__class__}'.format('') }}",
    "huge range": "{% for i in range(10**9) %}{% endfor %}",
    "nested loops": "{% for i in range(100000) %}{% for j in range(100000) %}{% endfor %}{% endfor %}",
    "string multiplication": "{{ 'x' * 10**10 }}",
    "big integer power": "{{ 2 ** 100000 }}",
    "macro recursion": "{% macro f(n) %}{{ f(n + 1) }}{% endmacro %}{{ f(0) }}",
    "exponential macros": "{% macro f(n) %}{% if n %}{{ f(n - 1) }}{{ f(n - 1) }}{% endif %}{% endmacro %}{{ f(40) }}",
    "huge output": "{% for i in range(100000) %}{{ 'x' * 1000000 }}{% endfor %}",
    "doubling with ~": "{% set ns = namespace(s='x') %}{% for i in range(64) %}{% set ns.s = ns.s ~ ns.s %}{% endfor %}",
    "doubling in set blocks": (
        "{% macro d(s, n) %}{% if n %}{% set t %}{{ s }}{{ s }}{% endset %}{{ d(t, n - 1) }}{% endif %}{% endmacro %}"
        "{{ d('x', 60) }}"
    ),
    "literal text in a macro loop": (
        "{% macro m() %}{% for i in range(100000) %}{% for j in range(100000) %}" + "x" * 100 + "{% endfor %}"
        "{% endfor %}{% endmacro %}{{ m() | length }}"
    ),
    "str.center": "{{ 'x'.center(10**9) }}",
    "replace amplification": "{% set s = 'x' * 1000000 %}{{ s.replace('x', s) }}",
    "printf width": "{{ '%1000000000d' % 1 }}",
    "repr of shared references": "{% set big = 'x' * 1000000 %}{{ [big] * 1000000 }}",
    "tojson of shared references": "{% set big = 'x' * 1000000 %}{{ ([big] * 1000000) | tojson }}",
    "indent filter": "{% set s = '\\n' * 1000000 %}{{ s | indent(1000000) }}",
    "int.to_bytes": "{{ (1).to_bytes(1000000000, 'big') }}",
    "lipsum": "{{ lipsum(10**9) }}",
}


@pytest.mark.parametrize("name", sorted(HOSTILE))
def test_hostile_template_fails_fast_with_template_error(name):
    start = time.monotonic()
    with pytest.raises(TemplateError):
        ChatTemplate(HOSTILE[name]).render(HI)
    assert time.monotonic() - start < 2.0, "hostile templates must be stopped well under 2 s"


def test_limits_are_configurable_and_named_in_the_error():
    tight = RenderLimits(max_chars=1000)
    with pytest.raises(TemplateError, match="1,000 limit"):
        ChatTemplate("{{ messages[0].content }}", limits=tight).render([{"role": "user", "content": "x" * 2000}])
    slow = "{% for i in range(100000) %}{% for j in range(100000) %}{% endfor %}{% endfor %}"
    start = time.monotonic()
    with pytest.raises(TemplateError, match="more than 0.2 s"):
        ChatTemplate(slow, limits=RenderLimits(seconds=0.2, max_iterations=10**9)).render(HI)
    assert time.monotonic() - start < 1.0


def test_big_legit_conversations_render():
    qwen = ChatTemplate((TEMPLATES / "qwen2.5-instruct.jinja").read_text())
    long_chat = [{"role": ("user", "assistant")[i % 2], "content": "hello world " * 50} for i in range(2000)]
    assert qwen.render(long_chat).count("<|im_start|>") == 2002  # system + 2000 + generation prompt
    assert len(qwen.render([{"role": "user", "content": "x" * 3_000_000}])) > 3_000_000
