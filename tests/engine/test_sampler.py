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
