"""Tiny random-weight Hugging Face folders, one per dense decoder family: the inputs of the llama.cpp oracle fixtures.

`build_hf_folder(name, dest, variant)` writes a complete model folder (config.json, generation_config.json,
tokenizer.json, tokenizer_config.json, tokenizer.model for SentencePiece families, safetensors weights) that
is byte-for-byte the same on any machine: every weight comes from `numpy.random.default_rng(seed)`, every
JSON file is written by this module (sorted keys), and the tokenizers are built here from a fixed corpus
rather than trained by a library. tests/zoo/make_fixtures.py converts these folders with llama.cpp's own
converter and quantizer and records llama.cpp's outputs; reference.json keeps the sha256 of each file so a
test can check that this machine rebuilds the exact folder the GGUF files came from.

Only torch, transformers, numpy, safetensors and tokenizers are needed (no sentencepiece, no llama.cpp):
transformers supplies each family's parameter names and shapes, and the config classes fill in defaults.

Two sizes per family: "tiny" (hidden 32, f32/f16/Q8_0 checks; rows are multiples of 32 for Q8_0) and
"kquant" (hidden and FFN 256, one layer: K-quants need 256-wide rows, for the Q4_K_M check).

Weights are scaled so that the models are well-conditioned (llama.cpp's rounding of activations in its f16 and
quantized runs moves their logits by ~2e-4 (f16) to ~1e-2 (Q8_0, Q8_K) of the largest) and peaked (the
top-1 logit beats the runner-up by 2-4 at most positions, so greedy and top-1 comparisons mean something), and so
that every block matters: see GAINS. Norm weights sit around 1 (around 0 for Gemma, whose norms multiply by 1 + w),
except the post-norms (Gemma, OLMo 2) and the final norm of a tied head.

The tokenizers keep each family's kind (byte-level BPE or SentencePiece BPE), pre-tokenizer regex, special
tokens and chat template, over a tiny vocabulary: printable ASCII plus tab, newline and carriage return, and
N_MERGES merges learned from a fixed corpus.
"""

from __future__ import annotations

import hashlib
import json
import re
import struct
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
TEMPLATES = HERE.parent / "chat_templates" / "llamacpp"  # the real chat templates, vendored from llama.cpp
REPO_TEMPLATES = HERE.parent / "chat_templates"  # tests/chat_templates, already in the repo

# -- the corpus: BPE merges are learned from it, and the prompts are cut from it --------------------------------------

PROMPT_TEXTS = (
    "The quick brown fox.",
    "Once upon a time, a small robot counted the stars: one, two, three, four.",
)
CORPUS_TEXT = (  # merges are learned from it (with the prompts); it is not a prompt
    "A model is a small thing made of numbers. It reads a word, then the next one, and it tries to guess "
    "the word that comes after. When the guess is good, the number we call perplexity is low; when the "
    "model is lost, it is high. We count the stars, the words and the numbers: one, two, three, four."
)
N_MERGES = 32

# Pre-tokenizer regexes as written in the families' tokenizer.json files (Oniguruma syntax).
LLAMA3_REGEX = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+"
    r"|\s+(?!\S)|\s+"
)
QWEN2_REGEX = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"
)
TEKKEN_REGEX = (
    r"[^\r\n\p{L}\p{N}]?[\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}]*[\p{Ll}\p{Lm}\p{Lo}\p{M}]+|[^\r\n\p{L}\p{N}]?"
    r"[\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}]+[\p{Ll}\p{Lm}\p{Lo}\p{M}]*|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n/]*|\s*[\r\n]+"
    r"|\s+(?!\S)|\s+"
)
GPT2_DIGITS = "gpt2+digits"  # StarCoder/Granite: every digit alone, then GPT-2's ByteLevel regex
DEEPSEEK_V3_REGEXES = (  # three Split steps, one after the other (DeepSeek-V3's tokenizer.json)
    r"\p{N}{1,3}",
    "[\u4e00-\u9fa5\u3040-\u309f\u30a0-\u30ff]+",
    r"[!\"#$%&'()*+,\-./:;<=>?@\[\\\]^_`{|}~][A-Za-z]+|[^\r\n\p{L}\p{P}\p{S}]?[\p{L}\p{M}]+"
    r"| ?[\p{P}\p{S}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+",
)


@dataclass(frozen=True)
class Tokenizer:
    """A family's tokenizer, shrunk to a tiny vocabulary but keeping its kind, pre-tokenizer and special tokens."""

    kind: str  # "bpe" (byte-level BPE, tokenizer.json only) or "spm" (SentencePiece BPE: tokenizer.model + .json)
    gguf_pre: str  # the `tokenizer.ggml.pre` name llama.cpp gives the real family (make_fixtures.py forces it)
    bos: str | None
    eos: str
    add_bos: bool
    leading: tuple[str, ...] = ()  # special tokens placed first (ids 0, 1, ...), as the real vocab does
    trailing: tuple[str, ...] = ()  # special tokens appended after the merges
    not_special: tuple[str, ...] = ()  # added tokens the real model does not mark special (<think>, <tool_call>)
    rstrip: tuple[str, ...] = ()  # added tokens that swallow the whitespace after them (Phi-3's role markers)
    pad: str | None = None
    unk: str | None = None
    regex: str | tuple[str, ...] | None = None  # bpe: the Split regex (or several, applied in turn); None for spm
    ignore_merges: bool = False
    dummy_prefix: bool = False  # spm: a space is added before the text (Llama 2 / Phi-3), not for Gemma
    generation_eos: tuple[str, ...] = ()  # generation_config.json eos_token_id (defaults to eos)
    chat_template: str | None = None  # file name under chat_templates/ (or tests/chat_templates/)
    chat_prompt: str = "Hi! Count the stars, please."  # prompt 0: a short turn written with the family's markers
    tokenizer_class: str = "PreTrainedTokenizerFast"


@dataclass(frozen=True)
class Family:
    name: str
    config_class: str  # transformers config class
    model_class: str  # config.json "architectures"
    gguf_arch: str  # general.architecture llama.cpp writes
    tokenizer: Tokenizer
    tiny: dict  # config kwargs of the tiny variant (vocab_size is added from the tokenizer)
    kquant: dict  # config kwargs of the Q4_K_M variant
    seed: int
    dtype: str = "float32"  # dtype of the safetensors weights
    shards: int = 1
    gains: dict = field(default_factory=dict)  # weight-scale overrides, see GAINS
    llamacpp_note: str = ""  # how llama.cpp differs from transformers on this family, if it does
    per_expert: bool = True  # MoE: store one matrix per expert (False: transformers' own stacks, as GPT-OSS ships)
    quantized: tuple = ()  # extra quantized files: (file key, source variant, llama.cpp ftype name)
    # config changes under which transformers computes what llama.cpp computes from the converted file, where
    # llama.cpp ignores the config (Llama 4's chunk and temperature constants); the oracle comparisons apply them
    llamacpp_config: dict = field(default_factory=dict)
    # experts stay 3-D stacks laid out (experts, in, out), as Llama 4's checkpoints keep them, and their init's fan-in
    # is read that way (GPT-OSS's stacks are per_expert=False with the fan-in of the last dim, as its fixture was made)
    expert_stacks: bool = False


COMMON_TINY = dict(
    hidden_size=32,
    intermediate_size=32,
    num_hidden_layers=2,
    num_attention_heads=2,
    num_key_value_heads=1,
    max_position_embeddings=4096,
    rms_norm_eps=1e-6,
)
COMMON_KQUANT = dict(
    hidden_size=256,
    intermediate_size=256,
    num_hidden_layers=1,
    num_attention_heads=4,
    num_key_value_heads=1,
    max_position_embeddings=4096,
    rms_norm_eps=1e-6,
)
# Families with an explicit head_dim use n_heads * head_dim != hidden_size, as Mistral Nemo, Qwen3 and Gemma do.
EXPLICIT_HEAD_DIM = dict(num_attention_heads=4, num_key_value_heads=2, head_dim=16)

LLAMA3_ROPE = {
    "rope_type": "llama3",
    "rope_theta": 500000.0,
    "factor": 8.0,
    "low_freq_factor": 1.0,
    "high_freq_factor": 4.0,
    "original_max_position_embeddings": 64,
}


GEMMA3_ROPE = {
    "sliding_attention": {"rope_type": "default", "rope_theta": 10000.0},
    "full_attention": {"rope_type": "default", "rope_theta": 1000000.0},
}


def _longrope(rotary_dims: int) -> dict:
    """Phi-3 LongRoPE parameters: one short and one long factor per rotary frequency, all different from 1."""
    n = rotary_dims // 2
    return {
        "rope_type": "longrope",
        "rope_theta": 10000.0,
        "partial_rotary_factor": 0.75,
        "short_factor": [round(1.5 + 0.25 * i, 4) for i in range(n)],
        "long_factor": [round(1.5 * 1.6**i, 4) for i in range(n)],
    }


# DeepSeek-V3's attention at tiny sizes: 2 heads of 32 + 16 (values 32), latent 32, low-rank query 32, YaRN x16
# over an original context of 256 (pairs 0-4 of 8 on the ramp). Experts are configured (the converter and
# llama.cpp expect the keys) but never built here: first_k_dense_replace = num_hidden_layers (deepseek2moe has them).
DEEPSEEK_MLA = dict(
    max_position_embeddings=4096,
    rms_norm_eps=1e-6,
    tie_word_embeddings=False,
    n_routed_experts=4,
    num_experts_per_tok=2,
    n_group=1,
    topk_group=1,
    n_shared_experts=1,
    rope_interleave=True,
    rope_parameters={
        "rope_type": "yarn",
        "rope_theta": 10000.0,
        "factor": 16.0,
        "original_max_position_embeddings": 256,
        "beta_fast": 32.0,
        "beta_slow": 1.0,
        "mscale": 1.0,
        "mscale_all_dim": 1.0,
    },
)
DEEPSEEK_TINY = dict(
    hidden_size=32,
    intermediate_size=32,
    moe_intermediate_size=32,
    num_hidden_layers=2,
    first_k_dense_replace=2,
    num_attention_heads=2,
    num_key_value_heads=2,
    q_lora_rank=32,
    kv_lora_rank=32,
    qk_nope_head_dim=32,
    qk_rope_head_dim=16,
    v_head_dim=32,
)
DEEPSEEK_KQUANT = dict(
    hidden_size=256,
    intermediate_size=256,
    moe_intermediate_size=256,
    num_hidden_layers=1,
    first_k_dense_replace=1,
    num_attention_heads=2,
    num_key_value_heads=2,
    q_lora_rank=256,
    kv_lora_rank=256,
    qk_nope_head_dim=128,
    qk_rope_head_dim=64,
    v_head_dim=128,
)

# Phi-3: llama.cpp picks the long factors when its context (padded to a multiple of 256) exceeds the original
# context, transformers when the sequence in one forward call does; 256 lets both pick either (see README).
PHI3_ORIGINAL_CONTEXT = 256
PHI3_CONTEXT = 1024

FAMILIES: dict[str, Family] = {
    f.name: f
    for f in [
        Family(
            name="llama",
            config_class="LlamaConfig",
            model_class="LlamaForCausalLM",
            gguf_arch="llama",
            tokenizer=Tokenizer(
                kind="bpe",
                gguf_pre="llama-bpe",
                bos="<|begin_of_text|>",
                eos="<|eot_id|>",
                add_bos=True,
                trailing=(
                    "<|begin_of_text|>",
                    "<|end_of_text|>",
                    "<|start_header_id|>",
                    "<|end_header_id|>",
                    "<|eom_id|>",
                    "<|eot_id|>",
                    "<|python_tag|>",
                ),
                regex=LLAMA3_REGEX,
                ignore_merges=True,
                generation_eos=("<|end_of_text|>", "<|eom_id|>", "<|eot_id|>"),
                chat_template="meta-llama-Llama-3.2-3B-Instruct.jinja",
                chat_prompt="<|start_header_id|>user<|end_header_id|>\n\nHi! Count the stars.<|eot_id|>"
                "<|start_header_id|>assistant<|end_header_id|>\n\n",
            ),
            tiny=dict(COMMON_TINY, head_dim=16, tie_word_embeddings=True, rope_parameters=LLAMA3_ROPE),
            kquant=dict(COMMON_KQUANT, tie_word_embeddings=True, rope_parameters=LLAMA3_ROPE),
            seed=101,
            shards=2,
        ),
        Family(
            name="mistral",
            config_class="MistralConfig",
            model_class="MistralForCausalLM",
            gguf_arch="llama",
            tokenizer=Tokenizer(
                kind="bpe",
                gguf_pre="tekken",
                bos="<s>",
                eos="</s>",
                add_bos=True,
                unk="<unk>",
                leading=(
                    "<unk>",
                    "<s>",
                    "</s>",
                    "[INST]",
                    "[/INST]",
                    "[AVAILABLE_TOOLS]",
                    "[/AVAILABLE_TOOLS]",
                    "[TOOL_RESULTS]",
                    "[/TOOL_RESULTS]",
                    "[TOOL_CALLS]",
                ),
                regex=TEKKEN_REGEX,
                ignore_merges=True,
                chat_template="mistralai-Mistral-Nemo-Instruct-2407.jinja",
                chat_prompt="[INST]Hi! Count the stars.[/INST]",
            ),
            # Nemo: head_dim 128 with hidden 5120 / 32 heads; no sliding window (llama.cpp's llama arch has none).
            tiny=dict(
                COMMON_TINY,
                **EXPLICIT_HEAD_DIM,
                tie_word_embeddings=False,
                sliding_window=None,
                rope_parameters={"rope_type": "default", "rope_theta": 1000000.0},
            ),
            kquant=dict(
                COMMON_KQUANT,
                head_dim=64,
                tie_word_embeddings=False,
                sliding_window=None,
                rope_parameters={"rope_type": "default", "rope_theta": 1000000.0},
            ),
            seed=102,
            llamacpp_note="MistralForCausalLM converts to general.architecture 'llama'; config sliding_window is "
            "not written (set to null here so transformers agrees).",
        ),
        Family(
            name="qwen2",
            config_class="Qwen2Config",
            model_class="Qwen2ForCausalLM",
            gguf_arch="qwen2",
            tokenizer=Tokenizer(
                kind="bpe",
                gguf_pre="qwen2",
                bos=None,
                eos="<|im_end|>",
                add_bos=False,
                pad="<|endoftext|>",
                trailing=("<|endoftext|>", "<|im_start|>", "<|im_end|>", "<tool_call>", "</tool_call>"),
                not_special=("<tool_call>", "</tool_call>"),
                regex=QWEN2_REGEX,
                generation_eos=("<|im_end|>", "<|endoftext|>"),
                chat_template="qwen2.5-instruct.jinja",
                chat_prompt="<|im_start|>user\nHi! Count the stars.<|im_end|>\n<|im_start|>assistant\n",
            ),
            tiny=dict(
                COMMON_TINY, tie_word_embeddings=False, rope_parameters={"rope_type": "default", "rope_theta": 1e6}
            ),
            kquant=dict(
                COMMON_KQUANT, tie_word_embeddings=False, rope_parameters={"rope_type": "default", "rope_theta": 1e6}
            ),
            seed=103,
            dtype="float16",
            gains={"bias": 0.5},
        ),
        Family(
            name="qwen3",
            config_class="Qwen3Config",
            model_class="Qwen3ForCausalLM",
            gguf_arch="qwen3",
            tokenizer=Tokenizer(
                kind="bpe",
                gguf_pre="qwen2",
                bos=None,
                eos="<|im_end|>",
                add_bos=False,
                pad="<|endoftext|>",
                trailing=(
                    "<|endoftext|>",
                    "<|im_start|>",
                    "<|im_end|>",
                    "<tool_call>",
                    "</tool_call>",
                    "<tool_response>",
                    "</tool_response>",
                    "<think>",
                    "</think>",
                ),
                not_special=(
                    "<tool_call>",
                    "</tool_call>",
                    "<tool_response>",
                    "</tool_response>",
                    "<think>",
                    "</think>",
                ),
                regex=QWEN2_REGEX,
                generation_eos=("<|im_end|>", "<|endoftext|>"),
                chat_template="Qwen-Qwen3-0.6B.jinja",
                chat_prompt="<|im_start|>user\nHi! Count the stars.<|im_end|>\n<|im_start|>assistant\n<think>\n\n</think>\n\n",
            ),
            tiny=dict(
                COMMON_TINY,
                **EXPLICIT_HEAD_DIM,
                tie_word_embeddings=True,
                rope_parameters={"rope_type": "default", "rope_theta": 1e6},
            ),
            kquant=dict(
                COMMON_KQUANT,
                head_dim=64,
                tie_word_embeddings=True,
                rope_parameters={"rope_type": "default", "rope_theta": 1e6},
            ),
            seed=104,
        ),
        Family(
            name="gemma2",
            config_class="Gemma2Config",
            model_class="Gemma2ForCausalLM",
            gguf_arch="gemma2",
            tokenizer=Tokenizer(
                kind="spm",
                gguf_pre="default",
                bos="<bos>",
                eos="<eos>",
                add_bos=True,
                pad="<pad>",
                unk="<unk>",
                leading=("<pad>", "<eos>", "<bos>", "<unk>", "<start_of_turn>", "<end_of_turn>"),
                generation_eos=("<eos>", "<end_of_turn>"),
                chat_template="google-gemma-2-2b-it.jinja",
                chat_prompt="<start_of_turn>user\nHi! Count the stars.<end_of_turn>\n<start_of_turn>model\n",
                tokenizer_class="GemmaTokenizer",
            ),
            # query_pre_attn_scalar = head_dim: llama.cpp ignores the key and scales by 1/sqrt(head_dim).
            tiny=dict(
                COMMON_TINY,
                **EXPLICIT_HEAD_DIM,
                query_pre_attn_scalar=16,
                sliding_window=8,
                attn_logit_softcapping=3.0,
                final_logit_softcapping=8.0,
            ),
            kquant=dict(
                COMMON_KQUANT,
                head_dim=64,
                query_pre_attn_scalar=64,
                sliding_window=8,
                attn_logit_softcapping=3.0,
                final_logit_softcapping=8.0,
            ),
            seed=105,
            dtype="bfloat16",
            llamacpp_note="llama.cpp does not read query_pre_attn_scalar (1/sqrt(head_dim), or hidden/heads for "
            "the 46-layer 27B), and hard-codes the alternation: even layers sliding.",
        ),
        Family(
            name="gemma3",
            config_class="Gemma3TextConfig",
            model_class="Gemma3ForCausalLM",
            gguf_arch="gemma3",
            tokenizer=Tokenizer(
                kind="spm",
                gguf_pre="default",
                bos="<bos>",
                eos="<eos>",
                add_bos=True,
                pad="<pad>",
                unk="<unk>",
                leading=("<pad>", "<eos>", "<bos>", "<unk>", "<start_of_turn>", "<end_of_turn>"),
                generation_eos=("<eos>", "<end_of_turn>"),
                chat_template="gemma-3-it.jinja",
                chat_prompt="<start_of_turn>user\nHi! Count the stars.<end_of_turn>\n<start_of_turn>model\n",
                tokenizer_class="GemmaTokenizer",
            ),
            # 6 layers: llama.cpp hard-codes Gemma 3's pattern (5 sliding layers, then 1 global), so transformers'
            # layer_types must be the default pattern for both to agree.
            tiny=dict(
                COMMON_TINY,
                num_hidden_layers=6,
                num_attention_heads=2,
                num_key_value_heads=1,
                head_dim=16,
                query_pre_attn_scalar=16,
                sliding_window=8,
                rope_parameters=GEMMA3_ROPE,
            ),
            kquant=dict(COMMON_KQUANT, head_dim=64, query_pre_attn_scalar=64, sliding_window=8),
            seed=106,
            llamacpp_note="llama.cpp hard-codes the sliding pattern (every 6th layer global) and ignores "
            "query_pre_attn_scalar (1/sqrt(head_dim)); the converter drops embedding rows beyond the tokenizer.",
        ),
        Family(
            name="phi3",
            config_class="Phi3Config",
            model_class="Phi3ForCausalLM",
            gguf_arch="phi3",
            tokenizer=Tokenizer(
                kind="spm",
                gguf_pre="default",
                bos="<s>",
                eos="<|endoftext|>",
                add_bos=False,
                pad="<|endoftext|>",
                unk="<unk>",
                leading=("<unk>", "<s>", "</s>"),
                trailing=("<|endoftext|>", "<|assistant|>", "<|system|>", "<|end|>", "<|user|>"),
                rstrip=("<|assistant|>", "<|system|>", "<|end|>", "<|user|>"),  # llama.cpp strips after them too
                dummy_prefix=True,
                generation_eos=("<|end|>", "<|endoftext|>"),
                chat_template="microsoft-Phi-3.5-mini-instruct.jinja",
                chat_prompt="<|user|>\nHi! Count the stars.<|end|>\n<|assistant|>\n",
                tokenizer_class="LlamaTokenizer",
            ),
            # Phi-4-mini style: 3/4 of each head rotated, tied head, LongRoPE.
            tiny=dict(
                COMMON_TINY,
                tie_word_embeddings=True,
                sliding_window=None,
                max_position_embeddings=PHI3_CONTEXT,
                original_max_position_embeddings=PHI3_ORIGINAL_CONTEXT,
                rope_parameters=_longrope(12),
            ),
            kquant=dict(
                COMMON_KQUANT,
                tie_word_embeddings=True,
                sliding_window=None,
                max_position_embeddings=PHI3_CONTEXT,
                original_max_position_embeddings=PHI3_ORIGINAL_CONTEXT,
                rope_parameters=_longrope(48),
            ),
            seed=107,
            llamacpp_note="llama.cpp chooses LongRoPE long factors when n_ctx (padded to 256) > "
            "original_max_position_embeddings, for every position; transformers when the sequence length of the "
            "forward call is. Phi-3's sliding_window is ignored by llama.cpp (set to null here).",
        ),
        Family(
            name="olmo2",
            config_class="Olmo2Config",
            model_class="Olmo2ForCausalLM",
            gguf_arch="olmo2",
            tokenizer=Tokenizer(
                kind="bpe",
                gguf_pre="dbrx",
                bos=None,
                eos="<|endoftext|>",
                add_bos=False,
                pad="<|pad|>",
                trailing=("<|endoftext|>", "<|pad|>"),
                regex=LLAMA3_REGEX,
            ),
            tiny=dict(
                COMMON_TINY, tie_word_embeddings=False, rope_parameters={"rope_type": "default", "rope_theta": 500000.0}
            ),
            kquant=dict(
                COMMON_KQUANT,
                tie_word_embeddings=False,
                rope_parameters={"rope_type": "default", "rope_theta": 500000.0},
            ),
            seed=108,
        ),
        Family(
            name="smollm3",
            config_class="SmolLM3Config",
            model_class="SmolLM3ForCausalLM",
            gguf_arch="smollm3",
            tokenizer=Tokenizer(
                kind="bpe",
                gguf_pre="llama-bpe",
                bos=None,
                eos="<|im_end|>",
                add_bos=False,
                pad="<|end_of_text|>",
                trailing=("<|begin_of_text|>", "<|end_of_text|>", "<|im_start|>", "<|im_end|>", "<think>", "</think>"),
                not_special=("<think>", "</think>"),
                regex=LLAMA3_REGEX,
                ignore_merges=True,
                chat_template="HuggingFaceTB-SmolLM3-3B.jinja",
                chat_prompt="<|im_start|>user\nHi! Count the stars.<|im_end|>\n<|im_start|>assistant\n",
            ),
            # 4 layers: layer 3 (every 4th) has no RoPE, which llama.cpp hard-codes for this architecture.
            tiny=dict(
                COMMON_TINY,
                num_hidden_layers=4,
                tie_word_embeddings=True,
                rope_parameters={"rope_type": "default", "rope_theta": 2000000.0},
            ),
            kquant=dict(
                COMMON_KQUANT,
                tie_word_embeddings=True,
                rope_parameters={"rope_type": "default", "rope_theta": 2000000.0},
            ),
            seed=109,
            llamacpp_note="llama.cpp ignores config no_rope_layers and skips RoPE on layers 3, 7, 11, ... "
            "(n_no_rope_layer_step = 4, hard-coded); our config uses that default pattern.",
        ),
        Family(
            name="granite",
            config_class="GraniteConfig",
            model_class="GraniteForCausalLM",
            gguf_arch="granite",
            tokenizer=Tokenizer(
                kind="bpe",
                gguf_pre="refact",
                bos="<|end_of_text|>",
                eos="<|end_of_text|>",
                add_bos=False,
                pad="<|end_of_text|>",
                leading=("<|end_of_text|>",),
                trailing=(
                    "<|start_of_role|>",
                    "<|end_of_role|>",
                    "<|tool_call|>",
                    "<|start_of_cite|>",
                    "<|end_of_cite|>",
                    "<think>",
                    "</think>",
                    "<response>",
                    "</response>",
                ),
                regex=GPT2_DIGITS,
                chat_template="ibm-granite-granite-3.3-2B-Instruct.jinja",
                chat_prompt="<|start_of_role|>user<|end_of_role|>Hi! Count the stars.<|end_of_text|>\n"
                "<|start_of_role|>assistant<|end_of_role|>",
            ),
            # Granite 3.3 2B: embedding x12, residual x0.22, attention scale 1/head_dim, logits / 8.
            tiny=dict(
                COMMON_TINY,
                tie_word_embeddings=True,
                embedding_multiplier=12.0,
                residual_multiplier=0.22,
                attention_multiplier=0.0625,
                logits_scaling=8.0,
                rope_parameters={"rope_type": "default", "rope_theta": 10000.0},
            ),
            kquant=dict(
                COMMON_KQUANT,
                tie_word_embeddings=True,
                embedding_multiplier=12.0,
                residual_multiplier=0.22,
                attention_multiplier=0.015625,
                logits_scaling=8.0,
                rope_parameters={"rope_type": "default", "rope_theta": 10000.0},
            ),
            seed=110,
        ),
        Family(
            name="deepseek2",
            config_class="DeepseekV3Config",
            model_class="DeepseekV3ForCausalLM",
            gguf_arch="deepseek2",
            tokenizer=Tokenizer(
                kind="bpe",
                gguf_pre="deepseek-v3",
                bos="<｜begin▁of▁sentence｜>",
                eos="<｜end▁of▁sentence｜>",
                add_bos=True,
                leading=("<｜begin▁of▁sentence｜>", "<｜end▁of▁sentence｜>"),
                trailing=("<｜User｜>", "<｜Assistant｜>", "<think>", "</think>"),
                not_special=("<think>", "</think>"),
                regex=DEEPSEEK_V3_REGEXES,
                chat_template="deepseek-ai-DeepSeek-V3.1.jinja",
                chat_prompt="<｜User｜>Hi! Count the stars.<｜Assistant｜><think></think>",
            ),
            # DeepSeek-V3's attention (MLA: low-rank query, latent KV, decoupled RoPE key, YaRN with mscale) with
            # every layer's FFN dense (first_k_dense_replace = layers): the MoE layers are deepseek2moe's.
            tiny=dict(DEEPSEEK_MLA, **DEEPSEEK_TINY),
            kquant=dict(DEEPSEEK_MLA, **DEEPSEEK_KQUANT),
            seed=111,
            llamacpp_note="llama.cpp reads mscale_all_dim from rope.scaling.yarn_log_mul (written as 0.1 x "
            "mscale_all_dim) and assumes mscale == mscale_all_dim (both 1 here, as in DeepSeek-V3); it requires "
            "q_lora_rank unless the model has 26 or 27 layers (V2-Lite), so a tiny model without a low-rank "
            "query cannot be converted.",
        ),
    ]
}

# Qwen3-30B-A3B in miniature: Qwen 3's attention, every layer a mixture of 8 experts, top-2, weights normalised
# (norm_topk_prob, which llama.cpp hard-codes for qwen3moe), untied head. The router's gain keeps each token's
# 2nd and 3rd expert apart (no routing near a tie: make_fixtures.py records the smallest gap).
FAMILIES["qwen3moe"] = Family(
    name="qwen3moe",
    config_class="Qwen3MoeConfig",
    model_class="Qwen3MoeForCausalLM",
    gguf_arch="qwen3moe",
    tokenizer=FAMILIES["qwen3"].tokenizer,
    tiny=dict(
        COMMON_TINY,
        **EXPLICIT_HEAD_DIM,
        num_experts=8,
        num_experts_per_tok=2,
        moe_intermediate_size=32,
        norm_topk_prob=True,
        tie_word_embeddings=False,
        rope_parameters={"rope_type": "default", "rope_theta": 1e6},
    ),
    # 4 experts of 256: every row 256 wide for the K-quants, and the file stays ~0.6 MB
    kquant=dict(
        COMMON_KQUANT,
        head_dim=64,
        num_experts=4,
        num_experts_per_tok=2,
        moe_intermediate_size=256,
        norm_topk_prob=True,
        tie_word_embeddings=False,
        rope_parameters={"rope_type": "default", "rope_theta": 1e6},
    ),
    seed=121,  # of seeds 111-122, the one whose routing stays furthest from a tie (tiny 0.0017, kquant 0.083)
    gains={"router": 4.0},
    llamacpp_note="llama.cpp normalises the top-k weights for qwen3moe whatever norm_topk_prob says (set true "
    "here) and ignores mlp_only_layers / decoder_sparse_step (left at their defaults: every layer MoE).",
)

# Qwen1.5-MoE in miniature: Qwen 2's attention (q/k/v biases), 8 experts top-2 with the weights left unnormalised
# (llama.cpp hard-codes that for qwen2moe; norm_topk_prob's default), plus a shared expert of 48 behind a sigmoid
# gate, untied head.
FAMILIES["qwen2moe"] = Family(
    name="qwen2moe",
    config_class="Qwen2MoeConfig",
    model_class="Qwen2MoeForCausalLM",
    gguf_arch="qwen2moe",
    tokenizer=FAMILIES["qwen2"].tokenizer,
    tiny=dict(
        COMMON_TINY,
        num_experts=8,
        num_experts_per_tok=2,
        moe_intermediate_size=32,
        shared_expert_intermediate_size=64,
        norm_topk_prob=False,
        tie_word_embeddings=False,
        rope_parameters={"rope_type": "default", "rope_theta": 1e6},
    ),
    kquant=dict(
        COMMON_KQUANT,
        num_experts=4,
        num_experts_per_tok=2,
        moe_intermediate_size=256,
        shared_expert_intermediate_size=256,
        norm_topk_prob=False,
        tie_word_embeddings=False,
        rope_parameters={"rope_type": "default", "rope_theta": 1e6},
    ),
    seed=131,
    gains={"router": 4.0, "bias": 0.5},
    llamacpp_note="llama.cpp leaves the top-k weights of qwen2moe unnormalised whatever norm_topk_prob says (false "
    "here, its default).",
)

# GPT-OSS in miniature: 2 layers (a sliding window of 8, then full attention), 4 heads / 2 KV heads of 16, attention
# sinks, q/k/v/o biases, YaRN x32 over 4096 with truncate false (as released), 8 experts of 32 top-2 with a biased
# router and biased experts behind the clamped SwiGLU. Experts are transformers' own stacks (gate_up interleaved and
# transposed, as the released checkpoints store them); their inputs are scaled up ("expert_in") so that the clamp
# at 7 bites. Besides Q8_0 and Q4_K_M, llama.cpp's MXFP4_MOE (experts MXFP4, the rest Q8_0) of tiny-f32.
GPT_OSS_ROPE = {
    "rope_type": "yarn",
    "rope_theta": 150000.0,
    "factor": 32.0,
    "beta_fast": 32.0,
    "beta_slow": 1.0,
    "truncate": False,
    "original_max_position_embeddings": 4096,
}
FAMILIES["gpt_oss"] = Family(
    name="gpt_oss",
    config_class="GptOssConfig",
    model_class="GptOssForCausalLM",
    gguf_arch="gpt-oss",
    tokenizer=Tokenizer(
        kind="bpe",
        gguf_pre="gpt-4o",
        bos="<|startoftext|>",
        eos="<|return|>",
        add_bos=False,
        pad="<|endoftext|>",
        trailing=(
            "<|startoftext|>",
            "<|endoftext|>",
            "<|return|>",
            "<|constrain|>",
            "<|channel|>",
            "<|start|>",
            "<|end|>",
            "<|message|>",
            "<|call|>",
        ),
        regex=(
            r"[^\r\n\p{L}\p{N}]?[\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}]*[\p{Ll}\p{Lm}\p{Lo}\p{M}]+(?i:'s|'t|'re|'ve|'m|'ll|'d)?"
            r"|[^\r\n\p{L}\p{N}]?[\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}]+[\p{Ll}\p{Lm}\p{Lo}\p{M}]*(?i:'s|'t|'re|'ve|'m|'ll|'d)?"
            r"|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n/]*|\s*[\r\n]+|\s+(?!\S)|\s+"
        ),
        generation_eos=("<|return|>", "<|endoftext|>", "<|call|>"),
        chat_template="openai-gpt-oss-120b.jinja",
        chat_prompt="<|start|>user<|message|>Hi! Count the stars.<|end|><|start|>assistant",
    ),
    tiny=dict(
        COMMON_TINY,
        hidden_size=64,
        **EXPLICIT_HEAD_DIM,
        num_local_experts=8,
        num_experts_per_tok=2,
        sliding_window=8,
        tie_word_embeddings=False,
        rope_parameters=GPT_OSS_ROPE,
    ),
    kquant=dict(
        COMMON_KQUANT,
        head_dim=64,
        num_local_experts=4,
        num_experts_per_tok=2,
        sliding_window=8,
        tie_word_embeddings=False,
        rope_parameters=GPT_OSS_ROPE,
    ),
    seed=141,
    gains={"router": 4.0, "bias": 0.3, "sinks": 1.5, "expert_in": 3.0, "partner": 7.0},
    per_expert=False,
    quantized=(("tiny-mxfp4", "tiny", "MXFP4_MOE"),),
    llamacpp_note="llama.cpp rounds YaRN's ramp ends to whole pairs whatever config.json's truncate says (false "
    "here, as released; transformers then does not round), hard-codes the clamped SwiGLU's alpha 1.702 and limit 7, "
    "and the sliding pattern (even layers sliding).",
)

# Llama 4 Scout's text decoder in miniature: 4 layers (layer 3 without RoPE, with the attention temperature), MoE on
# every second layer (4 experts of 32, top-1, sigmoid of the logit scaling the expert's input, plus an always-on
# shared expert of 32), dense FFN of 64 on the others, chunked attention (chunks of 8) on the RoPE layers,
# weightless QK norm after RoPE, llama3 RoPE scaling, untied head. floor_scale 4 and attn_scale 0.5 make the
# temperature grow within a prompt (x1.35 from position 3, x1.55 at 7, x2.6 at 100). llama.cpp hard-codes the real models' chunk
# (8192), floor_scale (8192) and attn_scale (0.1), so its references are compared with transformers under those
# (`llamacpp_config`); the folder's own values are checked against transformers by tests/test_model_zoo.py.
FAMILIES["llama4"] = Family(
    name="llama4",
    config_class="Llama4TextConfig",
    model_class="Llama4ForCausalLM",
    gguf_arch="llama4",
    tokenizer=Tokenizer(
        kind="bpe",
        gguf_pre="llama4",
        bos="<|begin_of_text|>",
        eos="<|eot|>",
        add_bos=True,
        trailing=(
            "<|begin_of_text|>",
            "<|end_of_text|>",
            "<|header_start|>",
            "<|header_end|>",
            "<|eom|>",
            "<|eot|>",
            "<|python_start|>",
            "<|python_end|>",
        ),
        regex=(
            r"[^\r\n\p{L}\p{N}]?[\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}]*[\p{Ll}\p{Lm}\p{Lo}\p{M}]+(?i:'s|'t|'re|'ve|'m|'ll|'d)?"
            r"|[^\r\n\p{L}\p{N}]?[\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}]+[\p{Ll}\p{Lm}\p{Lo}\p{M}]*(?i:'s|'t|'re|'ve|'m|'ll|'d)?"
            r"|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n/]*|\s*[\r\n]+|\s+(?!\S)|\s+"
        ),
        ignore_merges=True,
        generation_eos=("<|end_of_text|>", "<|eom|>", "<|eot|>"),
        chat_prompt="<|header_start|>user<|header_end|>\n\nHi! Count the stars.<|eot|>"
        "<|header_start|>assistant<|header_end|>\n\n",
    ),
    tiny=dict(
        COMMON_TINY,
        max_position_embeddings=16384,  # room for make_fixtures.py's sequence past llama.cpp's chunk of 8192
        num_hidden_layers=4,
        head_dim=16,
        intermediate_size_mlp=64,
        num_local_experts=4,
        num_experts_per_tok=1,
        interleave_moe_layer_step=2,
        attention_chunk_size=8,
        floor_scale=4,
        attn_scale=0.5,
        tie_word_embeddings=False,
        rope_parameters=LLAMA3_ROPE,
    ),
    # 4 layers, not 1: llama.cpp's cache for Llama 4 fails (a buffer never set) without a global (RoPE-free) layer;
    # MoE on layer 3 only (4 experts and a shared expert of 256), dense FFNs of 256; rows 256 wide
    kquant=dict(
        COMMON_KQUANT,
        num_hidden_layers=4,
        head_dim=64,
        intermediate_size_mlp=256,
        num_local_experts=4,
        num_experts_per_tok=1,
        interleave_moe_layer_step=4,
        attention_chunk_size=8,
        floor_scale=4,
        attn_scale=0.5,
        tie_word_embeddings=False,
        rope_parameters=LLAMA3_ROPE,
    ),
    seed=141,
    gains={"router": 4.0},
    expert_stacks=True,
    llamacpp_config={"attention_chunk_size": 8192, "floor_scale": 8192, "attn_scale": 0.1},
    llamacpp_note="llama.cpp hard-codes Llama 4's attention chunk (8192), temperature floor_scale (8192) and attn_scale "
    "(0.1) and its RoPE-free pattern (every 4th layer), ignoring config.json; its references equal transformers run "
    "with those values (llamacpp_config). The converter (Llama4ForCausalLM is registered) converts this text-only "
    "folder as it is.",
)

# DeepSeek-V3 / Kimi K2 in miniature: MLA as the deepseek2 fixture, then mixture-of-experts layers after the first
# (dense) one: sigmoid router scores, a selection-only bias (e_score_correction_bias, large enough to change choices),
# top-2 of 8 experts within the best 2 of 4 groups (so the groups bite), weights normalised then x2.5, one shared
# expert. kquant: one MoE layer of 4 experts of 256 in 2 groups (best 1). The seed keeps routing away from ties.
DEEPSEEK_MOE = dict(
    n_routed_experts=8,
    num_experts_per_tok=2,
    n_group=4,
    topk_group=2,
    n_shared_experts=1,
    routed_scaling_factor=2.5,
    norm_topk_prob=True,
    scoring_func="sigmoid",  # transformers' V3 always uses sigmoid; the converter needs the key to say so
    topk_method="noaux_tc",
)
FAMILIES["deepseek2moe"] = Family(
    name="deepseek2moe",
    config_class="DeepseekV3Config",
    model_class="DeepseekV3ForCausalLM",
    gguf_arch="deepseek2",
    tokenizer=FAMILIES["deepseek2"].tokenizer,
    tiny=dict(DEEPSEEK_MLA, **dict(DEEPSEEK_TINY, num_hidden_layers=3, first_k_dense_replace=1), **DEEPSEEK_MOE),
    kquant=dict(
        DEEPSEEK_MLA,
        **dict(DEEPSEEK_KQUANT, first_k_dense_replace=0),
        **dict(DEEPSEEK_MOE, n_routed_experts=4, n_group=2, topk_group=1),
    ),
    seed=158,  # of seeds 141-165, one whose routing stays far from ties in both variants (tiny 0.0005, kquant 0.03)
    gains={"router": 2.0, "score_bias": 0.2},
    llamacpp_note=FAMILIES["deepseek2"].llamacpp_note,
)

VARIANTS = ("tiny", "kquant")


# -- tokenizers -------------------------------------------------------------------------------------------------------


def _gpt2_byte_chars() -> dict[int, str]:
    """GPT-2's reversible byte -> printable character map (byte 0x20, a space, is 'Ġ')."""
    printable = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), ord("ÿ") + 1)]
    chars, extra = {}, 0
    for b in range(256):
        if b in printable:
            chars[b] = chr(b)
        else:
            chars[b] = chr(256 + extra)
            extra += 1
    return chars


# The base alphabet is printable ASCII plus tab, newline and carriage return, not all 256 bytes (nor SentencePiece's
# 256 byte-fallback pieces): it keeps the vocabulary, and so every fixture file, small. On other characters
# transformers and llama.cpp's BPE drop the bytes, llama.cpp's SentencePiece tokenizer throws: the fixtures are
# about the models, and their references are recorded on token ids.
ASCII_BYTES = (9, 10, 13, *range(32, 127))


def _corpus_words(kind: str) -> list[str]:
    """The corpus split into words, written in the vocabulary's alphabet (GPT-2 bytes or SentencePiece's '▁')."""
    text = " ".join([*PROMPT_TEXTS, CORPUS_TEXT, "Hi there! Hi! user assistant model system"])
    words = re.findall(r" ?[A-Za-z]+| ?[0-9]| ?[^\sA-Za-z0-9]+|\s+", text)
    if kind == "bpe":
        chars = _gpt2_byte_chars()
        return ["".join(chars[b] for b in w.encode()) for w in words]
    return [w.replace(" ", "▁") for w in words]


def learn_merges(words: list[str], n_merges: int) -> list[tuple[str, str]]:
    """Plain BPE training, deterministic: the most frequent adjacent pair wins, ties go to the smallest pair."""
    counts = Counter(words)
    splits = {w: list(w) for w in counts}
    merges: list[tuple[str, str]] = []
    for _ in range(n_merges):
        pairs: Counter = Counter()
        for w, n in counts.items():
            s = splits[w]
            for pair in zip(s, s[1:]):
                pairs[pair] += n
        if not pairs:
            break
        best = min(pairs, key=lambda p: (-pairs[p], p))
        merges.append(best)
        for w, s in splits.items():
            i, out = 0, []
            while i < len(s):
                if i + 1 < len(s) and (s[i], s[i + 1]) == best:
                    out.append(s[i] + s[i + 1])
                    i += 2
                else:
                    out.append(s[i])
                    i += 1
            splits[w] = out
    return merges


def _vocab_pieces(tok: Tokenizer) -> tuple[list[str], list[tuple[str, str]]]:
    """The token strings in id order (specials included) and the merges."""
    if tok.kind == "bpe":
        chars = _gpt2_byte_chars()
        alphabet = [chars[b] for b in ASCII_BYTES]
    else:  # SentencePiece: single characters, '▁' instead of a space (no byte-fallback pieces, see ASCII_BYTES)
        alphabet = ["▁" if b == 32 else chr(b) for b in ASCII_BYTES]
    merges = learn_merges(_corpus_words(tok.kind), N_MERGES)
    pieces = [*tok.leading, *alphabet, *(a + b for a, b in merges), *tok.trailing]
    if len(set(pieces)) != len(pieces):
        raise ValueError("duplicate token in the tiny vocabulary")
    return pieces, merges


def vocab_size(family: str) -> int:
    return len(_vocab_pieces(FAMILIES[family].tokenizer)[0])


def _added_token(content: str, id_: int, special: bool, rstrip: bool) -> dict:
    return {
        "id": id_,
        "content": content,
        "single_word": False,
        "lstrip": False,
        "rstrip": rstrip,
        "normalized": not special,
        "special": special,
    }


def _tokenizer_json(tok: Tokenizer) -> dict:
    """tokenizer.json for the `tokenizers` library, written out field by field."""
    pieces, merges = _vocab_pieces(tok)
    ids = {p: i for i, p in enumerate(pieces)}
    added = [_added_token(s, ids[s], s not in tok.not_special, s in tok.rstrip) for s in [*tok.leading, *tok.trailing]]
    if tok.kind == "bpe":
        byte_level = {"type": "ByteLevel", "add_prefix_space": False, "trim_offsets": True, "use_regex": False}
        if tok.regex == GPT2_DIGITS:
            splits = [{"type": "Digits", "individual_digits": True}, dict(byte_level, use_regex=True)]
        else:
            regexes = (tok.regex,) if isinstance(tok.regex, str) else tok.regex
            split = [
                {"type": "Split", "pattern": {"Regex": r}, "behavior": "Isolated", "invert": False} for r in regexes
            ]
            splits = [*split, byte_level]
        normalizer = None
        pre_tokenizer = {"type": "Sequence", "pretokenizers": splits}
        decoder = {"type": "ByteLevel", "add_prefix_space": True, "trim_offsets": True, "use_regex": True}
        model_extra = {"byte_fallback": False, "fuse_unk": False, "unk_token": tok.unk}
    else:
        replace = {"type": "Replace", "pattern": {"String": " "}, "content": "▁"}
        prepend = [{"type": "Prepend", "prepend": "▁"}] if tok.dummy_prefix else []
        normalizer = {"type": "Sequence", "normalizers": [*prepend, replace]}
        pre_tokenizer = None
        strip = [{"type": "Strip", "content": " ", "start": 1, "stop": 0}] if tok.dummy_prefix else []
        decoder = {
            "type": "Sequence",
            "decoders": [{"type": "Replace", "pattern": {"String": "▁"}, "content": " "}, {"type": "Fuse"}, *strip],
        }
        model_extra = {"byte_fallback": False, "fuse_unk": True, "unk_token": tok.unk}
    if tok.add_bos:
        bos = {"SpecialToken": {"id": tok.bos, "type_id": 0}}
        post_processor = {
            "type": "TemplateProcessing",
            "single": [bos, {"Sequence": {"id": "A", "type_id": 0}}],
            "pair": [bos, {"Sequence": {"id": "A", "type_id": 0}}, dict(bos), {"Sequence": {"id": "B", "type_id": 1}}],
            "special_tokens": {tok.bos: {"id": tok.bos, "ids": [ids[tok.bos]], "tokens": [tok.bos]}},
        }
    elif tok.kind == "bpe":
        post_processor = {"type": "ByteLevel", "add_prefix_space": True, "trim_offsets": False, "use_regex": True}
    else:
        post_processor = None
    model = {
        "type": "BPE",
        "dropout": None,
        "continuing_subword_prefix": None,
        "end_of_word_suffix": None,
        "ignore_merges": tok.ignore_merges,
        **model_extra,
        "vocab": ids,
        "merges": [list(m) for m in merges],
    }
    return {
        "version": "1.0",
        "truncation": None,
        "padding": None,
        "added_tokens": added,
        "normalizer": normalizer,
        "pre_tokenizer": pre_tokenizer,
        "post_processor": post_processor,
        "decoder": decoder,
        "model": model,
    }


def _chat_template(tok: Tokenizer) -> str | None:
    if tok.chat_template is None:
        return None
    for folder in (TEMPLATES, REPO_TEMPLATES):
        if (folder / tok.chat_template).is_file():
            return (folder / tok.chat_template).read_text(encoding="utf-8")
    raise FileNotFoundError(f"chat template {tok.chat_template} is in neither {TEMPLATES} nor {REPO_TEMPLATES}")


def _tokenizer_config(tok: Tokenizer) -> dict:
    added = _tokenizer_json(tok)["added_tokens"]
    config = {
        "add_bos_token": tok.add_bos,
        "add_eos_token": False,
        "added_tokens_decoder": {
            str(t["id"]): {k: t[k] for k in ("content", "lstrip", "normalized", "rstrip", "single_word", "special")}
            for t in added
        },
        "bos_token": tok.bos,
        "clean_up_tokenization_spaces": False,
        "eos_token": tok.eos,
        "model_max_length": 4096,
        "pad_token": tok.pad,
        "tokenizer_class": tok.tokenizer_class,
    }
    if tok.unk is not None:
        config["unk_token"] = tok.unk
    if tok.kind == "spm":
        config["legacy"] = False
        config["add_prefix_space"] = tok.dummy_prefix
        config["sp_model_kwargs"] = {}
    if (template := _chat_template(tok)) is not None:
        config["chat_template"] = template
    return config


# SentencePiece's model file is a protobuf (sentencepiece_model.proto); written by hand so that no protobuf or
# sentencepiece package is needed. Field numbers: ModelProto {pieces=1, trainer_spec=2, normalizer_spec=3},
# SentencePiece {piece=1, score=2, type=3}, TrainerSpec {model_type=3, vocab_size=4, byte_fallback=35,
# unk_id=40, bos_id=41, eos_id=42, pad_id=43}, NormalizerSpec {name=1, add_dummy_prefix=3,
# remove_extra_whitespaces=4, escape_whitespaces=5}.
SPM_NORMAL, SPM_UNKNOWN, SPM_CONTROL, SPM_USER_DEFINED = 1, 2, 3, 4
SPM_BPE = 2


def _varint(n: int) -> bytes:
    n &= (1 << 64) - 1  # negative int32 values are written as 10-byte two's complement
    out = bytearray()
    while True:
        out.append((n & 0x7F) | (0x80 if n > 0x7F else 0))
        n >>= 7
        if not n:
            return bytes(out)


def _pb_varint(field_no: int, value: int) -> bytes:
    return _varint(field_no << 3) + _varint(value)


def _pb_bytes(field_no: int, value: bytes) -> bytes:
    return _varint(field_no << 3 | 2) + _varint(len(value)) + value


def _pb_float(field_no: int, value: float) -> bytes:
    return _varint(field_no << 3 | 5) + struct.pack("<f", value)


def _spm_model(tok: Tokenizer) -> bytes:
    """tokenizer.model: a SentencePiece BPE model over the same pieces as tokenizer.json (added tokens excluded)."""
    pieces, _ = _vocab_pieces(tok)
    spm_pieces = [p for p in pieces if p not in tok.trailing]  # Phi-3 keeps its chat tokens outside the model
    out = bytearray()
    n_merged = 0
    for p in spm_pieces:
        if p == "<unk>":
            kind, score = SPM_UNKNOWN, 0.0
        elif p in ("<start_of_turn>", "<end_of_turn>"):
            kind, score = SPM_USER_DEFINED, 0.0  # Gemma's turn markers are user-defined pieces in its model
        elif p in tok.leading:
            kind, score = SPM_CONTROL, 0.0
        elif len(p) == 1:
            kind, score = SPM_NORMAL, -1000.0 - ord(p)  # single characters: below every merge
        else:
            kind, score = SPM_NORMAL, -float(n_merged)  # merges: earlier = higher score = applied first
            n_merged += 1
        out += _pb_bytes(1, _pb_bytes(1, p.encode()) + _pb_float(2, score) + _pb_varint(3, kind))
    ids = {p: i for i, p in enumerate(spm_pieces)}
    trainer = (
        _pb_varint(3, SPM_BPE)
        + _pb_varint(4, len(spm_pieces))
        + _pb_varint(35, 0)
        + _pb_varint(40, ids["<unk>"])
        + _pb_varint(41, ids.get(tok.bos, -1))
        + _pb_varint(42, ids.get("<eos>", ids.get("</s>", -1)))
        + _pb_varint(43, ids.get("<pad>", -1))
    )
    normalizer = _pb_bytes(1, b"identity") + _pb_varint(3, int(tok.dummy_prefix)) + _pb_varint(4, 0) + _pb_varint(5, 1)
    out += _pb_bytes(2, trainer) + _pb_bytes(3, normalizer)
    return bytes(out)


# -- config and weights -----------------------------------------------------------------------------------------------


def hf_config(name: str, variant: str = "tiny"):
    """The transformers config object of one family and variant."""
    import transformers

    family = FAMILIES[name]
    tok = family.tokenizer
    ids = {p: i for i, p in enumerate(_vocab_pieces(tok)[0])}
    kwargs = dict(getattr(family, variant))
    kwargs.update(
        vocab_size=len(ids),
        bos_token_id=ids.get(tok.bos) if tok.bos else None,
        eos_token_id=ids[tok.eos],
        pad_token_id=ids.get(tok.pad) if tok.pad else None,
    )
    config = getattr(transformers, family.config_class)(**kwargs)
    config.architectures = [family.model_class]
    config.dtype = family.dtype
    return config


def _config_json(config) -> dict:
    """What save_pretrained writes, minus the transformers version (so the file does not change with it)."""
    d = config.to_diff_dict()
    d.pop("transformers_version", None)
    d["architectures"] = config.architectures
    d["dtype"] = str(config.dtype).removeprefix("torch.")
    return d


def _generation_config(family: Family) -> dict:
    tok = family.tokenizer
    ids = {p: i for i, p in enumerate(_vocab_pieces(tok)[0])}
    eos = [ids[t] for t in tok.generation_eos] or ids[tok.eos]
    config = {"eos_token_id": eos}
    if tok.bos:
        config["bos_token_id"] = ids[tok.bos]
    if tok.pad:
        config["pad_token_id"] = ids[tok.pad]
    return config


def parameter_shapes(config) -> dict[str, tuple[int, ...]]:
    """Every parameter transformers defines for this config (tied weights once), built on the meta device."""
    import torch
    import transformers

    with torch.device("meta"):
        model = transformers.AutoModelForCausalLM.from_config(config)
    shapes = {n: tuple(p.shape) for n, p in model.named_parameters()}
    # DeepSeek V3's selection-only router bias is a buffer, yet saved with the weights (and converted to exp_probs_b)
    shapes.update({n: tuple(b.shape) for n, b in model.named_buffers() if n.endswith("e_score_correction_bias")})
    return shapes


# Weight scales. llama.cpp rounds the activations entering each matrix product (to f16 for F16 weights, to Q8_0 or
# Q8_K blocks for quantized ones: 0.02% to 0.6% of each product's output), so the tiny models must not amplify small
# perturbations, or an engine computing in float32 could not be compared with llama.cpp's f16 and quantized runs.
# Two choices keep them well-conditioned yet peaked:
# - the residual stream is led by the token's embedding: the blocks add about half of it ("write"), through attention
#   that is position-selective but not sharp ("qk"), so rounding in the blocks moves the final hidden state little;
# - the logits are peaked by alignment, not by scale: every token has a partner (a fixed random pairing), and the head
#   scores the partner of the current token "partner" standard deviations above a background of std "logits". Rounding
#   noise scales with the background, while the top-1 margin (~2-4) comes from the alignment; a sample from the model
#   follows the partner at ~50-80% of steps and wanders otherwise (mean NLL ~1-3 per token).
# A linear layer's weights have std gain / sqrt(fan_in), so its outputs keep the scale of its inputs times the gain:
# "qk" for q and k (also the mean of QK-norm weights: attention scores have std ~qk²), "other" for v, gate and up. Norm
# weights are 1 plus noise of std "norm_noise" ("qk_norm_noise" times the mean for QK-norms: switching QK-norm off
# then matters); biases have std "bias". A family's `gains` override these.
GAINS = {
    "logits": 1.5,
    "partner": 5.5,
    "qk": 1.5,
    "other": 1.0,
    "write": 0.5,
    "post_norm": 0.5,
    "norm_noise": 0.1,
    "qk_norm_noise": 0.5,
    "bias": 0.0,
    "router": 1.0,
    "sinks": 1.0,  # GPT-OSS's attention sink logits (std)
    "expert_in": 1.0,  # GPT-OSS: the gain of the expert stacks' gate/up (the down stack divides by its square)
    "score_bias": 0.0,
}
RESIDUAL = 0.3  # std of the embedding's entries in the residual stream (hidden 32; smaller for wider models)


def _scales(family: Family, config) -> dict[str, float]:
    """The scales that make every family's tiny model behave alike despite its multipliers, depth and tying.

    The embedding puts entries of std ~RESIDUAL into the residual stream (after Gemma's sqrt(hidden) or Granite's
    embedding multiplier). Each block's out projections write back entries "write" times that, divided by
    sqrt(layers / 2) so that deeper models add as much in all (and Granite's residual multiplier compensated);
    Gemma's and OLMo 2's post-norms, whose output has exactly the norm weight's size while an out projection's input is
    smaller than 1, get "post_norm" times that. The logits' background has std "logits" (Granite's logit divisor
    compensated): with an untied head that is the head's scale, with a tied one (whose scale the embedding fixes) the
    final norm weight's.
    """
    gains = {**GAINS, **family.gains}
    hidden = config.hidden_size
    emb_mult = hidden**0.5 if family.name.startswith("gemma") else getattr(config, "embedding_multiplier", 1.0)
    stream = RESIDUAL * (32 / hidden) ** 0.5
    embed_std = stream / emb_mult
    write = gains["write"] * stream * (2 / config.num_hidden_layers) ** 0.5
    background = gains["logits"] * getattr(config, "logits_scaling", 1.0)
    return {
        "embed": embed_std,
        "head": background / hidden**0.5,
        "final_norm": background / (embed_std * hidden**0.5) if config.tie_word_embeddings else 1.0,
        "out": write / getattr(config, "residual_multiplier", 1.0),
        "post_norm": write * gains["post_norm"],
    }


def _weight_std(name: str, shape: tuple[int, ...], family: Family, config, post_norms: bool) -> tuple[float, float]:
    """(mean, std) of one parameter's random values (the tied final norm's signs are drawn in random_weights)."""
    gains = {**GAINS, **family.gains}
    scales = _scales(family, config)
    shift = 1.0 if family.name.startswith("gemma") else 0.0  # Gemma's norms multiply by (1 + w)
    if name.endswith("norm.weight"):
        if post_norms and name.endswith(("post_attention_layernorm.weight", "post_feedforward_layernorm.weight")):
            base, noise = scales["post_norm"], scales["post_norm"] * gains["norm_noise"]
        elif name == "model.norm.weight":
            base, noise = scales["final_norm"], scales["final_norm"] * gains["norm_noise"]
        elif name.endswith(("q_norm.weight", "k_norm.weight")):
            base, noise = gains["qk"], gains["qk"] * gains["qk_norm_noise"]
        else:
            base, noise = 1.0, gains["norm_noise"]
        return base - shift, noise
    if name.endswith("e_score_correction_bias"):  # DeepSeek V3: added to the sigmoid scores for choosing only
        return 0.0, gains["score_bias"]
    if name.endswith(("o_proj.bias", "down_proj_bias")):  # biases written into the residual stream
        return 0.0, scales["out"]
    if name.endswith((".bias", "_bias")):
        return 0.0, gains["bias"]
    if name.endswith("self_attn.sinks"):
        return 0.0, gains["sinks"]
    if name.endswith(("experts.gate_up_proj", "experts.down_proj")) and not family.per_expert:  # (E, in, out)
        if name.endswith("gate_up_proj"):
            return 0.0, gains["expert_in"] / shape[-2] ** 0.5
        return 0.0, scales["out"] / gains["expert_in"] ** 2 / shape[-2] ** 0.5
    fan_in = shape[-1]
    if name == "model.embed_tokens.weight":
        return 0.0, scales["embed"]
    if name == "lm_head.weight":
        return 0.0, scales["head"]
    if family.expert_stacks and name.endswith(("experts.gate_up_proj", "experts.down_proj")):
        fan_in = shape[-2]  # Llama 4's stacks are (experts, in, out)
    routers = ("mlp.gate.weight", "mlp.router.weight", "feed_forward.router.weight")
    if name.endswith(routers):  # a MoE router: its logits have std ~ "router"
        return 0.0, gains["router"] / fan_in**0.5
    if any(k in name for k in ("q_proj", "k_proj", "qkv_proj")):
        return 0.0, gains["qk"] / fan_in**0.5
    if name.endswith("experts.down_proj"):  # DeepSeek scales the routed experts' sum: they write as a dense FFN
        return 0.0, scales["out"] / fan_in**0.5 / getattr(config, "routed_scaling_factor", 1.0)
    if any(k in name for k in ("o_proj", "down_proj")):
        return 0.0, scales["out"] / fan_in**0.5
    return 0.0, gains["other"] / fan_in**0.5


def random_weights(name: str, variant: str = "tiny") -> dict:
    """All weights of one family and variant as torch tensors in the family's dtype, from numpy's default_rng."""
    import torch

    family = FAMILIES[name]
    config = hf_config(name, variant)
    gains = {**GAINS, **family.gains}
    rng = np.random.default_rng(family.seed + VARIANTS.index(variant))
    shapes = parameter_shapes(config)
    post_norms = any("post_feedforward_layernorm" in n for n in shapes)  # Gemma, OLMo 2: a norm after each block
    shift = 1.0 if family.name.startswith("gemma") else 0.0
    tensors = {}
    for pname, shape in sorted(shapes.items()):
        mean, std = _weight_std(pname, shape, family, config, post_norms)
        values = mean + std * rng.standard_normal(shape, dtype=np.float32)
        if pname == "model.norm.weight" and config.tie_word_embeddings:
            # random signs: a tied head would otherwise score each token by its own embedding, predicting its input
            values = (values + shift) * np.sign(rng.standard_normal(shape, dtype=np.float32)) - shift
        if "qkv_proj" in pname:  # Phi-3's fused q, k, v: the v rows are an "other" projection
            head_dim = config.hidden_size // config.num_attention_heads
            values[(config.num_attention_heads + config.num_key_value_heads) * head_dim :] *= (
                gains["other"] / gains["qk"]
            )
        tensors[pname] = values
    _pair_tokens(tensors, family, config, rng)
    dtype = getattr(torch, family.dtype)
    tensors = _per_expert(tensors) if family.per_expert and not family.expert_stacks else tensors
    return {n: torch.from_numpy(v).to(dtype).contiguous() for n, v in tensors.items()}


def _per_expert(tensors: dict) -> dict:
    """transformers 5 keeps a MoE layer's experts as 3-D stacks (experts.gate_up_proj: gate rows then up rows,
    experts.down_proj); released checkpoints, and so these folders, store one matrix per expert
    (experts.E.gate_proj.weight, ...), which transformers converts at load."""
    out = {}
    for name, values in tensors.items():
        prefix = name.removesuffix("gate_up_proj").removesuffix("down_proj")
        if not name.endswith(("experts.gate_up_proj", "experts.down_proj")):
            out[name] = values
        elif name.endswith("gate_up_proj"):
            width = values.shape[1] // 2
            for e, stacked in enumerate(values):
                out[f"{prefix}{e}.gate_proj.weight"] = stacked[:width]
                out[f"{prefix}{e}.up_proj.weight"] = stacked[width:]
        else:
            out.update({f"{prefix}{e}.down_proj.weight": m for e, m in enumerate(values)})
    return out


def _pair_tokens(tensors: dict, family: Family, config, rng) -> None:
    """Give every token a partner that the head scores high after it (see GAINS), by a random pairing (a, b).

    Untied head: row b of the head leans towards embedding a, and row a towards embedding b, by rho. Tied head: the head
    is the embedding, so embedding b leans towards embedding a times the signs of the final norm weight g: then
    (g * e_a) . e_b = sum |g| e_a² stands out, while g's random signs cancel (g * e_a) . e_a. rho = partner /
    sqrt(hidden), at most 1: the partner's logit is ~rho * sqrt(hidden) background standard deviations.
    """
    gains = {**GAINS, **family.gains}
    scales = _scales(family, config)
    rho = min(1.0, gains["partner"] / config.hidden_size**0.5)
    embed = tensors["model.embed_tokens.weight"]
    a, b = rng.permutation(embed.shape[0])[: embed.shape[0] // 2 * 2].reshape(2, -1)
    if config.tie_word_embeddings:
        shift = 1.0 if family.name.startswith("gemma") else 0.0
        signs = np.sign(tensors["model.norm.weight"] + shift)
        embed[b] = signs * (rho * embed[a] + (1 - rho**2) ** 0.5 * embed[b])
    else:
        head = tensors["lm_head.weight"]
        for src, dst in ((a, b), (b, a)):
            head[dst] = rho * scales["head"] / scales["embed"] * embed[src] + (1 - rho**2) ** 0.5 * head[dst]


def _write_safetensors(tensors: dict, dest: Path, shards: int) -> None:
    """model.safetensors, or `shards` files of about equal size plus model.safetensors.index.json."""
    from safetensors.torch import save_file

    names = sorted(tensors)
    if shards == 1:
        save_file(tensors, dest / "model.safetensors", metadata={"format": "pt"})
        return
    sizes = np.cumsum([tensors[n].numel() * tensors[n].element_size() for n in names])
    bounds = [int(np.searchsorted(sizes, sizes[-1] * k / shards)) for k in range(1, shards)]
    groups = np.split(np.array(names), bounds)
    weight_map = {}
    for k, group in enumerate(groups, start=1):
        fname = f"model-{k:05d}-of-{shards:05d}.safetensors"
        save_file({n: tensors[n] for n in group}, dest / fname, metadata={"format": "pt"})
        weight_map.update({n: fname for n in group})
    index = {"metadata": {"total_size": int(sizes[-1])}, "weight_map": weight_map}
    _write_json(dest / "model.safetensors.index.json", index)


def _write_json(path: Path, obj) -> None:
    path.write_text(json.dumps(obj, indent=2, sort_keys=True, ensure_ascii=False) + "\n", encoding="utf-8")


def build_hf_folder(name: str, dest: str | Path, variant: str = "tiny") -> Path:
    """Write the complete HF model folder of one family (see FAMILIES) into dest; return dest."""
    if variant not in VARIANTS:
        raise ValueError(f"variant must be one of {VARIANTS}, not {variant!r}")
    family = FAMILIES[name]
    dest = Path(dest)
    dest.mkdir(parents=True, exist_ok=True)
    config = hf_config(name, variant)
    _write_json(dest / "config.json", _config_json(config))
    _write_json(dest / "generation_config.json", _generation_config(family))
    _write_json(dest / "tokenizer.json", _tokenizer_json(family.tokenizer))
    _write_json(dest / "tokenizer_config.json", _tokenizer_config(family.tokenizer))
    if family.tokenizer.kind == "spm":
        (dest / "tokenizer.model").write_bytes(_spm_model(family.tokenizer))
    _write_safetensors(random_weights(name, variant), dest, family.shards)
    return dest


def sha256_files(folder: str | Path) -> dict[str, str]:
    """sha256 of every file in a folder (not recursive), by file name."""
    folder = Path(folder)
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(folder.iterdir()) if p.is_file()}


def encode(folder: str | Path, text: str) -> list[int]:
    """Token ids of text by the folder's tokenizer.json (special-token text parsed, BOS added if the model adds it)."""
    from tokenizers import Tokenizer as HfTokenizer

    return HfTokenizer.from_file(str(Path(folder) / "tokenizer.json")).encode(text).ids


def use_llamacpp_gelu(model) -> None:
    """Make a transformers Gemma model's tanh-GELU compute as ggml's CPU kernel does (GGML_GELU_FP16 in
    ggml-cpu/vec.h): the input rounded to fp16, the result read from a table of fp16 values, exact outside
    [-10, 10]. llama.cpp's f32 Gemma logits differ from an exact float32 forward by ~1e-3 because of it."""
    import torch

    class Fp16TableGelu(torch.nn.Module):
        def forward(self, x):
            x16 = x.to(torch.float16).to(torch.float32)
            y = 0.5 * x16 * (1.0 + torch.tanh(0.7978845608028654 * x16 * (1.0 + 0.044715 * x16 * x16)))
            y = y.to(torch.float16).to(torch.float32)
            return torch.where(x <= -10.0, torch.zeros_like(x), torch.where(x >= 10.0, x, y))

    for layer in model.model.layers:
        layer.mlp.act_fn = Fp16TableGelu()
