"""Constrained decoding (engine/constrain.py) on the default model: grammars, their errors, the mask, and the
samplers, the scheduler and stop strings on masked logits.

The guarantee under test is "valid by construction": whatever the sampler draws, the output matches the
grammar (checked with `jsonschema` for schemas, `re.fullmatch` for regexes). The model is SmolLM2-135M, so
the content is not the point; the shape is.
"""

from __future__ import annotations

import json
import re
import threading

import jsonschema
import pytest
import torch

import pellucid
from pellucid.engine.constrain import Constraint, Grammar, GrammarError, TriggeredConstraint
from pellucid.engine.sampling import SamplingParams
from pellucid.engine.scheduler import Scheduler

PERSON = {
    "type": "object",
    "properties": {
        "name": {"type": "string", "maxLength": 20},
        "age": {"type": "integer", "minimum": 0, "maximum": 120},
        "role": {"enum": ["admin", "user", "guest"]},
    },
    "required": ["name", "age", "role"],
    "additionalProperties": False,
}


@pytest.fixture(scope="module")
def llm(smollm2_path):
    return pellucid.load(str(smollm2_path), ctx=512)


def ask(question: str) -> list[dict]:
    return [{"role": "user", "content": question}]


# -- grammars and their errors ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "make, words",
    [
        (lambda: Grammar.json_schema("{not json"), "not valid JSON"),
        (lambda: Grammar.json_schema([1, 2]), "must be an object"),
        (lambda: Grammar.json_schema({"type": "strng"}).compile(), "strng"),
        (lambda: Grammar.json_schema({"not": {"type": "string"}}).compile(), "not"),
        (lambda: Grammar.json_schema({"$ref": "#/$defs/missing"}).compile(), "missing"),
        (lambda: Grammar.regex("[a-").compile(), "regular expression"),
        (lambda: Grammar.lark("start: undefined_rule").compile(), "undefined_rule"),
        (lambda: Grammar.gbnf('root ::= "a" undefined').compile(), "undefined"),
        (lambda: Grammar("yaml", "a: b"), "unknown grammar kind"),
        (lambda: Grammar.regex(""), "empty"),
    ],
)
def test_bad_grammars_are_clear_errors(make, words):
    with pytest.raises(GrammarError) as e:
        make()
    assert words in str(e.value)


def test_schema_and_grammar_together_is_an_error(llm):
    with pytest.raises(pellucid.errors.PellucidError, match="not both"):
        llm.generate("x", schema={"type": "object"}, grammar='root ::= "a"')


def test_the_mask_allows_only_what_can_continue(llm):
    tokenizer = llm.tokenizer
    constraint = Constraint(Grammar.regex("(yes|no)"), tokenizer)
    allowed = constraint.allowed().nonzero().flatten().tolist()
    assert allowed, "something must be allowed at the start"
    for token in allowed:
        text = tokenizer.token_bytes(token).decode("utf-8", errors="replace")
        assert "yes".startswith(text) or "no".startswith(text), text
    assert not set(allowed) & set(tokenizer.eot_ids), "the output cannot end before it matches"
    for token in tokenizer.encode("yes", add_special=False):
        constraint.accept(token)
    assert constraint.accepting and constraint.finished
    assert set(constraint.allowed().nonzero().flatten().tolist()) <= set(tokenizer.eot_ids)


# -- every sampler, through the Python API --------------------------------------------------------------------

SAMPLERS = [
    dict(temperature=0),
    dict(temperature=1.0, top_k=0, top_p=1.0, min_p=0.0, seed=1),
    dict(temperature=1.5, top_k=5, seed=2),
    dict(temperature=1.0, top_p=0.5, seed=3),
    dict(temperature=1.0, min_p=0.2, seed=4),
    dict(temperature=1.0, typical_p=0.7, seed=5),
    dict(temperature=0.8, repeat_penalty=1.3, presence_penalty=0.5, frequency_penalty=0.5, seed=6),
]


@pytest.mark.parametrize("sampling", SAMPLERS, ids=lambda s: ",".join(f"{k}={v}" for k, v in s.items()))
def test_schema_output_validates_with_every_sampler(llm, sampling):
    g = llm.chat(ask("Describe a user of a website as JSON."), schema=PERSON, max_tokens=80, **sampling).result()
    assert g.stats.stop_reason == "stop", g.text
    jsonschema.validate(json.loads(g.text), PERSON)


def test_any_json_object_regex_lark_and_gbnf(llm):
    g = llm.chat(ask("Reply in JSON."), schema={"type": "object"}, max_tokens=120, temperature=0).result()
    assert isinstance(json.loads(g.text), dict) if g.stats.stop_reason == "stop" else g.text.startswith("{")
    g = llm.generate("My phone number is", grammar=Grammar.regex(r" \d{3}-\d{4}"), temperature=1, seed=0).result()
    assert re.fullmatch(r" \d{3}-\d{4}", g.text), g.text
    lark = 'start: " " ANSWER "."\nANSWER: "yes" | "no" | "maybe"'
    g = llm.generate("Is the sky blue? Answer:", grammar=Grammar.lark(lark), temperature=1, seed=0).result()
    assert g.text in (" yes.", " no.", " maybe."), g.text
    gbnf = 'root ::= " " colour\ncolour ::= "red" | "green" | "blue"'
    g = llm.generate("My favourite colour is", grammar=gbnf, temperature=1, seed=0).result()  # text: GBNF or Lark
    assert g.text in (" red", " green", " blue"), g.text


def test_a_stop_string_still_ends_a_constrained_answer(llm):
    g = llm.chat(ask("A user as JSON."), schema=PERSON, stop=['"age"'], temperature=0, max_tokens=80).result()
    assert g.stats.stop_reason == "stop" and "stop string" in g.stats.stop_detail
    assert g.text.startswith('{"name": ') and '"age"' not in g.text


def test_max_tokens_cuts_a_constrained_answer_and_says_so(llm):
    g = llm.chat(ask("A user as JSON."), schema=PERSON, temperature=0, max_tokens=3).result()
    assert g.stats.stop_reason == "length" and g.text.startswith("{")


# -- continuous batching: a mask per sequence ---------------------------------------------------------------


def test_batched_sequences_each_keep_their_own_grammar(llm, smollm2_path):
    tokenizer = llm.tokenizer
    scheduler = Scheduler(llm.model, tokenizer, n_slots=4, ctx=256)
    scheduler.start()
    schemas = [
        PERSON,
        {"type": "array", "items": {"type": "integer", "minimum": 1, "maximum": 9}, "minItems": 2, "maxItems": 4},
        {
            "type": "object",
            "properties": {"ok": {"type": "boolean"}},
            "required": ["ok"],
            "additionalProperties": False,
        },
        None,  # an unconstrained neighbour in the same batch
    ]
    results: dict[int, list] = {i: [] for i in range(len(schemas))}
    done = [threading.Event() for _ in schemas]
    try:
        for i, schema in enumerate(schemas):
            prompt = llm.chat_prompt_ids(ask(f"Question {i}: give me some JSON."))
            constraint = Constraint(Grammar.json_schema(schema), tokenizer) if schema else None

            def on_update(update, i=i):
                results[i].append(update)
                if update.final:
                    done[i].set()

            params = SamplingParams(temperature=1.0, seed=i)
            scheduler.submit(prompt, params, max_tokens=60, constraint=constraint, on_update=on_update)
        for event in done:
            assert event.wait(300)
    finally:
        scheduler.stop()
    for i, schema in enumerate(schemas):
        text = "".join(u.text for u in results[i])
        assert results[i][-1].error is None
        if schema is not None:
            assert results[i][-1].stats.stop_reason == "stop", text
            jsonschema.validate(json.loads(text), schema)


# -- the lazy form tool calls use -----------------------------------------------------------------------------


def test_a_triggered_grammar_waits_for_its_marker_then_holds_until_the_call_closes(llm):
    tokenizer = llm.tokenizer
    body = Grammar.lark('start: %json {"type": "object", "properties": {"n": {"type": "integer"}}, '
                        '"required": ["n"], "additionalProperties": false} "</call>"')  # fmt: skip
    constraint = TriggeredConstraint("<call>", body, tokenizer)
    free = torch.zeros(tokenizer.vocab_size)
    for token in tokenizer.encode("Let me check. <call>", add_special=False):
        assert torch.equal(constraint.mask(free), free), "free text is not masked"
        constraint.accept(token)
    assert constraint.active
    masked = constraint.mask(free)
    allowed = (masked == 0).nonzero().flatten().tolist()
    assert allowed and all(tokenizer.token_bytes(t).startswith(b"{") for t in allowed)
    for token in tokenizer.encode('{"n": 7}</call>', add_special=False):
        assert masked[token] == 0 or constraint.active, "a valid body token was masked"
        constraint.accept(token)
        masked = constraint.mask(free)
    assert not constraint.active and constraint.calls_constrained == 1
    assert torch.equal(constraint.mask(free), free), "free again after the call"
