"""Pre-tokenizers for byte-level BPE: split text into words before merges, as llama.cpp does for each
`tokenizer.ggml.pre` name.

llama.cpp (src/llama-vocab.cpp, src/unicode.cpp) gives each pre-tokenizer a list of regexes applied in turn:
the first splits the text into chunks (matches and the gaps between them both become chunks), the next splits
every chunk again, and so on; a word never crosses a chunk boundary, and a lookahead at the end of a chunk
sees the end of the text. The classes `\\p{L}`, `\\p{N}`, `\\s` ... mean Unicode categories there (decided
by llama.cpp's own table, reproduced in unicode_data.py), so each regex is translated into Python `re` syntax
with those categories spelled out as code point ranges.

Unassigned code points count as "other" (neither letter, number nor whitespace), as in llama.cpp's table.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from functools import cache

from pellucid.errors import UnsupportedError
from pellucid.tokenizer.unicode_data import RANGES

# Unicode's White_Space property: what llama.cpp's `\s` matches (its std::regex path maps non-ASCII
# whitespace to \v first, so both of its regex engines agree on this set). Not Python's str.isspace(),
# which also counts \x1c-\x1f.
WHITESPACE = "\t\n\v\f\r \x85\xa0\u1680\u2000-\u200a\u2028\u2029\u202f\u205f\u3000"

GPT2 = r"'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)"
LLAMA3 = (
    r"(?:'[sS]|'[tT]|'[rR][eE]|'[vV][eE]|'[mM]|'[lL][lL]|'[dD])|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}"
    r"| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"
)
QWEN2 = (
    r"(?:'[sS]|'[tT]|'[rR][eE]|'[vV][eE]|'[mM]|'[lL][lL]|'[dD])|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}"
    r"| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"
)
# Kimi K2: llama.cpp's table lists only `\p{Han}+`, the text by which unicode.cpp recognizes the pre-tokenizer
# and runs a hand-written matcher (unicode_regex_split_custom_kimi_k2) for the whole of K2's tiktoken regex.
KIMI_K2 = r"\p{Han}+"
# The regex that matcher implements. Not K2's own: the matcher makes no case distinction (K2 splits
# "HelloWorld" at the capital; llama.cpp does not) and takes no combining marks into words, and its Han is the
# CJK ideograph blocks (assigned or not), `\p{Han}` below.
_KIMI_K2_MATCHER = (
    r"\p{Han}+|[^\r\n\p{L}\p{N}]?(?:(?!\p{Han})\p{L})+(?:'[sStTmMdD]|'[rR][eE]|'[vV][eE]|'[lL][lL])?"
    r"|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"
)
# llama.cpp runs the GPT-2, Llama 3 and Kimi K2 regexes (recognized by their exact text) with hand-written
# matchers. These are the regexes those matchers implement: GPT-2's also takes lone whitespace (`\s+`), and the
# final `(?s:.)` is never reached but guarantees that findall() cannot silently drop a character.
_MATCHERS = {
    GPT2: GPT2 + r"|\s+|(?s:.)",
    LLAMA3: LLAMA3 + "|(?s:.)",
    KIMI_K2: _KIMI_K2_MATCHER + "|(?s:.)",
}
# What unicode_cpt_is_han counts as Han: the CJK Unified Ideographs and their extensions A-F, and the
# compatibility ideographs (code point ranges, hexadecimal)
_HAN = "4E00-9FFF 3400-4DBF 20000-2A6DF 2A700-2B73F 2B740-2B81F 2B820-2CEAF 2CEB0-2EBEF F900-FAFF 2F800-2FA1F"


@dataclass(frozen=True)
class PreTokenizer:
    """How one `tokenizer.ggml.pre` family splits text, plus the vocab flags llama.cpp ties to it."""

    names: tuple[str, ...]
    regexes: tuple[str, ...]
    clean_spaces: bool = True  # detokenize removes the space before . , ! ? and some contractions
    ignore_merges: bool = False  # a word that is itself a token skips the merges
    add_bos: bool | None = None  # the family's default when the file does not say
    no_bos: bool = False  # the family has no BOS token at all


_CONTRACTIONS = r"(?:'[sS]|'[tT]|'[rR][eE]|'[vV][eE]|'[mM]|'[lL][lL]|'[dD])"
_CJK_KANA = r"[\u4E00-\u9FA5\u3040-\u309F\u30A0-\u30FF]+"
_DEEPSEEK3 = (
    r"[!\"#$%&'()*+,\-./:;<=>?@\[\\\]^_`{|}~][A-Za-z]+|[^\r\n\p{L}\p{P}\p{S}]?[\p{L}\p{M}]+"
    r"| ?[\p{P}\p{S}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"
)
_GPT4O = (
    r"[^\r\n\p{L}\p{N}]?((?=[\p{L}])([^a-z]))*((?=[\p{L}])([^A-Z]))+" + _CONTRACTIONS + r"?"
    r"|[^\r\n\p{L}\p{N}]?((?=[\p{L}])([^a-z]))+((?=[\p{L}])([^A-Z]))*" + _CONTRACTIONS + r"?"
    r"|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n/]*|\s*[\r\n]+|\s+(?!\S)|\s+"
)
_TEKKEN = (
    r"[^\r\n\p{L}\p{N}]?((?=[\p{L}])([^a-z]))*((?=[\p{L}])([^A-Z]))+"
    r"|[^\r\n\p{L}\p{N}]?((?=[\p{L}])([^a-z]))+((?=[\p{L}])([^A-Z]))*"
    r"|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n/]*|\s*[\r\n]+|\s+(?!\S)|\s+"
)
_PORO = r" ?[^(\s|.,!?\u2026\u3002\uFF0C\u3001\u0964\u06D4\u060C)]+"

# The name lists and flags follow llama_vocab::impl::load (llama.cpp as vendored by llama-cpp-python 0.3.36).
# Left out (loading them raises UnsupportedError): pre-tokenizers that need code beyond regexes (afmoe,
# gemma4, whitespace, ...); deepseek-llm, whose regex spells out letters by hand; tiny_aya/cohere2moe, whose
# digit-grouping regex never matches in llama.cpp's std::regex build (so reproducing it means reproducing that).
_FAMILIES = [
    PreTokenizer(("default",), (r"[\p{P}\$\+<=>\^~\|]+", GPT2, r"\p{N}+", r"[0-9][0-9][0-9]")),
    PreTokenizer(
        ("llama3", "llama-v3", "llama-bpe", "falcon3", "falcon-h1", "pixtral", "midm-2.0", "lfm2", "jina-v5-nano"),
        (LLAMA3,),
        ignore_merges=True,
        add_bos=True,
    ),
    PreTokenizer(("dbrx", "smaug-bpe"), (LLAMA3,)),
    PreTokenizer(("chatglm-bpe",), (LLAMA3,), no_bos=True),
    PreTokenizer(("glm4", "glm5"), (LLAMA3,), ignore_merges=True, no_bos=True),
    PreTokenizer(
        ("deepseek-coder",),
        ("[\r\n]", r"\s?\p{L}+", r"\s?\p{P}+", r"[\u4E00-\u9FA5\u0800-\u4E00\uAC00-\uD7FF]+", r"\p{N}"),
        clean_spaces=False,
    ),
    PreTokenizer(
        ("deepseek-v3", "hunyuan-dense", "hy_v4", "joyai-llm"),
        (r"\p{N}{1,3}", _CJK_KANA, _DEEPSEEK3),
        clean_spaces=False,
    ),
    PreTokenizer(("falcon",), (r"[\p{P}\$\+<=>\^~\|`]+", GPT2, "[0-9][0-9][0-9]")),
    PreTokenizer(("starcoder", "refact", "codeshell", "exaone", "minerva-7b", "mellum2"), (r"\p{N}", GPT2)),
    PreTokenizer(("smollm", "command-r"), (r"\p{N}", GPT2), clean_spaces=False),
    PreTokenizer(
        ("gpt-2", "phi-2", "jina-es", "jina-de", "gigachat", "jina-v2-es", "jina-v2-de", "a.x-4.0", "mellum")
        + ("modern-bert", "jina-v1-en", "jina-v2-code", "roberta-bpe", "mpt", "olmo", "jais", "exaone4"),
        (GPT2,),
    ),
    PreTokenizer(("trillion", "granite-docling"), (GPT2,), clean_spaces=False),
    PreTokenizer(("stablelm2", "megrez"), (QWEN2,)),
    PreTokenizer(
        ("qwen2", "deepseek-r1-qwen", "kormo", "f2llmv2", "hunyuan", "solar-open", "grok-2"),
        (QWEN2,),
        clean_spaces=False,
    ),
    PreTokenizer(
        ("qwen35",),
        (
            _CONTRACTIONS + r"|[^\r\n\p{L}\p{N}]?[\p{L}\p{M}]+|\p{N}| ?[^\s\p{L}\p{M}\p{N}]+[\r\n]*|\s*[\r\n]+"
            r"|\s+(?!\S)|\s+",
        ),
        clean_spaces=False,
    ),
    PreTokenizer(
        ("minicpm5",),
        (
            r"\p{N}{1,3}",
            _CONTRACTIONS + r"|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}+| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+",
        ),
        ignore_merges=True,
    ),
    PreTokenizer(("poro-chat",), (_PORO,), clean_spaces=False),
    PreTokenizer(("bloom", "gpt3-finnish"), (_PORO,)),
    PreTokenizer(("viking",), (_PORO, r"\p{N}"), clean_spaces=False),
    PreTokenizer(("tekken",), (_TEKKEN,), clean_spaces=False, ignore_merges=True, add_bos=True),
    PreTokenizer(("gpt-4o", "llama4", "kanana2", "talkie"), (_GPT4O,), clean_spaces=False),
    PreTokenizer(
        ("seed-coder",),
        (_CONTRACTIONS + r"|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1}| ?[^\s\p{L}\p{N}\r\n]+|\s*[\r\n]+|\s+(?!\S)|\s+",),
        clean_spaces=False,
    ),
    PreTokenizer(
        ("bailingmoe", "bailingmoe2", "llada-moe"),
        (
            r"'(?:[sSdDmMtT]|[lL][lL]|[vV][eE]|[rR][eE])|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*"
            r"|\s*[\r\n]|\s+(?!\S)|\s+",
        ),
        clean_spaces=False,
    ),
    PreTokenizer(
        ("ufakzeka",),
        (r"[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+",),
        clean_spaces=False,
    ),
    PreTokenizer(("superbpe",), (r"\p{N}+", r"(?=(\d{3})+(?!\d))"), clean_spaces=False),
    PreTokenizer(("kimi-k2",), (KIMI_K2,), clean_spaces=False),
]

PRE_TOKENIZERS: dict[str, PreTokenizer] = {name: family for family in _FAMILIES for name in family.names}


# -- translating llama.cpp regexes into Python `re` ------------------------------------------------------


_ASTRAL = r"\U00010000-\U0010FFFF"  # code points above the Basic Multilingual Plane


@cache
def _category_ranges(group: str, ascii_only: bool = False) -> tuple[str, str]:
    """Class bodies (no brackets) for one llama.cpp category group: (BMP part, astral part)."""
    bmp, astral = [], []
    for item in (_HAN if group == "Han" else "".join(RANGES[group])).split():
        first, _, last = item.partition("-")
        lo, hi = int(first, 16), int(last or first, 16)
        if ascii_only:
            if lo < 0x80:
                bmp.append(_class_range(lo, min(hi, 0x7F)))
            continue
        if lo <= 0xFFFF:
            bmp.append(_class_range(lo, min(hi, 0xFFFF)))
        if hi > 0xFFFF:
            astral.append(_class_range(max(lo, 0x10000), hi))
    return "".join(bmp), "".join(astral)


def _class_range(lo: int, hi: int) -> str:
    return _escape_cp(lo) if lo == hi else f"{_escape_cp(lo)}-{_escape_cp(hi)}"


def _escape_cp(cp: int) -> str:
    return f"\\U{cp:08X}" if cp > 0xFFFF else f"\\u{cp:04X}"


def _char_class(literal: str, groups: list[str], negated: bool, ascii_only: bool) -> str:
    """A character class of literal items plus category groups, laid out so `re` tests it quickly.

    Python's `re` turns the BMP part of a class into a fast lookup table but checks astral ranges one by one,
    and every character that misses the table pays for that scan. So astral ranges get their own branch,
    entered only by astral characters.
    """
    bmp = literal + "".join(_category_ranges(g, ascii_only)[0] for g in groups)
    astral = "".join(_category_ranges(g, ascii_only)[1] for g in groups)
    if not bmp and not astral:  # a class with nothing in it (Han in the ASCII-only regex)
        return "(?s:.)" if negated else "(?!)"
    if not astral:
        return f"[^{bmp}]" if negated else f"[{bmp}]"
    if negated:
        return f"(?:[^{bmp}{_ASTRAL}]|(?![{astral}])[{_ASTRAL}])"
    return f"(?:[{bmp}]|(?=[{_ASTRAL}])[{astral}])"


_CLASS_OF = {"L": "L", "Lu": "L", "Ll": "L", "Lt": "L", "Lm": "L", "Lo": "L", "N": "N", "P": "P", "S": "S", "M": "M"}
_CLASS_OF["Han"] = "Han"  # not a category: llama.cpp's unicode_cpt_is_han (_HAN)
_TOKEN = re.compile(r"\\p\{(\w+)\}|\\.|.", re.DOTALL)


def translate(regex: str, *, ascii_only: bool = False) -> str:
    """Rewrite a llama.cpp pre-tokenizer regex in Python `re` syntax with explicit Unicode classes.

    llama.cpp collapses every code point to its category before std::regex sees it, so `\\p{L}` means "any
    letter" (its `\\p{Lu}`, `\\p{Ll}` ... too), `\\s` means Unicode White_Space, and `\\d` only ASCII digits.
    `ascii_only=True` gives a regex that behaves the same on ASCII text, with small classes that match faster.
    """
    out: list[str] = []
    klass: tuple[list[str], list[str], bool] | None = None  # (literal items, groups, negated) inside [...]
    for m in _TOKEN.finditer(regex):
        tok = m.group(0)
        group = None
        if m.group(1) is not None:
            group = _CLASS_OF.get(m.group(1))
            if group is None:
                raise UnsupportedError(f"pre-tokenizer regex uses {tok}, a Unicode class pellucid does not know")
        if klass is not None:  # inside [...]
            literal, groups, negated = klass
            if tok == "^" and not literal and not groups and not negated and regex[m.start() - 1] == "[":
                klass = (literal, groups, True)
            elif tok == "]":
                out.append(_char_class("".join(literal), groups, negated, ascii_only))
                klass = None
            elif group is not None:
                groups.append(group)
            elif tok == r"\s":
                literal.append(WHITESPACE)
            elif tok == r"\d":
                literal.append("0-9")
            elif tok == r"\S":
                raise UnsupportedError(r"pre-tokenizer regex uses \S inside a character class")
            else:
                literal.append(tok)
        elif tok == "[":
            klass = ([], [], False)
        elif group is not None:
            out.append(_char_class("", [group], False, ascii_only))
        elif tok == r"\s":
            out.append(f"[{WHITESPACE}]")
        elif tok == r"\S":
            out.append(f"[^{WHITESPACE}]")
        elif tok == r"\d":
            out.append("[0-9]")
        elif tok == "$":
            out.append(r"\Z")  # Python's $ would also match before a final newline
        elif tok == r"\b":
            out.append(r"(?a:\b)")  # std::regex's word characters are ASCII-only
        else:
            out.append(tok)
    return "".join(out)


# llama.cpp matches regexes without `\p{..}` against the raw code points, but with non-ASCII whitespace
# replaced by \v first (std::wregex's \s would miss it), so such whitespace never matches a literal range.
_NON_ASCII_WHITESPACE = (0x85, 0xA0, 0x1680, *range(0x2000, 0x200B), 0x2028, 0x2029, 0x202F, 0x205F, 0x3000)
_WHITESPACE_TO_VT = str.maketrans(dict.fromkeys(_NON_ASCII_WHITESPACE, "\v"))


@dataclass
class CompiledPreTokenizer:
    """A pre-tokenizer's regexes, compiled twice: for any text, and (faster) for ASCII-only text."""

    patterns: list[re.Pattern]
    ascii_patterns: list[re.Pattern]
    on_vt_text: list[bool]  # run this pattern on the text with non-ASCII whitespace turned into \v
    total_last: bool  # the last pattern matches every character, so findall() loses nothing

    def split(self, text: str) -> list[str]:
        """The words of `text`, in order; joined, they give `text` back."""
        is_ascii = text.isascii()
        patterns = self.ascii_patterns if is_ascii else self.patterns
        vt_text = text if is_ascii or not any(self.on_vt_text) else text.translate(_WHITESPACE_TO_VT)
        spans = [(0, len(text))]
        for pattern, on_vt in zip(patterns[:-1], self.on_vt_text):
            spans = _split_spans(pattern, vt_text if on_vt else text, spans)
        last = patterns[-1]
        if not self.total_last:
            return [text[s:e] for s, e in _split_spans(last, vt_text if self.on_vt_text[-1] else text, spans)]
        if len(spans) == 1:
            return last.findall(text)
        words: list[str] = []
        for start, end in spans:
            words += last.findall(text, start, end)
        return words


def _split_spans(pattern: re.Pattern, text: str, spans: list[tuple[int, int]]) -> list[tuple[int, int]]:
    """llama.cpp's unicode_regex_split step: matches and the gaps between them both become spans."""
    out = []
    for start, end in spans:
        pos = start
        for m in pattern.finditer(text, start, end):
            if m.start() > pos:
                out.append((pos, m.start()))
            if m.end() > m.start():
                out.append((m.start(), m.end()))
            pos = m.end()
        if pos < end:
            out.append((pos, end))
    return out


@cache
def compile_pre_tokenizer(regexes: tuple[str, ...]) -> CompiledPreTokenizer:
    """Compile (once per process) a pre-tokenizer's regexes; takes tens of milliseconds."""
    exprs = [_MATCHERS.get(regex, regex) for regex in regexes]
    return CompiledPreTokenizer(
        patterns=[re.compile(translate(e)) for e in exprs],
        ascii_patterns=[re.compile(translate(e, ascii_only=True)) for e in exprs],
        on_vt_text=["\\p{" not in e for e in exprs],
        total_last=regexes[-1] in _MATCHERS,
    )
