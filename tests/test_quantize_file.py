"""`pellucid quantize` (quantize_file.py) against llama.cpp's own `llama-quantize`, file for file.

Oracles:
- llama.cpp's files in tests/zoo: `tiny-q8_0.gguf` is llama.cpp's Q8_0 of `tiny-f32.gguf` (ten families), and
  pellucid's Q8_0 of the same source must be the same file, byte for byte (metadata, tensor order, padding, blocks).
  `kquant-q4_k_m.gguf` is llama.cpp's Q4_K_M of an f32 file not kept in the zoo: its per-tensor types are the
  oracle for pellucid's Q4_K_M plan of the same tensors.
- gguf-py's numpy quantizers (Q8_0, Q4_0, Q4_1, Q5_0, Q5_1), on every tensor of a file pellucid wrote.
- llama.cpp itself (llama-cpp-python 0.3.36 in /work/llcpp/venv, `llama_model_quantize`, run as a subprocess as
  tests/zoo/make_fixtures.py does), on random float32 GGUF files with the zoo's shapes and more layers (so that the
  _M / _S layer rules bite): every --type, the whole output file byte for byte. Skipped, with the reason, where that
  venv is missing. Tolerance: none, on every byte. The one exception is the check that llama.cpp and pellucid both
  run a written file: their next-token predictions agree on >= 90% of positions (llama.cpp rounds activations to 8
  bits in its products, pellucid keeps float32).
"""

from __future__ import annotations

import errno
import os
import subprocess
from pathlib import Path

import numpy as np
import pytest
from gguf import GGUFWriter
from gguf.constants import GGMLQuantizationType
from gguf.quants import quantize as gguf_quantize

from pellucid import quantize_file as qf
from pellucid.errors import PellucidError, UnsupportedError
from pellucid.formats.gguf import GGUFFile
from pellucid.quant.types import GGMLType

ZOO = Path(__file__).resolve().parent / "zoo"
# The zoo's dense families; mixture-of-experts files are refused by `quantize` for now (test below)
MOE_FAMILIES = ("deepseek2moe", "qwen2moe", "qwen3moe", "gpt_oss", "llama4")
FAMILIES = sorted(p.name for p in ZOO.iterdir() if (p / "tiny-f32.gguf").exists() and p.name not in MOE_FAMILIES)
LLAMACPP_PYTHON = Path(os.environ.get("LLAMACPP_PYTHON", "/work/llcpp/venv/bin/python"))
LEGACY = ("Q8_0", "Q4_0", "Q4_1", "Q5_0", "Q5_1")

needs_llamacpp = pytest.mark.skipif(
    not LLAMACPP_PYTHON.exists(),
    reason=f"llama.cpp (llama-cpp-python) is not installed at {LLAMACPP_PYTHON}: set LLAMACPP_PYTHON to compare "
    "pellucid's K-quant files with llama.cpp's own",
)


def llamacpp_quantize(src: Path, dst: Path, type_name: str) -> None:
    """llama.cpp's llama_model_quantize(src -> dst), in llama-cpp-python's venv (it has no torch)."""
    code = (
        "import ctypes, sys, llama_cpp\n"
        "p = llama_cpp.llama_model_quantize_default_params()\n"
        "p.ftype = int(sys.argv[3]); p.nthread = 1\n"
        "sys.exit(llama_cpp.llama_model_quantize(sys.argv[1].encode(), sys.argv[2].encode(), ctypes.byref(p)))\n"
    )
    ftype = str(qf.FILE_TYPES[type_name].ftype)
    proc = subprocess.run([str(LLAMACPP_PYTHON), "-c", code, str(src), str(dst), ftype], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr[-2000:]


def random_f32_model(template: Path, dest: Path, n_layer: int, seed: int = 0) -> Path:
    """A float32 GGUF with `template`'s metadata and tensor shapes, layer 0's tensors repeated for `n_layer` layers,
    and random weights (norms near 1). The weights are N(0, 1) with a few outliers, so scales and mins vary."""
    rng = np.random.default_rng(seed)
    with GGUFFile(template) as g:
        arch = g.architecture
        writer = GGUFWriter(dest, arch)
        for key, value in g.metadata.items():
            if key in ("general.architecture", "general.file_type", "general.quantization_version"):
                continue
            if key == f"{arch}.block_count":
                value = n_layer
            writer.add_key_value(key, *qf._gguf_value(key, value, g.metadata_types[key]))
        writer.add_uint32("general.file_type", 0)  # ALL_F32
        infos = [t for t in g.tensors.values() if qf.layer_of(t.name) < 1]
        for i in range(n_layer):
            for info in infos:
                if qf.layer_of(info.name) == -1 and i > 0:
                    continue
                name = info.name.replace("blk.0.", f"blk.{i}.")
                w = rng.standard_normal(info.shape).astype(np.float32)
                if len(info.shape) == 1:
                    w = 1 + 0.1 * w
                else:
                    w.flat[rng.integers(0, w.size, size=max(1, w.size // 500))] *= 8
                writer.add_tensor(name, w)
        writer.write_header_to_file()
        writer.write_kv_data_to_file()
        writer.write_tensors_to_file()
        writer.close()
    return dest


def types_of(path: Path) -> dict[str, GGMLType]:
    with GGUFFile(path) as g:
        return {name: info.ggml_type for name, info in g.tensors.items()}


# -- the plan: llama.cpp's per-tensor types ----------------------------------------------------------------


@pytest.mark.parametrize("family", FAMILIES)
def test_q4_k_m_plan_is_llamacpps(family):
    """kquant-q4_k_m.gguf is llama.cpp's Q4_K_M: pellucid's plan for the same tensors, as float32, has its types."""
    with GGUFFile(ZOO / family / "kquant-q4_k_m.gguf") as g:
        shapes = {n: (info.shape, GGMLType.F32) for n, info in g.tensors.items()}
        planned = qf.plan(shapes, qf.file_type("Q4_K_M"), qf.hparams_of(g.metadata))
        assert planned == {n: info.ggml_type for n, info in g.tensors.items()}


def test_layer_rules():
    """The _M / _S layer rules on 16 layers (llama.cpp's use_more_bits: first and last 2, and every third from 3)."""
    assert [i for i in range(16) if qf.use_more_bits(i, 16)] == [0, 1, 4, 7, 10, 13, 14, 15]
    shapes = {"token_embd.weight": ((100, 256), GGMLType.F16), "output.weight": ((100, 256), GGMLType.F16)}
    for i in range(16):
        for part in ("attn_v", "ffn_down", "attn_q"):
            shapes[f"blk.{i}.{part}.weight"] = ((256, 256), GGMLType.F16)
        shapes[f"blk.{i}.attn_norm.weight"] = ((256,), GGMLType.F32)
    plan = qf.plan(shapes, qf.file_type("Q4_K_S"), qf.Hparams(16))
    assert [plan[f"blk.{i}.attn_v.weight"].name for i in range(6)] == ["Q5_K"] * 4 + ["Q4_K"] * 2
    assert [plan[f"blk.{i}.ffn_down.weight"].name for i in range(3)] == ["Q5_K", "Q5_K", "Q4_K"]
    assert plan["output.weight"] == GGMLType.Q6_K and plan["token_embd.weight"] == GGMLType.Q4_K  # untied
    assert plan["blk.3.attn_norm.weight"] == GGMLType.F32 and plan["blk.3.attn_q.weight"] == GGMLType.Q4_K
    assert qf.plan(shapes, qf.file_type("Q4_0"), qf.Hparams(16))["output.weight"] == GGMLType.Q6_K
    assert qf.plan(shapes, qf.file_type("F16"), qf.Hparams(16))["output.weight"] == GGMLType.F16
    # rows of 96 weights: not whole 256-blocks, so Q4_K falls back to Q5_0 and Q6_K (the head) to Q8_0
    odd = {"token_embd.weight": ((10, 96), GGMLType.F32), "blk.0.attn_q.weight": ((96, 96), GGMLType.F32)}
    assert qf.plan(odd, qf.file_type("Q4_K_M"), qf.Hparams(1)) == {
        "token_embd.weight": GGMLType.Q8_0,
        "blk.0.attn_q.weight": GGMLType.Q5_0,
    }


def test_type_names_any_case_and_unknown():
    assert qf.file_type("q4_k_m").ftype == 15 and qf.file_type("bf16").ftype == 32
    with pytest.raises(UnsupportedError, match="Q4_K_M, Q4_K_S"):
        qf.file_type("Q3_K_M")


# -- the bytes ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("family", FAMILIES)
def test_q8_0_is_llamacpps_file(family, tmp_path):
    out = qf.quantize_file(ZOO / family / "tiny-f32.gguf", tmp_path / "q8.gguf", "Q8_0").path
    assert out.read_bytes() == (ZOO / family / "tiny-q8_0.gguf").read_bytes()


@pytest.mark.parametrize("type_name", LEGACY)
def test_legacy_blocks_are_gguf_pys(type_name, tmp_path):
    src = ZOO / "qwen2" / "tiny-f32.gguf"
    out = qf.quantize_file(src, tmp_path, type_name).path
    assert out.name == f"zoo-qwen2-tiny-21K-{type_name}.gguf"  # the naming convention, from general.*
    checked = 0
    with GGUFFile(src) as f32, GGUFFile(out) as q:
        assert q.metadata["general.file_type"] == qf.FILE_TYPES[type_name].ftype
        assert q.metadata["general.quantization_version"] == 2
        assert q.metadata["tokenizer.ggml.tokens"] == f32.metadata["tokenizer.ggml.tokens"]
        for name, info in q.tensors.items():
            if info.ggml_type in (GGMLType.F32, GGMLType.F16):
                assert np.array_equal(q.raw(name), f32.raw(name))
                continue
            expected = gguf_quantize(f32.tensor(name).numpy(), GGMLQuantizationType(info.ggml_type))
            assert np.array_equal(q.raw(name), expected.reshape(-1)), name
            checked += info.ggml_type == GGMLType[type_name]
    assert checked >= 8


def assert_same_file_as_llamacpp(src: Path, tmp_path: Path, type_name: str) -> None:
    theirs, ours = tmp_path / f"llamacpp-{type_name}.gguf", tmp_path / f"pellucid-{type_name}.gguf"
    llamacpp_quantize(src, theirs, type_name)
    qf.quantize_file(src, ours, type_name)
    if ours.read_bytes() != theirs.read_bytes():
        with GGUFFile(ours) as a, GGUFFile(theirs) as b:
            assert list(a.metadata) == list(b.metadata)
            assert types_of(ours) == types_of(theirs), type_name
            bad = [n for n in a.tensors if not np.array_equal(a.raw(n), b.raw(n))]
            pytest.fail(f"{type_name}: tensors differ from llama.cpp's: {bad}")


@needs_llamacpp
@pytest.mark.slow
@pytest.mark.parametrize("type_name", list(qf.FILE_TYPES))
def test_every_type_is_llamacpps_file(type_name, tmp_path_factory):
    """Random float32 weights of llama's kquant shapes (256 wide: every K-quant applies), 10 layers, so that each
    layer rule picks some layers and not others: llama.cpp's file and pellucid's are the same bytes (types,
    blocks, metadata, order). Also run by hand, once, for mistral (untied head), phi3 (fused qkv) and gemma3."""
    src = _random_llama(tmp_path_factory)
    assert_same_file_as_llamacpp(src, tmp_path_factory.mktemp(type_name), type_name)


@needs_llamacpp
@pytest.mark.parametrize("family", ["mistral", "phi3", "gemma3", "qwen2"])
def test_k_quants_are_llamacpps_file(family, tmp_path):
    """The families whose tensors differ from llama's (untied head, fused qkv and gate_up, post-norms, biases),
    2 layers, the mixed K-quants: the same file as llama.cpp's."""
    src = random_f32_model(ZOO / family / "kquant-q4_k_m.gguf", tmp_path / "f32.gguf", n_layer=2)
    for type_name in ("Q4_K_M", "Q5_K_S"):
        assert_same_file_as_llamacpp(src, tmp_path, type_name)


_RANDOM_LLAMA: list[Path] = []


def _random_llama(tmp_path_factory) -> Path:
    if not _RANDOM_LLAMA:
        folder = tmp_path_factory.mktemp("random-llama")
        _RANDOM_LLAMA.append(random_f32_model(ZOO / "llama" / "kquant-q4_k_m.gguf", folder / "f32.gguf", n_layer=10))
    return _RANDOM_LLAMA[0]


# -- the file: loads in llama.cpp and pellucid, split sources, bad input --------------------------------------


def test_split_source_reads_as_one_file(tmp_path):
    """A source split by gguf-py's writer (first part given) gives the same file as the unsplit source."""
    src = ZOO / "llama" / "tiny-f32.gguf"
    with GGUFFile(src) as g:
        writer = GGUFWriter(tmp_path / "tiny.gguf", g.architecture, split_max_tensors=8)
        for key, value in g.metadata.items():
            if key != "general.architecture":
                writer.add_key_value(key, *qf._gguf_value(key, value, g.metadata_types[key]))
        for name in qf.llama_order(g.tensors):
            writer.add_tensor(name, g.tensor(name).numpy())
        writer.write_header_to_file()
        writer.write_kv_data_to_file()
        writer.write_tensors_to_file()
        writer.close()
    first = tmp_path / "tiny-00001-of-00003.gguf"
    assert first.exists()
    out = qf.quantize_file(first, tmp_path / "q8.gguf", "Q8_0").path
    assert out.read_bytes() == (ZOO / "llama" / "tiny-q8_0.gguf").read_bytes()


def test_loads_in_pellucid_and_llamacpp(tmp_path):
    """pellucid's Q4_K_M of a zoo model runs in pellucid, and (where installed) llama.cpp loads it and predicts the
    same next tokens for the reference prompt as pellucid does."""
    import json

    import torch

    from pellucid.model.loader import load_model

    out = qf.quantize_file(ZOO / "llama" / "tiny-f32.gguf", tmp_path / "q.gguf", "Q4_K_M").path
    ids = json.loads((ZOO / "llama" / "reference.json").read_text())["prompts"][0]["ids"]
    ours = load_model(out, device="cpu")(torch.tensor([ids]))[0].argmax(-1).tolist()
    if not LLAMACPP_PYTHON.exists():
        pytest.skip(f"llama.cpp is not installed at {LLAMACPP_PYTHON}; pellucid loaded the file")
    code = (
        "import json, sys, numpy as np, llama_cpp\n"
        "llm = llama_cpp.Llama(sys.argv[1], n_ctx=64, logits_all=True, verbose=False, n_threads=1)\n"
        "llm.eval(json.loads(sys.argv[2]))\n"
        "print(json.dumps(np.asarray(llm.scores[: llm.n_tokens]).argmax(-1).tolist()))\n"
    )
    proc = subprocess.run([str(LLAMACPP_PYTHON), "-c", code, str(out), json.dumps(ids)], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr[-2000:]
    theirs = json.loads(proc.stdout.strip().splitlines()[-1])
    agree = sum(a == b for a, b in zip(ours, theirs)) / len(ids)
    assert agree >= 0.9, (ours, theirs)  # llama.cpp rounds activations to 8 bits in its products; pellucid does not


def test_refuses_to_overwrite_unless_forced(tmp_path):
    dst = tmp_path / "out.gguf"
    dst.write_bytes(b"keep me")
    with pytest.raises(PellucidError, match="exists; pass --force"):
        qf.quantize_file(ZOO / "llama" / "tiny-f32.gguf", dst, "Q8_0")
    assert dst.read_bytes() == b"keep me"
    qf.quantize_file(ZOO / "llama" / "tiny-f32.gguf", dst, "Q8_0", force=True)
    assert dst.read_bytes() == (ZOO / "llama" / "tiny-q8_0.gguf").read_bytes()


def test_refuses_a_source_quantized_below_the_target(tmp_path):
    q4 = qf.quantize_file(ZOO / "llama" / "tiny-f32.gguf", tmp_path / "q4.gguf", "Q4_0").path
    with pytest.raises(PellucidError, match=r"mostly to Q4_0 \(4.5 bits per weight\): Q8_0"):
        qf.quantize_file(q4, tmp_path / "q8.gguf", "Q8_0")
    assert not (tmp_path / "q8.gguf").exists()
    # down is fine (lossy on top of lossy, as llama-quantize --allow-requantize)
    qf.quantize_file(ZOO / "llama" / "tiny-q8_0.gguf", tmp_path / "q4-from-q8.gguf", "Q4_0")


def test_a_full_disk_leaves_no_file(tmp_path, monkeypatch):
    real = qf._tensor_bytes
    calls = []

    def fill_up(*args):
        calls.append(1)
        if len(calls) == 5:
            raise OSError(errno.ENOSPC, "No space left on device")
        return real(*args)

    monkeypatch.setattr(qf, "_tensor_bytes", fill_up)
    with pytest.raises(PellucidError, match="not enough disk space.*filled while writing"):
        qf.quantize_file(ZOO / "llama" / "tiny-f32.gguf", tmp_path / "out.gguf", "Q8_0")
    assert list(tmp_path.iterdir()) == []  # neither out.gguf nor the temporary file


def test_not_enough_space_is_said_before_writing(tmp_path, monkeypatch):
    monkeypatch.setattr(qf.shutil, "disk_usage", lambda _: qf.shutil._ntuple_diskusage(10**9, 10**9, 1000))
    with pytest.raises(PellucidError, match="not enough disk space"):
        qf.quantize_file(ZOO / "llama" / "tiny-f32.gguf", tmp_path / "out.gguf", "Q8_0")
    assert list(tmp_path.iterdir()) == []


def test_cli_bad_input(tmp_path, capsys):
    from pellucid import cli

    src = str(ZOO / "llama" / "tiny-f32.gguf")
    assert cli.main(["quantize", src, str(tmp_path), "--type", "q3_k"]) == 1
    assert "pick one of Q8_0, Q4_0, Q4_1, Q5_0, Q5_1, Q4_K_M, Q4_K_S, Q5_K_M, Q5_K_S, Q6_K, F16, BF16" in (
        capsys.readouterr().err
    )
    assert cli.main(["quantize", str(tmp_path / "missing.gguf"), str(tmp_path), "--type", "q8_0"]) == 1
    assert "no such file" in capsys.readouterr().err
    assert cli.main(["quantize", str(tmp_path), str(tmp_path / "x.gguf"), "--type", "q8_0"]) == 1
    assert "not a Hugging Face model folder" in capsys.readouterr().err
    assert cli.main(["quantize", src, str(tmp_path), "--type", "q8_0", "--imatrix", "m.dat"]) == 1
    assert "--imatrix is not implemented yet" in capsys.readouterr().err
    assert cli.main(["quantize", src, str(tmp_path), "--type", "Q8_0"]) == 0
    assert "zoo-llama-tiny-17K-Q8_0.gguf" in capsys.readouterr().out
    assert cli.main(["quantize", src, str(tmp_path), "--type", "Q8_0"]) == 1
    err = capsys.readouterr().err
    assert "exists; pass --force" in err and "Traceback" not in err


def tiny_gguf(path: Path, arch: str, tensors: dict[str, tuple[np.ndarray, GGMLQuantizationType | None]], **kv) -> Path:
    writer = GGUFWriter(path, arch)
    writer.add_uint32(f"{arch}.block_count", 1)
    for key, value in kv.items():
        writer.add_uint32(f"{arch}.{key}", value)
    for name, (data, raw_dtype) in tensors.items():
        writer.add_tensor(name, data, raw_dtype=raw_dtype)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return path


def test_refuses_what_llamacpp_has_other_rules_for(tmp_path):
    """Architectures pellucid does not run (llama.cpp has rules by architecture, e.g. Falcon's) and experts."""
    w = {"blk.0.attn_q.weight": (np.ones((32, 32), np.float32), None)}
    falcon = tiny_gguf(tmp_path / "falcon.gguf", "falcon", w)
    with pytest.raises(UnsupportedError, match="not 'falcon'.*llama-quantize"):
        qf.quantize_file(falcon, tmp_path / "out.gguf", "Q8_0")
    moe = tiny_gguf(tmp_path / "moe.gguf", "qwen2", w, expert_count=8)
    with pytest.raises(UnsupportedError, match="mixture-of-experts"):
        qf.quantize_file(moe, tmp_path / "out.gguf", "Q8_0")
    assert not (tmp_path / "out.gguf").exists()


def test_refuses_a_type_it_cannot_decode_before_writing(tmp_path):
    iq2 = np.zeros((4, 66), np.uint8)  # 4 rows of one IQ2_XXS block (256 weights, 66 bytes)
    src = tiny_gguf(tmp_path / "iq2.gguf", "llama", {"blk.0.attn_q.weight": (iq2, GGMLQuantizationType.IQ2_XXS)})
    with pytest.raises(UnsupportedError, match="IQ2_XXS tensors, which pellucid cannot decode"):
        qf.quantize_file(src, tmp_path / "out.gguf", "Q4_0")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["iq2.gguf"]


def test_real_models_requantized(gemma3_path, smollm2_path, tmp_path):
    """The catalog files: Gemma 3 270M Q4_K_M (Q8_0 embedding, Q4_K / Q5_0 layers) cannot go up to Q8_0, can go to
    Q4_0, and says it was requantized; SmolLM2 Q4_1 to Q4_K_M gives llama.cpp's types (576-wide rows: Q5_0 fallback,
    Q6_K ffn_down where its 1536-wide rows fit, Q8_0 tied embedding). The bytes are compared with llama.cpp's in
    benchmarks/quantize_vs_llamacpp.py (identical for Q4_K_M, Q4_K_S, Q4_0)."""
    with pytest.raises(PellucidError, match="mostly to Q5_0"):
        qf.quantize_file(gemma3_path, tmp_path / "g8.gguf", "Q8_0")
    assert qf.quantize_file(gemma3_path, tmp_path / "g4.gguf", "Q4_0").requantized_from == "Q4_K_M"
    smol = qf.quantize_file(smollm2_path, tmp_path, "Q4_K_M")
    assert smol.path.name == "smollm2-135M-8k-lc100k-mix1-ep2-Q4_K_M.gguf"
    counts = {t: sum(v == t for v in smol.types.values()) for t in set(smol.types.values())}
    assert counts == {GGMLType.Q5_0: 166, GGMLType.F32: 61, GGMLType.Q4_K: 16, GGMLType.Q8_0: 15, GGMLType.Q6_K: 14}


# -- Hugging Face folders (llama family): what llama.cpp's converter would write, then quantized ----------------


def assert_same_model(ours: Path, theirs: Path) -> None:
    """Every tensor (type and bytes) and every metadata key equal, but general.name (the converter took it from
    make_fixtures' --model-name; pellucid from the folder's name)."""
    with GGUFFile(ours) as a, GGUFFile(theirs) as b:
        assert list(a.metadata) == list(b.metadata)
        for key in b.metadata:
            if key != "general.name":
                assert np.array_equal(a.metadata[key], b.metadata[key]), key
                assert a.metadata_types[key] == b.metadata_types[key], key
        assert list(a.tensors) == list(b.tensors)
        for name in b.tensors:
            assert a.tensors[name].ggml_type == b.tensors[name].ggml_type, name
            assert np.array_equal(a.raw(name), b.raw(name)), name


@pytest.mark.parametrize("family", ["llama", "qwen2", "qwen3", "olmo2", "smollm3"])
@pytest.mark.parametrize(
    ("variant", "type_name", "oracle"), [("tiny", "Q8_0", "tiny-q8_0"), ("kquant", "Q4_K_M", "kquant-q4_k_m")]
)
def test_hf_folder_as_llamacpp_converts_and_quantizes_it(family, variant, type_name, oracle, tmp_path):
    """The zoo's HF folders (llama: llama 3 RoPE scaling, tied head, 2 shards; qwen2: q/k/v biases, float16,
    untied head; qwen3: QK-norm, explicit head_dim; olmo2: post-norms, dbrx pre-tokenizer; smollm3: llama's
    permutation under another architecture) quantized straight from safetensors equal llama.cpp's
    convert_hf_to_gguf.py (f32) + llama-quantize: llama's permuted q/k rows, rope_freqs, the tokenizer metadata,
    every block."""
    from zoo import specs

    folder = specs.build_hf_folder(family, tmp_path / "hf", variant)
    out = qf.quantize_file(folder, tmp_path / "out.gguf", type_name).path
    assert_same_model(out, ZOO / family / f"{oracle}.gguf")


def test_hf_folders_it_does_not_convert(tmp_path):
    from zoo import specs

    mistral = specs.build_hf_folder("mistral", tmp_path / "mistral")  # the tekken pre-tokenizer
    with pytest.raises(UnsupportedError, match="pre-tokenizer is not one pellucid can name"):
        qf.quantize_file(mistral, tmp_path / "out.gguf", "Q8_0")
    gemma = specs.build_hf_folder("gemma3", tmp_path / "gemma3")
    with pytest.raises(UnsupportedError, match="llama, smollm3, qwen2, qwen3, olmo2 families only"):
        qf.quantize_file(gemma, tmp_path / "out.gguf", "Q8_0")
    assert not (tmp_path / "out.gguf").exists()


@pytest.mark.parametrize("family", MOE_FAMILIES)
def test_a_mixture_of_experts_file_is_refused_before_anything_is_written(family, tmp_path):
    dst = tmp_path / "out.gguf"
    with pytest.raises(UnsupportedError, match="mixture-of-experts"):
        qf.quantize_file(ZOO / family / "tiny-f32.gguf", dst, "Q8_0")
    assert not dst.exists() and list(tmp_path.iterdir()) == []
