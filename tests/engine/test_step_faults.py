"""Aborts landing while a step runs, and steps that raise: only the requests concerned end, slots are freed
when no kernel can still write them, and every other request finishes with the tokens a clean run gives."""

import asyncio

import pytest

from swaa_engine.async_engine import AsyncEngine, EngineDeadError
from swaa_engine.config import CacheConfig, SchedulerConfig
from swaa_engine.engine import LLM, EngineUnavailableError, StepError
from swaa_engine.sampling_params import SamplingParams
from swaa_engine.swaa import canonical_configs

CONFIGS = canonical_configs(window=16, sinks=4)
PROMPTS = [[(7 * i + j) % 300 + 1 for j in range(n)] for i, n in enumerate((60, 33, 47, 21))]
PARAMS = SamplingParams(max_tokens=12, ignore_eos=True)


def engine(folder, name):
    return LLM(folder, swaa=CONFIGS[name], cache=CacheConfig(block_size=8, budget_bytes=8 << 20),
               scheduler=SchedulerConfig(max_num_batched_tokens=40)).engine


def clean_run(folder, name):
    e = engine(folder, name)
    ids = [e.add_request(p, PARAMS) for p in PROMPTS]
    got = {i: [] for i in ids}
    while e.has_work():
        for c in e.step():
            got[c.request_id] += c.token_ids
    return [got[i] for i in ids]


@pytest.mark.parametrize("name", ["swa+sinks+half_fa", "swa+sinks", "fa"])
def test_an_abort_landing_inside_a_step_hurts_no_other_request(name, tiny_qwen3):
    """The abort runs in the step's unlocked window, just before the runner reads the batch (before the fix:
    IndexError with paged layers, TypeError with rings, and every request of the step failed)."""
    want = clean_run(tiny_qwen3[0], name)
    e = engine(tiny_qwen3[0], name)
    ids = [e.add_request(p, PARAMS) for p in PROMPTS]
    execute, calls = e.runner.execute, [0]

    def abort_then_execute(batch, rows):
        calls[0] += 1
        if calls[0] == 4:  # mid-decode for some, mid-prefill for others
            assert e.abort(ids[1]) is not None
            assert e.cache.blocks.num_used + e.cache.rings.num_used > 0  # its slots are still held
        return execute(batch, rows)

    e.runner.execute = abort_then_execute
    got = {i: [] for i in ids}
    while e.has_work():
        for c in e.step():
            got[c.request_id] += c.token_ids
    assert calls[0] > 4
    assert [got[i] for i in (ids[0], ids[2], ids[3])] == [want[0], want[2], want[3]]
    assert e.cache.is_idle()


def test_a_step_that_raises_fails_only_its_requests(tiny_qwen3):
    want = clean_run(tiny_qwen3[0], "swa+sinks+half_fa")
    e = engine(tiny_qwen3[0], "swa+sinks+half_fa")
    first = [e.add_request(p, PARAMS) for p in PROMPTS[:2]]
    execute, calls = e.runner.execute, [0]

    def fail_third(batch, rows):
        calls[0] += 1
        if calls[0] == 3:
            raise RuntimeError("injected fault")
        return execute(batch, rows)

    e.runner.execute = fail_third
    e.step(), e.step()
    with pytest.raises(StepError) as err:
        e.step()
    assert sorted(err.value.request_ids) == sorted(first) and all(c.finished for c in err.value.final_chunks)
    assert e.cache.is_idle() and not e.has_work()
    later = [e.add_request(p, PARAMS) for p in PROMPTS[2:]]  # the engine goes on
    got = {i: [] for i in later}
    while e.has_work():
        for c in e.step():
            got[c.request_id] += c.token_ids
    assert [got[i] for i in later] == want[2:]
    assert e.cache.is_idle()


def test_async_streams_of_a_failed_step_end_with_an_error_and_others_finish(tiny_qwen3):
    e = engine(tiny_qwen3[0], "fa")
    execute, state = e.runner.execute, {"fail": False}

    def maybe_fail(batch, rows):
        if state["fail"]:
            state["fail"] = False
            raise RuntimeError("injected fault")
        return execute(batch, rows)

    e.runner.execute = maybe_fail
    ae = AsyncEngine(e)

    async def main():
        doomed = await ae.open(PROMPTS[0], SamplingParams(max_tokens=200, ignore_eos=True))
        await doomed.__anext__()
        state["fail"] = True
        with pytest.raises(EngineDeadError):
            async for _ in doomed:
                pass
        return [c async for c in ae.stream(PROMPTS[1], PARAMS)]

    try:
        chunks = asyncio.run(main())
    finally:
        ae.shutdown()
    assert chunks[-1].finished and sum(len(c.token_ids) for c in chunks) == 12
    assert e.cache.is_idle()


def test_a_runner_raising_on_the_kth_step_only_leaves_the_engine_serving(tiny_qwen3):
    """Requests waiting or decoding outside the failed step finish with a clean run's tokens; the engine is not
    marked dead by one failure (the probe passes and the next step succeeds)."""
    want = clean_run(tiny_qwen3[0], "swa+sinks")
    e = engine(tiny_qwen3[0], "swa+sinks")
    ids = [e.add_request(p, PARAMS) for p in PROMPTS]
    execute, calls, failed = e.runner.execute, [0], []

    def fail_kth(batch, rows):
        calls[0] += 1
        if calls[0] == 2:  # the first prompt's last chunk and the second's first: the others still wait
            failed.extend(batch.request_ids)
            raise RuntimeError("injected fault")
        return execute(batch, rows)

    e.runner.execute = fail_kth
    got = {i: [] for i in ids}
    errors = []
    while e.has_work():
        try:
            for c in e.step():
                got[c.request_id] += c.token_ids
        except StepError as err:
            errors.append(err)
    assert len(errors) == 1 and errors[0].dead is None and sorted(errors[0].request_ids) == sorted(failed)
    survivors = [k for k, i in enumerate(ids) if i not in failed]
    assert failed and survivors  # the fault hit some requests and spared others
    assert [got[ids[k]] for k in survivors] == [want[k] for k in survivors]
    assert e.cache.is_idle() and e.dead is None
    rid = e.add_request(PROMPTS[0], PARAMS)  # still serving
    out = []
    while e.has_work():
        out += [t for c in e.step() for t in c.token_ids]
    assert out == want[0] and e.cache.is_idle()


def test_a_runner_that_keeps_raising_marks_the_engine_dead(tiny_qwen3):
    """The first failure ends its step's requests; the next step raises too: the engine is dead, every request
    ends, every pool is empty, and new requests are refused naming the reason."""
    e = engine(tiny_qwen3[0], "swa+sinks+half_fa")
    ids = [e.add_request(p, PARAMS) for p in PROMPTS]

    def always(batch, rows):
        raise RuntimeError("CUDA error: an illegal memory access was encountered (injected)")

    e.runner.execute = always
    with pytest.raises(StepError) as first:
        e.step()
    assert first.value.dead is None and e.dead is None and e.has_work()  # one failure: the others wait their turn
    with pytest.raises(StepError) as second:
        e.step()
    assert second.value.dead is not None and "illegal memory access" in e.dead and "2 steps in a row" in e.dead
    ended = first.value.request_ids + second.value.request_ids
    assert sorted(ended) == sorted(ids) and all(c.finished for c in second.value.final_chunks)
    assert not e.has_work() and e.cache.is_idle()
    with pytest.raises(EngineUnavailableError, match="illegal memory access"):
        e.add_request(PROMPTS[0], PARAMS)


def test_a_failing_device_probe_marks_the_engine_dead_at_the_first_failure(tiny_qwen3):
    e = engine(tiny_qwen3[0], "fa")
    ids = [e.add_request(p, PARAMS) for p in PROMPTS]
    e.step()

    def broken(batch, rows):
        raise RuntimeError("injected fault")

    def probe():
        raise RuntimeError("CUDA error: unspecified launch failure (injected)")

    e.runner.execute, e.probe_device = broken, probe
    with pytest.raises(StepError) as err:
        e.step()
    assert "device probe" in err.value.dead and "launch failure" in e.dead
    assert sorted(err.value.request_ids) == sorted(ids) and e.cache.is_idle() and not e.has_work()


def test_async_streams_of_a_dead_engine_end_unavailable_and_new_ones_are_refused(tiny_qwen3):
    e = engine(tiny_qwen3[0], "fa")

    def always(batch, rows):
        raise RuntimeError("injected sticky fault")

    e.runner.execute = always
    dead = []
    ae = AsyncEngine(e, on_dead=dead.append)

    async def main():
        streams, errors = [], []
        for p in PROMPTS:
            try:
                streams.append(await ae.open(p, PARAMS))
            except EngineUnavailableError:  # the engine may already have died on the first ones
                errors.append(EngineUnavailableError)
        for s in streams:
            try:
                async for _ in s:
                    pass
            except Exception as exc:  # noqa: BLE001 — the type is what is checked
                errors.append(type(exc))
        with pytest.raises(EngineUnavailableError, match="injected sticky fault"):
            await ae.open(PROMPTS[0], PARAMS)
        return errors

    try:
        errors = asyncio.run(main())
    finally:
        ae.shutdown()
    assert len(errors) == len(PROMPTS) and EngineUnavailableError in errors
    assert set(errors) <= {EngineDeadError, EngineUnavailableError}
    assert len(dead) == 1 and "injected sticky fault" in dead[0] and ae.dead == dead[0]
    assert e.cache.is_idle() and not e.has_work()
