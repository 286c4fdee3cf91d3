"""What the servicer talks to: one in-process engine (``LocalFrontend``) or a router over Ray replicas
(``replicas.ReplicaRouter``). Both offer the same async interface, so the servicer does not know which it has."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import AsyncIterator, Protocol

from swaa_engine.async_engine import AsyncEngine
from swaa_engine.engine import Prompt
from swaa_engine.intake import PromptBounds
from swaa_engine.outputs import StreamChunk
from swaa_engine.sampling_params import SamplingParams
from swaa_engine.swaa import LayerSpec, SWAAConfig


class ReplicaUnavailableError(RuntimeError):
    """The replica serving a request died, or none is ready (the server maps this to UNAVAILABLE: retryable)."""


@dataclass(frozen=True)
class EngineSnapshot:
    """An engine's description and load, as plain data (it crosses process boundaries to the router)."""

    model_name: str
    architecture: str
    max_model_len: int
    swaa: SWAAConfig
    specs: tuple[LayerSpec, ...]
    block_size: int
    vocab_size: int
    usage: dict  # {"paged": {"used", "total"}, "ring": {...}}
    running: int
    waiting: int
    preemptions: dict  # the fields of swaa.v1.Preemptions
    steps: int = 0  # engine steps that ran a batch, and the seconds they took (model + scheduling + sampling)
    step_seconds: float = 0.0
    bounds: PromptBounds | None = None  # what a prompt must meet before it is even converted (None: unknown)
    cache_bytes: int = 0  # KV memory reserved, and which limit sized it (CacheConfig.resolve_budget)
    cache_budget: str = ""
    prefix: dict = field(default_factory=dict)  # the fields of swaa.v1.PrefixCache
    chat_template: str = ""  # the tokenizer's (empty: none)
    special_tokens: dict = field(default_factory=dict)  # the fields of swaa.v1.SpecialTokens (None: unset)


def snapshot(engine) -> EngineSnapshot:
    """The engine's published load (``LLMEngine.load``, read without its lock) with its description."""
    load = engine.load
    return EngineSnapshot(engine.model_name, engine.dims.architecture, engine.max_model_len, engine.config.swaa,
                          tuple(engine.specs), engine.cache.block_size, engine.dims.vocab_size, load.usage,
                          load.running, load.waiting, load.preemptions, load.steps, load.step_seconds,
                          engine.prompt_bounds, engine.pool_plan.total_bytes, engine.cache_budget_reason, load.prefix,
                          engine.chat_template, engine.special_tokens)


@dataclass(frozen=True)
class ReplicaView:
    index: int
    ready: bool
    restarts: int
    load: EngineSnapshot | None  # last polled; None before the first answer


class Frontend(Protocol):
    def stream(self, prompt: Prompt, params: SamplingParams | None, request_id: str | None) -> AsyncIterator[StreamChunk]: ...

    async def generate(self, prompt: Prompt, params: SamplingParams | None, request_id: str | None) -> list[StreamChunk]: ...

    async def abort(self, request_id: str) -> bool: ...

    async def tokenize(self, prompt: Prompt) -> list[int]: ...

    async def detokenize(self, token_ids: list[int], skip_special_tokens: bool) -> str: ...

    def bounds(self) -> PromptBounds | None:
        """Cheap prompt bounds to check before converting a request (None until an engine has answered)."""
        ...

    async def info(self) -> tuple[EngineSnapshot, tuple[ReplicaView, ...]]:
        """The model (summed usage) and, with replicas, one view per replica."""
        ...

    def loads(self) -> list[tuple[dict[str, str], EngineSnapshot]]:
        """(metric labels, snapshot) per engine, read at scrape time."""
        ...

    def shutdown(self) -> None: ...


class LocalFrontend:
    """One engine in this process."""

    def __init__(self, front: AsyncEngine):
        self.front = front
        self.engine = front.engine
        self._bounds = self.engine.prompt_bounds  # computed now (a pass over the vocabulary), not on a request

    def stream(self, prompt, params=None, request_id=None):
        return self.front.stream(prompt, params, request_id)

    async def generate(self, prompt, params=None, request_id=None):
        return await self.front.generate(prompt, params, request_id)

    async def abort(self, request_id: str) -> bool:
        return self.front.abort(request_id)

    async def tokenize(self, prompt) -> list[int]:
        return await self.front.tokenize(prompt)  # the engine's bounded intake threads, not the event loop

    async def detokenize(self, token_ids, skip_special_tokens=False) -> str:
        return await self.front.detokenize(token_ids, skip_special_tokens)

    def bounds(self):
        return self._bounds

    async def info(self):
        return snapshot(self.engine), ()

    def loads(self):
        return [({}, snapshot(self.engine))]

    def shutdown(self) -> None:
        self.front.shutdown()
