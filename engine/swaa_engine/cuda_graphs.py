"""Decode steps replayed as CUDA graphs, one per bucketed batch size.

A decode step of a 36-layer model launches several hundred small kernels from Python; at small
batches the GPU waits on the host most of the step. Each bucket's whole forward (embedding,
layers, final norm, lm_head) is captured once against persistent input and metadata tensors;
a step writes its values into those tensors and replays the bucket that fits. Rows past the real
batch are padding: they read no keys (length 0) and write their keys to a scratch slot that no
sequence owns (``storage.allocate_kv`` keeps one spare block and ring for it).
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass

import torch

from swaa_engine.attention.base import AttentionBackend, CacheGeometry
from swaa_engine.attention.ops import DecodeTables, block_tables as padded_tables
from swaa_engine.kv_cache.pools import ring_slot
from swaa_engine.models.llama import AttentionContext, LlamaFamilyModel
from swaa_engine.swaa import LayerSpec

log = logging.getLogger(__name__)


# Larger decode batches run eagerly: their launch overhead is small beside their work, and the graphs'
# buffers (logits for every row among them) are allocated after the KV cache has taken its share.
MAX_GRAPH_BATCH = 256


def buckets(max_batch: int) -> list[int]:
    """1, 2, 4, 8, then steps of 16 up to ``max_batch`` (always included)."""
    out = [b for b in (1, 2, 4, 8) if b < max_batch]
    out += list(range(16, max_batch, 16))
    return sorted(set(out + [max_batch]))


@dataclass
class _Static:
    input_ids: torch.Tensor  # [N] int64
    positions: torch.Tensor  # [N] int64
    paged_write: torch.Tensor | None  # [N] int64 flat slot per row
    paged_table: torch.Tensor | None  # [N, P] int32
    paged_lens: torch.Tensor | None  # [N] int32
    ring_write: torch.Tensor | None  # [N] int64
    ring_table: torch.Tensor | None  # [N, 1] int32
    ring_lens: torch.Tensor | None  # [N] int32
    ring_rows: torch.Tensor  # [N] arange: every decode row's key stays in its ring
    logits: torch.Tensor  # [N, vocab] float32, the graphs' output


class DecodeGraphs:
    def __init__(self, model: LlamaFamilyModel, backend: AttentionBackend, caches, specs: tuple[LayerSpec, ...],
                 geometry: CacheGeometry, *, max_batch: int, max_model_len: int, scratch_block: int | None,
                 scratch_ring: int | None):
        self.model, self.backend, self.caches, self.specs, self.geometry = model, backend, caches, specs, geometry
        max_batch = min(max_batch, MAX_GRAPH_BATCH)
        self.max_batch = max_batch
        self.buckets = buckets(max_batch)
        dev = backend.device
        g = geometry
        N = max_batch
        has_paged, has_ring = scratch_block is not None, scratch_ring is not None
        self.scratch_paged = scratch_block * g.block_size if has_paged else None
        self.scratch_ring = scratch_ring * g.ring_slots if has_ring else None
        pages = -(-max_model_len // g.block_size)
        self.max_model_len = max_model_len

        # one int64 and one int32 block, so a step's values go over in few copies
        self._i64 = torch.zeros(4, N, dtype=torch.long, device=dev)  # ids, positions, paged slot, ring slot
        self._i32 = torch.zeros(2, N, dtype=torch.int32, device=dev)  # paged lengths, ring lengths
        self.s = _Static(
            input_ids=self._i64[0], positions=self._i64[1],
            paged_write=self._i64[2] if has_paged else None,
            paged_table=torch.zeros(N, pages, dtype=torch.int32, device=dev) if has_paged else None,
            paged_lens=self._i32[0] if has_paged else None,
            ring_write=self._i64[3] if has_ring else None,
            ring_table=torch.zeros(N, 1, dtype=torch.int32, device=dev) if has_ring else None,
            ring_lens=self._i32[1] if has_ring else None,
            ring_rows=torch.arange(N, device=dev),
            logits=torch.zeros(N, model.dims.vocab_size, dtype=torch.float32, device=dev),
        )
        self._graphs: dict[int, torch.cuda.CUDAGraph] = {}
        self._metas: dict[int, object] = {}
        # CPU: the same buffers and padding, run eagerly (how the replay logic is tested without a GPU)
        self.eager = dev.type != "cuda"

    # -- capture ---------------------------------------------------------------------------------
    def _meta(self, b: int):
        s, k, hk = self.s, self.backend.decode_kernel, self.backend.num_kv_heads
        paged = ring = None
        if s.paged_table is not None:
            paged = DecodeTables(s.paged_table[:b], s.paged_lens[:b], self.geometry.block_size, self.max_model_len,
                                 k.splits(b, hk, self.max_model_len))
        if s.ring_table is not None:
            R = self.geometry.ring_slots
            ring = DecodeTables(s.ring_table[:b], s.ring_lens[:b], R, R, k.splits(b, hk, R))
        return self.backend.decode_only_meta(
            b, s.paged_write[:b] if s.paged_write is not None else None, s.ring_rows[:b] if s.ring_write is not None else None,
            s.ring_write[:b] if s.ring_write is not None else None, paged, ring)

    def _forward(self, b: int) -> None:
        s = self.s
        ctx = AttentionContext(self.backend, self._metas[b], self.caches, self.specs)
        hidden = self.model(s.input_ids[:b], s.positions[:b], ctx)
        s.logits[:b].copy_(self.model.logits(hidden))

    def _pad(self) -> None:
        """Every row a padding row: reads nothing, writes the scratch slot."""
        s = self.s
        s.input_ids.zero_()
        s.positions.zero_()
        for lens in (s.paged_lens, s.ring_lens):
            if lens is not None:
                lens.zero_()
        if s.paged_write is not None:
            s.paged_write.fill_(self.scratch_paged)
        if s.ring_write is not None:
            s.ring_write.fill_(self.scratch_ring)

    def capture(self) -> None:
        if self.eager:
            return
        t0 = time.monotonic()
        k, hk = self.backend.decode_kernel, self.backend.num_kv_heads
        k.reserve(self.max_batch, max(k.splits(1, hk, self.max_model_len), k.splits(1, hk, self.geometry.ring_slots)))
        self._pad()
        pool = None
        stream = torch.cuda.Stream(self.backend.device)
        stream.wait_stream(torch.cuda.current_stream())
        # largest first, so the smaller graphs reuse its memory from the shared pool
        for b in reversed(self.buckets):
            self._metas[b] = self._meta(b)
            with torch.cuda.stream(stream):
                self._forward(b)  # warm-up: Triton compiles and cuBLAS picks its kernels outside capture
            torch.cuda.current_stream().wait_stream(stream)
            graph = torch.cuda.CUDAGraph()
            with torch.cuda.graph(graph, pool=pool, stream=stream):
                self._forward(b)
            pool = graph.pool()
            self._graphs[b] = graph
        torch.cuda.synchronize(self.backend.device)
        log.info("captured %d decode graphs (batch %s) in %.1f s", len(self.buckets), self.buckets, time.monotonic() - t0)

    # -- replay ---------------------------------------------------------------------------------
    def bucket(self, n: int) -> int | None:
        for b in self.buckets:
            if b >= n:
                return b
        return None

    def run(self, token_ids: list[int], positions: list[int], block_tables: list[tuple[int, ...]],
            rings: list[int | None]) -> torch.Tensor:
        """Logits ``[n, vocab]`` for ``n`` decode rows (token at ``positions[i]``, the last of its sequence)."""
        n = len(token_ids)
        b = self.bucket(n)
        s, g = self.s, self.geometry
        pad = b - n
        zeros = [0] * pad
        slots = rslots = lens = rlens = [0] * b  # rows of a cache kind the model does not have
        if s.paged_table is not None:
            bs = g.block_size
            slots = [t[p // bs] * bs + p % bs for t, p in zip(block_tables, positions)] + [self.scratch_paged] * pad
            lens = [p + 1 for p in positions] + zeros
            table = padded_tables(block_tables)
            s.paged_table[:n, : table.shape[1]].copy_(table, non_blocking=True)
        if s.ring_table is not None:
            R, S, W = g.ring_slots, g.sinks, g.window
            rslots = [r * R + ring_slot(p, S, W) for r, p in zip(rings, positions)] + [self.scratch_ring] * pad
            rlens = [min(p + 1, R) for p in positions] + zeros
            s.ring_table[:n, 0].copy_(torch.tensor(rings, dtype=torch.int32), non_blocking=True)
        self._i64[:, :b].copy_(torch.tensor([token_ids + zeros, positions + zeros, slots, rslots]), non_blocking=True)
        self._i32[:, :b].copy_(torch.tensor([lens, rlens], dtype=torch.int32), non_blocking=True)
        if self.eager:
            if b not in self._metas:
                self._metas[b] = self._meta(b)
            self._forward(b)
        else:
            self._graphs[b].replay()
        return s.logits[:n]
