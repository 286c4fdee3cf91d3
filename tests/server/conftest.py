"""Real servers on 127.0.0.1 (port 0), each in a thread with its own event loop."""

from __future__ import annotations

import asyncio
import contextlib
import threading
import time

import pytest

from swaa_engine.config import CacheConfig, EngineConfig, SchedulerConfig
from swaa_engine.engine import LLMEngine
from swaa_engine.swaa import SWAAConfig
from swaa_server.app import ServerConfig, serve


class Running:
    def __init__(self, target, port, metrics_port, front, engine, config):
        self.target, self.port, self.metrics_port = target, port, metrics_port
        self.front, self.engine, self.config = front, engine, config

    def wait_idle(self, timeout: float = 10.0) -> bool:
        end = time.monotonic() + timeout
        while time.monotonic() < end:
            if self.engine.cache.is_idle() and not self.engine.has_work():
                return True
            time.sleep(0.02)
        return False


@contextlib.contextmanager
def running_server(engine: LLMEngine, server_config: ServerConfig):
    loop = asyncio.new_event_loop()
    ready, stop = asyncio.Event(), asyncio.Event()
    t = threading.Thread(target=loop.run_until_complete, args=(serve(engine.config, server_config, ready, stop, engine=engine),),
                         daemon=True)
    t.start()
    end = time.monotonic() + 30
    while not ready.is_set() and time.monotonic() < end:
        time.sleep(0.02)
    assert ready.is_set(), "server did not come up"
    try:
        running = Running(f"127.0.0.1:{ready.port}", ready.port, ready.metrics_port, ready.engine, engine, engine.config)
        running.metrics_host = ready.metrics_host
        yield running
    finally:
        loop.call_soon_threadsafe(stop.set)
        t.join(15)


def tiny_engine_config(folder: str, **kw) -> EngineConfig:
    """Mixed ring + paged caches: layer 1 full, the rest sliding (window 16, 2 sinks)."""
    return EngineConfig(model=folder, swaa=SWAAConfig(window=16, sinks=2, fa_layers=[1]), max_model_len=512,
                        cache=CacheConfig(block_size=8, budget_bytes=4 << 20), scheduler=SchedulerConfig(max_waiting=64), **kw)


@pytest.fixture(scope="module")
def server(tiny_qwen3):
    """The tiny random Qwen3 (token-id prompts only: it has no tokenizer), metrics on a free port."""
    engine = LLMEngine(tiny_engine_config(tiny_qwen3[0]))
    with running_server(engine, ServerConfig(port=0, grace_s=2, metrics_port=0, max_message_bytes=1 << 20)) as s:
        yield s


@pytest.fixture(scope="session")
def tiny_chat_folder(tmp_path_factory, smollm2):
    """A tiny random Qwen3 with SmolLM2's tokenizer and chat template: text prompts at test speed."""
    from tests.models import save_tiny_qwen3

    folder = tmp_path_factory.mktemp("tiny-chat")
    tok = smollm2[1]
    save_tiny_qwen3(folder, vocab_size=len(tok), eos_token_id=tok.eos_token_id)
    tok.save_pretrained(folder)
    return str(folder)
