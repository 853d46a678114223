"""Constrained output validates against its schema for 200 generated schemas, sampled at temperature 1.

A small seeded generator (`make_schema`) writes JSON schemas with nested objects (to depth 3), arrays with
minItems/maxItems, strings with maxLength, an enum or a pattern, integers and numbers with inclusive and
exclusive bounds, booleans, type-free enums, optional properties and `$defs` + `$ref`. Each one is asked for in
a short chat prompt on the default model (SmolLM2-135M) in the engine's default arithmetic, sampled from the
full distribution (temperature 1, no top-k/top-p/min-p), and the output must parse and pass `jsonschema`.
The model is not good at this; that is the point: whatever it would have written, the mask keeps it valid.

All 200 go through one 4-slot `Scheduler`, so sequences with different grammars share every decode step and
each must keep its own mask. They are all queued before the worker starts, so the batches (and so the
outputs) are the same on every run.

Sizes are chosen so every answer closes within MAX_TOKENS: strings of at most 12 characters, at most 4 items
per array, at most 4 properties per object, and a schema whose largest valid JSON (`worst_chars`) is longer
than MAX_CHARS is drawn again. A generation that stops for "length" is a failure of these sizes.

Measured 2026-12-08, 2 threads (Zen 4): the 200 generations take 47-63 s (4,585 tokens, 73-97 tok/s over the 4
slots, prompts included; the longest answer is 62 tokens of MAX_TOKENS 200), the module 52-67 s with the load.
"""

from __future__ import annotations

import json
import random
import threading
import time

import jsonschema
import pytest

import pellucid
from pellucid.engine.constrain import Constraint, Grammar
from pellucid.engine.sampling import SamplingParams
from pellucid.engine.scheduler import Scheduler

N_SCHEMAS = 200
MAX_DEPTH = 3  # the root object is depth 1
MAX_ITEMS = 4
MAX_LENGTH = 12  # the longest string a schema allows (enum values and patterns included)
MAX_CHARS = 160  # the longest JSON a schema may allow; ~2 characters a token leaves room under MAX_TOKENS
MAX_TOKENS = 200

KEYS = ["id", "name", "age", "city", "color", "size", "count", "price", "score", "tags", "kind", "level",
        "owner", "items", "active", "note", "code", "rank", "year", "unit", "title", "email", "point", "status"]  # fmt: skip
WORDS = ["red", "green", "blue", "small", "large", "cat", "dog", "north", "south", "open", "closed", "draft"]
PATTERNS = ["^[a-z]{2,5}$", "^[A-Z][a-z]{1,6}$", "^[0-9]{3}-[0-9]{4}$", "^(yes|no|maybe)$", "^[a-f0-9]{4}$"]


# -- the schema generator -----------------------------------------------------------------------------------


class SchemaMaker:
    """One random schema from `rng`: an object (sometimes an array) at the root, values of every kind below."""

    def __init__(self, rng: random.Random):
        self.rng = rng
        self.defs: dict[str, dict] = {}

    def root(self) -> dict:
        rng = self.rng
        if rng.random() < 0.3:  # a named definition, used through $ref at least once
            name = rng.choice(["thing", "entry", "pair", "label"])
            self.defs[name] = self.object(2) if rng.random() < 0.6 else self.scalar()
            schema = self.object(1)
            key = next(k for k in KEYS if k not in schema["properties"])
            schema["properties"][key] = {"$ref": f"#/$defs/{name}"}
            if "maxProperties" in schema:  # an open object: every listed property required, one more allowed
                schema["maxProperties"] += 1
            if "maxProperties" in schema or rng.random() < 0.7:
                schema.setdefault("required", []).append(key)
            schema["$defs"] = self.defs
            return schema
        return self.object(1) if rng.random() < 0.9 else self.array(1)

    def value(self, depth: int) -> dict:
        rng = self.rng
        if self.defs and depth <= 2 and rng.random() < 0.15:
            return {"$ref": f"#/$defs/{next(iter(self.defs))}"}
        if depth < MAX_DEPTH and rng.random() < 0.4:
            return self.object(depth + 1) if rng.random() < 0.5 else self.array(depth + 1)
        return self.scalar()

    def object(self, depth: int) -> dict:
        rng = self.rng
        keys = rng.sample(KEYS, rng.randint(1, 4 if depth == 1 else 3))
        schema: dict = {"type": "object", "properties": {k: self.value(depth) for k in keys}}
        if rng.random() < 0.1:
            # An open object: one more property of a small kind. maxProperties bounds how many (llguidance takes
            # it only when every listed property is required); with "additionalProperties": true, or without
            # maxProperties, the model adds keys and long values until max_tokens.
            schema["required"] = list(keys)
            schema["additionalProperties"] = self.rng.choice([self.integer(), self.boolean()])
            schema["maxProperties"] = len(keys) + 1
            return schema
        if rng.random() < 0.85:
            schema["required"] = [k for k in keys if rng.random() < 0.7]
        schema["additionalProperties"] = False
        return schema

    def array(self, depth: int) -> dict:
        rng = self.rng
        schema: dict = {"type": "array", "items": self.value(depth) if depth < MAX_DEPTH else self.scalar()}
        low = rng.randint(0, 2)
        if low or rng.random() < 0.5:
            schema["minItems"] = low
        schema["maxItems"] = rng.randint(max(low, 1), MAX_ITEMS)
        return schema

    def scalar(self) -> dict:
        kind = self.rng.choice(["string", "string", "integer", "integer", "number", "boolean", "enum"])
        return getattr(self, kind)()

    def string(self) -> dict:
        rng = self.rng
        roll = rng.random()
        if roll < 0.2:
            return {"type": "string", "enum": rng.sample(WORDS, rng.randint(2, 4))}
        if roll < 0.4:
            return {"type": "string", "pattern": rng.choice(PATTERNS)}
        schema = {"type": "string", "maxLength": rng.randint(1, MAX_LENGTH)}
        if rng.random() < 0.4:
            schema["minLength"] = rng.randint(1, schema["maxLength"])
        return schema

    def integer(self) -> dict:
        low = self.rng.randint(-50, 50)
        return {"type": "integer", **self.bounds(low, low + self.rng.randint(2, 500))}

    def number(self) -> dict:
        """Bounds limit a number's integer digits, not its fraction: without multipleOf a temperature-1 sample
        can write digits until max_tokens (71.25746625672834310623...). Binary fractions, so that jsonschema's
        float arithmetic checks multipleOf exactly."""
        low = round(self.rng.uniform(-100, 100), 1)
        bounds = self.bounds(low, round(low + self.rng.uniform(2, 300), 1))
        return {"type": "number", **bounds, "multipleOf": self.rng.choice([0.5, 0.25])}

    def bounds(self, low, high) -> dict:
        """Inclusive or exclusive at each end; both ends, or the model may write digits until max_tokens."""
        rng = self.rng
        return {
            "minimum" if rng.random() < 0.5 else "exclusiveMinimum": low,
            "maximum" if rng.random() < 0.5 else "exclusiveMaximum": high,
        }

    def boolean(self) -> dict:
        return {"type": "boolean"}

    def enum(self) -> dict:
        """A type-free enum mixing strings, integers, booleans and null."""
        rng = self.rng
        pool = [*rng.sample(WORDS, 3), rng.randint(-9, 99), rng.randint(100, 999), True, None]
        return {"enum": rng.sample(pool, rng.randint(2, 4))}


def worst_chars(schema: dict, defs: dict) -> int:
    """The length of the longest compact JSON `schema` allows (numbers and open objects: a generous guess)."""
    if "$ref" in schema:
        return worst_chars(defs[schema["$ref"].rsplit("/", 1)[1]], defs)
    if "enum" in schema:
        return max(len(json.dumps(v)) for v in schema["enum"])
    kind = schema["type"]
    if kind == "object":
        fields = sum(len(k) + 4 + worst_chars(v, defs) for k, v in schema["properties"].items())
        extra = 0 if schema.get("additionalProperties") is False else 20  # an open object: one more key
        return 2 + fields + 2 * len(schema["properties"]) + extra
    if kind == "array":
        return 2 + schema["maxItems"] * (worst_chars(schema["items"], defs) + 2)
    if kind == "string":
        return 2 + (MAX_LENGTH if "pattern" in schema else schema["maxLength"])
    if kind == "integer":
        return 5
    if kind == "number":
        return 8
    return 5  # boolean


def make_schema(seed: int) -> dict:
    """The schema for `seed`: drawn until its largest valid JSON fits MAX_CHARS."""
    rng = random.Random(seed)
    while True:
        maker = SchemaMaker(rng)
        schema = maker.root()
        if worst_chars(schema, maker.defs) <= MAX_CHARS:
            return schema


SCHEMAS = [make_schema(seed) for seed in range(N_SCHEMAS)]


def prompt_for(schema: dict) -> str:
    if schema["type"] == "array":
        return "Write a short JSON array."
    return f"Write a JSON object with the fields {', '.join(schema['properties'])}."


# -- the generator makes what it promises ---------------------------------------------------------------------


def walk(schema: dict, depth: int = 1):
    """(depth, subschema) for every schema inside `schema`, $defs included (at depth 2)."""
    yield depth, schema
    for sub in schema.get("properties", {}).values():
        yield from walk(sub, depth + 1 if sub.get("type") == "object" else depth)
    if "items" in schema:
        yield from walk(schema["items"], depth + 1 if schema["items"].get("type") == "object" else depth)
    if isinstance(schema.get("additionalProperties"), dict):
        yield from walk(schema["additionalProperties"], depth)
    for sub in schema.get("$defs", {}).values():
        yield from walk(sub, 2)


def features(schemas: list[dict]) -> dict[str, int]:
    """How many schemas use each feature at least once."""
    checks = {
        "$ref": lambda s: "$ref" in s,
        "typed enum": lambda s: "enum" in s and "type" in s,
        "type-free enum": lambda s: "enum" in s and "type" not in s,
        "pattern": lambda s: "pattern" in s,
        "maxLength": lambda s: "maxLength" in s,
        "minLength": lambda s: "minLength" in s,
        "integer": lambda s: s.get("type") == "integer",
        "number": lambda s: s.get("type") == "number",
        "boolean": lambda s: s.get("type") == "boolean",
        "minimum": lambda s: "minimum" in s,
        "maximum": lambda s: "maximum" in s,
        "exclusiveMinimum": lambda s: "exclusiveMinimum" in s,
        "exclusiveMaximum": lambda s: "exclusiveMaximum" in s,
        "array": lambda s: s.get("type") == "array",
        "minItems": lambda s: s.get("minItems", 0) > 0,
        "optional property": lambda s: "properties" in s and set(s.get("required", [])) < set(s["properties"]),
        "open object": lambda s: isinstance(s.get("additionalProperties"), dict),
        "multipleOf": lambda s: "multipleOf" in s,
    }
    counts = {
        name: sum(any(check(sub) for _, sub in walk(schema)) for schema in schemas) for name, check in checks.items()
    }
    counts["depth 3"] = sum(
        max((d for d, sub in walk(schema) if sub.get("type") == "object"), default=0) >= 3 for schema in schemas
    )
    counts["array root"] = sum(schema["type"] == "array" for schema in schemas)
    return counts


def test_the_generator_makes_every_feature_often():
    counts = features(SCHEMAS)
    least = {"open object": 10, "array root": 8, "depth 3": 15}  # the rarer draws; every other feature: 20
    thin = {name: n for name, n in counts.items() if n < least.get(name, 20)}
    assert not thin, f"the schema generator rarely makes {thin} (all counts: {counts})"


def test_the_generated_schemas_are_valid_small_and_reproducible():
    assert [make_schema(seed) for seed in range(N_SCHEMAS)] == SCHEMAS, "the same seeds give the same schemas"
    assert len({json.dumps(s, sort_keys=True) for s in SCHEMAS}) == N_SCHEMAS, "no two schemas alike"
    for schema in SCHEMAS:
        jsonschema.Draft202012Validator.check_schema(schema)
        Grammar.json_schema(schema).compile()  # llguidance enforces every keyword used
        for _, sub in walk(schema):
            assert sub.get("maxItems", 0) <= MAX_ITEMS and sub.get("maxLength", 0) <= MAX_LENGTH, sub
            assert sub.get("type") != "array" or "maxItems" in sub, sub
            assert sub.get("type") != "string" or {"maxLength", "enum", "pattern"} & sub.keys(), sub
        assert worst_chars(schema, schema.get("$defs", {})) <= MAX_CHARS


# -- the model, constrained ------------------------------------------------------------------------------------


@pytest.mark.slow
def test_200_schemas_sampled_at_temperature_1_all_validate(default_arithmetic, smollm2_path):
    llm = pellucid.load(str(smollm2_path), ctx=512)  # after default_arithmetic: the engine's default rounding
    tokenizer = llm.tokenizer
    scheduler = Scheduler(llm.model, tokenizer, n_slots=4, ctx=512, max_queue=N_SCHEMAS)
    updates: dict[int, list] = {i: [] for i in range(N_SCHEMAS)}
    done = threading.Semaphore(0)
    for i, schema in enumerate(SCHEMAS):  # all queued before the worker starts: the same batches every run
        constraint = Constraint(Grammar.json_schema(schema), tokenizer)
        prompt = llm.chat_prompt_ids([{"role": "user", "content": prompt_for(schema)}])
        params = SamplingParams(temperature=1.0, top_k=0, top_p=1.0, min_p=0.0, seed=i)

        def on_update(update, i=i):
            updates[i].append(update)
            if update.final:
                done.release()

        scheduler.submit(prompt, params, max_tokens=MAX_TOKENS, constraint=constraint, on_update=on_update)
    started = time.perf_counter()
    scheduler.start()
    try:
        for _ in range(N_SCHEMAS):
            assert done.acquire(timeout=600), "the scheduler stalled"
    finally:
        scheduler.stop()
    seconds = time.perf_counter() - started
    lengths = [updates[i][-1].stats.generated_tokens for i in range(N_SCHEMAS)]
    print(f"\n{N_SCHEMAS} constrained generations: {seconds:.1f} s, {sum(lengths)} tokens ({sum(lengths) / seconds:.0f}"
          f" tok/s), the longest {max(lengths)} of max_tokens {MAX_TOKENS}")  # fmt: skip

    failures = []
    for i, schema in enumerate(SCHEMAS):
        text = "".join(u.text for u in updates[i])
        final = updates[i][-1]
        why = final.error or ("" if final.stats.stop_reason == "stop" else f"stopped for {final.stats.stop_reason!r}")
        if not why:
            try:
                jsonschema.validate(json.loads(text), schema)
            except (ValueError, jsonschema.ValidationError) as e:
                why = f"{type(e).__name__}: {str(e).splitlines()[0]}"
        if why:
            failures.append(f"schema {i}: {why}\n  schema: {json.dumps(schema)}\n  text: {text!r}")
    assert not failures, f"{len(failures)} of {N_SCHEMAS} outputs are not valid:\n" + "\n".join(failures)
