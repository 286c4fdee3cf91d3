"""The CUDA-graph decode path's bookkeeping, on CPU: persistent buffers, bucket padding and the scratch
slot, run eagerly. Greedy tokens must equal the plain path's for every canonical config (the GPU
suite repeats this with real graphs)."""

import random

import pytest

from swaa_engine.config import CacheConfig, SchedulerConfig
from swaa_engine.cuda_graphs import buckets
from swaa_engine.engine import LLM
from swaa_engine.sampling_params import SamplingParams
from swaa_engine.swaa import canonical_configs

CONFIGS = canonical_configs(window=16, sinks=4)


def test_buckets():
    assert buckets(1) == [1]
    assert buckets(20) == [1, 2, 4, 8, 16, 20]
    assert buckets(64) == [1, 2, 4, 8, 16, 32, 48, 64]


@pytest.mark.parametrize("name", list(CONFIGS))
def test_graph_decode_path_matches_plain(name, tiny_qwen3):
    folder, _ = tiny_qwen3
    rng = random.Random(0)
    prompts = [[rng.randrange(384) for _ in range(n)] for n in (150, 37, 90, 5, 61)]
    params = SamplingParams(max_tokens=40, ignore_eos=True)
    kw = dict(swaa=CONFIGS[name], device="cpu", cache=CacheConfig(block_size=8, budget_bytes=8 << 20), max_model_len=512,
              scheduler=SchedulerConfig(max_num_batched_tokens=40, max_num_seqs=6))
    plain = LLM(folder, **kw).generate(prompts, params)

    llm = LLM(folder, **kw)
    eng = llm.engine
    graphs = eng.decode_graphs()
    eng.runner.use_graphs(graphs)
    calls = []
    run = graphs.run
    graphs.run = lambda step: calls.append(step.n) or run(step)
    outs = llm.generate(prompts, params)
    assert [o.token_ids for o in outs] == [o.token_ids for o in plain]
    assert calls and any(graphs.bucket(n) != n for n in calls)  # padded buckets were exercised
    held = lambda u: {p: (v["used"], v["total"]) for p, v in u.items()}  # noqa: E731 (cached prefixes may stay)
    assert held(eng.cache_usage()) == held(LLM(folder, **kw).engine.cache_usage())  # everything released


def test_warmup_runs_every_step_kind_and_leaves_the_engine_idle(tiny_qwen3):
    folder, _ = tiny_qwen3
    llm = LLM(folder, swaa=CONFIGS["swa+sinks+half_fa"], device="cpu", max_model_len=512,
              cache=CacheConfig(block_size=8, budget_bytes=8 << 20), scheduler=SchedulerConfig(max_num_batched_tokens=40))
    eng = llm.engine
    assert eng.warmup() == {}  # nothing compiles on CPU
    eng.runner.use_graphs(eng.decode_graphs())
    idle = eng.cache_usage()
    kinds = eng.warmup(force=True)
    assert kinds["prefill"] >= 1 and kinds["mixed"] >= 1 and kinds["graph"] >= 1, kinds
    assert not eng.has_work() and eng.cache.is_idle() and eng.cache_usage() == idle
    assert eng.steps == 0 and eng.num_requests() == {k: 0 for k in eng.num_requests()}
    # and the engine serves as before
    out = llm.generate([[5, 6, 7]], SamplingParams(max_tokens=5, ignore_eos=True))
    assert len(out[0].token_ids) == 5
