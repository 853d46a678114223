"""`pellucid serve` driven by the official openai SDK, raw HTTP for bad input, and a burst of 32 requests.

One real server process (SmolLM2, 4 slots, 512 tokens of context each), shared with the other server tests.
The oracle for what the model says is llama.cpp (../shared/fixtures): the prompt token counts must match exactly (same template,
same tokenizer); greedy text is compared where the fixtures README says free-running greedy agrees (chat[0]),
case-insensitively on its first words; next-token top-10 sets must overlap in >= 9 of 10 (llama.cpp
quantizes activations, so near-ties may swap, see the README's calibration).
"""

from __future__ import annotations

import asyncio
import json
import math
from concurrent.futures import ThreadPoolExecutor

import httpx
import openai
import pytest

from pellucid.tokenizer import load_tokenizer
from server_helpers import HTTP_TIMEOUT_S

SMOLLM2 = "smollm2-135m-instruct-q4_1"


@pytest.fixture(scope="module")
def server(smollm2_server):
    # Started by name (`pellucid serve smollm2-135m --parallel 4 --ctx 512 --alias my-model`, shared with the
    # other server tests): the served name is then "smollm2-135m".
    return smollm2_server


@pytest.fixture(scope="module")
def client(server):
    return openai.OpenAI(base_url=server.url + "/v1", api_key="unused", max_retries=0, timeout=HTTP_TIMEOUT_S)


@pytest.fixture(scope="module")
def fixtures(reference):
    return reference[SMOLLM2]


def test_models_and_health(server, client):
    ids = [m.id for m in client.models.list().data]
    assert ids == ["smollm2-135m"]
    health = server.get_json("/health")
    assert health["status"] == "ok"
    assert health["context_length"] == 512
    assert len(health["slots"]) == 4


def test_chat_matches_llamacpp_and_reports_usage(client, fixtures):
    case = fixtures["chat"][0]  # "What is the capital of France? Answer in one sentence."
    r = client.chat.completions.create(model="smollm2-135m", messages=case["messages"], temperature=0)
    choice = r.choices[0]
    assert choice.message.role == "assistant"
    assert choice.message.content.lower().startswith(" ".join(case["reply"].lower().split()[:5]))
    assert choice.finish_reason == "stop"
    assert r.usage.prompt_tokens == len(case["prompt_ids"])  # same template + tokenizer as llama.cpp
    assert r.usage.completion_tokens > 0
    assert r.usage.total_tokens == r.usage.prompt_tokens + r.usage.completion_tokens
    assert r.model == "smollm2-135m"

    # The same conversation again: its prompt is in a slot's KV cache (all but the last token, which must run).
    again = client.chat.completions.create(model="my-model", messages=case["messages"], temperature=0)
    assert again.choices[0].message.content == choice.message.content
    assert again.usage.prompt_tokens_details.cached_tokens == len(case["prompt_ids"]) - 1


def test_chat_streaming_gives_the_same_text_and_usage(client):
    messages = [{"role": "system", "content": "You are terse."}, {"role": "user", "content": "Name two planets."}]
    whole = client.chat.completions.create(model="smollm2-135m", messages=messages, temperature=0, max_tokens=12)
    chunks = list(
        client.chat.completions.create(
            model="smollm2-135m",
            messages=messages,
            temperature=0,
            max_tokens=12,
            stream=True,
            stream_options={"include_usage": True},
        )
    )
    assert chunks[0].choices[0].delta.role == "assistant"
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == whole.choices[0].message.content
    finishes = [c.choices[0].finish_reason for c in chunks if c.choices and c.choices[0].finish_reason]
    assert finishes == [whole.choices[0].finish_reason]
    assert chunks[-1].choices == [] and chunks[-1].usage.completion_tokens == whole.usage.completion_tokens
    assert all(c.usage is None for c in chunks[:-1])


def test_chat_logprobs(client):
    r = client.chat.completions.create(
        model="smollm2-135m",
        messages=[{"role": "user", "content": "Say hello."}],
        temperature=0,
        max_tokens=4,
        logprobs=True,
        top_logprobs=3,
    )
    content = r.choices[0].logprobs.content
    assert len(content) == r.usage.completion_tokens
    assert "".join(t.token for t in content) == r.choices[0].message.content
    for t in content:
        assert len(t.top_logprobs) == 3
        assert t.top_logprobs[0].token == t.token  # greedy takes the most likely token
        assert t.logprob == pytest.approx(t.top_logprobs[0].logprob)
        assert t.logprob <= 0 and sum(math.exp(a.logprob) for a in t.top_logprobs) <= 1 + 1e-5
        assert bytes(t.bytes).decode() == t.token


def test_completions_next_token_matches_llamacpp(client, fixtures, smollm2_path):
    tokenizer = load_tokenizer(smollm2_path)
    text = lambda i: tokenizer.token_bytes(i).decode("utf-8", errors="replace")  # noqa: E731
    for case in fixtures["greedy"]:
        r = client.completions.create(
            model="smollm2-135m", prompt=case["prompt_ids"], max_tokens=1, temperature=0, logprobs=10
        )
        ours = set(r.choices[0].logprobs.top_logprobs[0])
        theirs = {text(i) for i, _ in case["top10_last_logits"]}
        assert r.choices[0].text == text(case["greedy_ids"][0]), case["prompt"]
        assert len(ours & theirs) >= 9, case["prompt"]
        assert r.usage.prompt_tokens == len(case["prompt_ids"])


def test_completions_stream_with_stop_string(client, fixtures):
    case = next(c for c in fixtures["greedy"] if c["prompt"].startswith("1, 2, 3"))  # llama.cpp: " 6, 7, 8, 9, ..."
    stream = client.completions.create(
        model="smollm2-135m", prompt=case["prompt"], max_tokens=20, temperature=0, stop=[" 9"], stream=True
    )
    chunks = list(stream)
    assert "".join(c.choices[0].text for c in chunks) == " 6, 7, 8,"
    assert chunks[-1].choices[0].finish_reason == "stop"


def test_each_request_has_its_own_seed_even_when_batched(client):
    def ask(seed):
        r = client.completions.create(model="smollm2-135m", prompt="Once upon a time", max_tokens=8,
                                      temperature=1.0, top_p=1.0, seed=seed, extra_body={"top_k": 0, "min_p": 0})  # fmt: skip
        return r.choices[0].text

    alone = [ask(seed) for seed in (1, 2, 3)]
    with ThreadPoolExecutor(3) as pool:  # the three now share the scheduler's steps
        together = list(pool.map(ask, (1, 2, 3)))
    assert together == alone


BAD_REQUESTS = [  # (path, body (str = raw bytes), status, words the message must contain, param)
    ("/v1/chat/completions", "{not json", 400, "not valid JSON", None),
    ("/v1/chat/completions", "[1, 2]", 400, "must be a JSON object", None),
    ("/v1/chat/completions", {"model": "smollm2-135m"}, 400, "messages: Field required", "messages"),
    ("/v1/chat/completions", {"messages": "hi"}, 400, "messages", "messages"),
    (
        "/v1/chat/completions",
        {"messages": [{"role": "user", "content": "hi"}], "temperature": "hot"},
        400,
        "temperature: Input should be a valid number",
        "temperature",
    ),
    (
        "/v1/chat/completions",
        {"messages": [{"role": "user", "content": "hi"}], "max_tokens": 1.5},
        400,
        "max_tokens",
        "max_tokens",
    ),
    ("/v1/chat/completions", {"messages": [{"role": "wizard", "content": "hi"}]}, 400, "role", "messages[0].role"),
    (
        "/v1/chat/completions",
        {"messages": [{"role": "user", "content": "hi"}], "model": "gpt-4o"},
        404,
        "'gpt-4o' is not served here; this server serves: smollm2-135m",
        "model",
    ),
    (
        "/v1/chat/completions",
        {"messages": [{"role": "user", "content": "hi"}], "n": 2},
        400,
        "n=2 is not supported",
        "n",
    ),
    (
        "/v1/chat/completions",
        {
            "messages": [{"role": "user", "content": "hi"}],
            "response_format": {"type": "json_schema", "json_schema": {"name": "x", "schema": {"type": "strng"}}},
        },
        400,
        "Invalid type: strng",
        "response_format.json_schema.schema",
    ),  # fmt: skip
    (
        "/v1/chat/completions",
        {
            "messages": [{"role": "user", "content": "hi"}],
            "response_format": {
                "type": "json_schema",
                "json_schema": {"name": "x", "schema": {"not": {"type": "null"}}},
            },
        },
        400,
        "Unimplemented keys",
        "response_format.json_schema.schema",
    ),  # fmt: skip
    (
        "/v1/chat/completions",
        {
            "messages": [{"role": "user", "content": "hi"}],
            "tools": [{"type": "function", "function": {"parameters": {}}}],
        },
        400,
        "every tool needs a name",
        "tools[0].function.name",
    ),
    (
        "/v1/chat/completions",
        {
            "messages": [{"role": "user", "content": "hi"}],
            "tools": [{"type": "function", "function": {"name": "f", "parameters": {"type": "object"}}}],
            "tool_choice": {"type": "function", "function": {"name": "g"}},
        },
        400,
        "names 'g', which is not among the tools",
        "tool_choice",
    ),  # fmt: skip
    (
        "/v1/chat/completions",
        {"messages": [{"role": "user", "content": "hi"}, {"role": "tool", "tool_call_id": "call_x", "content": "1"}]},
        400,
        "answers no tool call",
        "messages[1].tool_call_id",
    ),
    (
        "/v1/chat/completions",
        {"messages": [{"role": "user", "content": "hi"}], "grammar": "root ::= undefined"},
        400,
        "undefined",
        "grammar",
    ),
    (
        "/v1/chat/completions",
        {"messages": [{"role": "user", "content": "hi"}], "top_p": 3},
        400,
        "top_p must be in",
        "top_p",
    ),
    (
        "/v1/chat/completions",
        {"messages": [{"role": "user", "content": "hi"}], "max_tokens": 0},
        400,
        "at least 1",
        "max_tokens",
    ),
    (
        "/v1/chat/completions",
        {"messages": [{"role": "user", "content": "hi"}], "top_logprobs": 2},
        400,
        "top_logprobs needs logprobs",
        "top_logprobs",
    ),
    (
        "/v1/chat/completions",
        {"messages": [{"role": "user", "content": [{"type": "image_url", "image_url": {}}]}]},
        400,
        "'image_url' part",
        "messages[0].content",
    ),
    (
        "/v1/chat/completions",
        {"messages": [{"role": "user", "content": "hello " * 600}]},
        400,
        "the prompt is 6",
        "messages",
    ),  # ~1,200 tokens; the message says "... context holds 512 tokens"
    ("/v1/completions", {"prompt": "hello " * 600}, 400, "context holds 512 tokens", "prompt"),
    ("/v1/completions", {"prompt": [10**9]}, 400, "outside the vocabulary", "prompt"),
    ("/v1/completions", {"prompt": "hi", "echo": True}, 400, "echo is not supported", "echo"),
    ("/v1/embeddings", {"input": "hi"}, 400, "cannot make embeddings", "model"),
    ("/v1/nothing-here", {}, 404, "no such endpoint", None),
]


def test_bad_requests_get_openai_errors_and_the_server_lives(server):
    with httpx.Client(base_url=server.url, timeout=HTTP_TIMEOUT_S) as http:
        for path, body, status, words, param in BAD_REQUESTS:
            content = body if isinstance(body, str) else json.dumps(body)
            r = http.post(path, content=content, headers={"Content-Type": "application/json"})
            assert r.status_code == status, (path, body, r.text)
            error = r.json()["error"]
            assert words in error["message"], (words, error)
            assert error["param"] == param, (param, error)
            assert set(error) == {"message", "type", "param", "code"}
        long_prompt = http.post("/v1/completions", json={"prompt": "hello " * 600}).json()["error"]
        assert "512" in long_prompt["message"] and long_prompt["code"] == "context_length_exceeded"
        embed = http.post("/v1/embeddings", json={"input": "hi"}).json()["error"]["message"]
        assert "minilm-l6" in embed  # names a model kind that can embed
        assert http.get("/health").json()["status"] == "ok"
    with pytest.raises(openai.NotFoundError):
        openai.OpenAI(base_url=server.url + "/v1", api_key="x", max_retries=0).chat.completions.create(
            model="gpt-4o", messages=[{"role": "user", "content": "hi"}]
        )


@pytest.mark.slow
def test_burst_of_32_concurrent_requests(server):
    """32 requests at once on 4 slots: every one completes with its own answer; none is lost or refused."""

    async def one(http: httpx.AsyncClient, i: int) -> dict:
        messages = [{"role": "user", "content": f"Write the number {i} in words."}]
        body = {"messages": messages, "max_tokens": 6, "temperature": 0.5, "seed": i}
        if i % 2:
            body |= {"stream": True, "stream_options": {"include_usage": True}}
            async with http.stream("POST", "/v1/chat/completions", json=body) as r:
                assert r.status_code == 200
                events = [line[6:] async for line in r.aiter_lines() if line.startswith("data: ")]
            assert events[-1] == "[DONE]"
            return json.loads(events[-2])["usage"]
        r = await http.post("/v1/chat/completions", json=body)
        assert r.status_code == 200, r.text
        return r.json()["usage"]

    async def burst() -> list[dict]:
        async with httpx.AsyncClient(base_url=server.url, timeout=600) as http:
            return await asyncio.gather(*(one(http, i) for i in range(32)))

    before = server.metrics()
    usages = asyncio.run(burst())
    assert len(usages) == 32
    assert all(1 <= u["completion_tokens"] <= 6 for u in usages)
    after = server.metrics()
    generated = after["pellucid_generated_tokens_total"] - before["pellucid_generated_tokens_total"]
    assert generated == sum(u["completion_tokens"] for u in usages)
    assert after["pellucid_active_sequences"] == 0 and after["pellucid_queue_depth"] == 0
    assert server.get_json("/health")["status"] == "ok"
    logged = [line for line in server.lines if "POST /v1/chat/completions 200 in=" in line]
    assert len(logged) >= 32 and all("tok/s" in line and "out=" in line for line in logged)
