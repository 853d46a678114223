"""Tool calls and structured output from the Python API and `pellucid run`, on the default model.

SmolLM2's template has no tool syntax, so it gets the generic format (tools/generic.py); with a required or
named tool choice the reply is constrained to a valid call, which is what these tests rely on. The model's
wisdom is not under test: the calls' shape and validity are.
"""

from __future__ import annotations

import json

import jsonschema
import pytest

import pellucid
from pellucid.tools import ToolCall
from pellucid.tools.turn import ToolsError
from test_cli import assert_user_error, run

WEATHER = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "Get the current weather in a city",
        "parameters": {
            "type": "object",
            "properties": {"city": {"type": "string"}, "unit": {"enum": ["celsius", "fahrenheit"]}},
            "required": ["city"],
            "additionalProperties": False,
        },
    },
}
TIME = {"name": "get_time", "description": "The time in a timezone", "parameters": {  # a bare function works too
    "type": "object", "properties": {"timezone": {"type": "string"}}, "required": ["timezone"]}}  # fmt: skip
ASK = [{"role": "user", "content": "What is the weather in Paris?"}]


@pytest.fixture(scope="module")
def llm(smollm2_path):
    return pellucid.load(str(smollm2_path), ctx=2048)


def test_a_required_call_is_parsed_and_valid(llm):
    g = llm.chat(ASK, tools=[WEATHER, TIME], tool_choice="required", temperature=1.0, seed=3, max_tokens=120).result()
    assert g.tool_calls and g.stats.stop_reason == "stop", (g.text, g.stats)
    for call in g.tool_calls:
        assert isinstance(call, ToolCall) and call.id.startswith("call_")
        schema = (WEATHER["function"] if call.name == "get_weather" else TIME)["parameters"]
        jsonschema.validate(call.arguments, schema)
    assert "<tool_call>" not in g.text
    assert g.as_dict()["tool_calls"][0]["name"] == g.tool_calls[0].name


def test_a_named_tool_is_the_one_called(llm):
    g = llm.chat(ASK, tools=[WEATHER, TIME], tool_choice="get_time", parallel_tool_calls=False,
                 temperature=0, max_tokens=120).result()  # fmt: skip
    assert [c.name for c in g.tool_calls] == ["get_time"]
    jsonschema.validate(g.tool_calls[0].arguments, TIME["parameters"])


def test_calls_stream_in_chunks(llm):
    chunks = list(llm.chat(ASK, tools=[WEATHER], tool_choice="required", temperature=0, max_tokens=120))
    calls = [c for chunk in chunks for c in chunk.tool_calls or []]
    assert calls and calls[0].name == "get_weather"
    assert "".join(chunk.text for chunk in chunks).strip() == ""


def test_tool_choice_none_and_a_tool_result_in_history(llm):
    first = llm.chat(ASK, tools=[WEATHER], tool_choice="required", parallel_tool_calls=False, temperature=0,
                     max_tokens=120).result()  # fmt: skip
    call = first.tool_calls[0]
    history = ASK + [
        {"role": "assistant", "content": "", "tool_calls": [
            {"id": call.id, "type": "function", "function": {"name": call.name, "arguments": call.arguments}}]},
        {"role": "tool", "tool_call_id": call.id, "content": json.dumps({"temperature_c": 18, "sky": "sunny"})},
    ]  # fmt: skip
    g = llm.chat(history, tools=[WEATHER], tool_choice="none", temperature=0, max_tokens=40).result()
    assert g.tool_calls == [] and g.text.strip()


def test_bad_tools_are_clear_errors(llm):
    with pytest.raises(ToolsError, match=r"tools\[0\].function.name is missing"):
        llm.chat(ASK, tools=[{"type": "function", "function": {"parameters": {}}}])
    with pytest.raises(ToolsError, match="not among the tools"):
        llm.chat(ASK, tools=[WEATHER], tool_choice="get_time")
    with pytest.raises(ToolsError, match=r"tools\[0\].function.parameters: .*Invalid type: objct"):
        llm.chat(ASK, tools=[{"name": "f", "parameters": {"type": "objct"}}])


def test_a_tool_keyword_no_grammar_enforces_is_a_warning_not_a_refusal(llm, caplog):
    """Claude Code's own tools use propertyNames: the agent must not be refused for it."""
    tool = {"name": "tag", "parameters": {"type": "object", "properties": {"labels": {
        "type": "object", "propertyNames": {"pattern": "^[a-z]+$"}, "additionalProperties": {"type": "string"}}},
        "required": ["labels"]}}  # fmt: skip
    g = llm.chat(ASK, tools=[tool], tool_choice="required", parallel_tool_calls=False, temperature=0, max_tokens=60)
    g.result()
    assert "propertyNames" in caplog.text and "held to the rest of the schema" in caplog.text
    assert [c.name for c in g.tool_calls] == ["tag"] and isinstance(g.tool_calls[0].arguments["labels"], dict)


# -- the command line ---------------------------------------------------------------------------------------


def test_run_with_a_json_schema_and_a_grammar(smollm2_path, tmp_path):
    schema = {"type": "object", "properties": {"name": {"type": "string", "maxLength": 20},
              "age": {"type": "integer", "minimum": 0}}, "required": ["name", "age"], "additionalProperties": False}  # fmt: skip
    (tmp_path / "person.json").write_text(json.dumps(schema))
    for given in (str(tmp_path / "person.json"), json.dumps(schema)):
        proc = run("run", str(smollm2_path), "Describe a person.", "--json-schema", given, "--temperature", "1",
                   "--seed", "1", "--local")  # fmt: skip
        assert proc.returncode == 0, proc.stderr
        jsonschema.validate(json.loads(proc.stdout), schema)
    (tmp_path / "yesno.gbnf").write_text('root ::= "yes" | "no"\n')
    proc = run("run", str(smollm2_path), "Is Paris in France?", "--grammar", str(tmp_path / "yesno.gbnf"), "--local")
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() in ("yes", "no")


def test_run_refuses_a_bad_schema_or_grammar_before_loading(smollm2_path, tmp_path):
    assert_user_error(run("run", str(smollm2_path), "x", "--json-schema", '{"type": "strng"}'), "Invalid type: strng")
    assert_user_error(run("run", str(smollm2_path), "x", "--json-schema", str(tmp_path / "none.json")), "cannot read")
    (tmp_path / "bad.gbnf").write_text("root ::= undefined_rule\n")
    assert_user_error(run("run", str(smollm2_path), "x", "--grammar", str(tmp_path / "bad.gbnf")), "undefined_rule")
