"""The torch backend against a float64 reference on random inputs, through a real cache.

A random multi-sequence step is run chunk by chunk (decodes batched first, prefill chunks split
mid-window), writing keys into paged blocks and rings exactly as the engine does.
"""

import random

import pytest
import torch

from swaa_engine.attention.base import CacheGeometry, StepEntry, StepLayout, available_backends, create_backend
from swaa_engine.kv_cache.manager import CacheManager, KVShape, plan_pools
from swaa_engine.kv_cache.storage import allocate_kv
from swaa_engine.swaa import AttentionKind, LayerSpec, sliding_visible

H, HKV, D = 4, 2, 16


def reference(q, k, v, kind, window, sinks, num_prompt):
    """float64 attention of every token of one sequence over its own history."""
    L = q.shape[0]
    q, k, v = q.double(), k.double().repeat_interleave(H // HKV, 1), v.double().repeat_interleave(H // HKV, 1)
    out = torch.empty_like(q)
    for i in range(L):
        full = kind is AttentionKind.FULL or (kind is AttentionKind.SLIDING_FA_DECODE and i >= num_prompt)
        keys = [j for j in range(i + 1) if full or sliding_visible(i, j, window, sinks)]
        s = torch.einsum("hd,khd->hk", q[i], k[keys]) * D**-0.5
        out[i] = torch.einsum("hk,khd->hd", s.softmax(-1), v[keys])
    return out


@pytest.mark.parametrize("kind", list(AttentionKind))
@pytest.mark.parametrize("window,sinks", [(8, 0), (8, 3), (5, 2)])
def test_torch_backend_matches_float64(kind, window, sinks):
    torch.manual_seed(0)
    rng = random.Random(1)
    bs = 4
    spec = LayerSpec(0, kind, None if kind is AttentionKind.FULL else window, 0 if kind is AttentionKind.FULL else sinks)
    specs = (spec,)
    plan = plan_pools(specs, KVShape(HKV, D, 4), bs, 1 << 20, 8)
    mgr = CacheManager(specs, bs, plan.num_blocks, plan.num_rings)
    cache = allocate_kv(specs, plan, KVShape(HKV, D, 4), bs, torch.float32, torch.device("cpu"))[0]
    backend = create_backend("torch", torch.device("cpu"), geometry=CacheGeometry(bs, window, sinks), num_heads=H, num_kv_heads=HKV, head_dim=D)

    # three sequences: prompts of 23, 9, 1 tokens, then 15 generated tokens each
    from swaa_engine.sampling_params import SamplingParams
    from swaa_engine.sequence import Sequence

    lens = [23, 9, 1]
    total = [n + 15 for n in lens]
    qs = [torch.randn(t, H, D) for t in total]
    ks = [torch.randn(t, HKV, D) for t in total]
    vs = [torch.randn(t, HKV, D) for t in total]
    outs = [torch.zeros(t, H, D) for t in total]
    seqs = [Sequence(str(i), list(range(n)), SamplingParams()) for i, n in enumerate(lens)]
    done = [0, 0, 0]
    while any(done[i] < total[i] for i in range(3)):
        step = []
        for i, s in enumerate(seqs):
            if done[i] >= total[i]:
                continue
            n = 1 if done[i] >= lens[i] else min(rng.randint(1, 7), lens[i] - done[i])
            mgr.allocate(s, n)
            step.append((i, n))
        # decodes first, as the runner orders them
        step.sort(key=lambda x: not (x[1] == 1 and done[x[0]] >= lens[x[0]]))
        entries = tuple(StepEntry(done[i], n, lens[i], tuple(seqs[i].block_table), seqs[i].ring) for i, n in step)
        layout = StepLayout(entries, sum(e.is_decode for e in entries))
        meta = backend.prepare(layout)
        q = torch.cat([qs[i][done[i]:done[i] + n] for i, n in step]).reshape(-1, H * D)
        k = torch.cat([ks[i][done[i]:done[i] + n] for i, n in step]).reshape(-1, HKV * D)
        v = torch.cat([vs[i][done[i]:done[i] + n] for i, n in step])
        o = backend.forward(spec, q, k, v, cache, meta).view(-1, H, D)
        t = 0
        for i, n in step:
            outs[i][done[i]:done[i] + n] = o[t:t + n]
            t += n
            done[i] += n
            seqs[i].num_computed = done[i]
    for i in range(3):
        ref = reference(qs[i], ks[i], vs[i], kind, window, sinks, lens[i])
        rel = (outs[i].double() - ref).norm() / ref.norm()
        assert rel < 1e-5, (i, float(rel))


def test_registry():
    assert "torch" in available_backends()
    with pytest.raises(ValueError, match="unknown attention backend"):
        create_backend("nope", torch.device("cpu"))
    b = create_backend("auto", torch.device("cpu"), geometry=CacheGeometry(4, None, 0), num_heads=H, num_kv_heads=HKV, head_dim=D)
    assert b.name == "torch"
