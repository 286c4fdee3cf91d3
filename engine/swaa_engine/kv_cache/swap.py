"""Preempted sequences' KV in host memory, copied out of their device slots and back into new ones; ring copies on
the device for prefix-cache snapshots."""

from __future__ import annotations

import torch

from swaa_engine.kv_cache.manager import SwapOp
from swaa_engine.swaa import CacheKind, LayerSpec


class HostSwap:
    """Host copies keyed by request id: ``[layers, K/V, blocks, ...]`` of the paged layers, the same of the rings.

    On CUDA the host side is pinned, so both directions are asynchronous copies on the step's stream, ordered
    before the kernels that reuse the slots; the caching host allocator keeps a buffer alive until its copy
    has run. The byte budget is kept by ``CacheManager``'s ``SwapSpace``; this only moves the data.
    """

    def __init__(self, caches: list[tuple[torch.Tensor, torch.Tensor]], specs: tuple[LayerSpec, ...], device: torch.device):
        self.caches = caches
        self.device = device
        self.layers = {kind: [i for i, s in enumerate(specs) if s.cache_kind is kind] for kind in CacheKind}
        # host copies are stacked per group of layers whose cache rows have one shape (ring layers of different
        # windows have rings of different sizes)
        self.groups: dict[CacheKind, list[list[int]]] = {}
        for kind, layers in self.layers.items():
            by_shape: dict[tuple, list[int]] = {}
            for i in layers:
                by_shape.setdefault(tuple(caches[i][0].shape[1:]), []).append(i)
            self.groups[kind] = list(by_shape.values())
        self._host: dict[str, dict[CacheKind, list[torch.Tensor]]] = {}

    def __len__(self) -> int:
        return len(self._host)

    def _slots(self, op: SwapOp) -> dict[CacheKind, list[int]]:
        slots = {CacheKind.PAGED: list(op.blocks), CacheKind.RING: [] if op.ring is None else [op.ring]}
        return {kind: ids for kind, ids in slots.items() if ids and self.layers[kind]}

    def swap_out(self, op: SwapOp) -> None:
        saved = {}
        for kind, ids in self._slots(op).items():
            idx = torch.tensor(ids, dtype=torch.long, device=self.device)
            saved[kind] = []
            for layers in self.groups[kind]:
                ref = self.caches[layers[0]][0]
                host = torch.empty((len(layers), 2, len(ids), *ref.shape[1:]), dtype=ref.dtype,
                                   pin_memory=self.device.type == "cuda")
                for j, layer in enumerate(layers):
                    for kv in (0, 1):
                        host[j, kv].copy_(self.caches[layer][kv].index_select(0, idx), non_blocking=True)
                saved[kind].append(host)
        self._host[op.request_id] = saved

    def swap_in(self, op: SwapOp) -> None:
        saved = self._host.pop(op.request_id)
        for kind, ids in self._slots(op).items():
            idx = torch.tensor(ids, dtype=torch.long, device=self.device)
            for layers, host in zip(self.groups[kind], saved[kind]):
                assert host.shape[2] == len(ids), "a sequence comes back into as many slots as it left"
                for j, layer in enumerate(layers):
                    for kv in (0, 1):
                        self.caches[layer][kv].index_copy_(0, idx, host[j, kv].to(self.device, non_blocking=True))

    def copy_rings(self, pairs: list[tuple[int, int]]) -> None:
        """Device copies from ring ``src`` to ring ``dst`` in every ring layer, in order (prefix-cache snapshots)."""
        if not pairs or not self.layers[CacheKind.RING]:
            return
        one_pass = not {b for _, b in pairs} & {a for a, _ in pairs}  # else a later copy reads an earlier one's output
        src = torch.tensor([a for a, _ in pairs], dtype=torch.long, device=self.device)
        dst = torch.tensor([b for _, b in pairs], dtype=torch.long, device=self.device)
        for layer in self.layers[CacheKind.RING]:
            for kv in self.caches[layer]:
                if one_pass:
                    kv.index_copy_(0, dst, kv.index_select(0, src))
                else:
                    for a, b in pairs:
                        kv[b].copy_(kv[a])

    def drop(self, request_id: str) -> None:
        """Forget a finished or aborted request's host copy (if it had one)."""
        self._host.pop(request_id, None)
