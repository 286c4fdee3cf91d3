"""A real server on 127.0.0.1 (tiny random Qwen3, mixed ring + paged caches), called through gRPC."""

import asyncio
import os
import subprocess
import sys
import threading

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_status import rpc_status

from swaa_client._pb.swaa.v1 import generation_pb2 as pb
from swaa_client._pb.swaa.v1 import generation_pb2_grpc as pb_grpc
from swaa_engine.config import CacheConfig, EngineConfig, SchedulerConfig
from swaa_engine.engine import LLM, LLMEngine
from swaa_engine.sampling_params import SamplingParams
from swaa_engine.swaa import SWAAConfig
from swaa_server.app import ServerConfig, serve

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


@pytest.fixture(scope="module")
def server(tiny_qwen3):
    config = EngineConfig(model=tiny_qwen3[0], swaa=SWAAConfig(window=16, sinks=2, fa_layers=[1]), max_model_len=512,
                          cache=CacheConfig(block_size=8, budget_bytes=4 << 20), scheduler=SchedulerConfig(max_waiting=64))
    engine = LLMEngine(config)
    loop = asyncio.new_event_loop()
    ready, stop = asyncio.Event(), asyncio.Event()
    t = threading.Thread(target=loop.run_until_complete,
                         args=(serve(config, ServerConfig(port=0, grace_s=2), ready, stop, engine=engine),), daemon=True)
    t.start()
    for _ in range(200):
        if ready.is_set():
            break
        threading.Event().wait(0.05)
    assert ready.is_set()
    channel = grpc.insecure_channel(f"127.0.0.1:{ready.port}")
    yield pb_grpc.GenerationStub(channel), channel, engine, config
    loop.call_soon_threadsafe(stop.set)
    t.join(10)


def req(ids, **sampling):
    return pb.GenerateRequest(token_ids=pb.TokenIds(ids=ids), sampling=pb.SamplingParameters(**sampling))


def test_stream_equals_unary_equals_offline(server, tiny_qwen3):
    stub, _, engine, config = server
    r = req([5, 6, 7, 8], max_tokens=20, ignore_eos=True)
    chunks = list(stub.Generate(r))
    once = stub.GenerateOnce(r)
    streamed = [t for c in chunks for t in c.token_ids]
    assert chunks[-1].finished and chunks[-1].finish_reason == pb.FINISH_REASON_LENGTH
    assert chunks[-1].usage.completion_tokens == 20 and chunks[-1].usage.prompt_tokens == 4
    offline = LLM(config, hf_config=None).generate([[5, 6, 7, 8]], SamplingParams(max_tokens=20, ignore_eos=True))[0]
    assert streamed == list(once.token_ids) == offline.token_ids


def test_bad_input_is_invalid_argument_with_field(server):
    stub = server[0]
    for r, field in [(req([1, 2], max_tokens=-3), "max_tokens"), (req([1, 2], top_p=1.5), "top_p"),
                     (req([1, 2], stop_token_ids=[10**6]), "stop_token_ids"), (pb.GenerateRequest(), "prompt"),
                     (req([1] * 600), "prompt")]:
        with pytest.raises(grpc.RpcError) as e:
            stub.GenerateOnce(r)
        assert e.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        status = rpc_status.from_call(e.value)
        from google.rpc import error_details_pb2

        br = error_details_pb2.BadRequest()
        status.details[0].Unpack(br)
        assert br.field_violations[0].field == field
    assert stub.GetModelInfo(pb.GetModelInfoRequest()).architecture == "qwen3"  # still serving


def test_cancel_and_abort_free_the_cache(server):
    stub, _, engine, _ = server
    call = stub.Generate(req([3, 4, 5], max_tokens=400, ignore_eos=True))
    next(call)
    call.cancel()
    rid = "abort-me"
    stream = stub.Generate(pb.GenerateRequest(request_id=rid, token_ids=pb.TokenIds(ids=[9, 9, 9]),
                                              sampling=pb.SamplingParameters(max_tokens=400, ignore_eos=True)))
    next(stream)
    assert stub.Abort(pb.AbortRequest(request_id=rid)).aborted
    last = list(stream)[-1]
    assert last.finish_reason == pb.FINISH_REASON_ABORT
    for _ in range(100):
        if engine.cache.is_idle():
            break
        threading.Event().wait(0.05)
    info = stub.GetModelInfo(pb.GetModelInfoRequest())
    assert info.paged.used == 0 and info.ring.used == 0 and info.ring.total > 0
    assert [l.cache for l in info.layers] == [pb.CACHE_KIND_RING, pb.CACHE_KIND_PAGED, pb.CACHE_KIND_RING, pb.CACHE_KIND_RING]


def test_health_serving(server):
    channel = server[1]
    resp = health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(service="swaa.v1.Generation"))
    assert resp.status == health_pb2.HealthCheckResponse.SERVING


def test_checked_in_stubs_match_the_proto():
    assert subprocess.run([sys.executable, os.path.join(ROOT, "proto", "generate.py"), "--check"]).returncode == 0


def test_unavailable_while_loading():
    """Before the engine is attached every rpc answers UNAVAILABLE (what the SDK retries on)."""
    from swaa_server.servicer import GenerationServicer

    class Ctx:
        async def abort(self, code, details):
            raise grpc.aio.AbortError(code, details) if hasattr(grpc.aio, "AbortError") else RuntimeError(code)

    async def call():
        with pytest.raises(Exception) as e:
            await GenerationServicer().GetModelInfo(pb.GetModelInfoRequest(), Ctx())
        return e.value

    err = asyncio.run(call())
    assert "UNAVAILABLE" in repr(err.args) or grpc.StatusCode.UNAVAILABLE in err.args
