"""flash-attn-4 (``flash_attn.cute``) attention on CUDA.

Every path is one kernel call over the whole step:
- decodes (paged layers: page table + lengths; ring layers: the ring as one page of ``sinks +
  window`` slots, every valid slot visible, keys carry RoPE so slot order does not matter) go to
  the shared split-KV decode kernel (``ops``): flash-attn-4 refuses split-KV on SM 9.0, and the
  kernel's fixed grid lets CUDA graphs capture decode steps;
- prefill chunks on full layers: page table, causal;
- prefill chunks on sliding layers: a window-causal call (``window_size=(W-1, 0)``) returning its
  LSE, plus the sinks that fell out of the window (key j < k with j <= i - W) computed against
  at most k keys per sequence and merged by LSE in one fused pass (``ops.merge_sinks``). Paged
  fa_decode layers read the window from the page table; ring layers read it from a packed copy
  of the ring's last W-1 keys and the chunk's own keys. Generated tokens inside a prefill chunk (recompute after preemption) of an
  fa_decode layer take a separate full causal call.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass, field

import torch

from flash_attn.cute import flash_attn_varlen_func  # ImportError on machines without it: "auto" skips us

from swaa_engine.attention import ops
from swaa_engine.attention.base import AttentionBackend, StepLayout, cache_writes
from swaa_engine.attention.ops import DecodeTables
from swaa_engine.kv_cache.pools import ring_slot
from swaa_engine.swaa import AttentionKind
from swaa_engine.transfer import upload


@dataclass
class _Call:
    """One varlen call over a subset of the step's query rows."""

    rows: torch.Tensor  # [n] rows of the packed step
    cu_q: torch.Tensor  # [B+1] int32
    max_q: int
    page_table: torch.Tensor | None = None  # [B, P] int32
    seqused_k: torch.Tensor | None = None  # [B] int32
    cu_k: torch.Tensor | None = None  # [B+1] int32, packed keys (ring prefill)
    max_k: int | None = None
    contiguous: slice | None = None  # rows as a slice when they are consecutive (no gather/scatter)


@dataclass
class _Sinks:
    """Sinks outside the window for the windowed query rows of one chunk."""

    rows: slice  # rows of the packed step (consecutive: one chunk)
    q_pos: torch.Tensor  # [n] int32 positions
    paged_idx: torch.Tensor | None  # [k'] flat paged slots of positions 0..k'-1
    ring_idx: torch.Tensor | None  # [k'] flat ring slots of positions 0..k'-1


@dataclass
class FlashMeta:
    num_decodes: int
    paged_write: torch.Tensor | None
    ring_write_tok: torch.Tensor | None
    ring_write_slot: torch.Tensor | None
    dec_paged: DecodeTables | None = None
    dec_ring: DecodeTables | None = None
    pf_full: _Call | None = None  # full layers: every prefill row, causal
    pf_window_paged: _Call | None = None  # fa_decode layers: prompt rows, window-causal
    pf_gen_paged: _Call | None = None  # fa_decode layers: generated rows inside prefill chunks, causal
    pf_ring: _Call | None = None  # ring layers: every prefill row against packed keys, window-causal
    ring_ctx_idx: torch.Tensor | None = None  # flat ring slots read before this step's writes
    ring_pack_idx: torch.Tensor | None = None  # rows of cat([ctx, k]) forming the packed keys
    sinks_paged: list[_Sinks] = field(default_factory=list)
    sinks_ring: list[_Sinks] = field(default_factory=list)


def _i32(x, dev) -> torch.Tensor:
    return upload(x, torch.int32, dev)


def _i64(x, dev) -> torch.Tensor:
    return upload(x, torch.long, dev)


def _cu(lengths: list[int], dev) -> torch.Tensor:
    out = [0]
    for n in lengths:
        out.append(out[-1] + n)
    return _i32(out, dev)


def _as_slice(rows: list[int]) -> slice | None:
    if rows and rows == list(range(rows[0], rows[0] + len(rows))):
        return slice(rows[0], rows[0] + len(rows))
    return None


class FlashBackend(AttentionBackend):
    name = "flash"

    @classmethod
    def supports(cls, device: torch.device) -> bool:
        return device.type == "cuda" and torch.cuda.get_device_capability(device)[0] >= 8

    @classmethod
    def refuses(cls, device, *, geometry, num_heads, num_kv_heads, head_dim, scale=None) -> str | None:
        # flash-attn-4 validates shapes per architecture and JIT-compiles per shape: whether it runs (and runs
        # right) for e.g. head_dim 256 on this card is known only by running it, once per process and shape
        return _probe(str(device), num_heads, num_kv_heads, head_dim, geometry.block_size,
                      head_dim**-0.5 if scale is None else scale)

    # -- metadata, once per step --------------------------------------------------------------
    def prepare(self, layout: StepLayout) -> FlashMeta:
        g, dev = self.geometry, self.device
        bs, W, S, R = g.block_size, g.window, g.sinks, g.ring_slots
        has_ring = any(e.ring is not None for e in layout.entries)
        has_paged = any(e.block_table for e in layout.entries)

        writes = cache_writes(layout, g)
        meta = FlashMeta(
            num_decodes=layout.num_decodes,
            paged_write=_i64(writes.paged_slots, dev) if has_paged else None,
            ring_write_tok=_i64(writes.ring_tokens, dev) if has_ring else None,
            ring_write_slot=_i64(writes.ring_slots, dev) if has_ring else None,
        )

        D = layout.num_decodes
        meta.dec_paged, meta.dec_ring = self.decode_tables(layout)

        prefills = layout.entries[D:]
        if not prefills:
            return meta
        starts, t = [], D
        for e in prefills:
            starts.append(t)
            t += e.num_tokens
        all_rows = list(range(D, t))
        if has_paged:
            meta.pf_full = _Call(_i64(all_rows, dev), _cu([e.num_tokens for e in prefills], dev),
                                 max(e.num_tokens for e in prefills), page_table=ops.block_tables([e.block_table for e in prefills], dev),
                                 seqused_k=_i32([e.end for e in prefills], dev), contiguous=slice(D, t))
        if W is None:
            return meta

        if has_paged:  # fa_decode layers: prompt rows windowed, generated rows (after preemption) full
            win, gen = ([], [], [], [], []), ([], [], [], [], [])
            for e, r0 in zip(prefills, starts):
                split = min(max(e.full_start, e.start), e.end)
                for (lo, hi), acc in (((e.start, split), win), ((split, e.end), gen)):
                    if hi > lo:
                        acc[0].extend(range(r0 + lo - e.start, r0 + hi - e.start))
                        acc[1].append(hi - lo)
                        acc[2].append(e.block_table)
                        acc[3].append(hi)
                        acc[4].append(e)
            for acc, name in ((win, "pf_window_paged"), (gen, "pf_gen_paged")):
                if acc[0]:
                    setattr(meta, name, _Call(_i64(acc[0], dev), _cu(acc[1], dev), max(acc[1]),
                                              page_table=ops.block_tables(acc[2], dev), seqused_k=_i32(acc[3], dev),
                                              contiguous=_as_slice(acc[0])))
        if has_ring:  # packed keys per chunk: the ring's positions [start-W+1, start) then the chunk's own
            ctx_idx, k_lens = [], []
            for e in prefills:
                past = range(max(0, e.start - W + 1), e.start)
                ctx_idx.extend(e.ring * R + ring_slot(p, S, W) for p in past)
                k_lens.append(len(past) + e.num_tokens)
            # rows of cat([ctx, k[D:]]) in packed order: each chunk's ctx rows, then its own new keys
            pack, off, n_ctx = [], 0, len(ctx_idx)
            for i, e in enumerate(prefills):
                n_past = k_lens[i] - e.num_tokens
                pack.extend(range(off, off + n_past))
                pack.extend(range(n_ctx + starts[i] - D, n_ctx + starts[i] - D + e.num_tokens))
                off += n_past
            meta.ring_ctx_idx = _i64(ctx_idx, dev)
            meta.ring_pack_idx = _i64(pack, dev)
            meta.pf_ring = _Call(_i64(all_rows, dev), _cu([e.num_tokens for e in prefills], dev),
                                 max(e.num_tokens for e in prefills), cu_k=_cu(k_lens, dev), max_k=max(k_lens),
                                 contiguous=slice(D, D + sum(e.num_tokens for e in prefills)))

        if S:
            for e, r0 in zip(prefills, starts):
                # rows whose window no longer covers every sink: position >= W (then sink j <= pos - W exists)
                lo = max(e.start, W)
                if has_paged:
                    hi = min(e.end, max(e.full_start, e.start))  # windowed rows of fa_decode layers
                    if hi > lo:
                        k_ = min(S, hi)
                        meta.sinks_paged.append(_Sinks(slice(r0 + lo - e.start, r0 + hi - e.start), _i32(list(range(lo, hi)), dev),
                                                       _i64([e.block_table[p // bs] * bs + p % bs for p in range(k_)], dev), None))
                if has_ring and e.end > lo:
                    k_ = min(S, e.end)
                    meta.sinks_ring.append(_Sinks(slice(r0 + lo - e.start, r0 + e.end - e.start),
                                                  _i32(list(range(lo, e.end)), dev), None,
                                                  _i64([e.ring * R + p for p in range(k_)], dev)))
        return meta

    # -- per layer ------------------------------------------------------------------------------
    def _run(self, call: _Call, q, k, v, out, *, causal: bool, window: int | None, lse_out=None):
        qs = q[call.contiguous] if call.contiguous is not None else q.index_select(0, call.rows)
        kw = dict(cu_seqlens_q=call.cu_q, max_seqlen_q=call.max_q, softmax_scale=self.scale, causal=causal,
                  return_lse=lse_out is not None)
        if window is not None:
            kw["window_size"] = (window - 1, 0)
        if call.page_table is not None:
            kw.update(page_table=call.page_table, seqused_k=call.seqused_k)
        else:
            kw.update(cu_seqlens_k=call.cu_k, max_seqlen_k=call.max_k)
        res = flash_attn_varlen_func(qs, k, v, **kw)
        o, lse = (res[0], res[1]) if isinstance(res, tuple) else (res, None)
        if call.contiguous is not None:
            out[call.contiguous] = o
        else:
            out.index_copy_(0, call.rows, o)
        if lse_out is not None:
            # lse is [heads, rows]; kept per row for the sink merge
            if call.contiguous is not None:
                lse_out[call.contiguous] = lse.transpose(0, 1)
            else:
                lse_out.index_copy_(0, call.rows, lse.transpose(0, 1).contiguous())

    def _merge_sinks(self, sinks: list[_Sinks], q, kflat, vflat, out, lse, ring: bool):
        for s in sinks:
            ops.merge_sinks(q[s.rows], out[s.rows], lse[s.rows], kflat, vflat, s.ring_idx if ring else s.paged_idx,
                            s.q_pos, self.geometry.window, self.scale)

    def decode_only_meta(self, num, paged_write, ring_write_tok, ring_write_slot, paged, ring) -> FlashMeta:
        return FlashMeta(num_decodes=num, paged_write=paged_write, ring_write_tok=ring_write_tok,
                         ring_write_slot=ring_write_slot, dec_paged=paged, dec_ring=ring)

    def forward(self, spec, q, k, v, cache, meta: FlashMeta):
        kc, vc = cache
        T = q.shape[0]
        q, k, v, kflat, vflat = self.heads(q, k, v, cache)
        out = torch.empty_like(q)
        kind = spec.kind
        D = meta.num_decodes

        if kind is AttentionKind.SLIDING_RING:
            if meta.pf_ring is not None:  # the chunk's earlier keys, read before this step overwrites them
                src_k = torch.cat([kflat.index_select(0, meta.ring_ctx_idx), k[D:]])
                src_v = torch.cat([vflat.index_select(0, meta.ring_ctx_idx), v[D:]])
            kflat.index_copy_(0, meta.ring_write_slot, k.index_select(0, meta.ring_write_tok))
            vflat.index_copy_(0, meta.ring_write_slot, v.index_select(0, meta.ring_write_tok))
            if meta.dec_ring is not None:
                self.decode(meta.dec_ring, q, kflat, vflat, out)
            if meta.pf_ring is not None:
                lse = torch.empty(T, self.num_heads, dtype=torch.float32, device=q.device) if meta.sinks_ring else None
                self._run(meta.pf_ring, q, src_k.index_select(0, meta.ring_pack_idx), src_v.index_select(0, meta.ring_pack_idx),
                          out, causal=True, window=self.geometry.window, lse_out=lse)
                if meta.sinks_ring:
                    self._merge_sinks(meta.sinks_ring, q, kflat, vflat, out, lse, ring=True)
        else:
            kflat.index_copy_(0, meta.paged_write, k)
            vflat.index_copy_(0, meta.paged_write, v)
            if meta.dec_paged is not None:  # decodes: full for full layers and, under fa_decode, for sliding ones
                self.decode(meta.dec_paged, q, kflat, vflat, out)
            if kind is AttentionKind.FULL or self.geometry.window is None:
                if meta.pf_full is not None:
                    self._run(meta.pf_full, q, kc, vc, out, causal=True, window=None)
            else:
                if meta.pf_window_paged is not None:
                    lse = torch.empty(T, self.num_heads, dtype=torch.float32, device=q.device) if meta.sinks_paged else None
                    self._run(meta.pf_window_paged, q, kc, vc, out, causal=True, window=self.geometry.window, lse_out=lse)
                    if meta.sinks_paged:
                        self._merge_sinks(meta.sinks_paged, q, kflat, vflat, out, lse, ring=False)
                if meta.pf_gen_paged is not None:
                    self._run(meta.pf_gen_paged, q, kc, vc, out, causal=True, window=None)
        return out.view(T, self.num_heads * self.head_dim)


@functools.lru_cache(maxsize=None)
def _probe(device: str, num_heads: int, num_kv_heads: int, head_dim: int, page: int, scale: float) -> str | None:
    """Runs the three call forms the backend uses (paged causal; paged window-causal with LSE; packed keys
    window-causal with LSE) on a tiny bf16 step and checks them against float32 attention. Returns why they
    failed, or None. Costs one kernel compile per form, which the engine's warm-up would pay anyway."""
    try:
        dev = torch.device(device)
        gen = torch.Generator(device="cpu").manual_seed(0)
        nq, nk, win = 5, page + 7, 3  # two pages, the second partly used; queries are the last nq keys

        def rand(*shape):
            return torch.randn(*shape, generator=gen).to(dev, torch.bfloat16)

        q, kc, vc = rand(nq, num_heads, head_dim), rand(2, page, num_kv_heads, head_dim), rand(2, page, num_kv_heads, head_dim)
        k, v = kc.reshape(-1, num_kv_heads, head_dim)[:nk], vc.reshape(-1, num_kv_heads, head_dim)[:nk]
        g = num_heads // num_kv_heads
        s = torch.einsum("qhd,khd->hqk", q.float(), k.float().repeat_interleave(g, 1)) * scale
        qpos, kpos = torch.arange(nk - nq, nk, device=dev)[:, None], torch.arange(nk, device=dev)[None, :]
        cu_q = torch.tensor([0, nq], dtype=torch.int32, device=dev)
        paged = dict(page_table=torch.tensor([[0, 1]], dtype=torch.int32, device=dev),
                     seqused_k=torch.tensor([nk], dtype=torch.int32, device=dev))
        packed = dict(cu_seqlens_k=torch.tensor([0, nk], dtype=torch.int32, device=dev), max_seqlen_k=nk)
        for form, keys, window in (("paged causal", paged, None), ("paged window", paged, win),
                                   ("packed window", packed, win)):
            visible = kpos <= qpos if window is None else (kpos <= qpos) & (kpos > qpos - window)
            sm = s.masked_fill(~visible[None], float("-inf"))
            want = torch.einsum("hqk,khd->qhd", sm.softmax(-1), v.float().repeat_interleave(g, 1))
            kw = dict(cu_seqlens_q=cu_q, max_seqlen_q=nq, softmax_scale=scale, causal=True, return_lse=window is not None,
                      **({"window_size": (window - 1, 0)} if window else {}))
            res = flash_attn_varlen_func(q, kc if keys is paged else k, vc if keys is paged else v, **kw, **keys)
            out, lse = (res[0], res[1]) if isinstance(res, tuple) else (res, None)
            err = float((out.float() - want).norm() / want.norm())
            if not err < 2e-2:  # bf16 rounding is ~4e-3 here; NaN fails too
                return f"flash-attn-4 {form} call is off by {err:.3g} (relative) at head_dim {head_dim}"
            if lse is not None and not torch.allclose(lse.float(), torch.logsumexp(sm, -1), atol=5e-2):
                return f"flash-attn-4 {form} call returns a wrong LSE at head_dim {head_dim}"
        return None
    except Exception as e:  # an assertion on the shape, a compile failure, an illegal launch: all mean "not here"
        why = f"flash-attn-4 failed on head_dim {head_dim}, {num_heads}/{num_kv_heads} heads, page {page}: {e!r}"[:500]
        _check_alive(device, why)
        return why


def _check_alive(device: str, why: str) -> None:
    """A probe that faulted (illegal address, launch failure) leaves a sticky error: the CUDA context is dead for
    every backend, so falling back would only move the failure to the engine's first kernel, under an error that
    names neither flash-attn-4 nor the probe. Such an error raises again on any synchronize."""
    if torch.device(device).type != "cuda":
        return
    try:
        torch.cuda.synchronize(device)
    except Exception as dead:
        raise RuntimeError(f"the flash-attn-4 probe left the CUDA device unusable; no backend can run ({why})") from dead
