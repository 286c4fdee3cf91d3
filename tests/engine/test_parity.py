"""Engine greedy tokens equal the slow reference's, for the six canonical SWAA configs.

Small windows make prompts many windows long; several prompts of different lengths share each
batch; the prefill chunk size splits prompts mid-window; decoding runs long enough to wrap the
ring many times.
"""

import random

import pytest
import torch

from swaa_engine.attention.base import StepEntry, StepLayout
from swaa_engine.config import CacheConfig, SchedulerConfig
from swaa_engine.engine import LLM
from swaa_engine.models.llama import AttentionContext
from swaa_engine.reference import SWAAReference
from swaa_engine.sampling_params import SamplingParams
from swaa_engine.swaa import SWAAConfig, canonical_configs
from swaa_eval.scoring import score

CONFIGS = canonical_configs(window=16, sinks=4)
SMOL_CONFIGS = canonical_configs(window=48, sinks=4)


def assert_parity(ref, prompts, outs, steps):
    for p, o in zip(prompts, outs):
        assert len(o.token_ids) == steps
        mismatch = ref.first_greedy_mismatch(p, o.token_ids)
        assert mismatch is None, f"token {mismatch[0]}: reference picks {mismatch[1]} by a margin of {mismatch[2]:.3g}"


@pytest.fixture(scope="module")
def tiny_prompts():
    rng = random.Random(0)
    return [[rng.randrange(384) for _ in range(n)] for n in (150, 37, 90, 5)]


@pytest.mark.parametrize("name", list(CONFIGS))
def test_tiny_qwen3_parity(name, tiny_qwen3, tiny_prompts):
    folder, hf = tiny_qwen3
    swaa = CONFIGS[name]
    llm = LLM(folder, swaa=swaa, cache=CacheConfig(block_size=8, budget_bytes=8 << 20),
              scheduler=SchedulerConfig(max_num_batched_tokens=40))
    outs = llm.generate(tiny_prompts, SamplingParams(max_tokens=60, ignore_eos=True))
    ref = SWAAReference(hf, swaa)
    assert_parity(ref, tiny_prompts, outs, 60)  # 60 decode steps wrap the 20-slot ring 3 times
    # and literally: greedy decoding that recomputes the whole sequence every step
    assert ref.greedy(tiny_prompts[1], 20) == outs[1].token_ids[:20]


def test_configs_really_differ(tiny_qwen3, tiny_prompts):
    folder, _ = tiny_qwen3
    runs = {}
    for name in ("fa", "swa", "swa+sinks"):
        llm = LLM(folder, swaa=CONFIGS[name], cache=CacheConfig(block_size=8, budget_bytes=8 << 20))
        runs[name] = llm.generate(tiny_prompts[:1], SamplingParams(max_tokens=30, ignore_eos=True))[0].token_ids
    assert len({tuple(v) for v in runs.values()}) == 3


@pytest.fixture(scope="module")
def smol_prompts(smollm2):
    _, tok = smollm2
    text = open("/usr/share/common-licenses/GPL-3").read()
    return [tok.encode(text[:n]) for n in (900, 400, 650)]


@pytest.mark.parametrize("name", list(SMOL_CONFIGS))
def test_smollm2_parity(name, smollm2, smol_prompts):
    hf, tok = smollm2
    swaa = SMOL_CONFIGS[name]
    llm = LLM(None, swaa=swaa, hf_model=hf, tokenizer=tok, max_model_len=2048,
              cache=CacheConfig(block_size=16, budget_bytes=256 << 20), scheduler=SchedulerConfig(max_num_batched_tokens=100))
    outs = llm.generate(smol_prompts, SamplingParams(max_tokens=100, ignore_eos=True))
    assert_parity(SWAAReference(hf, swaa), smol_prompts, outs, 100)


def full_logits(llm, ids):
    """Logits at every position of one sequence, from the engine's own model and cache."""
    eng = llm.engine
    from swaa_engine.sequence import Sequence

    seq = Sequence("x", list(ids), SamplingParams())
    eng.cache.allocate(seq, len(ids))
    layout = StepLayout((StepEntry(0, len(ids), len(ids), tuple(seq.block_table), seq.ring),), 0)
    meta = eng.backend.prepare(layout)
    ctx = AttentionContext(eng.backend, meta, eng.runner.caches, eng.specs)
    hidden = eng.model(torch.tensor(ids), torch.arange(len(ids)), ctx)
    eng.cache.free(seq)
    return eng.model.logits(hidden)


def test_logits_match_transformers(tiny_qwen3, smollm2):
    for (hf, ids, kwargs) in [
        (tiny_qwen3[1], list(range(3, 200)), dict(model=tiny_qwen3[0])),
        (smollm2[0], smollm2[1].encode("The quick brown fox jumps over the lazy dog. " * 12), dict(hf_model=smollm2[0], tokenizer=smollm2[1])),
    ]:
        llm = LLM(cache=CacheConfig(budget_bytes=64 << 20), max_model_len=1024, **kwargs)
        ours = full_logits(llm, ids)
        with torch.inference_mode():
            theirs = hf(torch.tensor([ids])).logits[0].float()
        assert (ours - theirs).abs().max() < 1e-3 * theirs.abs().max()


# all-ring configs hold no paged blocks and are never preempted for lack of them; these mix ring and paged layers
@pytest.mark.parametrize("swap", [True, False], ids=["swap", "recompute"])
@pytest.mark.parametrize("name", ["fa", "swa+sinks+half_fa", "swa+sinks+fa_decode+quarter_fa"])
def test_preemption_resumes_with_identical_output(name, swap, tiny_qwen3, tiny_prompts):
    folder, hf = tiny_qwen3
    swaa = CONFIGS[name]
    params = SamplingParams(max_tokens=60, ignore_eos=True)
    roomy = LLM(folder, swaa=swaa, cache=CacheConfig(block_size=8, budget_bytes=8 << 20)).generate(tiny_prompts, params)
    # 32 blocks of 8 tokens: the four sequences need 36 at the end, so some are preempted
    kv_block = 2 * 2 * 16 * 4 * 8  # K+V, kv heads, head dim, fp32, block size
    n_paged = sum(s.cache_kind.value == "paged" for s in swaa.layer_specs(4))
    n_ring = 4 - n_paged
    budget = 32 * kv_block * n_paged + 4 * n_ring * 2 * 2 * 16 * 4 * 20
    tight = LLM(folder, swaa=swaa, max_model_len=256,
                cache=CacheConfig(block_size=8, budget_bytes=budget, swap_bytes=None if swap else 0),
                scheduler=SchedulerConfig(max_num_seqs=4))
    outs = tight.generate(tiny_prompts, params)
    stats = tight.engine.scheduler.stats
    assert stats.preemptions > 0
    assert (stats.swapped_out, stats.recomputed) == ((stats.preemptions, 0) if swap else (0, stats.preemptions))
    assert [o.token_ids for o in outs] == [o.token_ids for o in roomy]
    assert tight.engine.cache.is_idle() and len(tight.engine.swapper) == 0


@pytest.mark.parametrize("name", list(CONFIGS))
def test_swapped_and_restored_sequences_decode_identically(name, tiny_qwen3, tiny_prompts):
    """Every few steps the newest running sequence is swapped out (rings and blocks alike) and later restored,
    mid-prefill and mid-decode: greedy tokens equal an undisturbed run's, for the six canonical configs."""
    folder, _ = tiny_qwen3
    kw = dict(swaa=CONFIGS[name], cache=CacheConfig(block_size=8, budget_bytes=8 << 20),
              scheduler=SchedulerConfig(max_num_batched_tokens=40))
    params = SamplingParams(max_tokens=40, ignore_eos=True)
    want = [o.token_ids for o in LLM(folder, **kw).generate(tiny_prompts, params)]
    engine = LLM(folder, **kw).engine
    ids = [engine.add_request(p, params) for p in tiny_prompts]
    got = {i: [] for i in ids}
    step = 0
    while engine.has_work():
        step += 1
        running = engine.scheduler.running
        if step % 3 == 0 and running:
            assert engine.scheduler.preempt(max(running, key=lambda s: s.order).request_id)
        for c in engine.step():
            got[c.request_id] += c.token_ids
    assert engine.scheduler.stats.swapped_out >= 10 and engine.scheduler.stats.recomputed == 0
    assert [got[i] for i in ids] == want
    assert engine.cache.is_idle() and len(engine.swapper) == 0


@pytest.mark.parametrize("fa_decode", [True, "odd"])
def test_fa_tail_parity(fa_decode, tiny_qwen3, tiny_prompts):
    """The experimental question-tail knob: the last 12 prompt tokens read the whole prompt in fa_decode
    layers (chunk size 40 splits the tail across chunks); engine == reference, and it changes the output."""
    folder, hf = tiny_qwen3
    swaa = SWAAConfig(window=16, sinks=4, fa_decode=fa_decode, fa_tail=12)
    llm = LLM(folder, swaa=swaa, cache=CacheConfig(block_size=8, budget_bytes=8 << 20),
              scheduler=SchedulerConfig(max_num_batched_tokens=40))
    outs = llm.generate(tiny_prompts, SamplingParams(max_tokens=30, ignore_eos=True))
    assert_parity(SWAAReference(hf, swaa), tiny_prompts, outs, 30)
    plain = LLM(folder, swaa=SWAAConfig(window=16, sinks=4, fa_decode=fa_decode), cache=CacheConfig(block_size=8, budget_bytes=8 << 20))
    assert plain.generate(tiny_prompts[:1], SamplingParams(max_tokens=30, ignore_eos=True))[0].token_ids != outs[0].token_ids


@pytest.mark.parametrize("name", ["fa", "swa+sinks", "swa+sinks+fa_decode", "swa+sinks+half_fa"])
def test_score_equals_reference_logprobs(name, tiny_qwen3, tiny_prompts):
    """swaa_eval.scoring.score (the eval harness's LM loss) is the reference's log-softmax at every scored position."""
    folder, hf = tiny_qwen3
    swaa = CONFIGS[name]
    llm = LLM(folder, swaa=swaa, cache=CacheConfig(block_size=8, budget_bytes=8 << 20))
    ids = tiny_prompts[0]  # 150 tokens: the last 50 scored, as if generated
    got = torch.tensor(score(llm.engine, ids, num_prompt=100, chunk=32))
    ref = SWAAReference(hf, swaa).logits(ids, 100).log_softmax(-1)
    want = ref[99:-1].gather(1, torch.tensor(ids[100:])[:, None])[:, 0]
    assert got.shape == want.shape == (50,)
    assert torch.allclose(got, want, atol=1e-4), float((got - want).abs().max())
    assert llm.engine.cache.is_idle()


def test_a_request_aborted_after_its_preemption_leaves_no_host_copy(tiny_qwen3, tiny_prompts):
    folder, _ = tiny_qwen3
    engine = LLM(folder, swaa=CONFIGS["fa"], cache=CacheConfig(block_size=8, budget_bytes=8 << 20)).engine
    rid = engine.add_request(tiny_prompts[0], SamplingParams(max_tokens=5, ignore_eos=True))
    engine.step()
    assert engine.scheduler.preempt(rid)  # swapped out at the next step...
    engine.abort(rid)  # ...but aborted first
    engine.add_request(tiny_prompts[1], SamplingParams(max_tokens=2, ignore_eos=True))
    while engine.has_work():
        engine.step()
    assert len(engine.swapper) == 0 and engine.cache.is_idle()
