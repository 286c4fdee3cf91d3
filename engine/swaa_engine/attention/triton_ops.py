"""Triton kernels for the two paths flash-attn-4 leaves slow on Hopper.

- ``decode_attention``: one query token per sequence against a paged or ring cache, split over
  the keys (split-KV). flash-attn-4 4.0.0b36 refuses split-KV on SM 9.0, and one CTA per
  (sequence, KV head) leaves most of the 132 SMs idle at small batches with long contexts. The
  grid is fixed by (batch, kv heads, splits) and each program finds its key range from the
  sequence length it reads on the device, so the call needs no host data per step and can be
  captured in a CUDA graph. A ring is one page of ``ring_slots`` slots (``kv_cache.pools.ring_size``).
- ``merge_sinks``: the sinks that fell out of a query's window, attended and merged by LSE into
  the window-only output in place, in one pass over the rows (no score tensor in memory).

Both run under ``TRITON_INTERPRET=1`` on CPU tensors, which is how CI checks them.
"""

from __future__ import annotations

import math

import torch
import triton
import triton.language as tl

_LOG2E = 1.4426950408889634


@triton.jit
def _decode_split_kernel(
    q_ptr, k_ptr, v_ptr, table_ptr, lens_ptr, o_ptr, lse_ptr,
    qk_scale, page_size, num_splits,
    stride_qb, stride_qh, stride_ks, stride_kh, stride_tb,
    G: tl.constexpr, G_PAD: tl.constexpr, D: tl.constexpr, BLOCK_N: tl.constexpr, MAX_SPLITS: tl.constexpr,
    UPCAST: tl.constexpr, PREC: tl.constexpr,
):
    b = tl.program_id(0)
    hk = tl.program_id(1)
    s = tl.program_id(2)
    L = tl.load(lens_ptr + b)
    per = tl.cdiv(tl.cdiv(L, num_splits), BLOCK_N) * BLOCK_N
    lo = s * per
    hi = tl.minimum(lo + per, L)

    g = tl.arange(0, G_PAD)
    d = tl.arange(0, D)
    q = tl.load(q_ptr + b * stride_qb + (hk * G + g)[:, None] * stride_qh + d[None, :], mask=(g < G)[:, None], other=0.0)
    if UPCAST:
        q = q.to(tl.float32)
    m = tl.full([G_PAD], float("-inf"), tl.float32)
    l = tl.zeros([G_PAD], tl.float32)
    acc = tl.zeros([G_PAD, D], tl.float32)
    for start in range(lo, hi, BLOCK_N):
        n = start + tl.arange(0, BLOCK_N)
        valid = n < hi
        page = tl.load(table_ptr + b * stride_tb + n // page_size, mask=valid, other=0)
        slot = page.to(tl.int64) * page_size + n % page_size
        kv_off = slot[:, None] * stride_ks + hk * stride_kh + d[None, :]
        k = tl.load(k_ptr + kv_off, mask=valid[:, None], other=0.0)
        if UPCAST:
            k = k.to(tl.float32)
        scores = tl.dot(q, tl.trans(k), input_precision=PREC) * qk_scale  # log2 domain
        scores = tl.where(valid[None, :], scores, float("-inf"))
        m_new = tl.maximum(m, tl.max(scores, 1))
        alpha = tl.exp2(m - m_new)
        p = tl.exp2(scores - m_new[:, None])
        l = l * alpha + tl.sum(p, 1)
        v = tl.load(v_ptr + kv_off, mask=valid[:, None], other=0.0)
        if UPCAST:
            v = v.to(tl.float32)
        acc = acc * alpha[:, None] + tl.dot(p.to(v.dtype), v, input_precision=PREC)
        m = m_new

    has = l > 0
    o = acc / tl.where(has, l, 1.0)[:, None]
    lse2 = tl.where(has, m + tl.log2(tl.where(has, l, 1.0)), float("-inf"))
    h = hk * G + g
    part = ((b * tl.num_programs(1) * G + h) * MAX_SPLITS + s).to(tl.int64)
    tl.store(o_ptr + part[:, None] * D + d[None, :], o, mask=(g < G)[:, None])
    tl.store(lse_ptr + part, lse2, mask=g < G)


@triton.jit
def _combine_kernel(
    o_part_ptr, lse_part_ptr, out_ptr, num_splits, stride_ob, stride_oh,
    D: tl.constexpr, MAX_SPLITS: tl.constexpr,
):
    b = tl.program_id(0)
    h = tl.program_id(1)
    H = tl.num_programs(1)
    s = tl.arange(0, MAX_SPLITS)
    d = tl.arange(0, D)
    base = ((b * H + h) * MAX_SPLITS).to(tl.int64)
    lse = tl.load(lse_part_ptr + base + s, mask=s < num_splits, other=float("-inf"))
    m = tl.max(lse, 0)
    m_safe = tl.where(m == float("-inf"), 0.0, m)
    w = tl.exp2(lse - m_safe)  # 0 for empty splits
    total = tl.sum(w, 0)
    o = tl.load(o_part_ptr + (base + s)[:, None] * D + d[None, :], mask=(s < num_splits)[:, None], other=0.0)
    res = tl.sum(o * w[:, None], 0) / tl.where(total > 0, total, 1.0)
    tl.store(out_ptr + b * stride_ob + h * stride_oh + d, res.to(out_ptr.dtype.element_ty))


def _interpreted(t: torch.Tensor) -> bool:
    # CPU tensors only run under TRITON_INTERPRET, whose numpy dot has no bfloat16: compute in float32 there
    return t.device.type != "cuda"


def _precision(t: torch.Tensor) -> str | None:
    # float32 caches ask for float32 accuracy: tl.dot would otherwise round its inputs to tf32
    return "ieee" if t.dtype == torch.float32 else None


def block_n_for(max_len: int, num_splits: int) -> int:
    """Keys per loop iteration: 128 once each split streams more than 4k keys (+19 % bandwidth at 2-6 x 128k on
    the H200, bench/decode_splits.py), 64 below, where the longer tile's padding and registers cost more."""
    return 128 if max_len > 4096 * num_splits else 64


def num_splits_for(batch: int, num_kv_heads: int, max_len: int, num_sms: int, block_n: int = 64, cap: int = 32) -> int:
    """Enough programs for about two waves over the SMs, never splits shorter than one key block."""
    want = max(1, math.ceil(2 * num_sms / max(1, batch * num_kv_heads)))
    return max(1, min(want, cap, math.ceil(max(1, max_len) / block_n)))


class DecodeWorkspace:
    """Per-split partial outputs, allocated once for the largest batch so calls allocate nothing."""

    def __init__(self, max_batch: int, num_heads: int, head_dim: int, max_splits: int, device: torch.device):
        self.max_splits = triton.next_power_of_2(max(1, max_splits))
        self.o = torch.empty(max_batch * num_heads * self.max_splits * head_dim, dtype=torch.float32, device=device)
        self.lse = torch.empty(max_batch * num_heads * self.max_splits, dtype=torch.float32, device=device)
        self.max_batch = max_batch


def decode_attention(
    q: torch.Tensor, k_cache: torch.Tensor, v_cache: torch.Tensor, table: torch.Tensor, lens: torch.Tensor,
    page_size: int, scale: float, num_splits: int, out: torch.Tensor, workspace: DecodeWorkspace,
    block_n: int = 64,
) -> torch.Tensor:
    """``q`` [B, H, D]; caches as flat ``[slots, Hk, D]`` views; ``table`` [B, P] int32 pages (a ring:
    [B, 1] ring ids with ``page_size`` = ring slots); ``lens`` [B] int32 keys per sequence (0 gives
    zeros). Writes ``out`` [B, H, D] (any row stride) and returns it."""
    B, H, D = q.shape
    Hk = k_cache.shape[1]
    G = H // Hk
    assert D >= 16 and D & (D - 1) == 0, f"head_dim {D} must be a power of two >= 16"
    assert B <= workspace.max_batch and num_splits <= workspace.max_splits
    assert q.stride(2) == 1 and k_cache.stride(2) == 1 and out.stride(2) == 1 and table.stride(1) == 1
    if B == 0:
        return out
    _decode_split_kernel[(B, Hk, num_splits)](
        q, k_cache, v_cache, table, lens, workspace.o, workspace.lse,
        scale * _LOG2E, page_size, num_splits,
        q.stride(0), q.stride(1), k_cache.stride(0), k_cache.stride(1), table.stride(0),
        G=G, G_PAD=max(16, triton.next_power_of_2(G)), D=D, BLOCK_N=block_n, MAX_SPLITS=workspace.max_splits,
        UPCAST=_interpreted(q), PREC=_precision(q), num_warps=4, num_stages=2,
    )
    _combine_kernel[(B, H)](
        workspace.o, workspace.lse, out, num_splits, out.stride(0), out.stride(1),
        D=D, MAX_SPLITS=workspace.max_splits, num_warps=4,
    )
    return out


@triton.jit
def _sink_merge_kernel(
    q_ptr, out_ptr, lse_ptr, k_ptr, v_ptr, sink_slots_ptr, pos_ptr,
    n_rows, n_sinks, window, qk_scale,
    stride_qt, stride_qh, stride_ot, stride_oh, stride_lt, stride_ks, stride_kh,
    G: tl.constexpr, D: tl.constexpr, BLOCK_M: tl.constexpr, S_PAD: tl.constexpr, UPCAST: tl.constexpr,
    PREC: tl.constexpr,
):
    mb = tl.program_id(0)
    h = tl.program_id(1)
    hk = h // G
    r = mb * BLOCK_M + tl.arange(0, BLOCK_M)
    rmask = r < n_rows
    d = tl.arange(0, D)
    j = tl.arange(0, S_PAD)
    jmask = j < n_sinks
    pos = tl.load(pos_ptr + r, mask=rmask, other=0)
    slots = tl.load(sink_slots_ptr + j, mask=jmask, other=0).to(tl.int64)
    k = tl.load(k_ptr + slots[:, None] * stride_ks + hk * stride_kh + d[None, :], mask=jmask[:, None], other=0.0)
    v = tl.load(v_ptr + slots[:, None] * stride_ks + hk * stride_kh + d[None, :], mask=jmask[:, None], other=0.0)
    q = tl.load(q_ptr + r[:, None].to(tl.int64) * stride_qt + h * stride_qh + d[None, :], mask=rmask[:, None], other=0.0)
    if UPCAST:
        q, k, v = q.to(tl.float32), k.to(tl.float32), v.to(tl.float32)
    scores = tl.dot(q, tl.trans(k), input_precision=PREC) * qk_scale  # [BLOCK_M, S_PAD], log2 domain
    # sink j lies outside query i's window when j <= i - W (inside, the window call already has it)
    visible = jmask[None, :] & (j[None, :] <= (pos[:, None] - window))
    scores = tl.where(visible, scores, float("-inf"))
    m = tl.max(scores, 1)
    has = m > float("-inf")
    m_safe = tl.where(has, m, 0.0)
    p = tl.exp2(scores - m_safe[:, None])
    l = tl.sum(p, 1)
    o_s = tl.dot(p.to(v.dtype), v, input_precision=PREC) / tl.where(has, l, 1.0)[:, None]
    lse_s = tl.where(has, m_safe + tl.log2(tl.where(has, l, 1.0)), float("-inf"))

    lse_w = tl.load(lse_ptr + r * stride_lt + h, mask=rmask, other=0.0) * 1.4426950408889634  # natural log -> log2
    mx = tl.maximum(lse_w, lse_s)
    w_w = tl.exp2(lse_w - mx)
    w_s = tl.exp2(lse_s - mx)
    tot = w_w + w_s
    o_ptrs = out_ptr + r[:, None].to(tl.int64) * stride_ot + h * stride_oh + d[None, :]
    o_w = tl.load(o_ptrs, mask=rmask[:, None], other=0.0).to(tl.float32)
    res = (o_w * (w_w / tot)[:, None] + o_s * (w_s / tot)[:, None]).to(out_ptr.dtype.element_ty)
    tl.store(o_ptrs, res, mask=(rmask & has)[:, None])


def merge_sinks(
    q: torch.Tensor, out: torch.Tensor, lse: torch.Tensor, k_cache: torch.Tensor, v_cache: torch.Tensor,
    sink_slots: torch.Tensor, positions: torch.Tensor, window: int, scale: float, block_m: int = 64,
) -> None:
    """Rows of one chunk: ``q``/``out`` [n, H, D] (``out`` holds the window-only result and is updated in
    place), ``lse`` [n, H] float32 natural-log LSE of the window call, ``positions`` [n] int32;
    ``sink_slots`` [k] flat cache slots of positions 0..k-1 of this chunk's sequence."""
    n, H, D = q.shape
    k = sink_slots.shape[0]
    if n == 0 or k == 0:
        return
    Hk = k_cache.shape[1]
    assert q.stride(2) == 1 and out.stride(2) == 1 and lse.stride(1) == 1 and k_cache.stride(2) == 1
    _sink_merge_kernel[(triton.cdiv(n, block_m), H)](
        q, out, lse, k_cache, v_cache, sink_slots, positions,
        n, k, window, scale * _LOG2E,
        q.stride(0), q.stride(1), out.stride(0), out.stride(1), lse.stride(0), k_cache.stride(0), k_cache.stride(1),
        G=H // Hk, D=D, BLOCK_M=block_m, S_PAD=max(16, triton.next_power_of_2(k)), UPCAST=_interpreted(q),
        PREC=_precision(q), num_warps=4,
    )
