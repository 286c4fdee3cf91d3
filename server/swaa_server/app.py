"""Builds and runs the grpc.aio server: Generation, health, reflection, auth, TLS, metrics, graceful drain."""

from __future__ import annotations

import asyncio
import signal
import time

import grpc
import structlog
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection

from swaa_client._pb.swaa.v1 import generation_pb2 as pb
from swaa_client._pb.swaa.v1 import generation_pb2_grpc as pb_grpc
from swaa_engine.async_engine import AsyncEngine
from swaa_engine.config import EngineConfig
from swaa_engine.engine import LLMEngine
from swaa_server.config import EXIT_ENGINE_DEAD, ServerConfig, TLSConfig  # noqa: F401 (re-exported for callers)
from swaa_server.frontend import LocalFrontend
from swaa_server.interceptors import BearerAuth, DecodeErrors, RequestBytes
from swaa_server.servicer import GenerationServicer
from swaa_server.telemetry import Metrics, RequestLog

log = structlog.get_logger("swaa.server")
SERVICE = pb.DESCRIPTOR.services_by_name["Generation"].full_name
LOOPBACK = ("127.0.0.1", "localhost", "::1", "[::1]")


def engine_summary(engine: LLMEngine) -> dict:
    """What a start-up log line says about a loaded engine: its model, and how big its KV cache is and why."""
    plan = engine.pool_plan
    return dict(model=engine.model_name, device=str(engine.device), dtype=str(engine.dtype).removeprefix("torch."),
                max_model_len=engine.max_model_len, cache_bytes=plan.total_bytes, cache_budget=engine.cache_budget_reason,
                paged_blocks=engine.cache.blocks.total, paged_tokens=engine.cache.max_tokens_per_seq() or 0,
                rings=engine.cache.rings.total)


async def serve(engine_config: EngineConfig, server_config: ServerConfig, ready: asyncio.Event | None = None,
                stop: asyncio.Event | None = None, engine: LLMEngine | None = None, replicas=None) -> int:
    """``replicas`` (a ``replicas.ReplicaConfig``): run the engines as Ray actors behind this front end.

    Returns the process exit status: 0 after a stop (signal or ``stop``), ``EXIT_ENGINE_DEAD`` when the engine
    died (health NOT_SERVING at once, new calls UNAVAILABLE, then the same drain as SIGTERM)."""
    sc = server_config
    servicer = GenerationServicer()  # registered before start; answers UNAVAILABLE until the engine is ready
    # outermost first: an unauthenticated caller learns nothing, not even that its message was malformed;
    # innermost, a request too large for any prompt the model can take is refused before it is parsed
    interceptors = ([BearerAuth(sc.auth_tokens)] if sc.auth_tokens else []) + [
        DecodeErrors(), RequestBytes(lambda: servicer.engine.bounds() if servicer.engine is not None else None)]
    server = grpc.aio.server(options=sc.grpc_options(), interceptors=interceptors)
    health_servicer = health.aio.HealthServicer()
    health_pb2_grpc.add_HealthServicer_to_server(health_servicer, server)
    reflection.enable_server_reflection([SERVICE, reflection.SERVICE_NAME, health.SERVICE_NAME], server)
    pb_grpc.add_GenerationServicer_to_server(servicer, server)
    address = f"{sc.host}:{sc.port}"
    port = server.add_secure_port(address, sc.tls.credentials()) if sc.tls else server.add_insecure_port(address)
    # health answers NOT_SERVING while the model loads, so probes can tell "up" from "ready"
    for name in ("", SERVICE):
        await health_servicer.set(name, health_pb2.HealthCheckResponse.NOT_SERVING)
    await server.start()
    t_start = time.monotonic()
    log.info("server.listening", address=f"{sc.host}:{port}", tls=bool(sc.tls), mtls=bool(sc.tls and sc.tls.client_ca_file),
             auth=bool(sc.auth_tokens), health="NOT_SERVING until the model is loaded and warmed up")
    if not sc.auth_tokens and sc.host not in LOOPBACK:
        log.warning("server.no_auth", detail="listening beyond loopback without bearer tokens")

    loop = asyncio.get_running_loop()
    draining = False
    stop = stop or asyncio.Event()
    dead: list[str] = []  # why the engine died, once it has

    def on_dead(reason: str) -> None:  # the engine thread: hand over to the loop
        def mark() -> None:
            dead.append(reason)
            log.error("engine.dead", reason=reason, exit_status=EXIT_ENGINE_DEAD)
            stop.set()

        loop.call_soon_threadsafe(mark)

    def set_health(serving: bool) -> list[asyncio.Task]:
        if draining:  # after SIGTERM the service stays NOT_SERVING
            return []
        status = health_pb2.HealthCheckResponse.SERVING if serving else health_pb2.HealthCheckResponse.NOT_SERVING
        return [loop.create_task(health_servicer.set(name, status)) for name in ("", SERVICE)]

    request_log = RequestLog(sc.log_prompts)
    try:
        if replicas is not None:
            from swaa_server.replicas import ReplicaRouter

            metrics = Metrics(extra_label_names=("replica",))

            def on_ready_change(n: int) -> None:
                log.info("replicas.ready", ready=n, replicas=replicas.replicas)
                set_health(n > 0)  # NOT_SERVING only when no replica can answer

            front = await ReplicaRouter.start(engine_config, replicas, listeners=(metrics, request_log),
                                              on_ready_change=on_ready_change)
            metrics.watch(front.loads, ready=lambda: sum(front.ready))
        else:
            if engine is None:
                log.info("engine.loading", model=engine_config.model or "embedded", swaa=engine_config.swaa.describe())
                t0 = time.monotonic()
                engine = await loop.run_in_executor(None, LLMEngine, engine_config)
                log.info("engine.loaded", seconds=round(time.monotonic() - t0, 2), **engine_summary(engine))
            log.info("engine.warming_up", device=str(engine.device))
            t0 = time.monotonic()
            warm = await loop.run_in_executor(None, engine.warmup)  # kernels compile now, not under load
            log.info("engine.warmed_up", seconds=round(time.monotonic() - t0, 2),
                     steps={k: v for k, v in warm.items() if k != "seconds"} or "none needed off CUDA")
            metrics = Metrics()
            front = LocalFrontend(AsyncEngine(engine, listeners=(metrics, request_log), on_dead=on_dead))
            metrics.watch(front.loads)
    except BaseException:
        await server.stop(0)  # a config error must end the process cleanly, not leave a half-open server
        raise
    metrics_host = sc.metrics_host or sc.host
    metrics_port = metrics.serve_http(metrics_host, sc.metrics_port) if sc.metrics_port is not None else None
    servicer.engine = front
    await asyncio.gather(*set_health(True))  # SERVING before anyone is told the server is ready
    snap, views = await front.info()
    log.info("server.serving", model=snap.model_name, swaa=engine_config.swaa.describe(),
             metrics=f"{metrics_host}:{metrics_port}" if metrics_port is not None else None,
             cache=snap.usage, replicas=len(views) or None, seconds_since_listening=round(time.monotonic() - t_start, 2))
    if ready is not None:
        ready.port = port
        ready.metrics_port = metrics_port
        ready.metrics_host = metrics_host if metrics_port is not None else None
        ready.engine = front
        ready.set()

    signals: list[int] = []

    def on_signal(sig: int) -> None:
        signals.append(sig)
        stop.set()

    for sig in (signal.SIGTERM, signal.SIGINT):
        try:
            loop.add_signal_handler(sig, on_signal, sig)
        except (RuntimeError, ValueError):  # not the main thread (tests)
            pass

    def running() -> dict[str, int]:
        loads = [l for _, l in front.loads()]
        return {"running": sum(l.running for l in loads), "waiting": sum(l.waiting for l in loads)}

    try:
        await stop.wait()
        draining = True
        # SIGTERM comes from an orchestrator: say NOT_SERVING but keep serving for the drain delay, so readiness
        # probes and load balancers take this server out before it refuses anything. Ctrl-C or a programmatic
        # stop skips the delay. A dead engine drains like SIGTERM: balancers take the server out while it answers
        # UNAVAILABLE (retryable), then it exits non-zero and is restarted.
        delay = sc.drain_delay_s if signals[:1] == [signal.SIGTERM] or dead else 0.0
        await asyncio.gather(*(health_servicer.set(name, health_pb2.HealthCheckResponse.NOT_SERVING) for name in ("", SERVICE)))
        log.info("server.draining", drain_delay_s=delay, grace_s=sc.grace_s, running=running(), engine_dead=dead[0] if dead else None)
        if delay:
            await asyncio.sleep(delay)
            log.info("server.refusing_new_calls", grace_s=sc.grace_s, running=running())
        await health_servicer.enter_graceful_shutdown()
        await server.stop(sc.grace_s)
    finally:
        front.shutdown()
        metrics.close()
        log.info("server.stopped", exit_status=EXIT_ENGINE_DEAD if dead else 0)
    return EXIT_ENGINE_DEAD if dead else 0
