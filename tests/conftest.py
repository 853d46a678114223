"""Shared test fixtures: the default models (pulled into the store on first use) and llama.cpp references.

Model-dependent tests skip only when a model cannot be fetched, and say so loudly in the summary.
"""

from __future__ import annotations

import atexit
import json
import os
import shutil
import tempfile
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]

# The engine's default arithmetic rounds activations as llama.cpp does (int8 in decode, bfloat16 in prefill:
# pellucid.quant.kernels.fast_mode). Most tests check float32 guarantees (a cached forward equals an uncached
# one, batched decode equals one sequence alone, transformers' logits to 1e-4), which hold in exact mode, so the
# session runs in exact mode; tests of the default arithmetic ask for it with the `default_arithmetic` fixture
# (tests/test_arithmetic.py, and the llama.cpp agreement tests, which run in both). Subprocesses inherit this.
os.environ.setdefault("PELLUCID_EXACT", "1")
_SKIPPED_MODELS: dict[str, str] = {}

# The tests' own registry of running servers (pellucid.servers), for every process they start: a server you
# left running must not answer the tests' `pellucid run`, nor theirs yours. Nor does $PELLUCID_KEEP_ALIVE
# start servers behind the tests' backs.
os.environ["PELLUCID_SERVERS"] = tempfile.mkdtemp(prefix="pellucid-test-servers-")
atexit.register(shutil.rmtree, os.environ["PELLUCID_SERVERS"], ignore_errors=True)
os.environ.pop("PELLUCID_KEEP_ALIVE", None)


def fixtures_dir() -> Path:
    """../shared/fixtures is the source of truth; tests/fixtures is a vendored copy for clones without it."""
    for candidate in (
        os.environ.get("PELLUCID_FIXTURES"),
        REPO.parent / "shared" / "fixtures",
        REPO / "shared" / "fixtures",
    ):
        if candidate and (Path(candidate) / "llamacpp" / "reference.json").is_file():
            return Path(candidate)
    return REPO / "tests" / "fixtures"


@pytest.fixture
def default_arithmetic(monkeypatch):
    """The engine's default arithmetic for this test (llama.cpp's rounding where the CPU has the kernels), in this
    process and in the subprocesses it starts. Yields whether that is the rounded (fast) mode on this CPU."""
    from pellucid.quant import kernels

    monkeypatch.delenv("PELLUCID_EXACT", raising=False)
    monkeypatch.setattr(kernels, "_fast", None)
    yield kernels.fast_mode()


@pytest.fixture(params=["exact", "default"])
def arithmetic(request, monkeypatch):
    """Run the test in exact mode and in the default arithmetic; yields the mode's name."""
    from pellucid.quant import kernels

    if request.param == "default":
        monkeypatch.delenv("PELLUCID_EXACT", raising=False)
    else:
        monkeypatch.setenv("PELLUCID_EXACT", "1")
    monkeypatch.setattr(kernels, "_fast", None)
    yield request.param


@pytest.fixture(scope="session")
def reference() -> dict:
    return json.loads((fixtures_dir() / "llamacpp" / "reference.json").read_text())


def _model(name: str):
    from pellucid import store

    if name in _SKIPPED_MODELS:
        pytest.skip(_SKIPPED_MODELS[name])
    try:
        return store.resolve(name, quiet=True)
    except Exception as e:  # any failure to fetch means "skip, loudly", not "error"
        reason = f"MODEL {name} COULD NOT BE FETCHED, model tests skipped: {e}"
        _SKIPPED_MODELS[name] = reason
        pytest.skip(reason)


@pytest.fixture(scope="session")
def smollm2_path() -> Path:
    return _model("smollm2-135m").path


@pytest.fixture(scope="session")
def smollm2_server(smollm2_path):
    """One `pellucid serve smollm2-135m` process shared by the server test modules (tests/server_helpers.py)."""
    from server_helpers import shared_server

    yield from shared_server(smollm2_path)


@pytest.fixture(scope="session")
def gemma3_path() -> Path:
    return _model("gemma3-270m").path


@pytest.fixture(scope="session")
def minilm_path() -> Path:
    return _model("minilm-l6").path


def pytest_terminal_summary(terminalreporter):
    if _SKIPPED_MODELS:
        terminalreporter.section("MODELS NOT AVAILABLE", sep="!", red=True, bold=True)
        for reason in _SKIPPED_MODELS.values():
            terminalreporter.write_line(reason, red=True, bold=True)
