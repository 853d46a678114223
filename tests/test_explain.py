"""`pellucid explain` (pellucid/explain.py): its numbers agree with the rest of pellucid.

- each generated token's probability is the API's logprob for it (llm.generate(logprobs=5));
- the logit lens's last layer is the model's own pick (greedy: the generated token);
- the parts add up to the measured prefill + decode time within 5%;
- the memory it reports is the process's resident memory, and the prediction is `fit`'s;
- the JSON has the documented keys.
"""

from __future__ import annotations

import json
import math

import pytest

import pellucid
from pellucid.explain import PARTS, explain, format_report, rss_bytes, template_segments
from test_cli import run

KEYS = {"model", "prompt_text", "template_segments", "template_tokens", "prompt_tokens", "generated", "text",
        "layers", "parts", "prefill", "decode", "memory", "machine", "kv_cache", "logit_lens", "wall_s"}  # fmt: skip


@pytest.fixture(scope="module")
def llm(smollm2_path):
    return pellucid.load(str(smollm2_path), ctx=256)


@pytest.fixture(scope="module")
def report(llm):
    return explain(llm, "Why is the sky blue?", max_tokens=8, temperature=0)


def test_the_report_has_the_documented_shape(report, llm):
    assert set(report) == KEYS
    assert len(report["layers"]) == llm.config.n_layers == len(report["logit_lens"])
    assert [t["id"] for t in report["prompt_tokens"]] == llm.chat_prompt_ids(
        [{"role": "user", "content": "Why is the sky blue?"}]
    )
    assert set(report["parts"]["decode"]) == set(PARTS)
    g = report["generated"][0]
    assert set(g) >= {"id", "piece", "prob", "top", "entropy", "sampler"} and len(g["top"]) == 5
    assert report["machine"]["bandwidth_gbs"] > 0 and report["decode"]["bytes_per_token"] > 0
    assert report["kv_cache"]["bytes_per_token"] > 0
    assert "decode runs at" in format_report(report)


def test_probabilities_are_the_apis_logprobs(report, llm):
    ids = [t["id"] for t in report["prompt_tokens"]]
    g = llm.generate(ids, max_tokens=len(report["generated"]), temperature=0, logprobs=5).result()
    expected = [lp for lp in g.logprobs]
    explained = [t for t in report["generated"] if not t.get("end_of_turn")]
    assert [t["id"] for t in explained] == [lp.token_id for lp in expected][: len(explained)]
    for token, lp in zip(explained, expected):
        assert token["prob"] == pytest.approx(math.exp(lp.logprob), abs=1e-4)
        assert [a["id"] for a in token["top"][:3]] == [i for i, _ in lp.top[:3]]


def test_the_logit_lens_last_layer_is_the_models_pick(report):
    last = report["logit_lens"][-1]["tokens"]
    assert [t["id"] for t in last] == [t["id"] for t in report["generated"]]  # greedy: the argmax was sampled


def test_parts_add_up_to_the_wall_time_and_memory_is_measured(report):
    measured = report["prefill"]["s"] + report["decode"]["s"]
    parts = sum(sum(p.values()) for p in report["parts"].values())
    assert parts == pytest.approx(measured, rel=0.05)
    layers = sum(x["prefill_s"] + x["decode_s"] for x in report["layers"])
    assert 0 < layers <= measured
    rss_mb = rss_bytes() / 2**20
    assert 0 < report["memory"]["measured_rss_mb"] <= rss_mb * 1.5
    assert report["memory"]["predicted_mb"] > 0


def test_template_segments_mark_what_the_template_added():
    segments = template_segments("<|user|>Hi there<|end|><|assistant|>", [{"role": "user", "content": "Hi there"}])
    assert segments == [{"text": "<|user|>", "added": True}, {"text": "Hi there", "added": False},
                        {"text": "<|end|><|assistant|>", "added": True}]  # fmt: skip


def test_the_command_prints_text_and_json(smollm2_path):
    proc = run("explain", str(smollm2_path), "Hi", "-n", "3", "--temperature", "0", "--json")
    assert proc.returncode == 0, proc.stderr
    assert set(json.loads(proc.stdout)) == KEYS
    proc = run("explain", str(smollm2_path), "Hi", "-n", "3", "--temperature", "0")
    assert proc.returncode == 0 and "logit lens" in proc.stdout and "KV cache" in proc.stdout
