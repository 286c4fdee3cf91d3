"""The cache tensors: one (K, V) pair per layer, shaped by the layer's pool."""

from __future__ import annotations

import torch

from swaa_engine.kv_cache.manager import KVShape, PoolPlan
from swaa_engine.swaa import CacheKind, LayerSpec


def allocate_kv(
    specs: tuple[LayerSpec, ...], plan: PoolPlan, kv: KVShape, block_size: int, dtype: torch.dtype, device: torch.device
) -> list[tuple[torch.Tensor, torch.Tensor]]:
    # zeros, not empty: masked-out slots must hold finite values (0 x NaN is NaN in attention kernels).
    # One unit past the plan (block ``num_blocks``, ring ``num_rings``) is scratch no sequence owns:
    # padded rows of a CUDA-graph decode write their keys there.
    shape_of = {
        CacheKind.PAGED: lambda s: (plan.num_blocks + 1, block_size, kv.num_kv_heads, kv.head_dim),
        CacheKind.RING: lambda s: (plan.num_rings + 1, s.ring_slots, kv.num_kv_heads, kv.head_dim),
    }
    caches = []
    for s in specs:
        shape = shape_of[s.cache_kind](s)
        caches.append((torch.zeros(shape, dtype=dtype, device=device), torch.zeros(shape, dtype=dtype, device=device)))
    return caches
