"""Hostile input and cancellation at volume against a real server (tiny random Qwen3 with SmolLM2's tokenizer).

- ≥ 1,000 generated requests with random and extreme field values, unicode, empty and long inputs and
  random token ids: every answer is OK or a documented status, the server stays up, the cache empties;
- 1,000 streams cancelled at random points: every ring and paged block comes back;
- a burst of 10 × the waiting-queue capacity: each call served or refused (RESOURCE_EXHAUSTED) at once.
"""

import asyncio
import random

import grpc
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from swaa_client import AsyncClient
from swaa_client._pb.swaa.v1 import generation_pb2 as pb
from swaa_client._pb.swaa.v1 import generation_pb2_grpc as pb_grpc
from swaa_engine.config import CacheConfig, EngineConfig, SchedulerConfig
from swaa_engine.engine import LLMEngine
from swaa_engine.swaa import SWAAConfig
from swaa_server.app import ServerConfig
from tests.server.conftest import running_server

DOCUMENTED = {grpc.StatusCode.OK, grpc.StatusCode.INVALID_ARGUMENT, grpc.StatusCode.RESOURCE_EXHAUSTED, grpc.StatusCode.ALREADY_EXISTS}


@pytest.fixture(scope="module")
def chat_server(tiny_chat_folder):
    config = EngineConfig(model=tiny_chat_folder, swaa=SWAAConfig(window=16, sinks=2, fa_layers=[1]), max_model_len=512,
                          cache=CacheConfig(block_size=8, budget_bytes=8 << 20),
                          scheduler=SchedulerConfig(max_num_seqs=32, max_waiting=256))
    with running_server(LLMEngine(config), ServerConfig(port=0, max_message_bytes=1 << 20)) as s:
        yield s


floats = st.one_of(st.floats(allow_nan=True, allow_infinity=True, width=32), st.sampled_from([0.0, 1.0, -0.0, 1e-30, 100.0]))
text = st.text(alphabet=st.characters(blacklist_categories=("Cs",)), max_size=300)
# half the requests draw plausible sampling parameters (so generation paths run), half anything at all
plausible = st.builds(
    pb.SamplingParameters, temperature=st.floats(0, 2), top_k=st.integers(0, 50), min_p=st.floats(0, 0.2),
    logprobs=st.integers(0, 5), ignore_eos=st.booleans(), return_logprobs=st.booleans(),
    stop=st.lists(st.text(min_size=1, max_size=8), max_size=3), max_tokens=st.integers(1, 24))
wild = st.builds(
    pb.SamplingParameters,
    temperature=floats, top_k=st.integers(0, 2**32 - 1), min_p=floats, logprobs=st.integers(0, 2**32 - 1),
    ignore_eos=st.booleans(), return_logprobs=st.booleans(),
    stop=st.lists(text, max_size=20), stop_token_ids=st.lists(st.integers(0, 2**32 - 1), max_size=5),
)
sampling = st.one_of(plausible, wild)
optional = dict(top_p=floats, repetition_penalty=floats, seed=st.integers(0, 2**64 - 1), max_tokens=st.integers(-2**31, 40))
prompt = st.one_of(
    st.builds(lambda t: pb.GenerateRequest(text=t), text),
    st.builds(lambda ids: pb.GenerateRequest(token_ids=pb.TokenIds(ids=ids)), st.lists(st.integers(0, 2**32 - 1), max_size=700)),
    st.builds(lambda ids: pb.GenerateRequest(token_ids=pb.TokenIds(ids=ids)), st.lists(st.integers(0, 49151), min_size=1, max_size=60)),
    st.builds(lambda ms: pb.GenerateRequest(chat=pb.ChatMessages(messages=[pb.ChatMessage(role=r, content=c) for r, c in ms])),
              st.lists(st.tuples(st.sampled_from(["user", "system", "assistant", "", "tool\u0000"]), text), max_size=4)),
    st.just(pb.GenerateRequest()),
)


@st.composite
def requests(draw):
    req = draw(prompt)
    req.sampling.CopyFrom(draw(sampling))
    for name, strat in optional.items():
        if draw(st.integers(0, 3)) == 0:
            setattr(req.sampling, name, draw(strat))
    if draw(st.booleans()):
        req.request_id = draw(st.text(max_size=40))
    return req


def test_fuzzed_requests_get_documented_statuses(chat_server):
    channel = grpc.insecure_channel(chat_server.target)
    stub = pb_grpc.GenerationStub(channel)
    seen = {}

    @settings(max_examples=1000, deadline=None, suppress_health_check=list(HealthCheck), derandomize=True)
    @given(requests(), st.booleans())
    def check(req, stream):
        try:
            if stream:
                chunks = list(stub.Generate(req, timeout=30))
                assert chunks and chunks[-1].finished
            else:
                stub.GenerateOnce(req, timeout=30)
            code = grpc.StatusCode.OK
        except grpc.RpcError as e:
            code = e.code()
        assert code in DOCUMENTED, (code, req)
        seen[code] = seen.get(code, 0) + 1

    check()
    assert sum(seen.values()) >= 1000
    assert seen.get(grpc.StatusCode.OK, 0) > 50 and seen.get(grpc.StatusCode.INVALID_ARGUMENT, 0) > 50, seen
    assert stub.GetModelInfo(pb.GetModelInfoRequest(), timeout=10).architecture == "qwen3"  # still alive
    assert chat_server.wait_idle(), chat_server.engine.cache_usage()
    channel.close()


def test_cancellation_storm_returns_every_slot(chat_server):
    rng = random.Random(0)

    async def one(client, i):
        n = rng.randrange(0, 30)
        got = 0
        async for _ in client.stream([1 + i % 300, 2, 3] * (1 + i % 40), max_tokens=200, ignore_eos=True):
            got += 1
            if got > n:
                break  # the SDK cancels the call: the server aborts the request

    async def main():
        async with AsyncClient(chat_server.target, timeout=120) as client:
            sem = asyncio.Semaphore(64)

            async def bounded(i):
                async with sem:
                    await one(client, i)

            await asyncio.gather(*(bounded(i) for i in range(1000)))

    asyncio.run(main())
    assert chat_server.wait_idle(timeout=30), chat_server.engine.cache_usage()
    usage = chat_server.engine.cache_usage()
    assert usage["paged"]["used"] == 0 and usage["ring"]["used"] == 0


def test_overload_burst_is_served_or_refused_quickly(tiny_qwen3):
    """10 × the waiting-queue capacity at once: every call ends OK or RESOURCE_EXHAUSTED, refusals come fast,
    and the cache stays within its budget and empties."""
    import time

    from swaa_client import ResourceExhaustedError

    config = EngineConfig(model=tiny_qwen3[0], swaa=SWAAConfig(window=16, sinks=2, fa_layers=[1]), max_model_len=512,
                          cache=CacheConfig(block_size=8, budget_bytes=2 << 20),
                          scheduler=SchedulerConfig(max_num_seqs=4, max_waiting=8))
    engine = LLMEngine(config)
    total = engine.cache_usage()

    async def main(target):
        async with AsyncClient(target, timeout=120) as client:
            async def one(i):
                t0 = time.perf_counter()
                try:
                    await client.generate([1 + i, 2, 3], max_tokens=40, ignore_eos=True)
                    return "ok", time.perf_counter() - t0
                except ResourceExhaustedError:
                    return "refused", time.perf_counter() - t0

            return await asyncio.gather(*(one(i) for i in range(80)))

    with running_server(engine, ServerConfig(port=0)) as s:
        results = asyncio.run(main(s.target))
        assert s.wait_idle()
    kinds = [k for k, _ in results]
    assert kinds.count("ok") >= 8 and kinds.count("refused") >= 1 and len(kinds) == 80
    assert max(t for k, t in results if k == "refused") < 2.0  # refused at the door, not after waiting
    assert {p: (u["used"], u["total"]) for p, u in engine.cache_usage().items()} == {p: (0, u["total"]) for p, u in total.items()}
