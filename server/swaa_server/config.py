"""The server's own settings (torch-free, so the CLI's parser can read their defaults without loading the engine)."""

from __future__ import annotations

from dataclasses import dataclass, field

import grpc


# `swaa serve`'s exit status when its engine died (LLMEngine.dead): non-zero, so that the orchestrator restarts it
EXIT_ENGINE_DEAD = 3


@dataclass(frozen=True)
class TLSConfig:
    cert_file: str
    key_file: str
    client_ca_file: str | None = None  # set → mutual TLS: clients must present a certificate signed by it

    def credentials(self) -> grpc.ServerCredentials:
        def read(p):
            with open(p, "rb") as f:
                return f.read()

        ca = read(self.client_ca_file) if self.client_ca_file else None
        return grpc.ssl_server_credentials([(read(self.key_file), read(self.cert_file))], root_certificates=ca,
                                           require_client_auth=ca is not None)


@dataclass(frozen=True)
class ServerConfig:
    host: str = "127.0.0.1"
    port: int = 50051
    grace_s: float = 25.0  # in-flight streams get this long after SIGTERM, once the drain delay is over
    # after SIGTERM: NOT_SERVING at once, but new calls are served this long, so probes and load balancers notice first
    drain_delay_s: float = 5.0
    max_message_bytes: int = 16 << 20
    keepalive_s: float = 60.0  # server pings idle connections this often, so dead peers are noticed
    # Connections are asked to close (GOAWAY; calls in flight finish) after this long, so that clients balancing
    # over a headless Service's DNS name resolve it again and find pods added since. None: never.
    max_connection_age_s: float | None = 300.0
    metrics_port: int | None = None  # None = no metrics endpoint; 0 = any free port
    metrics_host: str | None = None  # None: the gRPC host (loopback by default, like gRPC)
    auth_tokens: tuple[str, ...] = field(default=(), repr=False)  # empty = no auth
    tls: TLSConfig | None = None
    log_prompts: bool = False

    def __post_init__(self):
        if not 0 <= self.port < 65536:
            raise ValueError(f"port: {self.port} out of range")
        if self.metrics_port is not None and not 0 <= self.metrics_port < 65536:
            raise ValueError(f"metrics_port: {self.metrics_port} out of range")
        if self.grace_s < 0:
            raise ValueError(f"grace_s: must be >= 0, got {self.grace_s}")
        if self.drain_delay_s < 0:
            raise ValueError(f"drain_delay_s: must be >= 0, got {self.drain_delay_s}")
        if self.max_message_bytes < 1024:
            raise ValueError(f"max_message_bytes: must be >= 1024, got {self.max_message_bytes}")
        if self.keepalive_s <= 0:
            raise ValueError(f"keepalive_s: must be > 0, got {self.keepalive_s}")
        if self.max_connection_age_s is not None and self.max_connection_age_s <= 0:
            raise ValueError(f"max_connection_age_s: must be > 0, got {self.max_connection_age_s}")
        if any(not t or t != t.strip() for t in self.auth_tokens):
            raise ValueError("auth_tokens: tokens must be non-empty without surrounding whitespace")

    def grpc_options(self) -> list[tuple[str, int]]:
        ka = int(self.keepalive_s * 1000)
        return [("grpc.max_receive_message_length", self.max_message_bytes),
                ("grpc.max_send_message_length", self.max_message_bytes),
                ("grpc.keepalive_time_ms", ka), ("grpc.keepalive_timeout_ms", 20_000),
                ("grpc.keepalive_permit_without_calls", 1), ("grpc.http2.max_pings_without_data", 0),
                # clients may ping this often without being told "too many pings"
                ("grpc.http2.min_ping_interval_without_data_ms", 10_000)] + (
                    [("grpc.max_connection_age_ms", int(self.max_connection_age_s * 1000))]
                    if self.max_connection_age_s is not None else [])
