"""GGUF file names, against the examples and expected parses in the spec (ggml docs/gguf.md, "GGUF Naming
Convention", including its Node.js test table) and real-world names that bend the convention."""

from __future__ import annotations

from pathlib import Path

import pytest

from pellucid.formats.naming import CONFORMING_NAME, GGUFName, parse_gguf_name

# The spec's own test table: filename -> (Sidecar, BaseName, SizeLabel, FineTune, Version, Encoding, Type, Shard)
SPEC_TABLE = {
    "Mixtral-8x7B-v0.1-KQ2.gguf": (None, "Mixtral", "8x7B", None, "v0.1", "KQ2", None, None),
    "Grok-100B-v1.0-Q4_0-00003-of-00009.gguf": (None, "Grok", "100B", None, "v1.0", "Q4_0", None, (3, 9)),
    "Hermes-2-Pro-Llama-3-8B-v1.0-F16.gguf": (None, "Hermes-2-Pro-Llama-3", "8B", None, "v1.0", "F16", None, None),
    "Phi-3-mini-3.8B-ContextLength4k-instruct-v1.0.gguf": (
        None,
        "Phi-3-mini",
        "3.8B-ContextLength4k",
        "instruct",
        "v1.0",
        None,
        None,
        None,
    ),
    "mtp-Qwen3-27B-v1.0-Q4_K_M.gguf": ("mtp", "Qwen3", "27B", None, "v1.0", "Q4_K_M", None, None),
    "mmproj-Qwen2-VL-7B-v1.0-F16.gguf": ("mmproj", "Qwen2-VL", "7B", None, "v1.0", "F16", None, None),
}


def fields(name: GGUFName) -> tuple:
    shard = (name.shard, name.shard_count) if name.shard is not None else None
    return (
        name.sidecar,
        name.base_name,
        name.size_label,
        name.fine_tune,
        name.version,
        name.encoding,
        name.type,
        shard,
    )


@pytest.mark.parametrize("filename", list(SPEC_TABLE))
def test_spec_table(filename):
    name = parse_gguf_name(filename)
    assert name.conforming
    assert fields(name) == SPEC_TABLE[filename]


def test_spec_prose_examples():
    mixtral = parse_gguf_name("Mixtral-8x7B-v0.1-KQ2.gguf")
    assert (mixtral.expert_count, mixtral.parameters) == (8, 7e9)
    # The prose lists this one without a version ("assume v1.0"); the validation regex requires one.
    hermes = parse_gguf_name("Hermes-2-Pro-Llama-3-8B-F16.gguf")
    assert fields(hermes) == (None, "Hermes-2-Pro-Llama-3", "8B", None, None, "F16", None, None)
    assert not hermes.conforming and hermes.effective_version == "v1.0"
    assert hermes.expert_count is None and hermes.parameters == 8e9
    grok = parse_gguf_name("Grok-100B-v1.0-Q4_0-00003-of-00009.gguf")
    assert (grok.shard, grok.shard_count, grok.parameters) == (3, 9, 100e9)


def test_not_a_known_arrangement():
    """The spec's negative example: no size label, no version. It still gets a base name."""
    name = parse_gguf_name("not-a-known-arrangement.gguf")
    assert not name.conforming
    assert fields(name) == (None, "not-a-known-arrangement", None, None, None, None, None, None)


@pytest.mark.parametrize(
    ("filename", "expected"),
    [
        # the default models: a '.' before the encoding, lowercase, no version
        ("SmolLM2-135M-Instruct.Q4_1.gguf", (None, "SmolLM2", "135M", "Instruct", None, "Q4_1", None, None)),
        ("gemma-3-270m-q4_k_m.gguf", (None, "gemma-3", "270m", None, None, "q4_k_m", None, None)),
        # common community names
        ("tinyllama-1.1b-chat-v1.0.Q4_K_M.gguf", (None, "tinyllama", "1.1b", "chat", "v1.0", "Q4_K_M", None, None)),
        (
            "Meta-Llama-3.1-8B-Instruct-IQ4_XS.gguf",
            (None, "Meta-Llama-3.1", "8B", "Instruct", None, "IQ4_XS", None, None),
        ),
        (
            "Qwen2.5-7B-Instruct-Q4_K_M-00001-of-00002.gguf",
            (None, "Qwen2.5", "7B", "Instruct", None, "Q4_K_M", None, (1, 2)),
        ),
        ("Llama-3.1-8B-Instruct-v2-LoRA.gguf", (None, "Llama-3.1", "8B", "Instruct", "v2", None, "LoRA", None)),
        ("ggml-vocab-llama-bpe.gguf", (None, "ggml-vocab-llama-bpe", None, None, None, None, None, None)),
        ("model.gguf", (None, "model", None, None, None, None, None, None)),
        ("Mistral-7B-Instruct-v0.3.bf16.gguf", (None, "Mistral", "7B", "Instruct", "v0.3", "bf16", None, None)),
    ],
)
def test_lenient_names(filename, expected):
    name = parse_gguf_name(filename)
    assert not name.conforming
    assert fields(name) == expected


def test_paths_and_the_regex():
    assert parse_gguf_name(Path("/models/x/Grok-100B-v1.0-Q4_0.gguf")).base_name == "Grok"
    assert CONFORMING_NAME.match("Grok-100B-v1.0-Q4_0.gguf")
    assert not CONFORMING_NAME.match("Grok-100B-Q4_0.gguf")  # no version: not validated by the spec's regex
    assert parse_gguf_name("SmolLM2-135M-Instruct.Q4_1.gguf").parameters == 135e6


def test_conforming_and_lenient_parsers_agree():
    """Each spec name parsed by the lenient path (as if it failed validation) gives the same components."""
    from pellucid.formats.naming import _parse_leniently

    for filename, expected in SPEC_TABLE.items():
        assert fields(_parse_leniently(filename)) == expected, filename
