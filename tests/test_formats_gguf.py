"""The GGUF reader: metadata round trips through gguf-py's writer, agreement with gguf-py's reader on the real
files, and a specific ModelFileError (never another exception) for every kind of bad file."""

from __future__ import annotations

import pickle
import re
import struct
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from gguf import GGMLQuantizationType, GGUFEndian, GGUFReader, GGUFValueType, GGUFWriter

from pellucid import store
from pellucid.errors import ModelFileError
from pellucid.formats.gguf import GGUFFile
from pellucid.quant.types import GGMLType

# -- writing synthetic files ----------------------------------------------------------------------------------

ROUND_TRIP = {
    # key: (value, gguf-py value type, array element type, the type name pellucid reports)
    "t.u8": (200, GGUFValueType.UINT8, None, "uint8"),
    "t.i8": (-100, GGUFValueType.INT8, None, "int8"),
    "t.u16": (60000, GGUFValueType.UINT16, None, "uint16"),
    "t.i16": (-30000, GGUFValueType.INT16, None, "int16"),
    "t.u32": (4_000_000_000, GGUFValueType.UINT32, None, "uint32"),
    "t.i32": (-2_000_000_000, GGUFValueType.INT32, None, "int32"),
    "t.f32": (3.25, GGUFValueType.FLOAT32, None, "float32"),
    "t.bool": (True, GGUFValueType.BOOL, None, "bool"),
    "t.str": ("héllo ✓ <|im_start|>", GGUFValueType.STRING, None, "string"),
    "t.empty_str": ("", GGUFValueType.STRING, None, "string"),
    "t.u64": (2**63 + 5, GGUFValueType.UINT64, None, "uint64"),
    "t.i64": (-(2**62), GGUFValueType.INT64, None, "int64"),
    "t.f64": (1 / 3, GGUFValueType.FLOAT64, None, "float64"),
    "t.arr_u8": ([0, 1, 255], GGUFValueType.ARRAY, GGUFValueType.UINT8, "array[uint8]"),
    "t.arr_i16": ([-1, 2, -3], GGUFValueType.ARRAY, GGUFValueType.INT16, "array[int16]"),
    "t.arr_u64": ([2**64 - 1, 0], GGUFValueType.ARRAY, GGUFValueType.UINT64, "array[uint64]"),
    "t.arr_f32": ([0.5, -1.25, 1e-30], GGUFValueType.ARRAY, GGUFValueType.FLOAT32, "array[float32]"),
    "t.arr_f64": ([0.1, 2.5], GGUFValueType.ARRAY, GGUFValueType.FLOAT64, "array[float64]"),
    "t.arr_bool": ([True, False, True], GGUFValueType.ARRAY, GGUFValueType.BOOL, "array[bool]"),
    "t.arr_str": (["a", "", "ünï", "\n"], GGUFValueType.ARRAY, GGUFValueType.STRING, "array[string]"),
    "t.nested": ([[1, 2], [3, 4, 5]], GGUFValueType.ARRAY, None, "array[array]"),
    "t.nested_str": ([["x", "yz"], ["w"]], GGUFValueType.ARRAY, None, "array[array]"),
}


def write_gguf(path: Path, kv=None, tensors=None, alignment: int | None = None, endian=GGUFEndian.LITTLE) -> Path:
    """A GGUF v3 file written by gguf-py: `kv` maps key -> (value, type, sub_type); `tensors` name -> array
    or name -> (raw uint8 blocks, shape, GGMLQuantizationType)."""
    writer = GGUFWriter(path, arch="test", endianess=endian)
    if alignment is not None:
        writer.add_custom_alignment(alignment)
    for key, (value, vtype, sub_type, *_) in (kv or {}).items():
        writer.add_key_value(key, value, vtype, sub_type=sub_type)
    for name, tensor in (tensors or {}).items():
        if isinstance(tensor, tuple):
            raw, shape, qtype = tensor
            writer.add_tensor(name, raw, raw_shape=raw.shape, raw_dtype=qtype)
        else:
            writer.add_tensor(name, tensor)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return path


def small_model(path: Path) -> Path:
    """Two tensors (F32 and Q8_0) and a little metadata: a stand-in for a real model file."""
    from gguf.quants import quantize

    q8 = quantize(np.linspace(-1, 1, 4 * 64, dtype=np.float32).reshape(4, 64), GGMLQuantizationType.Q8_0)
    kv = {
        "test.block_count": (2, GGUFValueType.UINT32, None),
        "tokenizer.ggml.tokens": (["a", "b"], GGUFValueType.ARRAY, None),
    }
    tensors = {"norm.weight": np.arange(8, dtype=np.float32), "blk.0.w": (q8, (4, 64), GGMLQuantizationType.Q8_0)}
    return write_gguf(path, kv, tensors)


def patched(src: Path, dst: Path, offset: int, new: bytes) -> Path:
    data = bytearray(src.read_bytes())
    data[offset : offset + len(new)] = new
    dst.write_bytes(bytes(data))
    return dst


def refuse(path: Path, *fragments: str) -> str:
    """Open `path`, expecting a ModelFileError whose message has every fragment; any other exception fails."""
    with pytest.raises(ModelFileError) as info:
        GGUFFile(path)
    message = str(info.value)
    for fragment in fragments:
        assert fragment in message, f"{fragment!r} not in {message!r}"
    return message


# -- reading good files ---------------------------------------------------------------------------------------


def test_metadata_of_every_type_round_trips(tmp_path):
    path = write_gguf(tmp_path / "kv.gguf", ROUND_TRIP)
    with GGUFFile(path) as g:
        assert g.version == 3 and g.architecture == "test"
        for key, (value, _, _, type_name) in ROUND_TRIP.items():
            got = g.metadata[key]
            assert g.metadata_types[key] == type_name, key
            if type_name == "float32":
                assert got == np.float32(value)
            elif type_name == "array[float32]":
                assert got.dtype == np.float32 and np.array_equal(got, np.array(value, np.float32))
            elif type_name == "array[array]":
                assert [list(x) for x in got] == value
            elif type_name.startswith("array[") and type_name != "array[string]":
                assert np.array_equal(got, np.array(value)), key
            else:
                assert got == value and type(got) is type(value), key


def test_metadata_arrays_outlive_the_file(tmp_path):
    path = write_gguf(tmp_path / "kv.gguf", ROUND_TRIP)
    g = GGUFFile(path)
    scores = g.metadata["t.arr_f32"]
    g.close()
    assert g.parts[0]._mmap is None and scores[0] == 0.5  # the mapping really was closed, and the array is its own copy


def test_version_2_reads_like_version_3(tmp_path):
    v3 = small_model(tmp_path / "v3.gguf")
    v2 = patched(v3, tmp_path / "v2.gguf", 4, struct.pack("<I", 2))
    with GGUFFile(v2) as g2, GGUFFile(v3) as g3:
        assert (g2.version, g3.version) == (2, 3)
        assert g2.metadata.keys() == g3.metadata.keys() and g2.tensors == g3.tensors
        assert torch.equal(g2.tensor("blk.0.w"), g3.tensor("blk.0.w"))


def test_tensors_and_layout(tmp_path):
    path = small_model(tmp_path / "m.gguf")
    with GGUFFile(path) as g:
        assert list(g.tensors) == ["norm.weight", "blk.0.w"]
        norm, w = g.tensors["norm.weight"], g.tensors["blk.0.w"]
        assert norm.shape == (8,) and norm.ggml_type == GGMLType.F32 and norm.n_bytes == 32
        assert w.shape == (4, 64) and w.ggml_type == GGMLType.Q8_0 and w.n_bytes == 4 * 2 * 34
        assert g.alignment == 32 and g.data_offset % 32 == 0 and g.data_offset >= g.header_size
        assert norm.offset == g.data_offset and w.offset % 32 == 0
        assert torch.equal(g.tensor("norm.weight"), torch.arange(8, dtype=torch.float32))
        assert (g.tensor("blk.0.w") - torch.linspace(-1, 1, 256).view(4, 64)).abs().max() < 0.01
        with pytest.raises(ModelFileError, match="no tensor named 'nope'"):
            g.raw("nope")
    with pytest.raises(ValueError, match="closed"):
        g.raw("norm.weight")


def test_vocab_only_file_without_padding(tmp_path):
    """A file with no tensors may end right after its header (llama.cpp's ggml-vocab-*.gguf files)."""
    src = write_gguf(tmp_path / "v.gguf", {"tokenizer.ggml.tokens": (["a", "b"], GGUFValueType.ARRAY, None)})
    end = _header_end(src)
    (tmp_path / "cut.gguf").write_bytes(src.read_bytes()[:end])
    with GGUFFile(tmp_path / "cut.gguf") as g:
        assert g.tensors == {} and g.metadata["tokenizer.ggml.tokens"] == ["a", "b"] and g.file_size == end


def test_custom_alignment(tmp_path):
    path = small_model_with_alignment(tmp_path / "a.gguf", 64)
    with GGUFFile(path) as g:
        assert g.alignment == 64 and g.data_offset % 64 == 0
        assert all(t.offset % 64 == 0 for t in g.tensors.values())
        assert torch.equal(g.tensor("x"), torch.ones(3, 32))


def small_model_with_alignment(path: Path, alignment: int) -> Path:
    tensors = {"y": np.zeros(5, np.float32), "x": np.ones((3, 32), np.float32)}
    return write_gguf(path, tensors=tensors, alignment=alignment)


@pytest.mark.parametrize("model", ["smollm2_path", pytest.param("gemma3_path", marks=pytest.mark.slow)])
def test_real_files_agree_with_gguf_py_reader(model, request):
    """gguf-py's reader is the oracle for every key, value, byte span, tensor offset and shape (15 s for Gemma's
    vocab)."""
    path = request.getfixturevalue(model)
    reader = GGUFReader(path)
    with GGUFFile(path) as g:
        assert g.data_offset == reader.data_offset
        keys = [k for k in reader.fields if not k.startswith("GGUF.")]
        assert list(g.metadata) == keys
        for key in keys:
            want, got = reader.fields[key].contents(), g.metadata[key]
            if isinstance(got, np.ndarray):
                assert np.array_equal(got, np.array(want, dtype=got.dtype)), key
            else:
                assert got == want, key
        # Where each entry and the tensor-info table lie (for `inspect --map`): gguf-py keeps each field's bytes.
        fields = [reader.fields[k] for k in keys]
        assert list(g.parts[0].metadata_spans.values()) == [
            (f.offset, f.offset + sum(p.nbytes for p in f.parts)) for f in fields
        ]
        assert g.parts[0].tensor_info_offset == min(int(t.field.offset) for t in reader.tensors)
        assert list(g.tensors) == [t.name for t in reader.tensors]
        for t in reader.tensors:
            info = g.tensors[t.name]
            assert info.offset == t.data_offset and info.n_bytes == t.n_bytes
            assert int(info.ggml_type) == int(t.tensor_type)
            assert info.shape == tuple(int(d) for d in reversed(t.shape.tolist()))


def test_opening_reads_no_tensor_data(gemma3_path):
    """Opening maps the file; only the header (6.5 MB of Gemma's 253 MB, mostly its vocabulary) is parsed."""
    start = time.process_time()  # CPU time: parsing is single-threaded, so a busy machine does not inflate it
    g = GGUFFile(gemma3_path)
    elapsed = time.process_time() - start
    try:
        assert elapsed < 1.0, f"opening took {elapsed:.2f} s of CPU"
        assert g.tensor_data_bytes > 0.9 * (g.file_size - g.data_offset)
        raw = g.raw("token_embd.weight")
        assert raw.nbytes == 262144 * 640 // 32 * 34
        assert not raw.flags.owndata and np.shares_memory(raw, g.parts[0]._bytes)  # a view of the mapping, not a copy
        info = g.tensors["token_embd.weight"]
        assert raw.ctypes.data == g.parts[0]._bytes.ctypes.data + info.offset
    finally:
        del raw
        g.close()


# -- refusing bad files ---------------------------------------------------------------------------------------


def test_wrong_magic(tmp_path):
    (tmp_path / "x.gguf").write_bytes(b"GGUX" + bytes(60))
    refuse(tmp_path / "x.gguf", "not a GGUF file", "b'GGUX'")
    (tmp_path / "j.gguf").write_text('{"model_type": "llama"}')
    refuse(tmp_path / "j.gguf", "looks like JSON")
    (tmp_path / "old.bin.gguf").write_bytes(b"ggjt" + bytes(60))
    refuse(tmp_path / "old.bin.gguf", "pre-GGUF ggml file")


@pytest.mark.parametrize(
    ("version_bytes", "fragment"),
    [
        (struct.pack("<I", 1), "version 1"),
        (struct.pack("<I", 4), "version 4"),
        (struct.pack(">I", 3), "big-endian"),
    ],
)
def test_unsupported_versions(tmp_path, version_bytes, fragment):
    path = patched(small_model(tmp_path / "m.gguf"), tmp_path / "v.gguf", 4, version_bytes)
    refuse(path, fragment)


def test_big_endian_file_from_gguf_py(tmp_path):
    path = write_gguf(tmp_path / "be.gguf", {"t.u32": (7, GGUFValueType.UINT32, None)}, endian=GGUFEndian.BIG)
    refuse(path, "big-endian")


def test_empty_missing_and_folder(tmp_path):
    (tmp_path / "empty.gguf").write_bytes(b"")
    refuse(tmp_path / "empty.gguf", "empty (0 bytes)")
    refuse(tmp_path / "missing.gguf", "no such file")
    refuse(tmp_path, "is a folder")
    (tmp_path / "tiny.gguf").write_bytes(b"GG")
    refuse(tmp_path / "tiny.gguf", "truncated", "magic")


def test_billions_of_tensors_fail_fast(tmp_path):
    path = patched(small_model(tmp_path / "m.gguf"), tmp_path / "huge.gguf", 8, struct.pack("<Q", 2**40))
    start = time.perf_counter()
    refuse(path, "claims 1,099,511,627,776 tensors")
    path = patched(small_model(tmp_path / "m.gguf"), tmp_path / "huge_kv.gguf", 16, struct.pack("<Q", 2**62))
    refuse(path, "metadata entries")
    assert time.perf_counter() - start < 0.5


def _header_end(path: Path) -> int:
    with GGUFFile(path) as g:
        return g.header_size


def test_unknown_tensor_type(tmp_path):
    src = small_model(tmp_path / "m.gguf")
    # the last tensor info ends with: type u32, offset u64
    path = patched(src, tmp_path / "t.gguf", _header_end(src) - 12, struct.pack("<I", 99))
    refuse(path, "'blk.0.w'", "ggml type 99")


def test_tensor_data_past_the_end(tmp_path):
    src = small_model(tmp_path / "m.gguf")
    path = patched(src, tmp_path / "t.gguf", _header_end(src) - 8, struct.pack("<Q", 1 << 20))
    refuse(path, "'blk.0.w'", "the file has only")


def test_misaligned_tensor_offset(tmp_path):
    src = small_model(tmp_path / "m.gguf")
    path = patched(src, tmp_path / "t.gguf", _header_end(src) - 8, struct.pack("<Q", 36))
    refuse(path, "not aligned to 32 bytes")


def test_bad_alignment_values(tmp_path):
    for alignment in (48, 0):
        src = write_gguf(tmp_path / "a.gguf", {"general.alignment": (alignment, GGUFValueType.UINT32, None)})
        refuse(src, "general.alignment", "not a power of two")
        src.unlink()


def test_duplicate_keys_and_tensors(tmp_path):
    kv = {"t.aa": (1, GGUFValueType.UINT32, None), "t.ab": (2, GGUFValueType.UINT32, None)}
    src = write_gguf(tmp_path / "k.gguf", kv)
    offset = src.read_bytes().index(b"t.ab")
    refuse(patched(src, tmp_path / "k2.gguf", offset, b"t.aa"), "'t.aa' appears twice")

    src = write_gguf(tmp_path / "t.gguf", tensors={"wa": np.zeros(4, np.float32), "wb": np.zeros(4, np.float32)})
    offset = src.read_bytes().index(b"wb")
    refuse(patched(src, tmp_path / "t2.gguf", offset, b"wa"), "tensor 'wa' appears twice")


def test_corrupt_tensor_infos(tmp_path):
    src = small_model(tmp_path / "m.gguf")
    data = src.read_bytes()
    name_end = data.index(b"blk.0.w") + len(b"blk.0.w")
    refuse(patched(src, tmp_path / "dims.gguf", name_end, struct.pack("<I", 5)), "claims 5 dimensions")
    # the Q8_0 tensor's rows of 64 weights become 48: not whole blocks of 32
    refuse(patched(src, tmp_path / "row.gguf", name_end + 4, struct.pack("<Q", 48)), "not a multiple", "block size 32")


def test_corrupt_metadata(tmp_path):
    src = write_gguf(tmp_path / "k.gguf", {"t.key": (5, GGUFValueType.UINT32, None)})
    type_at = src.read_bytes().index(b"t.key") + len(b"t.key")
    refuse(patched(src, tmp_path / "vt.gguf", type_at, struct.pack("<I", 13)), "not a GGUF value type")
    length_at = src.read_bytes().index(b"t.key") - 8
    refuse(patched(src, tmp_path / "len.gguf", length_at, struct.pack("<Q", 2**50)), "truncated")


def test_deeply_nested_arrays(tmp_path):
    value = [1]
    for _ in range(10):
        value = [value]
    refuse(write_gguf(tmp_path / "n.gguf", {"t.deep": (value, GGUFValueType.ARRAY, None)}), "nests arrays too deeply")


def test_every_truncation_and_corruption_of_a_small_file_is_a_model_file_error(tmp_path):
    """Cut a small file at every byte, and flip random header bytes: each open either works or raises
    ModelFileError; nothing else (struct.error, MemoryError, IndexError, ...) escapes."""
    src = small_model(tmp_path / "m.gguf")
    data = src.read_bytes()
    with GGUFFile(src) as g:
        header_end = g.header_size
        data_end = max(t.offset + t.n_bytes for t in g.tensors.values())  # then padding, which may be cut
    target = tmp_path / "t.gguf"
    for cut in range(data_end):
        target.write_bytes(data[:cut])
        with pytest.raises(ModelFileError):
            GGUFFile(target)
    rng = np.random.default_rng(0)
    outcomes = {"ok": 0, "refused": 0}
    for _ in range(300):
        corrupt = bytearray(data)
        for pos in rng.integers(0, header_end, 2):
            corrupt[pos] = int(rng.integers(0, 256))
        target.write_bytes(bytes(corrupt))
        try:
            GGUFFile(target).close()
            outcomes["ok"] += 1
        except ModelFileError:
            outcomes["refused"] += 1
    assert outcomes["refused"] > 50  # the corruption is really being noticed


def _truncated_copy(src: Path, dst: Path, cut: int, header_bytes: int) -> Path:
    """A copy of `src` cut at `cut`, written cheaply: the real header, then a sparse hole up to `cut`
    (the reader never looks at tensor bytes, only at the file size)."""
    with open(src, "rb") as fin, open(dst, "wb") as fout:
        fout.write(fin.read(min(cut, header_bytes)))
        fout.truncate(cut)
    return dst


def test_real_file_truncated_anywhere(smollm2_path, tmp_path):
    with GGUFFile(smollm2_path) as g:
        with open(smollm2_path, "rb") as f:
            header = f.read(g.data_offset)
        data_offset, file_size = g.data_offset, g.file_size
        first_tensor = next(iter(g.tensors))
    tensor_infos_start = header.index(first_tensor.encode()) - 8
    cuts = {
        "magic": 2,
        "version": 6,
        "tensor count": 12,
        "metadata count": 20,
        "first key": 40,
        "token list": header.index(b"tokenizer.ggml.tokens") + 200,
        "merges": header.index(b"tokenizer.ggml.merges") + 1000,
        "tensor infos": tensor_infos_start + 5,
        "last tensor info": data_offset - 3,
        "data start": data_offset,
        "inside data": data_offset + (file_size - data_offset) // 2,
        "last byte": file_size - 1,
    }
    assert sorted(cuts.values()) == list(cuts.values())
    for where, cut in cuts.items():
        path = _truncated_copy(smollm2_path, tmp_path / "cut.gguf", cut, data_offset)
        message = refuse(path, "truncated", "re-download")
        assert f"{cut:,}" in message, (where, message)
    path = _truncated_copy(smollm2_path, tmp_path / "whole.gguf", file_size, data_offset)
    GGUFFile(path).close()  # the same sparse trick at full length opens fine: the cuts are what failed


# -- pickles are refused, with the reason ---------------------------------------------------------------------

PICKLE_REASON = r"(arbitrary|whatever Python) code"


def _pickles(tmp_path: Path) -> dict[str, Path]:
    zipped = tmp_path / "zipped.pt"
    torch.save({"w": torch.zeros(2)}, zipped)
    legacy = tmp_path / "legacy.pth"
    torch.save({"w": torch.zeros(2)}, legacy, _use_new_zipfile_serialization=False)
    raw = tmp_path / "raw.bin"
    raw.write_bytes(pickle.dumps({"w": [0.0, 1.0]}))
    return {"zipped": zipped, "legacy": legacy, "raw": raw}


def test_pickles_are_refused_by_suffix(tmp_path):
    for path in _pickles(tmp_path).values():
        with pytest.raises(ModelFileError, match=PICKLE_REASON):
            store.resolve_path(path)


def test_pickles_are_refused_by_content(tmp_path):
    """A pickle renamed to .gguf is recognized from its first bytes."""
    for kind, path in _pickles(tmp_path).items():
        renamed = path.rename(path.with_name(f"{kind}.gguf"))
        message = refuse(renamed, "pickle")
        assert re.search(PICKLE_REASON, message), message
        with pytest.raises(ModelFileError, match="pickle"):
            store.resolve_path(renamed)
