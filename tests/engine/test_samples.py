"""n samples per request in the engine (issue 21): the prompt computed once and shared by the samples (paged blocks
by reference, rings restored from a snapshot), each sample what it would be alone, offline ``LLM.generate`` with n."""

import pytest

from swaa_engine.config import CacheConfig, SchedulerConfig
from swaa_engine.engine import LLM
from swaa_engine.sampling_params import InvalidRequestError, SamplingParams
from swaa_engine.swaa import SWAAConfig

BLOCK = 8
PROMPT = list(range(5, 205))  # 200 tokens: 25 full blocks, longer than the ring (window 16 + 2 sinks)
KW = dict(max_model_len=512, cache=CacheConfig(block_size=BLOCK, budget_bytes=8 << 20),
          scheduler=SchedulerConfig(max_num_seqs=16, max_num_batched_tokens=64, max_waiting=32))


@pytest.fixture(scope="module")
def llm(tiny_qwen3):
    # ring layers (window 16, sinks 2) and one full layer: a sample forks both kinds of cache
    return LLM(tiny_qwen3[0], swaa=SWAAConfig(window=16, sinks=2, fa_layers=[1]), **KW)


def test_n8_computes_the_prompt_once(llm):
    stats = llm.engine.scheduler.stats
    before = stats.computed_tokens
    out = llm.generate(PROMPT, SamplingParams(n=8, max_tokens=6, temperature=1.0, seed=3, ignore_eos=True))[0]
    computed = stats.computed_tokens - before
    # the prompt once (200); each other sample recomputes only its last block (7 x 8: its last token's logits and
    # KV need a block of its own); then 5 decode steps x 8 samples
    assert computed == len(PROMPT) + 7 * BLOCK + 8 * 5, computed
    assert [s.index for s in out.samples] == list(range(8))
    assert [s.usage.cached_tokens for s in out.samples] == [0] + [len(PROMPT) - BLOCK] * 7
    assert out.usage.prompt_tokens == len(PROMPT) and out.usage.completion_tokens == 8 * 6
    assert {s.request_id for s in out.samples} == {out.request_id}
    assert (out.token_ids, out.text) == (out.samples[0].token_ids, out.samples[0].text)
    assert len({tuple(s.token_ids) for s in out.samples}) > 1  # independent samples


def test_each_sample_equals_its_request_alone(llm, tiny_qwen3):
    """Sharing the prompt's KV changes nothing: sample i is the request with ``sample_params(i)`` run alone on an
    engine without prefix caching (the prompt computed from scratch)."""
    params = SamplingParams(n=4, max_tokens=8, temperature=1.0, seed=17, ignore_eos=True)
    shared = llm.generate(PROMPT, params)[0]
    alone = LLM(tiny_qwen3[0], swaa=SWAAConfig(window=16, sinks=2, fa_layers=[1]),
                **{**KW, "cache": CacheConfig(block_size=BLOCK, budget_bytes=8 << 20, prefix_caching=False)})
    for i, s in enumerate(shared.samples):
        assert s.token_ids == alone.generate(PROMPT, params.sample_params(i))[0].token_ids, i


def test_generate_mixes_n_and_single_requests(llm):
    greedy = SamplingParams(max_tokens=4, ignore_eos=True)
    outs = llm.generate([PROMPT[:30], PROMPT[:50]], [SamplingParams(n=3, max_tokens=4, ignore_eos=True), greedy])
    assert len(outs) == 2 and len(outs[0].samples) == 3 and len(outs[1].samples) == 1
    # greedy samples agree with each other and with the request alone
    assert {tuple(s.token_ids) for s in outs[0].samples} == {tuple(llm.generate(PROMPT[:30], greedy)[0].token_ids)}
    assert outs[1].samples[0].token_ids == outs[1].token_ids


def test_refused_prompt_leaves_nothing_queued(llm):
    with pytest.raises(InvalidRequestError):
        llm.generate([PROMPT[:10], [10**9]], SamplingParams(n=2, max_tokens=2))
    assert not llm.engine.has_work()
