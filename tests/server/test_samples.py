"""n samples per request through a real server: one prompt computation shared by the samples (prefix caching), each
sample reproducible by its seed, chunks tagged with their sample, usage counting the prompt once, abort ending all."""

from __future__ import annotations

import threading
import time

import pytest

from swaa_client import Client, FinishReason, InvalidArgumentError
from swaa_engine.config import CacheConfig
from swaa_engine.engine import LLMEngine
from swaa_server.app import ServerConfig
from tests.server.conftest import running_server, tiny_engine_config

PROMPT = list(range(5, 205))  # 200 tokens: 25 full blocks of 8


def _serve(folder, prefix_caching: bool):
    cfg = tiny_engine_config(folder)
    cfg = type(cfg)(**{**cfg.__dict__, "cache": CacheConfig(block_size=8, budget_bytes=4 << 20, prefix_caching=prefix_caching)})
    return running_server(LLMEngine(cfg), ServerConfig(port=0, grace_s=2, metrics_port=0))


@pytest.fixture(scope="module")
def srv(tiny_qwen3):
    with _serve(tiny_qwen3[0], True) as s:
        yield s


def test_samples_share_one_prompt_computation(srv):
    stats = srv.engine.scheduler.stats
    with Client(srv.target, timeout=120) as c:
        before = stats.computed_tokens
        out = c.generate(PROMPT, n=4, max_tokens=8, temperature=1.0, seed=11)
        computed = stats.computed_tokens - before
    assert [s.index for s in out.samples] == [0, 1, 2, 3]
    assert all(len(s.token_ids) == 8 and s.finish_reason == FinishReason.LENGTH for s in out.samples)
    assert len({s.token_ids for s in out.samples}) > 1  # independent samples
    # the prompt once (200) + the last block each other sample recomputes (3 x 8: the last token's logits need it)
    # + the decode steps (4 samples x 7)
    assert computed == 200 + 3 * 8 + 4 * 7, computed
    assert out.usage.prompt_tokens == 200 and out.usage.completion_tokens == 32
    assert (out.token_ids, out.text) == (out.samples[0].token_ids, out.samples[0].text)
    assert srv.wait_idle()


def test_seeded_samples_are_reproducible_per_sample(srv):
    with Client(srv.target, timeout=120) as c:
        a = c.generate(PROMPT[:37], n=3, max_tokens=6, temperature=1.0, seed=5)
        b = c.generate(PROMPT[:37], n=3, max_tokens=6, temperature=1.0, seed=5)
        one = c.generate(PROMPT[:37], max_tokens=6, temperature=1.0, seed=5)
    assert [s.token_ids for s in a.samples] == [s.token_ids for s in b.samples]
    assert a.samples[0].token_ids == one.token_ids  # sample 0 keeps the request's seed
    assert len({s.token_ids for s in a.samples}) == 3


def test_stream_tags_chunks_with_their_sample(srv):
    with Client(srv.target, timeout=120) as c:
        unary = c.generate(PROMPT[:50], n=3, max_tokens=5, temperature=1.0, seed=2)
        chunks = list(c.stream(PROMPT[:50], n=3, max_tokens=5, temperature=1.0, seed=2))
    assert {ch.request_id for ch in chunks} == {chunks[0].request_id}
    finals = [ch for ch in chunks if ch.finished]
    assert sorted(ch.index for ch in finals) == [0, 1, 2] and chunks[-1].finished
    for s in unary.samples:
        assert tuple(t for ch in chunks if ch.index == s.index for t in ch.token_ids) == s.token_ids
    assert all(ch.usage.prompt_tokens == 50 for ch in finals)


def test_abort_ends_every_sample(srv):
    seen: list = []
    with Client(srv.target, timeout=120) as c:
        def run():
            seen.extend(c.stream(PROMPT[:20], n=4, max_tokens=400, ignore_eos=True, request_id="many", temperature=1.0))
        t = threading.Thread(target=run)
        t.start()
        end = time.monotonic() + 30
        while not any(ch.token_ids for ch in seen) and time.monotonic() < end:
            time.sleep(0.01)
        assert c.abort("many")
        t.join(30)
    finals = [ch for ch in seen if ch.finished]
    assert sorted(ch.index for ch in finals) == [0, 1, 2, 3]
    assert all(ch.finish_reason == FinishReason.ABORT for ch in finals)
    assert srv.wait_idle()


@pytest.mark.parametrize("n", [0, 17])
def test_n_out_of_range_is_refused(srv, n):
    with Client(srv.target, timeout=30) as c:
        with pytest.raises(InvalidArgumentError) as e:
            c.generate(PROMPT[:5], n=n, max_tokens=2)
    assert e.value.field_violations[0].field == "n"


def test_server_refuses_n_over_16(srv):
    from swaa_client._pb.swaa.v1 import generation_pb2 as pb
    from swaa_client._pb.swaa.v1 import generation_pb2_grpc as pb_grpc
    import grpc

    with grpc.insecure_channel(srv.target) as ch:
        req = pb.GenerateRequest(token_ids=pb.TokenIds(ids=PROMPT[:5]), n=17, sampling=pb.SamplingParameters(max_tokens=2))
        with pytest.raises(grpc.RpcError) as e:
            pb_grpc.GenerationStub(ch).GenerateOnce(req, timeout=30)
    assert e.value.code() == grpc.StatusCode.INVALID_ARGUMENT and "n:" in e.value.details()


def test_without_prefix_caching_each_sample_computes_the_prompt(tiny_qwen3):
    with _serve(tiny_qwen3[0], False) as s, Client(s.target, timeout=120) as c:
        before = s.engine.scheduler.stats.computed_tokens
        out = c.generate(PROMPT, n=3, max_tokens=4, temperature=1.0, seed=1)
        assert s.engine.scheduler.stats.computed_tokens - before == 3 * 200 + 3 * 3
        assert len(out.samples) == 3 and out.usage.completion_tokens == 12
