"""Reference-grade attention on plain PyTorch: SDPA with explicit masks (runs on any device).

Decodes are batched through the shared decode op (``ops``: on CPU a gather through the block table
or ring padded to the longest and masked by length; on CUDA the split-KV Triton kernel). Prefill
chunks run one sequence at a time with an explicit SWAA mask.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
import torch.nn.functional as F

from swaa_engine.attention.base import AttentionBackend, StepLayout, cache_writes
from swaa_engine.attention.masks import swaa_mask
from swaa_engine.attention.ops import DecodeTables
from swaa_engine.kv_cache.pools import ring_slot
from swaa_engine.swaa import AttentionKind
from swaa_engine.transfer import upload


# Query rows per piece of a windowed prefill chunk: each piece reads only the keys its rows can see (sinks and
# the window before its first row), not the whole context, which costs the masked pairs too on CPU
WINDOW_ROWS = 256


@dataclass
class _Piece:
    rows: slice  # rows of the chunk
    idx: torch.Tensor  # flat paged slots of the keys these rows may see
    mask: torch.Tensor  # [rows, keys]


@dataclass
class _Prefill:
    tok: slice  # this chunk's rows in the packed batch
    paged_idx: torch.Tensor  # flat paged slots of keys 0..end-1 (after this chunk is written)
    paged_masks: dict[AttentionKind, torch.Tensor]  # [q, end] per paged attention kind
    ring_past_idx: torch.Tensor  # flat ring slots of the sinks and the previous W-1 keys
    ring_mask: torch.Tensor  # [q, len(past) + q]
    window_pieces: list[_Piece] = field(default_factory=list)  # SLIDING_FA_DECODE: the chunk by row pieces


def window_pieces(e, bs: int, W: int, S: int, dev) -> list[_Piece]:
    """A windowed paged chunk as pieces of rows, each with the keys some row of it sees: prompt rows (before
    ``full_start``) WINDOW_ROWS at a time, the sinks and the window before them; rows that attend fully (generated
    and question-tail rows under fa_decode) every earlier key. Masked keys add exactly nothing to a row's softmax;
    leaving them out changes only how the sums are grouped."""
    tab = torch.tensor(e.block_table, dtype=torch.long)
    pieces = []
    split = min(max(e.start, e.full_start), e.end)
    for a in range(e.start, split, WINDOW_ROWS):
        b = min(a + WINDOW_ROWS, split)
        k_pos = torch.cat([torch.arange(min(S, a)), torch.arange(max(min(S, a), a - W + 1), b)])
        q_pos = torch.arange(a, b)
        # pinned and asynchronous (transfer.upload): a long chunk has many pieces, and a pageable .to(dev) stalls the
        # host until every kernel queued before it has run
        pieces.append(_Piece(slice(a - e.start, b - e.start), upload(tab[k_pos // bs] * bs + k_pos % bs, torch.long, dev),
                             upload(swaa_mask(q_pos, k_pos, W, S), torch.bool, dev)))
    if split < e.end:
        q_pos, k_pos = torch.arange(split, e.end), torch.arange(e.end)
        pieces.append(_Piece(slice(split - e.start, e.num_tokens), upload(tab[k_pos // bs] * bs + k_pos % bs, torch.long, dev),
                             upload(swaa_mask(q_pos, k_pos, None, 0), torch.bool, dev)))
    return pieces


@dataclass
class TorchMeta:
    num_decodes: int
    paged_write: torch.Tensor | None  # [T] flat paged slot per token
    ring_write_tok: torch.Tensor | None  # tokens whose keys survive in the ring after this step
    ring_write_slot: torch.Tensor | None
    dec_paged: DecodeTables | None = None
    dec_ring: DecodeTables | None = None
    prefills: list[_Prefill] = field(default_factory=list)


class TorchBackend(AttentionBackend):
    name = "torch"

    def prepare(self, layout: StepLayout) -> TorchMeta:
        g, dev = self.geometry, self.device
        bs, W, S, R = g.block_size, g.window, g.sinks, g.ring_slots
        has_ring = any(e.ring is not None for e in layout.entries)
        has_paged = any(e.block_table for e in layout.entries)

        def as_long(x):
            return upload(x, torch.long, dev)

        writes = cache_writes(layout, g)
        meta = TorchMeta(
            num_decodes=layout.num_decodes,
            paged_write=as_long(writes.paged_slots) if has_paged else None,
            ring_write_tok=as_long(writes.ring_tokens) if has_ring else None,
            ring_write_slot=as_long(writes.ring_slots) if has_ring else None,
        )

        decodes = layout.entries[: layout.num_decodes]
        meta.dec_paged, meta.dec_ring = self.decode_tables(layout)

        t = sum(e.num_tokens for e in decodes)
        for e in layout.entries[layout.num_decodes :]:
            q_pos = torch.arange(e.start, e.end)
            pre = _Prefill(tok=slice(t, t + e.num_tokens), paged_idx=None, paged_masks={}, ring_past_idx=None, ring_mask=None)
            if has_paged:
                k_pos = torch.arange(e.end)
                tab = torch.tensor(e.block_table, dtype=torch.long)
                pre.paged_idx = (tab[k_pos // bs] * bs + k_pos % bs).to(dev)
                pre.paged_masks[AttentionKind.FULL] = swaa_mask(q_pos, k_pos, None, 0).to(dev)
                if W is not None:
                    pre.window_pieces = window_pieces(e, bs, W, S, dev)
            if has_ring:
                past = list(range(min(S, e.start))) + list(range(max(S, e.start - W + 1), e.start))
                pre.ring_past_idx = as_long([e.ring * R + ring_slot(p, S, W) for p in past])
                k_pos = torch.cat([torch.tensor(past, dtype=torch.long), q_pos])
                pre.ring_mask = swaa_mask(q_pos, k_pos, W, S).to(dev)
            meta.prefills.append(pre)
            t += e.num_tokens
        return meta

    def decode_only_meta(self, num, paged_write, ring_write_tok, ring_write_slot, paged, ring) -> TorchMeta:
        return TorchMeta(num_decodes=num, paged_write=paged_write, ring_write_tok=ring_write_tok,
                         ring_write_slot=ring_write_slot, dec_paged=paged, dec_ring=ring)

    def forward(self, spec, q, k, v, cache, meta: TorchMeta):
        T = q.shape[0]
        q, k, v, kflat, vflat = self.heads(q, k, v, cache)
        out = torch.empty_like(q)
        ring = spec.kind is AttentionKind.SLIDING_RING

        if ring:
            # Prefill chunks read the ring's old contents before this step overwrites them.
            ctx = [(kflat.index_select(0, p.ring_past_idx), vflat.index_select(0, p.ring_past_idx)) for p in meta.prefills]
            kflat.index_copy_(0, meta.ring_write_slot, k[meta.ring_write_tok])
            vflat.index_copy_(0, meta.ring_write_slot, v[meta.ring_write_tok])
        else:
            kflat.index_copy_(0, meta.paged_write, k)
            vflat.index_copy_(0, meta.paged_write, v)

        dec = meta.dec_ring if ring else meta.dec_paged
        if dec is not None:
            self.decode(dec, q, kflat, vflat, out)

        for i, p in enumerate(meta.prefills):
            qp = q[p.tok]
            if spec.kind is AttentionKind.SLIDING_FA_DECODE:
                o = out[p.tok]
                for piece in p.window_pieces:
                    o[piece.rows] = self._sdpa(qp[piece.rows], kflat.index_select(0, piece.idx),
                                               vflat.index_select(0, piece.idx), piece.mask)
                continue
            if ring:
                kp = torch.cat([ctx[i][0], k[p.tok]])
                vp = torch.cat([ctx[i][1], v[p.tok]])
                mask = p.ring_mask
            else:
                kp, vp = kflat.index_select(0, p.paged_idx), vflat.index_select(0, p.paged_idx)
                mask = p.paged_masks[spec.kind]
            out[p.tok] = self._sdpa(qp, kp, vp, mask)
        return out.view(T, self.num_heads * self.head_dim)

    def _sdpa(self, q, k, v, mask):
        """``[rows, heads, dim]`` queries against ``[keys, kv_heads, dim]`` under a ``[rows, keys]`` mask."""
        o = F.scaled_dot_product_attention(
            q.transpose(0, 1).unsqueeze(0), k.transpose(0, 1).unsqueeze(0), v.transpose(0, 1).unsqueeze(0),
            attn_mask=mask, scale=self.scale, enable_gqa=True,
        )
        return o.squeeze(0).transpose(0, 1)
