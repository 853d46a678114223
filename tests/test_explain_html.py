"""`pellucid explain --html`: the report page in a real headless Chromium (Debian's, through playwright): it
renders every section, hovering a generated token shows its alternatives, nothing is fetched from anywhere,
and no console error. Skips loudly without Chromium, as the chat page's test does."""

from __future__ import annotations

import os
import shutil

from browser_helpers import CHROMIUM, CHROMIUM_ARGS, require_chromium
from test_cli import run

require_chromium("EXPLAIN HTML TEST")

from playwright.sync_api import sync_playwright  # noqa: E402 (after the skip: it may be missing)


def test_the_report_page_renders_and_shows_alternatives_on_hover(smollm2_path, tmp_path):
    page_path = tmp_path / "run.html"
    proc = run("explain", str(smollm2_path), "Why is the sky blue?", "-n", "6", "--temperature", "0",
               "--html", str(page_path))  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        try:
            page = browser.new_page()
            errors, requests = [], []
            page.on("console", lambda m: errors.append(m.text) if m.type == "error" else None)
            page.on("pageerror", lambda e: errors.append(str(e)))
            page.on("request", lambda r: requests.append(r.url))
            page.goto(page_path.as_uri())
            for title in ("Text → tokens", "Where the time went", "Against this machine's limits", "Per layer",
                          "Loading", "Memory", "Logit lens"):  # fmt: skip
                assert page.locator("h2", has_text=title).count() == 1
            assert page.locator("svg.roofline circle.point").count() == 2  # prefill and decode under the roof
            assert "Q4_1" in page.locator("table.nums").first.text_content()  # the weights by storage type
            generated = page.locator(".tok.gen")
            assert generated.count() >= 1
            assert page.locator("table.lens tr").count() > 10  # a row per layer
            generated.first.hover()
            tip = page.locator("#tip")
            assert tip.is_visible() and "%" in tip.text_content() and "▸" in tip.text_content()
            page.screenshot(path=str(tmp_path / "run.png"), full_page=True)
            if os.environ.get("PELLUCID_SCREENSHOTS"):  # to look at it yourself
                shutil.copy(tmp_path / "run.png", os.environ["PELLUCID_SCREENSHOTS"])
        finally:
            browser.close()
    assert errors == []
    assert requests == [page_path.as_uri()], "the page must load nothing from anywhere"
