"""Decode attention and the sink merge, shared by the backends: Triton kernels on CUDA, plain torch elsewhere.

The torch versions are the readable definition (and what runs on CPU); ``triton_ops`` holds the
kernels, checked against them and against float64.

Shared-prefix (cascade) decode, torch path on the CPU only: decode rows whose block tables start with
the same pages (n samples of one request, requests behind one cached system prompt) would each gather
and read that prefix's K/V once per row per step. ``plan_cascade`` groups them on the host once per
step; the torch decode then attends every group's queries to its prefix in one attention call (the
prefix read once, its LSE from torch's CPU flash kernel), each row's own remaining keys with their LSE,
and merges the two by log-sum-exp (``lse_merge``, the same merge the sinks use). Only paged decode
tables carry a plan: their rows attend to all their keys (full and fa_decode layers at decode); ring
tables never do, nor do CUDA's (Triton kernel unchanged).
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
    cascade: Cascade | None = None  # torch path: rows sharing a prefix of pages (None: every row on its own)


# A shared prefix pays off when its keys are read by several rows and are many: below 2 pages the
# extra matmul, gather and merge cost more than reading the keys per row.
CASCADE_MIN_BLOCKS = 2
CASCADE_MIN_ROWS = 2


@dataclass(frozen=True)
class SharedPrefix:
    """Rows whose first ``blocks`` pages are the same physical pages, every key of them valid for each row."""

    rows: torch.Tensor  # [g] int64 batch rows
    blocks: torch.Tensor  # [n] int64 page ids of the prefix


@dataclass(frozen=True)
class Cascade:
    groups: tuple[SharedPrefix, ...]
    grouped: torch.Tensor  # [G] int64 the groups' rows, group after group (the order of ``suffix``'s rows)
    suffix: DecodeTables  # the grouped rows' keys after their group's prefix
    rest: torch.Tensor  # [R] int64 rows in no group
    rest_tables: DecodeTables | None  # their tables, read as without a cascade (None: no such row)


def plan_cascade(tables, lens, page_size: int, device=None) -> Cascade | None:
    """For the CPU torch path (its flash kernel gives the prefix's LSE). Groups the rows of one decode step by shared prefix (None: no group). Heuristic: rows are bucketed by
    their first ``CASCADE_MIN_BLOCKS`` page ids; a bucket of at least ``CASCADE_MIN_ROWS`` rows shares the
    longest prefix of pages common to all its rows, capped at the shortest row's full pages (so every key
    of the prefix is valid for every row; a partly written page stays in each row's suffix). One level of
    bucketing only: rows that share a system prompt and, within it, a longer prompt share the shorter one."""
    buckets: dict[tuple, list[int]] = {}
    for r, (t, n) in enumerate(zip(tables, lens)):
        if len(t) >= CASCADE_MIN_BLOCKS and n >= CASCADE_MIN_BLOCKS * page_size:
            buckets.setdefault(tuple(t[:CASCADE_MIN_BLOCKS]), []).append(r)
    found = []
    for rows in buckets.values():
        if len(rows) < CASCADE_MIN_ROWS:
            continue
        first = tables[rows[0]]
        nb = min(min(lens[r] // page_size, len(tables[r])) for r in rows)
        for r in rows[1:]:
            t, k = tables[r], CASCADE_MIN_BLOCKS
            while k < nb and t[k] == first[k]:
                k += 1
            nb = k
        found.append((rows, nb))
    if not found:
        return None
    grouped = [r for rows, _ in found for r in rows]
    skip = {r: nb for rows, nb in found for r in rows}
    rest = [r for r in range(len(tables)) if r not in skip]
    long = lambda xs: torch.tensor(xs, dtype=torch.int64, device=device)  # noqa: E731
    groups = tuple(SharedPrefix(long(rows), long(list(tables[rows[0]][:nb]))) for rows, nb in found)
    suffix_lens = [lens[r] - skip[r] * page_size for r in grouped]
    suffix = DecodeTables(block_tables([tables[r][skip[r]:] for r in grouped], device),
                          torch.tensor(suffix_lens, dtype=torch.int32, device=device), page_size, max(suffix_lens))
    rest_tables = None
    if rest:
        rest_tables = DecodeTables(block_tables([tables[r] for r in rest], device),
                                   torch.tensor([lens[r] for r in rest], dtype=torch.int32, device=device),
                                   page_size, max(lens[r] for r in rest))
    return Cascade(groups, long(grouped), suffix, long(rest), rest_tables)


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
    if t.cascade is not None:
        return _cascade_decode(q, k_flat, v_flat, t.cascade, scale)
    k, v, mask = _gather(q, k_flat, v_flat, t)
    o = F.scaled_dot_product_attention(q.unsqueeze(2), k, v, attn_mask=mask, scale=scale, enable_gqa=True).squeeze(2)
    return torch.where(t.lens[:, None, None] > 0, o, 0.0)  # a row without keys: zeros, as the kernel gives


def _gather(q, k_flat, v_flat, t: DecodeTables):
    """Each row's keys/values ``[B, Hk, max_len, D]`` through its block table, and the ``[B, 1, 1, max_len]`` mask of
    the valid ones."""
    B, Hk, D = q.shape[0], k_flat.shape[1], k_flat.shape[2]
    pos = torch.arange(max(1, t.max_len), device=q.device)
    slots = (t.table.long()[:, pos // t.page_size] * t.page_size + pos % t.page_size).view(-1)
    # index_select on dim 0 is several times faster than advanced indexing on the CPU
    k = k_flat.index_select(0, slots).view(B, -1, Hk, D).transpose(1, 2)
    v = v_flat.index_select(0, slots).view(B, -1, Hk, D).transpose(1, 2)
    return k, v, (pos[None, :] < t.lens.long()[:, None])[:, None, None, :]


def _attend_lse(q, k, v, mask, scale: float):
    """``q`` [B, H, D] against ``k``/``v`` [B, Hk, S, D] (GQA: H = Hk * G) under ``mask`` [B, 1, 1, S]: the normalised
    output [B, H, D] and the LSE [B, H] in float32 (-inf and zeros for a row without keys)."""
    B, H, D = q.shape
    Hk = k.shape[1]
    qg = q.float().view(B, Hk, H // Hk, D)
    scores = torch.matmul(qg, k.float().transpose(-1, -2)) * scale  # [B, Hk, G, S]
    scores = scores.masked_fill(~mask, float("-inf"))
    lse = torch.logsumexp(scores, dim=-1)
    p = torch.exp(scores - torch.where(torch.isinf(lse), 0.0, lse)[..., None])
    return torch.matmul(p, v.float()).reshape(B, H, D), lse.reshape(B, H)


def _prefix_lse(q, k_flat, v_flat, g: SharedPrefix, page_size: int, scale: float):
    """The group's queries against its shared prefix, gathered once: [g, H, D] and LSE [g, H], float32."""
    n, H, D = q.shape
    Hk = k_flat.shape[1]
    G = H // Hk
    # whole pages: index pages, not slots; [1, Hk, L, D] views, no copy beyond the gather
    k = k_flat.view(-1, page_size, Hk, D).index_select(0, g.blocks).view(1, -1, Hk, D).transpose(1, 2)
    v = v_flat.view(-1, page_size, Hk, D).index_select(0, g.blocks).view(1, -1, Hk, D).transpose(1, 2)
    # every query of the group as rows of one attention per KV head: [1, Hk, n*G, D], the prefix read once.
    # The CPU flash kernel returns the LSE that SDPA drops (and runs 2x faster than matmul/logsumexp/exp/matmul).
    qh = q.view(n, Hk, G, D).transpose(0, 1).reshape(1, Hk, n * G, D)
    o, lse = torch.ops.aten._scaled_dot_product_flash_attention_for_cpu(qh, k, v, 0.0, False, scale=scale)[:2]
    return (o[0].float().view(Hk, n, G, D).transpose(0, 1).reshape(n, H, D),
            lse[0].float().view(Hk, n, G).transpose(0, 1).reshape(n, H))


def _cascade_decode(q, k_flat, v_flat, c: Cascade, scale: float) -> torch.Tensor:
    out = torch.empty_like(q)
    if c.rest_tables is not None:
        out[c.rest] = decode_attention_torch(q[c.rest], k_flat, v_flat, c.rest_tables, scale)
    qg = q.index_select(0, c.grouped)
    k, v, mask = _gather(qg, k_flat, v_flat, c.suffix)
    o_s, lse_s = _attend_lse(qg, k, v, mask, scale)
    parts = [_prefix_lse(q.index_select(0, g.rows), k_flat, v_flat, g, c.suffix.page_size, scale) for g in c.groups]
    o_p, lse_p = torch.cat([o for o, _ in parts]), torch.cat([lse for _, lse in parts])
    out[c.grouped] = lse_merge(o_p, lse_p, o_s, lse_s).to(q.dtype)
    return out


def lse_merge(o_a, lse_a, o_b, lse_b) -> torch.Tensor:
    """Attention over the union of two disjoint key sets from each set's normalised output [..., H, D] and LSE
    [..., H] (natural log; ``lse_b`` may be -inf: no keys in that set, ``lse_a`` must not be)."""
    total = torch.logaddexp(lse_a, lse_b)
    return o_a * torch.exp(lse_a - total)[..., None] + o_b * torch.exp(lse_b - total)[..., None]


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
    out.copy_(lse_merge(out.float(), lse, o_s, lse_s.reshape(n, H)).to(out.dtype))
