"""Continuous batching: who runs this step and how many tokens each. No torch.

Prefill and decode are one mechanism: each step a sequence computes some of its uncomputed
tokens (one when decoding, a chunk when prefilling or recomputing after preemption) under a
per-step token budget; when all its tokens are computed, the step samples its next token.

Under memory pressure no computed work is thrown away if it can be kept:
- A waiting sequence is admitted only when the cache takes every token it still has to compute (its
  whole prompt, allocated at once) plus the decode reserve of every running sequence and its own: its
  later chunks never take blocks from anyone, and decodes have room to grow.
- Decodes that outgrow the free blocks anyway preempt the newest running sequence (latest arrival, so the
  oldest always progresses and none starves). Its KV moves to host memory when the swap space holds it
  (a copy: at 128k tokens ~20x cheaper than recomputing on an H200), else it is dropped and recomputed.
- Preempted sequences return to the head of the queue and are readmitted first; a swapped one gets its
  KV copied back into new slots before its next chunk.

With prefix caching, a request starts from the longest prefix of its tokens the cache holds (``kv_cache.prefix``):
those blocks are shared, a ring snapshot is copied into its ring, and its chunks stop at the block boundaries
where a snapshot of its own ring is due (the end of its prompt's last full block, and where it left the known
prefix), copied at the start of the next step.

Priorities (``SamplingParams.priority``): the waiting queue is ordered by priority, then arrival (``Sequence.rank``),
so a higher priority is admitted first and equal priorities stay first come first served; preemption takes the
lowest priority first, the newest among equals. Nothing more is promised: a steady stream of higher priorities can
hold a lower one back indefinitely. Deadlines (``Sequence.deadline``): ``expire`` ends every sequence whose deadline
passed, queued or running, and frees its slots; the engine calls it before each step.

Requests that want prompt logprobs never start from the prefix cache: each prompt position's logits are needed,
and a cached position is not computed again.

Short requests are not held behind long prompts: while running sequences prefill, every other step
admits waiting requests whose whole prompt fits the step first, and the running prefills then get at
most as many tokens as the newcomers (so that step costs about twice the newcomers' own prefill).
"""

from __future__ import annotations

import bisect
from collections import deque
from dataclasses import dataclass, field

from swaa_engine.config import SchedulerConfig
from swaa_engine.kv_cache.manager import CacheManager, SwapOp
from swaa_engine.kv_cache.prefix import PrefixMatch
from swaa_engine.sequence import FinishReason, Sequence, SeqStatus, is_decode


# The decode reserve is a soft hold: it never keeps more than this share of the blocks free, so that in a
# cache small against max_tokens admission still fills the cache (decodes that outgrow it then preempt).
MAX_RESERVE_SHARE = 0.1


# Ring snapshots one request leaves along its prompt (each a ring's copy; evicted LRU when rings run short).
MAX_SNAPSHOTS = 16


class QueueFullError(RuntimeError):
    """The waiting queue is at capacity (the server maps this to RESOURCE_EXHAUSTED)."""


@dataclass(frozen=True)
class Chunk:
    """``num_tokens`` tokens of ``seq`` starting at position ``start`` are computed this step."""

    seq: Sequence
    start: int
    num_tokens: int

    @property
    def end(self) -> int:
        return self.start + self.num_tokens

    @property
    def is_decode(self) -> bool:
        return is_decode(self.start, self.num_tokens, self.seq.num_prompt)

    @property
    def samples(self) -> bool:
        """After this chunk every token is computed, so the last position's logits pick the next token."""
        return self.end == self.seq.num_tokens


@dataclass
class SchedulerOutput:
    chunks: list[Chunk] = field(default_factory=list)
    preempted: list[Sequence] = field(default_factory=list)  # KV dropped: recomputed from token 0
    swap_out: list[SwapOp] = field(default_factory=list)  # copy to host before this step's kernels
    swap_in: list[SwapOp] = field(default_factory=list)  # copy back after the swap-outs, before the kernels
    # (source ring, destination ring) copies, in order, after the swap-outs and before the swap-ins: snapshots
    # of a sequence's ring taken, and snapshots restored into a new sequence's ring
    ring_copies: list[tuple[int, int]] = field(default_factory=list)

    @property
    def num_tokens(self) -> int:
        return sum(c.num_tokens for c in self.chunks)

    def __bool__(self) -> bool:
        return bool(self.chunks)


@dataclass
class SchedulerStats:
    """Counters since start (exported as metrics and in GetModelInfo)."""

    preemptions: int = 0  # every preemption, swapped or recomputed
    swapped_out: int = 0  # preemptions whose KV went to host memory
    swapped_bytes: int = 0  # bytes copied to host by those
    recomputed: int = 0  # preemptions whose KV was dropped
    recomputed_tokens: int = 0  # computed tokens those dropped (computed again later)
    computed_tokens: int = 0  # tokens scheduled for computation, recomputation included


class Scheduler:
    def __init__(self, config: SchedulerConfig, cache: CacheManager):
        self.config = config
        self.cache = cache
        self.waiting: deque[Sequence] = deque()
        self.running: list[Sequence] = []  # in arrival order
        self._by_id: dict[str, Sequence] = {}
        self.stats = SchedulerStats()
        self._yielded = False  # the last step gave newcomers precedence over running prefills
        self._pending = SchedulerOutput()  # preemptions asked for between steps, carried into the next one
        self._deferred: list[Sequence] = []  # finished while their step ran: slots freed when it ends

    @property
    def num_preemptions(self) -> int:
        return self.stats.preemptions

    # -- requests -------------------------------------------------------------------------
    def add(self, seq: Sequence) -> None:
        if seq.request_id in self._by_id:
            raise ValueError(f"request id {seq.request_id!r} is already in use")
        if len(self.waiting) >= self.config.max_waiting:
            raise QueueFullError(f"waiting queue is full ({self.config.max_waiting} requests)")
        self._enqueue(seq)
        self._by_id[seq.request_id] = seq

    def _enqueue(self, seq: Sequence) -> None:
        """Into the waiting queue at its rank (priority, then arrival): behind every sequence ranked before it."""
        bisect.insort(self.waiting, seq, key=lambda s: s.rank)

    def expire(self, now: float) -> list[Sequence]:
        """End the sequences (queued or running) whose deadline passed by ``now``, freeing their slots; returns them."""
        late = [s for s in (*self.running, *self.waiting) if s.deadline is not None and s.deadline <= now]
        for seq in late:
            self.finish(seq, FinishReason.DEADLINE)
        return late

    def get(self, request_id: str) -> Sequence | None:
        return self._by_id.get(request_id)

    def finish(self, seq: Sequence, reason: FinishReason, defer_free: bool = False) -> None:
        """End a sequence wherever it is and give back every slot it holds (host memory too). ``defer_free``: its
        step is running, whose kernels still write its slots: they are given back by ``release_deferred``."""
        if seq.finished:
            return
        if seq.status is SeqStatus.RUNNING:
            self.running.remove(seq)
        elif seq in self.waiting:
            self.waiting.remove(seq)
        if defer_free:
            self._deferred.append(seq)
        else:
            self.cache.free(seq)
        seq.status = SeqStatus.FINISHED
        seq.finish_reason = reason
        self._by_id.pop(seq.request_id, None)

    def release_deferred(self) -> None:
        """After a step: give back the slots of sequences that finished while it ran."""
        for seq in self._deferred:
            self.cache.free(seq)
        self._deferred.clear()

    def abort(self, request_id: str) -> Sequence | None:
        seq = self._by_id.get(request_id)
        if seq is not None:
            self.finish(seq, FinishReason.ABORT)
        return seq

    def has_work(self) -> bool:
        return bool(self.waiting or self.running)

    # -- one step -------------------------------------------------------------------------
    def preempt(self, request_id: str) -> bool:
        """Preempt a running sequence now (swapped if the swap space holds it); the next step moves its KV."""
        seq = self._by_id.get(request_id)
        if seq is None or seq.status is not SeqStatus.RUNNING:
            return False
        self._preempt(seq, self._pending)
        return True

    def schedule(self) -> SchedulerOutput:
        out, self._pending = self._pending, SchedulerOutput()
        budget = self.config.max_num_batched_tokens
        scheduled: set[int] = set()
        self._take_snapshots(out)

        # Decodes first: one token each, latency-bound.
        for seq in list(self.running):
            if budget == 0:
                break
            if seq.status is SeqStatus.RUNNING and id(seq) not in scheduled and seq.is_decoding:
                if self._reserve(seq, 1, scheduled, out):
                    self._take(out, scheduled, seq, 1)
                    budget -= 1

        prefilling = any(id(s) not in scheduled for s in self.running)
        yield_now = prefilling and not self._yielded and self._short_head(budget)
        if yield_now:
            admitted = self._admit(out, budget, scheduled, only_short=True)
            budget -= admitted + self._continue_prefills(out, min(budget - admitted, admitted), scheduled)
        else:
            budget -= self._continue_prefills(out, budget, scheduled)
            self._admit(out, budget, scheduled, only_short=False)
        self._yielded = yield_now
        return out

    def _take_snapshots(self, out: SchedulerOutput) -> None:
        """Rings of sequences whose last chunk ended at a due snapshot boundary: copied before this step writes them."""
        R = self.cache.rings.slots_per_ring
        for seq in self.running:
            st = seq.prefix
            if st.snapshot_at is None or seq.num_computed < st.snapshot_at:
                continue
            # every boundary passed: the ring serves it if the chunk ended there, or if no position has wrapped around
            # the ring yet (slots of later positions are rewritten before a resumed prefill reads them)
            due = [st.snapshot_at]
            while st.snapshot_points and st.snapshot_points[0] <= seq.num_computed:
                due.append(st.snapshot_points.pop(0))
            for at in due:
                if (seq.num_computed == at or seq.num_computed <= R) and st.registered >= at:
                    self._snapshot(seq, at, out)
            st.snapshot_at = st.snapshot_points.pop(0) if st.snapshot_points else None
        for seq in self.running:  # periodic: wherever a chunk ended on a due block boundary
            st, at = seq.prefix, seq.num_computed
            if st.periodic_due(at) and at % self.cache.block_size == 0 and st.registered >= at:
                self._snapshot(seq, at, out)

    def _snapshot(self, seq: Sequence, at: int, out: SchedulerOutput) -> None:
        ring = self.cache.new_snapshot(seq, at)
        if ring is not None:
            out.ring_copies.append((seq.ring, ring))
            seq.prefix.last_snapshot = max(seq.prefix.last_snapshot, at)

    def _cap(self, seq: Sequence, n: int) -> int:
        """Where a chunk must end for a snapshot when going past it would overwrite ring slots the snapshot needs
        (positions beyond the ring's size wrap around): at a fixed boundary (at most two per prompt); else at the
        last multiple of the stride inside the chunk if that keeps at least half of it; else, when a periodic
        snapshot is due, at the chunk's last block boundary (under a block less). Chunks are the step's budget less
        the running decodes, so they rarely end on a multiple of the stride by themselves, and always stopping at
        one would cut such a chunk into a long piece and a few tokens."""
        st, start = seq.prefix, seq.num_computed
        if start + n <= self.cache.rings.slots_per_ring:
            return n
        at = st.snapshot_at
        if at is not None and start < at < start + n:
            n = at - start
        if st.stride:
            grid = min(start + n, st.end - 1) // st.stride * st.stride
            if 2 * (grid - start) >= n and st.periodic_due(grid):
                return grid - start
            aligned = (start + n) // self.cache.block_size * self.cache.block_size
            if aligned > start and st.periodic_due(aligned):
                return aligned - start
        return n

    def _take(self, out: SchedulerOutput, scheduled: set[int], seq: Sequence, n: int) -> None:
        out.chunks.append(Chunk(seq, seq.num_computed, n))
        scheduled.add(id(seq))
        self.stats.computed_tokens += n

    def _continue_prefills(self, out: SchedulerOutput, budget: int, scheduled: set[int]) -> int:
        """Chunks of running sequences still prefilling (or recomputing), oldest first; returns tokens used."""
        used = 0
        for seq in list(self.running):
            if budget - used <= 0:
                break
            if seq.status is not SeqStatus.RUNNING or id(seq) in scheduled:
                continue
            n = self._cap(seq, min(seq.num_uncomputed, budget - used))
            if self._reserve(seq, n, scheduled, out):
                self._take(out, scheduled, seq, n)
                used += n
        return used

    def _short_head(self, budget: int) -> bool:
        """The next waiting request's whole prompt fits in what this step has left."""
        return bool(self.waiting) and 0 < self.waiting[0].num_uncomputed <= budget

    def _admit(self, out: SchedulerOutput, budget: int, scheduled: set[int], only_short: bool) -> int:
        """Admit waiting sequences in queue order (priority, then arrival: no overtaking among equal priorities, so none
        of those starves); returns tokens used."""
        used = 0
        reserve = sum(self._decode_reserve(s) for s in self.running)
        cap = int(MAX_RESERVE_SHARE * self.cache.blocks.total)
        deferred = []
        while self.waiting and budget - used > 0 and len(self.running) < self.config.max_num_seqs:
            seq = self.waiting[0]
            # prompt logprobs need every prompt position's logits: nothing of such a prompt is taken from the cache
            scored = seq.params.prompt_logprobs is not None
            m = PrefixMatch(0) if scored else self.cache.lookup(seq)
            if not scored and self._prefix_in_flight(seq, m):
                deferred.append(self.waiting.popleft())  # waits for the running prefill that computes its prefix
                continue
            if only_short and seq.num_uncomputed - m.length > budget - used:
                break
            if m.length:
                need = self.cache.blocks_to_take(seq, m)
                own = self._decode_reserve(seq, allocated=self.cache.blocks_for(seq.num_tokens))
                fits = need <= self.cache.num_free_blocks and (
                    not self.cache.has_ring or self.cache.num_free_rings > (m.snapshot is not None))
            else:
                need = self.cache.blocks_needed(seq, seq.num_uncomputed)
                own = self._decode_reserve(seq, allocated=len(seq.block_table) + need)
                fits = self.cache.can_allocate(seq, seq.num_uncomputed)
            if self.running and need + min(own + reserve, cap) > self.cache.num_free_blocks:
                break
            if not fits:
                break
            self.waiting.popleft()
            self._plan_prefix(seq, m)
            if m.length:
                self.cache.take(seq, m)
            # the whole prompt: later chunks never wait for blocks
            self.cache.allocate(seq, seq.num_uncomputed, keep_snapshot=m.snapshot)
            if m.snapshot is not None:
                out.ring_copies.append((m.snapshot, seq.ring))
            if seq.swapped is not None:
                out.swap_in.append(self.cache.swap_in(seq))
            seq.status = SeqStatus.RUNNING
            bisect.insort(self.running, seq, key=lambda s: s.order)
            n = self._cap(seq, min(seq.num_uncomputed, budget - used))
            self._take(out, scheduled, seq, n)
            used += n
            reserve += own
        self.waiting.extendleft(reversed(deferred))
        return used

    def _prefix_in_flight(self, seq: Sequence, m) -> bool:
        """A running sequence is prefilling more of ``seq``'s prefix than the cache holds now: admitting ``seq`` would
        compute it twice (requests racing on one new system prompt), so it waits until that prefix is cached."""
        if self.cache.prefix is None or seq.num_computed or seq.swapped is not None:
            return False
        bs = self.cache.block_size
        limit = min(self.cache.reusable_end(seq), seq.num_tokens - 1)
        for r in self.running:
            end = min(self.cache.reusable_end(r), limit) // bs * bs
            if r.prefix.registered >= end or end <= m.length:
                continue
            # they share more than the cache holds and ``r`` has registered: the block after both (all block-aligned)
            after = max(m.length, r.prefix.registered) // bs + 1
            if seq.prefix.shares_blocks(seq.token_ids, r.prefix, r.token_ids, after, bs):
                return True
        return False

    def _plan_prefix(self, seq: Sequence, m) -> None:
        """Count the lookup (first admission only) and plan the ring snapshots this sequence will leave: where it
        leaves the prefix the index knows, and at its prompt's last full block."""
        pc = self.cache.prefix
        if pc is None or seq.num_computed or seq.swapped is not None:
            return
        if seq.num_preemptions == 0 and seq.params.prompt_logprobs is None:  # only lookups count toward the hit rate
            pc.stats.queried_tokens += seq.num_prompt
            pc.stats.hit_tokens += m.length
            seq.prefix.cached_tokens = m.length
        if not self.cache.has_ring:
            return
        bs = self.cache.block_size
        last = (min(self.cache.reusable_end(seq), seq.num_tokens - 1) // bs) * bs
        # also one every ring's worth of tokens (at most MAX_SNAPSHOTS), so that requests branching off this
        # one's prompt later, or racing it now, resume close to where they leave it
        stride = max(-(-self.cache.rings.slots_per_ring // bs) * bs, -(-last // (MAX_SNAPSHOTS * bs)) * bs, bs)
        points = sorted({p for p in (m.known, last) if m.length < p <= last})
        st = seq.prefix
        st.snapshot_at = points[0] if points else None
        st.snapshot_points = points[1:]
        st.stride, st.last_snapshot, st.end = stride, m.length, last

    def _decode_reserve(self, seq: Sequence, allocated: int | None = None) -> int:
        """Blocks ``seq`` may still need for its next ``decode_reserve_tokens`` generated tokens."""
        longest = seq.num_prompt + seq.params.max_tokens
        target = min(longest, seq.num_tokens + self.config.decode_reserve_tokens)
        held = len(seq.block_table) if allocated is None else allocated
        return max(0, self.cache.blocks_for(target) - held)

    def _reserve(self, seq: Sequence, n: int, scheduled: set[int], out: SchedulerOutput) -> bool:
        """Allocate for ``n`` more tokens of ``seq``, preempting the newest unscheduled sequences."""
        while not self.cache.can_allocate(seq, n):
            # the lowest priority, newest among equals
            victim = max((s for s in self.running if id(s) not in scheduled), key=lambda s: s.rank)
            self._preempt(victim, out)  # seq itself is unscheduled, so there is always a victim
            if victim is seq:
                return False
        self.cache.allocate(seq, n)
        return True

    def _preempt(self, seq: Sequence, out: SchedulerOutput) -> None:
        """Swap the sequence's KV to host memory if it fits there, else drop it to recompute later."""
        self.running.remove(seq)
        st = self.stats
        if self.cache.can_swap_out(seq):
            out.swap_out.append(self.cache.swap_out(seq))
            st.swapped_out += 1
            st.swapped_bytes += seq.swapped
        else:
            self.cache.free(seq)
            st.recomputed += 1
            st.recomputed_tokens += seq.num_computed
            seq.num_computed = 0  # generated tokens keep their role (sequence.py)
            seq.prefix.reset()
            out.preempted.append(seq)
        seq.status = SeqStatus.WAITING
        seq.num_preemptions += 1
        st.preemptions += 1
        self._enqueue(seq)  # older than the sequences queued behind it (admission is in order): it goes before them

    def advance(self, out: SchedulerOutput) -> None:
        """Mark the chunks of a finished step as computed."""
        for c in out.chunks:
            if c.seq.status is SeqStatus.RUNNING:
                c.seq.num_computed = c.end
                self.cache.register(c.seq)
