from swaa_engine.config import SchedulerConfig
from swaa_engine.kv_cache.manager import CacheManager
from swaa_engine.sampling_params import SamplingParams
from swaa_engine.scheduler import QueueFullError, Scheduler
from swaa_engine.sequence import FinishReason, Sequence, SeqStatus
from swaa_engine.swaa import SWAAConfig

import pytest


def make(cfg=SWAAConfig(), blocks=64, rings=8, bs=4, budget=16, max_seqs=8, max_waiting=100, layers=2):
    specs = cfg.layer_specs(layers)
    mgr = CacheManager(specs, bs, blocks, rings)
    return Scheduler(SchedulerConfig(max_num_seqs=max_seqs, max_num_batched_tokens=budget, max_waiting=max_waiting), mgr), mgr


def seq(n, rid):
    return Sequence(rid, list(range(n)), SamplingParams())


def run_step(s, sample=lambda seq: 1):
    """One fake model step: advance, then append a token to sequences that sampled."""
    out = s.schedule()
    s.advance(out)
    for c in out.chunks:
        if c.samples and c.seq.status is SeqStatus.RUNNING:
            c.seq.append(sample(c.seq))
    return out


def test_chunked_prefill_respects_the_token_budget():
    s, _ = make(budget=16)
    a = seq(40, "a")
    s.add(a)
    sizes = [run_step(s).chunks[0].num_tokens for _ in range(3)]
    assert sizes == [16, 16, 8]
    assert a.num_generated == 1  # the last chunk sampled


def test_decodes_first_then_prefill_mixes_in():
    s, _ = make(budget=10)
    a, b = seq(5, "a"), seq(30, "b")
    s.add(a)
    run_step(s)  # a's whole prompt
    s.add(b)
    out = run_step(s)
    assert [(c.seq.request_id, c.num_tokens) for c in out.chunks] == [("a", 1), ("b", 9)]


def test_requests_join_and_leave_every_step():
    s, mgr = make(budget=64)
    s.add(seq(3, "a"))
    run_step(s)
    s.add(seq(3, "b"))
    out = run_step(s)
    assert {c.seq.request_id for c in out.chunks} == {"a", "b"}
    s.finish(s.get("a"), FinishReason.LENGTH)
    out = run_step(s)
    assert [c.seq.request_id for c in out.chunks] == ["b"]


def test_admission_waits_for_a_free_ring():
    s, mgr = make(cfg=SWAAConfig(window=4), rings=1, blocks=0)
    a, b = seq(3, "a"), seq(3, "b")
    s.add(a), s.add(b)
    out = run_step(s)
    assert [c.seq.request_id for c in out.chunks] == ["a"] and b.status is SeqStatus.WAITING
    s.finish(a, FinishReason.EOS)
    out = run_step(s)
    assert [c.seq.request_id for c in out.chunks] == ["b"]


def test_preemption_by_recompute_when_blocks_run_out():
    # 4 blocks of 4 tokens: two sequences of 7 prompt tokens fill 2 blocks each; the next block forces preemption.
    s, mgr = make(blocks=4, bs=4, budget=64)
    a, b = seq(7, "a"), seq(7, "b")
    s.add(a), s.add(b)
    run_step(s)  # both prefilled (2 blocks each), one token sampled each -> 8 tokens each
    assert mgr.blocks.num_free == 0
    out = run_step(s)  # position 7 still fits the 2nd block -> 9 tokens each
    assert not out.preempted
    out = run_step(s)  # a needs a 3rd block for position 8: b (newest) is preempted
    assert out.preempted == [b] and b.status is SeqStatus.WAITING and b.num_computed == 0
    assert b.block_table == [] and b.num_generated == 2  # tokens kept, cache dropped
    assert s.waiting[0] is b
    s.finish(a, FinishReason.LENGTH)
    out = run_step(s)
    assert out.chunks[0].seq is b and out.chunks[0].num_tokens == 9  # recomputes prompt + generated
    assert b.num_preemptions == 1


def test_abort_anywhere_releases_everything():
    s, mgr = make(cfg=SWAAConfig(window=4, sinks=1, fa_layers=[1]), blocks=16, rings=4, budget=8)
    seqs = [seq(12, f"r{i}") for i in range(6)]
    for x in seqs:
        s.add(x)
    run_step(s)
    run_step(s)
    assert not mgr.is_idle()
    for x in seqs:
        assert s.abort(x.request_id) is x and x.finish_reason is FinishReason.ABORT
    assert mgr.is_idle() and not s.has_work()
    assert mgr.blocks.num_free == mgr.blocks.total and mgr.rings.num_free == mgr.rings.total
    assert s.abort("nope") is None


def test_queue_capacity_and_duplicate_ids():
    s, _ = make(max_waiting=2)
    s.add(seq(3, "a")), s.add(seq(3, "b"))
    with pytest.raises(QueueFullError):
        s.add(seq(3, "c"))
    with pytest.raises(ValueError):
        s.add(seq(3, "a"))


def test_max_num_seqs_caps_the_batch():
    s, _ = make(max_seqs=2, budget=100)
    for i in range(4):
        s.add(seq(3, f"r{i}"))
    out = run_step(s)
    assert len(out.chunks) == 2 and len(s.waiting) == 2
