"""Asyncio front for the server: one background thread steps the engine; each request streams.

    engine = AsyncEngine(LLMEngine(EngineConfig()))
    async for chunk in engine.stream("Hello", SamplingParams(max_tokens=16)):
        print(chunk.text, end="")

Leaving the ``async for`` early (client cancel, deadline, break) aborts the request and frees
its cache slots, also while its prompt is still being tokenized.

A request with ``n`` > 1 samples is fanned out here into n engine sequences (ids ``sample_id(request_id, i)``),
each seeded by ``SamplingParams.sample_params``; their chunks share the request's queue, relabelled with the
request's id and the sample's ``index``. The prompt is tokenized once; the first sample computes it and the others,
admitted after it, wait for its prefill and then share its KV through prefix caching (full blocks by reference, the
ring from a snapshot); what they recompute is the prompt's last partial block (and the last token, which every
sequence computes to get its first logits). Without prefix caching each sample computes the whole prompt.

Prompts are tokenized by a small pool of intake threads (not the event loop, not an unbounded executor), and
at most ``max_waiting`` requests may wait for it: tokenization's memory and CPU stay bounded however many
large requests arrive at once.
"""

from __future__ import annotations

import asyncio
import logging
import threading
import uuid
from concurrent.futures import Future, ThreadPoolExecutor
from typing import AsyncIterator, Protocol

from swaa_engine.engine import EngineUnavailableError, LLMEngine, Prompt, StepError, sample_id
from swaa_engine.intake import check_request_id
from swaa_engine.outputs import StreamChunk, take_ready
from swaa_engine.sampling_params import RequestIdInUseError, SamplingParams
from swaa_engine.scheduler import QueueFullError

log = logging.getLogger(__name__)


class EngineDeadError(RuntimeError):
    """The engine loop failed; the request cannot complete."""


__all__ = ["AsyncEngine", "EngineDeadError", "EngineUnavailableError", "Listener", "sample_id"]

class Listener(Protocol):
    """Observes requests (metrics, logs). ``on_finish`` runs on the engine thread: keep it cheap."""

    def on_accept(self, request_id: str, prompt: Prompt, params: SamplingParams | None) -> None: ...

    def on_finish(self, chunk: StreamChunk) -> None: ...


def _put_all(puts: list) -> None:
    """On the caller's event loop: one step's items into their queues."""
    for q, item in puts:
        q.put_nowait(item)


class AsyncEngine:
    def __init__(self, engine: LLMEngine, listeners: tuple[Listener, ...] = (), intake_workers: int = 2,
                 on_dead=None):
        """``intake_workers``: threads that tokenize prompts (each holds at most one prompt's tokenization).
        ``on_dead(reason)``: called once, on the engine thread, when the engine is marked dead (``LLMEngine.dead``);
        its streams have ended with ``EngineUnavailableError`` and new requests are refused with it."""
        if intake_workers < 1:
            raise ValueError(f"intake_workers: must be >= 1, got {intake_workers}")
        self.engine = engine
        self.listeners = tuple(listeners)
        self._intake = ThreadPoolExecutor(max_workers=intake_workers, thread_name_prefix="swaa-intake")
        self._intake_lock = threading.Lock()
        self._intake_pending = 0  # prompts queued for or being tokenized; at most max_waiting
        self._intake_limit = engine.config.scheduler.max_waiting
        self._queues: dict[str, tuple[asyncio.AbstractEventLoop, asyncio.Queue]] = {}  # by engine sequence id
        self._samples: dict[str, tuple[str, int]] = {}  # sample's sequence id -> (request id, index), for n > 1
        self._groups: dict[str, list[str]] = {}  # request id -> its samples' sequence ids, for n > 1
        self._wake = threading.Event()
        self._stop = False
        self.error: BaseException | None = None
        self._on_dead = on_dead
        self._thread = threading.Thread(target=self._loop, name="swaa-engine", daemon=True)
        self._thread.start()

    # -- engine thread ----------------------------------------------------------------------
    @property
    def dead(self) -> str | None:
        """Why the engine is dead (None while it serves)."""
        return self.engine.dead

    def _loop(self) -> None:
        while not self._stop:
            if not self.engine.has_work():
                self._wake.wait(0.05)
                self._wake.clear()
                continue
            try:
                chunks = self.engine.step()
            except StepError as e:  # only that step's requests fail; the engine and the other requests go on
                log.error("engine step failed; ending its requests", exc_info=e.cause, extra={"request_ids": e.request_ids})
                error = EngineDeadError(str(e)) if e.dead is None else EngineUnavailableError(f"the engine is dead: {e.dead}")
                for rid, final in zip(e.request_ids, e.final_chunks):
                    self._notify_finish(final)
                    self._deliver(rid, error)
                if e.dead is not None:
                    self._die(e.dead)
                    return
                continue
            except BaseException as e:  # deliver to every waiter instead of hanging them
                log.exception("engine step failed")
                self.error = e
                for rid in list(self._queues):
                    self._notify_finish(self.engine.abort(rid))
                    self._deliver(rid, EngineDeadError(f"engine step failed: {e!r}"))
                continue
            self._deliver_all([(c.request_id, c) for c in chunks])

    def _die(self, reason: str) -> None:
        """The engine is dead: streams still open (a prompt was being tokenized) end with the error; stop stepping."""
        log.critical("engine dead: %s", reason)
        for rid in list(self._queues):
            self._notify_finish(self.engine.abort(rid))
            self._deliver(rid, EngineUnavailableError(f"the engine is dead: {reason}"))
        if self._on_dead is not None:
            try:
                self._on_dead(reason)
            except Exception:
                log.exception("on_dead failed")

    def _notify_finish(self, chunk: StreamChunk | None) -> None:
        if chunk is None or not chunk.finished:
            return
        for listener in self.listeners:
            try:
                listener.on_finish(chunk)
            except Exception:  # observers must never break delivery
                log.exception("listener failed")

    def _deliver(self, rid: str, item) -> None:
        self._deliver_all([(rid, item)])

    def _deliver_all(self, items: list[tuple[str, object]]) -> None:
        """Hand each (sequence id, chunk or error) to its caller's queue: one ``call_soon_threadsafe`` per event loop
        for the whole list, not one per request (each is a write to the loop's wake-up socket, and at batch 128 those
        wake-ups were the engine thread's largest cost after the model in a replica's py-spy profile). Per queue the
        items keep their order, and callbacks run in the order they were scheduled."""
        by_loop: dict = {}
        for rid, item in items:
            if isinstance(item, StreamChunk):
                owner = self._samples.get(rid)
                if owner is not None:  # a sample of a request with n > 1: the caller knows the request's id
                    item.request_id, item.index = owner
                self._notify_finish(item)
            target = self._queues.get(rid)
            if target is not None:
                loop, q = target
                by_loop.setdefault(loop, []).append((rid, q, item))
        for loop, puts in by_loop.items():
            try:
                loop.call_soon_threadsafe(_put_all, [(q, item) for _, q, item in puts])
            except RuntimeError:  # the caller's loop is closed
                for rid, _, _ in puts:
                    self._queues.pop(rid, None)

    # -- callers ----------------------------------------------------------------------------
    async def stream(self, prompt: Prompt, params: SamplingParams | None = None, request_id: str | None = None) -> AsyncIterator[StreamChunk]:
        """Yield chunks until the finished one. Raises InvalidRequestError / QueueFullError up front."""
        ids, q = await self._open(prompt, params, request_id)
        async for chunk in self._drain(ids, q):
            yield chunk

    async def open(self, prompt: Prompt, params: SamplingParams | None = None, request_id: str | None = None) -> AsyncIterator[StreamChunk]:
        """Like ``stream``, but the request is accepted (or refused) when this returns, before its first token."""
        ids, q = await self._open(prompt, params, request_id)
        return self._drain(ids, q)

    async def _open(self, prompt, params, request_id) -> tuple[list[str], asyncio.Queue]:
        """Queue the request (n > 1: its n samples); returns the engine sequence ids and their queue."""
        if self.engine.dead is not None:
            raise EngineUnavailableError(f"the engine is dead: {self.engine.dead}")
        check_request_id(request_id)
        if request_id is not None and (request_id in self._queues or request_id in self._groups):
            raise RequestIdInUseError(request_id)
        n = params.n if params is not None else 1
        q: asyncio.Queue = asyncio.Queue()
        loop = asyncio.get_running_loop()
        rid = request_id or uuid.uuid4().hex
        ids = [rid] if n == 1 else [sample_id(rid, i) for i in range(n)]
        for i, sid in enumerate(ids):  # registered first: the engine thread may answer at once
            self._queues[sid] = (loop, q)
            if n > 1:
                self._samples[sid] = (rid, i)
        if n > 1:
            self._groups[rid] = ids
        try:
            work = (self._submit(self.engine.add_request, prompt, params, rid) if n == 1
                    else self._submit(self.engine.add_samples, prompt, params, ids))
            try:
                await asyncio.wrap_future(work)
            except asyncio.CancelledError:  # the caller left (deadline, cancel) while its prompt was tokenized
                if not work.cancel():  # already running: once it has queued the request, take it out again
                    work.add_done_callback(lambda f: f.cancelled() or f.exception() is not None or self._abort_ids(ids))
                raise
        except BaseException:
            self._forget(rid, ids)
            raise
        for listener in self.listeners:
            listener.on_accept(rid, prompt, params)
        self._wake.set()
        return ids, q

    def _abort_ids(self, ids: list[str]) -> list[StreamChunk]:
        return [c for c in map(self.engine.abort, ids) if c is not None]

    def _forget(self, rid: str, ids: list[str]) -> None:
        for sid in ids:
            self._queues.pop(sid, None)
            self._samples.pop(sid, None)
        if self._groups.get(rid) is ids:
            del self._groups[rid]

    def _submit(self, fn, *args) -> Future:
        """Run ``fn`` on an intake thread; refuses (QueueFullError) when max_waiting prompts already wait for one."""
        with self._intake_lock:
            if self._intake_pending >= self._intake_limit:
                raise QueueFullError(f"{self._intake_pending} prompts are waiting to be tokenized")
            self._intake_pending += 1
        try:
            work = self._intake.submit(fn, *args)
        except BaseException:
            self._intake_done(None)
            raise
        work.add_done_callback(self._intake_done)
        return work

    def _intake_done(self, _work) -> None:
        with self._intake_lock:
            self._intake_pending -= 1

    async def tokenize(self, prompt: Prompt) -> list[int]:
        """Token ids of a prompt (CountTokens), through the same bounded intake as requests."""
        return await asyncio.wrap_future(self._submit(self.engine.tokenize, prompt))

    async def detokenize(self, token_ids: list[int], skip_special_tokens: bool = False) -> str:
        """Text of token ids (Detokenize), on the same bounded intake threads."""
        return await asyncio.wrap_future(self._submit(self.engine.detokenize, token_ids, skip_special_tokens))


    async def _drain(self, ids: list[str], q: asyncio.Queue) -> AsyncIterator[StreamChunk]:
        left = len(ids)  # samples not finished yet
        pending = None
        try:
            while True:
                item, pending = (pending, None) if pending is not None else take_ready(await q.get(), q)
                if isinstance(item, BaseException):
                    raise item
                if item.finished:
                    left -= 1
                yield item
                if not left:
                    return
        finally:
            rid = self._samples.get(ids[0], (ids[0], 0))[0]
            self._forget(rid, ids)
            if left:
                for c in self._abort_ids(ids):
                    self._notify_finish(c)

    async def generate(self, prompt: Prompt, params: SamplingParams | None = None, request_id: str | None = None) -> list[StreamChunk]:
        return [c async for c in self.stream(prompt, params, request_id)]

    def abort(self, request_id: str) -> bool:
        """Abort from anywhere (another connection, say), every sample of it; the stream gets the final chunks."""
        aborted = False
        for sid in self._groups.get(request_id, [request_id]):
            chunk = self.engine.abort(sid)
            if chunk is not None:
                aborted = True
                self._deliver(sid, chunk)
        return aborted

    def shutdown(self) -> None:
        self._stop = True
        self._wake.set()
        self._intake.shutdown(wait=False, cancel_futures=True)
        self._thread.join(timeout=10)
