"""`pellucid serve` driven by the official anthropic SDK (the Messages API), and raw HTTP for its event stream.

The SDK (2.x) has no temperature/top_p/top_k arguments any more; clients send them in `extra_body`.

One real server process (SmolLM2, 4 slots of 512 tokens), shared with the other server tests. Prompt token counts are checked against
llama.cpp's rendering of the same conversation (../shared/fixtures), exactly.
"""

from __future__ import annotations

import json

import anthropic
import httpx
import pytest

from server_helpers import HTTP_TIMEOUT_S

SMOLLM2 = "smollm2-135m-instruct-q4_1"
EVENT_ORDER = ["message_start", "content_block_start", "ping", "content_block_delta", "content_block_stop",
               "message_delta", "message_stop"]  # fmt: skip


@pytest.fixture(scope="module")
def server(smollm2_server):
    return smollm2_server  # `pellucid serve smollm2-135m --ctx 512 ...`, shared with the other server tests


@pytest.fixture(scope="module")
def client(server):
    return anthropic.Anthropic(base_url=server.url, api_key="unused", max_retries=0, timeout=HTTP_TIMEOUT_S)


@pytest.fixture(scope="module")
def case(reference):
    return reference[SMOLLM2]["chat"][1]  # system "You are a terse assistant." + "Name three primary colors."


def split(case):
    system = next(m["content"] for m in case["messages"] if m["role"] == "system")
    return system, [m for m in case["messages"] if m["role"] != "system"]


def test_message_and_usage(client, case):
    system, messages = split(case)
    r = client.messages.create(
        model="smollm2-135m", system=system, messages=messages, max_tokens=64, extra_body={"temperature": 0}
    )
    assert r.type == "message" and r.role == "assistant" and r.model == "smollm2-135m"
    assert [b.type for b in r.content] == ["text"]
    assert r.content[0].text.lower().startswith("the primary colors are")  # llama.cpp: "The primary colors are: ..."
    assert r.stop_reason == "end_turn" and r.stop_sequence is None
    # Anthropic's accounting: computed + cache-read prompt tokens = the whole prompt (llama.cpp's count).
    assert r.usage.input_tokens + r.usage.cache_read_input_tokens == len(case["prompt_ids"])
    assert r.usage.output_tokens > 0
    # The same conversation again: all but its last prompt token come from the cache.
    again = client.messages.create(
        model="smollm2-135m", system=system, messages=messages, max_tokens=64, extra_body={"temperature": 0}
    )
    assert again.content[0].text == r.content[0].text
    assert again.usage.cache_read_input_tokens == len(case["prompt_ids"]) - 1 and again.usage.input_tokens == 1


def test_streaming_gives_the_same_text(client, case):
    system, messages = split(case)
    whole = client.messages.create(
        model="smollm2-135m", system=system, messages=messages, max_tokens=10, extra_body={"temperature": 0}
    )
    with client.messages.stream(
        model="smollm2-135m", system=system, messages=messages, max_tokens=10, extra_body={"temperature": 0}
    ) as stream:
        text = "".join(stream.text_stream)
        final = stream.get_final_message()
    assert text == whole.content[0].text == final.content[0].text
    assert final.stop_reason == whole.stop_reason
    assert final.usage.output_tokens == whole.usage.output_tokens


def test_the_event_sequence(server):
    body = {"model": "smollm2-135m", "max_tokens": 5, "stream": True, "temperature": 0,
            "messages": [{"role": "user", "content": [{"type": "text", "text": "Count to three."}]}]}  # fmt: skip
    with (
        httpx.Client(base_url=server.url, timeout=HTTP_TIMEOUT_S) as http,
        http.stream("POST", "/v1/messages", json=body) as r,
    ):
        assert r.status_code == 200 and r.headers["content-type"].startswith("text/event-stream")
        lines = [line for line in r.iter_lines() if line]
    names = [line[7:] for line in lines if line.startswith("event: ")]
    data = [json.loads(line[6:]) for line in lines if line.startswith("data: ")]
    assert [d["type"] for d in data] == names  # every event's name matches its data's type
    deltas = names.count("content_block_delta")
    assert deltas >= 1
    assert names == EVENT_ORDER[:3] + ["content_block_delta"] * deltas + EVENT_ORDER[4:]
    message_delta = data[names.index("message_delta")]
    assert message_delta["delta"]["stop_reason"] == "max_tokens"
    assert message_delta["usage"]["output_tokens"] == 5


def test_stop_sequences_and_max_tokens(client):
    r = client.messages.create(
        model="smollm2-135m",
        messages=[{"role": "user", "content": "Count from 1 to 10, separated by commas."}],
        max_tokens=60,
        extra_body={"temperature": 0},
        stop_sequences=["5"],
    )
    assert r.stop_reason == "stop_sequence" and r.stop_sequence == "5"
    assert "5" not in r.content[0].text
    short = client.messages.create(
        model="smollm2-135m", messages=[{"role": "user", "content": "Tell me a story."}], max_tokens=3
    )
    assert short.stop_reason == "max_tokens" and short.usage.output_tokens == 3


def test_count_tokens(client, case):
    system, messages = split(case)
    assert client.messages.count_tokens(model="smollm2-135m", system=system, messages=messages).input_tokens == len(
        case["prompt_ids"]
    )


def test_errors_have_anthropics_shape(server, client):
    with pytest.raises(anthropic.NotFoundError) as e:
        client.messages.create(model="claude-sonnet-4", messages=[{"role": "user", "content": "hi"}], max_tokens=5)
    assert "not served here" in str(e.value)
    cases = [  # body, status, error type, words
        ({"messages": [{"role": "user", "content": "hi"}]}, 400, "invalid_request_error", "max_tokens: Field required"),
        ({"max_tokens": 5, "messages": [{"role": "tool", "content": "hi"}]}, 400, "invalid_request_error", "role"),
        (
            {"max_tokens": 5, "messages": [{"role": "user", "content": [{"type": "image", "source": {}}]}]},
            400,
            "invalid_request_error",
            "'image' block",
        ),
        ({"max_tokens": 5, "temperature": -1, "messages": [{"role": "user", "content": "hi"}]}, 200, None, ""),
        (
            {"max_tokens": 5, "messages": [{"role": "user", "content": "hi"}], "tools": [{"input_schema": {}}]},
            400,
            "invalid_request_error",
            "tools[0].name is missing",
        ),
        (
            {
                "max_tokens": 5,
                "messages": [{"role": "user", "content": "hi"}],
                "tools": [{"name": "f", "input_schema": {"type": "objct"}}],
            },
            400,
            "invalid_request_error",
            "tools[0].input_schema: the JSON schema cannot be enforced: Invalid type: objct",
        ),  # fmt: skip
        (
            {
                "max_tokens": 5,
                "messages": [
                    {"role": "user", "content": "hi"},
                    {"role": "assistant", "content": "ok"},
                    {"role": "user", "content": [{"type": "tool_result", "tool_use_id": "toolu_x", "content": "1"}]},
                ],
            },
            400,
            "invalid_request_error",
            "messages[2].content[0].tool_use_id 'toolu_x' answers no tool_use block",
        ),  # fmt: skip
        (
            {"max_tokens": 5, "messages": [{"role": "user", "content": "hi"}], "tool_choice": {"type": "any"}},
            400,
            "invalid_request_error",
            "asks for a tool call, but the request has no tools",
        ),
        (
            {"max_tokens": 5, "messages": [{"role": "user", "content": "hello " * 600}]},
            400,
            "invalid_request_error",
            "context holds 512 tokens",
        ),
    ]
    with httpx.Client(base_url=server.url, timeout=HTTP_TIMEOUT_S) as http:
        r = http.post("/v1/messages", content=b"{oops", headers={"content-type": "application/json"})
        assert r.status_code == 400 and r.json()["error"]["type"] == "invalid_request_error"
        for body, status, kind, words in cases:
            r = http.post("/v1/messages", json=body)
            assert r.status_code == status, (body, r.text)
            if kind:
                assert r.json()["type"] == "error"
                assert r.json()["error"]["type"] == kind and words in r.json()["error"]["message"], r.json()
        assert http.get("/health").json()["status"] == "ok"
