"""Block tables resident on the device for the CUDA-graph decode path, updated incrementally: after any sequence of
admissions (some taking a cached prefix), growth, aborts (also while a step runs), preemption by recompute or swap,
and failed steps, the table every graph row reads equals its sequence's block table as it stood when the step was
planned (the full rebuild the graphs did before). The same code as on the GPU, with CPU tensors."""

from types import SimpleNamespace

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from swaa_engine.attention.base import CacheGeometry
from swaa_engine.attention.ops import block_tables as full_rebuild
from swaa_engine.cuda_graphs import DecodeGraphs
from swaa_engine.kv_cache.manager import CacheManager
from swaa_engine.kv_cache.pools import SwapSpace, ring_slot
from swaa_engine.kv_cache.resident import ResidentTables
from swaa_engine.sampling_params import SamplingParams
from swaa_engine.sequence import Sequence
from swaa_engine.swaa import SWAAConfig

BS, BLOCKS, RINGS, MAX_LEN, MAX_BATCH = 4, 48, 10, 64, 6
SPECS = SWAAConfig(window=8, sinks=2, fa_layers="odd").layer_specs(4)  # 2 ring layers, 2 paged


def graphs(device: str = "cpu") -> DecodeGraphs:
    """The graph runner's bookkeeping alone (no model is run: ``load`` and ``gather`` are what a replay reads; on
    CUDA ``load`` goes through the pinned staging buffer)."""
    model = SimpleNamespace(dims=SimpleNamespace(vocab_size=8))
    backend = SimpleNamespace(device=torch.device(device))
    geo = CacheGeometry(BS, 8, 2, max_len=MAX_LEN)
    return DecodeGraphs(model, backend, [], SPECS, geo, max_batch=MAX_BATCH, max_model_len=MAX_LEN,
                        scratch_block=BLOCKS, scratch_ring=RINGS)


class World:
    """Sequences over a real CacheManager (prefix caching and swap on), moved the way the scheduler moves them."""

    def __init__(self):
        self.mgr = CacheManager(SPECS, BS, BLOCKS, RINGS, swap=SwapSpace(1 << 20, 1, 1), prefix_caching=True)
        self.running: list[Sequence] = []
        self.swapped: list[Sequence] = []
        self.hog: list[int] = []  # blocks held by nobody in particular: free lists hand out other ids afterwards
        self.n = 0

    def admit(self, r: int) -> None:
        # prompts share one of three prefixes, so later ones take cached blocks (a table bound at admission)
        prompt = [r % 3] * (BS * (1 + r % 3)) + [100 + self.n] * (1 + r % 5)
        seq = Sequence(f"s{self.n}", prompt, SamplingParams())
        self.n += 1
        m = self.mgr.lookup(seq)
        if m.length:
            if self.mgr.blocks_to_take(seq, m) > self.mgr.num_free_blocks or self.mgr.num_free_rings == 0:
                return
            self.mgr.take(seq, m)
        if not self.mgr.can_allocate(seq, seq.num_uncomputed):
            self.mgr.free(seq)
            return
        self.mgr.allocate(seq, seq.num_uncomputed)
        self.prefilled(seq)
        self.running.append(seq)

    def prefilled(self, seq: Sequence) -> None:
        """Its prompt computed; its next token sampled and waiting to be decoded (blocks cover it)."""
        seq.num_computed = seq.num_tokens
        self.mgr.register(seq)
        self.grow(seq)

    def grow(self, seq: Sequence) -> bool:
        if seq.num_tokens >= MAX_LEN or not self.mgr.can_allocate(seq, 1):
            self.abort(seq)
            return False
        seq.token_ids.append(7)
        self.mgr.allocate(seq, 1)  # a block more every BS tokens
        return True

    def abort(self, seq: Sequence) -> None:
        self.mgr.free(seq)
        self.running.remove(seq)

    def preempt(self, seq: Sequence, swap: bool) -> None:
        self.running.remove(seq)
        if swap and self.mgr.can_swap_out(seq):
            self.mgr.swap_out(seq)
            self.swapped.append(seq)
        else:  # recompute: every slot given back, the prompt computed again later
            self.mgr.free(seq)
            seq.num_computed = 0
            self.swapped.append(seq)

    def shuffle_free_blocks(self, r: int) -> None:
        if r % 2 and self.mgr.blocks.num_free > 4:
            self.hog.append(self.mgr.blocks.allocate())
        elif self.hog:
            b = self.hog.pop(r % len(self.hog))
            assert self.mgr.blocks.release(b)  # its last reference
            self.mgr.blocks.free(b)

    def resume(self, r: int) -> None:
        seq = self.swapped[r % len(self.swapped)]
        if not self.mgr.can_allocate(seq, seq.num_uncomputed):
            return
        self.swapped.remove(seq)
        swapped = seq.swapped is not None
        self.mgr.allocate(seq, seq.num_uncomputed)
        if swapped:
            self.mgr.swap_in(seq)
        else:
            seq.num_computed = seq.num_tokens - 1
        self.running.append(seq)

    def decoded(self, seqs) -> None:
        for seq in seqs:
            if seq in self.running:  # an abort may have landed while the step ran
                seq.num_computed += 1
                self.mgr.register(seq)
                self.grow(seq)


def check(g: DecodeGraphs, chunks, want_tables, want_rings) -> None:
    b = g.bucket(len(chunks))
    g.gather(b)
    seen = g.s.paged_table[:b]
    want = full_rebuild(want_tables)
    for i, (c, t) in enumerate(zip(chunks, want_tables)):
        # the kernel reads pages below ceil(len / BS): those must be exactly the sequence's table
        assert seen[i, : len(t)].tolist() == want[i, : len(t)].tolist() == list(t)
        p = c.start
        assert -(-(p + 1) // BS) <= len(t)
        assert g.s.paged_lens[i].item() == p + 1
        assert g.s.paged_write[i].item() == t[p // BS] * BS + p % BS
        assert g.s.input_ids[i].item() == c.token
        assert g.s.ring_table[i, 0].item() == want_rings[i]
        assert g.s.ring_write[i].item() == want_rings[i] * g.geometry.ring_slots + ring_slot(p, 2, 8)
    for i in range(len(chunks), b):  # padding: reads nothing, writes scratch, zero table
        assert g.s.paged_lens[i].item() == 0 and g.s.paged_write[i].item() == g.scratch_paged
        assert not seen[i].any()


OPS = st.lists(st.tuples(st.sampled_from(["admit", "step", "step", "step", "abort", "abort_in_step", "preempt",
                                          "resume", "resume", "shuffle", "bounce", "fail"]), st.integers(0, 1 << 16)), min_size=30, max_size=150)


@settings(max_examples=150, deadline=None)
@given(ops=OPS)
def test_the_tables_the_kernels_read_equal_the_full_rebuild(ops):
    run_ops(ops, "cpu")


@pytest.mark.gpu
@settings(max_examples=60, deadline=None)
@given(ops=OPS)
def test_the_tables_the_kernels_read_equal_the_full_rebuild_on_cuda(ops):
    run_ops(ops, "cuda")


def run_ops(ops, device: str) -> None:
    g, w = graphs(device), World()
    for op, r in ops:
        if op == "admit" and len(w.running) + len(w.swapped) < 9:
            w.admit(r)
        elif op == "abort" and w.running:
            w.abort(w.running[r % len(w.running)])
        elif op == "preempt" and w.running:
            w.preempt(w.running[r % len(w.running)], r % 2 == 1)
        elif op == "resume" and w.swapped:
            w.resume(r)
        elif op == "bounce" and w.running:  # preempted and resumed between two steps, with other block ids
            w.preempt(w.running[r % len(w.running)], r % 2 == 1)
            w.shuffle_free_blocks(1)
            w.resume(len(w.swapped) - 1)
        elif op == "shuffle":
            w.shuffle_free_blocks(r)
        elif op in ("step", "abort_in_step", "fail") and w.running:
            # a random subset of the running sequences, in a random order (rows move between slots)
            k = 1 + r % min(MAX_BATCH, len(w.running))
            order = sorted(w.running, key=lambda s: hash((s.request_id, r)))[:k]
            chunks = [SimpleNamespace(seq=s, start=s.num_tokens - 1, token=s.token_ids[-1], is_decode=True,
                                      samples=True) for s in order]
            assert g.eligible(chunks)
            step = g.plan(chunks)
            want_tables = [tuple(s.block_table) for s in order]
            want_rings = [s.ring for s in order]
            if op == "fail":  # the step raised before (or while) writing the tables
                g.invalidate()
                continue
            if op == "abort_in_step":  # freed (and its blocks perhaps reused) before the step's upload
                w.abort(order[r % k])
                w.admit(r)
            g.load(step)
            check(g, chunks, want_tables, want_rings)
            w.decoded(order)


def test_a_decoding_sequence_uploads_one_block_id_per_new_block():
    """The point of it all: steady decoding writes a block id only when a sequence crosses into a new block."""
    mirror = ResidentTables(4, 16)
    seqs = [Sequence(f"r{i}", [1], SamplingParams()) for i in range(3)]
    for i, s in enumerate(seqs):
        s.block_table = [10 * i, 10 * i + 1]
    first = mirror.plan(seqs)
    assert len(first.flat) == 6  # whole tables once
    assert mirror.plan(seqs).flat == ()  # nothing changed: nothing written
    seqs[1].block_table.append(99)
    again = mirror.plan(list(reversed(seqs)))  # rows reordered: slots follow the sequences
    assert again.blocks == (99,) and again.flat == (first.slots[1] * 16 + 2,)
    seqs[2].block_table = [5]  # freed and given new blocks: a new list, written whole
    assert mirror.plan(seqs).blocks == (5,)
    mirror.reset()
    assert len(mirror.plan(seqs).flat) == 6  # after a failed step every table is written again


def test_too_many_rows_or_pages_are_refused():
    mirror = ResidentTables(2, 3)
    seqs = [Sequence(f"r{i}", [1], SamplingParams()) for i in range(3)]
    with pytest.raises(ValueError, match="table slots"):
        mirror.plan(seqs)
    seqs[0].block_table = [1, 2, 3, 4]
    with pytest.raises(ValueError, match="pages"):
        mirror.plan(seqs[:1])


def test_a_sequence_preempted_and_resumed_between_two_steps_is_written_whole():
    """Its table is a new list of the same length with other ids: writing only past the old length would leave the
    device reading the blocks it gave back (found by mutating the mirror; the property test finds it too, slowly)."""
    g, w = graphs(), World()
    w.admit(1), w.admit(2)

    def step(seqs):
        chunks = [SimpleNamespace(seq=s, start=s.num_tokens - 1, token=s.token_ids[-1], is_decode=True, samples=True)
                  for s in seqs]
        planned = g.plan(chunks)
        tables = [tuple(s.block_table) for s in seqs]
        g.load(planned)
        check(g, chunks, tables, [s.ring for s in seqs])
        w.decoded(seqs)
        return tables

    x = w.running[0]
    before = step(list(w.running))[0]
    for swap in (True, False):
        w.preempt(x, swap)
        w.shuffle_free_blocks(1)  # the free list hands out other ids now
        w.resume(w.swapped.index(x))
        assert x in w.running and len(x.block_table) >= len(before) and tuple(x.block_table[: len(before)]) != before
        before = step([x] + [s for s in w.running if s is not x])[0]
