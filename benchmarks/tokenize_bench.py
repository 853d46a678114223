"""Tokenizer speed: construction time and encode throughput (MB/s of UTF-8 input) for the default models.

English text: Python's own documentation as shipped with every Python (the `pydoc_data.topics` module,
about 0.47 MB of prose and code examples, PSF licence), so the benchmark runs offline and the same anywhere.

    .venv/bin/python benchmarks/tokenize_bench.py [MODEL ...]      # default: smollm2-135m gemma3-270m

For each model it reports:
  open       opening the GGUF file (header and metadata parse; not the tokenizer's cost)
  build      constructing the tokenizer from the open file
  first      the first encode of the whole text (includes lazy set-up: regex compilation, lookup tables,
             and filling the word cache from empty)
  warm       encoding the whole text again (word cache filled)
  per-para   encoding paragraph by paragraph (many short calls, as a chat server does)
"""

from __future__ import annotations

import sys
import time


def english_text() -> str:
    import pydoc_data.topics

    topics = pydoc_data.topics.topics
    return "\n\n".join(topics[k] for k in sorted(topics))


def bench(model: str, text: str) -> None:
    from pellucid import store
    from pellucid.formats.gguf import GGUFFile
    from pellucid.tokenizer import load_tokenizer

    path = store.resolve(model).path
    mb = len(text.encode("utf-8")) / 1e6
    paragraphs = text.split("\n\n")

    t0 = time.perf_counter()
    gguf = GGUFFile(path) if path.is_file() else None
    t1 = time.perf_counter()
    tok = load_tokenizer(gguf if gguf is not None else path)
    t2 = time.perf_counter()
    ids = tok.encode(text)
    t3 = time.perf_counter()
    tok.encode(text)
    t4 = time.perf_counter()
    n_para = sum(len(tok.encode(p)) for p in paragraphs)
    t5 = time.perf_counter()
    if gguf is not None:
        gguf.close()

    print(
        f"{model:14s} {tok.kind:5s} vocab {tok.vocab_size:>7,}  open {1e3 * (t1 - t0):6.1f} ms  "
        f"build {1e3 * (t2 - t1):6.1f} ms  first {mb / (t3 - t2):5.2f} MB/s  warm {mb / (t4 - t3):5.2f} MB/s  "
        f"per-para {mb / (t5 - t4):5.2f} MB/s  ({len(ids):,} tokens, {n_para:,} in paragraphs)"
    )


def main(argv: list[str]) -> None:
    text = english_text()
    print(f"text: pydoc_data.topics, {len(text.encode('utf-8')) / 1e6:.2f} MB, Python {sys.version.split()[0]}")
    for model in argv or ["smollm2-135m", "gemma3-270m"]:
        bench(model, text)


if __name__ == "__main__":
    main(sys.argv[1:])
