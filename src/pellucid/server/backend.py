"""What the routes talk to: the served model(s), their names, prompts, the scheduler and the embedder.

A server serves one text-generation model (an `LLM`, run by a `Scheduler` with --parallel slots) and, if
asked, one embedding model (an `Embedder`, `--embed MODEL`); either may be absent. A request's `model` field
must name one of them (its name, its file's name, or an --alias) or be left out; anything else is a 404 that
lists what is served, so a client configured for another server finds out at once.
"""

from __future__ import annotations

import asyncio
import logging
import threading
from dataclasses import dataclass

import anyio
import torch

from pellucid.api import BASE_MODEL_STOPS, LLM
from pellucid.engine.sampling import SamplingParams
from pellucid.engine.scheduler import PREFILL_STEP, Scheduler
from pellucid.errors import PellucidError
from pellucid.server.errors import ApiError, bad_request, from_pellucid
from pellucid.server.streams import Stream

log = logging.getLogger("pellucid.server")

# Who can embed, for the error a text-generation model gives on /v1/embeddings (the embedding engine's own
# wording when it is installed).
EMBEDDING_KINDS = "encoder models such as the catalog's minilm-l6 (a sentence-transformers BERT folder)"


@dataclass(frozen=True)
class ServedModel:
    name: str
    kind: str  # "chat" (text generation) or "embedding"
    aliases: frozenset[str]
    context_length: int


class Backend:
    """The served models (`models`, the chat model first), the scheduler that runs generations, the embedder."""

    def __init__(
        self,
        llm: LLM | None = None,
        *,
        embedder=None,
        n_slots: int = 4,
        max_queue: int = 64,
        prefill_chunk: int = PREFILL_STEP,
        batch_decode: bool = True,
        aliases: tuple[str, ...] = (),
    ):
        if llm is None and embedder is None:
            raise PellucidError("nothing to serve: give a text-generation model, an embedding model, or both")
        self.llm = llm
        self.embedder = embedder
        self.scheduler = None
        self.models: list[ServedModel] = []
        if llm is not None:
            self.scheduler = Scheduler(
                llm.model,
                llm.tokenizer,
                n_slots=n_slots,
                ctx=llm.ctx,
                max_queue=max_queue,
                prefill_chunk=prefill_chunk,
                batch_decode=batch_decode,
            )
            path = llm.resolved.path
            names = frozenset({llm.name, path.name, path.stem, *aliases})
            self.models.append(ServedModel(llm.name, "chat", names, llm.ctx))
            if not llm.has_chat_template:
                log.warning("%s has no chat template: chat requests get a plain 'User:/Assistant:' prompt", llm.name)
        if embedder is not None:
            names = frozenset({embedder.name, embedder.folder.name})
            self.models.append(ServedModel(embedder.name, "embedding", names, embedder.max_tokens))
        self._embed_lock = threading.Lock()  # one embedding batch at a time (each already uses every core)
        self._tokenizer_lock = threading.Lock()  # the tokenizer's caches are not meant for concurrent use

    @property
    def name(self) -> str:
        return self.models[0].name

    def start(self) -> Backend:
        if self.scheduler is not None:
            self.scheduler.start()
        return self

    def warm_up(self) -> None:
        if self.scheduler is not None:
            self.scheduler.warm_up()
        if self.embedder is not None:
            self.embedder.embed(["warm up"])

    def stop(self) -> None:
        if self.scheduler is not None:
            self.scheduler.stop()

    @property
    def healthy(self) -> bool:
        return self.scheduler is None or self.scheduler.alive

    # -- which model ------------------------------------------------------------------------------------
    def find(self, requested: str | None, kind: str) -> ServedModel:
        """The served model a request's `model` field names (None or "": the one of `kind`)."""
        if requested:
            model = next((m for m in self.models if requested in m.aliases), None)
            if model is None:  # --alias '*': this model answers any name (an agent that names its own models)
                model = next((m for m in self.models if "*" in m.aliases and m.kind == kind), None)
            if model is None:
                served = ", ".join(f"{m.name} ({m.kind})" for m in self.models)
                raise ApiError(404, f"model {requested!r} is not served here; this server serves: {served}",
                               param="model", code="model_not_found")  # fmt: skip
        else:
            model = next((m for m in self.models if m.kind == kind), self.models[0])
        if model.kind != kind:
            raise self._wrong_kind(model, kind)
        return model

    def _wrong_kind(self, model: ServedModel, kind: str) -> ApiError:
        if kind == "embedding":
            try:
                from pellucid.engine.embed import EMBEDDING_KINDS as kinds
            except ImportError:
                kinds = EMBEDDING_KINDS
            # 400, not llama-server's 501: the SDKs retry 5xx answers, and asking again will not help.
            return bad_request(
                f"{model.name} is a text-generation model; it cannot make embeddings. Embeddings come from "
                f"{kinds}: serve one with `pellucid serve {model.name} --embed minilm-l6` (or `pellucid "
                f"serve minilm-l6`) and send its name as `model`.",
                param="model",
                code="model_cannot_embed",
            )
        return bad_request(
            f"{model.name} is an embedding model; it cannot generate text. Use /v1/embeddings with it, or serve "
            f"a text-generation model such as smollm2-135m.",
            param="model",
        )

    # -- prompts ----------------------------------------------------------------------------------------
    # Rendering and tokenizing run in a worker thread, one at a time: a long prompt takes a while, and the
    # event loop must keep streaming everyone else's tokens meanwhile.
    async def chat_prompt(self, messages: list[dict]) -> tuple[list[int], list[str]]:
        """Token ids of `messages` rendered with the model's chat template, and the stop strings it needs."""
        try:
            ids = await self._off_loop(self.llm.chat_prompt_ids, messages)
        except PellucidError as e:
            raise from_pellucid(e) from None
        return ids, ([] if self.llm.has_chat_template else list(BASE_MODEL_STOPS))

    async def chat_turn(self, plan) -> tuple[list[int], list[str], object]:
        """A chat turn with tools and/or a grammar (tools.turn.TurnPlan): its prompt ids, stop strings and the
        request's constraint (None without a grammar). The first constrained request builds the tokenizer's
        index for the grammar library (0.1-1 s, once)."""

        def run():
            text, ids = self.llm.chat_prompt(plan.messages, tools=plan.template_tools)
            plan.after_render(text)
            return ids, plan.constraint(self.llm.tokenizer)

        try:
            ids, constraint = await self._off_loop(run)
        except PellucidError as e:
            raise from_pellucid(e) from None
        return ids, ([] if self.llm.has_chat_template else list(BASE_MODEL_STOPS)), constraint

    async def constraint(self, grammar, param: str):
        """A Constraint for `grammar` (engine.constrain.Grammar) or None; a bad grammar is a 400 on `param`."""
        if grammar is None:
            return None
        from pellucid.engine.constrain import Constraint

        try:
            return await self._off_loop(Constraint, grammar, self.llm.tokenizer)
        except PellucidError as e:
            raise bad_request(str(e), param=param) from None

    async def tokenize(self, text: str) -> list[int]:
        """BOS as the model wants it, special tokens parsed (as llama-server tokenizes prompts)."""
        return await self._off_loop(self.llm.tokenize, text)

    async def _off_loop(self, fn, *args):
        def run():
            with self._tokenizer_lock:
                return fn(*args)

        return await anyio.to_thread.run_sync(run)

    def check_token_ids(self, ids: list[int], param: str) -> list[int]:
        vocab = self.llm.tokenizer.vocab_size
        bad = next((i for i in ids if not 0 <= i < vocab), None)
        if bad is not None:
            raise bad_request(f"{param}: token id {bad} is outside the vocabulary (0..{vocab - 1})", param=param)
        return ids

    # -- generation -------------------------------------------------------------------------------------
    def generate(
        self,
        prompt_ids: list[int],
        params: SamplingParams,
        *,
        max_tokens: int | None,
        stop: list[str],
        ignore_eos: bool = False,
        prompt_param: str = "messages",
        constraint=None,
        keep_special: bool = False,
        watch=None,
    ) -> Stream:
        """Queue a generation; its Updates arrive on the returned Stream. A full queue is a 429."""
        stream = Stream(asyncio.get_running_loop())
        try:
            stream.request = self.scheduler.submit(
                prompt_ids, params, max_tokens=max_tokens, stop=stop, ignore_eos=ignore_eos, constraint=constraint,
                keep_special=keep_special, watch=watch, on_update=stream.put,
            )  # fmt: skip
        except PellucidError as e:
            raise from_pellucid(e, prompt_param) from None
        return stream

    # -- embeddings -------------------------------------------------------------------------------------
    async def embed(self, texts: list[str]) -> tuple[torch.Tensor, int]:
        """(N, dim) vectors and the number of tokens the encoder read, computed off the event loop. A text
        longer than the encoder reads is a 400, as OpenAI answers it (sentence-transformers would silently
        embed only its beginning)."""

        def run() -> tuple[torch.Tensor, int]:
            with self._embed_lock:
                counts = [self.embedder.count_tokens(t) for t in texts]
                limit = self.embedder.max_tokens
                too_long = next((i for i, n in enumerate(counts) if n > limit), None)
                if too_long is not None:
                    raise bad_request(
                        f"input[{too_long}] is {counts[too_long]:,} tokens; {self.embedder.name} reads at most "
                        f"{limit:,}. Split the text into chunks (pellucid.rag.chunk) and embed each one.",
                        param="input",
                    )
                return self.embedder.embed(texts), sum(counts)

        return await anyio.to_thread.run_sync(run)


def sampling_params(**given) -> SamplingParams:
    """SamplingParams from a request's fields; unset ones keep llama.cpp's defaults, as llama-server does."""
    given = {k: v for k, v in given.items() if v is not None}
    if given.get("seed") == -1:
        del given["seed"]  # llama.cpp's "random seed"
    try:
        return SamplingParams(**given)
    except PellucidError as e:
        raise from_pellucid(e) from None


def max_tokens_param(value: int | None, param: str) -> int | None:
    """A max_tokens field: None or -1 = until a stop or the end of the context (llama.cpp's n_predict -1)."""
    if value is None or value == -1:
        return None
    if value < 1:
        raise bad_request(f"{param} must be at least 1 (or -1 for no limit), got {value}", param=param)
    return value
