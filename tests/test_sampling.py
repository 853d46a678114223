"""Samplers against llama.cpp's semantics (src/llama-sampling.cpp), on hand-made logits with exact answers.

Probabilities are built as log(p), so softmax gives p back to within float32 rounding; every threshold below
sits at least 0.01 away from a cumulative sum, so rounding cannot flip an answer.
"""

import math
import subprocess
import sys

import pytest
import torch

from pellucid.engine.sampling import (
    Candidates,
    SamplingParams,
    SamplingParamsError,
    apply_penalties,
    apply_temperature,
    make_sampler,
    min_p,
    token_logprobs,
    top_k,
    top_p,
    typical_p,
)

# Five tokens with probabilities 0.5 0.2 0.15 0.1 0.05, deliberately not in id order.
PROBS = {3: 0.5, 0: 0.2, 4: 0.15, 1: 0.1, 2: 0.05}
LOGITS = torch.tensor([math.log(PROBS[i]) for i in range(5)])


def ids(c: Candidates) -> list[int]:
    return c.token_ids().tolist()


# --- penalties ---------------------------------------------------------------------------------------------


def test_penalties_divide_positive_multiply_negative_then_subtract_counts():
    logits = torch.tensor([2.0, -1.0, 0.5, 0.0, 3.0])
    before = logits.clone()
    out = apply_penalties(logits, [0, 1, 1, 3], repeat_penalty=2.0, frequency_penalty=0.1, presence_penalty=0.5)
    # id0 seen once: 2/2 - 0.1 - 0.5; id1 twice: -1*2 - 0.2 - 0.5; id3 once, logit 0 counts as <= 0: 0*2 - 0.6
    assert out.tolist() == pytest.approx([0.4, -2.7, 0.5, -0.6, 3.0], abs=1e-6)
    assert torch.equal(logits, before), "apply_penalties must not modify its input"


def test_penalties_only_look_at_the_last_n_tokens():
    logits = torch.tensor([2.0, -1.0, 0.5, 0.0, 3.0])
    out = apply_penalties(logits, [0, 1, 3], repeat_penalty=2.0, repeat_last_n=2)  # sees [1, 3] only
    assert out.tolist() == pytest.approx([2.0, -2.0, 0.5, 0.0, 3.0])
    whole = apply_penalties(logits, [0, 1, 3], repeat_penalty=2.0, repeat_last_n=-1)
    assert whole.tolist() == pytest.approx([1.0, -2.0, 0.5, 0.0, 3.0])
    assert torch.equal(apply_penalties(logits, [0, 1, 3], repeat_penalty=2.0, repeat_last_n=0), logits)


# --- truncation samplers -----------------------------------------------------------------------------------


def test_top_k_keeps_the_k_highest_sorted():
    c = Candidates.all(torch.tensor([1.0, 5.0, 3.0, 4.0, 2.0]))
    assert ids(top_k(c, 2)) == [1, 3]
    assert ids(top_k(c, 10)) == [1, 3, 2, 4, 0]
    assert top_k(c, 0) is c


@pytest.mark.parametrize(
    "p, min_keep, expected",
    [
        (0.45, 0, [3]),  # 0.5 >= 0.45
        (0.6, 0, [3, 0]),  # 0.5 < 0.6 <= 0.7
        (0.8, 0, [3, 0, 4]),  # 0.7 < 0.8 <= 0.85
        (0.9, 0, [3, 0, 4, 1]),
        (0.45, 3, [3, 0, 4]),  # min_keep wins over p
        (0.0, 0, [3]),  # p=0 still keeps the most likely token
    ],
)
def test_top_p_keeps_smallest_prefix_reaching_p(p, min_keep, expected):
    assert ids(top_p(Candidates.all(LOGITS), p, min_keep)) == expected


def test_top_p_on_a_large_unsorted_vocab_matches_a_full_sort():
    logits = torch.randn(5000, generator=torch.Generator().manual_seed(0)) * 2
    for p in (0.5, 0.9, 0.99):
        order = torch.argsort(logits, descending=True)
        cumulative = torch.cumsum(torch.softmax(logits, 0)[order], 0)
        n_keep = int((cumulative < p).sum()) + 1
        assert ids(top_p(Candidates.all(logits), p)) == order[:n_keep].tolist()


@pytest.mark.parametrize(
    "p, min_keep, expected",
    [
        (0.25, 0, [3, 0, 4]),  # p_i >= 0.125: 0.5, 0.2, 0.15
        (0.35, 0, [3, 0]),  # p_i >= 0.175
        (0.35, 4, [3, 0, 4, 1]),  # min_keep
        (1.0, 0, [3]),
    ],
)
def test_min_p_is_relative_to_the_most_likely_token(p, min_keep, expected):
    kept = min_p(Candidates.all(LOGITS), p, min_keep)
    assert sorted(ids(kept)) == sorted(expected)
    # shifting all logits (an unnormalized distribution) changes nothing: only ratios to p_max matter
    assert sorted(ids(min_p(Candidates.all(LOGITS + 7.0), p, min_keep))) == sorted(expected)


def test_typical_p_keeps_tokens_whose_surprise_is_near_the_entropy():
    # Entropy of (0.5, 0.2, 0.15, 0.1, 0.05) is 1.3331 nats; |-ln p - H| orders the tokens
    # p=0.2 (0.276), p=0.15 (0.564), p=0.5 (0.640), p=0.1 (0.970), p=0.05 (1.663); running mass .2 .35 .85 .95 1.
    c = Candidates.all(LOGITS)
    assert ids(typical_p(c, 0.3)) == [0, 4]  # the most likely token is not "typical" here
    assert ids(typical_p(c, 0.5)) == [0, 4, 3]
    assert ids(typical_p(c, 0.1, min_keep=3)) == [0, 4, 3]
    assert typical_p(c, 1.0) is c


def test_temperature_divides_logits_and_zero_keeps_only_the_max():
    c = Candidates.all(torch.tensor([1.0, 2.0, -1.0]))
    assert apply_temperature(c, 0.5).logits.tolist() == [2.0, 4.0, -2.0]
    assert ids(apply_temperature(c, 0.0)) == [1]


# --- the chain -------------------------------------------------------------------------------------------


def draws(params: SamplingParams, logits: torch.Tensor, n: int, history=()) -> list[int]:
    sampler = make_sampler(params)
    return [sampler.sample(logits, history) for _ in range(n)]


def test_min_p_runs_before_temperature():
    # token 1 has 0.3x the probability of token 0: min_p=0.5 removes it even at temperature 100,
    # where (if temperature ran first) the two would be almost equally likely and both survive
    logits = torch.tensor([0.0, math.log(0.3)])
    params = SamplingParams(temperature=100.0, top_k=0, top_p=1.0, min_p=0.5, seed=1)
    assert set(draws(params, logits, 200)) == {0}
    assert set(draws(SamplingParams(temperature=100.0, top_k=0, top_p=1.0, min_p=0.0, seed=1), logits, 200)) == {0, 1}


def test_top_k_runs_before_top_p():
    # probs 0.4 0.35 0.25: top-k=2 renormalizes to 0.53/0.47, so top-p=0.5 then keeps only token 0;
    # top-p over all three would have kept two tokens (0.4 < 0.5)
    logits = torch.log(torch.tensor([0.4, 0.35, 0.25]))
    assert set(draws(SamplingParams(top_k=2, top_p=0.5, min_p=0.0, temperature=1.0, seed=3), logits, 200)) == {0}
    assert set(draws(SamplingParams(top_k=0, top_p=0.5, min_p=0.0, temperature=1.0, seed=3), logits, 200)) == {0, 1}


def test_penalties_run_before_truncation():
    logits = torch.tensor([5.0, 4.0, 1.0])
    params = SamplingParams(top_k=1, repeat_penalty=2.0, temperature=1.0, seed=0)
    assert set(draws(params, logits, 20, history=[0])) == {1}  # 5/2 < 4: token 0 falls out of the top-1


def test_samples_follow_softmax_of_tempered_logits():
    logits = torch.log(torch.tensor([0.6, 0.3, 0.1]))
    params = SamplingParams(temperature=0.5, top_k=0, top_p=1.0, min_p=0.0, seed=1234)
    counts = torch.bincount(torch.tensor(draws(params, logits, 20_000)), minlength=3).double() / 20_000
    expected = torch.softmax(logits / 0.5, 0).double()  # 0.78 0.20 0.02
    # binomial std <= 0.0035 at n=20000; 0.015 is > 4 sigma
    assert torch.allclose(counts, expected, atol=0.015), (counts, expected)


def test_greedy_is_argmax_of_penalized_logits():
    gen = torch.Generator().manual_seed(0)
    for _ in range(20):
        logits = torch.randn(1000, generator=gen)
        assert make_sampler(SamplingParams(temperature=0.0)).sample(logits) == int(logits.argmax())
    logits = torch.tensor([3.0, 2.9, 0.0])
    greedy = make_sampler(SamplingParams(temperature=0.0, repeat_penalty=1.5))
    assert greedy.sample(logits, history=[0]) == 1  # 3/1.5 = 2 < 2.9
    assert make_sampler(SamplingParams(temperature=-1.0)).sample(logits) == 0  # < 0 is greedy too, like llama.cpp


def test_greedy_with_typical_p_picks_the_max_of_the_typical_set():
    # llama.cpp's temperature 0 keeps the highest logit *left after* the truncation chain
    assert make_sampler(SamplingParams(temperature=0.0, top_k=0, typical_p=0.3)).sample(LOGITS) == 0


# --- seeds --------------------------------------------------------------------------------------------------

FLAT = torch.zeros(1000)
SEEDED = SamplingParams(top_k=0, top_p=1.0, min_p=0.0, temperature=1.0, seed=42)


def test_same_seed_same_sequence_different_seed_different():
    first = draws(SEEDED, FLAT, 50)
    assert draws(SEEDED, FLAT, 50) == first
    assert draws(SamplingParams(top_k=0, top_p=1.0, min_p=0.0, temperature=1.0, seed=43), FLAT, 50) != first


def test_same_seed_same_sequence_in_another_process():
    code = (
        "import torch; from pellucid.engine.sampling import SamplingParams, make_sampler;"
        "s = make_sampler(SamplingParams(top_k=0, top_p=1.0, min_p=0.0, temperature=1.0, seed=42));"
        "print([s.sample(torch.zeros(1000)) for _ in range(50)])"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == str(draws(SEEDED, FLAT, 50))


def test_no_seed_picks_a_random_one_and_records_it():
    unseeded = SamplingParams(top_k=0, top_p=1.0, min_p=0.0, temperature=1.0)
    a, b = make_sampler(unseeded), make_sampler(unseeded)
    assert a.seed != b.seed
    first = [a.sample(FLAT) for _ in range(20)]
    replay = make_sampler(SamplingParams(top_k=0, top_p=1.0, min_p=0.0, temperature=1.0, seed=a.seed))
    assert [replay.sample(FLAT) for _ in range(20)] == first


# --- parameters and logprobs --------------------------------------------------------------------------------


def test_defaults_are_llama_cpp_defaults():
    p = SamplingParams()
    assert (p.temperature, p.top_k, p.top_p, p.min_p, p.typical_p) == (0.8, 40, 0.95, 0.05, 1.0)
    assert (p.repeat_penalty, p.repeat_last_n, p.presence_penalty, p.frequency_penalty) == (1.0, 64, 0.0, 0.0)
    assert p.seed is None and p.logprobs is None and p.min_keep == 0


@pytest.mark.parametrize(
    "field, value",
    [
        ("temperature", float("nan")),
        ("temperature", "hot"),
        ("top_k", -1),
        ("top_k", 2.5),
        ("top_p", 1.5),
        ("top_p", -0.1),
        ("min_p", 2.0),
        ("typical_p", -1.0),
        ("repeat_penalty", 0.0),
        ("repeat_last_n", -2),
        ("presence_penalty", float("inf")),
        ("frequency_penalty", None),
        ("min_keep", -1),
        ("seed", -5),
        ("seed", 2**64),
        ("logprobs", -1),
        ("top_k", True),
    ],
)
def test_out_of_range_params_are_clear_errors(field, value):
    with pytest.raises(SamplingParamsError, match=field):
        SamplingParams(**{field: value})


def test_logprobs_come_from_log_softmax_of_raw_logits():
    logits = torch.tensor([1.0, 3.0, 2.0, -1.0])
    lp = token_logprobs(logits, token_id=2, top_n=2)
    expected = torch.log_softmax(logits, 0)
    assert lp.token_id == 2 and lp.logprob == pytest.approx(float(expected[2]))
    assert [i for i, _ in lp.top] == [1, 2]
    assert [v for _, v in lp.top] == pytest.approx([float(expected[1]), float(expected[2])])
    assert token_logprobs(logits, 0).top == []
