"""The host path's vectorized and incremental pieces equal their per-token definitions (torch-free but numpy)."""

import random

from hypothesis import given, settings
from hypothesis import strategies as st

from swaa_engine.attention.base import CacheGeometry, StepEntry, StepLayout, cache_writes
from swaa_engine.kv_cache.pools import ring_slot


def per_token(layout: StepLayout, g: CacheGeometry):
    """The definition, one token at a time (the loop cache_writes ran before it was vectorized)."""
    bs, W, S, R = g.block_size, g.window, g.sinks, g.ring_slots
    has_ring = any(e.ring is not None for e in layout.entries)
    has_paged = any(e.block_table for e in layout.entries)
    paged, ring_tok, ring_slots, t = [], [], [], 0
    for e in layout.entries:
        if has_paged:
            paged.extend(e.block_table[p // bs] * bs + p % bs for p in range(e.start, e.end))
        if has_ring:
            keep_from = max(e.start, e.end - W)
            for p in range(e.start, e.end):
                if p < S or p >= keep_from:
                    ring_tok.append(t + p - e.start)
                    ring_slots.append(e.ring * R + ring_slot(p, S, W))
        t += e.num_tokens
    return (paged if has_paged else None, ring_tok if has_ring else None, ring_slots if has_ring else None)


@settings(max_examples=300, deadline=None)
@given(seed=st.integers(0, 2**31), decodes=st.integers(0, 6), chunks=st.integers(0, 4), paged=st.booleans(),
       ring=st.booleans(), window=st.integers(1, 40), sinks=st.integers(0, 6), block_size=st.sampled_from([1, 4, 16]))
def test_cache_writes_equal_the_per_token_definition(seed, decodes, chunks, paged, ring, window, sinks, block_size):
    rnd = random.Random(seed)
    g = CacheGeometry(block_size, window, sinks, max_len=400)
    entries = []
    for i in range(decodes + chunks):
        decode = i < decodes
        prompt = rnd.randint(1, 150)
        start = rnd.randint(prompt, 300) if decode else rnd.randint(0, prompt - 1)
        n = 1 if decode else rnd.randint(1, prompt - start)
        pages = -(-(start + n) // block_size)
        table = tuple(rnd.sample(range(1000), pages)) if paged else ()
        entries.append(StepEntry(start, n, prompt, table, rnd.randint(0, 20) if ring else None))
    layout = StepLayout(tuple(entries), decodes)
    got = cache_writes(layout, g)
    want = per_token(layout, g)
    for a, b in zip((got.paged_slots, got.ring_tokens, got.ring_slots), want):
        assert (a is None) == (b is None)
        if a is not None:
            assert a.tolist() == b


def test_repetition_penalty_through_the_engine_equals_transformers(tiny_qwen3):
    """The presence table kept across steps (and the penalty applied in place on the step's logits) decodes what
    transformers' own repetition penalty does over prompt + generated tokens; logprobs come with every token."""
    import torch

    from swaa_engine import LLM, SamplingParams, SWAAConfig

    folder, hf = tiny_qwen3
    prompts = [[(5 * i + 3 * j) % 40 + 1 for j in range(n)] for i, n in enumerate((9, 23, 14))]
    llm = LLM(folder, swaa=SWAAConfig(), max_model_len=128)
    outs = llm.generate(prompts, SamplingParams(max_tokens=16, ignore_eos=True, repetition_penalty=1.8, logprobs=2))
    for p, o in zip(prompts, outs):
        with torch.no_grad():
            ref = hf.generate(torch.tensor([p]), max_new_tokens=16, min_new_tokens=16, do_sample=False,
                              repetition_penalty=1.8, pad_token_id=0)[0, len(p):].tolist()
        assert o.token_ids == ref
        assert len(o.logprobs) == 16 and all(len(lp.top) == 2 for lp in o.logprobs)
    plain = llm.generate(prompts[:1], SamplingParams(max_tokens=16, ignore_eos=True))[0].token_ids
    assert plain != outs[0].token_ids  # the penalty changed something here
    assert llm.engine.cache.is_idle() and not llm.engine.runner.presence._rows  # every row given back
