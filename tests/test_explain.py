"""`pellucid explain` (pellucid/explain.py): its numbers agree with the rest of pellucid.

- each generated token's probability is the API's logprob for it (llm.generate(logprobs=5));
- the logit lens's last layer is the model's own pick (greedy: the generated token);
- the parts add up to the measured prefill + decode time within 5%;
- the memory it reports is the process's resident memory, split into a stack that adds up to the run's peak,
  and the prediction is `fit`'s for the same context;
- loading: every weight byte is either a view of the mapped file or converted, and the quantized matrices of a
  GGUF are used in place;
- multiply-adds are counted from the shapes;
- the JSON has the documented keys.
"""

from __future__ import annotations

import json
import math

import pytest

import pellucid
from pellucid.explain import PARTS, explain, format_report, multiply_adds, template_segments
from pellucid.resident import rss_bytes
from test_cli import run

KEYS = {"model", "prompt_text", "template_segments", "template_tokens", "prompt_tokens", "generated", "text",
        "layers", "parts", "prefill", "decode", "loading", "memory", "machine", "kv_cache", "logit_lens", "wall_s"}  # fmt: skip


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


def test_the_memory_stack_adds_up_and_the_prediction_is_fits(report, llm):
    from pellucid.inspect import footprint
    from pellucid.memory import estimate

    m = report["memory"]
    measured = m["stack"]["measured"]
    assert set(measured) == set(m["stack"]["predicted"]) == {"runtime", "weights", "kv_cache", "activations"}
    assert sum(measured.values()) == pytest.approx(max(m["peak_rss_mb"], m["measured_rss_mb"]), rel=0.05)
    assert m["predicted_ctx"] == report["kv_cache"]["capacity_tokens"]
    expected = estimate(footprint(llm.resolved), m["predicted_ctx"], device="cpu")
    assert m["predicted_mb"] == pytest.approx(expected.total / 2**20, abs=0.1)
    assert measured["weights"] == pytest.approx(m["stack"]["predicted"]["weights"], rel=0.05)


def test_loading_says_what_is_mapped_and_what_was_converted(report):
    ld = report["loading"]
    assert ld["file_bytes"] > 0 and ld["files"][0].endswith(".gguf")
    types = {row["type"]: row for row in ld["by_type"]}
    assert {"Q4_1", "F32"} <= set(types)  # SmolLM2's matrices, and its norms
    for row in ld["by_type"]:
        assert row["mapped_bytes"] + row["converted_bytes"] == row["bytes"]
    assert types["Q4_1"]["converted_bytes"] == 0  # packed weights are views of the file: no copy
    assert ld["mapped_bytes"] > 0.9 * sum(row["bytes"] for row in ld["by_type"])


def test_multiply_adds_are_counted_from_the_shapes(llm):
    c = llm.config
    cache = llm.model.make_cache(capacity=16)
    one = multiply_adds(llm.model, cache, 1, 0)
    two_later = multiply_adds(llm.model, cache, 1, 1)
    # one more cached position costs q.k and p.v for it in every layer, nothing else
    assert two_later - one == c.n_layers * c.n_heads * (c.head_dim + c.value_head_dim)
    per_layer = 2 * c.hidden_size * (c.n_heads + c.n_kv_heads) * c.head_dim + 3 * c.hidden_size * c.ffn_size
    head = c.vocab_size * c.hidden_size
    assert one == c.n_layers * per_layer + head + c.n_layers * c.n_heads * (c.head_dim + c.value_head_dim)
