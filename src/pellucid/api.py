"""The Python API: `pellucid.load(MODEL)` and the `LLM` it returns.

    import pellucid
    llm = pellucid.load("smollm2-135m")
    for chunk in llm.chat([{"role": "user", "content": "Hi!"}], temperature=0):
        print(chunk.text, end="", flush=True)
    print(chunk.stats.summary())

`generate(prompt)` completes raw text; `chat(messages)` renders the model's chat template first. Both return
a `Generation`: iterate it to stream `Chunk`s (text + token ids), or call `.result()` to wait for the whole
text; `.stats` holds token counts, time to first token, prefill and decode tok/s and why it stopped.

An LLM holds one KV cache (a `Session`), so consecutive calls that share a prefix — the turns of a chat —
only run the new tokens through the model. The CLI and the server both use this API.
"""

from __future__ import annotations

import gc
import time
from collections.abc import Iterator, Sequence
from dataclasses import fields

import torch

from pellucid.engine.constrain import Grammar, constraint_for
from pellucid.engine.generate import Session, stream_text
from pellucid.engine.results import Chunk, Generation, GenerationStats
from pellucid.engine.sampling import SamplingParams, SamplingParamsError, make_sampler
from pellucid.errors import PellucidError, TemplateError
from pellucid.store import ResolvedModel, resolve
from pellucid.tokenizer import load_tokenizer
from pellucid.tokenizer.chat_template import (
    NO_TEMPLATE_WARNING,
    ChatTemplate,
    chat_template_for,
    fold_system_message,
    plain_chat_template,
)

DEFAULT_CTX = 4096  # llama.cpp's default n_ctx; never more than the model's own context length
BASE_MODEL_STOPS = ("\nUser:",)  # the plain fallback template's next turn: stop before the model writes it
_SAMPLING_FIELDS = {f.name for f in fields(SamplingParams)}


class LLM:
    """A loaded model with its tokenizer and chat template, ready to generate."""

    def __init__(
        self,
        resolved: ResolvedModel,
        *,
        device=None,
        ctx: int | None = None,
        dtype=torch.float32,
        quantize: str | None = None,
        chat_template: str | None = None,
        kv_type: str | None = None,
        kv_type_k: str | None = None,
        kv_type_v: str | None = None,
    ):
        from pellucid.model import load_model
        from pellucid.quant.kv_blocks import check_kv_type

        started = time.perf_counter()
        # checked before the slow load: a misspelt type fails at once
        kv_k, kv_v = check_kv_type(kv_type_k or kv_type), check_kv_type(kv_type_v or kv_type)
        self.resolved = resolved
        self.name = resolved.name
        self.model = load_model(resolved, device=device, dtype=dtype, quantize=quantize)
        self.config = self.model.config
        self.model.kv_type_k, self.model.kv_type_v = kv_k, kv_v
        self.model.make_cache(capacity=1)  # a head_dim the block types cannot hold is refused now, not mid-chat
        self.tokenizer = load_tokenizer(resolved)
        template = chat_template_for(resolved.path)
        if chat_template is not None:  # the user's template replaces the file's (--chat-template-file)
            template = ChatTemplate(
                chat_template, _token_text(self.tokenizer, self.tokenizer.bos_id),
                _token_text(self.tokenizer, self.tokenizer.eos_id), name="--chat-template-file",
            )  # fmt: skip
        self.has_chat_template = template is not None
        self.chat_template: ChatTemplate = template or plain_chat_template()
        limit = self.config.context_length
        # The model's own default (an Ollama model's num_ctx), else llama.cpp's; never more than it was trained for.
        default_ctx = resolved.defaults.get("ctx") or DEFAULT_CTX
        self.ctx = min(limit, default_ctx) if ctx is None else ctx
        if not 1 < self.ctx <= limit:
            raise PellucidError(f"--ctx must be between 2 and the model's context length {limit:,}, not {self.ctx:,}")
        self.model.use_context(self.ctx)
        self._session: Session | None = None
        # Loading leaves ~180k long-lived Python objects (the vocabulary, the file's metadata): a full garbage
        # collection then walks them all, 80-100 ms (Gemma 3's 262k vocab), a stall that lands mid-decode
        # whenever Python decides to run one. Freezing them moves them out of the collector's sight.
        gc.collect()
        gc.freeze()
        self.load_seconds = time.perf_counter() - started

    @property
    def device(self) -> torch.device:
        return self.model.device

    @property
    def kv_types(self) -> tuple[str, str]:
        """The KV cache's storage types (keys, values): f32, f16, bf16, q8_0 or q4_0."""
        return self.model.kv_types

    @property
    def kv_type_label(self) -> str:
        """The KV types as a run is described: "f16", or "q8_0/f16" (keys/values) when they differ."""
        from pellucid.memory import kv_label

        return kv_label(*self.kv_types)

    @property
    def session(self) -> Session:
        if self._session is None:
            self._session = Session(self.model, self.ctx)
        return self._session

    def reset(self) -> None:
        """Forget the cached conversation (the next call recomputes its whole prompt)."""
        if self._session is not None:
            self._session.reset()

    # -- text <-> tokens --------------------------------------------------------------------------------
    def tokenize(self, text: str, *, add_special: bool = True, parse_special: bool = True) -> list[int]:
        return self.tokenizer.encode(text, add_special=add_special, parse_special=parse_special)

    def detokenize(self, ids: Sequence[int], *, skip_special: bool = False) -> str:
        return self.tokenizer.decode(ids, skip_special=skip_special)

    def render_chat(self, messages: list[dict], *, tools=None, add_generation_prompt: bool = True) -> str:
        try:
            return self.chat_template.render(messages, add_generation_prompt=add_generation_prompt, tools=tools)
        except TemplateError as e:
            # Some templates (Gemma 2's) refuse a system message: as llama.cpp does, its text then opens the
            # first user message instead of failing the chat (a system prompt, or the generic tools prompt).
            folded = fold_system_message(messages) if "system" in str(e).lower() else None
            if folded is None:
                raise
            return self.chat_template.render(folded, add_generation_prompt=add_generation_prompt, tools=tools)

    def chat_prompt_ids(self, messages: list[dict], *, tools=None) -> list[int]:
        return self.chat_prompt(messages, tools=tools)[1]

    def chat_prompt(self, messages: list[dict], *, tools=None) -> tuple[str, list[int]]:
        """The rendered prompt text and its token ids."""
        text = self.render_chat(messages, tools=tools)
        bos = self.chat_template.bos_token
        if self.tokenizer.add_bos and bos and text.startswith(bos):
            text = text[len(bos) :]  # the template wrote BOS itself; the tokenizer adds it (as llama.cpp does)
        return text, self.tokenize(text, add_special=True, parse_special=True)

    @property
    def template_source(self) -> str | None:
        """The model's own chat template (None for a base model, which gets the plain fallback)."""
        return self.chat_template.source if self.has_chat_template else None

    # -- generation -------------------------------------------------------------------------------------
    def generate(
        self,
        prompt: str | Sequence[int],
        *,
        max_tokens: int | None = None,
        stop: str | Sequence[str] | None = None,
        ignore_eos: bool = False,
        schema: dict | str | None = None,
        grammar: Grammar | str | None = None,
        **sampling,
    ) -> Generation:
        """Complete `prompt` (text, or token ids) as is. Sampling keywords are SamplingParams fields
        (temperature, top_k, top_p, min_p, typical_p, repeat_penalty, repeat_last_n, presence_penalty,
        frequency_penalty, seed, logprobs). max_tokens None = until an end token or a full context.
        ignore_eos: keep going past end-of-text / end-of-turn tokens (llama.cpp's --ignore-eos), e.g. to
        benchmark a fixed number of tokens.

        schema: the output is JSON valid against this JSON schema (a dict or its text; {"type": "object"}
        for any object). grammar: the output matches this `Grammar` (or the text of a Lark or GBNF
        grammar). Either is enforced token by token (engine/constrain.py); a bad one is a GrammarError."""
        ids = self.tokenize(prompt) if isinstance(prompt, str) else [int(i) for i in prompt]
        return self._generate(
            ids, max_tokens=max_tokens, stop=stop, ignore_eos=ignore_eos, grammar=output_grammar(schema, grammar),
            **sampling,
        )  # fmt: skip

    def chat(
        self,
        messages: list[dict],
        *,
        tools: list[dict] | None = None,
        tool_choice=None,
        parallel_tool_calls: bool = True,
        stop=None,
        max_tokens=None,
        ignore_eos=False,
        schema: dict | str | None = None,
        grammar: Grammar | str | None = None,
        **sampling,
    ) -> Generation:
        """Answer the conversation `messages` ([{"role": "user", "content": "..."}, ...]).

        The answer's chunks carry the answer's text; a reasoning model's thinking comes separately
        (`chunk.reasoning`, `Generation.reasoning`). `tools` (OpenAI-shaped, or bare {"name", "description",
        "parameters"} functions) are rendered through the model's chat template (or pellucid's generic tool
        prompt when the template has none) and the calls the model makes come back parsed and checked
        against their schemas: `chunk.tool_calls`, `Generation.tool_calls` (pellucid.tools.ToolCall: name,
        arguments, id). `tool_choice`: "auto" (default), "none", "required", or a tool's name as
        {"type": "function", "function": {"name": ...}}; a required call is constrained to the tools'
        schemas, so it always parses. History may hold assistant `tool_calls` and `role: tool` results.
        `schema` / `grammar` constrain the answer as in `generate`.

        A model without a chat template (a base model) gets a plain "User:/Assistant:" prompt; it was not
        trained for chat, which `has_chat_template` tells (the CLI warns: NO_TEMPLATE_WARNING)."""
        from pellucid.tools.turn import check_tools, parse_tool_choice, plan_turn

        stops = [stop] if isinstance(stop, str) else list(stop or [])
        if not self.has_chat_template:
            stops += BASE_MODEL_STOPS
        if isinstance(tool_choice, str) and tool_choice not in ("auto", "none", "required", "any"):
            tool_choice = {"type": "function", "function": {"name": tool_choice}}  # a tool's name
        tools = check_tools(tools)
        plan = plan_turn(
            self.template_source,
            messages,
            tools=tools,
            choice=parse_tool_choice(tool_choice, bool(tools)),
            parallel=parallel_tool_calls,
            response_grammar=output_grammar(schema, grammar),
            tokenizer=self.tokenizer,
        )
        text, prompt_ids = self.chat_prompt(plan.messages, tools=plan.template_tools)
        plan.after_render(text)
        generation = self._generate(
            prompt_ids,
            max_tokens=max_tokens,
            stop=stops,
            ignore_eos=ignore_eos,
            constraint=plan.constraint(self.tokenizer),
            keep_special=plan.keep_special,
            **sampling,
        )
        return Generation(read_turn(generation._chunks, plan.reader(), generation.stats), prompt_ids, generation.stats)

    def _generate(
        self, prompt_ids: list[int], *, max_tokens, stop, ignore_eos=False, grammar=None, constraint=None,
        keep_special=False, **sampling,
    ) -> Generation:  # fmt: skip
        unknown = set(sampling) - _SAMPLING_FIELDS
        if unknown:
            raise SamplingParamsError(
                f"unknown sampling option(s) {', '.join(sorted(unknown))}; known: {', '.join(sorted(_SAMPLING_FIELDS))}"
            )
        params = SamplingParams(**sampling)
        if max_tokens is not None and max_tokens < 0:
            max_tokens = None  # llama.cpp's -n -1: no limit but the context
        stops = [stop] if isinstance(stop, str) else list(stop or [])
        stats = GenerationStats()
        steps = self.session.generate_ids(
            prompt_ids,
            make_sampler(params),
            max_tokens=self.ctx if max_tokens is None else max_tokens,
            stop_ids=() if ignore_eos else self.tokenizer.eot_ids,
            logprobs=params.logprobs,
            stats=stats,
            constraint=constraint or constraint_for(grammar, self.tokenizer),
        )
        decoder = self.tokenizer.stream_decoder(skip_special=not keep_special)
        chunks = stream_text(steps, decoder, stats, stop_strings=stops)
        return Generation(chunks, prompt_ids, stats)


def read_turn(chunks, reader, stats: GenerationStats) -> Iterator[Chunk]:
    """The chunks of a chat answer with its text read by a tools.turn.TurnReader: answer text in `text`,
    thinking in `reasoning`, finished calls in `tool_calls` (the ids and logprobs stay with their chunk).
    An answer that makes a call it may not make (a repeat; a second one without parallel calls) ends there, as the server's do (TurnPlan.call_watch)."""

    def parsed(chunk: Chunk, events) -> Chunk:
        text = "".join(e.text for e in events if e.kind == "text")
        reasoning = "".join(e.text for e in events if e.kind == "reasoning")
        calls = [e.call for e in events if e.kind == "tool_call"] or None
        return Chunk(text, chunk.token_ids, chunk.logprobs, chunk.stats, reasoning=reasoning, tool_calls=calls)

    try:
        for chunk in chunks:
            events = reader.feed(chunk.text) if chunk.text else []
            if reader.extra_call and chunk.stats is None:
                stats.stop_reason, stats.stop_detail = (
                    "stop",
                    "a call the reply may not make (a repeat, or a second one without parallel calls)",
                )
                chunks.close()
                yield parsed(chunk, events + reader.finish())
                yield Chunk("", stats=stats)
                return
            if chunk.stats is not None:
                events += reader.finish()
            yield parsed(chunk, events)
    finally:
        chunks.close()


def output_grammar(schema: dict | str | None, grammar: Grammar | str | None) -> Grammar | None:
    """The Grammar that `schema=` or `grammar=` asks for (not both), or None."""
    if schema is not None and grammar is not None:
        raise PellucidError("give schema= or grammar=, not both")
    if schema is not None:
        return Grammar.json_schema(schema)
    if isinstance(grammar, str):
        return Grammar.from_grammar_text(grammar)
    return grammar


def load(
    model: str | ResolvedModel | None = None,
    *,
    device=None,
    ctx: int | None = None,
    dtype=torch.float32,
    quantize: str | None = None,
    chat_template: str | None = None,
    kv_type: str | None = None,
    kv_type_k: str | None = None,
    kv_type_v: str | None = None,
) -> LLM:
    """Load MODEL (a catalog or store name, a .gguf path, a Hugging Face folder; None = the default model),
    pulling it if needed. `quantize` ("q8_0", "q4_0", "q4_k") packs the file's float matrices at load;
    `chat_template` (Jinja source) replaces the model's own chat template. `kv_type` stores the KV cache's keys and
    values as f32, f16, bf16, q8_0 or q4_0 (llama.cpp's cache types); `kv_type_k` / `kv_type_v` set one half
    (they win over `kv_type`); None: the default (f16; f32 in exact mode)."""
    from pellucid.quant.kv_blocks import check_kv_type

    for name in (kv_type, kv_type_k, kv_type_v):
        if name is not None:
            check_kv_type(name)  # before resolving (and perhaps pulling) the model
    resolved = model if isinstance(model, ResolvedModel) else resolve(model)
    return LLM(
        resolved, device=device, ctx=ctx, dtype=dtype, quantize=quantize, chat_template=chat_template,
        kv_type=kv_type, kv_type_k=kv_type_k, kv_type_v=kv_type_v,
    )  # fmt: skip


def _token_text(tokenizer, token_id: int | None) -> str:
    return tokenizer.token_bytes(token_id).decode("utf-8", errors="replace") if token_id is not None else ""


__all__ = ["LLM", "NO_TEMPLATE_WARNING", "load"]
