"""The scheduler under memory pressure and mixed lengths (torch-free, milliseconds).

A fake model loop drives it: each step advances the scheduled chunks, sequences that sample get a token,
and a sequence ends when it has its output length (or is aborted). What must hold whatever the load:
every request finishes with its tokens, nothing deadlocks or starves, the pools' accounting is exact after
every step, and little work is thrown away.
"""

from __future__ import annotations

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from swaa_engine.config import SchedulerConfig
from swaa_engine.kv_cache.manager import CacheManager
from swaa_engine.kv_cache.pools import SwapSpace
from swaa_engine.sampling_params import SamplingParams
from swaa_engine.scheduler import Scheduler
from swaa_engine.sequence import FinishReason, Sequence, SeqStatus
from swaa_engine.swaa import SWAAConfig

BLOCK_BYTES, RING_BYTES = 100, 7  # accounting units; any positive values do


def make(cfg=SWAAConfig(), blocks=64, rings=8, bs=4, budget=16, max_seqs=8, swap_blocks=None, layers=2, reserve=512):
    specs = cfg.layer_specs(layers)
    swap = None
    if swap_blocks:
        swap = SwapSpace(swap_blocks * BLOCK_BYTES + rings * RING_BYTES, BLOCK_BYTES, RING_BYTES)
    mgr = CacheManager(specs, bs, blocks, rings, swap)
    conf = SchedulerConfig(max_num_seqs=max_seqs, max_num_batched_tokens=budget, max_waiting=10_000,
                           decode_reserve_tokens=reserve)
    return Scheduler(conf, mgr), mgr


def seq(prompt, out, rid):
    return Sequence(rid, list(range(prompt)), SamplingParams(max_tokens=out))


def check_accounting(s: Scheduler, mgr: CacheManager) -> None:
    """Every block, ring and swapped byte is held by exactly one live sequence."""
    live = list(s.running) + list(s.waiting)
    tables = [b for x in live for b in x.block_table]
    assert len(tables) == len(set(tables)) == mgr.blocks.num_used
    assert sum(x.ring is not None for x in live) == mgr.rings.num_used
    assert sum(x.swapped or 0 for x in live) == mgr.swap.used_bytes
    assert all(x.status is SeqStatus.RUNNING for x in s.running)
    assert all(x.status is SeqStatus.WAITING and not x.block_table and x.ring is None for x in s.waiting)
    for x in s.running:  # a prefilling sequence holds the blocks of its whole prompt; a decoding one, its context
        assert len(x.block_table) >= mgr.blocks_for(x.num_tokens - x.is_decoding)


def drive(s, mgr, arrivals, max_steps=100_000, aborts=()):
    """Run to completion. ``arrivals``: (step, Sequence); ``aborts``: (step, request id). Returns per-step outputs."""
    arrivals = sorted(arrivals, key=lambda a: a[0])
    aborts = dict(aborts)
    outs, i, step = [], 0, 0
    while i < len(arrivals) or s.has_work():
        while i < len(arrivals) and arrivals[i][0] <= step:
            s.add(arrivals[i][1])
            i += 1
        if step in aborts:
            s.abort(aborts[step])
        out = s.schedule()
        s.advance(out)
        for c in out.chunks:
            x = c.seq
            if c.samples and x.status is SeqStatus.RUNNING:
                x.append(7)
                if x.num_generated >= x.params.max_tokens:
                    s.finish(x, FinishReason.LENGTH)
        check_accounting(s, mgr)
        outs.append(out)
        step += 1
        assert step < max_steps, "no progress: deadlock or starvation"
    assert mgr.is_idle()
    return outs


def needed(seqs):
    """Tokens a run must compute: each prompt, and every generated token but the last."""
    return sum(x.num_prompt + x.params.max_tokens - 1 for x in seqs)


def test_long_requests_competing_for_the_cache_are_not_recomputed():
    # The cache holds 2.5 full sequences; six long requests arrive at once. The scheduler that admitted a
    # request when its first chunk fit computed 4.0x the needed tokens here (34 preemptions).
    bs, prompt, out = 4, 200, 40
    blocks = int(2.5 * (prompt + out) / bs)
    s, mgr = make(blocks=blocks, bs=bs, budget=64, max_seqs=8)
    seqs = [seq(prompt, out, f"r{i}") for i in range(6)]
    drive(s, mgr, [(0, x) for x in seqs])
    assert all(x.num_generated == out for x in seqs)
    assert s.stats.computed_tokens <= 1.25 * needed(seqs)
    assert s.stats.recomputed_tokens == 0


def test_decodes_that_outgrow_the_cache_swap_the_newest_instead_of_recomputing():
    # 4 blocks of 4 tokens, no decode reserve: two 7-token prompts fill the cache; growth must preempt.
    s, mgr = make(blocks=4, bs=4, budget=64, swap_blocks=4, reserve=0)
    a, b = seq(7, 10, "a"), seq(7, 10, "b")
    s.add(a), s.add(b)
    s.advance(s.schedule()); a.append(1); b.append(1)  # both prompts computed, one token each
    s.advance(s.schedule()); a.append(1); b.append(1)  # position 7 fills the 2nd block
    out = s.schedule()  # a needs a 3rd block: b, the newest, moves to host memory
    assert [op.request_id for op in out.swap_out] == ["b"] and out.swap_out[0].blocks and not out.preempted
    assert b.status is SeqStatus.WAITING and b.num_computed == 8 and b.swapped == 2 * BLOCK_BYTES
    assert s.waiting[0] is b and mgr.swap.used_bytes == 2 * BLOCK_BYTES
    s.advance(out); a.append(1)
    s.finish(a, FinishReason.LENGTH)
    out = s.schedule()  # b comes back: its KV is copied into new blocks, and only its last token is computed
    assert [op.request_id for op in out.swap_in] == ["b"] and out.swap_in[0].blocks == tuple(b.block_table[:2])
    assert [(c.seq.request_id, c.start, c.num_tokens) for c in out.chunks] == [("b", 8, 1)]
    assert mgr.swap.used_bytes == 0 and s.stats.swapped_out == 1 and s.stats.recomputed == 0


def test_without_swap_space_the_victim_is_recomputed():
    s, mgr = make(blocks=4, bs=4, budget=64, reserve=0)
    a, b = seq(7, 10, "a"), seq(7, 10, "b")
    s.add(a), s.add(b)
    for _ in range(2):
        s.advance(s.schedule()); a.append(1); b.append(1)
    out = s.schedule()
    assert out.preempted == [b] and not out.swap_out and b.num_computed == 0
    assert s.stats.recomputed_tokens == 8


def test_aborting_a_swapped_request_frees_its_host_memory():
    s, mgr = make(blocks=4, bs=4, budget=64, swap_blocks=4, reserve=0)
    a, b = seq(7, 10, "a"), seq(7, 10, "b")
    s.add(a), s.add(b)
    for _ in range(2):
        s.advance(s.schedule()); a.append(1); b.append(1)
    s.schedule()
    assert b.swapped and mgr.swap.used_bytes > 0
    s.abort("b")
    assert mgr.swap.used_bytes == 0 and b.swapped is None


def test_a_short_request_is_not_held_behind_a_long_prefill():
    s, mgr = make(blocks=1000, bs=4, budget=32)
    long = seq(320, 4, "long")
    s.add(long)
    s.advance(s.schedule())  # the long prompt is prefilling, 32 tokens a step
    s.add(seq(5, 4, "short"))
    out = s.schedule()  # the newcomer goes first; the long prefill gets no more than the newcomer's tokens
    assert [(c.seq.request_id, c.num_tokens) for c in out.chunks] == [("short", 5), ("long", 5)]
    s.advance(out)
    s.get("short").append(1)
    out = s.schedule()  # the next step is the long prefill's again (with the short one's decode first)
    assert [(c.seq.request_id, c.num_tokens) for c in out.chunks] == [("short", 1), ("long", 31)]


def test_newcomers_arriving_every_step_do_not_starve_a_long_prefill():
    s, mgr = make(blocks=10_000, bs=4, budget=32, max_seqs=64)
    long = seq(320, 2, "long")
    arrivals = [(0, long)] + [(t, seq(3, 2, f"s{t}")) for t in range(1, 40)]
    outs = drive(s, mgr, arrivals)
    long_steps = [t for t, o in enumerate(outs) for c in o.chunks if c.seq is long and not c.is_decode]
    # the long prompt progresses at least every other step and gets at least half of the tokens
    assert max(b - a for a, b in zip(long_steps, long_steps[1:])) <= 2
    assert len(long_steps) <= 2 * (320 // 32) + 2


def test_oldest_request_is_never_the_victim():
    # Many growing sequences in a tight cache: preemptions happen, but the oldest running one never loses its KV.
    s, mgr = make(blocks=24, bs=2, budget=64, max_seqs=8, reserve=0)
    seqs = [seq(4, 30, f"r{i}") for i in range(6)]
    first_done = []
    for x in seqs:
        s.add(x)
    while s.has_work():
        out = s.schedule()
        oldest = min(s.running + list(s.waiting), key=lambda x: x.order)
        assert oldest not in out.preempted and oldest.request_id not in {o.request_id for o in out.swap_out}
        s.advance(out)
        for c in out.chunks:
            if c.samples and c.seq.status is SeqStatus.RUNNING:
                c.seq.append(1)
                if c.seq.num_generated >= c.seq.params.max_tokens:
                    s.finish(c.seq, FinishReason.LENGTH)
                    first_done.append(c.seq.request_id)
    assert s.stats.preemptions > 0
    assert first_done[0] == "r0"


configs = st.sampled_from([SWAAConfig(), SWAAConfig(window=6), SWAAConfig(window=6, sinks=2, fa_decode=True),
                           SWAAConfig(window=6, sinks=1, fa_layers=[1])])


@st.composite
def workloads(draw):
    bs = draw(st.sampled_from([1, 2, 4, 8]))
    max_len = draw(st.integers(4, 64))
    n = draw(st.integers(1, 12))
    reqs = []
    for i in range(n):
        prompt = draw(st.integers(1, max_len - 1))
        out = draw(st.integers(1, max_len - prompt))
        reqs.append((draw(st.integers(0, 30)), prompt, out))
    blocks = -(-max_len // bs) * draw(st.integers(1, 4))  # every request fits the cache alone
    return dict(cfg=draw(configs), bs=bs, blocks=blocks, rings=draw(st.integers(1, 6)),
                budget=draw(st.integers(1, 48)), max_seqs=draw(st.integers(1, 8)), reqs=reqs,
                swap=draw(st.sampled_from([None, 2 * blocks])), reserve=draw(st.sampled_from([0, 4, 512])),
                aborts=draw(st.lists(st.tuples(st.integers(0, 60), st.integers(0, n - 1)), max_size=3)))


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(workloads())
def test_property_every_request_finishes_with_exact_accounting(w):
    s, mgr = make(cfg=w["cfg"], blocks=w["blocks"], rings=w["rings"], bs=w["bs"], budget=w["budget"],
                  max_seqs=w["max_seqs"], swap_blocks=w["swap"], reserve=w["reserve"])
    seqs = [seq(p, o, f"r{i}") for i, (_, p, o) in enumerate(w["reqs"])]
    aborted = {f"r{i}" for _, i in w["aborts"]}
    drive(s, mgr, [(t, x) for (t, _, _), x in zip(w["reqs"], seqs)], max_steps=20_000,
          aborts=[(t, f"r{i}") for t, i in w["aborts"]])
    for x in seqs:
        assert x.finished
        if x.request_id not in aborted:
            assert x.finish_reason is FinishReason.LENGTH and x.num_generated == x.params.max_tokens
    if w["swap"] and not aborted:
        assert s.stats.computed_tokens <= 1.25 * needed(seqs)
