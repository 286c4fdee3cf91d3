"""The default KV budget: what the configuration can use, within a fraction of free memory and, on CPU, a cap."""

import pytest

from swaa_engine.config import CacheConfig, ConfigError, EngineConfig, SchedulerConfig
from swaa_engine.swaa import SWAAConfig

GiB = 1 << 30


def test_explicit_bytes_win():
    assert CacheConfig(budget_bytes=123).resolve_budget(10 * GiB, 100 * GiB, on_cpu=True) == (123, "set by budget_bytes (--cache-bytes)")


def test_cpu_default_is_capped():
    size, why = CacheConfig().resolve_budget(need_bytes=24 * GiB, free_bytes=21 * GiB, on_cpu=True)
    assert size == 512 << 20 and "CPU cap" in why


def test_no_cap_on_a_gpu_and_never_more_than_needed():
    assert CacheConfig().resolve_budget(24 * GiB, 100 * GiB, on_cpu=False) == (24 * GiB, "what max_num_seqs x max_model_len can use")
    size, why = CacheConfig().resolve_budget(24 * GiB, 10 * GiB, on_cpu=False)
    assert size == 5 * GiB and "free memory" in why
    assert CacheConfig().resolve_budget(GiB // 4, 100 * GiB, on_cpu=True)[0] == GiB // 4
    assert CacheConfig(cpu_cap_bytes=None).resolve_budget(24 * GiB, 10 * GiB, on_cpu=True)[0] == 5 * GiB


def test_cap_validated_with_its_field_named():
    with pytest.raises(ConfigError) as e:
        CacheConfig(cpu_cap_bytes=0)
    assert e.value.field == "cpu_cap_bytes"


def _engine(folder, swaa, **cache):
    from swaa_engine.engine import LLMEngine

    return LLMEngine(EngineConfig(model=folder, swaa=swaa, max_model_len=512, cache=CacheConfig(block_size=8, **cache),
                                  scheduler=SchedulerConfig(max_num_seqs=4)))


def test_engine_default_holds_exactly_max_num_seqs_full_sequences(tiny_qwen3):
    """Paged layers get max_num_seqs x max_model_len tokens of blocks, ring layers one ring per sequence."""
    folder, _ = tiny_qwen3
    e = _engine(folder, SWAAConfig(window=16, sinks=2, fa_layers=[1]), prefix_caching=False)
    assert e.cache.blocks.total == 4 * 512 // 8 and e.cache.rings.total == 4
    assert e.cache_budget_reason == "what max_num_seqs x max_model_len can use"
    ring_only = _engine(folder, SWAAConfig(window=16, sinks=2), prefix_caching=False)  # four rings and nothing else
    assert ring_only.cache.rings.total == 4 and ring_only.pool_plan.total_bytes == 4 * ring_only.pool_plan.ring_bytes
    # prefix caching adds rings for ring snapshots (min(16, max_num_seqs)), and the budget grows by as much
    e = _engine(folder, SWAAConfig(window=16, sinks=2, fa_layers=[1]))
    assert e.cache.blocks.total == 4 * 512 // 8 and e.cache.rings.total == 4 + 4


def test_engine_cap_too_small_says_which_limit(tiny_qwen3):
    folder, _ = tiny_qwen3
    with pytest.raises(ConfigError) as e:
        _engine(folder, SWAAConfig(), cpu_cap_bytes=1024)
    assert "CPU cap" in str(e.value) and "max_model_len=512" in str(e.value)


def test_capped_budget_still_holds_a_full_length_sequence_beside_the_rings(tiny_qwen3):
    """Rings are planned first, one per running sequence: under a cap they once took every byte (the embedded model's
    half-ring config then held 896 tokens of paged KV and `swaa eval` refused to start)."""
    folder, _ = tiny_qwen3
    probe = _engine(folder, SWAAConfig(window=16, sinks=2, fa_layers=[1]))
    unit = probe.pool_plan
    one_seq = 512 // 8 * unit.block_bytes
    cap = one_seq + 2 * unit.ring_bytes + unit.block_bytes  # room for one full sequence and two rings
    e = _engine(folder, SWAAConfig(window=16, sinks=2, fa_layers=[1]), cpu_cap_bytes=cap)
    assert e.cache_budget_reason.startswith("the CPU cap")
    assert e.cache.max_tokens_per_seq() >= 512 and e.cache.rings.total == 2
