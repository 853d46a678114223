"""The KV cache type flags (--kv-type, -ctk/--cache-type-k, -ctv/--cache-type-v) on the commands, and a server
whose caches are q8_0 answering real requests (its batched decode step reads q8_0 keys in the native kernels)."""

from __future__ import annotations

import json
import threading
import urllib.request

from server_helpers import running_server
from test_cli import assert_user_error, run


def test_run_uses_and_reports_the_kv_types(smollm2_path, monkeypatch):
    monkeypatch.delenv("PELLUCID_EXACT", raising=False)  # the default arithmetic: native kernels, nothing compiled
    proc = run("run", "smollm2-135m", "The capital of France is", "-n", "2", "--temperature", "0", "--local",
               "--kv-type", "f16", "-ctk", "q8_0")  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    assert "KV cache q8_0/f16" in proc.stderr


def test_unknown_kv_type_is_a_one_line_error_naming_the_choices(smollm2_path):
    for flags in (["--kv-type", "q5_k"], ["-ctv", "int8"]):
        proc = run("run", "smollm2-135m", "hi", "-n", "1", "--local", *flags)
        assert_user_error(proc, "unknown KV cache type", "f32, f16, bf16, q8_0, q4_0")
    assert_user_error(run("fit", "smollm2-135m", "-ctk", "q9"), "unknown KV cache type")


def test_fit_and_ppl_take_the_flags(smollm2_path, tmp_path, monkeypatch):
    monkeypatch.delenv("PELLUCID_EXACT", raising=False)  # the default arithmetic: native kernels, nothing compiled
    proc = run("fit", "smollm2-135m", "--ctx", "4096", "-ctk", "q8_0", "-ctv", "q4_0", "--memory", "2GiB")
    assert proc.returncode == 0, proc.stderr
    assert "KV cache in q8_0/q4_0" in proc.stdout and "longest context by KV type" in proc.stdout
    text = tmp_path / "text.txt"
    text.write_text("The quick brown fox jumps over the lazy dog. " * 8)
    proc = run("ppl", "smollm2-135m", str(text), "--ctx", "64", "--kv-type", "q8_0", "--json")
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout.splitlines()[-1])["kv_types"] == ["q8_0", "q8_0"]


def post(server, path: str, body: dict) -> dict:
    request = urllib.request.Request(
        server.url + path, data=json.dumps(body).encode(), headers={"Content-Type": "application/json"}
    )
    with urllib.request.urlopen(request, timeout=300) as response:
        return json.loads(response.read())


def test_server_with_q8_0_keys_answers(smollm2_path, monkeypatch):
    """Default arithmetic (the native kernels, where the CPU has them), two requests at once: the batched decode
    step writes and reads q8_0 keys in each sequence's cache."""
    monkeypatch.delenv("PELLUCID_EXACT", raising=False)
    with running_server("smollm2-135m", "-ctk", "q8_0", "--ctx", "256", "--parallel", "2") as server:
        assert "in q8_0/f16" in server.log  # the startup line names the KV types
        answers = {}

        def ask(i):
            body = {"model": "smollm2-135m", "prompt": ["The capital of France is", "1, 2, 3, 4,"][i],
                    "max_tokens": 12, "temperature": 0}  # fmt: skip
            answers[i] = post(server, "/v1/completions", body)["choices"][0]["text"]

        threads = [threading.Thread(target=ask, args=(i,)) for i in range(2)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert "Paris" in answers[0], answers
        assert "5" in answers[1], answers
