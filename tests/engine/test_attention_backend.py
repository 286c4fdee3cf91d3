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


def reference(q, k, v, kind, window, sinks, num_prompt, tail=0):
    """float64 attention of every token of one sequence over its own history (under fa_decode the last ``tail``
    prompt tokens attend fully, as generated ones do)."""
    L, h, hkv, d = q.shape[0], q.shape[1], k.shape[1], q.shape[2]
    q, k, v = q.double(), k.double().repeat_interleave(h // hkv, 1), v.double().repeat_interleave(h // hkv, 1)
    out = torch.empty_like(q)
    for i in range(L):
        full = kind is AttentionKind.FULL or (kind is AttentionKind.SLIDING_FA_DECODE and i >= num_prompt - tail)
        keys = [j for j in range(i + 1) if full or sliding_visible(i, j, window, sinks)]
        s = torch.einsum("hd,khd->hk", q[i], k[keys]) * d**-0.5
        out[i] = torch.einsum("hk,khd->hd", s.softmax(-1), v[keys])
    return out


def run_backend(name, device, dtype, kind, window, sinks, *, heads=(H, HKV, D), block_size=4, lens=(23, 9, 1),
                generated=15, max_chunk=7, seed=0, tail=0):
    """Random sequences stepped through a real cache (decodes batched first, prefill chunks of random size);
    returns the largest relative error against float64 over the sequences."""
    from swaa_engine.sampling_params import SamplingParams
    from swaa_engine.sequence import Sequence

    h, hkv, d = heads
    torch.manual_seed(seed)
    rng = random.Random(seed + 1)
    dev = torch.device(device)
    spec = LayerSpec(0, kind, None if kind is AttentionKind.FULL else window, 0 if kind is AttentionKind.FULL else sinks)
    specs = (spec,)
    kv = KVShape(hkv, d, torch.tensor([], dtype=dtype).element_size())
    plan = plan_pools(specs, kv, block_size, 1 << 26, 8)
    mgr = CacheManager(specs, block_size, plan.num_blocks, plan.num_rings)
    cache = allocate_kv(specs, plan, kv, block_size, dtype, dev)[0]
    backend = create_backend(name, dev, geometry=CacheGeometry(block_size, window, sinks), num_heads=h, num_kv_heads=hkv, head_dim=d)

    n_seq = len(lens)
    total = [n + generated for n in lens]
    qs = [torch.randn(t, h, d) for t in total]
    ks = [torch.randn(t, hkv, d) for t in total]
    vs = [torch.randn(t, hkv, d) for t in total]
    outs = [torch.zeros(t, h, d) for t in total]
    seqs = [Sequence(str(i), list(range(n)), SamplingParams()) for i, n in enumerate(lens)]
    done = [0] * n_seq
    while any(done[i] < total[i] for i in range(n_seq)):
        step = []
        for i, s in enumerate(seqs):
            if done[i] >= total[i]:
                continue
            n = 1 if done[i] >= lens[i] else min(rng.randint(1, max_chunk), lens[i] - done[i])
            mgr.allocate(s, n)
            step.append((i, n))
        # decodes first, as the runner orders them
        step.sort(key=lambda x: not (x[1] == 1 and done[x[0]] >= lens[x[0]]))
        entries = tuple(StepEntry(done[i], n, lens[i], tuple(seqs[i].block_table), seqs[i].ring,
                                  max(0, lens[i] - tail) if tail else None) for i, n in step)
        layout = StepLayout(entries, sum(e.is_decode for e in entries))
        meta = backend.prepare(layout)
        q = torch.cat([qs[i][done[i]:done[i] + n] for i, n in step]).reshape(-1, h * d).to(dev, dtype)
        k = torch.cat([ks[i][done[i]:done[i] + n] for i, n in step]).reshape(-1, hkv * d).to(dev, dtype)
        v = torch.cat([vs[i][done[i]:done[i] + n] for i, n in step]).to(dev, dtype)
        o = backend.forward(spec, q, k, v, cache, meta).view(-1, h, d).float().cpu()
        t = 0
        for i, n in step:
            outs[i][done[i]:done[i] + n] = o[t:t + n]
            t += n
            done[i] += n
            seqs[i].num_computed = done[i]
    worst = 0.0
    for i in range(n_seq):
        ref = reference(qs[i].to(dtype).float(), ks[i].to(dtype).float(), vs[i].to(dtype).float(), kind, window, sinks, lens[i], tail)
        worst = max(worst, float((outs[i].double() - ref).norm() / ref.norm()))
    return worst


@pytest.mark.parametrize("kind", list(AttentionKind))
@pytest.mark.parametrize("window,sinks", [(8, 0), (8, 3), (5, 2)])
def test_torch_backend_matches_float64(kind, window, sinks):
    assert run_backend("torch", "cpu", torch.float32, kind, window, sinks) < 1e-5


@pytest.mark.parametrize("tail", [0, 5])
@pytest.mark.parametrize("window,sinks", [(8, 3), (5, 0)])
def test_windowed_chunks_read_by_row_pieces_match_float64(window, sinks, tail, monkeypatch):
    """Long fa_decode chunks are split into row pieces that read only the keys they can see (the sinks and the
    window before them; every key for question-tail rows): pieces of 3 rows over chunks up to 30."""
    from swaa_engine.attention import torch_backend

    monkeypatch.setattr(torch_backend, "WINDOW_ROWS", 3)
    err = run_backend("torch", "cpu", torch.float32, AttentionKind.SLIDING_FA_DECODE, window, sinks, lens=(47, 23, 9),
                      max_chunk=30, tail=tail)
    assert err < 1e-5


def test_registry():
    assert "torch" in available_backends()
    with pytest.raises(ValueError, match="unknown attention backend"):
        create_backend("nope", torch.device("cpu"))
    b = create_backend("auto", torch.device("cpu"), geometry=CacheGeometry(4, None, 0), num_heads=H, num_kv_heads=HKV, head_dim=D)
    assert b.name == "torch"


@pytest.mark.parametrize("kind", list(AttentionKind))
@pytest.mark.parametrize("window,sinks,block_size", [(8, 0, 4), (8, 3, 4), (5, 2, 8), (16, 4, 16)])
def test_flash_backend_logic_with_an_emulated_kernel(kind, window, sinks, block_size, monkeypatch):
    """The `flash` backend's metadata, ring packing and sink merge on CPU, with a pure-torch stand-in
    for the flash-attn-4 kernel (the real kernel is checked by tests/gpu)."""
    import importlib.util

    from tests import fake_fa4

    if importlib.util.find_spec("flash_attn") is not None:
        pytest.skip("the real flash-attn-4 is installed: tests/gpu checks it")
    fake_fa4.install(monkeypatch)
    err = run_backend("flash", "cpu", torch.float32, kind, window, sinks, block_size=block_size, lens=(23, 9, 1, 40))
    assert err < 1e-5, err


def _fake_fa4_refusing(monkeypatch, refuse):
    """The emulated kernel, made to fail the way a real one may: ``refuse(q, k) -> "raise" | "wrong" | None``."""
    from tests import fake_fa4

    module = fake_fa4.install(monkeypatch)
    real = fake_fa4.flash_attn_varlen_func

    def kernel(q, k, v, **kw):
        how = refuse(q, k)
        if how == "raise":
            raise AssertionError(f"(head_dim, head_dim_v)=({q.shape[-1]}, {v.shape[-1]}) is not supported")
        out, lse = real(q, k, v, **kw)
        return (torch.zeros_like(out) if how == "wrong" else out), lse

    monkeypatch.setattr(module, "flash_attn_varlen_func", kernel)
    return module


@pytest.mark.parametrize("how", ["raise", "wrong"])
@pytest.mark.parametrize("name", ["flash", "auto"])
def test_a_kernel_refusing_a_head_dim_falls_back_with_a_warning(how, name, monkeypatch, caplog):
    """flash-attn-4 may refuse (or miscompute) a head_dim such as Gemma 3's 256: the backend's probe finds it
    before serving and the engine falls back to the torch backend, logging why, instead of failing its first
    step. Other shapes keep the flash backend."""
    import logging

    import importlib.util

    if importlib.util.find_spec("flash_attn") is not None:
        pytest.skip("the real flash-attn-4 is installed: tests/gpu checks it")
    _fake_fa4_refusing(monkeypatch, lambda q, k: how if q.shape[-1] == 256 else None)
    geo = CacheGeometry(16, 64, 4)
    with caplog.at_level(logging.WARNING, logger="swaa_engine.attention.base"):
        b = create_backend(name, torch.device("cpu"), geometry=geo, num_heads=4, num_kv_heads=1, head_dim=256)
    assert b.name == "torch"
    said = " ".join(r.getMessage() for r in caplog.records)
    assert "head_dim 256" in said and ("not supported" in said if how == "raise" else "off by" in said), said
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="swaa_engine.attention.base"):
        b = create_backend(name, torch.device("cpu"), geometry=geo, num_heads=4, num_kv_heads=1, head_dim=128)
    assert b.name == "flash" and not caplog.records
