"""Which pool each layer uses, how big the pools are, and which sequence holds what. No torch."""

from __future__ import annotations

from dataclasses import dataclass

from swaa_engine.kv_cache.pools import BlockPool, RingPool, SwapSpace
from swaa_engine.kv_cache.prefix import PrefixCache, PrefixMatch, PrefixStats
from swaa_engine.sequence import Sequence
from swaa_engine.swaa import AttentionKind, CacheKind, LayerSpec


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
                 swap: SwapSpace | None = None, prefix_caching: bool = False, fa_tail: int = 0):
        """``swap``: host memory that preempted sequences' KV moves to (none: preemption recomputes).
        ``prefix_caching``: keep computed prompt blocks (and ring snapshots) for later requests (``kv_cache.prefix``).
        ``fa_tail``: the config's question tail (its last prompt tokens attend fully in fa_decode layers)."""
        self.specs = specs
        self.has_paged = any(s.cache_kind is CacheKind.PAGED for s in specs)
        self.has_ring = any(s.cache_kind is CacheKind.RING for s in specs)
        # one ring id per sequence indexes every ring layer's cache; layers sliding by different windows (a
        # model's own and SWAA's) have rows of their own sizes: the pool reports the largest
        ring_slots = {s.ring_slots for s in specs if s.cache_kind is CacheKind.RING}
        self.blocks = BlockPool(num_blocks if self.has_paged else 0, block_size)
        self.rings = RingPool(num_rings if self.has_ring else 0, max(ring_slots, default=0))
        self.swap = swap or SwapSpace(0, 0, 0)
        self.prefix = PrefixCache(block_size, self.has_paged, self.has_ring) if prefix_caching else None
        # under fa_decode a generated token's KV (full attention) is not what a prefill of it computes (windowed)
        self.generated_reusable = not any(s.kind is AttentionKind.SLIDING_FA_DECODE for s in specs)
        self.fa_tail = fa_tail

    @property
    def block_size(self) -> int:
        return self.blocks.block_size

    def blocks_for(self, num_tokens: int) -> int:
        """Paged blocks that ``num_tokens`` tokens of one sequence occupy (0 when no layer is paged)."""
        return self.blocks.blocks_for(num_tokens) if self.has_paged else 0

    def blocks_needed(self, seq: Sequence, num_new_tokens: int) -> int:
        return max(0, self.blocks_for(seq.num_computed + num_new_tokens) - len(seq.block_table))

    @property
    def num_free_blocks(self) -> int:
        """Blocks a sequence can get: free ones and cached ones no sequence references (evicted on demand)."""
        return self.blocks.num_free + (len(self.prefix.idle_blocks) if self.prefix else 0)

    @property
    def num_free_rings(self) -> int:
        return self.rings.num_free + (len(self.prefix.snapshots) if self.prefix else 0)

    def can_allocate(self, seq: Sequence, num_new_tokens: int) -> bool:
        if self.has_ring and seq.ring is None and self.num_free_rings == 0:
            return False
        return self.blocks_needed(seq, num_new_tokens) <= self.num_free_blocks

    def allocate(self, seq: Sequence, num_new_tokens: int, keep_snapshot: int | None = None) -> None:
        """Reserve what ``num_new_tokens`` more computed tokens need; call only after can_allocate.
        ``keep_snapshot``: a ring snapshot that must survive (the one this sequence is about to copy)."""
        if self.has_ring and seq.ring is None:
            seq.ring = self._new_ring(keep_snapshot)
        for _ in range(self.blocks_needed(seq, num_new_tokens)):
            seq.block_table.append(self._new_block())

    def _new_block(self) -> int:
        if self.blocks.num_free == 0 and self.prefix is not None:
            self.blocks.free(self.prefix.evict_block())  # cached blocks go before anyone is preempted
        return self.blocks.allocate()

    def _new_ring(self, keep: int | None = None) -> int:
        if self.rings.num_free == 0 and self.prefix is not None:
            self.rings.free(self.prefix.evict_snapshot(keep))
        return self.rings.allocate()

    def free(self, seq: Sequence) -> None:
        """Give back everything ``seq`` holds: device blocks, its ring, and host memory it was swapped to. Cached
        blocks nobody references any more stay findable until they are evicted."""
        for b in seq.block_table:
            if self.blocks.release(b):
                if self.prefix is not None and self.prefix.is_cached(b):
                    self.prefix.release_block(b)
                else:
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

    # -- prefix caching ---------------------------------------------------------------------
    def reusable_end(self, seq: Sequence) -> int:
        """Tokens of ``seq`` whose KV a fresh prefill of them would compute: under fa_decode its prompt before the
        question tail (generated and tail tokens attend fully there, a new prompt's would not); else all of them."""
        return seq.num_tokens if self.generated_reusable else max(0, seq.num_prompt - self.fa_tail)

    def lookup(self, seq: Sequence) -> PrefixMatch:
        """What ``seq``, holding nothing yet, can reuse; at least its last token is left to compute (its logits)."""
        if self.prefix is None or seq.num_computed or seq.swapped is not None or seq.block_table:
            return PrefixMatch(0)
        return self.prefix.match(seq.token_ids, min(self.reusable_end(seq), seq.num_tokens - 1), seq.prefix)

    def blocks_to_take(self, seq: Sequence, m: PrefixMatch) -> int:
        """Free blocks admitting ``seq`` with ``m`` takes: its new blocks, and matched ones now idle."""
        new = max(0, self.blocks_for(seq.num_tokens) - len(m.blocks))
        return new + (self.prefix.num_idle_in(m) if self.prefix is not None and self.has_paged else 0)

    def take(self, seq: Sequence, m: PrefixMatch) -> None:
        """``seq`` starts from ``m``: shares its blocks and counts its tokens computed (the caller copies the
        snapshot into the sequence's ring once it has one)."""
        assert self.prefix is not None and not seq.block_table and seq.num_computed == 0
        self.prefix.touch(m)
        for b in m.blocks:
            self.blocks.share(b)
        seq.block_table = list(m.blocks)
        seq.num_computed = m.length
        seq.prefix.node, seq.prefix.registered = m.node, m.length

    def register(self, seq: Sequence) -> None:
        """Index the full blocks ``seq`` has computed since the last call (those a fresh prefill would compute)."""
        if self.prefix is None:
            return
        st, bs = seq.prefix, self.block_size
        end = min(seq.num_computed, self.reusable_end(seq))
        while st.registered + bs <= end:
            node = self.prefix.node(st.node, st.block_key(seq.token_ids, st.registered // bs, bs))
            if self.has_paged:
                self.prefix.add_block(node, seq.block_table[st.registered // bs])
            st.node, st.registered = node, st.registered + bs

    def clear_prefix_cache(self) -> None:
        """Forget every cached prefix nobody uses and the hit counts (blocks and snapshots go back to the pools)."""
        if self.prefix is None:
            return
        while (b := self.prefix.evict_block()) is not None:
            self.blocks.free(b)
        while (r := self.prefix.evict_snapshot()) is not None:
            self.rings.free(r)
        self.prefix.stats = PrefixStats()

    def new_snapshot(self, seq: Sequence, at: int) -> int | None:
        """A ring for a snapshot of ``seq``'s ring as it stands for resuming at ``at`` (a registered block boundary),
        from free rings or the oldest snapshot (never from a sequence); None when there is none or ``at`` has one."""
        node = seq.prefix.node
        while node is not None and node.end > at:
            node = node.parent
        if self.prefix is None or node is None or node.end != at or node.snapshot is not None or seq.ring is None:
            return None
        if self.rings.num_free == 0 and not self.prefix.snapshots:
            return None
        ring = self._new_ring()
        self.prefix.add_snapshot(node, ring)
        return ring

    def max_tokens_per_seq(self) -> int | None:
        """Most tokens one sequence can hold; None when no layer is paged (rings never grow)."""
        return self.blocks.total * self.block_size if self.has_paged else None

    def usage(self) -> dict[str, dict[str, int]]:
        """Per pool: slots sequences hold (``used``), slots holding cached prefixes only (``cached``), all."""
        idle = len(self.prefix.idle_blocks) if self.prefix else 0
        snaps = len(self.prefix.snapshots) if self.prefix else 0
        return {
            CacheKind.PAGED.value: {"used": self.blocks.num_used - idle, "cached": idle, "total": self.blocks.total},
            CacheKind.RING.value: {"used": self.rings.num_used - snaps, "cached": snaps, "total": self.rings.total},
        }

    def is_idle(self) -> bool:
        """No sequence holds a slot or host memory (cached prefixes may remain)."""
        u = self.usage()
        return u["paged"]["used"] == 0 and u["ring"]["used"] == 0 and self.swap.used_bytes == 0
