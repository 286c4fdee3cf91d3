"""``swaa serve --replicas N``: N engine replicas as Ray actors behind one gRPC front end.

The front end (this process) routes each request to the ready replica with the least outstanding work, streams
its chunks as they are produced, and forwards cancel and Abort to the owning replica. Ray restarts a replica that
dies (``max_restarts=-1``); its in-flight streams end with UNAVAILABLE, and requests go to the others meanwhile.
Ray is imported only here, and only when replicas are asked for.
"""

from __future__ import annotations

import asyncio
import logging
import os
import uuid
from dataclasses import dataclass

from swaa_engine.async_engine import AsyncEngine
from swaa_engine.config import EngineConfig
from swaa_engine.outputs import take_ready
from swaa_engine.intake import check_request_id
from swaa_engine.sampling_params import RequestIdInUseError
from swaa_server.frontend import EngineSnapshot, ReplicaUnavailableError, ReplicaView, snapshot

log = logging.getLogger("swaa.replicas")


@dataclass(frozen=True)
class ReplicaConfig:
    replicas: int
    ray_address: str | None = None  # None: start a local Ray instance; "auto" or host:port: join a cluster
    gpus_per_replica: float | None = None  # None: 1 when the cluster has GPUs, else 0 (CPU replicas)
    cpus_per_replica: float = 1.0
    ray_num_cpus: int | None = None  # local Ray only: CPUs it may use (default: all)
    object_store_bytes: int | None = None  # local Ray only: the shared-memory store (requests are small)
    poll_s: float = 0.5  # replica health/load poll period
    namespace: str = "swaa"

    def __post_init__(self):
        if self.replicas < 1:
            raise ValueError(f"replicas: must be >= 1, got {self.replicas}")
        if self.gpus_per_replica is not None and self.gpus_per_replica < 0:
            raise ValueError(f"gpus_per_replica: must be >= 0, got {self.gpus_per_replica}")
        if self.cpus_per_replica <= 0 or self.poll_s <= 0:
            raise ValueError("cpus_per_replica and poll_s must be > 0")


class EngineReplica:
    """One engine in a Ray actor process (made remote by ``ReplicaRouter``, so importing this needs no Ray).

    Requests come in through ``submit``; every request's chunks go out through one ``outputs`` stream, batched per
    engine step. One Ray object per step instead of one per token per request keeps the router's cost flat as the
    batch grows."""

    def __init__(self, config: EngineConfig, index: int):
        from swaa_engine.engine import LLMEngine

        self.index = index
        self.engine = LLMEngine(config)
        self.engine.warmup()  # kernels compile before the replica reports ready
        self.engine.prompt_bounds  # noqa: B018 — computed now (a pass over the vocabulary), not on a request
        self.front = AsyncEngine(self.engine, on_dead=self._exit_dead)
        self._outbox: asyncio.Queue | None = None
        self._tasks: dict[str, asyncio.Task] = {}

    def _exit_dead(self, reason: str) -> None:
        """The engine died (its device failed): end this actor's process so that Ray restarts it, after a moment for
        the streams' errors to reach the router (the router ends whatever did not as UNAVAILABLE anyway)."""
        import threading

        from swaa_server.config import EXIT_ENGINE_DEAD

        log.critical("replica %d: engine dead (%s); exiting for a restart", self.index, reason)
        threading.Timer(1.0, os._exit, (EXIT_ENGINE_DEAD,)).start()

    def _box(self) -> asyncio.Queue:
        if self._outbox is None:  # created on the actor's event loop
            self._outbox = asyncio.Queue()
        return self._outbox

    async def submit(self, prompt, params, request_id: str) -> None:
        """Accepts the request (or raises InvalidRequestError / QueueFullError); its chunks follow on ``outputs``."""
        chunks = await self.front.open(prompt, params, request_id)
        self._tasks[request_id] = asyncio.create_task(self._forward(request_id, chunks))

    async def _forward(self, request_id: str, chunks) -> None:
        box = self._box()
        try:
            async for chunk in chunks:
                box.put_nowait(chunk)
        except Exception as e:  # EngineDeadError: the request cannot complete
            box.put_nowait((request_id, e))
        finally:
            self._tasks.pop(request_id, None)

    async def outputs(self):
        box = self._box()
        while True:
            items = [await box.get()]
            while not box.empty():
                items.append(box.get_nowait())
            yield items

    async def abort(self, request_id: str) -> bool:
        return self.front.abort(request_id)

    async def tokenize(self, prompt) -> list[int]:
        return await self.front.tokenize(prompt)

    async def detokenize(self, token_ids, skip_special_tokens) -> str:
        return await self.front.detokenize(token_ids, skip_special_tokens)

    async def load(self) -> tuple[int, EngineSnapshot]:
        """(process id, snapshot): a new pid means Ray restarted this replica."""
        return os.getpid(), snapshot(self.engine)


@dataclass(frozen=True)
class _Route:
    replica: int
    pid: int | None  # the replica process it was sent to: a restarted successor's pump never touches it
    queue: asyncio.Queue


def _prompt_weight(prompt) -> int:
    """Prompt tokens, estimated before tokenization (≈4 characters per token for text)."""
    if isinstance(prompt, str):
        return max(1, len(prompt) // 4)
    if prompt and isinstance(prompt[0], dict):
        return max(1, sum(len(str(m.get("content", ""))) for m in prompt) // 4)
    return max(1, len(prompt))


class ReplicaRouter:
    """A ``frontend.Frontend`` over Ray actors. Use ``await ReplicaRouter.start(...)``."""

    replica_cls = EngineReplica  # what each actor runs (benchmarks put a stand-in engine here)

    def __init__(self, rc: ReplicaConfig, listeners=(), on_ready_change=None):
        self.rc = rc
        self.listeners = tuple(listeners)
        self.on_ready_change = on_ready_change  # called with the ready count whenever it changes
        n = rc.replicas
        self.handles: list = [None] * n
        self.ready = [False] * n
        self.restarts = [0] * n
        self._pid: list[int | None] = [None] * n
        self._load: list[EngineSnapshot | None] = [None] * n
        self._work = [0] * n  # outstanding work: queued (not yet first-token) prompt tokens + running requests
        self._routes: dict[str, _Route] = {}  # in-flight requests: where each went, and where its chunks land
        self._pumps: list[asyncio.Task | None] = [None] * n
        self._pump_pid: list[int | None] = [None] * n  # the replica process each pump reads from
        self._poller: asyncio.Task | None = None
        self._ray = None

    # -- lifecycle --------------------------------------------------------------------------
    @classmethod
    async def start(cls, engine_config: EngineConfig, rc: ReplicaConfig, listeners=(), on_ready_change=None,
                    wait_ready: bool = True) -> "ReplicaRouter":
        router = cls(rc, listeners, on_ready_change)
        loop = asyncio.get_running_loop()
        await loop.run_in_executor(None, _check_config, engine_config)
        await loop.run_in_executor(None, router._spawn, engine_config)
        router._poller = asyncio.create_task(router._poll_forever())
        if wait_ready:  # until one replica answers: the service is SERVING from then on
            while not any(router.ready):
                await asyncio.sleep(0.1)
        return router

    def _spawn(self, engine_config: EngineConfig) -> None:
        import ray

        self._ray = ray
        if not ray.is_initialized():
            kw = dict(include_dashboard=False, log_to_driver=True, namespace=self.rc.namespace)
            if self.rc.ray_address:
                ray.init(address=self.rc.ray_address, **kw)
            else:
                ray.init(num_cpus=self.rc.ray_num_cpus, object_store_memory=self.rc.object_store_bytes, **kw)
        gpus = self.rc.gpus_per_replica
        if gpus is None:
            gpus = 1 if ray.cluster_resources().get("GPU", 0) >= 1 else 0
        remote = ray.remote(self.replica_cls)
        for i in range(self.rc.replicas):
            # one process per replica; Ray restarts it when it dies, but never retries a task (no duplicate streams)
            cfg = engine_config if gpus or engine_config.num_threads else _with_threads(engine_config, self.rc.cpus_per_replica)
            self.handles[i] = remote.options(
                name=f"swaa-replica-{i}", get_if_exists=False, num_gpus=gpus, num_cpus=self.rc.cpus_per_replica,
                max_restarts=-1, max_task_retries=0, max_concurrency=10_000,
            ).remote(cfg, i)
        log.info("replicas.started %s", dict(replicas=self.rc.replicas, gpus_per_replica=gpus, address=self.rc.ray_address))

    async def _poll_forever(self) -> None:
        while True:
            await asyncio.gather(*(self._poll(i) for i in range(self.rc.replicas)))
            await asyncio.sleep(self.rc.poll_s)

    async def _poll(self, i: int) -> None:
        before = sum(self.ready)
        try:
            pid, load = await asyncio.wait_for(_await_ref(self.handles[i].load.remote()), timeout=max(2.0, 4 * self.rc.poll_s))
        except asyncio.CancelledError:
            raise
        except Exception:  # dead, restarting, or still loading its model
            self.ready[i] = False
        else:
            if self._pid[i] is not None and pid != self._pid[i]:
                self.restarts[i] += 1
                log.warning("replica %d restarted (pid %s → %s)", i, self._pid[i], pid)
            self._pid[i], self._load[i] = pid, load
            if self._pumps[i] is None or self._pumps[i].done() or self._pump_pid[i] != pid:
                if self._pumps[i] is not None and not self._pumps[i].done():
                    self._pumps[i].cancel()  # still reading the dead process: its end only concerns that process
                self._pump_pid[i] = pid
                self._pumps[i] = asyncio.create_task(self._pump(i, pid))
            self.ready[i] = True
        after = sum(self.ready)
        if after != before and self.on_ready_change is not None:
            self.on_ready_change(after)

    async def _pump(self, i: int, pid: int) -> None:
        """Replica i's output stream → the waiting requests. When it breaks (the replica process ``pid`` died), every
        request sent to that process ends with ReplicaUnavailableError; requests sent to its restarted successor
        are not touched."""
        gen = self.handles[i].outputs.options(num_returns="streaming").remote()
        reason = "its output stream ended"
        try:
            async for ref in gen:
                for item in await ref:
                    rid, payload = (item.request_id, item) if not isinstance(item, tuple) else item
                    route = self._routes.get(rid)
                    if route is not None and (route.replica, route.pid) == (i, pid):
                        route.queue.put_nowait(payload)
        except asyncio.CancelledError:
            raise
        except Exception as e:
            reason = type(e).__name__
        finally:
            if self._pump_pid[i] == pid:
                self._mark_down(i)
            err = ReplicaUnavailableError(f"replica {i} is gone ({reason}); retry")
            for route in list(self._routes.values()):
                if (route.replica, route.pid) == (i, pid):
                    route.queue.put_nowait(err)

    def _mark_down(self, i: int) -> None:
        before = sum(self.ready)
        self.ready[i] = False
        if before and self.on_ready_change is not None and sum(self.ready) != before:
            self.on_ready_change(sum(self.ready))

    def shutdown(self) -> None:
        if self._poller is not None:
            self._poller.cancel()
        for p in self._pumps:
            if p is not None:
                p.cancel()
        if self._ray is not None:
            for h in self.handles:
                try:
                    self._ray.kill(h, no_restart=True)
                except Exception:
                    pass

    # -- routing -----------------------------------------------------------------------------
    def _pick(self) -> int:
        live = [i for i in range(self.rc.replicas) if self.ready[i] and self._pumps[i] is not None and not self._pumps[i].done()]
        if not live:
            raise ReplicaUnavailableError("no engine replica is ready (restarting or loading); retry")
        return min(live, key=lambda i: (self._work[i], i))

    def owner(self, request_id: str) -> int | None:
        route = self._routes.get(request_id)
        return None if route is None else route.replica

    def requests_on(self, i: int) -> int:
        """Requests in flight on replica i."""
        return sum(r.replica == i for r in self._routes.values())

    def _unwrap(self, e: BaseException, i: int) -> BaseException:
        """A Ray error → what the servicer maps: the replica's own exception, or ReplicaUnavailableError."""
        from ray.exceptions import RayActorError, RayTaskError

        cause = getattr(e, "cause", None) if isinstance(e, RayTaskError) else e
        if isinstance(cause, RayActorError) or isinstance(e, RayActorError):
            self._mark_down(i)
            return ReplicaUnavailableError(f"replica {i} is gone ({type(cause or e).__name__}); retry")
        return cause if isinstance(cause, BaseException) else e

    async def stream(self, prompt, params=None, request_id=None):
        check_request_id(request_id)
        rid = request_id or uuid.uuid4().hex
        if rid in self._routes:
            raise RequestIdInUseError(rid)
        i = self._pick()
        weight = _prompt_weight(prompt)
        q: asyncio.Queue = asyncio.Queue()
        self._routes[rid] = _Route(i, self._pump_pid[i], q)  # registered before submit: the pump may deliver at once
        self._work[i] += weight + 1
        queued, finished = True, False  # queued: until the first chunk its prompt counts as outstanding work
        left = params.n if params is not None else 1  # samples not finished (the replica fans n out)
        submit = None
        try:
            submit = asyncio.ensure_future(_await_ref(self.handles[i].submit.remote(prompt, params, rid)))
            try:
                await asyncio.shield(submit)  # a cancel here leaves the submission running: see finally
            except Exception as e:
                raise self._unwrap(e, i) from None
            for listener in self.listeners:
                listener.on_accept(rid, prompt, params)
            pending = None
            while True:
                item, pending = (pending, None) if pending is not None else take_ready(await q.get(), q)
                if isinstance(item, BaseException):
                    raise item
                if queued:
                    queued = False
                    self._work[i] -= weight
                if item.finished:
                    left -= 1
                    finished = not left
                    for listener in self.listeners:
                        _safe(listener.on_finish, item, replica=str(i))
                yield item
                if finished:
                    return
        finally:
            self._routes.pop(rid, None)
            self._work[i] -= 1 + (weight if queued else 0)
            if not finished and self.ready[i]:  # cancel, deadline, client gone: free the replica's cache now
                if submit is not None and not submit.done():
                    # the replica may still be tokenizing it: abort once it is queued there, or it runs on alone
                    submit.add_done_callback(lambda f: f.cancelled() or f.exception() is not None
                                             or self.handles[i].abort.remote(rid))
                else:
                    self.handles[i].abort.remote(rid)

    async def generate(self, prompt, params=None, request_id=None):
        return [c async for c in self.stream(prompt, params, request_id)]

    async def abort(self, request_id: str) -> bool:
        i = self.owner(request_id)
        if i is None:
            return False
        try:
            return await _await_ref(self.handles[i].abort.remote(request_id))
        except Exception:
            return False

    async def tokenize(self, prompt) -> list[int]:
        i = self._pick()
        try:
            return await _await_ref(self.handles[i].tokenize.remote(prompt))
        except Exception as e:
            raise self._unwrap(e, i) from None

    async def detokenize(self, token_ids, skip_special_tokens=False) -> str:
        i = self._pick()
        try:
            return await _await_ref(self.handles[i].detokenize.remote(token_ids, skip_special_tokens))
        except Exception as e:
            raise self._unwrap(e, i) from None

    def bounds(self):
        return next((l.bounds for l in self._load if l is not None and l.bounds is not None), None)

    def views(self) -> tuple[ReplicaView, ...]:
        return tuple(ReplicaView(i, self.ready[i], self.restarts[i], self._load[i]) for i in range(self.rc.replicas))

    async def info(self):
        known = [l for l in self._load if l is not None]
        if not known:
            raise ReplicaUnavailableError("no replica has answered yet")
        return known[0], self.views()

    def loads(self):
        return [({"replica": str(i)}, self._load[i]) for i in range(self.rc.replicas) if self.ready[i] and self._load[i]]


def _check_config(cfg: EngineConfig) -> None:
    """Refuse what every replica would fail on (model not found, unsupported architecture, no adapter) here, with a
    clear error: a replica that cannot start would otherwise be restarted by Ray forever."""
    from swaa_engine.models.loader import load_hf_config, resolve_source
    from swaa_engine.models.registry import dims_from_config, model_layer_specs

    hf_config = load_hf_config(resolve_source(cfg.model))
    dims_from_config(hf_config)
    model_layer_specs(cfg.swaa, hf_config)
    if cfg.lora:
        from swaa_engine.models.adapters import check_adapter

        check_adapter(cfg.lora)


async def _await_ref(ref):
    return await ref


def _safe(fn, *a, **k):
    try:
        fn(*a, **k)
    except Exception:  # observers must never break delivery
        log.exception("listener failed")


def _with_threads(cfg: EngineConfig, cpus: float) -> EngineConfig:
    from dataclasses import replace

    return replace(cfg, num_threads=max(1, int(cpus)))
