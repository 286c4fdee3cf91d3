"""Free-list allocators for the two cache pools. No torch: unit-tested on CPU in milliseconds."""

from __future__ import annotations

from collections import deque


class OutOfSlotsError(RuntimeError):
    pass


class FreeList:
    """Ids 0..n-1 handed out and returned in O(1) each."""

    def __init__(self, num: int, what: str):
        if num < 0:
            raise ValueError(f"{what}: count must be >= 0, got {num}")
        self.total = num
        self.what = what
        self._free: deque[int] = deque(range(num))
        self._used: set[int] = set()

    @property
    def num_free(self) -> int:
        return len(self._free)

    @property
    def num_used(self) -> int:
        return len(self._used)

    def allocate(self) -> int:
        if not self._free:
            raise OutOfSlotsError(f"no free {self.what}")
        i = self._free.popleft()
        self._used.add(i)
        return i

    def free(self, i: int) -> None:
        if i not in self._used:
            raise ValueError(f"{self.what} {i} freed twice or never allocated")
        self._used.remove(i)
        self._free.append(i)


class BlockPool(FreeList):
    """Paged full-KV blocks of ``block_size`` token slots, shared by every paged layer.

    A block may be referenced by several sequences (a shared prompt prefix): ``share`` adds a reference and
    ``release`` drops one, telling the caller when the last one went (the block is then the caller's to free
    or to keep cached).
    """

    def __init__(self, num_blocks: int, block_size: int):
        if block_size <= 0:
            raise ValueError(f"block_size must be > 0, got {block_size}")
        super().__init__(num_blocks, "paged block")
        self.block_size = block_size
        self._refs: dict[int, int] = {}

    def blocks_for(self, num_tokens: int) -> int:
        return -(-num_tokens // self.block_size)

    def allocate(self) -> int:
        i = super().allocate()
        self._refs[i] = 1
        return i

    def share(self, i: int) -> None:
        """One more reference to an allocated block (referenced or not)."""
        if i not in self._used:
            raise ValueError(f"paged block {i} shared but never allocated")
        self._refs[i] = self._refs.get(i, 0) + 1

    def release(self, i: int) -> bool:
        """Drop one reference; True when it was the last (the block stays allocated: ``free`` it or keep it)."""
        n = self._refs.get(i, 0)
        if n <= 0:
            raise ValueError(f"paged block {i} released without a reference")
        if n == 1:
            del self._refs[i]
            return True
        self._refs[i] = n - 1
        return False

    def free(self, i: int) -> None:
        """Back to the free list; only a block nobody references."""
        if self._refs.get(i):
            raise ValueError(f"paged block {i} freed while referenced")
        super().free(i)

    @property
    def num_referenced(self) -> int:
        return len(self._refs)


class RingPool(FreeList):
    """Rings of ``ring_size`` slots, one per running sequence, shared by every ring layer."""

    def __init__(self, num_rings: int, slots_per_ring: int):
        super().__init__(num_rings, "ring")
        self.slots_per_ring = slots_per_ring


def ring_size(window: int, sinks: int, max_len: int | None) -> int:
    """Slots of one ring: ``sinks + window``, but never more than a sequence can hold (``max_len``).

    The one definition of a ring's size (pools, cache tensors and attention index rings with it).
    Capped at ``max_len <= sinks + window``, positions below ``max_len`` never wrap, so
    :func:`ring_slot` maps each to its own slot and every slot is one the window can see.
    """
    return sinks + window if max_len is None else min(sinks + window, max_len)


def ring_slot(pos: int, sinks: int, window: int) -> int:
    """Slot of position ``pos`` in a ring: sinks keep their own slots, the rest wrap over ``window``."""
    return pos if pos < sinks else sinks + (pos - sinks) % window


class SwapSpace:
    """Host memory for preempted sequences' KV, counted in bytes against a budget (0: no swapping).

    ``block_bytes``/``ring_bytes`` are one paged block across every paged layer and one ring across every
    ring layer (``PoolPlan``'s units), so a sequence's host copy costs what its device slots cost.
    """

    def __init__(self, budget_bytes: int, block_bytes: int, ring_bytes: int):
        if budget_bytes < 0:
            raise ValueError(f"swap budget must be >= 0 bytes, got {budget_bytes}")
        self.budget_bytes = budget_bytes
        self.block_bytes = block_bytes
        self.ring_bytes = ring_bytes
        self.used_bytes = 0

    def bytes_for(self, num_blocks: int, has_ring: bool) -> int:
        return num_blocks * self.block_bytes + (self.ring_bytes if has_ring else 0)

    def can_hold(self, nbytes: int) -> bool:
        return self.budget_bytes > 0 and nbytes <= self.budget_bytes - self.used_bytes

    def hold(self, nbytes: int) -> int:
        if not self.can_hold(nbytes):
            raise OutOfSlotsError(f"swap space: {nbytes} bytes do not fit ({self.used_bytes} of {self.budget_bytes} used)")
        self.used_bytes += nbytes
        return nbytes

    def release(self, nbytes: int) -> None:
        if nbytes > self.used_bytes:
            raise ValueError(f"swap space: releasing {nbytes} bytes, only {self.used_bytes} held")
        self.used_bytes -= nbytes
