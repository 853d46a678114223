"""Split GGUF models (llama.cpp's gguf-split layout): the path of any part opens the whole model, which reads
like the unsplit file; a missing or stray part is an error that names the file and the fix.

The split copies are written by tests/model_helpers.write_split with gguf-py's writer. llama.cpp's
gguf-split binary is not installed here, so `test_parts_are_laid_out_as_gguf_split_writes_them` pins the
layout key by key to what gguf-split's source writes (tools/gguf-split/gguf-split.cpp, split_strategy).
"""

from __future__ import annotations

import json

import numpy as np
import pytest

import pellucid
from model_helpers import write_split
from pellucid import store
from pellucid.errors import ModelFileError
from pellucid.formats.gguf import (
    SPLIT_COUNT,
    SPLIT_NO,
    SPLIT_TENSORS_COUNT,
    GGUFFile,
    GGUFPart,
    gguf_files,
    parse_split_path,
    split_part_path,
)
from pellucid.inspect import footprint, inspect_model, report_json
from test_cli import assert_user_error, run

SPLIT_KEYS = {SPLIT_NO: "uint16", SPLIT_COUNT: "uint16", SPLIT_TENSORS_COUNT: "int32"}


@pytest.fixture(scope="module")
def split_smollm2(smollm2_path, tmp_path_factory) -> list:
    """smollm2-135m (272 tensors) in 3 parts: SmolLM2-135M-Instruct.Q4_1-0000{1,2,3}-of-00003.gguf."""
    folder = tmp_path_factory.mktemp("split")
    return write_split(smollm2_path, folder / smollm2_path.stem, 3)


def tiny_gguf(path, names=("t0", "t1", "t2", "t3", "t4", "t5")):
    """A few small float32 tensors and a little metadata: enough to split, cheap to write many times."""
    from gguf import GGUFWriter

    writer = GGUFWriter(str(path), "llama")
    writer.add_name("tiny")
    for i, name in enumerate(names):
        writer.add_tensor(name, np.full((2, 8), i, dtype=np.float32))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return path


def tiny_split(folder, parts=3, names=("t0", "t1", "t2", "t3", "t4", "t5")):
    folder.mkdir(parents=True, exist_ok=True)
    return write_split(tiny_gguf(folder / "src.gguf", names), folder / "tiny", parts)


# -- the format -----------------------------------------------------------------------------------------


def test_parts_are_laid_out_as_gguf_split_writes_them(split_smollm2, smollm2_path):
    """gguf-split: the first part gets every key of the input, then split.no, split.count and
    split.tensors.count (uint16, uint16, int32); a later part gets only those three; each part holds the
    next tensors in the input's order, its offsets counting from its own data section."""
    with GGUFFile(smollm2_path) as original:
        keys, names = list(original.metadata), list(original.tensors)
    parts = [GGUFPart(p) for p in split_smollm2]
    try:
        assert list(parts[0].metadata) == keys + list(SPLIT_KEYS)
        for i, part in enumerate(parts):
            if i > 0:
                assert list(part.metadata) == list(SPLIT_KEYS)
            assert {k: part.metadata_types[k] for k in SPLIT_KEYS} == SPLIT_KEYS
            assert (part.split_no, part.split_count, part.metadata[SPLIT_TENSORS_COUNT]) == (i, 3, len(names))
            assert min(t.offset for t in part.tensors.values()) == part.data_offset
        assert [name for part in parts for name in part.tensors] == names
    finally:
        for part in parts:
            part.close()


def test_split_names_follow_llama_cpp():
    path = split_part_path("/m/Model-Q4_K_M", 2, 3)
    assert path.as_posix() == "/m/Model-Q4_K_M-00002-of-00003.gguf"
    prefix, part_no, count = parse_split_path(path)
    assert (prefix.as_posix(), part_no, count) == ("/m/Model-Q4_K_M", 2, 3)
    assert parse_split_path("/m/Model-Q4_K_M.gguf") is None


# -- reading a split model ------------------------------------------------------------------------------


@pytest.mark.parametrize("opened", [0, 1, 2])
def test_any_part_opens_the_whole_model(split_smollm2, smollm2_path, opened):
    with GGUFFile(smollm2_path) as original, GGUFFile(split_smollm2[opened]) as split:
        assert split.path == split_smollm2[0]  # the first part is the model's canonical path
        assert [p.path for p in split.parts] == split_smollm2
        assert split.file_size == sum(p.stat().st_size for p in split_smollm2)
        assert {k: v for k, v in split.metadata.items() if k not in SPLIT_KEYS}.keys() == original.metadata.keys()
        assert split.get("tokenizer.ggml.tokens") == original.get("tokenizer.ggml.tokens")
        assert list(split.tensors) == list(original.tensors)
        assert {t.part for t in split.tensors.values()} == {0, 1, 2}
        for name, info in original.tensors.items():
            got = split.tensors[name]
            assert (got.shape, got.ggml_type, got.n_bytes) == (info.shape, info.ggml_type, info.n_bytes)
            assert np.array_equal(split.raw(name), original.raw(name)), name  # byte-identical
        assert split.tensor_data_bytes == original.tensor_data_bytes
    assert gguf_files(split_smollm2[opened]) == split_smollm2


def test_first_part_without_tensors(tmp_path):
    """`gguf-split --no-tensor-first-split`: the first part is metadata only."""
    src = tiny_gguf(tmp_path / "src.gguf")
    parts = write_split(src, tmp_path / "meta-first", 3, metadata_only_first=True)
    with GGUFFile(parts[1]) as g, GGUFFile(src) as original:
        assert not g.parts[0].tensors and [t.part for t in g.tensors.values()] == [1, 1, 1, 2, 2, 2]
        assert all(np.array_equal(g.raw(n), original.raw(n)) for n in original.tensors)
        assert g.tensor("t5")[0, 0] == 5


def test_a_part_name_alone_does_not_make_a_split(tmp_path):
    """Only split.count makes a file a part: a single file named like one opens as itself."""
    path = tiny_gguf(tmp_path / "model-00001-of-00002.gguf")
    with GGUFFile(path) as g:
        assert len(g.parts) == 1 and len(g.tensors) == 6
    assert gguf_files(path) == [path]


# -- parts that are missing or do not belong ------------------------------------------------------------


def test_missing_parts_are_named(tmp_path):
    parts = tiny_split(tmp_path / "a", parts=3)
    parts[1].unlink()
    for opened in (parts[0], parts[2]):
        with pytest.raises(ModelFileError) as err:
            GGUFFile(opened)
        message = str(err.value)
        assert f"1 of them is missing from {parts[1].parent}: {parts[1].name}." in message
        assert message.endswith(f"then pass the first part, {parts[0].name}.")
    parts[0].unlink()
    with pytest.raises(ModelFileError, match="2 of them are missing"):
        GGUFFile(parts[2])


def test_a_part_from_another_split_is_refused(tmp_path):
    three = tiny_split(tmp_path / "three", parts=3)
    two = tiny_split(tmp_path / "two", parts=2)
    two[1].replace(three[1])  # part 2 of 2 where part 2 of 3 belongs
    with pytest.raises(ModelFileError, match=r"tiny-00002-of-00003.gguf does not belong .* part 2 of 2"):
        GGUFFile(three[0])


def test_a_tensor_in_two_parts_is_refused(tmp_path):
    forward = tiny_split(tmp_path / "forward")  # t0 t1 | t2 t3 | t4 t5
    backward = tiny_split(tmp_path / "backward", names=("t5", "t4", "t3", "t2", "t1", "t0"))  # ... | t1 t0
    backward[2].replace(forward[2])
    with pytest.raises(ModelFileError, match=r"tensor 't[01]' is in both tiny-00001-of-00003.gguf and tiny-00003"):
        GGUFFile(forward[0])


def test_a_wrong_tensor_total_is_refused(tmp_path):
    six = tiny_split(tmp_path / "six")  # t0 t1 | t2 t3 | t4 t5
    five = tiny_split(tmp_path / "five", names=("t0", "t1", "t2", "t3", "t4"))  # t0 t1 | t2 t3 | t4
    five[2].replace(six[2])
    with pytest.raises(ModelFileError, match="says the model has 6 tensors .* hold 5"):
        GGUFFile(six[0])


def test_a_renamed_part_cannot_find_the_others(tmp_path):
    parts = tiny_split(tmp_path)
    renamed = parts[0].rename(tmp_path / "model.gguf")
    with pytest.raises(ModelFileError, match=r"part 1 of a model split into 3 files .* -00001-of-00003.gguf"):
        GGUFFile(renamed)


# -- the store ------------------------------------------------------------------------------------------


def test_store_resolves_any_part_to_the_first_and_pulls_every_part(tmp_path, monkeypatch):
    monkeypatch.setenv("PELLUCID_HOME", str(tmp_path / "home"))
    parts = tiny_split(tmp_path / "src")
    for part in parts:
        assert store.resolve(str(part)) == store.ResolvedModel("tiny", "gguf", parts[0])
    stored = store.pull(str(parts[2]), quiet=True)
    assert (stored.name, stored.path) == ("tiny", stored.dir / parts[0].name)
    assert sorted(stored.files) == [p.name for p in parts]
    assert stored.summary["size_bytes"] == sum(p.stat().st_size for p in parts)
    assert store.resolve("tiny") == store.ResolvedModel("tiny", "gguf", stored.path)
    (stored.dir / parts[1].name).unlink()
    with pytest.raises(ModelFileError, match=f"{parts[1].name} is missing"):
        store.resolve("tiny")


# -- what a user runs -----------------------------------------------------------------------------------


def test_split_model_generates_the_same_tokens(split_smollm2, smollm2_path):
    """Loaded through its second part, the split model has the same weights, tokenizer and chat template, so
    greedy decoding picks exactly the unsplit model's tokens."""
    prompt = "The capital of France is"
    whole = pellucid.load(str(smollm2_path), device="cpu", ctx=64)
    expected = whole.generate(prompt, temperature=0, max_tokens=8, ignore_eos=True).result().ids
    template = whole.template_source
    del whole
    split = pellucid.load(str(split_smollm2[1]), device="cpu", ctx=64)
    assert split.resolved.path == split_smollm2[0]
    assert split.template_source == template and template
    assert len(expected) == 8
    assert split.generate(prompt, temperature=0, max_tokens=8, ignore_eos=True).result().ids == expected


def test_inspect_and_fit_count_every_part(split_smollm2, smollm2_path):
    proc = run("inspect", str(split_smollm2[0]), "--json")
    assert proc.returncode == 0, proc.stderr
    split = json.loads(proc.stdout)
    whole = report_json(inspect_model(store.resolve(str(smollm2_path))))
    assert split["file_size"] == sum(p.stat().st_size for p in split_smollm2)
    assert split["layout"]["files"] == [p.name for p in split_smollm2]
    for key in ("n_tensors", "tensor_bytes", "tensor_info_bytes"):
        assert split["layout"][key] == whole["layout"][key], key
    assert split["layout"]["n_tensors"] == 272 and split["layout"]["trailing_bytes"] == 0
    assert (split["n_parameters"], split["memory"]["weights"]) == (whole["n_parameters"], whole["memory"]["weights"])
    text = run("inspect", str(split_smollm2[2])).stdout  # from the last part: the same model
    last = split_smollm2[2]
    assert f"({split['file_size']:,} bytes) in 3 files" in text
    assert f"output_norm.weight, ends at byte {last.stat().st_size:,} of {last.name}" in text
    split_fp = footprint(store.resolve(str(split_smollm2[0])))
    whole_fp = footprint(store.resolve(str(smollm2_path)))
    assert (split_fp.tensors, split_fp.config) == (whole_fp.tensors, whole_fp.config)


def test_a_missing_part_is_a_user_error(split_smollm2, tmp_path):
    for part in (split_smollm2[0], split_smollm2[2]):
        (tmp_path / part.name).symlink_to(part)
    for args in (
        ["inspect", str(tmp_path / split_smollm2[0].name)],
        ["run", str(tmp_path / split_smollm2[2].name), "Hi"],
    ):
        assert_user_error(run(*args), f"missing from {tmp_path}: {split_smollm2[1].name}.")
