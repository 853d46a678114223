"""The command line, run as a user runs it: `python -m pellucid ...` in a subprocess, on the real models.

Bad input (an unknown name, garbage bytes, a pickle, a missing path, a nonsense size) must end in one
`error:` line and exit code 1, never a traceback; `--debug` must show the traceback. `tokenize --json` is
checked against llama.cpp's token ids from the reference fixtures.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from pellucid import cli


def run(*args: str, stdin: str | None = None, env: dict | None = None) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "pellucid", *args],
        input=stdin,
        capture_output=True,
        text=True,
        timeout=120,
        env={**os.environ, **(env or {})},
    )


def assert_user_error(proc: subprocess.CompletedProcess, *fragments: str) -> None:
    assert proc.returncode == 1, proc.stderr
    assert "Traceback" not in proc.stderr
    lines = proc.stderr.splitlines()
    error_lines = [line for line in lines if line.startswith("error:")]
    assert len(error_lines) == 1, proc.stderr
    assert lines[-1 - sum(1 for line in lines if line.startswith("  "))].startswith("error:")
    for fragment in fragments:
        assert fragment in proc.stderr


# -- the happy paths ------------------------------------------------------------------------------------


def test_version():
    proc = run("--version")
    assert proc.returncode == 0 and proc.stdout.strip() == "pellucid 0.1.0"


def test_no_command_prints_help():
    proc = run()
    assert proc.returncode == 2 and "inspect" in proc.stdout and "fit" in proc.stdout


def test_inspect_smollm2_text(smollm2_path):
    proc = run("inspect", "smollm2-135m")
    assert proc.returncode == 0, proc.stderr
    for expected in ("llama", "135M", "Q4_1", "grouped-query attention", "ChatML", "KV cache per token", "8,192"):
        assert expected in proc.stdout


def test_inspect_json_by_path(gemma3_path):
    proc = run("inspect", str(gemma3_path), "--json")
    assert proc.returncode == 0, proc.stderr
    data = json.loads(proc.stdout)
    assert data["architecture"] == "gemma3" and data["config"]["sliding_window"] == 512
    assert data["tokenizer"]["chat_template"] is False


def test_inspect_hf_folder(minilm_path):
    proc = run("inspect", str(minilm_path))
    assert proc.returncode == 0, proc.stderr
    assert "bert" in proc.stdout and "wordpiece" in proc.stdout and "encoder" in proc.stdout


def test_list_shows_the_store(smollm2_path):
    proc = run("list", "--json")
    assert proc.returncode == 0, proc.stderr
    data = json.loads(proc.stdout)
    smollm2 = next(m for m in data["models"] if m["name"] == "smollm2-135m")
    assert smollm2["architecture"] == "llama" and smollm2["quantization"] == "Q4_1"
    text = run("list").stdout
    assert "NAME" in text and "smollm2-135m" in text and "135M" in text


def test_pull_list_rm_in_a_private_store(tmp_path, smollm2_path):
    env = {"PELLUCID_HOME": str(tmp_path / "home")}
    proc = run("pull", str(smollm2_path), "--name", "mine", env=env)
    assert proc.returncode == 0, proc.stderr
    assert "mine: llama, 135M parameters, Q4_1" in proc.stdout
    listing = run("list", env=env).stdout
    assert "mine" in listing and "smollm2-135m" in listing.split("not pulled yet")[1]  # catalog, not pulled
    proc = run("rm", "mine", env=env)
    assert proc.returncode == 0 and "removed mine" in proc.stdout
    assert "mine" not in run("list", env=env).stdout
    assert_user_error(run("rm", "mine", env=env), "not in the store")


def test_fit_with_a_given_memory(smollm2_path):
    proc = run("fit", "smollm2-135m", "--memory", "8GiB", "--ctx", "4096")
    assert proc.returncode == 0, proc.stderr
    assert "--memory: 8 GiB" in proc.stdout and "=> fits" in proc.stdout
    for row in ("file (Q4_1), pellucid", "f32", "f16", "q8_0", "q4_0"):
        assert row in proc.stdout
    small = run("fit", "smollm2-135m", "--memory", "300MiB")
    assert small.returncode == 0 and "does not fit" in small.stdout


def test_fit_json_and_detected_memory(gemma3_path):
    proc = run("fit", "gemma3-270m", "--json", "--kv-type", "q8_0")
    assert proc.returncode == 0, proc.stderr
    plan = json.loads(proc.stdout)
    assert plan["kv_type"] == "q8_0" and plan["context_length"] == 32768
    ram = plan["targets"][0]
    assert ram["budget"]["device"] == "cpu" and ram["budget"]["bytes"] > 0
    assert {r["weights_as"] for r in ram["rows"]} == {"file", "f32", "f16", "q8_0", "q4_0"}
    for r in ram["rows"]:
        e = r["estimate"]
        assert e["total"] == e["runtime"] + e["weights"] + max(e["kv_cache"] + e["compute_peak"], e["loading"])
        assert r["fits"] == (e["total"] <= ram["budget"]["bytes"])


@pytest.mark.parametrize(
    "model, key", [("smollm2-135m", "smollm2-135m-instruct-q4_1"), ("gemma3-270m", "gemma3-270m-q4_k_m")]
)
def test_tokenize_json_matches_llama_cpp(model, key, reference, smollm2_path, gemma3_path):
    cases = reference[key]["tokenize"][:4]
    for case in cases:
        proc = run("tokenize", model, case["text"], "--json")
        assert proc.returncode == 0, proc.stderr
        data = json.loads(proc.stdout)
        assert set(data) == {"ids", "pieces"}
        assert data["ids"] == case["ids_with_bos"], case["text"]
        assert len(data["pieces"]) == len(data["ids"])


def test_tokenize_special_and_stdin(smollm2_path):
    plain = json.loads(run("tokenize", "smollm2-135m", "<|im_start|>user", "--json").stdout)
    special = json.loads(run("tokenize", "smollm2-135m", "<|im_start|>user", "--special", "--json").stdout)
    assert special["ids"] == [1, 4093] and special["pieces"][0] == "<|im_start|>"
    assert len(plain["ids"]) > 2  # without --special the marker is ordinary text
    proc = run("tokenize", "smollm2-135m", "-", stdin="Hello world")
    assert proc.returncode == 0, proc.stderr
    assert "␣world" in proc.stdout  # the space before "world" made visible
    assert "2 tokens for 2 words, 11 characters" in proc.stdout


# -- bad input: one error line, exit 1, no traceback ----------------------------------------------------


def test_unknown_model_name():
    assert_user_error(run("inspect", "no-such-model-xyz"), "unknown model", "smollm2-135m")


def test_nonexistent_path(tmp_path):
    assert_user_error(run("inspect", str(tmp_path / "missing.gguf")), "no such file")


def test_corrupt_file(tmp_path):
    bad = tmp_path / "garbage.gguf"
    bad.write_bytes(b"\x00\x01garbage")
    assert_user_error(run("inspect", str(bad)), "not a GGUF file")
    assert_user_error(run("fit", str(bad)), "not a GGUF file")


def test_truncated_gguf(tmp_path, smollm2_path):
    cut = tmp_path / "cut.gguf"
    with open(smollm2_path, "rb") as f:
        cut.write_bytes(f.read(5000))
    assert_user_error(run("inspect", str(cut)), "truncated")


def test_pickle_file_is_refused(tmp_path):
    pickle = tmp_path / "model.pt"
    pickle.write_bytes(b"\x80\x04\x95fake pickle")
    assert_user_error(run("inspect", str(pickle)), "pickle")


def test_folder_that_is_not_a_model(tmp_path):
    assert_user_error(run("inspect", str(tmp_path)), "config.json")


def test_bad_memory_size(smollm2_path):
    assert_user_error(run("fit", "smollm2-135m", "--memory", "lots"), "8GiB")


def test_bad_context_is_a_usage_error():
    proc = run("fit", "--ctx", "0")
    assert proc.returncode == 2 and "positive" in proc.stderr and "Traceback" not in proc.stderr


def test_debug_shows_the_traceback(tmp_path):
    bad = tmp_path / "garbage.gguf"
    bad.write_bytes(b"nope")
    for args in (["--debug", "inspect", str(bad)], ["inspect", str(bad), "--debug"]):
        proc = run(*args)
        assert proc.returncode == 1
        assert "Traceback" in proc.stderr and "ModelFileError" in proc.stderr
        assert proc.stderr.splitlines()[-1].startswith("error:")


# -- the error policy, in-process -----------------------------------------------------------------------


def test_a_bug_says_so_with_the_traceback(monkeypatch, capsys):
    def broken(args):
        raise ZeroDivisionError("oops")

    monkeypatch.setattr(cli.models, "cmd_list", broken)
    assert cli.main(["list"]) == cli.EXIT_BUG
    err = capsys.readouterr().err
    assert "this is a bug in pellucid" in err and "ZeroDivisionError" in err and "Traceback" in err


def test_ctrl_c_exits_130_quietly(monkeypatch, capsys):
    def interrupted(args):
        raise KeyboardInterrupt

    monkeypatch.setattr(cli.models, "cmd_list", interrupted)
    assert cli.main(["list"]) == 130
    assert "Traceback" not in capsys.readouterr().err


def test_visible_whitespace_and_partial_utf8():
    assert cli.models.visible(b" hello\n\t") == "␣hello↵⇥"
    assert cli.models.visible("é".encode()) == "é"
    assert cli.models.visible("🦙".encode()[:2]) == "<0xF0><0x9F>"
    assert cli.models.visible(b"\x00") == "\\u0000"
