"""Issue 21 items 3-5 through a real server (127.0.0.1): sampling controls, prompt logprobs, priority, deadlines,
Detokenize and the chat template / special tokens in GetModelInfo."""

import asyncio
import threading
import time

import grpc
import pytest

from swaa_client import AsyncClient, Client, DeadlineExceededError, FinishReason, InvalidArgumentError
from swaa_client._pb.swaa.v1 import generation_pb2 as pb
from swaa_client._pb.swaa.v1 import generation_pb2_grpc as pb_grpc
from swaa_client.errors import from_rpc_error
from swaa_engine.engine import LLMEngine
from swaa_server.app import ServerConfig
from tests.server.conftest import running_server, tiny_engine_config

PROMPT = list(range(5, 45))


@pytest.fixture(scope="module")
def chat(tiny_chat_folder):
    """The tiny random Qwen3 with SmolLM2's tokenizer; one running sequence at a time (queues form at once)."""
    from dataclasses import replace

    cfg = tiny_engine_config(tiny_chat_folder)
    engine = LLMEngine(replace(cfg, scheduler=replace(cfg.scheduler, max_num_seqs=1)))
    with running_server(engine, ServerConfig(port=0, grace_s=2, metrics_port=0)) as s:
        yield s


@pytest.fixture(scope="module")
def tok(tiny_chat_folder):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(tiny_chat_folder)


@pytest.fixture
def client(chat):
    with Client(chat.target, timeout=120) as c:
        yield c


def _raw(target, request) -> InvalidArgumentError:
    """Send a GenerateRequest past the SDK's own checks: the server's validation answers."""
    with grpc.insecure_channel(target) as ch:
        with pytest.raises(grpc.RpcError) as e:
            pb_grpc.GenerationStub(ch).GenerateOnce(request, timeout=60)
    return from_rpc_error(e.value.code(), e.value.details(), e.value.trailing_metadata())


# -- item 3: sampling controls -------------------------------------------------------------------------------------
def test_logit_bias_banned_ids_and_min_tokens(client):
    free = client.generate(PROMPT, max_tokens=6, ignore_eos=True).token_ids
    assert client.generate(PROMPT, max_tokens=5, ignore_eos=True, logit_bias={9: 100.0}).token_ids == (9,) * 5
    banned = client.generate(PROMPT, max_tokens=6, ignore_eos=True, banned_token_ids=free).token_ids
    assert not set(banned) & set(free)
    stopped = client.generate(PROMPT, max_tokens=8, stop_token_ids=[free[0]])
    assert stopped.finish_reason == FinishReason.STOP and len(stopped.token_ids) == 1
    held = client.generate(PROMPT, max_tokens=8, stop_token_ids=[free[0]], min_tokens=4)
    assert len(held.token_ids) >= 4 and free[0] not in held.token_ids[:4]


def test_penalties_reach_the_sampler(client):
    three = {9: 50.0, 10: 50.0, 11: 50.0}  # the choice is among these three: repeats are certain
    base = client.generate(PROMPT, max_tokens=24, ignore_eos=True, logit_bias=three).token_ids
    pen = client.generate(PROMPT, max_tokens=24, ignore_eos=True, logit_bias=three, presence_penalty=2.0,
                          frequency_penalty=2.0).token_ids
    counts = [pen.count(t) for t in three]
    # each use costs a token 2 more: the random model's small logit gaps cannot keep one ahead, they take turns
    assert set(pen) == set(three) and max(counts) - min(counts) <= 3
    assert max(base.count(t) for t in three) > max(counts)


def test_bad_words_are_masked(client, tok):
    word = tok.encode(" Paris", add_special_tokens=False)
    assert len(word) == 1  # one token: forced by the bias unless the bad word masks it
    forced = client.generate("Hello", max_tokens=3, ignore_eos=True, logit_bias={word[0]: 100.0})
    assert forced.token_ids == (word[0],) * 3
    masked = client.generate("Hello", max_tokens=3, ignore_eos=True, logit_bias={word[0]: 100.0}, bad_words=["Paris"])
    assert word[0] not in masked.token_ids and "Paris" not in masked.text


async def _prompt_logprobs_async(target):
    async with AsyncClient(target, timeout=120) as c:
        chunks = [ch async for ch in c.stream(PROMPT, max_tokens=3, ignore_eos=True, prompt_logprobs=2)]
        return chunks, await c.generate(PROMPT, max_tokens=3, ignore_eos=True, prompt_logprobs=2)


def test_prompt_logprobs_stream_and_unary(chat, client):
    client.generate(PROMPT, max_tokens=1)  # cached now: prompt logprobs must not reuse it
    once = client.generate(PROMPT, max_tokens=3, ignore_eos=True, prompt_logprobs=2)
    assert once.usage.cached_tokens == 0
    assert [l.token_id for l in once.prompt_logprobs] == PROMPT[1:]
    assert all(len(l.top) == 2 and l.logprob <= 0 and l.top[0][1] >= l.logprob - 1e-5 for l in once.prompt_logprobs)
    chunks, again = asyncio.run(_prompt_logprobs_async(chat.target))
    assert chunks[0].prompt_logprobs == again.prompt_logprobs and not any(c.prompt_logprobs for c in chunks[1:])
    assert [l.logprob for l in again.prompt_logprobs] == pytest.approx([l.logprob for l in once.prompt_logprobs], abs=1e-5)
    assert client.generate(PROMPT, max_tokens=1).prompt_logprobs == ()


@pytest.mark.parametrize("sampling, field", [
    (dict(logit_bias={1: 500.0}), "sampling.logit_bias"),
    (dict(logit_bias={10**7: 1.0}), "sampling.logit_bias"),
    (dict(min_tokens=50, max_tokens=8), "sampling.min_tokens"),
    (dict(presence_penalty=3.0), "sampling.presence_penalty"),
    (dict(banned_token_ids=[10**7]), "sampling.banned_token_ids"),
    (dict(prompt_logprobs=50), "sampling.prompt_logprobs"),
    (dict(bad_words=[""]), "sampling.bad_words"),
])
def test_server_validates_the_controls(chat, sampling, field):
    err = _raw(chat.target, pb.GenerateRequest(token_ids=pb.TokenIds(ids=[1, 2]), sampling=pb.SamplingParameters(**sampling)))
    assert isinstance(err, InvalidArgumentError) and [v.field for v in err.field_violations] == [field]


def test_sdk_refuses_bad_controls_before_sending(client):
    for kw, field in ((dict(presence_penalty=2.5), "sampling.presence_penalty"), (dict(logit_bias={1: 101}), "sampling.logit_bias"),
                      (dict(banned_token_ids=[-1]), "sampling.banned_token_ids"), (dict(priority=2**31), "priority")):
        with pytest.raises(InvalidArgumentError) as e:
            client.generate(PROMPT, **kw)
        assert "checked by the client" in str(e.value) and e.value.field_violations[0].field == field


# -- item 4: priority and deadlines ---------------------------------------------------------------------------------
def _occupy(target, started: threading.Event, out: dict):
    with Client(target, timeout=120) as c:
        for ch in c.stream(PROMPT, max_tokens=300, ignore_eos=True):
            started.set()
            if ch.finished:
                out["long"] = ch.finish_reason


def test_higher_priority_admitted_first(chat):
    started, out = threading.Event(), {}
    long = threading.Thread(target=_occupy, args=(chat.target, started, out))
    long.start()
    assert started.wait(60)

    async def queued():
        done = []
        async with AsyncClient(chat.target, timeout=120) as c:
            async def one(name, priority):
                await c.generate(PROMPT, max_tokens=2, ignore_eos=True, priority=priority)
                done.append(name)
            low = asyncio.ensure_future(one("low", -1))
            await asyncio.sleep(0.2)  # low is queued first
            await asyncio.gather(low, one("high", 5))
        return done

    assert asyncio.run(queued()) == ["high", "low"]
    long.join(120)
    assert out["long"] == FinishReason.LENGTH
    assert chat.wait_idle()


def test_deadline_while_queued_ends_deadline_exceeded_and_frees_it(chat):
    started, out = threading.Event(), {}
    long = threading.Thread(target=_occupy, args=(chat.target, started, out))
    long.start()
    assert started.wait(60)
    with Client(chat.target) as c:
        t0 = time.monotonic()
        with pytest.raises(DeadlineExceededError):
            c.generate(PROMPT, max_tokens=4, timeout=0.5)
        assert time.monotonic() - t0 < 5
        # it left the queue when its deadline passed (the engine's check or the call's cancel, whichever is first),
        # not when the long one ended
        end = time.monotonic() + 1.0
        while chat.engine.load.waiting and time.monotonic() < end:
            time.sleep(0.01)
        assert chat.engine.load.waiting == 0 and long.is_alive()
    long.join(120)
    assert out["long"] == FinishReason.LENGTH and chat.wait_idle()


def test_deadline_while_running_frees_its_slots(chat):
    with Client(chat.target) as c:
        with pytest.raises(DeadlineExceededError):
            for _ in c.stream(PROMPT, max_tokens=400, ignore_eos=True, timeout=0.5):
                pass
    assert chat.wait_idle(5)


def test_sampling_of_carries_priority_and_the_remaining_deadline():
    from swaa_server import convert

    params = convert.sampling_of(pb.SamplingParameters(max_tokens=8), priority=3, timeout=0.25)
    assert params.timeout == 0.25 and params.priority == 3
    assert convert.sampling_of(pb.SamplingParameters(), timeout=-1.0).timeout == 0.0  # already past: ends at once
    assert convert.sampling_of(pb.SamplingParameters()).timeout is None


# -- item 5: Detokenize, chat template and special tokens -----------------------------------------------------------
def test_detokenize_round_trip_and_validation(client, tok):
    text = "The quick brown fox"
    ids = client.count_tokens(text)
    assert client.detokenize(ids) == text
    with_eos = [*ids, tok.eos_token_id]
    assert client.detokenize(with_eos) == text + tok.eos_token
    assert client.detokenize(with_eos, skip_special_tokens=True) == text
    with pytest.raises(InvalidArgumentError) as e:
        client.detokenize([1, 10**7])
    assert e.value.field_violations[0].field == "token_ids"


def test_model_info_has_chat_template_and_special_tokens(client, tok):
    info = client.model_info()
    assert info.chat_template == tok.chat_template and "{%" in info.chat_template
    st = info.special_tokens
    assert st.eos == tok.eos_token and tok.eos_token_id in st.eos_ids
    assert (st.bos_id, st.bos) == (tok.bos_token_id, tok.bos_token or "")
    assert (st.pad_id, st.pad) == (tok.pad_token_id, tok.pad_token or "")


def test_async_detokenize_and_info(chat, tok):
    async def go():
        async with AsyncClient(chat.target, timeout=60) as c:
            return await c.detokenize(tok.encode("hi there", add_special_tokens=False)), await c.model_info()
    text, info = asyncio.run(go())
    assert text == "hi there" and info.special_tokens.eos == tok.eos_token


def test_swaa_generate_flags_reach_the_server(chat, client, tok, capsys):
    from swaa_server.cli import main

    word = tok.encode(" Paris", add_special_tokens=False)[0]
    kw = dict(max_tokens=4, logit_bias={word: 100.0, 11: 99.0}, bad_words=["Paris"], min_tokens=2, priority=2,
              presence_penalty=0.5, frequency_penalty=0.5, banned_token_ids=[12])
    expected = client.generate("Hello", **kw)
    assert word not in expected.token_ids and 11 in expected.token_ids  # the bias and the bad word both applied
    rc = main(["generate", "Hello", "--no-chat", "--target", chat.target, "--max-tokens", "4", "--logit-bias", f"{word}=100",
               "--logit-bias", "11=99", "--bad-word", "Paris", "--min-tokens", "2", "--priority", "2",
               "--presence-penalty", "0.5", "--frequency-penalty", "0.5", "--ban-token-id", "12"])
    out = capsys.readouterr().out  # the server's log lines share this stdout: the answer is the rest
    answer = "\n".join(l for l in out.splitlines() if not l.startswith("20") or "[info" not in l)
    assert rc == 0 and answer.rstrip("\n") == expected.text


def test_servicer_maps_an_engine_deadline_to_deadline_exceeded():
    """The engine ended the request at its deadline (before gRPC's own timer fired): the call ends DEADLINE_EXCEEDED,
    after the tokens it had made (streaming)."""
    from swaa_engine.outputs import StreamChunk, Timings, Usage
    from swaa_engine.sequence import FinishReason as EngineFinish
    from swaa_server.servicer import GenerationServicer

    final = StreamChunk("r", [7, 8], "ab", finished=True, finish_reason=EngineFinish.DEADLINE, usage=Usage(2, 2),
                        timings=Timings(0.0, 0.1, 0.2))

    class Front:
        seen = None

        def bounds(self):
            return None

        async def stream(self, prompt, params, rid):
            Front.seen = params
            yield final

        async def generate(self, prompt, params, rid):
            return [final]

    class Aborted(Exception):
        pass

    class Context:
        code = None

        def time_remaining(self):
            return 0.75

        async def abort(self, code, details):
            Context.code = code
            raise Aborted(details)

    req = pb.GenerateRequest(token_ids=pb.TokenIds(ids=[1, 2]), priority=4)
    servicer = GenerationServicer(Front())

    async def go():
        sent = []
        with pytest.raises(Aborted):
            async for msg in servicer.Generate(req, Context()):
                sent.append(msg)
        assert [list(m.token_ids) for m in sent] == [[7, 8]] and not sent[0].finished
        assert Context.code == grpc.StatusCode.DEADLINE_EXCEEDED
        Context.code = None
        with pytest.raises(Aborted):
            await servicer.GenerateOnce(req, Context())
        assert Context.code == grpc.StatusCode.DEADLINE_EXCEEDED

    asyncio.run(go())
    assert Front.seen.timeout == 0.75 and Front.seen.priority == 4
