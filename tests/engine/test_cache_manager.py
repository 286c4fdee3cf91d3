import pytest

from swaa_engine.kv_cache.manager import CacheManager, KVShape, plan_pools
from swaa_engine.kv_cache.pools import BlockPool, FreeList, OutOfSlotsError, ring_slot
from swaa_engine.sampling_params import SamplingParams
from swaa_engine.sequence import Sequence
from swaa_engine.swaa import SWAAConfig, sliding_visible

KV = KVShape(num_kv_heads=2, head_dim=8, dtype_bytes=4)  # 128 bytes per token per layer


def seq(n, rid="r"):
    return Sequence(rid, list(range(n)), SamplingParams())


def test_free_list_o1_and_double_free():
    fl = FreeList(3, "thing")
    a, b = fl.allocate(), fl.allocate()
    assert fl.num_free == 1 and fl.num_used == 2
    fl.free(a)
    with pytest.raises(ValueError):
        fl.free(a)
    fl.allocate(), fl.allocate()
    with pytest.raises(OutOfSlotsError):
        fl.allocate()
    assert BlockPool(4, 16).blocks_for(33) == 3


@pytest.mark.parametrize("sinks,window", [(0, 4), (2, 4), (3, 1), (5, 7)])
def test_ring_holds_exactly_the_visible_keys(sinks, window):
    """After writing positions 0..i in order, the ring holds exactly {j : sliding_visible(i, j)}."""
    slots = {}
    for i in range(40):
        slots[ring_slot(i, sinks, window)] = i
        assert len(slots) <= sinks + window
        held = set(slots.values())
        assert held == {j for j in range(i + 1) if sliding_visible(i, j, window, sinks)}


def test_plan_pools_splits_the_budget():
    specs = SWAAConfig(window=8, sinks=2, fa_layers="odd").layer_specs(4)  # 2 ring, 2 paged
    plan = plan_pools(specs, KV, block_size=4, budget_bytes=100_000, max_num_seqs=10)
    assert plan.ring_bytes == 2 * 10 * 128 and plan.block_bytes == 2 * 4 * 128
    assert plan.num_rings == 10
    assert plan.num_blocks == (100_000 - 10 * plan.ring_bytes) // plan.block_bytes
    assert plan.total_bytes <= 100_000
    all_ring = plan_pools(SWAAConfig(window=8).layer_specs(4), KV, 4, 100_000, 10)
    assert all_ring.num_blocks == 0 and all_ring.num_rings == 100_000 // (4 * 8 * 128)
    full = plan_pools(SWAAConfig().layer_specs(4), KV, 4, 100_000, 10)
    assert full.num_rings == 0 and full.num_blocks == 100_000 // (4 * 4 * 128)


def held_bytes(mgr, s, plan):
    return len(s.block_table) * plan.block_bytes + (plan.ring_bytes if s.ring is not None else 0)


def test_memory_law_ring_constant_paged_grows_per_block():
    """All-ring: bytes per sequence stay constant as it grows; paged layers grow a block per block_size tokens."""
    bs = 4
    for cfg, grows in [(SWAAConfig(window=8, sinks=2), False), (SWAAConfig(window=8, sinks=2, fa_decode=True), True),
                       (SWAAConfig(window=8, sinks=2, fa_layers="odd"), True)]:
        specs = cfg.layer_specs(4)
        plan = plan_pools(specs, KV, bs, 1 << 22, 4)
        mgr = CacheManager(specs, bs, plan.num_blocks, plan.num_rings)
        s = seq(1)
        held = []
        for n in range(1, 41):
            assert mgr.can_allocate(s, 1)
            mgr.allocate(s, 1)
            s.num_computed += 1
            held.append(held_bytes(mgr, s, plan))
        if grows:
            assert held == [plan.ring_bytes * (s.ring is not None) + -(-n // bs) * plan.block_bytes for n in range(1, 41)]
        else:
            assert len(set(held)) == 1 and held[0] == plan.ring_bytes
        mgr.free(s)
        assert mgr.is_idle()


def test_ring_admission_limits_running_sequences():
    specs = SWAAConfig(window=8).layer_specs(2)
    mgr = CacheManager(specs, 4, 0, 2)
    a, b, c = seq(3, "a"), seq(3, "b"), seq(3, "c")
    for s in (a, b):
        assert mgr.can_allocate(s, 3)
        mgr.allocate(s, 3)
    assert not mgr.can_allocate(c, 3)
    mgr.free(a)
    assert mgr.can_allocate(c, 3)
    assert mgr.usage()["ring"] == {"used": 1, "cached": 0, "total": 2}
