"""Hugging Face folders: the real MiniLM folder against the safetensors library, sharded folders, chat
templates, and a specific error for every unsafe or corrupt folder."""

from __future__ import annotations

import json
import pickle
import struct
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors import safe_open
from safetensors.torch import save_file

from pellucid.errors import ModelFileError, PellucidError, UnsupportedError
from pellucid.formats.safetensors import HFFolder, read_safetensors_header

CODE_REASON = r"(arbitrary|whatever Python) code"


def make_folder(path: Path, tensors: dict[str, torch.Tensor] | None = None, config: dict | None = None) -> Path:
    path.mkdir(parents=True, exist_ok=True)
    (path / "config.json").write_text(json.dumps(config or {"model_type": "llama", "hidden_size": 8}))
    if tensors is not None:
        save_file(tensors, str(path / "model.safetensors"), metadata={"format": "pt"})
    return path


def small_tensors() -> dict[str, torch.Tensor]:
    return {
        "embed.weight": torch.arange(24, dtype=torch.float32).view(6, 4),
        "norm.weight": torch.ones(4, dtype=torch.bfloat16),
        "ids": torch.tensor([1, -2, 3], dtype=torch.int64),
    }


def write_raw_safetensors(path: Path, header: dict | bytes, data: bytes = b"", header_len: int | None = None) -> Path:
    body = header if isinstance(header, bytes) else json.dumps(header).encode()
    n = len(body) if header_len is None else header_len
    path.write_bytes(struct.pack("<Q", n) + body + data)
    return path


# -- the real folder ---------------------------------------------------------------------------------------


def test_minilm_folder_matches_the_safetensors_library(minilm_path):
    with HFFolder(minilm_path) as folder, safe_open(str(minilm_path / "model.safetensors"), framework="pt") as lib:
        assert folder.model_type == "bert" and folder.config["hidden_size"] == 384
        assert folder.tokenizer_config["do_lower_case"] is True
        assert folder.tokenizer_json == minilm_path / "tokenizer.json"
        assert folder.chat_template is None
        assert folder.files == [minilm_path / "model.safetensors"]
        assert folder.headers[folder.files[0]].metadata == lib.metadata()
        assert sorted(folder.tensors) == sorted(lib.keys()) and len(folder.tensors) == 104
        for name, info in folder.tensors.items():
            want = lib.get_tensor(name)
            assert list(info.shape) == list(want.shape) and info.torch_dtype == want.dtype
            assert info.n_bytes == want.numel() * want.element_size()
        emb = folder.tensor("embeddings.word_embeddings.weight")
        assert emb.shape == (30522, 384) and torch.equal(emb, lib.get_tensor("embeddings.word_embeddings.weight"))
        assert folder.tensor_data_bytes == sum(i.n_bytes for i in folder.tensors.values())


def test_minilm_tensor_bytes_are_where_the_header_says(minilm_path):
    with HFFolder(minilm_path) as folder:
        info = folder.tensors["embeddings.LayerNorm.weight"]
        raw = np.fromfile(info.file, dtype=np.uint8, count=info.n_bytes, offset=info.offset)
        assert torch.equal(torch.from_numpy(raw.view(np.float32).copy()), folder.tensor(info.name))


def test_tensors_are_owned_copies(minilm_path):
    with HFFolder(minilm_path) as folder:
        first = folder.tensor("embeddings.LayerNorm.weight")
        first.zero_()
        assert folder.tensor("embeddings.LayerNorm.weight").abs().sum() > 0
        half = folder.tensor("embeddings.LayerNorm.weight", dtype=torch.bfloat16)
        assert half.dtype == torch.bfloat16
    with pytest.raises(ValueError, match="closed"):
        folder.tensor("embeddings.LayerNorm.weight")


def test_unknown_tensor_name(minilm_path):
    with HFFolder(minilm_path) as folder, pytest.raises(ModelFileError, match="no tensor named 'nope'"):
        folder.tensor("nope")


# -- synthetic folders ----------------------------------------------------------------------------------------


def test_single_file_round_trip(tmp_path):
    tensors = small_tensors()
    with HFFolder(make_folder(tmp_path / "m", tensors)) as folder:
        assert set(folder.tensors) == set(tensors)
        for name, want in tensors.items():
            got = folder.tensor(name)
            assert got.dtype == want.dtype and torch.equal(got, want)
        assert folder.tensors["norm.weight"].dtype == "BF16"


def test_sharded_folder(tmp_path):
    folder_path = make_folder(tmp_path / "m")
    tensors = small_tensors()
    shards = {
        "model-00001-of-00002.safetensors": ["embed.weight"],
        "model-00002-of-00002.safetensors": ["norm.weight", "ids"],
    }
    weight_map = {}
    for shard, names in shards.items():
        save_file({n: tensors[n] for n in names}, str(folder_path / shard))
        weight_map.update(dict.fromkeys(names, shard))
    (folder_path / "consolidated.safetensors").write_bytes(b"not used: the index decides")
    index = {"metadata": {"total_size": 0}, "weight_map": weight_map}
    (folder_path / "model.safetensors.index.json").write_text(json.dumps(index))
    with HFFolder(folder_path) as folder:
        assert [f.name for f in folder.files] == list(shards)
        assert folder.tensors["ids"].file.name == "model-00002-of-00002.safetensors"
        for name, want in tensors.items():
            assert torch.equal(folder.tensor(name), want)

    index["weight_map"]["extra.weight"] = "model-00001-of-00002.safetensors"
    (folder_path / "model.safetensors.index.json").write_text(json.dumps(index))
    with pytest.raises(ModelFileError, match="'extra.weight' is in model-00001-of-00002.safetensors, but it is not"):
        HFFolder(folder_path)

    index["weight_map"] = {"embed.weight": "model-00003-of-00003.safetensors"}
    (folder_path / "model.safetensors.index.json").write_text(json.dumps(index))
    with pytest.raises(ModelFileError, match="incomplete.*model-00003-of-00003.safetensors, which is missing"):
        HFFolder(folder_path)

    index["weight_map"] = {"embed.weight": "../elsewhere.safetensors"}
    (folder_path / "model.safetensors.index.json").write_text(json.dumps(index))
    with pytest.raises(ModelFileError, match="outside the folder"):
        HFFolder(folder_path)


def test_unindexed_shards_must_not_repeat_tensors(tmp_path):
    folder_path = make_folder(tmp_path / "m")
    save_file({"a": torch.zeros(2)}, str(folder_path / "part1.safetensors"))
    save_file({"a": torch.ones(2)}, str(folder_path / "part2.safetensors"))
    with pytest.raises(ModelFileError, match="'a' is in both part1.safetensors and part2.safetensors"):
        HFFolder(folder_path)


@pytest.mark.parametrize(
    ("files", "expected"),
    [
        ({"tokenizer_config.json": {"chat_template": "{{ messages }}"}}, {"default": "{{ messages }}"}),
        (
            {
                "tokenizer_config.json": {
                    "chat_template": [{"name": "default", "template": "A"}, {"name": "tool_use", "template": "B"}]
                }
            },
            {"default": "A", "tool_use": "B"},
        ),
        (
            {"chat_template.json": {"chat_template": "J"}, "tokenizer_config.json": {"chat_template": "T"}},
            {"default": "J"},
        ),
        ({"chat_template.jinja": "JINJA", "tokenizer_config.json": {"chat_template": "T"}}, {"default": "JINJA"}),
        ({"tokenizer_config.json": {"bos_token": "<s>"}}, {}),
    ],
)
def test_chat_templates(tmp_path, files, expected):
    folder_path = make_folder(tmp_path / "m", small_tensors())
    for name, content in files.items():
        (folder_path / name).write_text(content if isinstance(content, str) else json.dumps(content))
    with HFFolder(folder_path) as folder:
        assert folder.chat_templates == expected
        assert folder.chat_template == expected.get("default")


# -- refusing unsafe and broken folders -----------------------------------------------------------------------


def test_pickle_only_folder_is_refused(tmp_path):
    folder_path = make_folder(tmp_path / "m")
    torch.save({"w": torch.zeros(2)}, folder_path / "pytorch_model.bin")
    with pytest.raises(ModelFileError, match=CODE_REASON) as info:
        HFFolder(folder_path)
    assert "pytorch_model.bin" in str(info.value) and "safetensors" in str(info.value)


def test_raw_pickle_only_folder_is_refused(tmp_path):
    folder_path = make_folder(tmp_path / "m")
    (folder_path / "model.pt").write_bytes(pickle.dumps({"w": [1.0]}))
    with pytest.raises(ModelFileError, match=CODE_REASON):
        HFFolder(folder_path)


def test_pickles_next_to_safetensors_are_ignored(tmp_path):
    folder_path = make_folder(tmp_path / "m", small_tensors())
    (folder_path / "pytorch_model.bin").write_bytes(pickle.dumps({"w": [1.0]}))
    with HFFolder(folder_path) as folder:
        assert [f.name for f in folder.files] == ["model.safetensors"]


def test_remote_code_is_refused(tmp_path):
    config = {"model_type": "custom", "auto_map": {"AutoModelForCausalLM": "modeling_custom.CustomForCausalLM"}}
    folder_path = make_folder(tmp_path / "m", small_tensors(), config=config)
    (folder_path / "modeling_custom.py").write_text("import os  # would run on load with trust_remote_code\n")
    with pytest.raises(ModelFileError, match="never runs code") as info:
        HFFolder(folder_path)
    assert "modeling_custom.CustomForCausalLM" in str(info.value)


def test_missing_or_broken_config(tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(ModelFileError, match="no config.json"):
        HFFolder(tmp_path / "empty")
    folder_path = make_folder(tmp_path / "m", small_tensors())
    (folder_path / "config.json").write_text("{not json")
    with pytest.raises(ModelFileError, match="config.json is not valid JSON"):
        HFFolder(folder_path)
    (folder_path / "config.json").write_text("[1, 2]")
    with pytest.raises(ModelFileError, match="JSON object"):
        HFFolder(folder_path)
    with pytest.raises(ModelFileError, match="not a folder"):
        HFFolder(folder_path / "config.json")
    with pytest.raises(ModelFileError, match="no \\*.safetensors"):
        HFFolder(make_folder(tmp_path / "no_weights"))


def _valid_file(tmp_path: Path) -> Path:
    save_file(small_tensors(), str(tmp_path / "ok.safetensors"))
    return tmp_path / "ok.safetensors"


def _entry(dtype="F32", shape=(2,), offsets=(0, 8)):
    return {"dtype": dtype, "shape": list(shape), "data_offsets": list(offsets)}


@pytest.mark.parametrize(
    ("header", "data", "header_len", "fragment"),
    [
        ({"a": _entry()}, bytes(8), 2**60, "at most 100,000,000"),
        ({"a": _entry()}, bytes(8), 5000, "truncated"),
        (b'{"a": {"dtype": "F32", "shape": [2], "data_', bytes(8), None, "does not parse"),
        (b"\xff\xfe{}", bytes(8), None, "does not parse"),
        (b"[1, 2]", b"", None, "not an object"),
        ({"a": _entry(offsets=(0, 16))}, bytes(16), None, "needs 8 bytes"),
        ({"a": _entry()}, bytes(4), None, "ends at byte"),
        ({"a": _entry(offsets=(8, 16))}, bytes(12), None, "truncated"),
        ({"a": _entry(), "b": _entry(offsets=(4, 12))}, bytes(16), None, "overlap"),
        ({"a": {"dtype": "F32", "shape": [2]}}, bytes(8), None, "lacks dtype, shape or data_offsets"),
        ({"a": _entry(shape=(-2,))}, bytes(8), None, "not a list of sizes"),
        ({"a": _entry(offsets=(0,))}, bytes(8), None, "not [begin, end]"),
        ({"__metadata__": [1], "a": _entry()}, bytes(8), None, "__metadata__"),
    ],
)
def test_corrupt_headers(tmp_path, header, data, header_len, fragment):
    path = write_raw_safetensors(tmp_path / "bad.safetensors", header, data, header_len)
    with pytest.raises(ModelFileError, match="bad.safetensors is not a valid safetensors file") as info:
        read_safetensors_header(path)
    assert fragment in str(info.value)
    folder_path = make_folder(tmp_path / "m")
    path.rename(folder_path / "model.safetensors")
    with pytest.raises(ModelFileError, match=fragment.replace("[", "\\[")):
        HFFolder(folder_path)


def test_file_shorter_than_the_length_field(tmp_path):
    (tmp_path / "tiny.safetensors").write_bytes(b"\x01\x02\x03")
    with pytest.raises(ModelFileError, match="3 bytes long, shorter than the 8-byte header length"):
        read_safetensors_header(tmp_path / "tiny.safetensors")


def test_unknown_dtype_is_unsupported(tmp_path):
    path = write_raw_safetensors(tmp_path / "x.safetensors", {"a": _entry(dtype="F4")}, bytes(8))
    with pytest.raises(UnsupportedError, match="'F4'"):
        read_safetensors_header(path)


def test_every_truncation_and_header_corruption_is_a_pellucid_error(tmp_path):
    """No json/struct/KeyError/... escapes: each cut or corrupted file opens or raises a PellucidError."""
    data = _valid_file(tmp_path).read_bytes()
    (header_len,) = struct.unpack("<Q", data[:8])
    target = tmp_path / "t.safetensors"
    for cut in range(0, len(data) - 1):
        target.write_bytes(data[:cut])
        with pytest.raises(ModelFileError):
            read_safetensors_header(target)
    rng = np.random.default_rng(0)
    refused = 0
    for _ in range(300):
        corrupt = bytearray(data)
        for pos in rng.integers(0, 8 + header_len, 2):
            corrupt[pos] = int(rng.integers(32, 127))
        target.write_bytes(bytes(corrupt))
        try:
            read_safetensors_header(target)
        except PellucidError:
            refused += 1
    assert refused > 100


def test_truncated_real_file(minilm_path, tmp_path):
    folder_path = make_folder(tmp_path / "m")
    src = minilm_path / "model.safetensors"
    (header_len,) = struct.unpack("<Q", src.read_bytes()[:8])
    with open(src, "rb") as fin, open(folder_path / "model.safetensors", "wb") as fout:
        fout.write(fin.read(8 + header_len))
        fout.truncate(src.stat().st_size - 1)  # a sparse copy, one byte short
    with pytest.raises(ModelFileError, match="truncated"):
        HFFolder(folder_path)
