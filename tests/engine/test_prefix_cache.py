"""Prefix caching: the index and its accounting (torch-free, milliseconds), and exactness through the engine
(greedy output with the cache equals the output without it, CPU float32, the six canonical configs and the
question tail)."""

import random
from collections import Counter

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from swaa_engine.config import CacheConfig, SchedulerConfig
from swaa_engine.kv_cache.manager import CacheManager
from swaa_engine.kv_cache.prefix import PrefixCache
from swaa_engine.sampling_params import SamplingParams
from swaa_engine.scheduler import Scheduler
from swaa_engine.sequence import FinishReason, Sequence, SeqStatus
from swaa_engine.swaa import SWAAConfig, canonical_configs

BS = 8


# -- the index ---------------------------------------------------------------------------------------
def test_match_is_exact_and_block_aligned():
    pc = PrefixCache(BS, has_paged=True, has_ring=False)
    toks = list(range(40))
    parent = None
    for i, block in enumerate((10, 11, 12)):
        parent = pc.node(parent, tuple(toks[i * BS:(i + 1) * BS]))
        pc.add_block(parent, block)
    m = pc.match(toks, 39)
    assert (m.length, m.blocks) == (24, (10, 11, 12))
    assert pc.match(toks, 23).length == 16  # the limit cuts mid-block: whole blocks only
    other = toks[:]
    other[9] = 999  # differs inside the second block
    assert pc.match(other, 39).blocks == (10,)


def test_rings_resume_only_from_a_snapshot():
    pc = PrefixCache(BS, has_paged=True, has_ring=True)
    toks = list(range(40))
    nodes, parent = [], None
    for i in range(3):
        parent = pc.node(parent, tuple(toks[i * BS:(i + 1) * BS]))
        pc.add_block(parent, i)
        nodes.append(parent)
    assert pc.match(toks, 39).length == 0 and pc.match(toks, 39).known == 24
    pc.add_snapshot(nodes[1], ring=7)
    m = pc.match(toks, 39)
    assert (m.length, m.blocks, m.snapshot, m.known) == (16, (0, 1), 7, 24)


def test_eviction_is_lru_and_prunes_the_index():
    pc = PrefixCache(BS, has_paged=True, has_ring=False)
    a = pc.node(None, tuple(range(BS)))
    b = pc.node(a, tuple(range(BS, 2 * BS)))
    pc.add_block(a, 0)
    pc.add_block(b, 1)
    pc.release_block(1)
    pc.release_block(0)
    assert pc.evict_block() == 1 and len(pc) == 1  # b held nothing more and led nowhere
    assert pc.evict_block() == 0 and len(pc) == 0
    assert pc.evict_block() is None


def test_resumed_walks_match_as_a_fresh_walk_does():
    """A sequence's lookup resumes its last walk down the index (its block keys made once): through blocks and
    snapshots added (mid-path too), a lower limit, and evictions, it finds what a fresh walk finds."""
    from swaa_engine.kv_cache.prefix import PrefixState

    rng = random.Random(3)
    for has_ring in (False, True):
        pc = PrefixCache(BS, has_paged=True, has_ring=has_ring)
        seqs = [[k % 3] * BS + [rng.randrange(4) for _ in range(12 * BS)] for k in range(6)]  # branching prefixes
        states = [PrefixState() for _ in seqs]
        free_rings = list(range(100))
        for step in range(400):
            toks = rng.choice(seqs)
            op = rng.random()
            if op < 0.4:  # a sequence registers blocks of its prefix
                parent = None
                for i in range(rng.randrange(1, 13)):
                    parent = pc.node(parent, tuple(toks[i * BS:(i + 1) * BS]))
                    if pc.add_block(parent, 1000 * step + i):
                        pc.release_block(1000 * step + i)  # idle at once: evictable
                    if has_ring and parent.snapshot is None and rng.random() < 0.3:
                        pc.add_snapshot(parent, free_rings.pop())
            elif op < 0.55:
                pc.evict_block()
            elif op < 0.65 and has_ring:
                ring = pc.evict_snapshot()
                if ring is not None:
                    free_rings.append(ring)
            for toks, state in zip(seqs, states):
                limit = rng.randrange(len(toks))
                got, want = pc.match(toks, limit, state), pc.match(toks, limit)
                assert (got.length, got.blocks, got.snapshot, got.node, got.known) == \
                       (want.length, want.blocks, want.snapshot, want.node, want.known)


def test_hash_chains_agree_exactly_where_blocks_do():
    from swaa_engine.kv_cache.prefix import PrefixState

    rng = random.Random(4)
    for _ in range(200):
        a = [rng.randrange(3) for _ in range(6 * BS)]
        b = a[:]
        b[rng.randrange(len(b))] = 9  # one token differs: the blocks after it agree again, the prefixes do not
        sa, sb = PrefixState(), PrefixState()
        for n in rng.sample(range(1, 7), 6):  # in any order: the chains are made as far as asked
            assert sa.shares_blocks(a, sb, b, n, BS) == (a[: n * BS] == b[: n * BS])


def in_flight_by_definition(sched, mgr, seq, m) -> bool:
    """The scheduler's deferral as first written: token slices compared block by block from the start."""
    if mgr.prefix is None or seq.num_computed or seq.swapped is not None:
        return False
    bs, limit = mgr.block_size, min(mgr.reusable_end(seq), seq.num_tokens - 1)
    for r in sched.running:
        end = min(mgr.reusable_end(r), limit) // bs * bs
        if r.prefix.registered >= end or end <= m.length:
            continue
        shared = 0
        while shared < end and seq.token_ids[shared:shared + bs] == r.token_ids[shared:shared + bs]:
            shared += bs
        if shared > max(m.length, r.prefix.registered):
            return True
    return False


def check_admission_as_defined(sched, mgr):
    """Each waiting sequence's lookup (a resumed walk) and deferral (hash chains) equal their definitions."""
    for x in list(sched.waiting):
        m = mgr.lookup(x)
        if mgr.prefix is not None and not (x.num_computed or x.swapped is not None or x.block_table):
            fresh = mgr.prefix.match(x.token_ids, min(mgr.reusable_end(x), x.num_tokens - 1))
            assert (m.length, m.blocks, m.snapshot, m.node, m.known) == \
                   (fresh.length, fresh.blocks, fresh.snapshot, fresh.node, fresh.known)
        assert sched._prefix_in_flight(x, m) == in_flight_by_definition(sched, mgr, x, m)


def seq(tokens, rid, max_tokens=4):
    return Sequence(rid, list(tokens), SamplingParams(max_tokens=max_tokens, ignore_eos=True))


def run_to_end(sched, mgr, seqs):
    """Drive the scheduler as the engine does, generating token 7 each time a sequence samples."""
    for _ in range(1000):
        if not sched.has_work():
            return
        out = sched.schedule()
        sched.advance(out)
        for c in out.chunks:
            if c.samples and not c.seq.finished:
                c.seq.token_ids.append(7)
                if c.seq.num_generated >= c.seq.params.max_tokens:
                    sched.finish(c.seq, "length")
        sched.release_deferred()
    raise AssertionError("did not finish")


def test_cached_blocks_go_before_any_running_request_is_preempted():
    specs = SWAAConfig().layer_specs(2)
    mgr = CacheManager(specs, BS, 10, 0, prefix_caching=True)
    sched = Scheduler(SchedulerConfig(max_num_batched_tokens=64, decode_reserve_tokens=0), mgr)
    first = seq(range(40), "a")
    sched.add(first)
    run_to_end(sched, mgr, [first])
    assert mgr.usage()["paged"] == {"used": 0, "cached": 5, "total": 10}  # 5 full blocks of computed KV kept
    # a different request needing every block: the cached ones are evicted, nobody is preempted
    big = seq(range(100, 100 + 76), "b")
    sched.add(big)
    run_to_end(sched, mgr, [big])
    assert sched.stats.preemptions == 0
    assert mgr.blocks.num_free + mgr.usage()["paged"]["cached"] == 10


def test_shared_blocks_survive_an_abort_and_accounting_is_exact():
    specs = SWAAConfig().layer_specs(2)
    mgr = CacheManager(specs, BS, 20, 0, prefix_caching=True)
    sched = Scheduler(SchedulerConfig(max_num_batched_tokens=64, decode_reserve_tokens=0), mgr)
    sys_prompt = list(range(32))
    a = seq(sys_prompt + [90, 91], "a")
    sched.add(a)
    run_to_end(sched, mgr, [a])
    b, c = seq(sys_prompt + [92], "b", max_tokens=50), seq(sys_prompt + [93, 94, 95], "c", max_tokens=50)
    sched.add(b)
    sched.add(c)
    sched.advance(sched.schedule())
    assert b.prefix.cached_tokens == c.prefix.cached_tokens == 32
    assert b.block_table[:4] == c.block_table[:4]  # the system prompt's blocks, shared
    shared = b.block_table[:4]
    sched.abort("b")
    assert all(mgr.blocks._refs[x] == 1 for x in shared)  # c still holds them
    run_to_end(sched, mgr, [c])
    u = mgr.usage()["paged"]
    assert u["used"] == 0 and mgr.blocks.num_free + u["cached"] == 20 and mgr.is_idle()
    assert mgr.prefix.stats.hit_tokens == 64 and mgr.prefix.stats.queried_tokens == 34 + 33 + 35


def test_requests_racing_on_a_new_prefix_compute_it_once():
    specs = SWAAConfig().layer_specs(2)
    mgr = CacheManager(specs, BS, 40, 0, prefix_caching=True)
    sched = Scheduler(SchedulerConfig(max_num_batched_tokens=16, decode_reserve_tokens=0), mgr)
    system = list(range(40))
    seqs = [seq(system + [100 + i] * 3, f"r{i}") for i in range(4)]
    unrelated = seq(list(range(200, 230)), "u")
    for s in seqs + [unrelated]:
        sched.add(s)
    out = sched.schedule()
    assert {c.seq.request_id for c in out.chunks} == {"r0"}  # the step's budget goes to r0
    sched.advance(out)
    run_to_end(sched, mgr, seqs + [unrelated])
    assert [s.prefix.cached_tokens for s in seqs] == [0, 40, 40, 40] and unrelated.prefix.cached_tokens == 0
    assert sched.stats.preemptions == 0 and mgr.is_idle()


def test_ring_snapshots_do_not_split_a_long_prefill_into_extra_chunks():
    """A long prompt prefilling beside running decodes (its chunks are the budget minus those decodes, so they never
    end on a fixed stride of boundaries): taking ring snapshots must not cut chunks short. The fixed-stride points
    did: every other chunk stopped a few tokens after the last one (1,024 tokens took 31 chunks, not 17)."""
    specs = SWAAConfig(window=64, sinks=0).layer_specs(2)  # every layer a ring of 64 slots
    mgr = CacheManager(specs, BS, 0, 24, prefix_caching=True)
    sched = Scheduler(SchedulerConfig(max_num_batched_tokens=64, decode_reserve_tokens=0), mgr)
    rider = seq(range(5000, 5010), "rider", max_tokens=500)  # decodes for the whole run: one token of every step
    sched.add(rider)
    sched.advance(sched.schedule())
    long = seq(range(1024), "long", max_tokens=1)
    sched.add(long)
    chunks = snaps = 0
    while not long.is_decoding:
        out = sched.schedule()
        chunks += sum(c.seq is long for c in out.chunks)
        snaps += sum(1 for a, _ in out.ring_copies if a == long.ring)
        sched.advance(out)
        for c in out.chunks:
            if c.samples:
                c.seq.token_ids.append(7)
    # the budget left beside the rider, less under a block where a chunk ends on a boundary for a snapshot, plus one
    # stop at the prompt's last full block
    assert chunks <= -(-1024 // (63 - (BS - 1))) + 1
    assert snaps >= 6  # still one about every other chunk (a ring's worth of tokens or more apart)


# -- exactness through the engine --------------------------------------------------------------------
CONFIGS = dict(canonical_configs(window=16, sinks=4))
CONFIGS["swa+sinks+fa_decode+tail"] = SWAAConfig(window=16, sinks=4, fa_decode=True, fa_tail=6)


def make_llm(folder, swaa, prefix: bool):
    from swaa_engine.engine import LLM

    return LLM(folder, swaa=swaa, cache=CacheConfig(block_size=BS, budget_bytes=8 << 20, prefix_caching=prefix),
               scheduler=SchedulerConfig(max_num_batched_tokens=40))


@pytest.mark.parametrize("name", list(CONFIGS))
def test_greedy_output_is_the_same_with_the_cache(name, tiny_qwen3):
    folder, _ = tiny_qwen3
    swaa = CONFIGS[name]
    rng = random.Random(1)
    system = [rng.randrange(384) for _ in range(53)]  # > 3 windows, ends mid-block
    questions = [[rng.randrange(384) for _ in range(n)] for n in (5, 12, 3, 9)]
    params = SamplingParams(max_tokens=12, ignore_eos=True)
    cached, plain = make_llm(folder, swaa, True), make_llm(folder, swaa, False)

    def both(prompts):
        a, b = cached.generate(prompts, params), plain.generate(prompts, params)
        assert [o.token_ids for o in a] == [o.token_ids for o in b]
        return a

    first = both([system + questions[0]])[0]
    later = both([system + q for q in questions[1:]])  # a shared system prompt (rings restored past the window)
    assert all(o.usage.cached_tokens >= 48 for o in later)
    turn2 = system + questions[0] + first.token_ids + questions[1]  # a second chat turn
    out2 = both([turn2])[0]
    assert out2.usage.cached_tokens >= 48
    fresh = [rng.randrange(384) for _ in range(30)]
    both([fresh + q for q in questions])  # racing on a new prefix, submitted at once
    eng = cached.engine
    assert eng.cache.is_idle()
    u = eng.cache.usage()
    assert eng.cache.blocks.num_free + u["paged"]["cached"] == eng.cache.blocks.total
    assert eng.cache.rings.num_free + u["ring"]["cached"] == eng.cache.rings.total


# -- random workloads under pressure (hypothesis) ----------------------------------------------------


def check_shared_accounting(sched, mgr):
    """Every reference is a live sequence's; cached-only blocks and snapshots are held by nobody; nothing leaks."""
    live = list(sched.running) + list(sched.waiting)
    refs = Counter(b for x in live for b in x.block_table)
    assert refs == Counter(mgr.blocks._refs)
    idle = set(mgr.prefix.idle_blocks)
    assert not idle & set(refs) and mgr.blocks.num_used == len(refs) + len(idle)
    rings = [x.ring for x in live if x.ring is not None]
    snaps = set(mgr.prefix.snapshots)
    assert len(rings) == len(set(rings)) and not snaps & set(rings) and mgr.rings.num_used == len(rings) + len(snaps)
    assert all(x.status is SeqStatus.WAITING and not x.block_table and x.ring is None for x in sched.waiting)


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(cfg=st.sampled_from([SWAAConfig(), SWAAConfig(window=8), SWAAConfig(window=8, sinks=2, fa_decode=True),
                            SWAAConfig(window=8, sinks=2, fa_layers="0")]),
       reqs=st.lists(st.tuples(st.integers(0, 2), st.integers(1, 40), st.integers(1, 12), st.integers(0, 30)),
                     min_size=1, max_size=14),
       blocks=st.integers(24, 60), budget=st.integers(4, 32), aborts=st.lists(st.integers(0, 13), max_size=3))
def test_random_shared_workloads_finish_with_exact_accounting(cfg, reqs, blocks, budget, aborts):
    specs = cfg.layer_specs(2)
    mgr = CacheManager(specs, 4, blocks, 12, prefix_caching=True)
    sched = Scheduler(SchedulerConfig(max_num_seqs=6, max_num_batched_tokens=budget, max_waiting=1000,
                                      decode_reserve_tokens=8), mgr)
    systems = [[1000 * (k + 1) + i for i in range(24)] for k in range(3)]
    arrivals = sorted(((t, Sequence(f"r{i}", systems[k][: 24 if n > 8 else n] + [5000 + 97 * i + j for j in range(n)],
                                   SamplingParams(max_tokens=out)))
                      for i, (k, n, out, t) in enumerate(reqs)), key=lambda a: a[0])
    abort_at = {a * 3: f"r{a}" for a in aborts}
    pending, step = list(arrivals), 0
    while pending or sched.has_work():
        while pending and pending[0][0] <= step:
            sched.add(pending.pop(0)[1])
        if step in abort_at:
            sched.abort(abort_at[step])
        out = sched.schedule()
        sched.advance(out)
        for c in out.chunks:
            x = c.seq
            if c.samples and x.status is SeqStatus.RUNNING:
                x.token_ids.append(7)
                if x.num_generated >= x.params.max_tokens:
                    sched.finish(x, FinishReason.LENGTH)
        check_shared_accounting(sched, mgr)
        check_admission_as_defined(sched, mgr)
        step += 1
        assert step < 20_000, "no progress: deadlock or starvation"
    assert mgr.is_idle()
    for _, s in arrivals:
        assert s.finished and (s.finish_reason is FinishReason.ABORT or s.num_generated == s.params.max_tokens)

def test_snapshots_due_in_a_step_that_computes_nothing_are_copied(tiny_qwen3):
    """Requests racing on one long new prompt (or n samples of it): the first one's prefill yields a step to the
    next, which then waits for that prefill, so the step computes nothing; the snapshot due then must still be
    copied (it was skipped: the ring moved on, and later prompts sharing the prefix restored stale KV)."""
    from swaa_engine.engine import LLM

    folder, _ = tiny_qwen3

    def llm(prefix: bool):
        return LLM(folder, swaa=SWAAConfig(window=16, sinks=2, fa_layers=[1]), max_model_len=512,
                   cache=CacheConfig(block_size=BS, budget_bytes=4 << 20, prefix_caching=prefix))

    cached, plain = llm(True), llm(False)
    prompt = [random.Random(2).randrange(384) for _ in range(200)]
    cached.generate([prompt] * 4, SamplingParams(max_tokens=4, ignore_eos=True))
    params = SamplingParams(max_tokens=6, ignore_eos=True)
    # the first racer's chunks end at 168 (the last multiple of the 24-token stride that keeps half of its 192)
    # and at its last full block, 192: its snapshots
    probes = [prompt[:k] for k in (170, 180, 195, 200)]
    a = [cached.generate([p], params)[0] for p in probes]  # one by one: each resumes from the racers' snapshots
    b = plain.generate(probes, params)
    assert [o.usage.cached_tokens for o in a] == [168, 168, 192, 192]
    assert [o.token_ids for o in a] == [o.token_ids for o in b]


@pytest.mark.parametrize("swaa", [SWAAConfig(window=64, sinks=4), SWAAConfig(window=64, sinks=4, fa_layers="0")],
                         ids=["swa", "swa+half_fa"])
def test_prompts_shorter_than_the_ring_resume_from_a_snapshot_taken_past_its_boundary(swaa, tiny_qwen3):
    """Under the ring's size no position wraps, so a chunk runs past the snapshot boundary (no extra step) and the
    snapshot, taken after it, still resumes exactly: later positions' slots are rewritten before they are read."""
    folder, _ = tiny_qwen3
    rng = random.Random(3)
    system = [rng.randrange(384) for _ in range(30)]
    prompts = [system + [rng.randrange(384) for _ in range(n)] for n in (6, 11, 3)]
    params = SamplingParams(max_tokens=40, ignore_eos=True)  # decodes past the ring's 68 slots: it wraps then
    cached, plain = make_llm(folder, swaa, True), make_llm(folder, swaa, False)
    first = cached.generate(prompts[:1], params)
    later = cached.generate(prompts[1:], params)
    assert [o.token_ids for o in first + later] == [o.token_ids for o in plain.generate(prompts, params)]
    # the first request's snapshot is at its own last block (32): the second leaves the known prefix at 24 and
    # recomputes (leaving a snapshot there, taken after its one chunk); the third, waiting for it, resumes at 24
    assert [o.usage.cached_tokens for o in later] == [0, 24]
