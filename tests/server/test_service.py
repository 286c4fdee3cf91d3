"""The service through the SDK against a real server (tiny random Qwen3, mixed ring + paged caches)."""

import asyncio
import os
import subprocess
import sys
import threading
import urllib.request
from multiprocessing.pool import ThreadPool

import grpc
import pytest

import swaa_client
from swaa_client import AlreadyExistsError, AsyncClient, Client, FinishReason, InvalidArgumentError, ResourceExhaustedError
from swaa_client._pb.swaa.v1 import generation_pb2 as pb
from swaa_engine.engine import LLM
from swaa_engine.sampling_params import SamplingParams

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


@pytest.fixture
def client(server):
    with Client(server.target, timeout=60) as c:
        yield c


def test_stream_equals_unary_equals_offline(server, client):
    chunks = list(client.stream([5, 6, 7, 8], max_tokens=20, ignore_eos=True))
    once = client.generate([5, 6, 7, 8], max_tokens=20, ignore_eos=True)
    streamed = [t for c in chunks for t in c.token_ids]
    last = chunks[-1]
    assert last.finished and last.finish_reason == FinishReason.LENGTH == once.finish_reason
    assert last.usage.completion_tokens == 20 and last.usage.prompt_tokens == 4
    assert last.timings.total_s >= last.timings.ttft_s > 0
    offline = LLM(server.config).generate([[5, 6, 7, 8]], SamplingParams(max_tokens=20, ignore_eos=True))[0]
    assert streamed == list(once.token_ids) == offline.token_ids


def test_logprobs_and_seeded_sampling(client):
    a = client.generate([1, 2, 3], max_tokens=8, temperature=0.9, seed=7, logprobs=3, ignore_eos=True)
    b = client.generate([1, 2, 3], max_tokens=8, temperature=0.9, seed=7, logprobs=3, ignore_eos=True)
    assert a.token_ids == b.token_ids and len(a.logprobs) == 8
    assert all(len(l.top) == 3 and l.logprob <= 0 for l in a.logprobs)


@pytest.mark.parametrize("kwargs, field", [
    (dict(prompt=[1, 2], max_tokens=-3), "sampling.max_tokens"),
    (dict(prompt=[1, 2], top_p=1.5), "sampling.top_p"),
    (dict(prompt=[1, 2], stop_token_ids=[10**6]), "sampling.stop_token_ids"),
    (dict(prompt=[1, 2], temperature=-1.0), "sampling.temperature"),
    (dict(prompt=[]), "prompt"),
    (dict(prompt=[1] * 600), "prompt"),
    (dict(prompt=[1, 10**6]), "token_ids.ids"),
    (dict(prompt="text needs a tokenizer"), "prompt"),
])
def test_bad_input_is_invalid_argument_with_field(client, kwargs, field):
    with pytest.raises(InvalidArgumentError) as e:
        client.generate(**kwargs)
    assert e.value.code == grpc.StatusCode.INVALID_ARGUMENT
    assert [v.field for v in e.value.field_violations] == [field]
    with pytest.raises(InvalidArgumentError):  # the stream reports the same before any chunk
        list(client.stream(**kwargs))
    assert client.model_info().architecture == "qwen3"  # still serving


def test_undecodable_and_huge_messages(server, client):
    channel = grpc.insecure_channel(server.target)
    raw = channel.unary_unary("/swaa.v1.Generation/GenerateOnce", request_serializer=lambda b: b,
                              response_deserializer=pb.GenerateResponse.FromString)
    with pytest.raises(grpc.RpcError) as e:
        raw(b"\x12\x02\xff\xfe")  # field 2 (text) with invalid UTF-8
    assert e.value.code() == grpc.StatusCode.INVALID_ARGUMENT and "request" in e.value.details()
    with pytest.raises(ResourceExhaustedError):  # over the server's 1 MiB message limit
        client.generate([1000] * 600_000, max_tokens=1)  # 1.2 MB packed
    channel.close()
    assert client.generate([4, 5], max_tokens=2).usage.completion_tokens == 2


def test_fifty_concurrent_streams(server):
    async def one(c, i):
        n = 0
        async for ch in c.stream([1 + i % 50, 2, 3], max_tokens=12 + i % 7, ignore_eos=True):
            n += len(ch.token_ids)
            last = ch
        return n == 12 + i % 7 and last.finish_reason == FinishReason.LENGTH

    async def main():
        async with AsyncClient(server.target, timeout=120) as c:
            return await asyncio.gather(*(one(c, i) for i in range(50)))

    assert all(asyncio.run(main()))
    assert server.wait_idle()


def test_cancel_mid_stream_frees_every_slot(server, client):
    for _ in range(5):
        for i, chunk in enumerate(client.stream([3, 4, 5], max_tokens=400, ignore_eos=True)):
            if i == 3:
                break  # closes the generator: the SDK cancels the call

    async def cancel_async():
        async with AsyncClient(server.target) as c:
            task = asyncio.ensure_future(c.generate([7, 7, 7], max_tokens=400, ignore_eos=True))
            await asyncio.sleep(0.2)
            task.cancel()
            with pytest.raises(asyncio.CancelledError):
                await task

    asyncio.run(cancel_async())
    assert server.wait_idle()
    info = client.model_info()
    assert info.paged.used == 0 and info.ring.used == 0 and info.ring.total > 0 and info.paged.total > 0
    assert [l.cache for l in info.layers] == ["ring", "paged", "ring", "ring"]
    assert info.window == 16 and info.sinks == 2


def test_abort_from_a_second_client(server, client):
    stream = client.stream([9, 9, 9], max_tokens=400, ignore_eos=True, request_id="abort-me")
    first = next(stream)
    assert first.request_id == "abort-me"
    with Client(server.target) as other:
        assert other.abort("abort-me")
        assert not other.abort("no-such-request")
    rest = list(stream)
    assert rest[-1].finish_reason == FinishReason.ABORT
    assert server.wait_idle()


def test_duplicate_running_request_id_is_refused(client):
    stream = client.stream([9, 8], max_tokens=400, ignore_eos=True, request_id="dup")
    next(stream)
    with pytest.raises(AlreadyExistsError) as e:  # a documented status, not UNKNOWN or INVALID_ARGUMENT (issue 19)
        client.generate([1], request_id="dup")
    assert e.value.code == grpc.StatusCode.ALREADY_EXISTS and "dup" in e.value.message
    with pytest.raises(AlreadyExistsError):
        list(client.stream([1], request_id="dup"))
    stream.close()


def test_health_info_count_and_metrics(server, client):
    assert client.health() == "SERVING" and client.health("swaa.v1.Generation") == "SERVING"
    client.generate([1, 2, 3], max_tokens=5, ignore_eos=True)
    body = urllib.request.urlopen(f"http://127.0.0.1:{server.metrics_port}/metrics", timeout=5).read().decode()
    for name in ("swaa_time_to_first_token_seconds_count", "swaa_time_per_output_token_seconds_count",
                 "swaa_e2e_request_latency_seconds_count", "swaa_request_queue_time_seconds_count",
                 "swaa_num_requests_running", "swaa_num_requests_waiting", "swaa_generation_tokens_total",
                 'swaa_cache_usage_ratio{pool="paged"}', 'swaa_cache_usage_ratio{pool="ring"}', 'finish_reason="length"'):
        assert name in body, name
    count = [l for l in body.splitlines() if l.startswith("swaa_time_to_first_token_seconds_count")][0]
    assert float(count.split()[-1]) >= 1

    def value(name):
        return float(next(l for l in body.splitlines() if l.startswith(name + " ")).split()[-1])

    # engine step time: 5 tokens need at least 5 steps, and steps take time
    assert value("swaa_engine_steps_total") >= 5 and value("swaa_engine_step_seconds_total") > 0


def test_sdk_retries_unavailable_before_the_first_token():
    """A server that is UNAVAILABLE twice, then answers: generate and stream succeed on attempt 3."""
    from swaa_client._pb.swaa.v1 import generation_pb2_grpc as pb_grpc

    class Flaky(pb_grpc.GenerationServicer):
        calls = 0

        async def GenerateOnce(self, request, context):
            Flaky.calls += 1
            if Flaky.calls % 3:
                await context.abort(grpc.StatusCode.UNAVAILABLE, "loading")
            return pb.GenerateResponse(request_id="r", token_ids=[1], finish_reason=pb.FINISH_REASON_LENGTH)

        async def Generate(self, request, context):
            Flaky.calls += 1
            if Flaky.calls % 3:
                await context.abort(grpc.StatusCode.UNAVAILABLE, "loading")
            yield pb.GenerateChunk(request_id="r", token_ids=[1], finished=True, finish_reason=pb.FINISH_REASON_LENGTH)

    loop = asyncio.new_event_loop()
    started = threading.Event()
    box = {}

    async def run():
        srv = grpc.aio.server()
        pb_grpc.add_GenerationServicer_to_server(Flaky(), srv)
        box["port"] = srv.add_insecure_port("127.0.0.1:0")
        await srv.start()
        box["stop"] = asyncio.Event()
        started.set()
        await box["stop"].wait()
        await srv.stop(0)

    t = threading.Thread(target=loop.run_until_complete, args=(run(),), daemon=True)
    t.start()
    started.wait(10)
    fast = swaa_client.RetryPolicy(max_attempts=3, initial_backoff_s=0.01, max_backoff_s=0.02)
    with Client(f"127.0.0.1:{box['port']}", retry=fast) as c:
        assert c.generate("x").token_ids == (1,) and Flaky.calls == 3
        assert [ch.token_ids for ch in c.stream("x")] == [(1,)] and Flaky.calls == 6
    with Client(f"127.0.0.1:{box['port']}", retry=swaa_client.NO_RETRY) as c:
        with pytest.raises(swaa_client.UnavailableError):
            c.generate("x")
    loop.call_soon_threadsafe(box["stop"].set)
    t.join(5)


def test_checked_in_stubs_match_the_proto():
    assert subprocess.run([sys.executable, os.path.join(ROOT, "proto", "generate.py"), "--check"]).returncode == 0


def test_unavailable_while_loading():
    """Before the engine is attached every rpc answers UNAVAILABLE (what the SDK retries on)."""
    from swaa_server.servicer import GenerationServicer

    class Ctx:
        async def abort(self, code, details):
            raise RuntimeError(code)

    async def call():
        with pytest.raises(RuntimeError) as e:
            await GenerationServicer().GetModelInfo(pb.GetModelInfoRequest(), Ctx())
        return e.value

    assert asyncio.run(call()).args[0] == grpc.StatusCode.UNAVAILABLE


def test_load_generator_reports_and_leaves_the_cache_empty(server):
    from swaa_server.loadgen import LoadConfig, run_load

    cfg = LoadConfig(target=server.target, concurrency=8, requests=40, prompt_tokens=(4, 200), max_tokens=(4, 30),
                     cancel_fraction=0.3, seed=1)
    report = asyncio.run(run_load(cfg, progress=False))
    assert report.statuses == {"OK": 40}
    assert report.completed + report.cancelled == 40 and report.cancelled > 0
    assert report.ttft_s["p50"] > 0 and report.itl_s["p99"] >= report.itl_s["p50"] > 0
    assert report.cache_after["paged"]["used"] == 0 and report.cache_after["ring"]["used"] == 0
    with pytest.raises(ValueError, match="loopback"):
        LoadConfig(target="8.8.8.8:50051")


def test_preemptions_are_reported_in_model_info_and_metrics(tiny_qwen3):
    """A cache of 32 blocks and four requests growing to 120 tokens each: decodes outgrow it, the newest are
    swapped to host memory and back; GetModelInfo and the metrics say so, and nothing stays held."""
    from swaa_engine.config import CacheConfig, EngineConfig, SchedulerConfig
    from swaa_engine.engine import LLMEngine
    from swaa_engine.swaa import SWAAConfig
    from swaa_server.app import ServerConfig
    from tests.server.conftest import running_server

    kv_block = 4 * 2 * 2 * 16 * 4 * 8  # layers, K+V, kv heads, head dim, fp32, block size
    engine = LLMEngine(EngineConfig(model=tiny_qwen3[0], swaa=SWAAConfig(), max_model_len=256,
                                    cache=CacheConfig(block_size=8, budget_bytes=32 * kv_block),
                                    scheduler=SchedulerConfig(max_num_seqs=4)))
    with running_server(engine, ServerConfig(port=0, grace_s=2, metrics_port=0)) as s, Client(s.target) as c:
        before = c.model_info().preemptions
        assert before.total == 0 and before.swap_total_bytes > 0
        with ThreadPool(4) as pool:
            outs = pool.map(lambda i: c.generate([i + 1] * 20, max_tokens=100, ignore_eos=True), range(4))
        assert [o.usage.completion_tokens for o in outs] == [100] * 4
        assert s.wait_idle()
        info = c.model_info().preemptions
        assert info.total > 0 and info.swapped == info.total and info.recomputed == info.recomputed_tokens == 0
        assert info.swapped_bytes >= info.swapped * kv_block and info.swap_used_bytes == 0
        body = urllib.request.urlopen(f"http://127.0.0.1:{s.metrics_port}/metrics", timeout=5).read().decode()
        assert f'swaa_preemptions_total{{kind="swap"}} {float(info.swapped)}' in body
        assert f"swaa_swapped_bytes_total {float(info.swapped_bytes)}" in body


def test_prefix_cache_hits_are_reported_in_usage_model_info_and_metrics(tiny_qwen3):
    """Two requests sharing a 40-token prefix: the second reuses it (Usage.cached_tokens), and GetModelInfo and the
    metrics count the lookup; with --no-prefix-cache nothing is reused."""
    from swaa_engine.config import CacheConfig, EngineConfig
    from swaa_engine.engine import LLMEngine
    from swaa_server.app import ServerConfig
    from swaa_server.cli import build_parser, engine_config_from_args
    from tests.server.conftest import running_server

    assert engine_config_from_args(build_parser().parse_args(["serve", "--no-prefix-cache"])).cache.prefix_caching is False
    system = [(7 * i) % 300 + 1 for i in range(40)]
    for enabled in (True, False):
        engine = LLMEngine(EngineConfig(model=tiny_qwen3[0], max_model_len=256,
                                        cache=CacheConfig(block_size=8, prefix_caching=enabled)))
        with running_server(engine, ServerConfig(port=0, grace_s=2, metrics_port=0)) as s, Client(s.target) as c:
            a = c.generate(system + [5, 6, 7], max_tokens=4, ignore_eos=True)
            b = c.generate(system + [8, 9], max_tokens=4, ignore_eos=True)
            info = c.model_info().prefix_cache
            body = urllib.request.urlopen(f"http://127.0.0.1:{s.metrics_port}/metrics", timeout=5).read().decode()
        assert a.usage.cached_tokens == 0 and b.usage.cached_tokens == (40 if enabled else 0)
        assert info.enabled is enabled
        if enabled:
            assert (info.queried_tokens, info.hit_tokens) == (43 + 42, 40) and 0.45 < info.hit_rate < 0.48
            assert "swaa_prefix_cache_hit_tokens_total 40.0" in body
