"""A slow pure-torch stand-in for flash-attn-4's ``flash_attn_varlen_func`` (the subset the `flash`
backend calls), so the backend's metadata, packing and sink merge are tested on CPU. Semantics as
documented by flash-attn: windows and causality align to the bottom-right of each (q, k) rectangle;
``lse`` is the natural-log sum of exp(scale * scores), shaped [heads, total_q]."""

from __future__ import annotations

import sys
import types

import torch


def flash_attn_varlen_func(q, k, v, cu_seqlens_q=None, max_seqlen_q=None, softmax_scale=None, causal=False,
                           window_size=(None, None), return_lse=False, page_table=None, seqused_k=None,
                           cu_seqlens_k=None, max_seqlen_k=None):
    H, d = q.shape[1], q.shape[2]
    out = torch.zeros_like(q)
    lse = torch.full((H, q.shape[0]), float("-inf"), dtype=torch.float32)
    left = window_size[0]
    for b in range(len(cu_seqlens_q) - 1):
        q0, q1 = int(cu_seqlens_q[b]), int(cu_seqlens_q[b + 1])
        if page_table is not None:
            keys = k[page_table[b].long()].reshape(-1, k.shape[-2], d)[: int(seqused_k[b])]
            vals = v[page_table[b].long()].reshape(-1, v.shape[-2], d)[: int(seqused_k[b])]
        else:
            k0, k1 = int(cu_seqlens_k[b]), int(cu_seqlens_k[b + 1])
            keys, vals = k[k0:k1], v[k0:k1]
        g = H // keys.shape[1]
        keys, vals = keys.float().repeat_interleave(g, 1), vals.float().repeat_interleave(g, 1)
        Lq, Lk = q1 - q0, keys.shape[0]
        qpos = torch.arange(Lq)[:, None] + (Lk - Lq)
        j = torch.arange(Lk)[None, :]
        visible = torch.ones(Lq, Lk, dtype=torch.bool)
        if causal:
            visible &= j <= qpos
        if left is not None:
            visible &= j >= qpos - left
        s = torch.einsum("qhd,khd->hqk", q[q0:q1].float(), keys) * softmax_scale
        s = s.masked_fill(~visible[None], float("-inf"))
        l = torch.logsumexp(s, -1)
        out[q0:q1] = torch.einsum("hqk,khd->qhd", torch.softmax(s, -1).nan_to_num(0.0), vals).to(q.dtype)
        lse[:, q0:q1] = l
    return out, (lse if return_lse else None)


def install(monkeypatch):
    """Import the `flash` backend against this stand-in, for one test (``monkeypatch`` undoes it all)."""
    import importlib
    import importlib.machinery

    pkg = types.ModuleType("flash_attn")
    cute = types.ModuleType("flash_attn.cute")
    # a spec, so libraries that probe for flash_attn (transformers) do not trip over the stand-in
    pkg.__spec__ = importlib.machinery.ModuleSpec("flash_attn", None)
    cute.__spec__ = importlib.machinery.ModuleSpec("flash_attn.cute", None)
    cute.flash_attn_varlen_func = flash_attn_varlen_func
    pkg.cute = cute
    name = "swaa_engine.attention.flash_backend"
    monkeypatch.setitem(sys.modules, "flash_attn", pkg)
    monkeypatch.setitem(sys.modules, "flash_attn.cute", cute)
    monkeypatch.delitem(sys.modules, name, raising=False)
    module = importlib.import_module(name)
    monkeypatch.setitem(sys.modules, name, module)  # undone after the test: the next import is a real one
    monkeypatch.setattr(module.FlashBackend, "supports", classmethod(lambda cls, device: True))
    return module
