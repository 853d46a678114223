"""`pellucid bench`: the command runs, its JSON has the issue's shape, peers are run or skipped with a reason.

Tiny --pp/--tg: these tests check the plumbing (worker processes, JSON, table, skip messages), never a speed.
"""

from __future__ import annotations

import json
import os

import pytest

from pellucid.bench import BenchReport, Measurement, format_report
from pellucid.cli import main


def bench_json(capsys, *args: str) -> dict:
    assert main(["bench", *args, "--json"]) == 0
    return json.loads(capsys.readouterr().out)


def test_json_has_the_issues_keys_and_a_missing_peer_says_how_to_install_it(capsys, monkeypatch, smollm2_path):
    monkeypatch.delenv("PELLUCID_LLAMA_CPP_PYTHON", raising=False)
    out = bench_json(capsys, str(smollm2_path), "--pp", "4", "--tg", "2", "--reps", "2", "--compare", "llama.cpp")
    assert {"model", "load_s", "pp", "tg", "peak_rss_mb", "peers"} <= out.keys()
    assert out["arithmetic"] == "float32"  # the test session runs in exact mode (conftest.py)
    assert out["pp"]["n"] == 4 and out["tg"]["n"] == 2
    assert out["pp"]["tok_s"] > 0 and out["tg"]["tok_s"] > 0 and len(out["tg"]["reps"]) == 2
    assert 0 < out["load_s"] < 60 and 50 < out["peak_rss_mb"] < 10_000
    assert "pip install llama-cpp-python" in out["peers"]["llama.cpp"]["skipped"]
    # what decode reads: about the file (every matrix once; the tied head is the embedding table) and its rate
    file_size = smollm2_path.stat().st_size
    assert 0.8 * file_size < out["bytes_per_token"] < 1.1 * file_size
    gb_s = out["bytes_per_token"] * out["tg"]["tok_s"] / 1e9
    assert out["tg"]["gb_s"] == pytest.approx(gb_s, rel=0.02, abs=0.006)  # rounded to 0.01, small on a busy machine
    assert out["bandwidth_gb_s"] > 0
    assert out["constrained"] is None  # only with --constrained


def test_constrained_reports_decode_with_and_without_a_schema(capsys, smollm2_path):
    out = bench_json(capsys, str(smollm2_path), "--pp", "4", "--tg", "24", "--reps", "2", "--constrained")
    constrained = out["constrained"]
    assert constrained["n"] == 24 and len(constrained["reps"]["free"]) == len(constrained["reps"]["schema"]) == 2
    assert constrained["free_tok_s"] > 0 and constrained["schema_tok_s"] > 0  # each ran all 24 tokens (or raised)
    free, schema = constrained["free_tok_s"], constrained["schema_tok_s"]
    # the speeds are reported to 2 decimals and the overhead to 1, from the unrounded speeds: at a few tok/s (a
    # busy machine) the rounded speeds alone move it by up to 100 * 0.01 / free
    assert constrained["overhead_pct"] == pytest.approx(100 * (free - schema) / free, abs=0.1 + 1 / free)


def test_the_long_schema_outlasts_any_decode_length(smollm2_path):
    """Its shortest answer, however tokenized, is longer than the tokens the bench decodes: each row takes at
    least 4 tokens (the grammar cannot end early, and the run never stops at end-of-text)."""
    from pellucid.bench import long_schema
    from pellucid.tokenizer import load_tokenizer

    tokenizer = load_tokenizer(smollm2_path)
    for n in (24, 128, 512):
        schema = long_schema(n)
        rows = schema["properties"]["rows"]["minItems"]
        shortest = json.dumps({"rows": [{"id": 0, "ok": True}] * rows})
        row_tokens = tokenizer.encode(json.dumps({"id": 0, "ok": True}), add_special=False)
        assert len(row_tokens) >= 4 and rows * 4 > n, (row_tokens, rows)
        assert len(tokenizer.encode(shortest, add_special=False)) > n


@pytest.mark.skipif(
    not os.environ.get("PELLUCID_LLAMA_CPP_PYTHON"), reason="set PELLUCID_LLAMA_CPP_PYTHON to a python with llama_cpp"
)
def test_llama_cpp_peer_runs_in_its_own_interpreter(capsys, smollm2_path):
    out = bench_json(capsys, str(smollm2_path), "--pp", "4", "--tg", "2", "--reps", "1", "--compare", "llama.cpp")
    peer = out["peers"]["llama.cpp"]
    assert "skipped" not in peer, peer
    assert peer["pp"]["tok_s"] > 0 and peer["ratio"]["tg"] == pytest.approx(
        out["tg"]["tok_s"] / peer["tg"]["tok_s"], rel=0.01
    )


def test_unknown_peer_is_a_user_error(capsys, smollm2_path):
    assert main(["bench", str(smollm2_path), "--compare", "vllm"]) == 1
    assert "--compare takes llama.cpp, transformers" in capsys.readouterr().err


def test_table_shows_medians_ratios_and_skips():
    ours = Measurement("pellucid", 0.2, [100.0, 110.0, 120.0], [50.0, 52.0, 60.0], 300.0, {"pp": 1.0, "tg": 2.0})
    peer = Measurement("llama.cpp", 0.1, [50.0, 55.0, 60.0], [40.0, 40.0, 40.0], 200.0, {"pp": 0.1, "tg": 0.3})
    skipped = Measurement("transformers", skipped="transformers not installed: `pip install transformers gguf`")
    text = format_report(BenchReport("m", "/m.gguf", 512, 128, 3, 2, ours, [peer, skipped]))
    assert "110.0 ± 10.0" in text and "52.0 ± 5.0" in text  # median ± half the range
    assert "pellucid / llama.cpp: pp 2.00x, tg 1.30x" in text
    assert "transformers: skipped: transformers not installed" in text
    ours.bytes_per_token = 500e6
    text = format_report(BenchReport("m", "/m.gguf", 512, 128, 3, 2, ours, [peer], bandwidth_gb_s=40.0))
    assert "decode reads 500 MB per token" in text and "streams 40.0 GB/s" in text
    assert "decodes at 65% of it" in text  # 52 tok/s x 0.5 GB = 26 GB/s
    assert " 26.0 " in text and " 20.0 " in text  # each engine's GB/s column
    assert "constrained decode" not in text
    ours.free_tok_s, ours.schema_tok_s = [100.0, 90.0, 110.0], [95.0, 97.0, 85.0]
    report = BenchReport("m", "/m.gguf", 512, 128, 3, 2, ours, [])
    text = format_report(report)
    assert "constrained decode (tg128, greedy, a JSON schema): 95.0 ± 6.0 tok/s (schema)" in text
    assert "vs 100.0 ± 10.0 tok/s (free), overhead 5.0%" in text
    assert report.as_dict()["constrained"]["overhead_pct"] == 5.0


def test_prompts_fit_small_vocabularies():
    """Random prompt ids stay away from special tokens at both ends, also in a 132-token vocabulary (the zoo's)."""
    from pellucid.bench import _prompt

    for vocab in (132, 49_152):
        ids = _prompt(vocab, 200)
        assert min(ids) >= min(100, vocab // 4) and max(ids) < vocab - min(100, vocab // 4)


def test_ctx_fill_decodes_after_the_fill_and_says_so(capsys, smollm2_path):
    out = bench_json(capsys, str(smollm2_path), "--ctx-fill", "24", "--tg", "2", "--reps", "1")
    assert out["ctx_fill"] == 24 and out["kv_type"] == {"k": "f32", "v": "f32"}  # no type given: pellucid's own
    assert out["pp"]["n"] == 24 and len(out["pp"]["reps"]) == 1  # the fill: one pass
    assert out["tg"]["n"] == 2 and out["tg"]["tok_s"] > 0


def test_ctx_fill_past_the_models_context_is_a_clear_error(capsys, smollm2_path):
    assert main(["bench", str(smollm2_path), "--ctx-fill", "8100", "--tg", "128"]) == 1
    err = capsys.readouterr().err
    assert "--ctx-fill 8,100 plus --tg 128 decode steps need 8,228 positions" in err
    assert "context length of 8,192; use --ctx-fill 8,064 or less" in err and "Traceback" not in err


def test_kv_cache_types_reach_every_measurement_and_unknown_ones_are_refused(capsys, smollm2_path):
    out = bench_json(capsys, str(smollm2_path), "-ctk", "q8_0", "--pp", "8", "--tg", "2", "--reps", "1")
    assert out["kv_type"] == {"k": "q8_0", "v": "f32"}  # values keep the default (f32 in the tests' exact mode)
    assert out["tg"]["tok_s"] > 0
    assert main(["bench", str(smollm2_path), "--kv-type", "q5_9"]) == 1
    err = capsys.readouterr().err
    assert "q5_9" in err and "q8_0" in err and "Traceback" not in err


def test_kv_types_are_ggmls_type_ids():
    """The ids llama.cpp's context takes for each cache type: ggml's enum, which GGMLType numbers too."""
    from pellucid.bench import KV_TYPES
    from pellucid.quant.types import GGMLType

    assert {name: GGMLType[name.upper()].value for name in KV_TYPES} == KV_TYPES


def test_ctx_fill_table_rows_carry_the_fill_and_cache_types():
    ours = Measurement("pellucid", 0.2, [900.0], [50.0, 52.0, 60.0], 300.0, {"pp": 1.0, "tg": 2.0})
    peer = Measurement("llama.cpp", 0.1, [1000.0], [40.0, 40.0, 40.0], 200.0, {"pp": 0.1, "tg": 0.3})
    report = BenchReport("m", "/m.gguf", 4096, 128, 3, 2, ours, [peer], ctx_fill=4096, kv_types=("q8_0", "q4_0"))
    text = format_report(report)
    assert "ctx fill" in text and "fill tok/s" in text and "decode after 4,096 tokens of context" in text
    rows = [line for line in text.splitlines() if line.startswith(("pellucid ", "llama.cpp ")) and " MB " in line]
    assert len(rows) == 2 and all("4,096" in r and "K q8_0 / V q4_0" in r for r in rows), rows
    assert "pellucid / llama.cpp: fill 0.90x, tg 1.30x" in text
    assert report.as_dict()["kv_type"] == {"k": "q8_0", "v": "q4_0"} and report.as_dict()["ctx_fill"] == 4096
