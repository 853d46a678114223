"""Generation: the token loop, prefix reuse, stop strings, stats — on a tiny random model and on SmolLM2."""

from __future__ import annotations

import pytest
import torch

import pellucid
from model_helpers import SMOLLM2, random_weights, tiny_config
from pellucid.engine.generate import Session, StopStrings, stream_text
from pellucid.engine.sampling import SamplingParams, make_sampler
from pellucid.errors import ContextLengthError
from pellucid.model.families import family_for
from pellucid.model.loader import Weights, build_transformer


@pytest.fixture(scope="module")
def tiny():
    config = tiny_config("llama", context_length=64)
    weights = Weights.from_dict(random_weights(config))
    return build_transformer(config, weights, family_for("llama").gguf_names).eval()


@pytest.fixture(scope="module")
def smollm2(smollm2_path):
    return pellucid.load(smollm2_path, device="cpu")


GREEDY = SamplingParams(temperature=0)


def _ids(session, prompt, **kwargs):
    return [s.token_id for s in session.generate_ids(prompt, make_sampler(GREEDY), **kwargs)]


def test_greedy_tokens_equal_argmax_of_full_forward(tiny):
    """Each generated token is the argmax of a from-scratch forward over everything before it."""
    prompt = [3, 14, 15, 92, 65]
    out = _ids(Session(tiny, 64), prompt, max_tokens=10)
    assert len(out) == 10
    seq = list(prompt)
    with torch.inference_mode():
        for token in out:
            assert int(tiny(torch.tensor([seq]))[0, -1].argmax()) == token
            seq.append(token)


def test_prefix_reuse_gives_the_same_tokens_and_skips_work(tiny):
    session = Session(tiny, 64)
    first = _ids(session, [1, 2, 3, 4, 5, 6], max_tokens=4)
    follow_up = [1, 2, 3, 4, 5, 6, *first, 7, 8]
    from pellucid.engine.results import GenerationStats

    stats = GenerationStats()
    reused = [s.token_id for s in session.generate_ids(follow_up, make_sampler(GREEDY), max_tokens=5, stats=stats)]
    assert stats.cached_tokens == 6 + len(first) - 1  # all but the last sampled token (never fed) was reused
    assert reused == _ids(Session(tiny, 64), follow_up, max_tokens=5)  # identical to a fresh computation
    # A prompt that diverges early trims the cache back and still matches a fresh run.
    other = [1, 2, 9, 9, 9]
    assert _ids(session, other, max_tokens=5) == _ids(Session(tiny, 64), other, max_tokens=5)


def test_prefix_reuse_past_a_sliding_window(monkeypatch):
    """Gemma-style sliding layers (window 8) whose rings have wrapped still reuse a shared prefix: a prompt
    sent again with a different end, and the next turn of a chat, both match a fresh computation."""
    from pellucid.engine.results import GenerationStats

    config = tiny_config("gemma3", context_length=128)
    model = build_transformer(config, Weights.from_dict(random_weights(config)), family_for("gemma3").gguf_names).eval()
    prompt = [(7 * i) % 50 + 3 for i in range(40)]  # 5 windows long
    session = Session(model, 128)
    _ids(session, prompt, max_tokens=4)

    def reuse(ids):
        stats = GenerationStats()
        out = [s.token_id for s in session.generate_ids(ids, make_sampler(GREEDY), max_tokens=4, stats=stats)]
        assert out == _ids(Session(model, 128), ids, max_tokens=4)  # identical to a fresh computation
        return stats.cached_tokens, out

    different_end = prompt[:33] + [11, 12, 13]
    cached, answer = reuse(different_end)
    assert cached == 33
    next_turn = different_end + [answer[0], 99] + [21, 22]  # the cache holds 3 more generated tokens: trimmed
    cached, reply = reuse(next_turn)
    assert cached == len(different_end) + 1  # the ring's tail held what the shorter prefix needed
    chat = next_turn + reply[:-1] + [31, 32]
    assert reuse(chat)[0] == len(next_turn) + len(reply) - 1  # the next turn of a chat: all but the last token


def test_interrupted_forward_does_not_corrupt_the_next_call(tiny, monkeypatch):
    session = Session(tiny, 64)
    calls = {"n": 0}
    real_hidden = tiny.hidden

    def flaky(tokens, cache=None):
        calls["n"] += 1
        if calls["n"] == 3:
            raise KeyboardInterrupt  # as if Ctrl-C landed inside a decode step
        return real_hidden(tokens, cache)

    monkeypatch.setattr(tiny, "hidden", flaky)
    with pytest.raises(KeyboardInterrupt):
        _ids(session, [5, 6, 7], max_tokens=10)
    monkeypatch.setattr(tiny, "hidden", real_hidden)
    assert _ids(session, [5, 6, 7, 8], max_tokens=5) == _ids(Session(tiny, 64), [5, 6, 7, 8], max_tokens=5)


def test_context_limits(tiny):
    session = Session(tiny, 16)
    with pytest.raises(ContextLengthError, match=r"20 tokens but the context holds 16"):
        _ids(session, list(range(20)), max_tokens=1)
    from pellucid.engine.results import GenerationStats

    stats = GenerationStats()
    out = [s.token_id for s in session.generate_ids(list(range(10)), make_sampler(GREEDY), max_tokens=100, stats=stats)]
    assert stats.stop_reason == "context" and 10 + len(out) == 17  # 16 cached + the last sampled token


def test_stop_ids_end_generation_without_being_yielded(tiny):
    out = _ids(Session(tiny, 64), [1, 2, 3], max_tokens=20)
    stop = out[3]
    assert _ids(Session(tiny, 64), [1, 2, 3], max_tokens=20, stop_ids={stop}) == out[: out.index(stop)]


@pytest.mark.parametrize(
    "pieces, stops, expected_text, matched",
    [
        (["Hello", " wor", "ld", "!"], ["world"], "Hello ", "world"),
        (["a<", "/s", ">b"], ["</s>"], "a", "</s>"),
        (["abc", "def"], ["xyz"], "abcdef", None),
        (["ab", "c"], ["abd", "c"], "ab", "c"),  # a held-back partial match that fails is released
        (["x\nUs", "er:"], ["\nUser:"], "x", "\nUser:"),
    ],
)
def test_stop_strings_never_leak(pieces, stops, expected_text, matched):
    s = StopStrings(stops)
    out, hit = "", None
    for piece in pieces:
        text, hit = s.feed(piece)
        out += text
        if hit:
            break
    if not hit:
        out += s.flush()
    assert (out, hit) == (expected_text, matched)


def test_stream_text_holds_back_partial_utf8_and_applies_stops():
    class Steps:
        def __init__(self, ids):
            self.ids = iter(ids)

        def __iter__(self):
            return self

        def __next__(self):
            from pellucid.engine.generate import _Step

            return _Step(next(self.ids), None)

        def close(self):
            pass

    pieces = {1: b"ok ", 2: "🦙".encode()[:2], 3: "🦙".encode()[2:], 4: b" STOP", 5: b"never"}

    class Decoder:
        import codecs

        dec = codecs.getincrementaldecoder("utf-8")()

        def push(self, i):
            return self.dec.decode(pieces[i])

        def flush(self):
            return self.dec.decode(b"", final=True)

    from pellucid.engine.results import GenerationStats

    stats = GenerationStats()
    chunks = list(stream_text(Steps([1, 2, 3, 4, 5]), Decoder(), stats, stop_strings=[" STOP"]))
    assert [c.text for c in chunks if c.text] == ["ok", " 🦙"]  # " " held back: it may start " STOP"
    assert all("\ufffd" not in c.text for c in chunks)
    assert chunks[-1].stats is stats and stats.stop_reason == "stop"


# -- SmolLM2 end to end -----------------------------------------------------------------------------------


def test_first_chat_reply_equals_llama_cpp_exactly(smollm2, reference):
    chat = reference[SMOLLM2]["chat"][0]
    assert smollm2.chat_prompt_ids(chat["messages"]) == chat["prompt_ids"]
    generation = smollm2.chat(chat["messages"], temperature=0, max_tokens=48).result()
    assert generation.text == chat["reply"]
    assert generation.ids == chat["reply_ids"]
    assert generation.stats.stop_reason == "stop"
    assert generation.stats.generated_tokens == len(chat["reply_ids"])


def test_same_seed_same_text_different_seed_different(smollm2):
    prompt = "Write a short poem about the sea."
    kwargs = dict(temperature=1.0, top_k=0, top_p=1.0, min_p=0.0, max_tokens=24)
    a = smollm2.generate(prompt, seed=1234, **kwargs).result().text
    b = smollm2.generate(prompt, seed=1234, **kwargs).result().text
    c = smollm2.generate(prompt, seed=99, **kwargs).result().text
    assert a == b
    assert a != c


def test_multi_turn_chat_reuses_the_cache(smollm2):
    smollm2.reset()
    messages = [{"role": "user", "content": "Name a fruit."}]
    first = smollm2.chat(messages, temperature=0, max_tokens=16).result()
    messages += [{"role": "assistant", "content": first.text}, {"role": "user", "content": "And a vegetable?"}]
    second = smollm2.chat(messages, temperature=0, max_tokens=16).result()
    assert second.stats.cached_tokens > first.stats.prompt_tokens  # turn 1's prompt and reply were not re-run
    smollm2.reset()
    fresh = smollm2.chat(messages, temperature=0, max_tokens=16).result()
    assert fresh.stats.cached_tokens == 0
    assert fresh.ids == second.ids  # reuse changed nothing but the work done


def test_stop_strings_max_tokens_logprobs_and_stats(smollm2):
    g = smollm2.generate("1, 2, 3, 4, 5,", temperature=0, max_tokens=30, stop=[" 9"], logprobs=3).result()
    assert g.text == " 6, 7, 8,"
    assert g.stats.stop_reason == "stop" and "' 9'" in g.stats.stop_detail
    assert len(g.logprobs) == len(g.ids) and all(len(lp.top) == 3 for lp in g.logprobs)
    assert all(lp.top[0][0] == lp.token_id for lp in g.logprobs)  # greedy picks the most likely token
    g = smollm2.generate("1, 2, 3, 4, 5,", temperature=0, max_tokens=4).result()
    assert g.stats.stop_reason == "length" and g.stats.generated_tokens == 4
    s = g.stats
    assert s.prompt_tokens == len(g.prompt_ids) and s.ttft_s > 0 and s.prefill_tok_s > 0 and s.decode_tok_s > 0


def test_ignore_eos_generates_past_the_end_of_turn(smollm2):
    messages = [{"role": "user", "content": "Say hi."}]
    short = smollm2.chat(messages, temperature=0, max_tokens=64).result()
    assert short.stats.stop_reason == "stop" and short.stats.generated_tokens < 64  # the model ends its turn
    long = smollm2.chat(messages, temperature=0, max_tokens=64, ignore_eos=True).result()
    assert long.stats.stop_reason == "length" and long.stats.generated_tokens == 64
    assert long.text.startswith(short.text)


def test_breaking_out_cancels(smollm2):
    g = smollm2.generate("Once upon a time", temperature=0, max_tokens=50)
    for n, _ in enumerate(g):
        if n == 2:
            break
    g.close()
    assert g.stats.stop_reason == "cancelled"
    # the session is still usable
    assert smollm2.generate("1, 2, 3,", temperature=0, max_tokens=3).result().text == " 4,"


def test_unknown_sampling_option_is_a_clear_error(smollm2):
    from pellucid.engine.sampling import SamplingParamsError

    with pytest.raises(SamplingParamsError, match="temprature"):
        smollm2.generate("hi", temprature=0.5)


def test_too_long_prompt(smollm2_path):
    llm = pellucid.load(smollm2_path, device="cpu", ctx=64)
    with pytest.raises(ContextLengthError, match=r"the context holds 64"):
        llm.generate("word " * 100).result()
