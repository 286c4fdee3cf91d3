"""Layers that slide by different windows in one model (Gemma 3 with SWAA on its full layers: its own sliding
layers keep 512, the others take the SWAA window): one backend per window, each layer sent to its window's.

Every backend keeps one ``CacheGeometry`` (a window, its ring size): per-window metadata stays exactly what a
single-window model computes, and the backends need no change. Full layers go to any of them (a full layer
reads only the paged metadata every backend prepares). CUDA-graph decode steps need one geometry, so a model
with several windows decodes eagerly (``supports_graphs``).
"""

from __future__ import annotations

from typing import Any

import torch

from swaa_engine.attention.base import AttentionBackend, CacheGeometry, StepLayout, create_backend
from swaa_engine.swaa import LayerSpec


def geometries(specs: tuple[LayerSpec, ...], block_size: int, max_len: int | None) -> dict[int | None, CacheGeometry]:
    """One geometry per distinct sliding window of ``specs`` (``{None: …}`` when no layer slides)."""
    windows = {s.window for s in specs if s.window is not None}
    sinks = {s.sinks for s in specs if s.window is not None}
    assert len(sinks) <= 1, "every sliding layer has the deployment's sinks"
    s = sinks.pop() if sinks else 0
    return {w: CacheGeometry(block_size, w, s, max_len=max_len) for w in sorted(windows)} or \
        {None: CacheGeometry(block_size, None, 0, max_len=max_len)}


class PerWindowBackend:
    """Duck-types ``AttentionBackend`` for the model and the runner: ``prepare`` once per window, ``forward`` by
    the layer's window."""

    supports_graphs = False

    def __init__(self, backends: dict[int, AttentionBackend]):
        assert len(backends) > 1, "one window needs no dispatch: use its backend"
        self.backends = backends
        first = next(iter(backends.values()))
        self.name, self.device, self.decode_kernel = first.name, first.device, first.decode_kernel
        self.num_heads, self.num_kv_heads, self.head_dim, self.scale = first.num_heads, first.num_kv_heads, first.head_dim, first.scale
        self._any = next(iter(backends))  # full layers: any backend's paged metadata serves them

    def prepare(self, layout: StepLayout) -> dict[int, Any]:
        return {w: b.prepare(layout) for w, b in self.backends.items()}

    def forward(self, spec: LayerSpec, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor,
                cache: tuple[torch.Tensor, torch.Tensor], meta: dict[int, Any]) -> torch.Tensor:
        w = self._any if spec.window is None else spec.window
        return self.backends[w].forward(spec, q, k, v, cache, meta[w])


def create_for_specs(name: str, device: torch.device, specs: tuple[LayerSpec, ...], block_size: int,
                     max_len: int | None, **kwargs) -> AttentionBackend | PerWindowBackend:
    """The step's attention for these layer specs: one backend, or one per window when the layers differ."""
    geos = geometries(specs, block_size, max_len)
    backends = {w: create_backend(name, device, geometry=g, **kwargs) for w, g in geos.items()}
    return next(iter(backends.values())) if len(backends) == 1 else PerWindowBackend(backends)
