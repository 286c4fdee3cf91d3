import random

import pytest
import torch

from swaa_engine.sampler import SampleRow, sample
from swaa_engine.sampling_params import InvalidRequestError, SamplingParams


def row(seed=None, history=(), **kw):
    p = SamplingParams(seed=seed, **kw)
    return SampleRow(p, None if p.greedy else random.Random(seed), list(history))


def test_greedy_is_argmax():
    logits = torch.randn(3, 50)
    assert sample(logits, [row() for _ in range(3)]).token_ids == logits.argmax(-1).tolist()


def test_seeded_sampling_ignores_batch_composition():
    torch.manual_seed(0)
    target = torch.randn(1, 100)
    alone = [sample(target, [r]).token_ids[0] for r in [row(seed=7, temperature=1.0)] for _ in range(1)]
    seq_alone, seq_batched = [], []
    r1 = row(seed=7, temperature=1.0)
    r2 = row(seed=7, temperature=1.0)
    for _ in range(30):
        seq_alone.append(sample(target, [r1]).token_ids[0])
        others = torch.randn(4, 100)
        batch = torch.cat([others[:2], target, others[2:]])
        rows = [row(seed=1, temperature=0.7), row(), r2, row(seed=3, temperature=2.0), row()]
        seq_batched.append(sample(batch, rows).token_ids[2])
    assert seq_alone == seq_batched and seq_alone[0] == alone[0]
    assert len(set(seq_alone)) > 1  # it really samples


@pytest.mark.parametrize("kw,allowed", [
    (dict(top_k=3), 3),
    (dict(top_p=0.5), None),
    (dict(min_p=0.2), None),
])
def test_filters_restrict_the_support(kw, allowed):
    logits = torch.tensor([[4.0, 3.5, 3.0, 1.0, 0.5, 0.0, -1.0, -2.0]])
    probs = logits.softmax(-1)[0]
    if "top_p" in kw:
        allowed = int((probs.cumsum(0) - probs < kw["top_p"]).sum())
    if "min_p" in kw:
        allowed = int((probs >= kw["min_p"] * probs.max()).sum())
    r = row(seed=0, temperature=1.0, **kw)
    seen = {sample(logits, [r]).token_ids[0] for _ in range(400)}
    assert seen == set(range(allowed))


def test_repetition_penalty_discourages_seen_tokens():
    logits = torch.tensor([[2.0, 1.9, -1.0]])
    assert sample(logits, [row()]).token_ids == [0]
    assert sample(logits, [row(history=[0], repetition_penalty=1.2)]).token_ids == [1]


def test_logprobs_of_chosen_and_top_n():
    logits = torch.randn(2, 30)
    res = sample(logits, [row(logprobs=3), row()])
    lp, top = res.logprobs[0]
    ref = logits[0].log_softmax(-1)
    assert lp == pytest.approx(float(ref.max()), abs=1e-6)
    assert [t for t, _ in top] == ref.topk(3).indices.tolist()
    assert res.logprobs[1] is None


@pytest.mark.parametrize("kw,field", [
    (dict(max_tokens=-1), "max_tokens"), (dict(max_tokens=0), "max_tokens"), (dict(top_p=1.5), "top_p"),
    (dict(top_p=0), "top_p"), (dict(temperature=-1), "temperature"), (dict(top_k=-2), "top_k"),
    (dict(min_p=2), "min_p"), (dict(repetition_penalty=0), "repetition_penalty"), (dict(logprobs=99), "logprobs"),
    (dict(stop=[""]), "stop"), (dict(stop_token_ids=[-4]), "stop_token_ids"), (dict(seed=-1), "seed"),
])
def test_invalid_params_name_their_field(kw, field):
    with pytest.raises(InvalidRequestError) as e:
        SamplingParams(**kw)
    assert e.value.field == field


# -- extreme floats (issue 19): any valid parameters give a valid token; tiny temperatures are greedy -----------
from hypothesis import given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

from swaa_engine.sampling_params import GREEDY_TEMPERATURE  # noqa: E402

VOCAB = 64
f32 = dict(width=32, allow_nan=False)
any_logits = st.lists(st.floats(allow_infinity=False, **f32), min_size=VOCAB, max_size=VOCAB)
params = st.fixed_dictionaries(dict(
    temperature=st.one_of(st.floats(0, 100, allow_subnormal=True, **f32), st.sampled_from([1e-38, 1e-45, 1e-30, GREEDY_TEMPERATURE])),
    top_k=st.integers(0, 2**32 - 1),
    top_p=st.one_of(st.floats(0, 1, exclude_min=True, allow_subnormal=True, **f32), st.just(1.0)),
    min_p=st.floats(0, 1, allow_subnormal=True, **f32),
    repetition_penalty=st.one_of(st.floats(0, 10, exclude_min=True, allow_subnormal=True, **f32), st.just(1.0)),
    seed=st.integers(0, 2**63 - 1),
))


def _penalized(logits: torch.Tensor, history, pen: float) -> torch.Tensor:
    """The repetition penalty as documented, in float64 and clamped to float32's range (the reference)."""
    x = logits.double().clone()
    for t in set(history):
        x[t] = x[t] / pen if x[t] > 0 else x[t] * pen
    m = float(torch.finfo(torch.float32).max)
    return x.clamp(-m, m).float()


@settings(max_examples=200, deadline=None, derandomize=True)
@given(any_logits, params, st.lists(st.integers(0, VOCAB - 1), max_size=8))
def test_any_parameters_give_a_valid_token(values, kw, history):
    logits = torch.tensor([values], dtype=torch.float32)
    r = row(history=history, **kw)
    out = sample(logits, [r])
    assert 0 <= out.token_ids[0] < VOCAB
    if kw["temperature"] < GREEDY_TEMPERATURE or kw["top_k"] == 1:  # greedy, or only the argmax survives
        assert out.token_ids[0] == int(_penalized(logits[0], history, kw["repetition_penalty"]).argmax())


@settings(max_examples=150, deadline=None, derandomize=True)
@given(st.lists(st.floats(-1e4, 1e4, **f32), min_size=VOCAB, max_size=VOCAB), st.integers(0, VOCAB - 1),
       st.floats(GREEDY_TEMPERATURE, 1e-3), st.integers(0, 2**63 - 1),
       st.floats(0, 1, exclude_min=True, **f32), st.floats(0, 1, **f32))
def test_sampling_matches_greedy_as_temperature_goes_to_zero(values, top, temperature, seed, top_p, min_p):
    """A winner 1 logit ahead at T <= 1e-3 has all but e^-1000 of the mass: sampling must pick it."""
    logits = torch.tensor(values, dtype=torch.float32)
    logits[top] = logits.max() + 1.0
    rows = [row(seed=seed, temperature=temperature, top_p=top_p, min_p=min_p), row()]
    assert sample(torch.stack([logits, logits]), rows).token_ids == [top, top]


def test_tiny_temperature_is_greedy_not_overflow():
    """1e-38 used to divide logits into inf and sample from NaN probabilities (issue 19)."""
    torch.manual_seed(0)
    logits = torch.randn(4, 1000) * 30
    for t in (1e-38, 1e-45, 9e-6):
        assert SamplingParams(temperature=t).greedy
        assert sample(logits, [row(seed=i, temperature=t) for i in range(4)]).token_ids == logits.argmax(-1).tolist()
    assert not SamplingParams(temperature=GREEDY_TEMPERATURE).greedy


def test_overflowing_penalty_still_samples_the_dominant_token():
    """A penalty near 0 divides a positive logit past float32's range: that token dominates, it is not NaN noise."""
    logits = torch.zeros(1, 100)
    logits[0, 42] = 3.0
    picks = {sample(logits, [row(seed=s, temperature=1.0, repetition_penalty=1e-39, history=[42, 7])]).token_ids[0]
             for s in range(20)}
    assert picks == {42}


def _penalized_reference(logits, history, pen):
    """The repetition penalty read from the whole history (what every step did before presence was kept)."""
    out = logits.clone()
    for i, hist in enumerate(history):
        ids = torch.tensor(sorted(set(hist)), dtype=torch.long)
        if len(ids):
            sel = out[i, ids]
            out[i, ids] = torch.where(sel > 0, sel / pen[i], sel * pen[i])
    return out


def test_presence_kept_across_steps_equals_reading_the_whole_history():
    """Requests come and go (rows reused, the table grows from 2); every step's tokens and logprobs equal those of
    the whole-history penalty, and the caller's logits are left as they were unless given up (``inplace``)."""
    from swaa_engine.sampler import TokenPresence

    g = torch.Generator().manual_seed(0)
    vocab, presence = 50, TokenPresence(50, torch.device("cpu"), capacity=2)
    live: dict[str, list[int]] = {}
    pens = {}
    for step in range(40):
        if step % 3 == 0 and len(live) < 6:  # a newcomer with a prompt
            key = f"r{step}"
            live[key] = torch.randint(0, vocab, (5,), generator=g).tolist()
            pens[key] = [1.3, 0.7, 2.0][step % 3 if step % 2 else 1]
        if step % 7 == 6:  # one finishes: its row goes back
            gone = sorted(live)[0]
            live.pop(gone)
            presence.drop(gone)
        keys = sorted(live)
        rows = [SampleRow(SamplingParams(repetition_penalty=pens[k], logprobs=2), None, live[k], k) for k in keys]
        logits = torch.randn(len(keys), vocab, generator=g) * 4
        before = logits.clone()
        got = sample(logits, rows, presence, inplace=step % 2 == 0)
        if step % 2:
            assert torch.equal(logits, before)
        want = _penalized_reference(before, [live[k] for k in keys], [pens[k] for k in keys])
        assert got.token_ids == want.argmax(-1).tolist()
        assert got.token_ids == sample(before.clone(), [SampleRow(r.params, None, list(r.history)) for r in rows]).token_ids
        ref_lp = before.log_softmax(-1)
        for i, (lp, top) in enumerate(got.logprobs):  # of the raw logits, as before
            assert lp == pytest.approx(float(ref_lp[i, got.token_ids[i]]), abs=1e-6)
            assert [t for t, _ in top] == ref_lp[i].topk(2).indices.tolist()
        for k, t in zip(keys, got.token_ids):
            live[k].append(t)
    assert presence.table.shape[0] >= 6 and len(presence._rows) == len(live)


# -- issue 21: presence/frequency penalties, logit bias, masks -----------------------------------------------------
def test_presence_and_frequency_penalties_count_generated_tokens_only():
    logits = torch.tensor([[2.0, 1.9, 1.0, -1.0]])
    # token 0 in the prompt only: no output penalty applies to it
    assert sample(logits, [SampleRow(SamplingParams(presence_penalty=2.0), None, [0, 2], num_prompt=2)]).token_ids == [0]
    # generated once: presence 0.5 takes 0.5 off token 0 (2.0 -> 1.5 < 1.9)
    assert sample(logits, [SampleRow(SamplingParams(presence_penalty=0.5), None, [3, 0], num_prompt=1)]).token_ids == [1]
    # frequency scales with the count: 0 generated 3 times at 0.2 -> 1.4; 1 once -> 1.7; 2 untouched at 1.0
    r = SampleRow(SamplingParams(frequency_penalty=0.2), None, [3, 0, 0, 0, 1], num_prompt=1)
    assert sample(logits, [r]).token_ids == [1]
    r = SampleRow(SamplingParams(frequency_penalty=0.5), None, [3, 0, 0, 0, 1, 1], num_prompt=1)  # 0.5, 0.9, 1.0
    assert sample(logits, [r]).token_ids == [2]


def test_counts_kept_across_steps_equal_counting_the_whole_history():
    from swaa_engine.sampler import TokenPresence

    torch.manual_seed(1)
    table = TokenPresence(50, torch.device("cpu"), capacity=1, counts=True)
    hist = [1, 2, 3]
    p = SamplingParams(frequency_penalty=0.3, presence_penalty=0.1)
    for step in range(12):
        hist.append(int(torch.randint(0, 50, ()).item()))
        logits = torch.randn(1, 50)
        kept = sample(logits.clone(), [SampleRow(p, None, hist, "r", num_prompt=3)], counts=table)
        whole = sample(logits.clone(), [SampleRow(p, None, list(hist), num_prompt=3)])
        assert kept.token_ids == whole.token_ids
    counts = table.rows([SampleRow(p, None, hist, "r", num_prompt=3)])[0]
    assert counts.tolist() == [float(hist[3:].count(t)) for t in range(50)]


def test_logit_bias_and_masks():
    logits = torch.tensor([[2.0, 1.9, 1.0, -1.0]])
    assert sample(logits, [row(logit_bias={3: 5.0})]).token_ids == [3]
    assert sample(logits, [row(logit_bias={0: -100.0})]).token_ids == [1]
    masked = SampleRow(SamplingParams(temperature=1.0, seed=0), random.Random(0), [], masked=(0, 1))
    assert {sample(logits, [masked]).token_ids[0] for _ in range(200)} == {2, 3}
    # logprobs stay those of the model's distribution, not of the masked one
    res = sample(logits, [SampleRow(SamplingParams(logprobs=1), None, [], masked=(0,))])
    assert res.token_ids == [1] and res.logprobs[0][1][0][0] == 0


@pytest.mark.parametrize("kw,field", [
    (dict(presence_penalty=2.5), "presence_penalty"), (dict(frequency_penalty=-3), "frequency_penalty"),
    (dict(logit_bias={1: 101.0}), "logit_bias"), (dict(logit_bias={i: 1.0 for i in range(301)}), "logit_bias"),
    (dict(logit_bias={-1: 1.0}), "logit_bias"), (dict(min_tokens=300), "min_tokens"), (dict(bad_words=[""]), "bad_words"),
    (dict(banned_token_ids=[-1]), "banned_token_ids"), (dict(prompt_logprobs=21), "prompt_logprobs"),
    (dict(priority=2**31), "priority"), (dict(timeout=-1.0), "timeout"),
])
def test_invalid_issue21_params_name_their_field(kw, field):
    with pytest.raises(InvalidRequestError) as e:
        SamplingParams(**kw)
    assert e.value.field == field


def test_unfiltered_rows_draw_from_the_softmax():
    """Rows without top-k/p or min-p skip the sort: their draws still follow softmax(logits / T), never a token
    masked to -inf, and stay each row's own whatever the batch."""
    logits = torch.tensor([[2.0, -float("inf"), 1.0, 0.0, -float("inf"), 1.5]])
    probs = torch.softmax(logits / 0.8, -1)[0]
    r = row(seed=4, temperature=0.8)
    draws = [sample(logits, [r]).token_ids[0] for _ in range(4000)]
    freq = torch.bincount(torch.tensor(draws), minlength=6).double() / len(draws)
    assert freq[1] == freq[4] == 0
    assert torch.allclose(freq, probs.double(), atol=0.03), (freq, probs)
    # a filtered row beside it does not change its draws
    a, b = row(seed=9, temperature=1.0), row(seed=9, temperature=1.0)
    both = torch.cat([logits, logits])
    alone = [sample(logits, [a]).token_ids[0] for _ in range(50)]
    mixed = [sample(both, [row(seed=1, temperature=1.0, top_k=2), b]).token_ids[1] for _ in range(50)]
    assert alone == mixed
