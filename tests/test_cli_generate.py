"""`pellucid run`, `chat` and `ppl` as a user runs them: real subprocesses on the real models."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

from test_cli import assert_user_error, run

SMOLLM2 = "smollm2-135m-instruct-q4_1"


def test_run_chat_answer_and_stats(smollm2_path, reference):
    chat = reference[SMOLLM2]["chat"][0]
    proc = run("run", str(smollm2_path), chat["messages"][0]["content"], "--temperature", "0")
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == chat["reply"]
    assert "prompt tokens" in proc.stderr and "tok/s" in proc.stderr and "stopped: stop" in proc.stderr


def test_run_json_raw_and_stdin(smollm2_path, reference):
    greedy = reference[SMOLLM2]["greedy"][3]  # "1, 2, 3, 4, 5,"
    proc = run(
        "run", str(smollm2_path), "-", "--raw", "--json", "--temperature", "0", "-n", "6", stdin=greedy["prompt"]
    )
    assert proc.returncode == 0, proc.stderr
    out = json.loads(proc.stdout)
    assert set(out) == {"text", "ids", "prompt_ids", "stop_reason", "stats"}
    assert out["prompt_ids"] == greedy["prompt_ids"]
    assert out["ids"] == greedy["greedy_ids"][:6]
    assert out["stop_reason"] == "length"
    assert out["stats"]["generated_tokens"] == 6 and out["stats"]["decode_tok_s"] > 0


def test_run_stop_string_and_seed(smollm2_path):
    proc = run("run", str(smollm2_path), "1, 2, 3, 4, 5,", "--raw", "--temperature", "0", "--stop", " 8", "-n", "20")
    assert proc.returncode == 0 and proc.stdout == " 6, 7,\n"
    args = ("run", str(smollm2_path), "Tell me a story.", "--seed", "7", "--temperature", "1.2", "-n", "12", "--json")
    first, second = json.loads(run(*args).stdout), json.loads(run(*args).stdout)
    assert first["ids"] == second["ids"]


def test_run_base_model_warns(gemma3_path):
    proc = run("run", str(gemma3_path), "Hello", "-n", "4", "--temperature", "0")
    assert proc.returncode == 0, proc.stderr
    assert "no chat template" in proc.stderr


def test_run_bad_input(smollm2_path):
    assert_user_error(run("run", str(smollm2_path), "word " * 300, "--ctx", "128"), "context holds 128")
    assert_user_error(run("run", str(smollm2_path), "hi", "--temperature", "-1", "--top-p", "7"), "top_p")
    assert_user_error(run("run", str(smollm2_path), "hi", "--ctx", "100000"), "context length")
    assert_user_error(run("run", str(smollm2_path), "hi", "--device", "cuda:7"), "cuda")


def test_chat_turns_commands_and_cache_reuse(smollm2_path):
    script = "\n".join(
        [
            "What is the capital of France?",
            "/stats",
            "/set temperature 0.3",
            "/set temprature 1",
            "/set top_k banana",
            "And of Italy?",
            "/stats",
            "/reset",
            "/stats",
            "/system You are a pirate.",
            "/bogus",
            "/quit",
        ]
    )
    proc = run("chat", str(smollm2_path), "--temperature", "0", "-n", "30", stdin=script + "\n")
    assert proc.returncode == 0, proc.stderr
    out = proc.stdout
    assert "Paris" in out
    assert "(temperature = 0.3)" in out and "unknown option temprature" in out and "error:" in out
    assert "cached)" in out  # turn 2 reused turn 1 from the KV cache
    assert "(conversation cleared)" in out and "context: 0 of" in out
    assert "unknown command /bogus" in out
    assert "Traceback" not in proc.stderr


def test_chat_ctrl_c_stops_the_answer_not_the_program(smollm2_path):
    """Ctrl-C (SIGINT) during an answer stops that answer; the chat goes on and /quit still works."""
    # --ignore-eos: the answer is still streaming when Ctrl-C arrives, whatever the model would say.
    command = ["chat", str(smollm2_path), "--temperature", "0", "-n", "2000", "--ignore-eos"]
    proc = subprocess.Popen(
        [sys.executable, "-m", "pellucid", *command],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
    )
    try:
        proc.stdin.write("Write a very long story about a dragon.\n")
        proc.stdin.flush()
        banner = proc.stdout.readline()
        assert "context" in banner
        proc.stdout.read(20)  # the answer has started streaming
        time.sleep(0.5)
        proc.send_signal(signal.SIGINT)
        proc.stdin.write("/quit\n")
        proc.stdin.flush()
        out, err = proc.communicate(timeout=60)
    finally:
        proc.kill()
    assert proc.returncode == 0, err
    assert "[stopped]" in out
    assert "Traceback" not in err


def test_ppl_json(smollm2_path, reference, tmp_path):
    text = reference[SMOLLM2]["perplexity"]["text"]
    path = tmp_path / "text.txt"
    path.write_text(text * 2)
    proc = run("ppl", str(smollm2_path), str(path), "--ctx", "128", "--json")
    assert proc.returncode == 0, proc.stderr
    out = json.loads(proc.stdout)
    assert (
        out["n_windows"] == out["n_tokens"] // 128 and out["n_scored"] == out["n_windows"] * 63
    )  # llama-perplexity scores positions ctx/2 .. ctx-2
    assert 1.0 < out["ppl"] < 50 and out["ppl_stderr"] > 0
    proc = run("ppl", str(smollm2_path), str(path), "--ctx", "100000")
    assert_user_error(proc, "context length")
    short = tmp_path / "short.txt"
    short.write_text("Too short.")
    assert_user_error(run("ppl", str(smollm2_path), str(short)), "fewer than one window")
    binary = tmp_path / "binary.txt"
    binary.write_bytes(b"\xff\xfe\x00garbage")
    assert_user_error(run("ppl", str(smollm2_path), str(binary)), "not UTF-8")


def test_run_with_a_chat_template_file(smollm2_path, tmp_path):
    """--chat-template-file replaces the model's template (llama-server's flag); a missing file is a user error."""
    template = tmp_path / "plain.jinja"
    template.write_text("{% for m in messages %}Q: {{ m['content'] }}\n{% endfor %}A:")
    proc = run("run", str(smollm2_path), "What is 2+2?", "-n", "3", "--temperature", "0", "--local",
               "--chat-template-file", str(template), "--json")  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout)["stats"]["prompt_tokens"] < 20  # not SmolLM2's ChatML with its system prompt
    assert_user_error(run("run", str(smollm2_path), "Hi", "--chat-template-file", str(tmp_path / "nope.jinja")),
                      "--chat-template-file", "nope.jinja")  # fmt: skip
    import pellucid

    llm = pellucid.load(str(smollm2_path), ctx=64, chat_template=template.read_text())
    assert llm.chat_prompt([{"role": "user", "content": "Hi"}])[0] == "Q: Hi\nA:"
