"""Prefix caching: computed prompt KV found again by the tokens before it, shared instead of recomputed. No torch.

The index is a trie of full blocks: a node stands for ``block_size`` token ids following its parent's, so it
names one exact prefix ``[0, end)`` (token tuples compared exactly: no hash collisions). A node may hold
- the paged block with its tokens' KV in every paged layer (shared by reference count; when no sequence
  references it, it waits in an LRU list and is the first thing taken when blocks run out), and
- a ring snapshot: a copy of the rings after computing ``[0, end)`` (sinks + the window's last slots in every
  ring layer), from which a sequence continues exactly as if it had computed the prefix itself.

What a node's KV may be reused for is fixed by how it was computed (docs/architecture.md, "Prefix caching"): the
engine registers only tokens whose KV a fresh prefill of the same tokens would compute. One engine serves one
model, SWAA config and adapter, so those need not be part of the key.
"""

from __future__ import annotations

import itertools
from collections import OrderedDict
from dataclasses import dataclass, field


@dataclass(eq=False)
class _Node:
    id: int
    key: tuple[int, tuple[int, ...]]  # (parent id, the block's token ids)
    parent: _Node | None
    end: int  # tokens [0, end) this node completes
    block: int | None = None
    snapshot: int | None = None
    children: int = 0


@dataclass(frozen=True)
class PrefixMatch:
    """What a new sequence can reuse: ``length`` tokens, the paged ``blocks`` covering them, and the ring
    ``snapshot`` to copy into its ring (None when no layer is a ring)."""

    length: int
    blocks: tuple[int, ...] = ()
    snapshot: int | None = None
    node: _Node | None = None  # the node ending at ``length``
    known: int = 0  # the longest prefix the index knows (>= length: past the last snapshot, rings are recomputed)


@dataclass
class PrefixStats:
    queried_tokens: int = 0  # prompt tokens looked up at first admission
    hit_tokens: int = 0  # of those, reused from the cache


class PrefixCache:
    def __init__(self, block_size: int, has_paged: bool, has_ring: bool):
        self.block_size, self.has_paged, self.has_ring = block_size, has_paged, has_ring
        self._nodes: dict[tuple[int, tuple[int, ...]], _Node] = {}
        self._ids = itertools.count()
        self._block_node: dict[int, _Node] = {}
        self.idle_blocks: OrderedDict[int, None] = OrderedDict()  # cached, referenced by no sequence; LRU first
        self.snapshots: OrderedDict[int, _Node] = OrderedDict()  # ring id -> node; LRU first
        self.stats = PrefixStats()
        # bumped whenever a node loses its block or snapshot (the only way a path matched earlier stops matching):
        # a sequence's last walk is resumed, not redone, while it is unchanged
        self.epoch = 0
        self.snapshots_added = 0  # bumped with each snapshot: a walk's last node with one may have changed

    # -- lookup ---------------------------------------------------------------------------------
    def match(self, tokens: list[int], limit: int, state: PrefixState | None = None) -> PrefixMatch:
        """The longest reusable prefix of ``tokens`` no longer than ``limit`` (block-aligned).

        ``state``: the sequence's own (``tokens`` are its token ids): its block keys are built once, and its last walk
        through the index is resumed while the index has lost no node's block or snapshot since. The scheduler looks
        every waiting request up again at each admission attempt; resumed, that costs the blocks added since."""
        bs = self.block_size
        n = limit // bs
        walk = state.walk if state is not None else None
        if walk is None or walk.epoch != self.epoch:
            walk = _Walk(self.epoch)
            if state is not None:
                state.walk = walk
        path, blocks = walk.nodes, walk.blocks
        if len(path) > n:  # a lower limit than last time: the walk's first n blocks still match
            del path[n:], blocks[n:]
            walk.scanned = 0
        parent = path[-1].id if path else -1
        keys = state.keys if state is not None else []
        for i in range(len(path), n):
            if i == len(keys):  # keys made as far as the walk goes, a few blocks ahead
                if state is None:
                    keys.append(tuple(tokens[i * bs:(i + 1) * bs]))
                else:
                    state.extend_keys(tokens, min(n, i + 8), bs)
            node = self._nodes.get((parent, keys[i]))
            if node is None or (self.has_paged and node.block is None):
                break
            path.append(node)
            blocks.append(node.block)
            parent = node.id
        known = path[-1].end if path else 0
        k = len(path)
        if self.has_ring:
            # the last node with a snapshot: only the nodes added since the last look, if no snapshot was added since
            stop = walk.scanned if walk.snapshots == self.snapshots_added and walk.scanned <= k else 0
            while k > stop and path[k - 1].snapshot is None:
                k -= 1
            if k == stop and stop:
                k = walk.snapshot_k
            walk.scanned, walk.snapshots, walk.snapshot_k = len(path), self.snapshots_added, k
        if not k:
            return PrefixMatch(0, known=known)
        last = path[k - 1]
        return PrefixMatch(last.end, tuple(blocks[:k]) if self.has_paged else (),
                           last.snapshot if self.has_ring else None, last, known)

    def touch(self, m: PrefixMatch) -> None:
        """A sequence takes ``m``: its blocks leave the idle list (the caller adds the references), its snapshot is
        the most recently used."""
        for b in m.blocks:
            self.idle_blocks.pop(b, None)
        if m.snapshot is not None:
            self.snapshots.move_to_end(m.snapshot)

    def num_idle_in(self, m: PrefixMatch) -> int:
        return sum(b in self.idle_blocks for b in m.blocks)

    # -- registration ---------------------------------------------------------------------------
    def node(self, parent: _Node | None, tokens: tuple[int, ...]) -> _Node:
        """The node for ``tokens`` after ``parent`` (None: the first block), created if new."""
        key = (-1 if parent is None else parent.id, tokens)
        n = self._nodes.get(key)
        if n is None:
            end = (0 if parent is None else parent.end) + len(tokens)
            n = self._nodes[key] = _Node(next(self._ids), key, parent, end)
            if parent is not None:
                parent.children += 1
        return n

    def add_block(self, node: _Node, block: int) -> bool:
        """Offer ``block`` as ``node``'s KV; False when the node already has one (the offered block stays private)."""
        if node.block is not None:
            return node.block == block
        node.block = block
        self._block_node[block] = node
        return True

    def add_snapshot(self, node: _Node, ring: int) -> None:
        assert node.snapshot is None
        node.snapshot = ring
        self.snapshots[ring] = node
        self.snapshots_added += 1

    def is_cached(self, block: int) -> bool:
        return block in self._block_node

    def release_block(self, block: int) -> None:
        """The last reference to a cached block went: it waits to be found again, or evicted."""
        self.idle_blocks[block] = None

    # -- eviction -------------------------------------------------------------------------------
    def evict_block(self) -> int | None:
        """The least recently used idle block, forgotten (the caller frees it); None when there is none."""
        if not self.idle_blocks:
            return None
        b, _ = self.idle_blocks.popitem(last=False)
        node = self._block_node.pop(b)
        node.block = None
        self.epoch += 1
        self._prune(node)
        return b

    def evict_snapshot(self, keep: int | None = None) -> int | None:
        """The least recently used snapshot ring (not ``keep``), forgotten; None when there is none."""
        for ring in self.snapshots:
            if ring != keep:
                node = self.snapshots.pop(ring)
                node.snapshot = None
                self.epoch += 1
                self._prune(node)
                return ring
        return None

    def _prune(self, node: _Node | None) -> None:
        # a node holding nothing and leading nowhere names a prefix nobody can use: drop it, then its parent
        while node is not None and node.block is None and node.snapshot is None and node.children == 0:
            del self._nodes[node.key]
            if node.parent is not None:
                node.parent.children -= 1
            node = node.parent

    def __len__(self) -> int:
        return len(self._nodes)


@dataclass(eq=False)
class _Walk:
    """A sequence's last walk down the index: the nodes of its leading full blocks found there, and their blocks."""

    epoch: int  # the index's epoch when it was made: valid while that is unchanged
    nodes: list[_Node] = field(default_factory=list)
    blocks: list[int | None] = field(default_factory=list)
    # ring layers: nodes[:scanned] were looked at when the index had had ``snapshots`` snapshots added, and the last
    # of them with a snapshot was nodes[snapshot_k - 1] (0: none)
    scanned: int = 0
    snapshots: int = -1
    snapshot_k: int = 0


@dataclass
class PrefixState:
    """A sequence's progress through the index: the node of its last registered block, and its ring snapshots:
    fixed boundaries its chunks stop at (``snapshot_at``, then ``snapshot_points``; None when none is due), and
    periodic ones at least ``stride`` tokens apart, taken where a chunk ends on a block boundary before ``end``.
    Also what the scheduler asks of it again at every admission attempt, made once: its full blocks' keys, a hash
    chain over them, its last walk."""

    node: _Node | None = None
    registered: int = 0  # leading tokens already in the index
    snapshot_at: int | None = None
    snapshot_points: list[int] = field(default_factory=list)  # later boundaries due, ascending
    stride: int = 0  # 0: no periodic snapshots
    last_snapshot: int = 0  # position of the latest snapshot (or where the sequence started)
    end: int = 0  # periodic snapshots stop before this boundary (the last fixed one)
    cached_tokens: int = 0  # reused at its first admission (reported in usage)
    # keys[i]: the token ids of full block i; chain[i]: a hash of keys[:i + 1]. A sequence's tokens only grow, so
    # neither changes once made (kept through preemption)
    keys: list[tuple[int, ...]] = field(default_factory=list)
    chain: list[int] = field(default_factory=list)
    walk: _Walk | None = None

    def reset(self) -> None:
        """Its KV was dropped (preempted to recompute): it starts over from the index's root."""
        self.node, self.registered, self.snapshot_at, self.snapshot_points = None, 0, None, []
        self.stride = self.last_snapshot = self.end = 0

    def periodic_due(self, at: int) -> bool:
        """A periodic snapshot is due at boundary ``at``."""
        return self.stride > 0 and at < self.end and at - self.last_snapshot >= self.stride

    def block_key(self, tokens: list[int], i: int, block_size: int) -> tuple[int, ...]:
        """The token ids of full block ``i`` of ``tokens`` (this sequence's), made once."""
        self.extend_keys(tokens, i + 1, block_size)
        return self.keys[i]

    def shares_blocks(self, tokens: list[int], other: PrefixState, other_tokens: list[int], n: int,
                      block_size: int) -> bool:
        """Whether this sequence's first ``n`` full blocks are ``other``'s (both have them): their hash chains agree
        there. Hash-equal blocks are taken as equal (a 64-bit collision); the scheduler's deferral uses this, never
        the reuse of KV (``match`` is exact)."""
        self.extend_keys(tokens, n, block_size)
        other.extend_keys(other_tokens, n, block_size)
        return self.chain[n - 1] == other.chain[n - 1]

    def extend_keys(self, tokens: list[int], n: int, bs: int) -> None:
        """Keys (and chain) for the first ``n`` full blocks of ``tokens`` (this sequence's)."""
        keys, chain = self.keys, self.chain
        while len(keys) < n:
            j = len(keys)
            key = tuple(tokens[j * bs:(j + 1) * bs])
            assert len(key) == bs, "only full blocks have keys"
            keys.append(key)
            chain.append(hash((chain[-1] if chain else 0, key)))
