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
from swaa_engine.sampling_params import InvalidRequestError
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
    """One engine in a Ray actor process (made remote by ``ReplicaRouter``, so importing this needs no Ray)."""

    def __init__(self, config: EngineConfig, index: int):
        from swaa_engine.engine import LLMEngine

        self.index = index
        self.engine = LLMEngine(config)
        self.front = AsyncEngine(self.engine)

    async def stream(self, prompt, params, request_id: str):
        async for chunk in self.front.stream(prompt, params, request_id):
            yield chunk

    async def abort(self, request_id: str) -> bool:
        return self.front.abort(request_id)

    async def tokenize(self, prompt) -> list[int]:
        return await asyncio.get_running_loop().run_in_executor(None, self.engine.tokenize, prompt)

    async def load(self) -> tuple[int, EngineSnapshot]:
        """(process id, snapshot): a new pid means Ray restarted this replica."""
        return os.getpid(), snapshot(self.engine)


def _prompt_weight(prompt) -> int:
    """Prompt tokens, estimated before tokenization (≈4 characters per token for text)."""
    if isinstance(prompt, str):
        return max(1, len(prompt) // 4)
    if prompt and isinstance(prompt[0], dict):
        return max(1, sum(len(str(m.get("content", ""))) for m in prompt) // 4)
    return max(1, len(prompt))


class ReplicaRouter:
    """A ``frontend.Frontend`` over Ray actors. Use ``await ReplicaRouter.start(...)``."""

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
        self._owner: dict[str, int] = {}
        self._poller: asyncio.Task | None = None
        self._ray = None

    # -- lifecycle --------------------------------------------------------------------------
    @classmethod
    async def start(cls, engine_config: EngineConfig, rc: ReplicaConfig, listeners=(), on_ready_change=None,
                    wait_ready: bool = True) -> "ReplicaRouter":
        router = cls(rc, listeners, on_ready_change)
        await asyncio.get_running_loop().run_in_executor(None, router._spawn, engine_config)
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
        remote = ray.remote(EngineReplica)
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
            self._pid[i], self._load[i], self.ready[i] = pid, load, True
        after = sum(self.ready)
        if after != before and self.on_ready_change is not None:
            self.on_ready_change(after)

    def _mark_down(self, i: int) -> None:
        before = sum(self.ready)
        self.ready[i] = False
        if before and self.on_ready_change is not None and sum(self.ready) != before:
            self.on_ready_change(sum(self.ready))

    def shutdown(self) -> None:
        if self._poller is not None:
            self._poller.cancel()
        if self._ray is not None:
            for h in self.handles:
                try:
                    self._ray.kill(h, no_restart=True)
                except Exception:
                    pass

    # -- routing -----------------------------------------------------------------------------
    def _pick(self) -> int:
        live = [i for i in range(self.rc.replicas) if self.ready[i]]
        if not live:
            raise ReplicaUnavailableError("no engine replica is ready (restarting or loading); retry")
        return min(live, key=lambda i: (self._work[i], i))

    def owner(self, request_id: str) -> int | None:
        return self._owner.get(request_id)

    def _ray_errors(self):
        from ray.exceptions import GetTimeoutError, RayActorError, RayTaskError

        return RayTaskError, (RayActorError, GetTimeoutError)

    async def stream(self, prompt, params=None, request_id=None):
        rid = request_id or uuid.uuid4().hex
        if rid in self._owner:
            raise InvalidRequestError("request_id", f"{rid!r} is already in use by a running request")
        i = self._pick()
        weight = _prompt_weight(prompt)
        self._work[i] += weight + 1
        self._owner[rid] = i
        task_error, actor_errors = self._ray_errors()
        gen = self.handles[i].stream.options(num_returns="streaming").remote(prompt, params, rid)
        accepted = finished = False
        queued = True  # until the first chunk: its prompt tokens count as this replica's outstanding work
        try:
            async for ref in gen:
                chunk = await ref
                if not accepted:
                    accepted = True
                    for listener in self.listeners:
                        listener.on_accept(rid, prompt, params)
                if queued:
                    queued = False
                    self._work[i] -= weight
                if chunk.finished:
                    finished = True
                    for listener in self.listeners:
                        _safe(listener.on_finish, chunk, replica=str(i))
                yield chunk
                if finished:
                    return
            raise ReplicaUnavailableError(f"replica {i} ended the stream early")
        except task_error as e:  # the replica raised: InvalidRequestError, QueueFullError, EngineDeadError, …
            cause = getattr(e, "cause", None)
            if isinstance(cause, actor_errors):
                self._mark_down(i)
                raise ReplicaUnavailableError(f"replica {i} is gone ({type(cause).__name__}); retry") from None
            raise (cause if isinstance(cause, BaseException) else e) from None
        except actor_errors as e:
            self._mark_down(i)
            raise ReplicaUnavailableError(f"replica {i} is gone ({type(e).__name__}); retry") from None
        finally:
            self._owner.pop(rid, None)
            self._work[i] -= 1 + (weight if queued else 0)
            if not finished:  # cancel, deadline, client gone, or error: free the replica's cache now
                self.handles[i].abort.remote(rid)
                try:
                    self._ray.cancel(gen)
                except Exception:
                    pass

    async def generate(self, prompt, params=None, request_id=None):
        return [c async for c in self.stream(prompt, params, request_id)]

    async def abort(self, request_id: str) -> bool:
        i = self._owner.get(request_id)
        if i is None:
            return False
        try:
            return await _await_ref(self.handles[i].abort.remote(request_id))
        except Exception:
            return False

    async def tokenize(self, prompt) -> list[int]:
        i = self._pick()
        task_error, actor_errors = self._ray_errors()
        try:
            return await _await_ref(self.handles[i].tokenize.remote(prompt))
        except task_error as e:
            raise (e.cause if isinstance(getattr(e, "cause", None), BaseException) else e) from None
        except actor_errors:
            self._mark_down(i)
            raise ReplicaUnavailableError(f"replica {i} is gone; retry") from None

    def views(self) -> tuple[ReplicaView, ...]:
        return tuple(ReplicaView(i, self.ready[i], self.restarts[i], self._load[i]) for i in range(self.rc.replicas))

    async def info(self):
        known = [l for l in self._load if l is not None]
        if not known:
            raise ReplicaUnavailableError("no replica has answered yet")
        return known[0], self.views()

    def loads(self):
        return [({"replica": str(i)}, self._load[i]) for i in range(self.rc.replicas) if self.ready[i] and self._load[i]]


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
