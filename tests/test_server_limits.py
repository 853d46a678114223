"""`pellucid serve` limits: the API key (401), a full queue (429), the context (400), a client that leaves.

One server with --api-key, a single slot and a queue of one, so "busy" is easy to arrange: request A runs,
B waits, C is refused. Every refusal comes in the shape of the API the client speaks, and the server keeps
serving afterwards.
"""

from __future__ import annotations

import threading

import anthropic
import httpx
import openai
import pytest

from pellucid.tokenizer import load_tokenizer
from server_helpers import HTTP_TIMEOUT_S, running_server

KEY = "test-key-123"
AUTH = {"Authorization": f"Bearer {KEY}"}


@pytest.fixture(scope="module")
def server(smollm2_path):
    args = ("--api-key", KEY, "--parallel", "1", "--max-queue", "1", "--ctx", "256")
    with running_server("smollm2-135m", *args) as s:
        s.headers = AUTH
        yield s


def test_api_key(server):
    with httpx.Client(base_url=server.url, timeout=HTTP_TIMEOUT_S) as http:
        body = {"messages": [{"role": "user", "content": "hi"}], "max_tokens": 1}
        missing = http.post("/v1/chat/completions", json=body)
        assert missing.status_code == 401
        assert (
            missing.json()["error"]["type"] == "authentication_error"
            and "no API key" in missing.json()["error"]["message"]
        )
        wrong = http.post("/v1/chat/completions", json=body, headers={"Authorization": "Bearer nope"})
        assert wrong.status_code == 401 and "wrong API key" in wrong.json()["error"]["message"]
        anthropic_style = http.post("/v1/messages", json={**body, "max_tokens": 1}, headers={"x-api-key": "nope"})
        assert anthropic_style.status_code == 401
        assert anthropic_style.json()["error"]["type"] == "authentication_error"
        assert http.get("/metrics").status_code == 401
        assert http.get("/metrics", headers=AUTH).status_code == 200
        # The page, its files and the health check need no key (the page asks for it).
        assert http.get("/health").json()["status"] == "ok"
        assert http.get("/").status_code == 200 and http.get("/static/chat.js").status_code == 200

    with pytest.raises(openai.AuthenticationError):
        openai.OpenAI(base_url=server.url + "/v1", api_key="nope", max_retries=0).models.list()
    assert openai.OpenAI(base_url=server.url + "/v1", api_key=KEY, max_retries=0).models.list().data
    with pytest.raises(anthropic.AuthenticationError):
        anthropic.Anthropic(base_url=server.url, api_key="nope", max_retries=0).messages.create(
            model="smollm2-135m", max_tokens=1, messages=[{"role": "user", "content": "hi"}]
        )
    r = anthropic.Anthropic(base_url=server.url, api_key=KEY, max_retries=0).messages.create(
        model="smollm2-135m", max_tokens=2, messages=[{"role": "user", "content": "hi"}]
    )
    assert r.usage.output_tokens >= 1


def test_full_queue_is_429_and_a_disconnect_frees_the_slot(server):
    long = {"messages": [{"role": "user", "content": "Tell me a long story."}], "max_tokens": 200, "stream": True}
    short = {"messages": [{"role": "user", "content": "hi"}], "max_tokens": 2}
    with httpx.Client(base_url=server.url, timeout=HTTP_TIMEOUT_S, headers=AUTH) as http:
        with http.stream("POST", "/v1/chat/completions", json=long) as a:  # A takes the only slot
            lines = a.iter_lines()
            assert next(line for line in lines if '"content"' in line)  # A is generating
            waited = {}

            def send_b() -> None:
                with httpx.Client(base_url=server.url, timeout=HTTP_TIMEOUT_S, headers=AUTH) as own:
                    waited["r"] = own.post("/v1/chat/completions", json=short)

            b = threading.Thread(target=send_b)
            b.start()  # B waits in the queue
            server.wait_until(lambda: server.metrics()["pellucid_queue_depth"] == 1, "B to be queued")
            c = http.post("/v1/chat/completions", json=short)  # C finds the slot busy and the queue full
            assert c.status_code == 429, c.text
            assert c.json()["error"]["type"] == "rate_limit_error" and "--max-queue 1" in c.json()["error"]["message"]
            assert c.headers["retry-after"] == "1"
            m = http.post("/v1/messages", json={**short, "model": "smollm2-135m"}, headers={"x-api-key": KEY})
            assert m.status_code == 429 and m.json()["error"]["type"] == "rate_limit_error"
        # Leaving A's stream closes the connection: the server cancels A, and B gets the slot.
        b.join(120)
        assert waited["r"].status_code == 200, waited["r"].text
    server.wait_until(lambda: server.metrics()["pellucid_active_sequences"] == 0, "the slot to be free")
    assert any("client disconnected" in line or "cancelled" in line for line in server.lines), server.log


def test_prompt_longer_than_the_context(server, smollm2_path):
    counting = load_tokenizer(smollm2_path).encode(", ".join(str(i) for i in range(1, 400)))
    with httpx.Client(base_url=server.url, timeout=HTTP_TIMEOUT_S, headers=AUTH) as http:
        r = http.post("/v1/completions", json={"prompt": counting[:300]})
        assert r.status_code == 400
        error = r.json()["error"]
        assert "300 tokens" in error["message"] and "256 tokens" in error["message"]  # both numbers
        assert error["code"] == "context_length_exceeded" and error["param"] == "prompt"
        ok = http.post("/v1/completions", json={"prompt": counting[:250], "max_tokens": 100})
        assert ok.status_code == 200
        assert ok.json()["choices"][0]["finish_reason"] == "length"  # stopped by the full context
        assert ok.json()["usage"]["completion_tokens"] <= 256 - 250 + 1
        assert http.get("/health").json()["status"] == "ok"
