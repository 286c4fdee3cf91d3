"""What the servicer talks to: one in-process engine (``LocalFrontend``) or a router over Ray replicas
(``replicas.ReplicaRouter``). Both offer the same async interface, so the servicer does not know which it has."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from typing import AsyncIterator, Protocol

from swaa_engine.async_engine import AsyncEngine
from swaa_engine.engine import Prompt
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
    preemptions: int
    steps: int = 0  # engine steps that ran a batch, and the seconds they took (model + scheduling + sampling)
    step_seconds: float = 0.0
    cache_bytes: int = 0  # KV memory reserved, and which limit sized it (CacheConfig.resolve_budget)
    cache_budget: str = ""


def snapshot(engine) -> EngineSnapshot:
    with engine._lock:
        sched = engine.scheduler
        return EngineSnapshot(engine.model_name, engine.dims.architecture, engine.max_model_len, engine.config.swaa,
                              tuple(engine.specs), engine.cache.block_size, engine.dims.vocab_size, engine.cache.usage(),
                              len(sched.running), len(sched.waiting), sched.num_preemptions, engine.steps,
                              engine.step_seconds, engine.pool_plan.total_bytes, engine.cache_budget_reason)


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

    def stream(self, prompt, params=None, request_id=None):
        return self.front.stream(prompt, params, request_id)

    async def generate(self, prompt, params=None, request_id=None):
        return await self.front.generate(prompt, params, request_id)

    async def abort(self, request_id: str) -> bool:
        return self.front.abort(request_id)

    async def tokenize(self, prompt) -> list[int]:
        # tokenizing a long prompt takes milliseconds to seconds: keep it off the event loop
        return await asyncio.get_running_loop().run_in_executor(None, self.engine.tokenize, prompt)

    async def info(self):
        return snapshot(self.engine), ()

    def loads(self):
        return [({}, snapshot(self.engine))]

    def shutdown(self) -> None:
        self.front.shutdown()
