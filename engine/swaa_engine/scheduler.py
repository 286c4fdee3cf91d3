"""Continuous batching: who runs this step and how many tokens each. No torch.

Prefill and decode are one mechanism: each step a sequence computes some of its uncomputed
tokens (one when decoding, a chunk when prefilling or recomputing after preemption) under a
per-step token budget; when all its tokens are computed, the step samples its next token.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass, field

from swaa_engine.config import SchedulerConfig
from swaa_engine.kv_cache.manager import CacheManager
from swaa_engine.sequence import FinishReason, Sequence, SeqStatus


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
        """One generated token: served by the backends' batched decode path."""
        return self.num_tokens == 1 and self.start >= self.seq.num_prompt

    @property
    def samples(self) -> bool:
        """After this chunk every token is computed, so the last position's logits pick the next token."""
        return self.end == self.seq.num_tokens


@dataclass
class SchedulerOutput:
    chunks: list[Chunk] = field(default_factory=list)
    preempted: list[Sequence] = field(default_factory=list)

    @property
    def num_tokens(self) -> int:
        return sum(c.num_tokens for c in self.chunks)

    def __bool__(self) -> bool:
        return bool(self.chunks)


class Scheduler:
    def __init__(self, config: SchedulerConfig, cache: CacheManager):
        self.config = config
        self.cache = cache
        self.waiting: deque[Sequence] = deque()
        self.running: list[Sequence] = []
        self._by_id: dict[str, Sequence] = {}
        self.num_preemptions = 0

    # -- requests -------------------------------------------------------------------------
    def add(self, seq: Sequence) -> None:
        if seq.request_id in self._by_id:
            raise ValueError(f"request id {seq.request_id!r} is already in use")
        if len(self.waiting) >= self.config.max_waiting:
            raise QueueFullError(f"waiting queue is full ({self.config.max_waiting} requests)")
        self.waiting.append(seq)
        self._by_id[seq.request_id] = seq

    def get(self, request_id: str) -> Sequence | None:
        return self._by_id.get(request_id)

    def finish(self, seq: Sequence, reason: FinishReason) -> None:
        """End a sequence wherever it is and give back every slot it holds."""
        if seq.finished:
            return
        if seq.status is SeqStatus.RUNNING:
            self.running.remove(seq)
        elif seq in self.waiting:
            self.waiting.remove(seq)
        self.cache.free(seq)
        seq.status = SeqStatus.FINISHED
        seq.finish_reason = reason
        self._by_id.pop(seq.request_id, None)

    def abort(self, request_id: str) -> Sequence | None:
        seq = self._by_id.get(request_id)
        if seq is not None:
            self.finish(seq, FinishReason.ABORT)
        return seq

    @property
    def num_unfinished(self) -> int:
        return len(self.waiting) + len(self.running)

    def has_work(self) -> bool:
        return bool(self.waiting or self.running)

    # -- one step -------------------------------------------------------------------------
    def schedule(self) -> SchedulerOutput:
        out = SchedulerOutput()
        budget = self.config.max_num_batched_tokens
        scheduled: set[int] = set()

        # Decodes first (one token each, latency-bound), then prefill chunks of running sequences.
        for decoding in (True, False):
            for seq in list(self.running):
                if budget == 0 or seq.status is not SeqStatus.RUNNING or id(seq) in scheduled:
                    continue
                if (seq.num_uncomputed == 1) != decoding:
                    continue
                n = min(seq.num_uncomputed, budget)
                if not self._reserve(seq, n, scheduled, out):
                    continue  # seq itself was preempted
                out.chunks.append(Chunk(seq, seq.num_computed, n))
                scheduled.add(id(seq))
                budget -= n

        # Admit waiting sequences in arrival order while budget, sequence slots and cache allow.
        while self.waiting and budget > 0 and len(self.running) < self.config.max_num_seqs:
            seq = self.waiting[0]
            n = min(seq.num_uncomputed, budget)
            if not self.cache.can_allocate(seq, n):
                break  # FCFS: no overtaking, so a long request is never starved
            self.waiting.popleft()
            self.cache.allocate(seq, n)
            seq.status = SeqStatus.RUNNING
            self.running.append(seq)
            out.chunks.append(Chunk(seq, seq.num_computed, n))
            scheduled.add(id(seq))
            budget -= n
        return out

    def _reserve(self, seq: Sequence, n: int, scheduled: set[int], out: SchedulerOutput) -> bool:
        """Allocate for ``n`` more tokens of ``seq``, preempting the newest unscheduled sequences."""
        while not self.cache.can_allocate(seq, n):
            victims = [s for s in self.running if id(s) not in scheduled]
            victim = victims[-1]  # seq itself is unscheduled, so this is never empty
            self._preempt(victim)
            out.preempted.append(victim)
            if victim is seq:
                return False
        self.cache.allocate(seq, n)
        return True

    def _preempt(self, seq: Sequence) -> None:
        """Recompute later: drop the cache, keep the tokens (generated ones keep their role)."""
        self.running.remove(seq)
        self.cache.free(seq)
        seq.num_computed = 0
        seq.status = SeqStatus.WAITING
        seq.num_preemptions += 1
        self.num_preemptions += 1
        self.waiting.appendleft(seq)

    def advance(self, out: SchedulerOutput) -> None:
        """Mark the chunks of a finished step as computed."""
        for c in out.chunks:
            if c.seq.status is SeqStatus.RUNNING:
                c.seq.num_computed = c.end
