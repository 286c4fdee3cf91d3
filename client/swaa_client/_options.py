"""Connection options shared by Client and AsyncClient: target, TLS, token, deadlines, retries."""

from __future__ import annotations

import os
import random
from dataclasses import dataclass

import grpc

from swaa_client import _wire
from swaa_client._pb.swaa.v1 import generation_pb2_grpc as pb_grpc

DEFAULT_TARGET = "127.0.0.1:50051"


@dataclass(frozen=True)
class RetryPolicy:
    """Retries on UNAVAILABLE, only while no token has reached the caller (so output is never duplicated)."""

    max_attempts: int = 4
    initial_backoff_s: float = 0.2
    max_backoff_s: float = 5.0
    multiplier: float = 2.0

    def __post_init__(self):
        if self.max_attempts < 1:
            raise ValueError(f"max_attempts: must be >= 1, got {self.max_attempts}")
        if self.initial_backoff_s < 0 or self.max_backoff_s < self.initial_backoff_s or self.multiplier < 1:
            raise ValueError("backoff: need 0 <= initial_backoff_s <= max_backoff_s and multiplier >= 1")

    def backoff(self, attempt: int) -> float:
        """Seconds to wait before attempt ``attempt + 1`` (full jitter)."""
        return random.uniform(0, min(self.max_backoff_s, self.initial_backoff_s * self.multiplier ** (attempt - 1)))


NO_RETRY = RetryPolicy(max_attempts=1)


@dataclass(frozen=True)
class Connection:
    target: str
    token: str | None
    credentials: grpc.ChannelCredentials | None
    options: tuple[tuple[str, object], ...]

    @property
    def metadata(self) -> tuple[tuple[str, str], ...]:
        return (("authorization", f"Bearer {self.token}"),) if self.token else ()


class ClientBase:
    """Connection state shared by Client and AsyncClient; ``_grpc`` is ``grpc`` or ``grpc.aio`` (same channel API)."""

    _grpc = grpc

    def __init__(self, target: str | None = None, *, token: str | None = None, tls: bool = False,
                 root_certificates: bytes | str | None = None, client_certificate: bytes | str | None = None,
                 client_key: bytes | str | None = None, server_name: str | None = None, timeout: float | None = None,
                 retry: RetryPolicy = RetryPolicy(), max_message_bytes: int = 16 << 20,
                 load_balancing: str = "round_robin"):
        self._conn = connection(target, token=token, tls=tls, root_certificates=root_certificates,
                                client_certificate=client_certificate, client_key=client_key,
                                server_name=server_name, max_message_bytes=max_message_bytes,
                                load_balancing=load_balancing)
        c = self._conn
        self._channel = (self._grpc.secure_channel(c.target, c.credentials, c.options) if c.credentials
                         else self._grpc.insecure_channel(c.target, c.options))
        self._stub = pb_grpc.GenerationStub(self._channel)
        self._health = self._channel.unary_unary(_wire.HEALTH_CHECK, request_serializer=_wire.HealthCheckRequest.SerializeToString,
                                                 response_deserializer=_wire.HealthCheckResponse.FromString)
        self.timeout = timeout
        self.retry = retry

    @property
    def target(self) -> str:
        return self._conn.target


def _read(x: bytes | str | None) -> bytes | None:
    if x is None or isinstance(x, bytes):
        return x
    with open(x, "rb") as f:
        return f.read()


LOAD_BALANCING = ("round_robin", "pick_first")


def connection(target: str | None, *, token: str | None, tls: bool, root_certificates, client_certificate,
               client_key, server_name: str | None, max_message_bytes: int, load_balancing: str = "round_robin") -> Connection:
    """Explicit arguments win; else SWAA_TARGET and SWAA_TOKEN from the environment; else the local default.

    ``load_balancing``: with a target that names several servers (``dns:///swaa-serve-headless:50051``, whose DNS
    answers every pod's address, or ``ipv4:10.0.0.1:50051,10.0.0.2:50051``), ``round_robin`` keeps a connection
    to each and spreads calls over them one by one; ``pick_first`` sends everything over one connection."""
    if load_balancing not in LOAD_BALANCING:
        raise ValueError(f"load_balancing: one of {', '.join(LOAD_BALANCING)}, got {load_balancing!r}")
    target = target or os.environ.get("SWAA_TARGET") or DEFAULT_TARGET
    token = token if token is not None else os.environ.get("SWAA_TOKEN") or None
    creds = None
    if tls or root_certificates is not None or client_certificate is not None:
        if (client_certificate is None) != (client_key is None):
            raise ValueError("client_certificate and client_key: give both for mutual TLS, or neither")
        creds = grpc.ssl_channel_credentials(root_certificates=_read(root_certificates),
                                             private_key=_read(client_key), certificate_chain=_read(client_certificate))
    options = [("grpc.max_receive_message_length", max_message_bytes), ("grpc.max_send_message_length", max_message_bytes),
               ("grpc.keepalive_time_ms", 60_000), ("grpc.keepalive_timeout_ms", 20_000)]
    if server_name:
        options.append(("grpc.ssl_target_name_override", server_name))
    options.append(("grpc.lb_policy_name", load_balancing))
    return Connection(target, token, creds, tuple(options))
