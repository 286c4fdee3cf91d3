"""The front end's engine snapshot is read without the engine's lock: a scrape or an info call never waits for a
step (the lock is held here, by another thread, for the whole read)."""

import threading
from concurrent.futures import ThreadPoolExecutor

from swaa_engine.config import CacheConfig, SchedulerConfig
from swaa_engine.engine import LLM
from swaa_engine.sampling_params import SamplingParams
from swaa_engine.swaa import SWAAConfig
from swaa_server.frontend import snapshot


def test_snapshot_needs_no_engine_lock(tiny_qwen3):
    eng = LLM(tiny_qwen3[0], swaa=SWAAConfig(window=16, sinks=2, fa_layers=[1]), max_model_len=256,
              cache=CacheConfig(block_size=8, budget_bytes=4 << 20), scheduler=SchedulerConfig(max_waiting=8)).engine
    eng.add_request(list(range(1, 40)), SamplingParams(max_tokens=4))
    eng.step()
    held, release = threading.Event(), threading.Event()

    def hold():
        with eng._lock:
            held.set()
            release.wait(30)

    with ThreadPoolExecutor(2) as pool:
        holder = pool.submit(hold)
        assert held.wait(10)
        try:
            snap = pool.submit(snapshot, eng).result(timeout=10)  # would time out if it took the lock
        finally:
            release.set()
        holder.result(timeout=10)
    assert (snap.running, snap.waiting, snap.steps) == (1, 0, 1)
    assert snap.usage == eng.cache_usage() and snap.usage["paged"]["used"] > 0 and snap.usage["ring"]["used"] == 1
