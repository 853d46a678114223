"""The chat page (GET /) in a real headless Chromium: type a question, watch the answer stream in, press stop.

Drives Debian's `chromium` through playwright (never a downloaded browser). Without /usr/bin/chromium or the
playwright package the test skips, loudly; `make test` installs chromium when it runs as root.
"""

from __future__ import annotations

import json

import pytest

from browser_helpers import CHROMIUM, CHROMIUM_ARGS, require_chromium

require_chromium("WEB PAGE TEST")

from playwright.sync_api import expect, sync_playwright  # noqa: E402 (after the skip: it may be missing)


@pytest.fixture(scope="module")
def server(smollm2_server):
    return smollm2_server  # `pellucid serve smollm2-135m --ctx 512 ...`, shared with the other server tests


@pytest.fixture(scope="module")
def browser():
    """One Chromium for the module: playwright's sync API runs one event loop per thread, so a second
    sync_playwright() while this one is open would fail."""
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        try:
            yield browser
        finally:
            browser.close()


@pytest.fixture(scope="module")
def page(server, browser):
    page = browser.new_page()
    page.set_default_timeout(300_000)  # a shared 2-core machine can be slow
    expect.set_options(timeout=300_000)
    yield page
    page.close()


@pytest.mark.slow
def test_chat_page_streams_stops_and_keeps_the_conversation(server, page):
    sent = []
    page.on("request", lambda r: sent.append(json.loads(r.post_data)) if r.url.endswith("/chat/completions") else None)
    external = []
    page.on("request", lambda r: external.append(r.url) if not r.url.startswith(server.url) else None)

    generated_before = server.metrics()["pellucid_generated_tokens_total"]
    page.goto(server.url + "/")
    expect(page.locator("#model")).to_have_text("smollm2-135m")
    page.fill("#system", "You are a storyteller.")
    page.fill("#max_tokens", "300")
    page.fill("#temperature", "0.7")

    # Turn 1: a long answer, stopped while it streams.
    page.fill("#prompt", "Tell me a long story about a dragon.")
    page.click("#send")
    answer = page.locator(".msg.assistant").last
    expect(page.locator("#stop")).to_be_enabled()
    expect(answer).to_have_class("msg assistant streaming")
    page.wait_for_function("document.querySelector('.msg.assistant').textContent.length > 20")
    page.click("#stop")
    expect(answer.locator(".note")).to_have_text("(stopped)")
    expect(page.locator("#stop")).to_be_disabled()
    expect(page.locator("#send")).to_be_enabled()
    partial = answer.inner_text()
    # The server cancelled the generation: its slot is free again, long before 300 tokens.
    server.wait_until(lambda: server.metrics()["pellucid_active_sequences"] == 0, "the stopped reply to be cancelled")
    assert server.metrics()["pellucid_generated_tokens_total"] - generated_before < 300

    # Turn 2: the conversation so far goes with it, and the reply runs to the end.
    page.fill("#max_tokens", "8")
    page.fill("#prompt", "Now say goodbye.")
    page.press("#prompt", "Enter")
    second = page.locator(".msg.assistant").nth(1)
    expect(second).not_to_have_class("msg assistant streaming")
    expect(page.locator("#send")).to_be_enabled()
    assert second.inner_text().strip()
    expect(page.locator("#readout")).to_contain_text("tok/s")
    expect(page.locator("#readout")).to_contain_text("/ 512")

    body = sent[-1]
    assert body["stream"] is True and body["max_tokens"] == 8 and body["temperature"] == 0.7
    assert [m["role"] for m in body["messages"]] == ["system", "user", "assistant", "user"]
    assert body["messages"][0]["content"] == "You are a storyteller."
    assert body["messages"][2]["content"].strip() and body["messages"][2]["content"] in partial
    assert external == []  # the page loads nothing from outside the server


def streamed_content(sse_text: str) -> str:
    """The answer text a streamed chat completion carried in its `delta.content` pieces."""
    text = ""
    for line in sse_text.splitlines():
        if line.startswith("data:") and line[5:].strip() != "[DONE]":
            for choice in json.loads(line[5:]).get("choices", []):
                text += choice["delta"].get("content") or ""
    return text


@pytest.mark.slow
def test_show_tokens_colours_each_token_and_shows_alternatives_and_stats(server, page, tmp_path):
    sent, external, errors = [], [], []
    page.on("request", lambda r: sent.append(json.loads(r.post_data)) if r.url.endswith("/chat/completions") else None)
    page.on("request", lambda r: external.append(r.url) if not r.url.startswith(server.url) else None)
    page.on("console", lambda m: errors.append(f"{m.text} {m.location}") if m.type == "error" else None)
    page.on("pageerror", lambda e: errors.append(str(e)))

    page.goto(server.url + "/")
    expect(page.locator("#model")).to_have_text("smollm2-135m")
    page.check("#show_tokens")
    page.reload()  # the switch persists like the other settings
    expect(page.locator("#show_tokens")).to_be_checked()
    page.click("#reset")
    page.fill("#system", "")
    page.fill("#temperature", "0")
    page.fill("#max_tokens", "24")

    page.fill("#prompt", "What is the capital of France?")
    with page.expect_response(lambda r: r.url.endswith("/chat/completions")) as response:
        page.click("#send")
    answer = page.locator(".msg.assistant").last
    expect(answer).not_to_have_class("msg assistant streaming")
    expect(answer.locator(".stats")).to_contain_text("tok/s")
    assert sent[-1]["logprobs"] is True and sent[-1]["top_logprobs"] == 5

    # One span per token, and together they spell the answer the server streamed as text.
    tokens = answer.locator(".token")
    assert tokens.count() > 1
    reply = streamed_content(response.value.text())
    assert reply.strip()
    assert "".join(tokens.all_text_contents()) == reply
    assert tokens.first.evaluate("e => getComputedStyle(e).backgroundColor") != "rgba(0, 0, 0, 0)"

    # Hovering a token lists the alternatives with their probabilities.
    tokens.nth(1).hover()
    popup = page.locator("#token-popup")
    expect(popup).to_be_visible()
    expect(popup).to_contain_text("%")
    assert popup.inner_text().count("%") >= 2  # the chosen token and at least one alternative
    stats = answer.locator(".stats").inner_text()
    for part in ("tokens", "prompt", "tok/s", "first token", "finish: "):
        assert part in stats
    assert "▸" in popup.inner_text()  # the token that was chosen, marked
    page.screenshot(path=str(tmp_path / "chat_tokens.png"))
    page.mouse.move(0, 0)
    expect(popup).to_be_hidden()
    page.emulate_media(color_scheme="dark")
    page.screenshot(path=str(tmp_path / "chat_tokens_dark.png"))
    page.emulate_media(color_scheme="light")

    # Switched off, the next reply is plain text again and the earlier one keeps its tokens.
    page.uncheck("#show_tokens")
    page.fill("#max_tokens", "8")
    page.fill("#prompt", "And of Italy?")
    page.press("#prompt", "Enter")
    second = page.locator(".msg.assistant").nth(1)
    expect(second).not_to_have_class("msg assistant streaming")
    assert "logprobs" not in sent[-1] and sent[-1]["messages"][1]["content"] == reply
    assert second.locator(".token").count() == 0 and second.locator(".stats").count() == 0
    assert answer.locator(".token").count() == tokens.count()

    assert errors == []
    assert external == []  # the page loads nothing from outside the server


THINKING_TEMPLATE = (
    "{% for message in messages %}<|im_start|>{{ message['role'] }}\n{{ message['content'] }}<|im_end|>\n{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n<think>\n{% endif %}"
)


@pytest.mark.slow
def test_show_tokens_puts_a_reasoning_models_thinking_tokens_in_the_thinking_block(smollm2_path, tmp_path, browser):
    """A template whose generation prompt opens <think> (as Qwen3's and DeepSeek-R1's do) makes every token
    SmolLM2 writes reasoning: the token spans go to the folded thinking block, not to the answer."""
    from server_helpers import running_server

    template = tmp_path / "thinking.jinja"
    template.write_text(THINKING_TEMPLATE)
    errors = []
    with running_server(smollm2_path, "--ctx", "512", "--chat-template-file", str(template)) as server:
        page = browser.new_page()
        try:
            page.set_default_timeout(300_000)
            page.on("pageerror", lambda e: errors.append(str(e)))
            page.goto(server.url + "/")
            page.check("#show_tokens")
            page.fill("#temperature", "0")
            page.fill("#max_tokens", "10")
            page.fill("#prompt", "Why is the sky blue?")
            with page.expect_response(lambda r: r.url.endswith("/chat/completions")) as response:
                page.click("#send")
            bubble = page.locator(".msg.assistant").last
            expect(bubble).not_to_have_class("msg assistant streaming", timeout=300_000)
            thinking = bubble.locator("details.thinking")
            expect(thinking).to_be_visible()
            reasoning = "".join(
                choice["delta"].get("reasoning_content") or ""
                for line in response.value.text().splitlines()
                if line.startswith("data:") and line[5:].strip() != "[DONE]"
                for choice in json.loads(line[5:]).get("choices", [])
            )
            assert reasoning.strip()
            thought_tokens = thinking.locator(".token")
            assert thought_tokens.count() == bubble.locator(".token").count() >= 5  # none in the answer
            assert "".join(thought_tokens.all_text_contents()).strip().startswith(reasoning.strip()[:10])
        finally:
            page.close()
    assert errors == []
