"""Typed results of the SDK: plain frozen dataclasses, independent of the generated protobuf classes."""

from __future__ import annotations

import enum
from dataclasses import dataclass


class FinishReason(str, enum.Enum):
    LENGTH = "length"  # max_tokens reached
    STOP = "stop"      # a stop string or stop token id matched
    EOS = "eos"        # the model's end-of-sequence token
    ABORT = "abort"    # cancelled or aborted


@dataclass(frozen=True)
class Usage:
    prompt_tokens: int
    completion_tokens: int
    cached_tokens: int = 0


@dataclass(frozen=True)
class Timings:
    queue_s: float  # arrival until first scheduled
    ttft_s: float   # arrival until the first generated token (0 when none was generated)
    total_s: float  # arrival until finished


@dataclass(frozen=True)
class TokenLogprob:
    token_id: int
    logprob: float
    top: tuple[tuple[int, float], ...] = ()  # (token id, logprob) alternatives, best first


@dataclass(frozen=True)
class Chunk:
    """New tokens of a stream. The last chunk has ``finished`` set and carries usage and timings."""

    request_id: str
    token_ids: tuple[int, ...]
    text: str
    logprobs: tuple[TokenLogprob, ...] = ()
    finished: bool = False
    finish_reason: FinishReason | None = None
    stop: str | None = None
    stop_token_id: int | None = None
    usage: Usage | None = None
    timings: Timings | None = None
    index: int = 0  # the sample (0..n-1) this chunk belongs to; a stream with n > 1 interleaves them
    prompt_logprobs: tuple[TokenLogprob, ...] = ()  # first chunk only, with prompt_logprobs: prompt tokens 1…n-1


@dataclass(frozen=True)
class Sample:
    """One of the n samples of a ``Completion``."""

    index: int
    token_ids: tuple[int, ...]
    text: str
    finish_reason: FinishReason
    logprobs: tuple[TokenLogprob, ...] = ()
    stop: str | None = None
    stop_token_id: int | None = None


@dataclass(frozen=True)
class Completion:
    """A whole generation (``Client.generate``). With n samples the top-level fields are sample 0's and ``samples``
    holds each (also when n = 1); ``usage`` counts the prompt once and every sample's completion tokens."""

    request_id: str
    token_ids: tuple[int, ...]
    text: str
    finish_reason: FinishReason
    usage: Usage
    timings: Timings
    logprobs: tuple[TokenLogprob, ...] = ()
    stop: str | None = None
    stop_token_id: int | None = None
    samples: tuple[Sample, ...] = ()
    prompt_logprobs: tuple[TokenLogprob, ...] = ()  # with prompt_logprobs: one per prompt token after the first


@dataclass(frozen=True)
class SpecialTokens:
    """The tokenizer's special tokens (ids None when the model has none)."""

    bos_id: int | None = None
    bos: str = ""
    eos_ids: tuple[int, ...] = ()  # every id that ends generation
    eos: str = ""
    pad_id: int | None = None
    pad: str = ""


@dataclass(frozen=True)
class PoolUsage:
    used: int   # blocks (paged pool) or rings (ring pool) requests hold
    total: int
    cached: int = 0  # holding cached prefixes only (freed on demand)


@dataclass(frozen=True)
class LayerInfo:
    layer: int
    attention: str  # "full", "sliding_fa_decode" or "sliding_ring"
    cache: str      # "paged" or "ring"


@dataclass(frozen=True)
class Preemptions:
    """What memory pressure has cost since start: preempted sequences' KV swapped to host memory or recomputed."""

    total: int = 0
    swapped: int = 0
    swapped_bytes: int = 0
    recomputed: int = 0
    recomputed_tokens: int = 0
    swap_used_bytes: int = 0
    swap_total_bytes: int = 0  # the swap budget; 0: preemption always recomputes


@dataclass(frozen=True)
class PrefixCache:
    """Prefix caching since start: prompt tokens looked up at admission, and how many were reused."""

    enabled: bool = False
    queried_tokens: int = 0
    hit_tokens: int = 0

    @property
    def hit_rate(self) -> float:
        return self.hit_tokens / self.queried_tokens if self.queried_tokens else 0.0


@dataclass(frozen=True)
class ReplicaStatus:
    """One engine replica of a service started with ``--replicas N``."""

    index: int
    ready: bool
    paged: PoolUsage
    ring: PoolUsage
    running: int
    waiting: int
    restarts: int


@dataclass(frozen=True)
class ModelInfo:
    model: str
    architecture: str
    max_context: int
    window: int | None  # None = full attention
    sinks: int
    fa_decode: str
    fa_layers: str
    layers: tuple[LayerInfo, ...]
    block_size: int
    paged: PoolUsage
    ring: PoolUsage
    vocab_size: int
    fa_tail: int = 0  # experimental knob: last N prompt tokens read with full attention in fa_decode layers
    replicas: tuple[ReplicaStatus, ...] = ()  # empty for a single in-process engine
    replicas_ready: int = 1
    cache_bytes: int = 0  # KV memory reserved per engine, and which limit sized it
    cache_budget: str = ""
    preemptions: Preemptions = Preemptions()
    prefix_cache: PrefixCache = PrefixCache()
    chat_template: str = ""  # Jinja, as the server renders chat messages with (empty: the model has none)
    special_tokens: SpecialTokens = SpecialTokens()
