"""Constrained decoding: a grammar says which tokens may come next, so the output is valid by construction.

Before each sample, the sequence's `Constraint` sets the logit of every token the grammar cannot accept
next to -inf; after it, the sampled token advances the grammar. Every sampler works unchanged on the masked
logits (greedy, top-k/p, min-p, temperature, penalties: a -inf logit stays -inf, its probability 0). The
end-of-generation tokens are allowed only where the grammar may end, and once it must end they are the only
tokens allowed, so a JSON answer always closes.

What a grammar can be (`Grammar`):
- a JSON schema (`Grammar.json_schema(schema)`: nested objects, arrays, enums, numbers with bounds,
  required/optional properties, `$ref`/`$defs`, patterns, anyOf/oneOf...), or "any JSON object";
- a regular expression (`Grammar.regex`), the whole output matching it;
- a Lark grammar (`Grammar.lark`), or a llama.cpp GBNF grammar (`Grammar.gbnf`, converted to Lark).

A schema or grammar that is wrong or uses what cannot be enforced (`not`, `if`/`then`, an unknown type,
a `$ref` to nothing) is a `GrammarError` naming the problem, before anything is generated: an unenforced
keyword would turn the guarantee back into a hope.

The grammar -> token-mask part is llguidance (the library llama.cpp's server uses). It was measured against
xgrammar (vLLM's and SGLang's) on this project's models, a 4-property nested schema, 2026-12-07, 2-core
Zen 4: a mask takes 0.06 ms (SmolLM2's 49k vocabulary) and 0.10 ms (Gemma 3's 262k) with llguidance,
0.005 / 0.012 ms with xgrammar; compiling a schema 1.5 ms / 9-40 ms; building the tokenizer's index once per
model 0.15 s / 1.0 s vs 0.02 / 0.13 s. Both are far below a decode step (9 ms at the default model), so speed
does not decide; llguidance does: it has no dependencies (xgrammar requires transformers and triton, about
1 GB, in every install), it is what llama.cpp uses (the same grammars mean the same thing), it takes Lark,
GBNF, regex and JSON schema, and it names unsupported schema keywords instead of ignoring them.

`TriggeredConstraint` is the lazy form tool calling needs with `tool_choice: auto`: the model writes freely
until it writes a call's opening marker (`<tool_call>`), and from there the call's body is constrained to a
tool's parameter schema, until the call closes; then it is free again (more text, or another call).
"""

from __future__ import annotations

import json
import logging
import threading
import weakref
from dataclasses import dataclass

import numpy as np
import torch

from pellucid.errors import PellucidError

log = logging.getLogger("pellucid.constrain")

GRAMMAR_KINDS = ("json_schema", "regex", "lark", "gbnf")
# JSON is written as Python's json.dumps writes it, `{"a": 1, "b": [2, 3]}`: one fixed form (no free
# whitespace, where a small model can wander into newlines forever) and the one models have seen most.
JSON_STYLE = {"item_separator": ", ", "key_separator": ": ", "whitespace_flexible": False}


class GrammarError(PellucidError, ValueError):
    """A JSON schema, regex or grammar that is malformed or asks for what cannot be enforced."""


def _llguidance():
    try:
        import llguidance
    except ImportError as e:  # a dependency of pellucid; only a broken install lacks it
        raise PellucidError(
            "constrained decoding needs the llguidance package: pip install llguidance (a pellucid dependency)"
        ) from e
    return llguidance


@dataclass(frozen=True)
class Grammar:
    """What the output must match: `kind` is one of GRAMMAR_KINDS, `source` its text (a schema as JSON)."""

    kind: str
    source: str
    lenient: bool = False  # a JSON schema's keywords that cannot be enforced are left out instead of refused

    def __post_init__(self) -> None:
        if self.kind not in GRAMMAR_KINDS:
            raise GrammarError(f"unknown grammar kind {self.kind!r}; one of: {', '.join(GRAMMAR_KINDS)}")
        if not isinstance(self.source, str) or not self.source.strip():
            raise GrammarError(f"the {self.kind} grammar is empty")

    @staticmethod
    def json_schema(schema: dict | bool | str, *, lenient: bool = False) -> Grammar:
        """A JSON value valid against `schema` (a dict, true, or its JSON text). `lenient`: keywords llguidance
        cannot enforce (`propertyNames`, `not`, `if`/`then`) are left out, so the output is valid against the
        rest of the schema only; without it they are a GrammarError."""
        if isinstance(schema, str):
            try:
                schema = json.loads(schema)
            except json.JSONDecodeError as e:
                raise GrammarError(f"the JSON schema is not valid JSON: {e}") from None
        if not isinstance(schema, (dict, bool)):
            raise GrammarError(f"a JSON schema must be an object (or true), got {type(schema).__name__}")
        return Grammar("json_schema", json.dumps(schema), lenient)

    @staticmethod
    def any_json_object() -> Grammar:
        """Any JSON object (OpenAI's response_format json_object)."""
        return Grammar.json_schema({"type": "object"})

    @staticmethod
    def regex(pattern: str) -> Grammar:
        return Grammar("regex", pattern)

    @staticmethod
    def lark(text: str) -> Grammar:
        return Grammar("lark", text)

    @staticmethod
    def gbnf(text: str) -> Grammar:
        return Grammar("gbnf", text)

    @staticmethod
    def from_grammar_text(text: str) -> Grammar:
        """A grammar file's text: GBNF when it defines rules with `::=` (llama.cpp's grammars/), else Lark."""
        return Grammar.gbnf(text) if "::=" in text else Grammar.lark(text)

    def compile(self) -> str:
        """llguidance's form of this grammar, checked; a GrammarError says what is wrong."""
        llg = _llguidance()
        matcher = llg.LLMatcher
        try:
            if self.kind == "json_schema":
                spec = matcher.grammar_from_json_schema(self.source, defaults={**JSON_STYLE, "lenient": self.lenient})
            elif self.kind == "regex":
                spec = matcher.grammar_from_regex(self.source)
            elif self.kind == "lark":
                spec = matcher.grammar_from_lark(self.source)
            else:
                from llguidance.gbnf_to_lark import any_to_lark

                spec = matcher.grammar_from_lark(any_to_lark(self.source))
        except Exception as e:  # llguidance raises ValueError, its GBNF converter anything
            raise GrammarError(f"the {self._what()} could not be read: {e}") from None
        is_error, messages = matcher.validate_grammar_with_warnings(spec)
        if is_error:
            raise GrammarError(f"the {self._what()} cannot be enforced: {_first_line(messages[0])}")
        return spec

    def _what(self) -> str:
        return {
            "json_schema": "JSON schema",
            "regex": "regular expression",
            "gbnf": "GBNF grammar",
            "lark": "Lark grammar",
        }[self.kind]


def _first_line(message: str) -> str:
    lines = [line for line in message.strip().splitlines() if line.strip()]
    return " / ".join(lines[:3])


# ---------------------------------------------------------------------------------------------------------
# The tokenizer, as llguidance sees it: each token's bytes, built once per tokenizer (0.15-1 s).

_LL_TOKENIZERS: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()
_LL_LOCK = threading.Lock()


def ll_tokenizer(tokenizer):
    """llguidance's LLTokenizer for one of our tokenizers (cached while the tokenizer lives)."""
    with _LL_LOCK:
        found = _LL_TOKENIZERS.get(tokenizer)
        if found is None:
            found = _build_ll_tokenizer(tokenizer)
            _LL_TOKENIZERS[tokenizer] = found
        return found


class _TokenizerView:
    """What llguidance's TokenizerWrapper reads: the byte string of every token (a special token's text
    prefixed with 0xff, so grammars can name it as <|im_end|> but plain text can never spell it), and an
    encoder for text it has to tokenize itself (forced bytes)."""

    def __init__(self, tokenizer):
        special = [i for i in range(tokenizer.vocab_size) if tokenizer.is_special(i)]
        marked = set(special)
        self.tokens = [
            (b"\xff" + tokenizer.token_bytes(i)) if i in marked else tokenizer.token_bytes(i)
            for i in range(tokenizer.vocab_size)
        ]
        self.special_token_ids = special
        self.eos_token_id = min(tokenizer.eot_ids) if tokenizer.eot_ids else tokenizer.eos_id
        self.bos_token_id = tokenizer.bos_id
        self._tokenizer = tokenizer

    def __call__(self, text) -> list[int]:
        if isinstance(text, bytes):
            text = text.decode("utf-8", errors="replace")
        return self._tokenizer.encode(text, add_special=False, parse_special=False)


def _build_ll_tokenizer(tokenizer):
    llg = _llguidance()
    eos = sorted(tokenizer.eot_ids) or ([tokenizer.eos_id] if tokenizer.eos_id is not None else [])
    return llg.LLTokenizer(llg.TokenizerWrapper(_TokenizerView(tokenizer)), eos_token=eos)


# ---------------------------------------------------------------------------------------------------------
# One sequence's grammar state.


class Constraint:
    """A grammar's state for one sequence: `mask(logits)` before each sample, `accept(token)` after it."""

    def __init__(self, grammar: Grammar | str, tokenizer):
        llg = _llguidance()
        spec = grammar.compile() if isinstance(grammar, Grammar) else grammar
        self.tokenizer = tokenizer
        self._matcher = llg.LLMatcher(ll_tokenizer(tokenizer), spec, log_level=0)
        if self._matcher.is_error():
            raise GrammarError(f"the grammar cannot be enforced: {_first_line(self._matcher.get_error())}")
        self._bits = torch.zeros((tokenizer.vocab_size + 31) // 32, dtype=torch.int32)
        self.failed = False  # a token the grammar refused was fed (it cannot happen through mask())

    @property
    def finished(self) -> bool:
        """The grammar is complete and nothing may follow: only an end-of-generation token is allowed."""
        return self._matcher.is_stopped()

    @property
    def accepting(self) -> bool:
        """The text so far is a whole match (the output may end here)."""
        return self._matcher.is_accepting()

    def allowed(self) -> torch.Tensor:
        """(vocab,) bool: the tokens the grammar accepts next."""
        self._matcher.unsafe_compute_mask_ptr(self._bits.data_ptr(), self._bits.numel() * 4)
        bits = np.unpackbits(self._bits.numpy().view(np.uint8), bitorder="little")
        return torch.from_numpy(bits[: self.tokenizer.vocab_size].view(np.bool_))

    def mask(self, logits: torch.Tensor) -> torch.Tensor:
        """`logits` (vocab,) with every token the grammar refuses next at -inf (a new tensor).

        On the CPU this is numpy on one thread (~30 us at 49k tokens): the same few element-wise torch ops go
        through the intra-op thread pool, which costs 0.2 ms on a quiet machine and 5-15 ms on a busy one."""
        allowed = self.allowed().numpy()
        n = min(len(allowed), logits.shape[-1])  # the model's head may be padded past the tokenizer's vocab
        if logits.device.type == "cpu" and logits.dtype == torch.float32:
            out = logits.detach().numpy().copy()
            out[:n][~allowed[:n]] = -np.inf
            out[n:] = -np.inf
            return torch.from_numpy(out)
        keep = torch.zeros(logits.shape[-1], dtype=torch.bool)
        keep[:n] = torch.from_numpy(allowed[:n])
        return logits.masked_fill(~keep.to(logits.device), float("-inf"))

    def accept(self, token: int) -> None:
        if not self._matcher.consume_token(int(token)):
            if not self.failed:
                log.warning("the grammar refused token %d: %s", token, self._matcher.get_error())
            self.failed = True

    def feed_text(self, text: str) -> bool:
        """Advance past `text` written outside the mask (tokenized here); False if the grammar refuses it."""
        ids = self.tokenizer.encode(text, add_special=False, parse_special=False)
        taken = self._matcher.try_consume_tokens(ids)
        return taken == len(ids)


class TriggeredConstraint:
    """Free text until `trigger` appears in the output; then `body` (a grammar for what follows the trigger,
    through the call's closing marker) is enforced until it is complete, and the text is free again."""

    def __init__(self, trigger: str, body: Grammar | str, tokenizer):
        self.trigger = trigger.encode()
        self.tokenizer = tokenizer
        self._spec = body.compile() if isinstance(body, Grammar) else body
        Constraint(self._spec, tokenizer)  # check it now: a bad grammar is the request's error, not a step's
        self._active: Constraint | None = None
        self._tail = b""  # the last bytes generated while free, to spot the trigger across tokens
        self.failed = False
        self.calls_constrained = 0

    @property
    def finished(self) -> bool:
        return False  # free text may always go on

    @property
    def active(self) -> bool:
        return self._active is not None

    def mask(self, logits: torch.Tensor) -> torch.Tensor:
        return logits if self._active is None else self._active.mask(logits)

    def accept(self, token: int) -> None:
        if self._active is not None:
            self._active.accept(token)
            if self._active.finished or self._active.failed:
                self._active = None  # the call is closed: free text again
                self._tail = b""
            return
        self._tail = (self._tail + self.tokenizer.token_bytes(int(token)))[-(len(self.trigger) + 64) :]
        at = self._tail.find(self.trigger)
        if at < 0:
            return
        rest = self._tail[at + len(self.trigger) :].decode("utf-8", errors="ignore")
        body = Constraint(self._spec, self.tokenizer)
        if rest and not body.feed_text(rest):
            log.warning("a tool call began mid-token (%r after the marker); that call is not constrained", rest)
            self._tail = b""
            return
        self._active = body
        self.calls_constrained += 1


def constraint_for(grammar: Grammar | None, tokenizer) -> Constraint | None:
    """A fresh Constraint for `grammar`, or None when there is no grammar."""
    return None if grammar is None else Constraint(grammar, tokenizer)


__all__ = [
    "GRAMMAR_KINDS",
    "Constraint",
    "Grammar",
    "GrammarError",
    "TriggeredConstraint",
    "constraint_for",
    "ll_tokenizer",
]
