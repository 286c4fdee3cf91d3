"""A dead engine through the server code: `swaa serve` (cli.main, in a thread, on 127.0.0.1) with a runner whose
every step raises. The first failed step's call ends INTERNAL, the next failure marks the engine dead: health
NOT_SERVING, calls UNAVAILABLE naming the reason, and `swaa serve` returns a non-zero status after the drain."""

import socket
import threading
import time

import pytest

from swaa_client import NO_RETRY, Client, UnavailableError
from swaa_client.errors import InternalError
from swaa_engine.engine import LLMEngine
from swaa_server import app, cli

DRAIN_DELAY = 1.0


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_swaa_serve_exits_non_zero_after_its_engine_died(tiny_qwen3, monkeypatch):
    def failing_engine(config):
        engine = LLMEngine(config)

        def always(chunks, rows):
            raise RuntimeError("CUDA error: an illegal memory access was encountered (injected)")

        engine.runner.execute = always
        return engine

    monkeypatch.setattr(app, "LLMEngine", failing_engine)
    port = _free_port()
    status: list[int] = []
    argv = ["serve", "--model", tiny_qwen3[0], "--host", "127.0.0.1", "--port", str(port), "--metrics-port", "-1",
            "--grace", "2", "--drain-delay", str(DRAIN_DELAY), "--max-model-len", "256", "--cache-bytes", str(4 << 20),
            "--log-level", "warning"]
    t = threading.Thread(target=lambda: status.append(cli.main(argv)), daemon=True)
    t.start()
    target = f"127.0.0.1:{port}"
    with Client(target, retry=NO_RETRY, timeout=30) as c:
        end = time.monotonic() + 60
        while time.monotonic() < end and t.is_alive():
            try:
                if c.health() == "SERVING":
                    break
            except UnavailableError:
                pass
            time.sleep(0.1)
        assert c.health() == "SERVING"
        with pytest.raises(InternalError, match="illegal memory access"):  # one failed step: its request only
            c.generate([1, 2, 3], max_tokens=4)
        assert c.health() == "SERVING"
        with pytest.raises(UnavailableError, match="engine is dead"):  # the failure persisted: dead
            c.generate([4, 5, 6], max_tokens=4)
        # during the drain delay: NOT_SERVING, still answering, and every call refused as UNAVAILABLE with the reason
        assert c.health() == "NOT_SERVING"
        with pytest.raises(UnavailableError, match="engine is dead: 2 steps in a row raised.*illegal memory access"):
            c.generate([7, 8, 9], max_tokens=4)
    t.join(DRAIN_DELAY + 30)
    assert not t.is_alive() and status == [app.EXIT_ENGINE_DEAD] and app.EXIT_ENGINE_DEAD != 0
