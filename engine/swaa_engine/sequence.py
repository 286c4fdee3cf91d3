"""One request's token state as the scheduler sees it (no torch)."""

from __future__ import annotations

import enum
import itertools
from dataclasses import dataclass, field

from swaa_engine.kv_cache.prefix import PrefixState
from swaa_engine.sampling_params import SamplingParams


class SeqStatus(enum.Enum):
    WAITING = "waiting"
    RUNNING = "running"
    FINISHED = "finished"


class FinishReason(enum.Enum):
    LENGTH = "length"
    STOP = "stop"
    EOS = "eos"
    ABORT = "abort"
    DEADLINE = "deadline"  # its deadline passed while queued or running (the server answers DEADLINE_EXCEEDED)


_counter = itertools.count()


def is_decode(start: int, num_tokens: int, num_prompt: int) -> bool:
    """Computing ``num_tokens`` tokens from ``start`` is a decode: one generated token, served by the backends'
    batched decode path (the one definition: scheduler chunks, the attention layout and sequences ask here)."""
    return num_tokens == 1 and start >= num_prompt


@dataclass(eq=False)
class Sequence:
    """Tokens of one request and how far the cache has computed them.

    ``num_computed`` counts tokens whose KV is in the cache. Tokens at positions
    >= ``num_prompt`` were generated: under fa_decode they attend to everything, also when a
    preempted sequence recomputes them as part of a prefill.
    """

    request_id: str
    token_ids: list[int]
    params: SamplingParams
    arrival: float = 0.0
    num_prompt: int = field(init=False)
    num_computed: int = 0
    status: SeqStatus = SeqStatus.WAITING
    finish_reason: FinishReason | None = None
    block_table: list[int] = field(default_factory=list)
    ring: int | None = None
    swapped: int | None = None  # host bytes holding this sequence's computed KV while it is swapped out
    num_preemptions: int = 0
    order: int = field(default_factory=lambda: next(_counter))
    prefix: PrefixState = field(default_factory=PrefixState)  # its place in the prefix cache's index
    deadline: float | None = None  # time.monotonic() after which it ends with FinishReason.DEADLINE

    @property
    def rank(self) -> tuple[int, int]:
        """Queue order: higher priority first, then arrival (smaller ranks are admitted first, preempted last)."""
        return -self.params.priority, self.order

    def __post_init__(self) -> None:
        self.num_prompt = len(self.token_ids)

    @property
    def num_tokens(self) -> int:
        return len(self.token_ids)

    @property
    def num_generated(self) -> int:
        return len(self.token_ids) - self.num_prompt

    @property
    def num_uncomputed(self) -> int:
        return len(self.token_ids) - self.num_computed

    @property
    def is_decoding(self) -> bool:
        """Only the last generated token is uncomputed: its next step is a decode."""
        return is_decode(self.num_computed, self.num_uncomputed, self.num_prompt)

    @property
    def finished(self) -> bool:
        return self.status is SeqStatus.FINISHED

    def append(self, token_id: int) -> None:
        self.token_ids.append(token_id)
