"""What the device-resident block tables of the CUDA-graph decode path hold, and the writes that bring them up to date.

A decode graph reads each row's block table from a padded ``[rows, pages]`` tensor. Rebuilding that tensor from
Python lists every step costs O(batch × pages) on the host. Instead the device keeps one table per *table slot*
(``[slots + 1, pages]``, the last row all zeros for padding rows) and each graph step gathers its rows' slots into
the graph's table on the device. This mirror, torch-free and used under the engine lock, remembers which sequence
owns each slot and how many of its block ids the device already holds, so a step uploads only the block ids that
changed: a decoding sequence gains at most one block per step, so that is usually nothing or one id per row.

It relies on one property of ``CacheManager``: a sequence's ``block_table`` list is only ever appended to; any
other change (free, swap-out, swap-in, recompute after preemption, a prefix taken from the cache) binds a new list.
So "same list object, ``n`` ids already written" means the first ``n`` ids are still right. The mirror keeps a
reference to the list it last read, so an identity comparison cannot be fooled by a recycled object id.
"""

from __future__ import annotations

from dataclasses import dataclass

from swaa_engine.sequence import Sequence


@dataclass(frozen=True, slots=True)
class TableWrites:
    """A step's table rows and the block ids to write before they are read."""

    slots: tuple[int, ...]  # table slot of each decode row, in row order
    flat: tuple[int, ...]  # ``slot * pages + page`` of each id written this step
    blocks: tuple[int, ...]  # the block ids written there


class ResidentTables:
    def __init__(self, num_slots: int, pages: int):
        """``num_slots``: at least the rows of the largest step; slot ``num_slots`` is the padding rows' zero table."""
        if num_slots < 1:
            raise ValueError(f"num_slots must be >= 1, got {num_slots}")
        if pages < 1:
            raise ValueError(f"pages must be >= 1, got {pages}")
        self.num_slots, self.pages = num_slots, pages
        self._slot_of: dict[Sequence, int] = {}  # Sequence hashes by identity (eq=False)
        self._held: list[tuple[list[int] | None, int]] = [(None, 0)] * num_slots  # (list last read, ids written)
        self._free = list(range(num_slots - 1, -1, -1))

    @property
    def padding_slot(self) -> int:
        return self.num_slots

    def plan(self, seqs: list[Sequence]) -> TableWrites:
        """Slots for ``seqs`` (this step's decode rows, in order) and the writes that make the device's copy of
        each slot equal its sequence's block table. Sequences absent from this step give their slots back (one
        that returns later is written whole again). Call under the engine lock; O(rows + ids written)."""
        if len(seqs) > self.num_slots:
            raise ValueError(f"{len(seqs)} rows exceed the {self.num_slots} table slots")
        present = set(seqs)
        for seq in [s for s in self._slot_of if s not in present]:
            slot = self._slot_of.pop(seq)
            self._held[slot] = (None, 0)
            self._free.append(slot)
        slots, flat, blocks, P = [], [], [], self.pages
        for seq in seqs:
            slot = self._slot_of.get(seq)
            if slot is None:
                slot = self._slot_of[seq] = self._free.pop()
            table, n = self._held[slot]
            cur = seq.block_table
            if table is not cur or n > len(cur):  # a new list: nothing of it is on the device yet
                n = 0
            if n < len(cur):
                if len(cur) > P:
                    raise ValueError(f"a block table of {len(cur)} blocks exceeds the {P} pages of the resident tables")
                base = slot * P
                flat.extend(range(base + n, base + len(cur)))
                blocks.extend(cur[n:])
            self._held[slot] = (cur, len(cur))
            slots.append(slot)
        return TableWrites(tuple(slots), tuple(flat), tuple(blocks))

    def reset(self) -> None:
        """The device's tables are in an unknown state (a step failed between planning and its end): every slot is
        written whole at its next use."""
        self._held = [(None, 0)] * self.num_slots
