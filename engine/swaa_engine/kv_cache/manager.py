"""Which pool each layer uses, how big the pools are, and which sequence holds what. No torch."""

from __future__ import annotations

from dataclasses import dataclass

from swaa_engine.kv_cache.pools import BlockPool, RingPool, SwapSpace
from swaa_engine.sequence import Sequence
from swaa_engine.swaa import CacheKind, LayerSpec


@dataclass(frozen=True)
class KVShape:
    """Per-layer per-token KV footprint."""

    num_kv_heads: int
    head_dim: int
    dtype_bytes: int

    @property
    def bytes_per_token(self) -> int:
        return 2 * self.num_kv_heads * self.head_dim * self.dtype_bytes  # K and V


@dataclass(frozen=True)
class PoolPlan:
    num_blocks: int
    num_rings: int
    block_bytes: int  # one block across all paged layers
    ring_bytes: int  # one ring across all ring layers

    @property
    def total_bytes(self) -> int:
        return self.num_blocks * self.block_bytes + self.num_rings * self.ring_bytes


def plan_pools(
    specs: tuple[LayerSpec, ...], kv: KVShape, block_size: int, budget_bytes: int, max_num_seqs: int
) -> PoolPlan:
    """Split a byte budget between the paged pool and the ring pool.

    Rings are sized for ``max_num_seqs`` running sequences (each needs exactly one); what is left
    goes to paged blocks. With no paged layer every byte goes to rings, which then bound how
    many sequences can run at once.
    """
    n_paged = sum(s.cache_kind is CacheKind.PAGED for s in specs)
    ring_specs = [s for s in specs if s.cache_kind is CacheKind.RING]
    block_bytes = n_paged * block_size * kv.bytes_per_token
    ring_bytes = sum(s.ring_slots for s in ring_specs) * kv.bytes_per_token
    if budget_bytes <= 0:
        raise ValueError(f"cache budget must be > 0 bytes, got {budget_bytes}")
    if ring_bytes and not block_bytes:
        return PoolPlan(0, budget_bytes // ring_bytes, block_bytes, ring_bytes)
    num_rings = 0
    if ring_bytes:
        num_rings = min(max_num_seqs, budget_bytes // ring_bytes)
    num_blocks = (budget_bytes - num_rings * ring_bytes) // block_bytes
    return PoolPlan(num_blocks, num_rings, block_bytes, ring_bytes)


@dataclass(frozen=True)
class SwapOp:
    """One sequence's KV moving between device slots and host memory (``request_id`` keys the host copy).

    Swap-out: copy from ``blocks``/``ring`` before this step's kernels run (they may now belong to another
    sequence). Swap-in: copy back into ``blocks``/``ring``, the sequence's new slots, before the step's kernels.
    """

    request_id: str
    blocks: tuple[int, ...]  # paged blocks covering the computed tokens, in order
    ring: int | None


class CacheManager:
    """Hands out paged blocks and rings to sequences.

    Every paged layer (full, or sliding with fa_decode) shares one block table per sequence;
    every ring layer shares one ring id. A layer's pool is chosen by ``LayerSpec.cache_kind``.
    """

    def __init__(self, specs: tuple[LayerSpec, ...], block_size: int, num_blocks: int, num_rings: int,
                 swap: SwapSpace | None = None):
        """``swap``: host memory that preempted sequences' KV moves to (none: preemption recomputes)."""
        self.specs = specs
        self.has_paged = any(s.cache_kind is CacheKind.PAGED for s in specs)
        self.has_ring = any(s.cache_kind is CacheKind.RING for s in specs)
        # one ring id per sequence indexes every ring layer's cache; layers sliding by different windows (a
        # model's own and SWAA's) have rows of their own sizes: the pool reports the largest
        ring_slots = {s.ring_slots for s in specs if s.cache_kind is CacheKind.RING}
        self.blocks = BlockPool(num_blocks if self.has_paged else 0, block_size)
        self.rings = RingPool(num_rings if self.has_ring else 0, max(ring_slots, default=0))
        self.swap = swap or SwapSpace(0, 0, 0)

    @property
    def block_size(self) -> int:
        return self.blocks.block_size

    def blocks_for(self, num_tokens: int) -> int:
        """Paged blocks that ``num_tokens`` tokens of one sequence occupy (0 when no layer is paged)."""
        return self.blocks.blocks_for(num_tokens) if self.has_paged else 0

    def blocks_needed(self, seq: Sequence, num_new_tokens: int) -> int:
        return max(0, self.blocks_for(seq.num_computed + num_new_tokens) - len(seq.block_table))

    def can_allocate(self, seq: Sequence, num_new_tokens: int) -> bool:
        if self.has_ring and seq.ring is None and self.rings.num_free == 0:
            return False
        return self.blocks_needed(seq, num_new_tokens) <= self.blocks.num_free

    def allocate(self, seq: Sequence, num_new_tokens: int) -> None:
        """Reserve what ``num_new_tokens`` more computed tokens need; call only after can_allocate."""
        if self.has_ring and seq.ring is None:
            seq.ring = self.rings.allocate()
        for _ in range(self.blocks_needed(seq, num_new_tokens)):
            seq.block_table.append(self.blocks.allocate())

    def free(self, seq: Sequence) -> None:
        """Give back everything ``seq`` holds: device blocks, its ring, and host memory it was swapped to."""
        for b in seq.block_table:
            self.blocks.free(b)
        seq.block_table = []
        if seq.ring is not None:
            self.rings.free(seq.ring)
            seq.ring = None
        if seq.swapped is not None:
            self.swap.release(seq.swapped)
            seq.swapped = None

    # -- swapping -------------------------------------------------------------------------
    def swap_bytes(self, seq: Sequence) -> int:
        """Host bytes that ``seq``'s computed KV takes: its computed blocks in every paged layer, its ring."""
        return self.swap.bytes_for(self.blocks_for(seq.num_computed), self.has_ring)

    def can_swap_out(self, seq: Sequence) -> bool:
        return seq.num_computed > 0 and self.swap.can_hold(self.swap_bytes(seq))

    def swap_out(self, seq: Sequence) -> SwapOp:
        """Move ``seq``'s computed KV to host memory: returns the device slots to copy from (before they are reused)."""
        nbytes = self.swap_bytes(seq)
        op = SwapOp(seq.request_id, tuple(seq.block_table[: self.blocks_for(seq.num_computed)]), seq.ring)
        self.free(seq)
        seq.swapped = self.swap.hold(nbytes)
        return op

    def swap_in(self, seq: Sequence) -> SwapOp:
        """After ``allocate`` gave ``seq`` new device slots: where its host KV goes back to."""
        assert seq.swapped is not None
        self.swap.release(seq.swapped)
        seq.swapped = None
        return SwapOp(seq.request_id, tuple(seq.block_table[: self.blocks_for(seq.num_computed)]), seq.ring)

    def max_tokens_per_seq(self) -> int | None:
        """Most tokens one sequence can hold; None when no layer is paged (rings never grow)."""
        return self.blocks.total * self.block_size if self.has_paged else None

    def usage(self) -> dict[str, dict[str, int]]:
        return {
            CacheKind.PAGED.value: {"used": self.blocks.num_used, "total": self.blocks.total},
            CacheKind.RING.value: {"used": self.rings.num_used, "total": self.rings.total},
        }

    def is_idle(self) -> bool:
        return self.blocks.num_used == 0 and self.rings.num_used == 0 and self.swap.used_bytes == 0
