"""Issue 21 items 3-4 in the engine: sampling controls (penalties, logit bias, min_tokens, bad words, banned ids,
prompt logprobs), priorities and deadlines."""

import time

import pytest
import torch

from swaa_engine.config import CacheConfig, SchedulerConfig
from swaa_engine.engine import LLM
from swaa_engine.sampling_params import InvalidRequestError, SamplingParams
from swaa_engine.sequence import FinishReason, Sequence, SeqStatus
from tests.engine.test_scheduler import make, run_step

MIXED_KW = dict(max_model_len=512, cache=CacheConfig(block_size=8, budget_bytes=4 << 20),
                scheduler=SchedulerConfig(max_num_batched_tokens=32, max_waiting=16))


@pytest.fixture
def tiny(tiny_qwen3):
    from swaa_engine.swaa import SWAAConfig

    return LLM(tiny_qwen3[0], swaa=SWAAConfig(window=16, sinks=2, fa_layers=[1]), **MIXED_KW)


@pytest.fixture(scope="module")
def smol(smollm2):
    hf, tok = smollm2
    return LLM(None, hf_model=hf, tokenizer=tok, max_model_len=1024, cache=CacheConfig(budget_bytes=64 << 20))


PROMPT = list(range(5, 45))


# -- scheduler: priority and deadlines (no model, milliseconds) ----------------------------------------------------
def pseq(n, rid, priority=0, deadline=None):
    return Sequence(rid, list(range(n)), SamplingParams(priority=priority), deadline=deadline)


def test_higher_priority_admitted_first_equal_priorities_fcfs():
    s, _ = make(budget=4, max_seqs=1)
    for rid, pr in (("a", 0), ("b", 5), ("c", 0), ("d", 5), ("e", -1)):
        s.add(pseq(4, rid, pr))
    order = []
    while s.has_work():
        out = run_step(s)
        for c in out.chunks:
            if c.seq.num_generated and not c.seq.finished:
                s.finish(c.seq, FinishReason.LENGTH)
                order.append(c.seq.request_id)
    assert order == ["b", "d", "a", "c", "e"]


def test_lowest_priority_preempted_first():
    s, mgr = make(blocks=6, bs=4, budget=64, max_seqs=3)
    hi, lo = pseq(7, "hi", 9), pseq(7, "lo", -3)
    s.add(hi)
    s.add(lo)
    for _ in range(12):
        if s.num_preemptions:
            break
        run_step(s)
    assert s.num_preemptions == 1
    assert lo.status is SeqStatus.WAITING and hi.status is SeqStatus.RUNNING


def test_deadline_ends_queued_and_running_sequences_and_frees_their_slots():
    s, mgr = make(budget=8, max_seqs=1)
    now = time.monotonic()
    run, queued, later = pseq(6, "run", deadline=now + 0.005), pseq(6, "queued", deadline=now + 0.005), pseq(6, "later")
    for q in (run, queued, later):
        s.add(q)
    run_step(s)
    assert run.status is SeqStatus.RUNNING and not mgr.is_idle()
    assert s.expire(now) == []
    time.sleep(0.01)
    late = s.expire(time.monotonic())
    assert {q.request_id for q in late} == {"run", "queued"}
    assert all(q.finish_reason is FinishReason.DEADLINE for q in late)
    assert not s.running and list(s.waiting) == [later] and mgr.is_idle()


def test_engine_deadline_while_queued_and_running(tiny):
    eng = tiny.engine
    timeout = 2.0
    a = eng.add_request(PROMPT, SamplingParams(max_tokens=460, ignore_eos=True, timeout=timeout))
    b = eng.add_request(PROMPT, SamplingParams(max_tokens=4, ignore_eos=True, timeout=0.0))  # late at once
    finals, got, t0 = {}, 0, time.monotonic()

    def step():
        nonlocal got
        for c in eng.step():
            got += len(c.token_ids) if c.request_id == a else 0
            if c.finished:
                finals[c.request_id] = c

    # run until `a` is decoding, then let its deadline pass between two steps: the deadline then lands on a running
    # request whatever the machine's speed (a fixed short timeout expired before the first token on a loaded CPU)
    while a not in finals and got == 0:
        step()
    assert a not in finals, "the first step took longer than the deadline: machine too slow for this test"
    time.sleep(max(0.0, t0 + timeout - time.monotonic()) + 0.01)
    while eng.has_work() and time.monotonic() - t0 < timeout + 10:
        step()
    assert finals[a].finish_reason is FinishReason.DEADLINE and finals[b].finish_reason is FinishReason.DEADLINE
    assert finals[b].usage.completion_tokens == 0
    assert 0 < finals[a].usage.completion_tokens < 460
    assert timeout <= finals[a].timings.total_s < timeout + 2  # ended at the first step after its deadline
    assert eng.cache.is_idle()


# -- sampling controls through the engine --------------------------------------------------------------------------
def test_banned_ids_and_logit_bias_through_the_engine(tiny):
    free = tiny.generate(PROMPT, SamplingParams(max_tokens=8, ignore_eos=True))[0].token_ids
    banned = tiny.generate(PROMPT, SamplingParams(max_tokens=8, ignore_eos=True, banned_token_ids=set(free)))[0].token_ids
    assert not set(banned) & set(free)
    forced = tiny.generate(PROMPT, SamplingParams(max_tokens=6, ignore_eos=True, logit_bias={7: 100.0}))[0].token_ids
    assert forced == [7] * 6


def test_min_tokens_masks_eos_and_stop_ids(tiny):
    first = tiny.generate(PROMPT, SamplingParams(max_tokens=1, ignore_eos=True))[0].token_ids[0]
    out = tiny.generate(PROMPT, SamplingParams(max_tokens=8, stop_token_ids=[first]))[0]
    assert out.finish_reason is FinishReason.STOP and len(out.token_ids) == 1
    out = tiny.generate(PROMPT, SamplingParams(max_tokens=8, stop_token_ids=[first], min_tokens=5))[0]
    assert len(out.token_ids) >= 5 and first not in out.token_ids[:5]


def test_out_of_vocab_ids_refused(tiny):
    v = tiny.engine.dims.vocab_size
    for kw, field in ((dict(banned_token_ids=[v]), "banned_token_ids"), (dict(logit_bias={v: 1.0}), "logit_bias")):
        with pytest.raises(InvalidRequestError) as e:
            tiny.engine.add_request(PROMPT, SamplingParams(**kw))
        assert e.value.field == field


def test_output_penalties_change_greedy_repeats(tiny):
    base = tiny.generate(PROMPT, SamplingParams(max_tokens=24, ignore_eos=True))[0].token_ids
    pen = tiny.generate(PROMPT, SamplingParams(max_tokens=24, ignore_eos=True, frequency_penalty=2.0, presence_penalty=2.0))[0].token_ids
    assert len(set(base)) < len(base)  # the random model repeats itself greedily ...
    assert len(set(pen)) > len(set(base))  # ... and the penalties spread it out


def test_bad_words_never_generated(smol):
    p = "The capital of France is"
    free = smol.generate(p, SamplingParams(max_tokens=8))[0]
    assert "Paris" in free.text
    out = smol.generate(p, SamplingParams(max_tokens=8, bad_words=["Paris"]))[0]
    assert "Paris" not in out.text


def test_prompt_logprobs_match_the_reference_and_skip_the_prefix_cache(tiny, tiny_qwen3):
    hf = tiny_qwen3[1]
    prompt = list(range(3, 83))  # several chunks of 32
    tiny.generate(prompt, SamplingParams(max_tokens=1))  # now cached
    queried = tiny.engine.cache.prefix.stats.queried_tokens
    out = tiny.generate(prompt, SamplingParams(max_tokens=2, prompt_logprobs=3))[0]
    assert out.usage.cached_tokens == 0
    assert tiny.engine.cache.prefix.stats.queried_tokens == queried  # no lookup: not a miss of the hit rate
    lps = out.prompt_logprobs
    assert [l.token_id for l in lps] == prompt[1:]
    with torch.no_grad():
        ref = torch.log_softmax(hf(torch.tensor([prompt])).logits[0].float(), -1)
    # the engine's SWAA (window 16) differs from full attention only past the window: compare the first 16
    for p, l in enumerate(lps[:15]):
        assert l.logprob == pytest.approx(float(ref[p, prompt[p + 1]]), abs=2e-3)
        assert [t for t, _ in l.top] == ref[p].topk(3).indices.tolist()
    again = tiny.generate(prompt, SamplingParams(max_tokens=1))[0]
    assert again.usage.cached_tokens > 0 and again.prompt_logprobs is None
