"""Rings hold what a sequence can use: min(sinks + window, max_model_len) slots (issue 25).

A sequence never holds more than max_model_len tokens, so a window at least that long makes a
sliding layer a full-attention layer: the engine must then behave exactly like full attention and
start on the default budget, instead of reserving (or refusing for) rings it can never fill.
"""

import random

import pytest

from swaa_engine.config import CacheConfig, ConfigError, SchedulerConfig
from swaa_engine.engine import LLM
from swaa_engine.kv_cache.manager import KVShape, plan_pools
from swaa_engine.kv_cache.pools import ring_size, ring_slot
from swaa_engine.sampling_params import SamplingParams
from swaa_engine.swaa import CacheKind, SWAAConfig, sliding_visible

MAX_LEN = 151  # the issue's max_model_len
TINY_LAYERS, TINY_BYTES_PER_TOKEN = 4, 2 * 2 * 16 * 4  # tiny Qwen3: 4 layers; K+V x 2 kv heads x 16 dims x fp32

# Sliding configs whose sinks + window reach MAX_LEN: every earlier key of every position a
# sequence can reach is visible, so each must decode exactly like full attention.
WIDE = {
    "swa w2000": SWAAConfig(window=2000),
    "swa+sinks w2000 (the issue's)": SWAAConfig(window=2000, sinks=4),
    "swa+sinks w=max_len": SWAAConfig(window=MAX_LEN, sinks=4),
    "swa+sinks w+sinks=max_len": SWAAConfig(window=MAX_LEN - 4, sinks=4),
    "swa+sinks+half_fa w2000": SWAAConfig(window=2000, sinks=4, fa_layers="odd"),
    "swa+sinks+fa_decode w2000": SWAAConfig(window=2000, sinks=4, fa_decode=True),
}


def test_ring_size_caps_at_max_len_where_positions_never_wrap():
    assert ring_size(16, 4, None) == 20 and ring_size(16, 4, 100) == 20
    assert ring_size(2000, 4, MAX_LEN) == MAX_LEN and ring_size(MAX_LEN - 4, 4, MAX_LEN) == MAX_LEN
    for window, sinks in [(2000, 4), (MAX_LEN - 4, 4), (MAX_LEN, 0), (10, 200)]:
        R = ring_size(window, sinks, MAX_LEN)
        # below the cap the ring is the identity: no two positions share a slot, no slot lies past R
        assert [ring_slot(p, sinks, window) for p in range(MAX_LEN)] == list(range(MAX_LEN))
        assert R == MAX_LEN
        # and every key of every position is visible: the layer is full attention within max_len
        assert all(sliding_visible(i, j, window, sinks) for i in range(MAX_LEN) for j in range(i + 1))


def test_layer_specs_and_pools_use_the_capped_ring():
    kv = KVShape(num_kv_heads=2, head_dim=16, dtype_bytes=4)
    swaa = SWAAConfig(window=2000, sinks=4)
    assert {s.ring_slots for s in swaa.layer_specs(4)} == {2004}  # no limit given: sinks + window
    specs = swaa.layer_specs(4, max_len=MAX_LEN)
    assert {s.ring_slots for s in specs} == {MAX_LEN}
    # a budget that holds eight 151-token sequences 1.5 times over holds twelve rings, not zero
    budget = int(1.5 * 8 * MAX_LEN * TINY_LAYERS * TINY_BYTES_PER_TOKEN)
    plan = plan_pools(specs, kv, 16, budget, 8)
    assert plan.ring_bytes == TINY_LAYERS * MAX_LEN * TINY_BYTES_PER_TOKEN
    assert plan.num_rings == 12
    assert plan_pools(swaa.layer_specs(4), kv, 16, budget, 8).num_rings == 0  # what the uncapped ring gave


def ring_sizes_in_use(llm) -> set[int]:
    """Every place's idea of one ring's slot count: pool, attention geometry, cache tensors, graph scratch."""
    eng = llm.engine
    sizes = {eng.cache.rings.slots_per_ring, eng.backend.geometry.ring_slots}
    sizes |= {k.shape[1] for s, (k, _) in zip(eng.specs, eng.runner.caches) if s.cache_kind is CacheKind.RING}
    graphs = eng.decode_graphs()  # eager on CPU; its scratch slot is ring num_rings's first slot
    sizes.add(graphs.scratch_ring // eng.pool_plan.num_rings)
    return sizes


@pytest.fixture(scope="module")
def wide_requests():
    rng = random.Random(25)
    lengths = (120, 37, 90, 5, 64, 11, 100, 75)
    prompts = [[rng.randrange(384) for _ in range(n)] for n in lengths]
    # each runs to max_model_len, so the last queries sit at positions the window + sinks only just reach
    params = [SamplingParams(max_tokens=MAX_LEN - n, ignore_eos=True) for n in lengths]
    return prompts, params


def wide_llm(folder, swaa, **kwargs):
    # default cache budget (no budget_bytes); chunks of 40 tokens split the prompts
    return LLM(folder, swaa=swaa, max_model_len=MAX_LEN,
               scheduler=SchedulerConfig(max_num_seqs=8, max_num_batched_tokens=40), **kwargs)


@pytest.fixture(scope="module")
def full_attention_tokens(tiny_qwen3, wide_requests):
    prompts, params = wide_requests
    return [o.token_ids for o in wide_llm(tiny_qwen3[0], SWAAConfig()).generate(prompts, params)]


@pytest.mark.parametrize("name", list(WIDE))
def test_window_beyond_max_model_len_is_full_attention(name, tiny_qwen3, wide_requests, full_attention_tokens):
    prompts, params = wide_requests
    swaa = WIDE[name]
    llm = wide_llm(tiny_qwen3[0], swaa)  # starts on the default budget
    outs = llm.generate(prompts, params)
    assert [o.token_ids for o in outs] == full_attention_tokens
    assert [len(o.token_ids) for o in outs] == [p.max_tokens for p in params]
    if llm.engine.cache.has_ring:
        assert ring_sizes_in_use(llm) == {min(swaa.sinks + swaa.window, MAX_LEN)}
        assert llm.engine.cache.rings.total >= 8
    assert llm.engine.cache.is_idle()


@pytest.mark.parametrize("budget", [None, int(1.5 * 8 * MAX_LEN * TINY_LAYERS * TINY_BYTES_PER_TOKEN)],
                         ids=["default budget", "1.5x eight full sequences"])
def test_issue_config_runs_eight_requests_at_once(budget, tiny_qwen3):
    """max_model_len=151, window=2000, sinks=4, max_num_seqs=8: eight requests in one batch, not one at a time."""
    rng = random.Random(8)
    prompts = [[rng.randrange(384) for _ in range(51)] for _ in range(8)]
    llm = LLM(tiny_qwen3[0], swaa=SWAAConfig(window=2000, sinks=4), max_model_len=MAX_LEN,
              scheduler=SchedulerConfig(max_num_seqs=8), cache=CacheConfig(budget_bytes=budget))
    eng = llm.engine
    assert eng.cache.rings.total >= 8
    for p in prompts:
        eng.add_request(p, SamplingParams(max_tokens=100, ignore_eos=True))
    most_running, done = 0, 0
    while eng.has_work():
        done += sum(c.finished for c in eng.step())
        most_running = max(most_running, eng.cache.usage()["ring"]["used"])  # rings sequences hold (not snapshots)
    assert done == 8 and most_running == 8
    # one prefill step for all eight prompts, then 99 decode steps (one at a time would take 8 x 100)
    assert eng.steps == 100
    assert eng.cache.is_idle()


def test_refusal_names_the_numbers(tiny_qwen3):
    ring_bytes = TINY_LAYERS * MAX_LEN * TINY_BYTES_PER_TOKEN
    with pytest.raises(ConfigError) as e:
        LLM(tiny_qwen3[0], swaa=SWAAConfig(window=2000, sinks=4), max_model_len=MAX_LEN,
            cache=CacheConfig(budget_bytes=ring_bytes - 1))
    msg = str(e.value)
    assert e.value.field == "cache"
    for fact in (f"{MAX_LEN} slots", f"{ring_bytes} bytes", f"{ring_bytes - 1} bytes", "--cache-bytes", "budget_bytes"):
        assert fact in msg, (fact, msg)
    # exactly one ring's bytes is enough to start (one sequence at a time)
    llm = LLM(tiny_qwen3[0], swaa=SWAAConfig(window=2000, sinks=4), max_model_len=MAX_LEN,
              cache=CacheConfig(budget_bytes=ring_bytes))
    assert llm.engine.cache.rings.total == 1
