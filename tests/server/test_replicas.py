"""`swaa serve --replicas 2` on CPU: two Ray actors with the embedded model behind one gRPC front end.

Requests spread over both replicas; streaming, cancel and Abort work through the router; killing the replica
that owns a stream ends that stream with UNAVAILABLE while the other replica keeps serving, and Ray brings the
killed one back.
"""

from __future__ import annotations

import asyncio
import threading
import time
import urllib.request
from concurrent.futures import ThreadPoolExecutor

import pytest

ray = pytest.importorskip("ray")

from swaa_client import (NO_RETRY, AlreadyExistsError, AsyncClient, Client, DeadlineExceededError,  # noqa: E402
                         FinishReason, InvalidArgumentError, UnavailableError)
from swaa_engine.config import CacheConfig, EngineConfig, SchedulerConfig  # noqa: E402
from swaa_engine.swaa import SWAAConfig  # noqa: E402
from swaa_server.app import ServerConfig, serve  # noqa: E402
from swaa_server.replicas import ReplicaConfig  # noqa: E402

PROMPT = [{"role": "user", "content": "Write a long story about a lighthouse keeper."}]


def wait_for(cond, timeout: float, what: str):
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if cond():
            return
        time.sleep(0.2)
    raise AssertionError(f"timed out waiting for {what}")


@pytest.fixture(scope="module")
def service(request):
    # Ray's node startup times out under pytest's output capture; start it with capture off (the router then joins it)
    with request.config.pluginmanager.getplugin("capturemanager").global_and_fixture_disabled():
        ray.init(num_cpus=2, object_store_memory=80 << 20, include_dashboard=False, namespace="swaa", log_to_driver=False)
    cfg = EngineConfig(swaa=SWAAConfig(window=64, sinks=4, fa_decode=True), max_model_len=1024, dtype="float32",
                       cache=CacheConfig(budget_bytes=64 << 20), scheduler=SchedulerConfig(max_num_seqs=8))
    rc = ReplicaConfig(replicas=2, cpus_per_replica=1, ray_num_cpus=2, object_store_bytes=80 << 20, poll_s=0.25)
    loop = asyncio.new_event_loop()
    ready, stop = asyncio.Event(), asyncio.Event()
    t = threading.Thread(target=loop.run_until_complete,
                         args=(serve(cfg, ServerConfig(port=0, grace_s=2, metrics_port=0), ready, stop, replicas=rc),), daemon=True)
    t.start()
    wait_for(ready.is_set, 240, "the service")
    router = ready.engine
    wait_for(lambda: all(router.ready), 240, "both replicas")
    try:
        yield f"127.0.0.1:{ready.port}", ready.metrics_port, router
    finally:
        loop.call_soon_threadsafe(stop.set)
        t.join(30)
        ray.shutdown()


def idle(router) -> bool:
    return all(v.ready and v.load and v.load.running == v.load.waiting == 0 and v.load.usage["paged"]["used"] == 0
               for v in router.views())


def test_requests_spread_over_both_replicas(service):
    target, metrics_port, router = service
    with Client(target, timeout=120) as c:
        info = c.model_info()
        assert info.replicas_ready == 2 and [r.index for r in info.replicas] == [0, 1]
        assert all(r.ready and r.paged.total > 0 for r in info.replicas)
        with ThreadPoolExecutor(6) as ex:
            outs = list(ex.map(lambda i: c.generate(PROMPT, max_tokens=24, ignore_eos=True), range(6)))
    assert all(len(o.token_ids) == 24 for o in outs)
    assert len({tuple(o.token_ids) for o in outs}) == 1  # same greedy answer whichever replica served it
    text = urllib.request.urlopen(f"http://127.0.0.1:{metrics_port}/metrics").read().decode()
    served = {r: sum(float(line.rsplit(" ", 1)[1]) for line in text.splitlines()
                     if line.startswith("swaa_requests_total{") and f'replica="{r}"' in line) for r in "01"}
    assert served["0"] >= 1 and served["1"] >= 1, served
    assert "swaa_replicas_ready 2.0" in text and 'swaa_cache_capacity{pool="paged",replica="0"}' in text
    assert 'swaa_engine_step_seconds_total{replica="1"}' in text  # per-replica step time, for diagnosis


def test_stream_cancel_and_abort_through_the_router(service):
    target, _, router = service
    with Client(target, timeout=120) as c, Client(target, timeout=30) as other:
        chunks = list(c.stream(PROMPT, max_tokens=12, ignore_eos=True))
        assert chunks[-1].finished and sum(len(ch.token_ids) for ch in chunks) == 12
        assert "".join(ch.text for ch in chunks) == c.generate(PROMPT, max_tokens=12, ignore_eos=True).text
        # cancel: leave the stream early; the owning replica frees the request's cache
        for i, _ in enumerate(c.stream(PROMPT, max_tokens=500, ignore_eos=True, request_id="cancel-me")):
            if i == 3:
                break
        wait_for(lambda: idle(router), 30, "cache back to zero after cancel")
        # Abort from a second client ends the stream with finish reason abort
        got = []
        for ch in c.stream(PROMPT, max_tokens=500, ignore_eos=True, request_id="abort-me"):
            got.append(ch)
            if len(got) == 2:
                assert other.abort("abort-me") is True
        assert got[-1].finish_reason is FinishReason.ABORT
        assert other.abort("no-such-request") is False
    wait_for(lambda: idle(router), 30, "cache back to zero after abort")


def test_ids_bounds_and_deadlines_through_the_router(service):
    """Issue 19 through the router: a running request's id gets ALREADY_EXISTS (not UNKNOWN), bad ids and prompts
    that cannot fit get INVALID_ARGUMENT before reaching a replica, and callers whose deadlines pass (while their
    request is submitted, tokenized, queued or decoding) leave no request behind on either replica."""
    target, _, router = service
    with Client(target, timeout=120) as c:
        stream = c.stream(PROMPT, max_tokens=500, ignore_eos=True, request_id="taken")
        next(stream)
        with pytest.raises(AlreadyExistsError):
            c.generate(PROMPT, max_tokens=2, request_id="taken")
        stream.close()
        for kw, field in ((dict(request_id="x" * 257), "request_id"), (dict(request_id="a\tb"), "request_id")):
            with pytest.raises(InvalidArgumentError) as e:
                c.generate(PROMPT, max_tokens=2, **kw)
            assert [v.field for v in e.value.field_violations] == [field]
        t0 = time.monotonic()
        with pytest.raises(InvalidArgumentError):
            c.generate("All work and no play. " * 200_000, max_tokens=2)  # 4.4 MB: over any prompt's bytes
        with pytest.raises(InvalidArgumentError):
            c.generate([{"role": "user", "content": ""}] * 20_000, max_tokens=2)  # more messages than tokens
        assert time.monotonic() - t0 < 2.0

    async def main():
        async with AsyncClient(target) as ac:
            async def one(i):
                try:
                    kw = dict(max_tokens=400, ignore_eos=True, timeout=0.005 + 0.01 * (i % 16))
                    if i % 2:
                        await ac.generate(PROMPT, **kw)
                    else:
                        async for _ in ac.stream(PROMPT, **kw):
                            pass
                except DeadlineExceededError:
                    return True
                return False

            return await asyncio.gather(*(one(i) for i in range(48)))

    assert all(asyncio.run(main()))
    time.sleep(0.3)  # past every deadline; idle() reads the replicas' polled loads
    wait_for(lambda: idle(router), 2.0, "no request left behind by callers whose deadlines passed")


def test_killed_replica_fails_its_streams_and_comes_back(service):
    target, _, router = service
    results: dict[str, object] = {}

    def run(rid):
        with Client(target, timeout=180, retry=NO_RETRY) as c:
            n = 0
            try:
                for ch in c.stream(PROMPT, max_tokens=300, ignore_eos=True, request_id=rid):
                    n += len(ch.token_ids)
                results[rid] = n
            except UnavailableError as e:
                results[rid] = (e, n)

    threads = [threading.Thread(target=run, args=(rid,)) for rid in ("s-a", "s-b")]
    for t in threads:
        t.start()
    wait_for(lambda: router.owner("s-a") is not None and router.owner("s-b") is not None, 60, "both streams routed")
    victim, survivor = router.owner("s-a"), router.owner("s-b")
    assert victim != survivor  # least outstanding work: two concurrent requests land on different replicas
    restarts = router.restarts[victim]
    time.sleep(1.0)  # mid-stream
    ray.kill(router.handles[victim], no_restart=False)
    # meanwhile new requests are served by the live replica and the service stays SERVING
    with Client(target, timeout=120) as c:
        assert c.health() == "SERVING"
        assert len(c.generate(PROMPT, max_tokens=8, ignore_eos=True).token_ids) == 8
    for t in threads:
        t.join(180)
    assert isinstance(results["s-a"], tuple) and isinstance(results["s-a"][0], UnavailableError), results
    assert 0 < results["s-a"][1] < 300
    assert results["s-b"] == 300
    wait_for(lambda: router.ready[victim] and router.restarts[victim] == restarts + 1, 240, "the replica to return")
    with Client(target, timeout=120) as c:
        info = c.model_info()
        assert info.replicas_ready == 2 and info.replicas[victim].restarts == restarts + 1
        assert c.health() == "SERVING"
    wait_for(lambda: idle(router), 30, "both replicas idle")


def test_replica_loss_under_load(service):
    """`swaa load` against the service while one replica is killed: only OK and UNAVAILABLE come back, at most as
    many UNAVAILABLE as the victim had streams, every request is answered, the service stays SERVING and the
    replica returns."""
    from swaa_server.loadgen import LoadConfig, run_load

    target, _, router = service
    cfg = LoadConfig(target=target, concurrency=6, requests=30, duration_s=120, prompt_tokens=(16, 128),
                     max_tokens=(32, 96), cancel_fraction=0.1, seed=7)
    box = {}
    t = threading.Thread(target=lambda: box.setdefault("report", asyncio.run(run_load(cfg, progress=False))))
    t.start()
    wait_for(lambda: all(v.load and v.load.running > 0 for v in router.views()), 60, "load on both replicas")
    victim = 0
    restarts = router.restarts[victim]
    in_flight = router.requests_on(victim)
    ray.kill(router.handles[victim], no_restart=False)
    with Client(target, timeout=30) as c:
        assert c.health() == "SERVING"
    t.join(240)
    report = box["report"]
    assert set(report.statuses) <= {"OK", "UNAVAILABLE"}, report.statuses
    # streams that had tokens end UNAVAILABLE; those still before their first token are retried by the SDK elsewhere
    assert in_flight >= 1 and report.statuses.get("UNAVAILABLE", 0) <= in_flight, (report.statuses, in_flight)
    assert sum(report.statuses.values()) == 30
    wait_for(lambda: router.ready[victim] and router.restarts[victim] == restarts + 1, 240, "the replica to return")
    wait_for(lambda: idle(router), 30, "both replicas idle")


def test_bad_replica_config_is_refused_before_ray_starts(tmp_path):
    """A model every replica would fail to load is refused up front with a clear error; Ray would otherwise
    restart the failing actors forever."""
    from swaa_engine.models.loader import ModelNotFoundError
    from swaa_server.cli import main
    from swaa_server.replicas import ReplicaRouter

    with pytest.raises(ModelNotFoundError, match="nope"):
        asyncio.run(ReplicaRouter.start(EngineConfig(model=str(tmp_path / "nope")), ReplicaConfig(replicas=2)))
    with pytest.raises(ValueError, match="replicas"):
        ReplicaConfig(replicas=0)
    assert main(["serve", "--replicas", "2", "--model", str(tmp_path / "nope"), "--port", "0", "--metrics-port", "-1"]) == 2
