"""Regenerate the zoo fixtures: tiny random-weight models of ten dense families, converted, quantized and run by
llama.cpp, with transformers as a cross-check. See tests/zoo/README.md for what each file holds.

    /work/main/.venv/bin/python tests/zoo/make_fixtures.py              # every family
    /work/main/.venv/bin/python tests/zoo/make_fixtures.py gemma2 phi3  # some

Two Python environments take part, because llama-cpp-python's venv has no torch and pellucid's has no llama.cpp:
- this script runs in one with torch, transformers, safetensors, tokenizers, numpy, gguf and sentencepiece
  (pellucid's dev venv plus `pip install sentencepiece`); it builds the HF folders (tests/zoo/specs.py), runs
  llama.cpp's converter `convert_hf_to_gguf.py` in a subprocess (`make_fixtures.py convert ...`, with the
  converter's own gguf-py first on sys.path) and computes the transformers references;
- `LLAMACPP_PYTHON` (default /work/llcpp/venv/bin/python, llama-cpp-python 0.3.36 built from source) runs
  `make_fixtures.py llamacpp JOB`: llama.cpp's quantizer and llama.cpp's forward passes.
`LLAMACPP_DIR` is the llama.cpp source tree the converter comes from (llama-cpp-python 0.3.36's vendor/llama.cpp).

The converter recognizes a tokenizer's pre-tokenizer by hashing its output, which a tiny vocabulary never
matches; the `convert` step therefore replaces `TextModel.get_vocab_base_pre` (in this process only, llama.cpp's
files are not touched) by one returning the real family's name (`Tokenizer.gguf_pre` in specs.py).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
LLAMACPP_DIR = Path(os.environ.get("LLAMACPP_DIR", "/work/llcpp/llama_cpp_python-0.3.36/vendor/llama.cpp"))
LLAMACPP_PYTHON = os.environ.get("LLAMACPP_PYTHON", "/work/llcpp/venv/bin/python")

N_CTX = 256  # llama.cpp pads n_ctx to a multiple of 256 anyway
N_CTX_LONG = 512  # Phi-3 only: a context above original_max_position_embeddings, so llama.cpp uses the long factors
# Llama 4 only: a sequence past llama.cpp's hard-coded chunk of 8192, where its chunked layers restart and the
# RoPE-free layer's temperature first moves (position 8191); logits kept for positions CHUNK_KEPT only
CHUNK_TOKENS = 8192 + 64
N_CTX_CHUNKS = 8448  # a multiple of 256 above CHUNK_TOKENS
CHUNK_KEPT = (8192 - 32, 8192 + 64)
N_THREADS = 2
N_PREDICT = 32
GGUF_FILES = ("tiny-f32", "tiny-f16", "tiny-q8_0", "kquant-q4_k_m")
# The perplexity text of each quantized file is sampled from the HF model it was quantized from (transformers,
# float32, temperature 1): text the model predicts moderately well, unlike English, which a random model does not.
QUANTIZED_FROM = {"tiny-q8_0": "tiny", "kquant-q4_k_m": "kquant"}
PPL_PROMPT = "The"
PPL_TOKENS = 128  # the whole window: the prompt's ids (BOS included when the model adds one), then sampled tokens
SAMPLE_SEED = 0
GELU_CHECK = "tiny-f32 max rel diff vs transformers with llama.cpp's fp16-table GELU"
PPL_DEFINITION = (
    "one window holding the whole text (the prompt's ids, then the sampled ones), teacher-forced; "
    "nll[i] = -log softmax(logits[i])[ids[i+1]] for i = 0..n-2, in float64 from llama.cpp's float32 logits; "
    "ppl = exp(mean(nll)), i.e. exp(mean NLL of tokens 2..n) (llama-perplexity scores only the second half of "
    "each n_ctx chunk; this scores every token of one chunk)"
)

# Config changes that turn each family's distinctive feature off: the transformers logits must move when they are
# applied, or the fixture would not exercise the feature (reported as "feature effect" in the table).
FEATURE_OFF = {
    "llama": ("llama3 RoPE scaling", {"rope_parameters": {"rope_type": "default", "rope_theta": 500000.0}}),
    "mistral": ("rope_theta 1e6 -> 1e4", {"rope_parameters": {"rope_type": "default", "rope_theta": 10000.0}}),
    "qwen2": ("q/k/v biases", "zero_biases"),
    "qwen3": ("QK-norm weights", "unit_qk_norm"),
    "gemma2": ("soft-caps", {"attn_logit_softcapping": None, "final_logit_softcapping": None}),
    "gemma3": ("sliding window", {"sliding_window": 4096}),
    "phi3": ("LongRoPE short factors", "default_rope"),
    "olmo2": ("QK-norm weights", "unit_qk_norm"),
    "smollm3": ("no-RoPE layer", {"no_rope_layers": [1, 1, 1, 1]}),
    "granite": (
        "multipliers",
        {"embedding_multiplier": 1.0, "residual_multiplier": 1.0, "logits_scaling": 1.0, "attention_multiplier": 0.25},
    ),
    "deepseek2": (
        "YaRN (frequencies and mscale)",
        {"rope_parameters": {"rope_type": "default", "rope_theta": 10000.0}},
    ),
    "qwen3moe": ("routing: top-2 -> top-1", {"num_experts_per_tok": 1}),
    "qwen2moe": ("shared expert gate", "open_shared_gate"),
    "gpt_oss": ("attention sinks", "no_sinks"),
    "llama4": ("QK norm", {"use_qk_norm": False}),
    "deepseek2moe": ("selection-only router bias", "zero_score_bias"),
}
# More features of one family, each turned off alone: (name, overrides), recorded as "feature effect (... off)" too
MORE_FEATURES_OFF = {
    "gpt_oss": [
        ("SwiGLU clamp", {"swiglu_limit": 1e9}),
        ("YaRN", {"rope_parameters": {"rope_type": "default", "rope_theta": 150000.0}}),
        ("router and expert biases", "zero_moe_biases"),
    ],
}


def gguf_files(name: str) -> tuple[str, ...]:
    """The GGUF files of one family: every family's four, then its extra quantized ones (specs.Family.quantized)."""
    import specs

    return (*GGUF_FILES, *(key for key, _, _ in specs.FAMILIES[name].quantized))


def quantized_from(name: str) -> dict[str, str]:
    """Each quantized file of one family -> the variant (HF folder) it was quantized from."""
    import specs

    return {**QUANTIZED_FROM, **{key: variant for key, variant, _ in specs.FAMILIES[name].quantized}}


# -- subprocess 1: llama.cpp's converter ------------------------------------------------------------------------------


def convert_main(pre: str, hf_dir: str, outtype: str, outfile: str, model_name: str) -> None:
    """Run convert_hf_to_gguf.py with the pre-tokenizer name forced (runs in its own process)."""
    sys.path[:0] = [str(LLAMACPP_DIR / "gguf-py"), str(LLAMACPP_DIR)]
    from conversion.base import TextModel

    TextModel.get_vocab_base_pre = lambda self, tokenizer: pre
    import convert_hf_to_gguf

    sys.argv = ["convert_hf_to_gguf.py", "--outtype", outtype, "--outfile", outfile, "--model-name", model_name, hf_dir]
    convert_hf_to_gguf.main()


# -- subprocess 2: llama.cpp's quantizer and forward passes (llama-cpp-python's venv: numpy, no torch) ----------------


def llamacpp_main(job_path: str) -> None:
    import ctypes

    import llama_cpp

    job = json.loads(Path(job_path).read_text())
    for src, dst, ftype in job["quantize"]:
        params = llama_cpp.llama_model_quantize_default_params()
        params.ftype = getattr(llama_cpp, f"LLAMA_FTYPE_{'ALL' if ftype == 'F32' else 'MOSTLY'}_{ftype}")
        params.allow_requantize = ftype == "F32"  # F32 from a quantized file: llama.cpp's own dequantization
        params.nthread = N_THREADS
        if llama_cpp.llama_model_quantize(src.encode(), dst.encode(), ctypes.byref(params)) != 0:
            raise RuntimeError(f"llama.cpp could not quantize {src} to {ftype}")
    arrays, results = {}, {"llama_cpp_python": llama_cpp.__version__}
    for run in job["runs"]:
        llm = llama_cpp.Llama(
            run["gguf"],
            n_ctx=run["n_ctx"],
            n_batch=512,
            n_threads=N_THREADS,
            n_threads_batch=N_THREADS,
            logits_all=True,
            flash_attn=False,
            swa_full=True,
            type_k=0,  # GGML_TYPE_F32: no f16 rounding in the KV cache
            type_v=0,
            seed=0,
            verbose=False,
        )
        key = run["key"]
        out = results[key] = {"n_ctx": llm.n_ctx(), "n_vocab": llm.n_vocab()}
        out["tokenize"] = [llm.tokenize(t.encode(), add_bos=True, special=True) for t in run.get("texts", [])]
        for i, ids in enumerate(run.get("prompts", [])):
            llm.reset()
            llm.eval(ids)
            start, end = run.get("kept", (0, len(ids)))
            arrays[f"{key}.logits.{i}"] = np.array(llm.scores[start:end], dtype=np.float32)
            greedy = []
            for _ in range(run.get("n_predict", 0)):  # argmax at temperature 0, EOS does not stop it
                greedy.append(int(np.argmax(llm.scores[llm.n_tokens - 1])))
                llm.eval([greedy[-1]])
            out.setdefault("greedy", []).append(greedy)
        if ppl_ids := run.get("ppl_ids"):
            llm.reset()
            llm.eval(ppl_ids)
            arrays[f"{key}.ppl_logits"] = np.array(llm.scores[: len(ppl_ids)], dtype=np.float32)
        del llm
    np.savez(job["arrays"], **arrays)
    Path(job["results"]).write_text(json.dumps(results))


# -- the main process -------------------------------------------------------------------------------------------------


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def run_converter(pre: str, hf_dir: Path, outtype: str, outfile: Path, model_name: str) -> None:
    env = {k: v for k, v in os.environ.items() if k != "NO_LOCAL_GGUF"}  # the converter must use its own gguf-py
    cmd = [sys.executable, __file__, "convert", pre, str(hf_dir), outtype, str(outfile), model_name]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True)
    if proc.returncode != 0:
        raise RuntimeError(f"convert_hf_to_gguf failed on {hf_dir}:\n{proc.stderr[-4000:]}")


def run_llamacpp(job: dict, workdir: Path) -> tuple[dict, dict]:
    job = dict(job, arrays=str(workdir / "llamacpp.npz"), results=str(workdir / "llamacpp.json"))
    (workdir / "job.json").write_text(json.dumps(job))
    proc = subprocess.run(
        [LLAMACPP_PYTHON, __file__, "llamacpp", str(workdir / "job.json")], capture_output=True, text=True
    )
    if proc.returncode != 0:
        raise RuntimeError(f"llama.cpp step failed:\n{proc.stderr[-4000:]}")
    with np.load(workdir / "llamacpp.npz") as z:
        arrays = {k: z[k] for k in z.files}
    return json.loads((workdir / "llamacpp.json").read_text()), arrays


def load_hf(folder: Path, overrides: dict | str | None = None, family: str | None = None):
    """The HF folder as a float32 transformers model (eager attention), optionally with a feature turned off; with
    `family`, as llama.cpp runs the converted file (the family's `llamacpp_config` applied first)."""
    import specs
    import torch
    import transformers

    config = transformers.AutoConfig.from_pretrained(folder)
    for k, v in (specs.FAMILIES[family].llamacpp_config if family else {}).items():
        setattr(config, k, v)
    if isinstance(overrides, dict):
        for k, v in overrides.items():
            setattr(config, k, v)
    model = transformers.AutoModelForCausalLM.from_pretrained(
        folder, config=config, dtype=torch.float32, attn_implementation="eager"
    ).eval()
    if overrides == "zero_biases":
        with torch.no_grad():
            for name, p in model.named_parameters():
                if name.endswith(".bias"):
                    p.zero_()
    elif overrides == "unit_qk_norm":
        with torch.no_grad():
            for name, p in model.named_parameters():
                if name.endswith(("q_norm.weight", "k_norm.weight")):
                    p.fill_(1.0)
    elif overrides == "no_sinks":  # a sink of -inf takes no share of the softmax
        with torch.no_grad():
            for name, p in model.named_parameters():
                if name.endswith("self_attn.sinks"):
                    p.fill_(float("-inf"))
    elif overrides == "zero_moe_biases":
        with torch.no_grad():
            for name, p in model.named_parameters():
                if name.endswith(("router.bias", "_proj_bias")):
                    p.zero_()
    elif overrides == "open_shared_gate":  # sigmoid(0) = 1/2 for every token instead of the learned gate
        with torch.no_grad():
            for name, p in model.named_parameters():
                if name.endswith("shared_expert_gate.weight"):
                    p.zero_()
    elif overrides == "zero_score_bias":  # DeepSeek V3: choose experts by the unbiased sigmoid scores
        with torch.no_grad():
            for name, b in model.named_buffers():
                if name.endswith("e_score_correction_bias"):
                    b.zero_()
    elif overrides == "default_rope":
        set_rope_factors(model, "none")
    return model


def set_rope_factors(model, which: str) -> None:
    """Phi-3: make transformers use the LongRoPE long factors (or no factors) at every sequence length."""
    import torch
    from transformers.modeling_rope_utils import ROPE_INIT_FUNCTIONS

    rotary = model.model.rotary_emb
    config = model.config
    original = config.rope_parameters["original_max_position_embeddings"]
    if which == "long":
        inv_freq, _ = ROPE_INIT_FUNCTIONS["longrope"](config, "cpu", seq_len=original + 1)
    else:
        inv_freq, _ = ROPE_INIT_FUNCTIONS["longrope"](config, "cpu", seq_len=None)
        n = inv_freq.shape[0]
        factors = torch.tensor(config.rope_parameters["short_factor"], dtype=torch.float32)[:n]
        inv_freq = inv_freq * factors
    rotary.original_inv_freq = inv_freq
    rotary.inv_freq.copy_(inv_freq)


def hf_logits(model, ids: list[int]) -> np.ndarray:
    import torch

    with torch.no_grad():
        return model(torch.tensor([ids])).logits[0].float().numpy()


def hf_greedy(model, ids: list[int], n: int) -> list[int]:
    out = list(ids)
    for _ in range(n):
        out.append(int(np.argmax(hf_logits(model, out)[-1])))
    return out[len(ids) :]


def rel_diff(a: np.ndarray, b: np.ndarray) -> float:
    """max |a - b| / max |b|: b is the reference."""
    return float(np.abs(a - b).max() / np.abs(b).max())


def margins(logits: np.ndarray) -> np.ndarray:
    top2 = np.sort(logits, axis=-1)[:, -2:]
    return top2[:, 1] - top2[:, 0]


def nll(logits: np.ndarray, ids: list[int]) -> np.ndarray:
    x = logits[:-1].astype(np.float64)
    x = x - x.max(axis=-1, keepdims=True)
    logp = x - np.log(np.exp(x).sum(axis=-1, keepdims=True))
    return -logp[np.arange(len(ids) - 1), ids[1:]]


def perplexity_record(logits: np.ndarray, token_nll: np.ndarray) -> dict:
    return {
        "argmax": [int(i) for i in logits.argmax(-1)],
        "nll": [round(float(x), 6) for x in token_nll],
        "mean_nll": float(token_nll.mean()),
        "ppl": float(np.exp(token_nll.mean())),
    }


def gguf_metadata(path: Path) -> dict:
    """Scalar metadata (arrays summarized) and tensor names/types of a GGUF file, read with gguf-py."""
    sys.path.insert(0, str(LLAMACPP_DIR / "gguf-py"))
    import gguf

    reader = gguf.GGUFReader(path)
    meta = {}
    for name, fld in reader.fields.items():
        if name.startswith("GGUF.") or name in ("tokenizer.ggml.tokens", "tokenizer.ggml.merges"):
            continue
        if name in ("tokenizer.ggml.token_type", "tokenizer.ggml.scores"):
            meta[name] = f"array[{len(fld.data)}]"
            continue
        value = fld.contents()
        if isinstance(value, list) and len(value) > 16:
            value = f"array[{len(value)}]"
        if name == "tokenizer.chat_template":
            value = f"{len(value)} chars"
        meta[name] = value
    tensors = {t.name: t.tensor_type.name for t in reader.tensors}
    return {"metadata": meta, "tensors": tensors}


def make_family(name: str, out_dir: Path | None) -> dict:
    """Build, convert, quantize and run one family; write its fixture folder and return its reference.json, or
    (out_dir None) only return the references computed, checks included."""
    import specs

    tok = specs.FAMILIES[name].tokenizer
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        hf = {v: specs.build_hf_folder(name, tmp / f"zoo-{name}-{v}", v) for v in specs.VARIANTS}
        ggufs = {key: tmp / f"{key}.gguf" for key in gguf_files(name)}
        kquant_f32 = tmp / "kquant-f32.gguf"
        for folder, outtype, out in ((hf["tiny"], "f32", ggufs["tiny-f32"]), (hf["tiny"], "f16", ggufs["tiny-f16"]),
                                     (hf["kquant"], "f32", kquant_f32)):  # fmt: skip
            run_converter(tok.gguf_pre, folder, outtype, out, folder.name)
        texts = [tok.chat_prompt, *specs.PROMPT_TEXTS]
        prompts = [specs.encode(hf["tiny"], t) for t in texts]
        samples = {variant: sample_text(hf[variant], variant, name) for variant in set(quantized_from(name).values())}
        ppl_texts = {key: samples[variant] for key, variant in quantized_from(name).items()}
        lc, arrays = run_llamacpp(llamacpp_job(name, ggufs, kquant_f32, texts, prompts, ppl_texts), tmp)
        reference = compare_with_transformers(name, hf, prompts, ppl_texts, lc, arrays)
        reference["prompts"] = [
            {"text": t, "ids": ids, "llamacpp_tokenize": lc["tiny-f32"]["tokenize"][i]}
            for i, (t, ids) in enumerate(zip(texts, prompts))
        ]
        if out_dir is None:
            return reference
        return write_fixture(name, out_dir, hf, ggufs, lc, arrays, reference)


def sample_text(folder: Path, variant: str, name: str) -> dict:
    """The perplexity text of one quantized file: PPL_PROMPT continued by its source model (transformers, float32),
    sampled at temperature 1, one numpy default_rng(SAMPLE_SEED) uniform per token (inverse CDF, float64)."""
    import specs
    from tokenizers import Tokenizer

    model = load_hf(folder, family=name)
    rng = np.random.default_rng(SAMPLE_SEED)
    ids = specs.encode(folder, PPL_PROMPT)
    n_prompt = len(ids)
    while len(ids) < PPL_TOKENS:
        logits = hf_logits(model, ids)[-1].astype(np.float64)
        cdf = np.cumsum(np.exp(logits - logits.max()))
        ids.append(int(min(np.searchsorted(cdf, rng.random() * cdf[-1], side="right"), cdf.size - 1)))
    text = Tokenizer.from_file(str(folder / "tokenizer.json")).decode(ids, skip_special_tokens=False)
    return {
        "prompt": PPL_PROMPT,
        "sampling": f"ids[{n_prompt}:] sampled from the {variant} HF folder (transformers, float32) at temperature 1, "
        f"one numpy default_rng({SAMPLE_SEED}).random() per token against the softmax's cumulative sum",
        "text": text,
        "ids": ids,
    }


def llamacpp_job(name: str, ggufs: dict, kquant_f32: Path, texts, prompts, ppl_texts: dict) -> dict:
    """What llamacpp_main quantizes and runs for one family."""
    import specs

    quantized = quantized_from(name)
    dequantized = {k: ggufs[k].with_name(f"{k}-dequantized-f32.gguf") for k in ("tiny-f16", *quantized)}
    quantize = [
        (str(ggufs["tiny-f32"]), str(ggufs["tiny-q8_0"]), "Q8_0"),
        (str(kquant_f32), str(ggufs["kquant-q4_k_m"]), "Q4_K_M"),
        *(
            (str(ggufs["tiny-f32" if v == "tiny" else v]), str(ggufs[k]), ftype)
            for k, v, ftype in specs.FAMILIES[name].quantized
        ),
        *((str(ggufs[k]), str(p), "F32") for k, p in dequantized.items()),
    ]
    runs = [
        dict(key=k, gguf=str(ggufs[k]), n_ctx=N_CTX, texts=texts, prompts=prompts, n_predict=N_PREDICT)
        for k in ("tiny-f32", "tiny-f16")
    ]
    runs += [dict(key=k, gguf=str(ggufs[k]), n_ctx=N_CTX, ppl_ids=ppl_texts[k]["ids"]) for k in quantized]
    runs += [
        dict(key=f"{k}-dequantized", gguf=str(dequantized[k]), n_ctx=N_CTX, ppl_ids=ppl_texts[k]["ids"])
        for k in quantized
    ]
    runs.append(dict(key="tiny-f16-dequantized", gguf=str(dequantized["tiny-f16"]), n_ctx=N_CTX, prompts=prompts))
    if name == "phi3":
        runs.append(dict(key="tiny-f32-long", gguf=str(ggufs["tiny-f32"]), n_ctx=N_CTX_LONG, prompts=prompts))
    if name == "llama4":
        ids = chunk_text(ppl_texts["tiny-q8_0"]["ids"])
        runs.append(dict(key="tiny-f32-chunks", gguf=str(ggufs["tiny-f32"]), n_ctx=N_CTX_CHUNKS, prompts=[ids],
                         kept=CHUNK_KEPT))  # fmt: skip
    return {"quantize": quantize, "runs": runs}


def chunk_text(ppl_ids: list[int]) -> list[int]:
    """Llama 4's long sequence: the tiny-q8_0 perplexity text after its first token (BOS), repeated after one BOS."""
    return (ppl_ids[:1] + ppl_ids[1:] * (CHUNK_TOKENS // (len(ppl_ids) - 1) + 1))[:CHUNK_TOKENS]


def compare_with_transformers(name: str, hf: dict, prompts, ppl_texts: dict, lc: dict, arrays: dict) -> dict:
    """The references that need transformers: the checks of the table, the perplexity records, num_parameters."""
    import specs

    tiny, kquant = load_hf(hf["tiny"], family=name), load_hf(hf["kquant"], family=name)
    hf_prompt_logits = [hf_logits(tiny, ids) for ids in prompts]
    greedy_hf = [hf_greedy(tiny, ids, N_PREDICT) for ids in prompts]
    checks: dict = {}
    for key in ("tiny-f32", "tiny-f16"):
        lc_logits = [arrays[f"{key}.logits.{i}"] for i in range(len(prompts))]
        checks[f"{key} max rel diff vs transformers"] = max(map(rel_diff, lc_logits, hf_prompt_logits))
        checks[f"{key} greedy == transformers"] = sum(g == h for g, h in zip(lc[key]["greedy"], greedy_hf))
    m = np.concatenate([margins(x) for x in hf_prompt_logits])
    checks["margin min/median/mean"] = [float(m.min()), float(np.median(m)), float(m.mean())]
    checks["positions with margin < 0.1"] = int((m < 0.1).sum())
    checks["near ties: [prompt, position, margin] where margin < 0.1"] = [
        [i, int(pos), round(float(margins(x)[pos]), 4)]
        for i, x in enumerate(hf_prompt_logits)
        for pos in np.flatnonzero(margins(x) < 0.1)
    ]
    checks["positions"] = int(m.size)
    f32, f16 = ([arrays[f"{key}.logits.{i}"] for i in range(len(prompts))] for key in ("tiny-f32", "tiny-f16"))
    checks["tiny-f16 max rel diff vs tiny-f32 (both llama.cpp)"] = max(map(rel_diff, f16, f32))
    f16_copy = [arrays[f"tiny-f16-dequantized.logits.{i}"] for i in range(len(prompts))]
    checks["tiny-f16 max rel diff vs llama.cpp on its dequantized f32 copy"] = max(map(rel_diff, f16, f16_copy))
    ppl = {"definition": PPL_DEFINITION}
    for key, variant in quantized_from(name).items():
        model = {"tiny": tiny, "kquant": kquant}[variant]
        ids = ppl_texts[key]["ids"]
        ppl[key] = {**ppl_texts[key], **quantized_checks(key, hf_logits(model, ids), ids, arrays, checks)}
    feature, off = FEATURE_OFF[name]
    off_logits = [hf_logits(load_hf(hf["tiny"], off, name), ids) for ids in prompts]
    checks[f"feature effect ({feature} off): rel change"] = max(map(rel_diff, off_logits, hf_prompt_logits))
    for feature, off in MORE_FEATURES_OFF.get(name, []):
        off_logits = [hf_logits(load_hf(hf["tiny"], off, name), ids) for ids in prompts]
        checks[f"more: feature effect ({feature} off): rel change"] = max(map(rel_diff, off_logits, hf_prompt_logits))
    if getattr(tiny.config, "num_experts", None) or getattr(tiny.config, "num_local_experts", None):
        for key, model in (("tiny", tiny), ("kquant", kquant)):
            texts = [*prompts, ppl_texts["tiny-q8_0"]["ids"]] if key == "tiny" else [ppl_texts["kquant-q4_k_m"]["ids"]]
            checks[f"{key} routing margin min/median (router logit k-th - (k+1)-th, every layer and position)"] = (
                routing_margins(model, texts)
            )
    if getattr(tiny.config, "n_group", None) and getattr(tiny.config, "first_k_dense_replace", 0) < len(
        tiny.model.layers
    ):
        for key, model in (("tiny", tiny), ("kquant", kquant)):
            texts = [*prompts, ppl_texts["tiny-q8_0"]["ids"]] if key == "tiny" else [ppl_texts["kquant-q4_k_m"]["ids"]]
            checks.update({f"{key} {k}": v for k, v in deepseek_routing_checks(model, texts).items()})
    reference = {
        "hf": {v: {"num_parameters": int(m.num_parameters())} for v, m in (("tiny", tiny), ("kquant", kquant))},
        "perplexity": ppl,
        "checks": checks,
    }
    lc_logits = [arrays[f"tiny-f32.logits.{i}"] for i in range(len(prompts))]
    if name.startswith("gemma"):
        specs.use_llamacpp_gelu(tiny)
        emulated = [hf_logits(tiny, ids) for ids in prompts]
        checks[GELU_CHECK] = max(map(rel_diff, lc_logits, emulated))
    if name == "gemma2":
        checks["final logits above the cap before capping"] = final_logits_above_cap(load_hf(hf["tiny"]), prompts[2])
        attn_cap_off = load_hf(hf["tiny"], {"attn_logit_softcapping": None})
        checks["feature (attention soft-cap alone) off: rel change"] = max(
            rel_diff(hf_logits(attn_cap_off, ids), ref) for ids, ref in zip(prompts, hf_prompt_logits)
        )
    if name == "gpt_oss":  # llama.cpp rounds YaRN's ramp ends whatever truncate says: transformers made to round too
        rope = dict(tiny.config.rope_parameters, truncate=True)
        rounded = [hf_logits(load_hf(hf["tiny"], {"rope_parameters": rope}), ids) for ids in prompts]
        checks["tiny-f32 max rel diff vs transformers with truncate=true"] = max(map(rel_diff, lc_logits, rounded))
        checks["tiny gate values clamped (> 7), share"] = clamped_share(tiny, [*prompts, ppl_texts["tiny-q8_0"]["ids"]])
    if name == "llama4":
        checks.update(llama4_checks(hf["tiny"], prompts, hf_prompt_logits))
    if name == "phi3":
        set_rope_factors(tiny, "long")
        long_hf = [hf_logits(tiny, ids) for ids in prompts]
        long_lc = [arrays[f"tiny-f32-long.logits.{i}"] for i in range(len(prompts))]
        checks["tiny-f32 long factors (n_ctx 512) max rel diff vs transformers forced long"] = max(
            map(rel_diff, long_lc, long_hf)
        )
        checks["tiny-f32 long vs short factors: rel change"] = max(map(rel_diff, long_lc, lc_logits))
        reference["tiny-f32-long-factors"] = {
            "n_ctx": lc["tiny-f32-long"]["n_ctx"],
            "logits": "reference.npz: tiny-f32-long.logits.<prompt>",
            "factors": "long: llama.cpp's n_ctx > phi3.rope.scaling.original_context_length; every other run "
            f"here (n_ctx {N_CTX}, not above it) used the short factors, as transformers does below that length",
        }
    return reference


def llama4_checks(folder: Path, prompts, as_llamacpp: list) -> dict:
    """How far the folder's own chunk (8) and temperature (floor_scale 4, attn_scale 0.5), which
    tests/test_model_zoo.py checks against transformers, move the logits from llama.cpp's constants."""
    import specs

    lc_config = specs.FAMILIES["llama4"].llamacpp_config
    own = load_hf(folder)
    chunk_only = load_hf(folder, {k: v for k, v in lc_config.items() if k != "attention_chunk_size"})
    temperature_only = load_hf(folder, {"attention_chunk_size": lc_config["attention_chunk_size"]})
    change = {
        "folder's chunk and temperature": own,
        "folder's chunk alone": chunk_only,
        "folder's temperature alone": temperature_only,
    }
    return {
        f"transformers with the {what} vs with llama.cpp's constants: rel change": max(
            rel_diff(hf_logits(model, ids), ref) for ids, ref in zip(prompts, as_llamacpp)
        )
        for what, model in change.items()
    }


def routing_margins(model, texts) -> list[float]:
    """How far each token's k-th chosen expert is from the first one left out (router logits, transformers): small
    gaps would make a comparison of engines test their tie-breaking and rounding, not the model."""

    k, gaps = model.config.num_experts_per_tok, []

    def record(module, inputs, output):
        logits = output[1] if type(module).__name__ == "Llama4Router" else output[0]  # Llama 4: (scores, logits)
        top = logits.float().topk(k + 1, dim=-1).values
        gaps.append((top[:, k - 1] - top[:, k]).numpy())

    routers = ("TopKRouter", "Llama4Router")
    hooks = [m.register_forward_hook(record) for m in model.modules() if type(m).__name__.endswith(routers)]
    for ids in texts:
        hf_logits(model, ids)
    for h in hooks:
        h.remove()
    gaps = np.concatenate(gaps)
    return [round(float(gaps.min()), 4), round(float(np.median(gaps)), 4)]


def clamped_share(model, texts) -> float:
    """GPT-OSS: the share of the chosen experts' gate values above swiglu_limit (where the clamp bites)."""
    limit, seen = model.config.swiglu_limit, []
    experts = [m for m in model.modules() if type(m).__name__ == "GptOssExperts"]
    originals = [m._apply_gate for m in experts]
    for m, original in zip(experts, originals):
        m._apply_gate = lambda gate_up, original=original: (
            seen.append(gate_up[..., ::2].flatten()),
            original(gate_up),
        )[1]
    for ids in texts:
        hf_logits(model, ids)
    for m, original in zip(experts, originals):
        m._apply_gate = original
    values = np.concatenate([v.numpy() for v in seen])
    return round(float((values > limit).mean()), 4)


def deepseek_routing_checks(model, texts) -> dict:
    """DeepSeek V3's routing (sigmoid scores + selection bias, best groups, top-k within them), measured on the
    router's logits (transformers): how far each choice is from a tie, for groups (the last kept group's score
    - the first dropped one's) and experts (the k-th chosen biased score - the first left out, within the kept
    groups), and how many choices the bias and the groups change, which they must for the fixture to test them."""
    import torch

    gaps, changed = {"group": [], "expert": []}, {"bias": [], "groups": []}

    def choose(select, router, grouped=True):
        n, e = select.shape
        if grouped:
            groups = select.view(n, router.num_group, e // router.num_group)
            keep = groups.topk(2, dim=-1).values.sum(-1).topk(router.topk_group, dim=-1).indices
            mask = torch.zeros(n, router.num_group, dtype=torch.bool).scatter_(1, keep, True)
            select = groups.masked_fill(~mask.unsqueeze(-1), float("-inf")).view(n, e)
        return select.topk(router.top_k, dim=-1).indices.sort(-1).values

    def record(router, inputs, output):
        scores = output[0].float().sigmoid()
        select = scores + router.e_score_correction_bias
        n, e = select.shape
        group_scores = select.view(n, router.num_group, -1).topk(2, dim=-1).values.sum(-1).sort(-1, True).values
        gaps["group"].append((group_scores[:, router.topk_group - 1] - group_scores[:, router.topk_group]).numpy())
        chosen = choose(select, router)
        top = select.masked_fill(torch.zeros_like(select, dtype=torch.bool).scatter_(1, chosen, True), float("-inf"))
        kept = select.view(n, router.num_group, -1)
        # within the kept groups: the first expert left out
        kept_groups = kept.topk(2, dim=-1).values.sum(-1).topk(router.topk_group, dim=-1).indices
        in_kept = torch.zeros(n, router.num_group, dtype=torch.bool).scatter_(1, kept_groups, True)
        left_out = top.view(n, router.num_group, -1).masked_fill(~in_kept.unsqueeze(-1), float("-inf"))
        kth = select.gather(1, chosen).min(-1).values
        gaps["expert"].append((kth - left_out.view(n, e).max(-1).values).numpy())
        changed["bias"].append((choose(scores, router) != chosen).any(-1).numpy())
        changed["groups"].append((choose(select, router, grouped=False) != chosen).any(-1).numpy())

    hooks = [m.register_forward_hook(record) for m in model.modules() if type(m).__name__.endswith("TopkRouter")]
    for ids in texts:
        hf_logits(model, ids)
    for h in hooks:
        h.remove()
    out = {}
    for what, values in gaps.items():
        values = np.concatenate(values)
        finite = values[np.isfinite(values)]  # kquant: 2 experts per group, top-2: none left out in a kept group
        out[f"routing {what} margin min/median (biased scores, every MoE layer and position)"] = (
            [round(float(finite.min()), 4), round(float(np.median(finite)), 4)] if finite.size else None
        )
    for what, values in changed.items():
        out[f"routing: share of token-layers whose experts change without the {what}"] = round(
            float(np.concatenate(values).mean()), 3
        )
    return out


def quantized_checks(key: str, hf_ppl_logits: np.ndarray, ppl_ids, arrays: dict, checks: dict) -> dict:
    """llama.cpp on a quantized file vs transformers f32 and vs llama.cpp on the file's dequantized f32 copy."""
    lc_logits, dq_logits = arrays[f"{key}.ppl_logits"], arrays[f"{key}-dequantized.ppl_logits"]
    lc_nll, dq_nll, ref_nll = nll(lc_logits, ppl_ids), nll(dq_logits, ppl_ids), nll(hf_ppl_logits, ppl_ids)
    checks[f"{key} top-1 == transformers f32"] = float((lc_logits.argmax(-1) == hf_ppl_logits.argmax(-1)).mean())
    checks[f"{key} ppl / transformers f32 ppl"] = float(np.exp(lc_nll.mean() - ref_nll.mean()))
    checks[f"{key} top-1 == llama.cpp on its dequantized f32 copy"] = float(
        (lc_logits.argmax(-1) == dq_logits.argmax(-1)).mean()
    )
    checks[f"{key} max rel diff vs llama.cpp on its dequantized f32 copy"] = rel_diff(lc_logits, dq_logits)
    checks[f"{key} ppl / dequantized f32 ppl"] = float(np.exp(lc_nll.mean() - dq_nll.mean()))
    checks[f"{key} mean nll - dequantized f32 mean nll"] = float(lc_nll.mean() - dq_nll.mean())
    checks[f"{key} mean nll"] = float(lc_nll.mean())
    return {**perplexity_record(lc_logits, lc_nll), "dequantized_f32": perplexity_record(dq_logits, dq_nll)}


def final_logits_above_cap(model, ids) -> float:
    """Gemma 2: the fraction of logits that the final soft-cap bends, i.e. |logit| > cap before capping."""
    import torch

    with torch.no_grad():
        hidden = model(torch.tensor([ids]), output_hidden_states=True).hidden_states[-1]
        precap = model.lm_head(hidden)[0].numpy()
    return float((np.abs(precap) > model.config.final_logit_softcapping).mean())


def write_fixture(name: str, out_dir: Path, hf: dict, ggufs: dict, lc: dict, arrays: dict, reference: dict) -> dict:
    """tests/zoo/<family>/: the GGUF files, reference.npz (logits) and reference.json (everything else, returned)."""
    import specs
    import tokenizers
    import torch
    import transformers

    family = specs.FAMILIES[name]
    out_dir.mkdir(parents=True, exist_ok=True)
    for key, path in ggufs.items():
        (out_dir / f"{key}.gguf").write_bytes(path.read_bytes())  # (tiny-mxfp4 and other extras included)
    np.savez_compressed(
        out_dir / "reference.npz", **{k: v for k, v in arrays.items() if ".logits." in k and "dequantized" not in k}
    )
    meta = {key: gguf_metadata(path) for key, path in ggufs.items()}
    full = {
        "family": name,
        "gguf_architecture": meta["tiny-f32"]["metadata"]["general.architecture"],
        "versions": {
            "llama_cpp_python": lc["llama_cpp_python"],
            "transformers": transformers.__version__,
            "torch": torch.__version__,
            "tokenizers": tokenizers.__version__,
            "numpy": np.__version__,
        },
        "llamacpp_settings": {
            "n_ctx": N_CTX,
            "n_threads": N_THREADS,
            "n_batch": 512,
            "kv_cache": "f32",
            "flash_attn": False,
            "swa_full": True,
            "logits": "whole prompt in one batch, logits at every position",
            "greedy": f"{N_PREDICT} tokens, argmax of llama.cpp's logits, one token per decode step, EOS does not stop",
        },
        "hf": {
            v: {"files": specs.sha256_files(hf[v]), **reference["hf"][v], "dtype": family.dtype} for v in specs.VARIANTS
        },
        "gguf": {
            f"{key}.gguf": {
                "sha256": sha256(path),
                "bytes": path.stat().st_size,
                "file_type": meta[key]["metadata"]["general.file_type"],
                **({"metadata": meta[key]["metadata"]} if key == "tiny-f32" else {}),
                "tensors": meta[key]["tensors"],
            }
            for key, path in ggufs.items()
        },
        "prompts": reference["prompts"],
        "tiny-f32": {"greedy": lc["tiny-f32"]["greedy"], "logits": "reference.npz: tiny-f32.logits.<prompt>"},
        "tiny-f16": {"greedy": lc["tiny-f16"]["greedy"], "logits": "reference.npz: tiny-f16.logits.<prompt>"},
        "perplexity": reference["perplexity"],
        "checks": reference["checks"],
        "llamacpp_note": family.llamacpp_note,
    }
    if "tiny-f32-long-factors" in reference:
        full["tiny-f32-long-factors"] = reference["tiny-f32-long-factors"]
    if name == "llama4":
        full["tiny-f32-chunks"] = {
            "n_ctx": lc["tiny-f32-chunks"]["n_ctx"],
            "tokens": f"{CHUNK_TOKENS}: make_fixtures.chunk_text(perplexity['tiny-q8_0']['ids'])",
            "kept": list(CHUNK_KEPT),
            "logits": "reference.npz: tiny-f32-chunks.logits.0, positions kept[0] .. kept[1] - 1 of one batch",
            "why": "past llama.cpp's hard-coded chunk of 8192: its chunked layers restart at 8192 and the RoPE-free "
            "layer's temperature turns 1 + 0.1 ln 2 at 8191",
        }
    (out_dir / "reference.json").write_text(to_json(full))
    return full


def to_json(obj) -> str:
    """JSON with one key per line but lists of numbers on one line (token ids, NLLs), so the file stays short."""
    flat = {}

    def collapse(x):
        if isinstance(x, dict):
            return {k: collapse(v) for k, v in x.items()}
        if isinstance(x, list) and x and all(isinstance(v, (int, float)) for v in x):
            key = f"@@{len(flat)}@@"
            flat[key] = json.dumps(x)
            return key
        return [collapse(v) for v in x] if isinstance(x, list) else x

    text = json.dumps(collapse(obj), indent=1, ensure_ascii=False)
    for key, value in flat.items():
        text = text.replace(f'"{key}"', value)
    return text + "\n"


def print_table(references: list[dict]) -> str:
    """The sanity table of tests/zoo/README.md."""
    rows = [
        "| family | f32 vs HF | f16 vs f32 (vs its f32 copy) | greedy = HF | margin min / median (< 0.1) | "
        "q8_0 top-1: deq / HF | q8_0 Δ mean NLL (mean NLL) | q4_k_m top-1: deq / HF | q4_k_m Δ mean NLL (mean NLL) | "
        "feature off: change |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for ref in references:
        c = ref["checks"]
        feature = next(k for k in c if k.startswith("feature effect"))
        f32 = f"{c['tiny-f32 max rel diff vs transformers']:.1e}"
        if GELU_CHECK in c:
            f32 += f" ({c[GELU_CHECK]:.0e})"
        quant = []
        for key in QUANTIZED_FROM:
            quant.append(
                f"{c[f'{key} top-1 == llama.cpp on its dequantized f32 copy']:.0%} / "
                f"{c[f'{key} top-1 == transformers f32']:.0%}"
            )
            quant.append(f"{c[f'{key} mean nll - dequantized f32 mean nll']:+.4f} ({c[f'{key} mean nll']:.2f})")
        margin = c["margin min/median/mean"]
        cells = [
            ref["family"],
            f32,
            f"{c['tiny-f16 max rel diff vs tiny-f32 (both llama.cpp)']:.1e} "
            f"({c['tiny-f16 max rel diff vs llama.cpp on its dequantized f32 copy']:.1e})",
            f"{c['tiny-f32 greedy == transformers']}/3, {c['tiny-f16 greedy == transformers']}/3",
            f"{margin[0]:.2f} / {margin[1]:.2f} ({c['positions with margin < 0.1']})",
            *quant,
            f"{feature.removeprefix('feature effect (').removesuffix(' off): rel change')}: {c[feature]:.2f}",
        ]
        rows.append("| " + " | ".join(cells) + " |")
    table = "\n".join(rows)
    print(table)
    return table


def main() -> None:
    if len(sys.argv) > 1 and sys.argv[1] == "convert":
        return convert_main(*sys.argv[2:])
    if len(sys.argv) > 1 and sys.argv[1] == "llamacpp":
        return llamacpp_main(sys.argv[2])
    import specs
    import torch

    torch.set_num_threads(1)  # the models are tiny: more threads only contend (and CI machines are shared)
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("families", nargs="*", default=list(specs.FAMILIES), help="default: all")
    parser.add_argument("--check", action="store_true", help="compute and print the checks, write nothing")
    args = parser.parse_args()
    checked = []
    for name in args.families:
        print(f"== {name}", flush=True)
        checked.append(make_family(name, None if args.check else HERE / name))
        checked[-1].update(family=name)
        print(json.dumps(checked[-1]["checks"], indent=1), flush=True)
    if args.check:
        print_table(checked)
    else:
        print_table([json.loads(p.read_text()) for n in specs.FAMILIES if (p := HERE / n / "reference.json").is_file()])


if __name__ == "__main__":
    main()
