"""Decode steps replayed as CUDA graphs, one per bucketed batch size.

A decode step of a 36-layer model launches several hundred small kernels from Python; at small
batches the GPU waits on the host most of the step. Each bucket's whole forward (embedding,
layers, final norm, lm_head) is captured once against persistent input and metadata tensors;
a step writes its values into those tensors and replays the bucket that fits. Rows past the real
batch are padding: they read no keys (length 0) and write their keys to a scratch slot that no
sequence owns (``storage.allocate_kv`` keeps one spare block and ring for it).

A step is planned under the engine lock (:meth:`DecodeGraphs.plan`: everything the replay reads, copied from
the sequences into one immutable :class:`GraphStep`) and run outside it (:meth:`DecodeGraphs.run`: one pinned,
asynchronous upload, then the replay). Block tables stay on the device between steps (``kv_cache/resident.py``):
a step uploads only the block ids that changed and the graph gathers its rows' tables on the device.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass

import numpy as np
import torch

from swaa_engine.attention.base import AttentionBackend, CacheGeometry
from swaa_engine.attention.ops import DecodeTables
from swaa_engine.kv_cache.pools import ring_slot
from swaa_engine.kv_cache.resident import ResidentTables
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


@dataclass(frozen=True)
class GraphStep:
    """One decode step's inputs, copied from its sequences under the engine lock (the replay reads no
    ``Sequence``): ``values`` holds, int64, eight rows of ``bucket`` (token ids, positions, paged write slots, ring
    write slots, table slots, paged lengths, ring lengths, ring ids; padded) and then the block-table writes
    (``writes`` flat indices, then their ``writes`` block ids)."""

    n: int  # real rows; the rest of the bucket is padding
    bucket: int
    writes: int
    values: np.ndarray


@dataclass
class _Static:
    input_ids: torch.Tensor  # [N] int64
    positions: torch.Tensor  # [N] int64
    paged_write: torch.Tensor | None  # [N] int64 flat slot per row
    table_slots: torch.Tensor  # [N] int64: each row's table slot in the resident tables
    paged_table: torch.Tensor | None  # [N, P] int32, gathered from the resident tables inside the graph
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
        self.device = dev
        g = geometry
        N = max_batch
        has_paged, has_ring = scratch_block is not None, scratch_ring is not None
        self.scratch_paged = scratch_block * g.block_size if has_paged else None
        self.scratch_ring = scratch_ring * g.ring_slots if has_ring else None
        pages = -(-max_model_len // g.block_size)
        self.max_model_len = max_model_len
        # block tables resident on the device, one per table slot (+ the padding rows' zeros), kept current by the
        # writes each step plans (kv_cache/resident.py)
        self.mirror = ResidentTables(N, pages) if has_paged else None
        self.resident = torch.zeros(N + 1, pages, dtype=torch.int32, device=dev) if has_paged else None

        # one int64 and one int32 block, so a step's values go over in one upload
        self._i64 = torch.zeros(5, N, dtype=torch.long, device=dev)  # ids, positions, paged slot, ring slot, table slot
        self._i32 = torch.zeros(3, N, dtype=torch.int32, device=dev)  # paged lengths, ring lengths, ring ids
        self.s = _Static(
            input_ids=self._i64[0], positions=self._i64[1],
            paged_write=self._i64[2] if has_paged else None,
            table_slots=self._i64[4],
            paged_table=torch.zeros(N, pages, dtype=torch.int32, device=dev) if has_paged else None,
            paged_lens=self._i32[0] if has_paged else None,
            ring_write=self._i64[3] if has_ring else None,
            ring_table=self._i32[2].view(N, 1) if has_ring else None,
            ring_lens=self._i32[1] if has_ring else None,
            ring_rows=torch.arange(N, device=dev),
            logits=torch.zeros(N, model.dims.vocab_size, dtype=torch.float32, device=dev),
        )
        self._graphs: dict[int, torch.cuda.CUDAGraph] = {}
        self._metas: dict[int, object] = {}
        # CPU: the same buffers and padding, run eagerly (how the replay logic is tested without a GPU)
        self.eager = dev.type != "cuda"
        # the upload's staging: pinned host memory (grown on demand) and its device twin; the event marks the last
        # copy out of it, which must finish before the host overwrites it
        self._host: torch.Tensor | None = None
        self._dev: torch.Tensor | None = None
        self._copied: torch.cuda.Event | None = None

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
        self.gather(b)
        ctx = AttentionContext(self.backend, self._metas[b], self.caches, self.specs)
        hidden = self.model(s.input_ids[:b], s.positions[:b], ctx)
        s.logits[:b].copy_(self.model.logits(hidden))

    def gather(self, b: int) -> None:
        """Each of the first ``b`` rows' block table, gathered on the device from its table slot (inside the graph)."""
        if self.resident is not None:
            torch.index_select(self.resident, 0, self.s.table_slots[:b], out=self.s.paged_table[:b])

    def _pad(self) -> None:
        """Every row a padding row: reads nothing, writes the scratch slot."""
        s = self.s
        s.input_ids.zero_()
        s.positions.zero_()
        s.table_slots.fill_(self.max_batch)  # the padding slot: all zeros
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

    def eligible(self, chunks) -> bool:
        """Whether a step of these (ordered) chunks replays a graph: decodes only, each sampling, few enough."""
        return len(chunks) <= self.max_batch and all(c.is_decode and c.samples for c in chunks)

    def plan(self, chunks) -> GraphStep:
        """Everything the replay of these decode chunks reads (under the engine lock: reads the sequences)."""
        n = len(chunks)
        b = self.bucket(n)
        pad, g = b - n, self.geometry
        seqs = [c.seq for c in chunks]
        pos = [c.start for c in chunks]
        zeros = [0] * pad
        ids = [s.token_ids[p] for s, p in zip(seqs, pos)] + zeros
        pw = rw = lens = rlens = rings = [0] * b  # rows of a cache kind the model does not have
        slots, flat, blocks = [self.max_batch] * b, (), ()
        if self.mirror is not None:
            bs = g.block_size
            pw = [s.block_table[p // bs] * bs + p % bs for s, p in zip(seqs, pos)] + [self.scratch_paged] * pad
            lens = [p + 1 for p in pos] + zeros
            try:
                w = self.mirror.plan(seqs)
            except Exception:
                self.mirror.reset()  # planned halfway: nothing it believes is certain
                raise
            slots, flat, blocks = list(w.slots) + [self.max_batch] * pad, w.flat, w.blocks
        if self.s.ring_table is not None:
            R, S, W = g.ring_slots, g.sinks, g.window
            rw = [s.ring * R + ring_slot(p, S, W) for s, p in zip(seqs, pos)] + [self.scratch_ring] * pad
            rlens = [min(p + 1, R) for p in pos] + zeros
            rings = [s.ring for s in seqs] + zeros
        values = np.array(ids + pos + zeros + pw + rw + slots + lens + rlens + rings + list(flat) + list(blocks),
                          dtype=np.int64)
        return GraphStep(n, b, len(flat), values)

    def invalidate(self) -> None:
        """A step failed after planning: the resident tables may not hold what the mirror believes."""
        if self.mirror is not None:
            self.mirror.reset()

    def _upload(self, values: np.ndarray) -> torch.Tensor:
        """``values`` on the device in one copy: from pinned memory, asynchronous on CUDA."""
        src = torch.from_numpy(values)
        if self.eager:
            return src
        m = src.numel()
        if self._copied is not None:
            self._copied.synchronize()  # the previous step's copy has left the staging buffer
        if self._host is None or self._host.numel() < m:
            cap = max(m, 2 * (self._host.numel() if self._host is not None else 0), 8 * self.max_batch + 64)
            self._host = torch.empty(cap, dtype=torch.long, pin_memory=True)
            self._dev = torch.empty(cap, dtype=torch.long, device=self.device)
        self._host[:m].copy_(src)
        out = self._dev[:m]
        out.copy_(self._host[:m], non_blocking=True)
        self._copied = torch.cuda.Event()
        self._copied.record()
        return out

    def load(self, step: GraphStep) -> None:
        """The step's values into the graphs' inputs and its block-table writes into the resident tables."""
        b, k = step.bucket, step.writes
        dev = self._upload(step.values)
        v = dev[: 8 * b].view(8, b)
        self._i64[:, :b].copy_(v[:5])
        self._i32[:, :b].copy_(v[5:8])
        if k:
            self.resident.view(-1).index_copy_(0, dev[8 * b : 8 * b + k], dev[8 * b + k : 8 * b + 2 * k].to(torch.int32))

    def run(self, step: GraphStep) -> torch.Tensor:
        """Logits ``[n, vocab]`` for the step's ``n`` decode rows."""
        b = step.bucket
        self.load(step)
        if self.eager:
            if b not in self._metas:
                self._metas[b] = self._meta(b)
            self._forward(b)
        else:
            self._graphs[b].replay()
        return self.s.logits[: step.n]
