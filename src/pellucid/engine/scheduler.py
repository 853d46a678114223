"""The request scheduler: many generations share one model (continuous batching), as a server needs.

A worker thread owns N slots (`--parallel N`); each slot is a `Session`, i.e. its own KV cache and the token
ids in it. Requests wait in a bounded queue (`max_queue`; a full queue refuses new ones with QueueFullError,
which the server answers with 429). The worker loops over steps:

1. Leave: a cancelled request (its client disconnected, or pressed stop) leaves its slot at once.
2. Join: waiting requests move into free slots. A request goes to the free slot whose cached tokens share the
   longest prefix with its prompt (as llama-server does), so the same system prompt or the next turn of a
   chat is not recomputed: `Session` trims its cache back to the shared prefix. When no slot's cache is a
   real start of the prompt (under half of either), it goes to the slot with the least to lose instead,
   then the one used least recently, which keeps conversations cached longest (`pick_slot`).
3. Advance: `advance()` feeds every active sequence its next tokens and returns each one's next-token logits.
   A decoding sequence gets its one new token; a prefilling one gets the next chunk of its prompt. All the
   one-token feeds go through the model together, in ONE batched decode step (`Transformer.decode_batch`:
   each sequence at its own position in its own cache): each projection runs once per step for all streams
   instead of once per stream, which is where continuous batching's throughput comes from (how much it
   saves is up to the packed kernels; docs/benchmarks.md, "Serving"). Prompt chunks run one sequence at a
   time (they are matrix-matrix products already).
4. Sample: each sequence samples with its own `Sampler` (its own seed and settings), on logits masked by its
   own grammar when it has one (`Request.constraint`: a JSON schema, a tool call), then its text goes out
   through the request's `on_update` callback. A sequence that hit a stop token, a stop string, max_tokens or
   a full context finishes and frees its slot for the next step.

Prefill is chunked so that one long prompt cannot starve everyone else's decoding: while other sequences are
decoding, a step feeds at most `prefill_chunk` prompt tokens in total (first come, first served); when
nothing is decoding, a prompt goes in PREFILL_CHUNK-token pieces, as a single `Session` does. So a
10,000-token prompt delays the tokens of the streams around it by one chunk's forward pass per step, not by
its whole prefill.

`batch_decode=False` runs the decode steps one sequence after another instead (round-robin; `pellucid serve
--no-cont-batching`), which is how the gain is measured (docs/benchmarks.md, "Serving").

Threads: `submit()` and `Request.cancel()` may be called from any thread (the server's event loop); only the
worker thread touches the model and the caches. `on_update` is called on the worker thread, so it must be
quick and thread-safe (the server hands updates to its event loop with `loop.call_soon_threadsafe`).
"""

from __future__ import annotations

import itertools
import logging
import threading
import time
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import torch

from pellucid.engine.generate import PREFILL_CHUNK, Session, StopStrings, check_prompt
from pellucid.engine.kv_cache import RotatingKVCache
from pellucid.engine.results import GenerationStats
from pellucid.engine.sampling import SamplingParams, TokenLogprobs, make_sampler, token_logprobs
from pellucid.errors import PellucidError

log = logging.getLogger("pellucid.scheduler")

PREFILL_STEP = 128  # prompt tokens per step while other sequences decode (bounds their stall to ~1 chunk)
THROUGHPUT_WINDOW_S = 10.0  # decode_tok_s() averages over this many seconds


class QueueFullError(PellucidError):
    """Every slot is busy and the waiting queue is full: the client should retry later (HTTP 429)."""


@dataclass
class Update:
    """What a request gets after a step: new text and the ids behind it; the last update carries the stats."""

    text: str = ""
    token_ids: list[int] = field(default_factory=list)
    logprobs: list[TokenLogprobs] | None = None
    stats: GenerationStats | None = None  # set on the final update only
    stop_string: str | None = None  # the stop string that ended the generation (final update)
    stop_token: int | None = None  # the end-of-generation token that ended it (final update)
    error: str | None = None  # the engine failed on this request (final update)

    @property
    def final(self) -> bool:
        return self.stats is not None


class Request:
    """One generation submitted to the scheduler. `cancel()` from any thread; it leaves before the next step."""

    def __init__(
        self,
        id: int,
        prompt_ids: list[int],
        params: SamplingParams,
        *,
        max_tokens: int | None,
        stop: Sequence[str],
        ignore_eos: bool = False,
        constraint=None,
        keep_special: bool = False,
        watch: Callable[[str], bool] | None = None,
        on_update: Callable[[Update], None],
    ):
        self.id = id
        self.prompt_ids = prompt_ids
        self.params = params
        self.sampler = make_sampler(params)  # this request's own generator: its seed gives its tokens
        self.max_tokens = max_tokens
        self.stop = list(stop)
        self.ignore_eos = ignore_eos  # generate past end-of-generation tokens
        self.constraint = constraint  # engine.constrain: masks each step's logits (structured output, tool calls)
        self.keep_special = keep_special  # special tokens stay in the text (tool-call and reasoning markers)
        self.watch = watch  # sees each new piece of text; True ends the generation there (a repeated tool call)
        self.on_update = on_update
        self.cancelled = False
        self.submitted_at = time.perf_counter()
        self.admitted_at: float | None = None
        self.slot: int | None = None  # which slot ran it
        self.cached_tokens = 0  # prompt tokens its slot's cache already held (known once admitted)

    def cancel(self) -> None:
        self.cancelled = True  # a plain bool: the worker reads it between steps (atomic under the GIL)

    @property
    def queued_s(self) -> float:
        return (self.admitted_at or time.perf_counter()) - self.submitted_at


class _Sequence:
    """A request running in a slot: what is left to feed the model, what was sampled, the text state."""

    def __init__(self, request: Request, session: Session, decoder, cached: int):
        self.request = request
        self.session = session
        self.stats = GenerationStats(prompt_tokens=len(request.prompt_ids), cached_tokens=cached)
        self.pending: list[int] = request.prompt_ids[cached:]  # ids to feed the model next
        self.prefilling = True  # until the whole prompt is in the cache
        self.history = list(request.prompt_ids)  # prompt + sampled ids: what the penalties look at
        self.max_tokens = request.max_tokens if request.max_tokens is not None else session.capacity
        self.decoder = decoder
        self.stops = StopStrings(request.stop)
        self.unsent_ids: list[int] = []  # ids whose text is not out yet (half a UTF-8 character, a maybe-stop)
        self.unsent_logprobs: list[TokenLogprobs] = []
        self.started_at = time.perf_counter()
        self.first_token_at: float | None = None


@dataclass
class _Slot:
    index: int
    session: Session
    seq: _Sequence | None = None
    last_used: float = 0.0


def advance(work: list[tuple[Session, list[int]]], *, batch_decode: bool = True) -> list[torch.Tensor]:
    """Feed each session its new token ids; returns the logits (vocab,) after each one's last id.

    The step of continuous batching. Every session fed exactly one id (a decoding sequence, or the last
    token of a prompt whose rest was cached) goes into one batched decode step; the others (prompt chunks)
    run through `Session`'s own forward pass, which prefills in PREFILL_CHUNK pieces. Each session's cache
    and token list grow by what it was fed, either way. With `batch_decode=False` every session runs alone.
    """
    logits: list[torch.Tensor | None] = [None] * len(work)
    single = [i for i, (_, ids) in enumerate(work) if len(ids) == 1] if batch_decode else []
    if len(single) > 1:  # one sequence alone takes Session's (compiled) single-sequence decode step
        for i, row in zip(single, decode_together([work[i] for i in single])):
            logits[i] = row
    for i, (session, ids) in enumerate(work):
        if logits[i] is None:
            logits[i] = session._forward_last(ids)
    return logits


@torch.inference_mode()
def decode_together(work: list[tuple[Session, list[int]]]) -> list[torch.Tensor]:
    """One decode step for several sessions (one new id each): one forward pass, the logits (vocab,) of each.

    Keeps each `Session`'s bookkeeping as its own forward pass does: marked dirty while its cache is being
    written (an exception leaves it to be reset), then the id appended to the ids its cache holds.
    """
    sessions = [session for session, _ in work]
    model = sessions[0].model
    tokens = torch.tensor([ids[0] for _, ids in work], device=model.device)  # (B,)
    for session in sessions:
        session._dirty = True
    logits = model.decode_batch(tokens, [session.cache for session in sessions])  # (B, vocab)
    for session, (_, ids) in zip(sessions, work):
        session.tokens.append(int(ids[0]))
        session._dirty = False
    return list(logits)


class Scheduler:
    """N slots on one model and a worker thread that steps them; `submit()` queues a generation."""

    def __init__(
        self,
        model,
        tokenizer,
        *,
        n_slots: int = 4,
        ctx: int = 4096,
        max_queue: int = 64,
        prefill_chunk: int = PREFILL_STEP,
        batch_decode: bool = True,
    ):
        if n_slots < 1 or max_queue < 0 or prefill_chunk < 1:
            raise PellucidError(
                f"need at least 1 slot, a queue of >= 0 and a prefill chunk of >= 1 "
                f"(got {n_slots}, {max_queue}, {prefill_chunk})"
            )
        self.model = model
        self.tokenizer = tokenizer
        self.ctx = ctx
        self.max_queue = max_queue
        self.prefill_chunk = prefill_chunk
        self.batch_decode = batch_decode
        self.stop_ids = frozenset(tokenizer.eot_ids)
        self.slots = [_Slot(i, Session(model, ctx)) for i in range(n_slots)]
        self._queue: deque[Request] = deque()
        self._cv = threading.Condition()
        self._ids = itertools.count(1)
        self._stopping = False
        self._thread: threading.Thread | None = None
        # Counters for /metrics, written by the worker only.
        self.prompt_tokens_total = 0
        self.cached_tokens_total = 0
        self.generated_tokens_total = 0
        self.finished_total = 0
        self._recent: deque[tuple[float, int]] = deque()  # (time, tokens sampled) per step

    # -- the outside: any thread ------------------------------------------------------------------------
    def start(self) -> Scheduler:
        if self._thread is None:
            self._thread = threading.Thread(target=self._run, name="pellucid-scheduler", daemon=True)
            self._thread.start()
        return self

    def stop(self, timeout: float = 10.0) -> None:
        """Finish the current step, fail whatever is left ("the server is shutting down"), end the thread."""
        with self._cv:
            self._stopping = True
            self._cv.notify_all()
        if self._thread is not None:
            self._thread.join(timeout)

    def warm_up(self) -> None:
        """A short prefill and a decode step in every slot, then forget them (llama-server warms up too):
        PyTorch's first passes pick kernels, allocate and (for a compiled decode step) compile, which would
        otherwise land on the first requests' time to first token. The batched decode step is warmed for
        every batch size it will see (2 .. n_slots). Call before start()."""
        # A slot's cache takes len(ids) + 1 + (n_slots - 1) positions here; a tiny context skips warming.
        # The first slot's 16-token prompt warms the prefill path (unpack + GEMM), the others' 8 tokens the
        # few-row product that short prompt chunks take (kernels.GEMV_MAX_ROWS).
        ids = list(range(min(16, self.ctx - len(self.slots), self.model.config.vocab_size)))
        if not ids:
            return
        for i, slot in enumerate(self.slots):
            advance([(slot.session, ids if i == 0 else ids[:8])])
            advance([(slot.session, ids[:1])])
        if self.batch_decode:
            for n in range(2, len(self.slots) + 1):
                advance([(slot.session, ids[:1]) for slot in self.slots[:n]])
        for slot in self.slots:
            slot.session.reset()
        self._warm_up_full_ring()

    def _warm_up_full_ring(self) -> None:
        """A sliding-window model's single decode step has a second compiled variant for a full ring (its keys
        are the whole ring, not a prefix: RotatingKVCache._append_one), first needed when a sequence passes
        the window (Gemma 3: 512 tokens), where compiling it would stall that reply for 1-10 s. A prompt that
        fills the ring but one slot, then two decode steps, compile it here."""
        session = self.slots[0].session
        windows = [layer.window for layer in session.cache.layers if isinstance(layer, RotatingKVCache)]
        if not windows or max(windows) + 1 > session.capacity:
            return
        advance([(session, [i % self.model.config.vocab_size for i in range(max(windows) - 1)])])
        advance([(session, [0])])
        advance([(session, [0])])
        session.reset()

    @property
    def alive(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    def submit(
        self,
        prompt_ids: Sequence[int],
        params: SamplingParams | None = None,
        *,
        max_tokens: int | None = None,
        stop: Sequence[str] = (),
        ignore_eos: bool = False,
        constraint=None,
        keep_special: bool = False,
        watch: Callable[[str], bool] | None = None,
        on_update: Callable[[Update], None],
    ) -> Request:
        """Queue a generation; `on_update` gets its Updates on the worker thread, the last one with stats.

        Raises ContextLengthError when the prompt leaves no room to generate and QueueFullError when every
        slot is busy and `max_queue` requests already wait. max_tokens None: until a stop or a full context.
        """
        prompt_ids = check_prompt(
            prompt_ids,
            self.ctx,
            self.model.config.context_length,
            where="this server's context",
            remedy="restart the server with a larger --ctx",
        )
        request = Request(
            next(self._ids),
            prompt_ids,
            params or SamplingParams(),
            max_tokens=max_tokens,
            stop=stop,
            ignore_eos=ignore_eos,
            constraint=constraint,
            keep_special=keep_special,
            watch=watch,
            on_update=on_update,
        )
        with self._cv:
            if self._stopping:
                raise QueueFullError("the server is shutting down")
            # Requests about to take a free slot wait here too, until the worker's next step admits them.
            if len(self._queue) >= self.max_queue + len(self._free_slots()):
                raise QueueFullError(
                    f"all {len(self.slots)} slots are busy and {len(self._queue)} requests are already waiting "
                    f"(--max-queue {self.max_queue}); retry shortly, or start the server with a larger "
                    f"--parallel or --max-queue"
                )
            self._queue.append(request)
            self._cv.notify_all()
        return request

    @property
    def queue_depth(self) -> int:
        return len(self._queue)

    @property
    def active(self) -> int:
        return sum(slot.seq is not None for slot in self.slots)

    def decode_tok_s(self) -> float:
        """Tokens sampled per second over the last THROUGHPUT_WINDOW_S seconds, all sequences together."""
        now = time.perf_counter()
        recent = list(self._recent)  # a copy: the worker appends while we read
        return sum(n for t, n in recent if now - t <= THROUGHPUT_WINDOW_S) / THROUGHPUT_WINDOW_S

    def slot_info(self) -> list[dict]:
        """Per slot: busy or not, and how many tokens its cache holds (for /health and the logs)."""
        return [{"id": s.index, "busy": s.seq is not None, "cached_tokens": len(s.session.tokens)} for s in self.slots]

    # -- the worker -------------------------------------------------------------------------------------
    def _run(self) -> None:
        while True:
            with self._cv:
                while not self._stopping and not self._queue and not self.active:
                    self._cv.wait()
                if self._stopping:
                    break
            try:
                self.step()
            except Exception:  # a bug in a step must not kill the server: fail those requests and go on
                log.exception("scheduler step failed; failing the active requests")
                for slot in self.slots:
                    if slot.seq is not None:
                        self._finish(slot, "stop", error="internal error in the scheduler (see the server log)")
        self._shut_down()

    def step(self) -> int:
        """One step: leave, join, advance every active sequence once, sample. Returns the sequences advanced."""
        for slot in self.slots:
            if slot.seq is not None and slot.seq.request.cancelled:
                self._finish(slot, "cancelled")
        self._admit()
        work = self._plan()
        if not work:
            return 0
        try:
            logits = advance([(slot.seq.session, ids) for slot, ids in work], batch_decode=self.batch_decode)
        except Exception as e:  # out of memory, a bug in the model: these requests fail, the server lives
            log.exception("forward pass failed for requests %s", [slot.seq.request.id for slot, _ in work])
            for slot, _ in work:
                slot.session.reset()  # the cache may be half-written
                self._finish(slot, "stop", error=f"the forward pass failed: {type(e).__name__}: {e}")
            return 0
        sampled = 0
        for (slot, ids), row in zip(work, logits):
            seq = slot.seq
            del seq.pending[: len(ids)]
            if seq.pending:
                continue  # more of the prompt to prefill next step
            if seq.prefilling:
                seq.prefilling = False
                seq.stats.prefill_s = time.perf_counter() - seq.started_at
            sampled += self._sample(slot, row)
        self._recent.append((time.perf_counter(), sampled))
        while self._recent and time.perf_counter() - self._recent[0][0] > THROUGHPUT_WINDOW_S:
            self._recent.popleft()
        return len(work)

    def _free_slots(self) -> list[_Slot]:
        return [slot for slot in self.slots if slot.seq is None]

    def _admit(self) -> None:
        """Move waiting requests into free slots, each to the slot that has the most of its prompt cached."""
        with self._cv:
            while self._queue and self._queue[0].cancelled:
                self._drop(self._queue.popleft())
            while self._queue and (free := self._free_slots()):
                request = self._queue.popleft()
                if request.cancelled:
                    self._drop(request)
                    continue
                self._start(pick_slot(free, request.prompt_ids), request)

    def _start(self, slot: _Slot, request: Request) -> None:
        cached = slot.session._reuse_prefix(request.prompt_ids)  # trims the cache to the shared prefix
        request.admitted_at = time.perf_counter()
        request.slot, request.cached_tokens = slot.index, cached
        decoder = self.tokenizer.stream_decoder(skip_special=not request.keep_special)
        slot.seq = _Sequence(request, slot.session, decoder, cached)

    def _drop(self, request: Request) -> None:
        """A request cancelled while it waited: tell it, it never ran."""
        stats = GenerationStats(prompt_tokens=len(request.prompt_ids), stop_reason="cancelled")
        self._emit(request, Update(stats=stats))

    def _plan(self) -> list[tuple[_Slot, list[int]]]:
        """What each active sequence feeds the model this step: its last token, or a chunk of its prompt."""
        active = [slot for slot in self.slots if slot.seq is not None]
        decoding = [(slot, list(slot.seq.pending)) for slot in active if not slot.seq.prefilling]
        budget = self.prefill_chunk if decoding else PREFILL_CHUNK
        prefilling = sorted((s for s in active if s.seq.prefilling), key=lambda s: s.seq.request.admitted_at)
        work = []
        for slot in prefilling:
            if budget <= 0:
                break
            ids = slot.seq.pending[:budget]
            budget -= len(ids)
            work.append((slot, ids))
        return decoding + work

    def _sample(self, slot: _Slot, logits: torch.Tensor) -> int:
        """Sample the next token of the sequence in `slot` and send its text; returns 1 if a token came out."""
        seq = slot.seq
        stats = seq.stats
        if stats.generated_tokens >= seq.max_tokens:
            self._finish(slot, "length")
            return 0
        constraint = seq.request.constraint
        token = seq.request.sampler.sample(logits if constraint is None else constraint.mask(logits), seq.history)
        now = time.perf_counter()
        if seq.first_token_at is None:
            seq.first_token_at = now
            stats.ttft_s = now - seq.request.submitted_at  # what the client waits: queue + prefill + sample
        if token in self.stop_ids and not seq.request.ignore_eos:
            self._finish(slot, "stop", f"token {token}", stop_token=token)
            return 0
        if constraint is not None:
            constraint.accept(token)
        seq.history.append(token)
        stats.generated_tokens += 1
        stats.decode_s = now - seq.first_token_at
        self.generated_tokens_total += 1
        seq.unsent_ids.append(token)
        if seq.request.params.logprobs is not None:
            seq.unsent_logprobs.append(token_logprobs(logits, token, seq.request.params.logprobs))
        text, matched = seq.stops.feed(seq.decoder.push(token))
        if matched is not None:
            self._send(seq, text)
            self._finish(slot, "stop", f"stop string {matched!r}", stop_string=matched)
        elif text and seq.request.watch is not None and seq.request.watch(text):
            self._send(seq, text)
            self._finish(
                slot, "stop", "a call the reply may not make (a repeat, or a second one without parallel calls)"
            )
        elif stats.generated_tokens >= seq.max_tokens:
            self._send(seq, text)
            self._finish(slot, "length")
        elif len(seq.session.tokens) + 1 > seq.session.capacity:
            self._send(seq, text)
            self._finish(slot, "context", f"the context of {seq.session.capacity:,} tokens is full")
        else:
            if text:
                self._send(seq, text)
            seq.pending = [token]
        return 1

    def _send(self, seq: _Sequence, text: str, **final) -> None:
        update = Update(text, seq.unsent_ids, seq.unsent_logprobs or None, **final)
        seq.unsent_ids, seq.unsent_logprobs = [], []
        self._emit(seq.request, update)

    def _finish(
        self, slot: _Slot, reason: str, detail: str = "", *, stop_string=None, stop_token=None, error=None
    ) -> None:
        """End the sequence in `slot`: flush its text, send the final update with the stats, free the slot."""
        seq = slot.seq
        stats = seq.stats
        stats.stop_reason, stats.stop_detail = reason, error or detail
        text = ""
        if reason not in ("cancelled",) and error is None and stop_string is None:
            text, matched = seq.stops.feed(seq.decoder.flush())
            if matched is not None:
                stop_string = matched
                stats.stop_reason, stats.stop_detail = "stop", f"stop string {matched!r}"
            text += seq.stops.flush()
        if seq.prefilling:
            stats.prefill_s = time.perf_counter() - seq.started_at
        self.prompt_tokens_total += stats.prompt_tokens
        self.cached_tokens_total += stats.cached_tokens
        self.finished_total += 1
        slot.seq = None
        slot.last_used = time.perf_counter()
        self._send(seq, text, stats=stats, stop_string=stop_string, stop_token=stop_token, error=error)

    def _emit(self, request: Request, update: Update) -> None:
        try:
            request.on_update(update)
        except Exception:  # the receiver is gone (e.g. its event loop closed): stop generating for it
            log.exception("request %s: delivering an update failed; cancelling it", request.id)
            request.cancel()

    def _shut_down(self) -> None:
        for slot in self.slots:
            if slot.seq is not None:
                self._finish(slot, "stop", error="the server is shutting down")
        with self._cv:
            waiting, self._queue = list(self._queue), deque()
        for request in waiting:
            stats = GenerationStats(prompt_tokens=len(request.prompt_ids), stop_reason="stop")
            self._emit(request, Update(stats=stats, error="the server is shutting down"))


def pick_slot(free: list[_Slot], prompt_ids: Sequence[int]) -> _Slot:
    """The free slot for a prompt: the one whose cache it continues (the longest shared prefix, when that is at
    least half of the prompt or of what the slot holds), else the one whose cache is worth least (the fewest
    tokens to throw away, then the least recently used). So a request that shares only a system prompt's
    first line with a long conversation does not cut that conversation's cache back while an idle slot waits
    (llama-server's slot-prompt-similarity does the same)."""
    shared = {s.index: common_prefix(s.session.tokens, prompt_ids) for s in free}
    best = max(free, key=lambda s: (shared[s.index], -s.last_used))
    n = shared[best.index]
    if n > 0 and (2 * n >= len(prompt_ids) or 2 * n >= len(best.session.tokens)):
        return best
    return min(free, key=lambda s: (len(s.session.tokens) - shared[s.index], s.last_used))


def common_prefix(a: Sequence[int], b: Sequence[int]) -> int:
    """How many leading ids `a` and `b` share."""
    n = 0
    for x, y in zip(a, b):
        if x != y:
            break
        n += 1
    return n


__all__ = [
    "PREFILL_STEP",
    "QueueFullError",
    "Request",
    "Scheduler",
    "Update",
    "advance",
    "common_prefix",
    "decode_together",
    "pick_slot",
]
