"""Random-weight GGUF models at the shapes people run, for `pellucid bench MODEL --compare llama.cpp`.

    nice -n 19 .venv/bin/python benchmarks/make_models.py                      # all three, every default type
    nice -n 19 .venv/bin/python benchmarks/make_models.py --only llama-3.2-1b  # one model
    nice -n 19 .venv/bin/python benchmarks/make_models.py --only qwen3-1.7b --types Q8_0 Q6_K  # other types
    .venv/bin/python benchmarks/make_models.py --check   # also run each file in llama.cpp and pellucid (4 tokens)

The files go to `--out` (default `$PELLUCID_HOME/bench-models`, i.e. ~/.cache/pellucid/bench-models), never into
the repository, as `NAME-TYPE.gguf` (e.g. llama-3.2-1b-q4_k_m.gguf), with manifest.json beside them (each file's
size, sha256, how it was made and how long it took). A file that exists is skipped unless --force. The weights are
random, so the models answer gibberish: they are for speed, not for quality.

| model | shape of | default types | disk at the end | extra disk while building | time (2 cores, niced) |
|---|---|---|---|---|---|
| llama-3.2-1b | meta-llama/Llama-3.2-1B | Q4_K_M, Q8_0, Q4_0 | 2.9 GB | 5 GB | 2 min 45 s |
| qwen3-1.7b | Qwen/Qwen3-1.7B | Q4_K_M | 1.1 GB | 7 GB | 3 min |
| llama-3.1-8b | meta-llama/Llama-3.1-8B | Q4_K_M | 4.9 GB | 32 GB | 16 min (11 of them quantizing) |

Measured on the 2-core reference machine; manifest.json keeps each step's seconds. Another type for a model costs
its quantizing only (Q4_K_M: 1-1.5 min per billion parameters; Q8_0 and Q4_0: a few times faster), plus rebuilding the
f16 file. `--check` adds 0.5-1 min a file (2.5 min for the 8B: pellucid compiles on its first call). Memory: this
process holds one safetensors shard (at most 2 GiB) and one float32 tensor at a time (peak RSS 2.6 GB for the 1B);
llama.cpp's converter and quantizer stream tensor by tensor. pellucid's own run of the 8B file (--check) peaks at
9.1 GB RSS.

How each model is made, all with llama.cpp's own tools (the path every real GGUF takes):
1. an HF folder in `OUT/work/NAME/hf`: config.json from transformers' config class with the real model's numbers,
   the real tokenizer (below), and safetensors shards of bfloat16 weights drawn from N(0, 0.02²) (a real model's
   init; norm weights are 1), written shard by shard from one seeded torch generator, so a rebuild gives the same
   bytes with the same torch and llama.cpp (checked: the same sha256 for llama-3.2-1b-q8_0.gguf twice);
2. llama.cpp's converter `convert_hf_to_gguf.py` (run with its own gguf-py) writes an f16 GGUF; the HF folder is
   deleted as soon as it is done;
3. llama.cpp's quantizer (`llama_cpp.llama_model_quantize` in llama-cpp-python's venv, no imatrix) writes each
   type from the f16 file, which is deleted at the end.

The tokenizers are the real ones: llama.cpp ships each family's vocabulary (tokens, types and merges) as
models/ggml-vocab-*.gguf for its tokenizer tests; this script writes them back out as tokenizer.json
(llama-bpe: Llama 3's 128,000 BPE tokens plus its 256 special tokens under their Llama 3.1 names; qwen2: Qwen's
151,643 BPE tokens plus Qwen3's 26 added tokens, the rest of the 151,936-row embedding padded as in the real
model). The converter recognizes both by its own pre-tokenizer hash, so prompts tokenize as they do for the real
models and the chat templates (the real ones, tests/chat_templates/llamacpp/) work. The pre-tokenizer regexes are
tests/zoo/specs.py's.

Two Python environments take part, as in tests/zoo/make_fixtures.py: this script runs in pellucid's dev venv
(torch, transformers, safetensors, gguf); `LLAMACPP_PYTHON` (default /work/llcpp/venv/bin/python, llama-cpp-python
built from source) runs `make_models.py _quantize ...` and `_check ...`; `LLAMACPP_DIR` is the llama.cpp source tree
the converter comes from (llama-cpp-python's vendor/llama.cpp). The script's top level imports only the standard
library so that the other venv can run it.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import math
import os
import re
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
TEMPLATES = REPO / "tests" / "chat_templates" / "llamacpp"  # the real chat templates, vendored from llama.cpp
LLAMACPP_DIR = Path(os.environ.get("LLAMACPP_DIR", "/work/llcpp/llama_cpp_python-0.3.36/vendor/llama.cpp"))
LLAMACPP_PYTHON = os.environ.get("LLAMACPP_PYTHON", "/work/llcpp/venv/bin/python")

WEIGHT_STD = 0.02  # a real model's initializer_range
SHARD_BYTES = 2 * 1024**3  # the most weight bytes held in memory (and written to one safetensors file) at a time
FLOAT_TYPE = "f16"  # the converter's output, which the quantizer reads
SMOKE_PROMPT, SMOKE_TOKENS = "hi", 4

LLAMA31_SPECIAL = (  # ids 128000-128010, then <|reserved_special_token_3|> to _247|> (ids 128011-128255)
    *("begin_of_text", "end_of_text", "reserved_special_token_0", "reserved_special_token_1", "finetune_right_pad_id"),
    *("reserved_special_token_2", "start_header_id", "end_header_id", "eom_id", "eot_id", "python_tag"),
    *(f"reserved_special_token_{i}" for i in range(3, 248)),
)


QWEN3_ADDED = (  # ids 151643-151668
    *(f"<|{s}|>" for s in ("endoftext", "im_start", "im_end", "object_ref_start", "object_ref_end", "box_start")),
    *(f"<|{s}|>" for s in ("box_end", "quad_start", "quad_end", "vision_start", "vision_end", "vision_pad")),
    *(f"<|{s}|>" for s in ("image_pad", "video_pad")),
    "<tool_call>",
    "</tool_call>",
    *(f"<|{s}|>" for s in ("fim_prefix", "fim_middle", "fim_suffix", "fim_pad", "repo_name", "file_sep")),
    "<tool_response>",
    "</tool_response>",
    "<think>",
    "</think>",
)


@dataclass(frozen=True)
class Vocab:
    """A real tokenizer, rebuilt from llama.cpp's models/ggml-vocab-NAME.gguf."""

    gguf: str  # ggml-vocab-NAME.gguf; NAME is also llama.cpp's name of the pre-tokenizer (tokenizer.ggml.pre)
    ignore_merges: bool
    nfc: bool  # Qwen normalizes to NFC first
    added: list[tuple[str, bool]]  # (content, special), placed right after the BPE tokens
    bos: str | None
    eos: str  # tokenizer_config.json's eos_token (the instruct models' end of turn)
    add_bos: bool
    pad: str | None
    generation_eos: tuple[str, ...]  # generation_config.json eos_token_id
    chat_template: str  # file under tests/chat_templates/llamacpp


def llama3_vocab(chat_template: str) -> Vocab:
    """Llama 3.1/3.2 (instruct): BOS added, end of turn <|eot_id|>, all 256 added tokens special."""
    return Vocab(
        gguf="llama-bpe",
        ignore_merges=True,
        nfc=False,
        added=[(f"<|{name}|>", True) for name in LLAMA31_SPECIAL],
        bos="<|begin_of_text|>",
        eos="<|eot_id|>",
        add_bos=True,
        pad=None,
        generation_eos=("<|end_of_text|>", "<|eom_id|>", "<|eot_id|>"),
        chat_template=chat_template,
    )


QWEN3_VOCAB = Vocab(
    gguf="qwen2",
    ignore_merges=False,
    nfc=True,
    added=[(t, t.startswith("<|")) for t in QWEN3_ADDED],  # the tool and thinking markers are not special
    bos=None,
    eos="<|im_end|>",
    add_bos=False,
    pad="<|endoftext|>",
    generation_eos=("<|im_end|>", "<|endoftext|>"),
    chat_template="Qwen-Qwen3-0.6B.jinja",
)


@dataclass(frozen=True)
class BenchModel:
    name: str
    shape_of: str  # the Hugging Face model whose config.json this copies
    config_class: str  # transformers config class
    architecture: str  # config.json "architectures"
    config: dict  # the config class's keyword arguments: the real model's numbers
    vocab: Vocab
    types: tuple[str, ...]  # llama.cpp quant types built by default
    seed: int


LLAMA3_COMMON = dict(
    hidden_act="silu",
    max_position_embeddings=131072,
    rms_norm_eps=1e-5,
    attention_bias=False,
    mlp_bias=False,
    bos_token_id=128000,
    eos_token_id=[128001, 128008, 128009],
    dtype="bfloat16",
)


def llama3_rope(factor: float) -> dict:
    return {
        "rope_type": "llama3",
        "rope_theta": 500000.0,
        "factor": factor,
        "low_freq_factor": 1.0,
        "high_freq_factor": 4.0,
        "original_max_position_embeddings": 8192,
    }


MODELS = {
    m.name: m
    for m in [
        BenchModel(
            name="llama-3.2-1b",
            shape_of="meta-llama/Llama-3.2-1B",
            config_class="LlamaConfig",
            architecture="LlamaForCausalLM",
            config=dict(
                LLAMA3_COMMON,
                hidden_size=2048,
                intermediate_size=8192,
                num_hidden_layers=16,
                num_attention_heads=32,
                num_key_value_heads=8,
                head_dim=64,
                vocab_size=128256,
                tie_word_embeddings=True,
                rope_parameters=llama3_rope(32.0),
            ),
            vocab=llama3_vocab("meta-llama-Llama-3.2-3B-Instruct.jinja"),
            types=("Q4_K_M", "Q8_0", "Q4_0"),
            seed=1,
        ),
        BenchModel(
            name="qwen3-1.7b",
            shape_of="Qwen/Qwen3-1.7B",
            config_class="Qwen3Config",
            architecture="Qwen3ForCausalLM",
            config=dict(
                hidden_size=2048,
                intermediate_size=6144,
                num_hidden_layers=28,
                num_attention_heads=16,
                num_key_value_heads=8,
                head_dim=128,
                vocab_size=151936,
                tie_word_embeddings=True,
                hidden_act="silu",
                max_position_embeddings=40960,
                rms_norm_eps=1e-6,
                attention_bias=False,
                rope_parameters={"rope_type": "default", "rope_theta": 1000000.0},
                bos_token_id=151643,
                eos_token_id=151645,
                dtype="bfloat16",
            ),
            vocab=QWEN3_VOCAB,
            types=("Q4_K_M",),
            seed=2,
        ),
        BenchModel(
            name="llama-3.1-8b",
            shape_of="meta-llama/Llama-3.1-8B",
            config_class="LlamaConfig",
            architecture="LlamaForCausalLM",
            config=dict(
                LLAMA3_COMMON,
                hidden_size=4096,
                intermediate_size=14336,
                num_hidden_layers=32,
                num_attention_heads=32,
                num_key_value_heads=8,
                head_dim=128,
                vocab_size=128256,
                tie_word_embeddings=False,
                rope_parameters=llama3_rope(8.0),
            ),
            vocab=llama3_vocab("meta-llama-Llama-3.1-8B-Instruct.jinja"),
            types=("Q4_K_M",),
            seed=3,
        ),
    ]
}


# -- subprocesses: llama.cpp's converter (its own gguf-py), quantizer and smoke run (llama-cpp-python's venv) ---------


def quantize_main(src: str, dst: str, ftype: str, threads: str) -> None:
    """Run in LLAMACPP_PYTHON: llama.cpp's quantizer, the same code as the llama-quantize tool."""
    import ctypes

    import llama_cpp

    params = llama_cpp.llama_model_quantize_default_params()
    params.ftype = getattr(llama_cpp, f"LLAMA_FTYPE_MOSTLY_{ftype}")
    params.nthread = int(threads)
    if llama_cpp.llama_model_quantize(src.encode(), dst.encode(), ctypes.byref(params)) != 0:
        raise SystemExit(f"llama.cpp could not quantize {src} to {ftype}")


def check_main(path: str, threads: str) -> None:
    """Run in LLAMACPP_PYTHON: load the file in llama.cpp and print the greedy continuation of SMOKE_PROMPT (raw,
    BOS added when the model adds one) as JSON: {"load_s", "prompt_ids", "ids", "text"}."""
    import llama_cpp

    start = time.perf_counter()
    kwargs = dict(n_ctx=256, n_threads=int(threads), n_threads_batch=int(threads), logits_all=True, verbose=False)
    llm = llama_cpp.Llama(path, **kwargs)
    loaded = time.perf_counter() - start
    prompt = llm.tokenize(SMOKE_PROMPT.encode(), add_bos=True)
    llm.eval(prompt)
    ids = []
    for _ in range(SMOKE_TOKENS):  # argmax of the last position's logits, one token per decode step
        ids.append(int(llm.scores[llm.n_tokens - 1].argmax()))
        llm.eval(ids[-1:])
    text = llm.detokenize(ids).decode(errors="replace")
    print(json.dumps({"load_s": round(loaded, 2), "prompt_ids": prompt, "ids": ids, "text": text}))


# -- the main process -------------------------------------------------------------------------------------------------


def log(name: str, message: str) -> None:
    print(f"{time.strftime('%H:%M:%S')} [{name}] {message}", flush=True)


def gb(n_bytes: int) -> str:
    return f"{n_bytes / 1e9:.2f} GB"


def default_out() -> Path:
    home = os.environ.get("PELLUCID_HOME") or Path.home() / ".cache" / "pellucid"
    return Path(home).expanduser() / "bench-models"


def file_name(model: BenchModel, ftype: str) -> str:
    return f"{model.name}-{ftype.lower()}.gguf"


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(1 << 24):
            digest.update(chunk)
    return digest.hexdigest()


def run_streamed(cmd: list[str], name: str, step: str, log_path: Path, env: dict | None = None) -> None:
    """Run a llama.cpp tool, its output going to log_path; print its progress every 10% (the converter's tqdm
    percentage, the quantizer's `[  i/ n]` tensor counter). On failure raise with the log's tail."""
    progress = re.compile(r"(\d+)%\||\[\s*(\d+)/\s*(\d+)\]")
    shown, pending = 0, ""
    with (
        open(log_path, "wb") as out,
        subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, env=env) as proc,
    ):
        while raw := proc.stdout.read1(1 << 16):
            out.write(raw)
            *done, pending = re.split(r"[\r\n]", pending + raw.decode(errors="replace"))  # tqdm ends lines with \r
            for match in progress.finditer("\n".join(done)):
                pct = int(match[1]) if match[1] else 100 * int(match[2]) // int(match[3])
                if pct >= shown + 10:
                    shown = pct - pct % 10
                    log(name, f"{step}: {shown}%")
    if proc.returncode != 0:
        tail = log_path.read_text(errors="replace")[-3000:]
        raise RuntimeError(f"{step} failed for {name} (exit {proc.returncode}); full log: {log_path}\n{tail}")


# -- the HF folder: config, tokenizer, random weights -----------------------------------------------------------------


def hf_config(model: BenchModel):
    import transformers

    config = getattr(transformers, model.config_class)(**model.config)
    config.architectures = [model.architecture]
    return config


def read_vocab(vocab: Vocab) -> tuple[list[str], list[str]]:
    """The BPE tokens (token type 1, ids 0..n-1) and merges of llama.cpp's ggml-vocab file."""
    import gguf

    reader = gguf.GGUFReader(LLAMACPP_DIR / "models" / f"ggml-vocab-{vocab.gguf}.gguf")
    tokens = reader.fields["tokenizer.ggml.tokens"].contents()
    types = reader.fields["tokenizer.ggml.token_type"].contents()
    n_normal = types.index(gguf.TokenType.CONTROL)
    if any(t != gguf.TokenType.NORMAL for t in types[:n_normal]):
        raise ValueError(f"ggml-vocab-{vocab.gguf}.gguf: expected its normal tokens first")
    return tokens[:n_normal], reader.fields["tokenizer.ggml.merges"].contents()


def split_regex(vocab: Vocab) -> str:
    """The pre-tokenizer regex as the real tokenizer.json writes it (Oniguruma syntax), from the zoo's table."""
    sys.path.insert(0, str(REPO / "tests" / "zoo"))
    import specs

    return {"llama-bpe": specs.LLAMA3_REGEX, "qwen2": specs.QWEN2_REGEX}[vocab.gguf]


def tokenizer_json(vocab: Vocab, tokens: list[str], merges: list[str]) -> dict:
    """tokenizer.json of a byte-level BPE tokenizer, written field by field as the real files have them."""
    n = len(tokens)
    added = [
        {"id": n + i, "content": c, "single_word": False, "lstrip": False, "rstrip": False, "normalized": False}
        | {"special": special}
        for i, (c, special) in enumerate(vocab.added)
    ]
    split = {"type": "Split", "pattern": {"Regex": split_regex(vocab)}, "behavior": "Isolated", "invert": False}
    byte_level = {"type": "ByteLevel", "add_prefix_space": False, "trim_offsets": True, "use_regex": False}
    if vocab.add_bos:
        bos = {"SpecialToken": {"id": vocab.bos, "type_id": 0}}
        bos_id = n + [c for c, _ in vocab.added].index(vocab.bos)
        post_processor = {
            "type": "TemplateProcessing",
            "single": [bos, {"Sequence": {"id": "A", "type_id": 0}}],
            "pair": [bos, {"Sequence": {"id": "A", "type_id": 0}}, bos, {"Sequence": {"id": "B", "type_id": 1}}],
            "special_tokens": {vocab.bos: {"id": vocab.bos, "ids": [bos_id], "tokens": [vocab.bos]}},
        }
    else:
        post_processor = dict(byte_level, trim_offsets=False)
    return {
        "version": "1.0",
        "truncation": None,
        "padding": None,
        "added_tokens": added,
        "normalizer": {"type": "NFC"} if vocab.nfc else None,
        "pre_tokenizer": {"type": "Sequence", "pretokenizers": [split, byte_level]},
        "post_processor": post_processor,
        "decoder": {"type": "ByteLevel", "add_prefix_space": True, "trim_offsets": True, "use_regex": True},
        "model": {
            "type": "BPE",
            "dropout": None,
            "unk_token": None,
            "continuing_subword_prefix": None,
            "end_of_word_suffix": None,
            "fuse_unk": False,
            "byte_fallback": False,
            "ignore_merges": vocab.ignore_merges,
            "vocab": {t: i for i, t in enumerate(tokens)},
            "merges": [m.split(" ") for m in merges],
        },
    }


def tokenizer_config(vocab: Vocab, n_tokens: int) -> dict:
    return {
        "add_bos_token": vocab.add_bos,
        "add_eos_token": False,
        "added_tokens_decoder": {
            str(n_tokens + i): {"content": c, "lstrip": False, "normalized": False, "rstrip": False}
            | {"single_word": False, "special": special}
            for i, (c, special) in enumerate(vocab.added)
        },
        "bos_token": vocab.bos,
        "clean_up_tokenization_spaces": False,
        "eos_token": vocab.eos,
        "pad_token": vocab.pad,
        "model_max_length": 131072,
        "tokenizer_class": "PreTrainedTokenizerFast",
        "chat_template": (TEMPLATES / vocab.chat_template).read_text(encoding="utf-8"),
    }


def write_tokenizer(vocab: Vocab, dest: Path) -> None:
    tokens, merges = read_vocab(vocab)
    write_json(dest / "tokenizer.json", tokenizer_json(vocab, tokens, merges))
    write_json(dest / "tokenizer_config.json", tokenizer_config(vocab, len(tokens)))
    ids = {c: len(tokens) + i for i, (c, _) in enumerate(vocab.added)}
    generation = {"eos_token_id": [ids[t] for t in vocab.generation_eos]}
    if vocab.bos:
        generation["bos_token_id"] = ids[vocab.bos]
    if vocab.pad:
        generation["pad_token_id"] = ids[vocab.pad]
    write_json(dest / "generation_config.json", generation)


def write_json(path: Path, obj) -> None:
    path.write_text(json.dumps(obj, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")


def parameter_shapes(config) -> dict[str, tuple[int, ...]]:
    """Every parameter transformers defines for this config (a tied head once), in module order, on the meta device."""
    import torch
    import transformers

    with torch.device("meta"):
        model = transformers.AutoModelForCausalLM.from_config(config)
    return {n: tuple(p.shape) for n, p in model.named_parameters()}


def shard_plan(shapes: dict[str, tuple[int, ...]], bytes_per: int) -> list[list[str]]:
    """Consecutive groups of parameter names of at most SHARD_BYTES each (a larger tensor alone)."""
    shards, size = [[]], 0
    for name, shape in shapes.items():
        n_bytes = bytes_per * math.prod(shape)
        if shards[-1] and size + n_bytes > SHARD_BYTES:
            shards.append([])
            size = 0
        shards[-1].append(name)
        size += n_bytes
    return shards


def write_weights(model: BenchModel, config, dest: Path) -> None:
    """Safetensors shards of bfloat16 weights, N(0, WEIGHT_STD²) (norms 1), one shard in memory at a time."""
    import torch
    from safetensors.torch import save_file

    shapes = parameter_shapes(config)
    shards = shard_plan(shapes, bytes_per=2)
    generator = torch.Generator().manual_seed(model.seed)
    weight_map, total = {}, 0
    for k, names in enumerate(shards, start=1):
        fname = f"model-{k:05d}-of-{len(shards):05d}.safetensors"
        tensors = {}
        for name in names:
            if name.endswith("norm.weight"):
                tensors[name] = torch.ones(shapes[name], dtype=torch.bfloat16)
            else:
                w = torch.randn(shapes[name], generator=generator, dtype=torch.float32).mul_(WEIGHT_STD)
                tensors[name] = w.to(torch.bfloat16)
                del w
        save_file(tensors, dest / fname, metadata={"format": "pt"})
        total += sum(t.numel() * 2 for t in tensors.values())
        weight_map.update(dict.fromkeys(names, fname))
        log(model.name, f"weights: shard {k}/{len(shards)} written ({gb(total)})")
        del tensors
    write_json(dest / "model.safetensors.index.json", {"metadata": {"total_size": total}, "weight_map": weight_map})


def build_hf_folder(model: BenchModel, dest: Path) -> None:
    dest.mkdir(parents=True)
    config = hf_config(model)
    config.to_json_file(dest / "config.json", use_diff=False)
    write_tokenizer(model.vocab, dest)
    write_weights(model, config, dest)


# -- converting, quantizing, checking ---------------------------------------------------------------------------------


def convert(model: BenchModel, hf_dir: Path, outfile: Path) -> None:
    """llama.cpp's convert_hf_to_gguf.py, with its own gguf-py (not the installed one) first on the path."""
    env = {k: v for k, v in os.environ.items() if k != "NO_LOCAL_GGUF"}
    env["PYTHONPATH"] = os.pathsep.join([str(LLAMACPP_DIR / "gguf-py"), env.get("PYTHONPATH", "")])
    cmd = [sys.executable, str(LLAMACPP_DIR / "convert_hf_to_gguf.py"), "--outtype", FLOAT_TYPE]
    cmd += ["--outfile", str(outfile), "--model-name", model.name, str(hf_dir)]
    run_streamed(cmd, model.name, f"convert to {FLOAT_TYPE}", outfile.with_suffix(".log"), env=env)


def quantize(model: BenchModel, src: Path, dst: Path, ftype: str, threads: int) -> None:
    cmd = [LLAMACPP_PYTHON, __file__, "_quantize", str(src), str(dst), ftype, str(threads)]
    run_streamed(cmd, model.name, f"quantize to {ftype}", dst.with_suffix(".log"))


def check(path: Path, threads: int) -> dict:
    """The greedy continuation of SMOKE_PROMPT (raw, no chat template) by llama.cpp and by pellucid: both must load
    the file and generate. The ids usually agree, but need not: the weights are random, so the top two logits can be
    closer than the two engines' rounding."""
    cmd = [LLAMACPP_PYTHON, __file__, "_check", str(path), str(threads)]
    theirs = json.loads(run_checked(cmd).splitlines()[-1])
    cmd = [sys.executable, "-m", "pellucid", "run", str(path), SMOKE_PROMPT, "--raw", "--json"]
    ours = json.loads(run_checked([*cmd, "-n", str(SMOKE_TOKENS), "--temperature", "0"]))
    keys = ("prompt_ids", "ids", "text")
    return {
        "llama.cpp": theirs,
        "pellucid": {k: ours[k] for k in keys} | {"load_s": ours["stats"]["load_s"]},
        "same_ids": theirs["prompt_ids"] == ours["prompt_ids"] and theirs["ids"] == ours["ids"],
    }


def run_checked(cmd: list[str]) -> str:
    proc = subprocess.run(cmd, capture_output=True, text=True)
    if proc.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)} failed (exit {proc.returncode}):\n{proc.stderr[-3000:]}")
    return proc.stdout


# -- the manifest -----------------------------------------------------------------------------------------------------


def load_manifest(out: Path) -> dict:
    path = out / "manifest.json"
    return json.loads(path.read_text()) if path.is_file() else {"models": {}}


def save_manifest(out: Path, manifest: dict) -> None:
    tmp = out / "manifest.json.tmp"
    write_json(tmp, manifest)
    tmp.replace(out / "manifest.json")


def model_record(model: BenchModel) -> dict:
    return {
        "shape_of": model.shape_of,
        "architecture": model.architecture,
        "config": {k: v for k, v in model.config.items() if k not in ("bos_token_id", "eos_token_id", "dtype")},
        "weights": f"random: bfloat16 N(0, {WEIGHT_STD}^2), norm weights 1, torch.Generator seed {model.seed}",
        "tokenizer": f"the real vocabulary of llama.cpp's models/ggml-vocab-{model.vocab.gguf}.gguf, "
        f"chat template {model.vocab.chat_template}",
        "made_by": f"convert_hf_to_gguf.py --outtype {FLOAT_TYPE}, then llama_model_quantize (no imatrix)",
        "files": {},
    }


def file_record(path: Path, ftype: str, old: dict | None, seconds: float | None) -> dict:
    """Size and sha256 of a file (the sha256 reused from the manifest if size and mtime have not changed)."""
    stat = path.stat()
    if old and old.get("bytes") == stat.st_size and old.get("mtime") == int(stat.st_mtime) and seconds is None:
        return old
    record = {"type": ftype, "bytes": stat.st_size, "sha256": sha256_file(path), "mtime": int(stat.st_mtime)}
    if seconds is not None:
        record["quantize_s"] = round(seconds, 1)
    elif old and "quantize_s" in old:
        record["quantize_s"] = old["quantize_s"]
    return record


def versions() -> dict:
    import torch
    import transformers

    llama_cpp = run_checked([LLAMACPP_PYTHON, "-c", "import llama_cpp; print(llama_cpp.__version__)"]).strip()
    return {"torch": torch.__version__, "transformers": transformers.__version__, "llama_cpp_python": llama_cpp}


# -- one model --------------------------------------------------------------------------------------------------------


def build_model(model: BenchModel, types: list[str], out: Path, args, manifest: dict) -> None:
    """Make the missing files of one model; record every file of it in the manifest."""
    record = manifest["models"].setdefault(model.name, model_record(model))
    record.update({k: v for k, v in model_record(model).items() if k != "files"})
    todo = [t for t in types if args.force or not (out / file_name(model, t)).is_file()]
    for t in types:
        if t not in todo:
            log(model.name, f"{file_name(model, t)} exists, skipped (--force rebuilds it)")
    if todo:
        work = out / "work" / model.name
        shutil.rmtree(work, ignore_errors=True)  # whatever an interrupted run left
        work.mkdir(parents=True)
        timings = record.setdefault("timings_s", {})
        start = time.perf_counter()
        log(model.name, f"building the HF folder ({gb(2 * parameter_count(model))} of bfloat16 weights)")
        build_hf_folder(model, work / "hf")
        timings["hf_folder"] = round(time.perf_counter() - start, 1)
        float_gguf = work / f"{model.name}-{FLOAT_TYPE}.gguf"
        start = time.perf_counter()
        convert(model, work / "hf", float_gguf)
        timings[f"convert_{FLOAT_TYPE}"] = round(time.perf_counter() - start, 1)
        shutil.rmtree(work / "hf")
        log(model.name, f"{float_gguf.name}: {gb(float_gguf.stat().st_size)} in {timings[f'convert_{FLOAT_TYPE}']} s")
        for ftype in todo:
            dst = out / file_name(model, ftype)
            partial = work / dst.name
            start = time.perf_counter()
            quantize(model, float_gguf, partial, ftype, args.threads)
            seconds = time.perf_counter() - start
            partial.replace(dst)
            record["files"][dst.name] = file_record(dst, ftype, None, seconds)
            save_manifest(out, manifest)
            log(model.name, f"{dst.name}: {gb(dst.stat().st_size)} in {seconds:.0f} s")
        shutil.rmtree(work)
        if not any(work.parent.iterdir()):
            work.parent.rmdir()
    for ftype in types:
        path = out / file_name(model, ftype)
        record["files"][path.name] = file_record(path, ftype, record["files"].get(path.name), None)
        if args.check:
            log(model.name, f"{path.name}: running it in llama.cpp and pellucid ({SMOKE_TOKENS} tokens)")
            result = record["files"][path.name]["check"] = check(path, args.threads)
            log(
                model.name,
                f"{path.name}: llama.cpp {result['llama.cpp']['text']!r}, pellucid "
                f"{result['pellucid']['text']!r} (same ids: {result['same_ids']})",
            )
        save_manifest(out, manifest)


def parameter_count(model: BenchModel) -> int:
    return sum(math.prod(s) for s in parameter_shapes(hf_config(model)).values())


def parse_types(names: list[str] | None) -> list[str] | None:
    """--types, checked against llama.cpp's file types (gguf-py's LlamaFileType: MOSTLY_Q4_K_M, ...)."""
    if names is None:
        return None
    import gguf

    known = sorted(t.name.removeprefix("MOSTLY_") for t in gguf.LlamaFileType if t.name.startswith("MOSTLY_"))
    types = [n.upper() for n in names]
    if bad := [t for t in types if t not in known]:
        raise SystemExit(f"unknown type {', '.join(bad)}: llama.cpp's types are {', '.join(known)}")
    return types


def main() -> None:
    if sys.argv[1:2] == ["_quantize"]:
        return quantize_main(*sys.argv[2:])
    if sys.argv[1:2] == ["_check"]:
        return check_main(*sys.argv[2:])
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, default=default_out(), help="default: $PELLUCID_HOME/bench-models")
    parser.add_argument("--only", nargs="+", choices=list(MODELS), help="these models (default: all)")
    parser.add_argument("--types", nargs="+", help="llama.cpp quant types (default: each model's own list)")
    parser.add_argument("--force", action="store_true", help="rebuild files that exist")
    parser.add_argument(
        "--check", action="store_true", help=f"run each file in llama.cpp and pellucid ({SMOKE_TOKENS} tokens)"
    )
    parser.add_argument("--threads", type=int, default=os.cpu_count(), help="quantizer threads (default: all CPUs)")
    args = parser.parse_args()
    types = parse_types(args.types)
    out = args.out.expanduser().resolve()
    if REPO in out.parents or out == REPO:
        raise SystemExit(f"--out {out} is inside the repository; the models are GBs: put them elsewhere")
    out.mkdir(parents=True, exist_ok=True)
    manifest = load_manifest(out)
    manifest["made_by"] = "benchmarks/make_models.py"
    manifest["versions"] = versions()
    for name in args.only or MODELS:
        model = MODELS[name]
        build_model(model, types or list(model.types), out, args, manifest)
    for name in args.only or MODELS:
        for fname, rec in manifest["models"][name]["files"].items():
            if (out / fname).is_file():
                print(f"{out / fname}  {gb(rec['bytes'])}  sha256 {rec['sha256']}")
    print(f"manifest: {out / 'manifest.json'}")


if __name__ == "__main__":
    main()
