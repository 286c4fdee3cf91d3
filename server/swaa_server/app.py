"""Builds and runs the grpc.aio server: Generation, health, reflection, graceful drain on SIGTERM."""

from __future__ import annotations

import asyncio
import logging
import signal
from dataclasses import dataclass

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection

from swaa_client._pb.swaa.v1 import generation_pb2 as pb
from swaa_client._pb.swaa.v1 import generation_pb2_grpc as pb_grpc
from swaa_engine.async_engine import AsyncEngine
from swaa_engine.config import EngineConfig
from swaa_engine.engine import LLMEngine
from swaa_server.servicer import GenerationServicer

log = logging.getLogger("swaa_server")
SERVICE = pb.DESCRIPTOR.services_by_name["Generation"].full_name


@dataclass(frozen=True)
class ServerConfig:
    host: str = "127.0.0.1"
    port: int = 50051
    grace_s: float = 25.0  # in-flight streams get this long after SIGTERM
    max_message_bytes: int = 16 << 20

    def __post_init__(self):
        if not 0 <= self.port < 65536:
            raise ValueError(f"port: {self.port} out of range")
        if self.grace_s < 0:
            raise ValueError(f"grace_s: must be >= 0, got {self.grace_s}")


async def serve(engine_config: EngineConfig, server_config: ServerConfig, ready: asyncio.Event | None = None,
                stop: asyncio.Event | None = None, engine: LLMEngine | None = None) -> None:
    opts = [("grpc.max_receive_message_length", server_config.max_message_bytes),
            ("grpc.max_send_message_length", server_config.max_message_bytes)]
    server = grpc.aio.server(options=opts)
    health_servicer = health.aio.HealthServicer()
    health_pb2_grpc.add_HealthServicer_to_server(health_servicer, server)
    reflection.enable_server_reflection([SERVICE, reflection.SERVICE_NAME, health.SERVICE_NAME], server)
    servicer = GenerationServicer()  # registered before start; answers UNAVAILABLE until the engine is ready
    pb_grpc.add_GenerationServicer_to_server(servicer, server)
    port = server.add_insecure_port(f"{server_config.host}:{server_config.port}")
    # health answers NOT_SERVING while the model loads, so probes can tell "up" from "ready"
    for name in ("", SERVICE):
        await health_servicer.set(name, health_pb2.HealthCheckResponse.NOT_SERVING)
    await server.start()
    log.info("listening on %s:%d", server_config.host, port)

    loop = asyncio.get_running_loop()
    if engine is None:
        engine = await loop.run_in_executor(None, LLMEngine, engine_config)
    front = AsyncEngine(engine)
    servicer.engine = front
    for name in ("", SERVICE):
        await health_servicer.set(name, health_pb2.HealthCheckResponse.SERVING)
    log.info("serving %s (%s)", engine.model_name, engine_config.swaa.describe())
    if ready is not None:
        ready.port = port
        ready.set()

    stop = stop or asyncio.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        try:
            loop.add_signal_handler(sig, stop.set)
        except (RuntimeError, ValueError):  # not the main thread (tests)
            pass
    await stop.wait()
    log.info("draining: NOT_SERVING, refusing new calls, %ss for in-flight streams", server_config.grace_s)
    await health_servicer.enter_graceful_shutdown()
    await server.stop(server_config.grace_s)
    front.shutdown()
