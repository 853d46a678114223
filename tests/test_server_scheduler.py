"""The request scheduler (engine/scheduler.py) on SmolLM2, checked against the single-sequence engine.

The oracle is `Session.generate_ids` + `stream_text`, the path `pellucid run` takes (itself checked against
llama.cpp in test_engine_generate.py): several requests interleaved by the scheduler, each with its own
sampler and seed, with chunked prefill and prefix reuse, must produce exactly the tokens and text each one
produces alone. Exact equality is safe here: prefill in chunks computes the same float32 values up to
rounding (~1e-6 in the logits), and the prompts below have no near-tie among their top tokens.

With several sequences decoding, the scheduler decodes them in one batched step (`Transformer.decode_batch`),
whose matrix products sum in another order than the single-sequence step's: the logits agree to ~1e-5, and
the prompts below have no near-tie among their top tokens at that scale, so the tokens are equal.

One scheduler (3 slots, 96 tokens of context each, a queue of 1) serves every test, and one Session is the
oracle: few KV caches means few compilations of the decode step (pellucid.model.compiled).
"""

from __future__ import annotations

import threading
import time

import pytest

from model_helpers import loaded
from pellucid.engine import scheduler as scheduler_module
from pellucid.engine.generate import Session, stream_text
from pellucid.engine.results import GenerationStats
from pellucid.engine.sampling import SamplingParams, make_sampler
from pellucid.engine.scheduler import QueueFullError, Scheduler, common_prefix
from pellucid.errors import ContextLengthError
from pellucid.tokenizer import load_tokenizer

TIMEOUT_S = 300  # generous: the machine is shared; a hang must fail, not block the suite
CTX = 96
SLOTS = 3


@pytest.fixture(scope="module")
def smollm2(smollm2_path):
    return loaded(smollm2_path), load_tokenizer(smollm2_path)


@pytest.fixture(scope="module")
def sched(smollm2):
    model, tokenizer = smollm2
    # prefill_chunk 8: a prompt goes in over several steps, interleaved with the others' decoding.
    scheduler = Scheduler(model, tokenizer, n_slots=SLOTS, ctx=CTX, max_queue=1, prefill_chunk=8)
    scheduler.warm_up()  # the first (compiled) decode steps, outside the timeouts below
    scheduler.start()
    yield scheduler
    scheduler.stop()
    assert not scheduler.alive


@pytest.fixture(scope="module")
def oracle_session(smollm2):
    return Session(smollm2[0], 512)


@pytest.fixture(autouse=True)
def idle_after(request):
    yield
    if "sched" in request.fixturenames:  # every test leaves the shared scheduler idle
        s = request.getfixturevalue("sched")
        deadline = time.monotonic() + TIMEOUT_S
        while (s.active or s.queue_depth) and time.monotonic() < deadline:
            time.sleep(0.01)
        assert s.active == 0 and s.queue_depth == 0


def chatml(tokenizer, question: str) -> list[int]:
    text = f"<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n<|im_start|>user\n{question}<|im_end|>\n<|im_start|>assistant\n"
    return tokenizer.encode(text, add_special=True, parse_special=True)


class Collector:
    """An on_update callback that keeps every Update; `wait()` returns it once the final one arrives."""

    def __init__(self):
        self.done = threading.Event()
        self.all = []

    def __call__(self, update):
        self.all.append(update)
        if update.final:
            self.done.set()

    def wait(self):
        assert self.done.wait(TIMEOUT_S), "the scheduler never finished this request"
        return self

    def wait_for_tokens(self):
        deadline = time.monotonic() + TIMEOUT_S
        while not self.ids and time.monotonic() < deadline:
            time.sleep(0.01)
        assert self.ids, "no token came out"

    @property
    def text(self) -> str:
        return "".join(u.text for u in self.all)

    @property
    def ids(self) -> list[int]:
        return [i for u in list(self.all) for i in u.token_ids]

    @property
    def stats(self) -> GenerationStats:
        return self.all[-1].stats


def alone(session, tokenizer, prompt_ids, params, *, max_tokens, stop=()):
    """The oracle: one Session, one request."""
    session.reset()
    stats = GenerationStats()
    steps = session.generate_ids(
        prompt_ids, make_sampler(params), max_tokens=max_tokens, stop_ids=tokenizer.eot_ids, stats=stats
    )
    chunks = list(stream_text(steps, tokenizer.stream_decoder(skip_special=True), stats, stop_strings=stop))
    return "".join(c.text for c in chunks), [i for c in chunks for i in c.token_ids], stats


def test_interleaved_requests_match_each_run_alone(smollm2, sched, oracle_session):
    model, tokenizer = smollm2
    cases = [  # (question, sampling, max_tokens, stop strings)
        ("What is the capital of France?", SamplingParams(temperature=0), 12, ()),
        ("Name three colors.", SamplingParams(temperature=0.8, seed=7), 10, ()),
        ("Count from one to ten.", SamplingParams(temperature=0.7, seed=3, repeat_penalty=1.3), 16, ("five",)),
    ]
    collectors = []
    for question, params, max_tokens, stop in cases:
        c = Collector()
        sched.submit(chatml(tokenizer, question), params, max_tokens=max_tokens, stop=stop, on_update=c)
        collectors.append(c)
    for c in collectors:
        c.wait()
    for (question, params, max_tokens, stop), c in zip(cases, collectors):
        prompt = chatml(tokenizer, question)
        text, ids, stats = alone(oracle_session, tokenizer, prompt, params, max_tokens=max_tokens, stop=stop)
        assert (c.text, c.ids) == (text, ids), question
        assert c.stats.stop_reason == stats.stop_reason
        assert c.stats.generated_tokens == stats.generated_tokens
        assert c.stats.prompt_tokens == len(prompt)
    assert collectors[2].all[-1].stop_string == "five" or collectors[2].stats.stop_reason != "stop"


def test_batched_decode_matches_each_sequence_alone(smollm2, sched, oracle_session, monkeypatch):
    """Four greedy requests with prompts of different lengths on three slots: they decode together (one
    forward pass per step, each sequence at its own position), the fourth joins when a slot frees up."""
    model, tokenizer = smollm2
    batch_sizes = []
    real = scheduler_module.decode_together

    def counting(work):
        batch_sizes.append(len(work))
        return real(work)

    monkeypatch.setattr(scheduler_module, "decode_together", counting)
    questions = [
        ("Hi!", 10),
        ("What is the capital of France?", 12),
        ("Explain in one sentence why the sky looks blue during the day but red at sunset.", 14),
        ("Name a fruit.", 6),
    ]
    greedy = SamplingParams(temperature=0)
    collectors = [Collector() for _ in questions]
    for (question, max_tokens), c in zip(questions, collectors):
        sched.submit(chatml(tokenizer, question), greedy, max_tokens=max_tokens, on_update=c)
    for c in collectors:
        c.wait()
    for (question, max_tokens), c in zip(questions, collectors):
        text, ids, stats = alone(oracle_session, tokenizer, chatml(tokenizer, question), greedy, max_tokens=max_tokens)
        assert (c.text, c.ids) == (text, ids), question
        assert c.stats.stop_reason == stats.stop_reason
    assert max(batch_sizes) == SLOTS  # every slot decoded in one step at some point
    assert sum(batch_sizes) > 20  # most tokens came out of batched steps, not one sequence at a time


def test_prefix_routing_reuses_the_slot_holding_the_conversation(smollm2, sched):
    model, tokenizer = smollm2
    greedy = SamplingParams(temperature=0)
    first = chatml(tokenizer, "Tell me about cats.")
    a = Collector()
    request_a = sched.submit(first, greedy, max_tokens=4, on_update=a)
    a.wait()
    # The next turn starts with the whole first prompt + the answer: it must land in the same slot.
    next_turn = "<|im_end|>\n<|im_start|>user\nAnd dogs?<|im_end|>\n"
    turn2 = first + a.ids + tokenizer.encode(next_turn, add_special=False, parse_special=True)
    b = Collector()
    request_b = sched.submit(turn2, greedy, max_tokens=2, on_update=b)
    b.wait()
    assert request_b.slot == request_a.slot
    assert b.stats.cached_tokens == len(first) + len(a.ids) - 1  # the last answer token was never fed
    assert request_b.cached_tokens == b.stats.cached_tokens
    # An unrelated prompt shares nothing with that slot's cache: it goes to the other one.
    other = Collector()
    request_c = sched.submit(tokenizer.encode("Once upon a time"), greedy, max_tokens=2, on_update=other)
    other.wait()
    assert request_c.slot != request_a.slot
    assert common_prefix([1, 2, 3], [1, 2, 4, 5]) == 2


def test_cancel_frees_the_slot_at_once(smollm2, sched):
    model, tokenizer = smollm2
    c = Collector()
    request = sched.submit(tokenizer.encode("Once upon a time"), SamplingParams(seed=1), on_update=c)
    c.wait_for_tokens()
    request.cancel()
    c.wait()
    assert c.stats.stop_reason == "cancelled"
    assert c.stats.generated_tokens < CTX
    assert sched.active == 0
    d = Collector()  # the freed slot serves the next request
    sched.submit(tokenizer.encode("Hello"), SamplingParams(temperature=0), max_tokens=2, on_update=d)
    assert d.wait().stats.generated_tokens == 2


def test_full_queue_is_refused_and_a_waiting_request_can_be_cancelled(smollm2, sched):
    model, tokenizer = smollm2
    running = [Collector() for _ in range(SLOTS)]
    texts = ("Once upon a time", "In a galaxy far away", "It was a dark and stormy night")
    requests = [
        sched.submit(tokenizer.encode(text), SamplingParams(seed=1), on_update=c) for text, c in zip(texts, running)
    ]
    for c in running:
        c.wait_for_tokens()  # every slot busy
    waiting = Collector()
    queued = sched.submit(tokenizer.encode("Hi"), max_tokens=4, on_update=waiting)
    with pytest.raises(QueueFullError, match=rf"all {SLOTS} slots are busy and 1 requests are already waiting"):
        sched.submit(tokenizer.encode("Hi"), max_tokens=4, on_update=Collector())
    assert sched.queue_depth == 1
    queued.cancel()
    for r in requests:
        r.cancel()
    assert waiting.wait().stats.stop_reason == "cancelled"
    assert waiting.stats.generated_tokens == 0
    for c in running:
        assert c.wait().stats.stop_reason == "cancelled"


def test_context_limits(smollm2, sched):
    model, tokenizer = smollm2
    with pytest.raises(ContextLengthError, match=rf"the prompt is 100 tokens but this server's context holds {CTX}"):
        sched.submit(list(range(1, 101)), on_update=Collector())
    counting = tokenizer.encode(", ".join(str(i) for i in range(1, 100)))[: CTX - 12]
    c = Collector()
    sched.submit(counting, SamplingParams(temperature=0), on_update=c)
    assert c.wait().stats.stop_reason == "context"
    assert len(counting) + c.stats.generated_tokens == CTX + 1  # the last sampled token needs no slot


def test_a_failing_forward_pass_fails_its_requests_not_the_scheduler(smollm2, sched, monkeypatch):
    model, tokenizer = smollm2
    real = scheduler_module.advance
    calls = []

    def flaky(work, **options):
        calls.append(len(work))
        if len(calls) == 1:
            raise RuntimeError("simulated out of memory")
        return real(work, **options)

    monkeypatch.setattr(scheduler_module, "advance", flaky)
    bad, good = Collector(), Collector()
    sched.submit(tokenizer.encode("Hello"), max_tokens=3, on_update=bad)
    assert "simulated out of memory" in bad.wait().all[-1].error
    sched.submit(tokenizer.encode("Hello"), SamplingParams(temperature=0), max_tokens=3, on_update=good)
    assert good.wait().all[-1].error is None
    assert good.stats.generated_tokens == 3
    assert sched.alive


def test_warm_up_compiles_the_full_ring_decode_step():
    """A sliding-window model's decode step on a full ring is its own compiled variant: the warm-up must
    compile it, or the first reply to pass the window (Gemma 3: 512 tokens) stalls for a compile."""
    from types import SimpleNamespace

    import torch
    from torch._dynamo.utils import counters

    from model_helpers import tiny_model

    torch._dynamo.reset()  # variants compiled by other tests would hide a missing one
    model = tiny_model("gemma3", sliding_window=32)  # wider than warm-up's 16-token prompts, as in real models
    window = model.config.sliding_window
    tokenizer = SimpleNamespace(eot_ids=[0])  # warm_up feeds token ids; it never encodes or decodes text
    scheduler = Scheduler(model, tokenizer, n_slots=2, ctx=4 * window)
    scheduler.warm_up()
    compiled = counters["stats"]["unique_graphs"]
    session = scheduler.slots[0].session
    scheduler_module.advance([(session, list(range(1, window - 1)))])  # a prompt just short of the window
    for i in range(2 * window):  # then decode across it and past slot 0
        scheduler_module.advance([(session, [i + 1])])
    assert counters["stats"]["unique_graphs"] == compiled


def test_pick_slot_keeps_a_conversation_an_unrelated_prompt_would_cut_back():
    from types import SimpleNamespace

    from pellucid.engine.scheduler import pick_slot

    def slot(index, tokens, last_used):
        return SimpleNamespace(index=index, session=SimpleNamespace(tokens=tokens), last_used=last_used)

    conversation = slot(0, list(range(1000)), last_used=5.0)
    idle = slot(1, [], last_used=1.0)
    old = slot(2, [7] * 50, last_used=0.5)
    # the next turn continues the conversation: its slot
    assert pick_slot([conversation, idle, old], list(range(1000)) + [1, 2]) is conversation
    # a prompt sharing 22 tokens of 1,000 (a system prompt's start) takes the idle slot, not the conversation's
    assert pick_slot([conversation, idle, old], list(range(22)) + [9] * 300) is idle
    # with no empty slot, the one with least to lose
    assert pick_slot([conversation, old], list(range(22)) + [9] * 300) is old
    # a short prompt that is all shared still reuses the slot (half of the prompt)
    assert pick_slot([conversation, idle], list(range(30))) is conversation
