import asyncio
import time

import pytest

from swaa_engine.async_engine import AsyncEngine
from swaa_engine.config import CacheConfig, ConfigError, SchedulerConfig
from swaa_engine.engine import LLM
from swaa_engine.models.registry import UnsupportedModelError
from swaa_engine.sampling_params import InvalidRequestError, SamplingParams
from swaa_engine.scheduler import QueueFullError
from swaa_engine.sequence import FinishReason
from swaa_engine.swaa import SWAAConfig

MIXED = SWAAConfig(window=16, sinks=2, fa_layers=[1])  # ring and paged pools both in use


@pytest.fixture
def tiny(tiny_qwen3):
    return LLM(tiny_qwen3[0], swaa=MIXED, max_model_len=512, cache=CacheConfig(block_size=8, budget_bytes=4 << 20),
               scheduler=SchedulerConfig(max_num_batched_tokens=32, max_waiting=8))


@pytest.fixture(scope="module")
def smol(smollm2):
    hf, tok = smollm2
    return LLM(None, hf_model=hf, tokenizer=tok, swaa=SWAAConfig(window=64, sinks=4, fa_decode=True),
               max_model_len=2048, cache=CacheConfig(budget_bytes=128 << 20))


def test_abort_at_every_point_releases_every_slot(tiny):
    eng = tiny.engine
    ids = [eng.add_request(list(range(1, 100)), SamplingParams(max_tokens=50)) for _ in range(5)]
    eng.step()  # first one mid-prefill, others waiting
    eng.abort(ids[0])
    for _ in range(8):
        eng.step()  # some decoding, some prefilling
    for rid in ids[1:]:
        final = eng.abort(rid)
        assert final.finished and final.finish_reason is FinishReason.ABORT
    assert eng.cache.is_idle() and not eng.has_work()
    assert eng.abort(ids[1]) is None  # already gone


def test_validation_errors_name_the_field(tiny, smol):
    eng = tiny.engine
    cases = [
        (lambda: eng.add_request([]), "prompt"),
        (lambda: eng.add_request([1, 2, 10**6]), "prompt_token_ids"),
        (lambda: eng.add_request([1] * 600), "prompt"),
        (lambda: eng.add_request([1, 2], SamplingParams(max_tokens=511)), "max_tokens"),
        (lambda: eng.add_request([1, 2], SamplingParams(stop_token_ids=(10**6,))), "stop_token_ids"),
        (lambda: eng.add_request("text needs a tokenizer"), "prompt"),
        (lambda: smol.engine.add_request(""), "prompt"),
        (lambda: smol.engine.add_request([{"role": "user"}]), "messages[0]"),
    ]
    for call, field in cases:
        with pytest.raises(InvalidRequestError) as e:
            call()
        assert e.value.field == field
    assert eng.cache.is_idle() and not eng.has_work()


def test_queue_full_is_refused(tiny):
    for _ in range(8):
        tiny.engine.add_request([1, 2, 3])
    with pytest.raises(QueueFullError):
        tiny.engine.add_request([1, 2, 3])


def test_max_tokens_and_stop_token(tiny):
    out = tiny.generate([[5, 6, 7]], SamplingParams(max_tokens=7, ignore_eos=True))[0]
    assert out.finish_reason is FinishReason.LENGTH and len(out.token_ids) == 7
    stop_at = out.token_ids[3]
    first = out.token_ids.index(stop_at)
    out2 = tiny.generate([[5, 6, 7]], SamplingParams(max_tokens=7, stop_token_ids=(stop_at,)))[0]
    assert out2.finish_reason is FinishReason.STOP and out2.stop_token_id == stop_at
    assert out2.token_ids == out.token_ids[: first + 1]


def test_seeded_sampling_reproducible_across_batches(tiny):
    p = SamplingParams(temperature=1.0, top_p=0.9, seed=1234, max_tokens=20, ignore_eos=True)
    alone = tiny.generate([[9, 8, 7]], p)[0].token_ids
    noise = SamplingParams(temperature=0.8, max_tokens=25, ignore_eos=True)
    batch = tiny.generate([[1, 2, 3, 4, 5], [9, 8, 7], list(range(40))], [noise, p, noise])
    assert batch[1].token_ids == alone


def test_chat_and_stop_string_on_the_real_model(smol):
    q = [{"role": "user", "content": "What is the capital of France?"}]
    out = smol.generate([q], SamplingParams(max_tokens=30))[0]
    assert "Paris" in out.text and out.finish_reason is FinishReason.EOS
    cut = smol.generate([q], SamplingParams(max_tokens=30, stop=("of France",)))[0]
    assert cut.finish_reason is FinishReason.STOP and cut.stop == "of France"
    assert out.text.startswith(cut.text) and "of France" not in cut.text
    assert cut.usage.prompt_tokens == out.usage.prompt_tokens and cut.usage.completion_tokens < out.usage.completion_tokens


def test_async_stream_matches_offline_and_cancel_frees(smol):
    offline = smol.generate(["Once upon a time"], SamplingParams(max_tokens=24, ignore_eos=True))[0]
    engine = AsyncEngine(smol.engine)

    async def main():
        chunks = [c async for c in engine.stream("Once upon a time", SamplingParams(max_tokens=24, ignore_eos=True))]
        assert chunks[-1].finished and sum(len(c.token_ids) for c in chunks) == 24
        assert [t for c in chunks for t in c.token_ids] == offline.token_ids
        assert "".join(c.text for c in chunks) == offline.text
        assert chunks[-1].timings.ttft_s is not None and chunks[-1].timings.total_s >= chunks[-1].timings.ttft_s

        # leaving the stream early aborts the request
        agen = engine.stream("Tell me a story", SamplingParams(max_tokens=200, ignore_eos=True))
        async for _ in agen:
            break
        await agen.aclose()

        # abort from elsewhere ends the stream with finish reason abort
        async def consume():
            return [c async for c in engine.stream("Count to one hundred", SamplingParams(max_tokens=200, ignore_eos=True), request_id="victim")]

        task = asyncio.create_task(consume())
        while smol.engine.scheduler.get("victim") is None or smol.engine.scheduler.get("victim").num_generated < 2:
            await asyncio.sleep(0.01)
        assert engine.abort("victim")
        got = await task
        assert got[-1].finish_reason is FinishReason.ABORT and len([t for c in got for t in c.token_ids]) < 200

    try:
        asyncio.run(main())
        # an abort that lands inside a step frees the request's slots when that step ends
        deadline = time.monotonic() + 10
        while not smol.engine.cache.is_idle() and time.monotonic() < deadline:
            time.sleep(0.01)
        assert smol.engine.cache.is_idle()
    finally:
        engine.shutdown()


def test_unsupported_architecture_lists_supported(tmp_path):
    from transformers import GPT2Config

    with pytest.raises(UnsupportedModelError, match="supported: gemma3_text, llama, mistral, qwen2, qwen3"):
        LLM(hf_config=GPT2Config(n_layer=2), random_weights=True)


def test_cache_too_small_for_max_model_len(tiny_qwen3):
    with pytest.raises(ConfigError, match="cache"):
        LLM(tiny_qwen3[0], max_model_len=2048, cache=CacheConfig(budget_bytes=1 << 16))


@pytest.mark.parametrize("arch", ["llama", "mistral", "qwen2"])
def test_other_architectures_match_transformers(arch, tmp_path):
    """Random tiny Llama / Mistral / Qwen2 (qkv bias) folders: engine greedy == reference greedy."""
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM

    from swaa_engine.reference import SWAAReference

    cfg = AutoConfig.for_model(arch, vocab_size=300, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                               num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=512,
                               initializer_range=0.25, tie_word_embeddings=False)
    if arch == "mistral":
        cfg.sliding_window = None  # a Mistral without a window of its own (those: tests/engine/test_native_windows.py)
    torch.manual_seed(0)
    hf = AutoModelForCausalLM.from_config(cfg, dtype=torch.float32)
    if arch == "qwen2":
        assert hf.model.layers[0].self_attn.q_proj.bias is not None
        with torch.no_grad():
            for layer in hf.model.layers:
                layer.self_attn.q_proj.bias.normal_(0, 0.5)
    hf.save_pretrained(tmp_path)
    swaa = SWAAConfig(window=8, sinks=2, fa_decode=True)
    prompt = list(range(7, 60))
    out = LLM(str(tmp_path), swaa=swaa, cache=CacheConfig(block_size=4, budget_bytes=1 << 20),
              scheduler=SchedulerConfig(max_num_batched_tokens=20)).generate([prompt], SamplingParams(max_tokens=30, ignore_eos=True))[0]
    assert SWAAReference(hf, swaa).first_greedy_mismatch(prompt, out.token_ids) is None


def test_async_delivery_wakes_the_callers_loop_once_per_step(tiny):
    """Each wake-up of an asyncio loop from the engine thread is a syscall under the GIL: a step's chunks for many
    streams on one loop must cost one, not one per stream."""
    engine = AsyncEngine(tiny.engine)
    streams, new = 6, 5
    wakeups = []

    async def main():
        loop = asyncio.get_running_loop()
        real = loop.call_soon_threadsafe

        def counting(*a, **kw):
            wakeups.append(time.monotonic())
            return real(*a, **kw)

        loop.call_soon_threadsafe = counting
        try:
            steps0 = tiny.engine.steps
            params = SamplingParams(max_tokens=new, ignore_eos=True)
            outs = await asyncio.gather(*(engine.generate([3 + i, 4, 5], params) for i in range(streams)))
            steps = tiny.engine.steps - steps0
        finally:
            del loop.call_soon_threadsafe
        return outs, steps

    try:
        outs, steps = asyncio.run(main())
    finally:
        engine.shutdown()
    assert all(sum(len(c.token_ids) for c in out) == new and out[-1].finished for out in outs)
    # every step delivered chunks to the same loop: one wake-up each (the intake's hand-offs add at most one per stream)
    assert steps >= new and len(wakeups) <= steps + streams, (len(wakeups), steps)
