"""Debian's Chromium through playwright, for the tests that look at pages (never a downloaded browser).

`require_chromium(what)` skips the calling test module, loudly, when the playwright package or the browser is
missing; `make test` installs chromium when it runs as root.
"""

from __future__ import annotations

import os
import shutil

import pytest

CHROMIUM = os.environ.get("PELLUCID_CHROMIUM", "/usr/bin/chromium")
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                 "--disable-dev-shm-usage", "--no-first-run", "--disable-extensions"]  # fmt: skip


def require_chromium(what: str) -> None:
    """Skip the calling module (call at import time) unless playwright and Chromium are both here."""
    try:
        import playwright.sync_api  # noqa: F401
    except ImportError:  # pragma: no cover - depends on the environment
        available = False
    else:
        available = os.path.isfile(CHROMIUM) or shutil.which(CHROMIUM) is not None
    if not available:
        pytest.skip(
            f"{what} SKIPPED: needs the playwright package and Chromium at {CHROMIUM} "
            f"(`apt-get install -y chromium`, or set PELLUCID_CHROMIUM)",
            allow_module_level=True,
        )
