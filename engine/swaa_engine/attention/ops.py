"""Decode attention and the sink merge, shared by the backends: Triton kernels on CUDA, plain torch elsewhere.

The torch versions are the readable definition (and what runs on CPU); ``triton_ops`` holds the
kernels, checked against them and against float64.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from swaa_engine.transfer import upload


@dataclass(frozen=True)
class DecodeTables:
    """One decode query per sequence against a paged cache (or a ring: one page of ring slots)."""

    table: torch.Tensor  # [B, P] int32 page ids
    lens: torch.Tensor  # [B] int32 keys per sequence (0: a padded row, output zeros)
    page_size: int
    max_len: int  # host bound on ``lens``: sizes the torch gather and the split count
    num_splits: int = 1


def block_tables(tables, device=None) -> torch.Tensor:
    """``[len(tables), longest]`` int32, each row a sequence's block table padded with block 0 (never read
    past the sequence's length)."""
    width = max(1, max(len(t) for t in tables))
    host = torch.tensor([list(t) + [0] * (width - len(t)) for t in tables], dtype=torch.int32)
    return host if device is None else upload(host, torch.int32, device)


@functools.cache  # asked on every sink merge: the answer cannot change within a process
def uses_triton(device: torch.device) -> bool:
    if device.type != "cuda":
        return False
    try:
        import swaa_engine.attention.triton_ops  # noqa: F401
    except ImportError:
        return False
    return True


class DecodeKernel:
    """Holds the split-KV workspace; grows it outside CUDA-graph capture (``reserve`` before capturing)."""

    def __init__(self, num_heads: int, head_dim: int, device: torch.device):
        self.num_heads, self.head_dim, self.device = num_heads, head_dim, device
        # the kernel tiles head_dim whole: powers of two from 16 (Llama, Qwen, Mistral: 64 or 128)
        self.triton = uses_triton(device) and head_dim >= 16 and head_dim & (head_dim - 1) == 0
        self.num_sms = torch.cuda.get_device_properties(device).multi_processor_count if self.triton else 1
        self._ws = None
        self._retired: list = []

    def splits(self, batch: int, num_kv_heads: int, max_len: int) -> int:
        if not self.triton:
            return 1
        from swaa_engine.attention.triton_ops import num_splits_for

        return num_splits_for(batch, num_kv_heads, max_len, self.num_sms)

    def reserve(self, batch: int, splits: int) -> None:
        if not self.triton:
            return
        from swaa_engine.attention.triton_ops import DecodeWorkspace

        ws = self._ws
        if ws is None or ws.max_batch < batch or ws.max_splits < splits:
            b = max(batch, ws.max_batch if ws else 0)
            s = max(splits, ws.max_splits if ws else 0)
            if ws is not None:
                # captured CUDA graphs hold this workspace's addresses: it must outlive the switch
                self._retired.append(ws)
            self._ws = DecodeWorkspace(b, self.num_heads, self.head_dim, s, self.device)

    def __call__(self, q, k_flat, v_flat, t: DecodeTables, scale: float, out: torch.Tensor) -> None:
        """``q``/``out`` [B, H, D]; caches as flat ``[slots, Hk, D]`` views."""
        if self.triton:
            from swaa_engine.attention.triton_ops import block_n_for, decode_attention

            if not torch.cuda.is_current_stream_capturing():
                self.reserve(q.shape[0], t.num_splits)
            decode_attention(q, k_flat, v_flat, t.table, t.lens, t.page_size, scale, t.num_splits, out, self._ws,
                             block_n=block_n_for(t.max_len, t.num_splits))
        else:
            out.copy_(decode_attention_torch(q, k_flat, v_flat, t, scale))


def decode_attention_torch(q, k_flat, v_flat, t: DecodeTables, scale: float) -> torch.Tensor:
    B, H, D = q.shape
    Hk = k_flat.shape[1]
    pos = torch.arange(max(1, t.max_len), device=q.device)
    slots = (t.table.long()[:, pos // t.page_size] * t.page_size + pos % t.page_size).view(-1)
    # index_select on dim 0 is several times faster than advanced indexing on the CPU
    k = k_flat.index_select(0, slots).view(B, -1, Hk, D).transpose(1, 2)
    v = v_flat.index_select(0, slots).view(B, -1, Hk, D).transpose(1, 2)
    mask = (pos[None, :] < t.lens.long()[:, None])[:, None, None, :]
    o = F.scaled_dot_product_attention(q.unsqueeze(2), k, v, attn_mask=mask, scale=scale, enable_gqa=True).squeeze(2)
    return torch.where(t.lens[:, None, None] > 0, o, 0.0)  # a row without keys: zeros, as the kernel gives


def merge_sinks(q, out, lse, k_flat, v_flat, sink_slots, positions, window: int, scale: float) -> None:
    """Adds the sinks outside the window to window-only rows in place: softmax over (window ∪ sinks) by
    LSE merge. ``q``/``out`` [n, H, D], ``lse`` [n, H] float32 (natural log), ``positions`` [n] int32,
    ``sink_slots`` [k] flat slots of positions 0..k-1."""
    if q.device.type == "cuda" and uses_triton(q.device):
        from swaa_engine.attention.triton_ops import merge_sinks as kernel

        kernel(q, out, lse, k_flat, v_flat, sink_slots, positions, window, scale)
    else:
        merge_sinks_torch(q, out, lse, k_flat, v_flat, sink_slots, positions, window, scale)


def merge_sinks_torch(q, out, lse, k_flat, v_flat, sink_slots, positions, window: int, scale: float) -> None:
    n, H, D = q.shape
    Hk = k_flat.shape[1]
    ks, vs = k_flat.index_select(0, sink_slots).float(), v_flat.index_select(0, sink_slots).float()  # [k, Hk, d]
    qs = q.float().view(n, Hk, H // Hk, D)
    scores = torch.einsum("nhgd,khd->nhgk", qs, ks) * scale
    j = torch.arange(sink_slots.shape[0], device=q.device)
    visible = (j[None, :] <= (positions.long()[:, None] - window))[:, None, None, :]
    scores = scores.masked_fill(~visible, float("-inf"))
    lse_s = torch.logsumexp(scores, dim=-1)  # -inf where no sink is outside the window
    p = torch.exp(scores - torch.where(torch.isinf(lse_s), 0.0, lse_s)[..., None])
    o_s = torch.einsum("nhgk,khd->nhgd", p, vs).reshape(n, H, D)
    lse_s = lse_s.reshape(n, H)
    total = torch.logaddexp(lse, lse_s)
    w_w, w_s = torch.exp(lse - total)[..., None], torch.exp(lse_s - total)[..., None]
    out.copy_((out.float() * w_w + o_s * w_s).to(out.dtype))
