"""Prefix reuse on a sliding-window model through a real server (issue: Gemma 3 reused 0 tokens past its window).

`pellucid serve gemma3-270m` (window 512 on 5 of every 6 layers) with the official OpenAI SDK as the client: a
~1,400-token prompt sent twice with a different last line reuses everything before that line, and each turn of
a 10-turn chat reuses the whole conversation before it. Both are what a chat client sends. The times are for
benchmarks/prefix_reuse_bench.py (a test asserts behaviour): there, the second request takes a tenth of the first.
"""

from __future__ import annotations

import re

import pytest

from server_helpers import running_server

openai = pytest.importorskip("openai")

FILLER = " ".join(f"Line {i}: the quick brown fox jumps over the lazy dog and keeps running." for i in range(75))


@pytest.fixture(scope="module")
def gemma3_server(gemma3_path):
    with running_server(gemma3_path, "--ctx", "4096", "--alias", "gemma") as server:
        yield server


def client_for(server):
    return openai.OpenAI(base_url=server.url + "/v1", api_key="unused", max_retries=0)


def cached_of(response) -> int:
    details = response.usage.prompt_tokens_details
    return details.cached_tokens if details else 0


def test_a_long_prompt_sent_again_with_another_last_line_reuses_its_prefix(gemma3_server):
    client = client_for(gemma3_server)

    def complete(prompt):
        return client.completions.create(model="gemma", prompt=prompt, max_tokens=4, temperature=0)

    first = complete(FILLER + "\nQuestion: what did the fox do?")
    assert first.usage.prompt_tokens > 1300  # far past the 512-token window: the rings have wrapped twice
    second = complete(FILLER + "\nQuestion: who was lazy in the story?")
    assert cached_of(second) >= 1300
    assert cached_of(second) <= second.usage.prompt_tokens - 1
    # The log line says it too.
    gemma3_server.wait_until(lambda: re.search(r"\(\d{4} cached\)", gemma3_server.log), "a log line with the reuse")


def test_each_turn_of_a_ten_turn_chat_reuses_the_conversation_before_it(gemma3_server):
    client = client_for(gemma3_server)
    messages = [{"role": "user", "content": FILLER + "\nWhat did the fox do? Answer briefly."}]
    previous_prompt = 0
    for turn in range(10):
        response = client.chat.completions.create(model="gemma", messages=messages, max_tokens=6, temperature=0)
        if turn > 0:
            # Everything up to the reply before was computed already: only the reply's last token (never fed
            # back) and the new user message are new. The template may re-spell the reply's end, so allow a few.
            assert cached_of(response) >= previous_prompt, (turn, cached_of(response), previous_prompt)
        previous_prompt = response.usage.prompt_tokens
        reply = response.choices[0].message.content or ""
        messages += [{"role": "assistant", "content": reply}, {"role": "user", "content": f"And then? ({turn})"}]
    assert previous_prompt > 1300
