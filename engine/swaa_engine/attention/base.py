"""The attention backend interface and its registry.

A step is a packed batch: each sequence contributes ``num_tokens`` consecutive query tokens
starting at position ``start``. Single generated tokens (decodes) come first, so backends can
serve them in one batched call (paged: page table + sequence lengths; ring: every valid slot);
the rest are prefill chunks that read earlier context from either cache.
"""

from __future__ import annotations

import importlib
import logging
from abc import ABC, abstractmethod
from dataclasses import dataclass
from typing import Any, ClassVar

import numpy as np
import torch

from swaa_engine.attention.ops import DecodeKernel, DecodeTables, block_tables, plan_cascade
from swaa_engine.kv_cache.pools import ring_size, ring_slot
from swaa_engine.sequence import is_decode
from swaa_engine.swaa import LayerSpec
from swaa_engine.transfer import upload

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class StepEntry:
    start: int  # position of the first query token (= tokens already cached)
    num_tokens: int
    num_prompt: int  # positions >= num_prompt are generated tokens (full attention under fa_decode)
    block_table: tuple[int, ...]
    ring: int | None
    full_from: int | None = None  # fa_decode layers attend fully from here on (None: num_prompt; earlier with fa_tail)

    @property
    def full_start(self) -> int:
        return self.num_prompt if self.full_from is None else self.full_from

    @property
    def end(self) -> int:
        return self.start + self.num_tokens

    @property
    def is_decode(self) -> bool:
        return is_decode(self.start, self.num_tokens, self.num_prompt)


@dataclass(frozen=True)
class StepLayout:
    entries: tuple[StepEntry, ...]
    num_decodes: int  # entries[:num_decodes] are decodes

    def __post_init__(self) -> None:
        assert all(e.is_decode for e in self.entries[: self.num_decodes])
        assert not any(e.is_decode for e in self.entries[self.num_decodes :])

    @property
    def num_tokens(self) -> int:
        return sum(e.num_tokens for e in self.entries)


@dataclass(frozen=True)
class CacheGeometry:
    block_size: int
    window: int | None
    sinks: int
    max_len: int | None = None  # the engine's max_model_len; must be the one its layer specs were built with

    @property
    def ring_slots(self) -> int:
        """Slots per ring: the stride of ``ring * ring_slots + slot`` (the cache tensors' second dimension)."""
        return ring_size(self.window or 0, self.sinks, self.max_len)


@dataclass(frozen=True)
class CacheWrites:
    """Where this step's keys go: flat paged slots per token; for rings, which tokens survive and their slots
    (int64 arrays, ready for one ``torch.tensor`` copy each)."""

    paged_slots: np.ndarray | None  # None: no sequence in the step has a block table
    ring_tokens: np.ndarray | None  # rows of the step whose keys are still in the ring after it
    ring_slots: np.ndarray | None


def cache_writes(layout: StepLayout, g: CacheGeometry) -> CacheWrites:
    """Per entry, not per token: a decode is one slot (plain arithmetic), a prefill chunk's slots are computed by
    numpy over its positions (a Python loop over a chunk's thousands of tokens cost milliseconds per step)."""
    bs, W, S, R = g.block_size, g.window, g.sinks, g.ring_slots
    has_ring = any(e.ring is not None for e in layout.entries)
    has_paged = any(e.block_table for e in layout.entries)
    decodes, chunks = layout.entries[: layout.num_decodes], layout.entries[layout.num_decodes :]
    # decodes come first: their token rows are 0..num_decodes-1, and a single token always survives in its ring
    paged = [[e.block_table[e.start // bs] * bs + e.start % bs for e in decodes]] if has_paged else None
    ring_tok = [list(range(len(decodes)))] if has_ring else None
    ring_slots = [[e.ring * R + ring_slot(e.start, S, W) for e in decodes]] if has_ring else None
    t = len(decodes)
    for e in chunks:
        pos = np.arange(e.start, e.end, dtype=np.int64)
        if has_paged:
            paged.append(np.asarray(e.block_table, dtype=np.int64)[pos // bs] * bs + pos % bs)
        if has_ring:
            # only the last W window positions (and any sink positions) survive this chunk
            keep = (pos < S) | (pos >= max(e.start, e.end - W))
            kept = pos[keep]
            ring_tok.append(t + kept - e.start)
            ring_slots.append(e.ring * R + np.where(kept < S, kept, S + (kept - S) % W))
        t += e.num_tokens

    def flat(parts):
        return None if parts is None else np.concatenate([np.asarray(x, dtype=np.int64) for x in parts])

    return CacheWrites(flat(paged), flat(ring_tok), flat(ring_slots))


class AttentionBackend(ABC):
    """Computes attention for one layer over a packed step and keeps that layer's cache current.

    ``prepare`` runs once per step and returns metadata shared by all layers; ``forward`` runs
    per layer, writes the new keys/values into the layer's cache and returns ``[T, heads*dim]``.
    Paged caches are ``[num_blocks, block_size, kv_heads, head_dim]``; ring caches are
    ``[num_rings, ring_slots, kv_heads, head_dim]`` (``sinks + window``, capped at max_model_len); keys
    are stored after RoPE.
    """

    name: ClassVar[str]

    def __init__(self, geometry: CacheGeometry, num_heads: int, num_kv_heads: int, head_dim: int, device: torch.device,
                 scale: float | None = None):
        """``scale``: of the attention scores, head_dim ** -0.5 unless the model says otherwise (Gemma 3)."""
        self.geometry = geometry
        self.num_heads = num_heads
        self.num_kv_heads = num_kv_heads
        self.head_dim = head_dim
        self.scale = head_dim**-0.5 if scale is None else scale
        self.device = device
        self.decode_kernel = DecodeKernel(num_heads, head_dim, device)

    @classmethod
    def supports(cls, device: torch.device) -> bool:
        return True

    @classmethod
    def refuses(cls, device: torch.device, *, geometry: CacheGeometry, num_heads: int, num_kv_heads: int,
                head_dim: int, scale: float | None = None) -> str | None:
        """Why this backend cannot run a model of these shapes on ``device`` (None: it can). Checked before
        the backend is built, so that a kernel refusing a shape (flash-attn-4 and head_dim 256, say) means a
        logged fallback at start-up rather than a failed first step."""
        return None

    def heads(self, q, k, v, cache):
        """Per-head views of a step's q/k/v and flat ``[slots, kv_heads, dim]`` views of the layer's K/V cache."""
        T = q.shape[0]
        kc, vc = cache
        return (q.view(T, self.num_heads, self.head_dim), k.view(T, self.num_kv_heads, self.head_dim),
                v.view(T, self.num_kv_heads, self.head_dim), kc.view(-1, self.num_kv_heads, self.head_dim),
                vc.view(-1, self.num_kv_heads, self.head_dim))

    def decode_tables(self, layout: StepLayout) -> tuple[DecodeTables | None, DecodeTables | None]:
        """(paged, ring) tables of the step's decodes; a ring is one page of ``ring_slots`` slots."""
        decodes = layout.entries[: layout.num_decodes]
        if not decodes:
            return None, None
        dev, g, hk = self.device, self.geometry, self.num_kv_heads
        paged = ring = None
        if any(e.block_table for e in layout.entries):
            n = max(e.end for e in decodes)
            tables, ends = [e.block_table for e in decodes], [e.end for e in decodes]
            # the torch decode reads a prefix of pages shared by several rows once (ops.plan_cascade)
            cascade = plan_cascade(tables, ends, g.block_size, dev) if dev.type == "cpu" else None
            paged = DecodeTables(block_tables(tables, dev), upload(ends, torch.int32, dev),
                                 g.block_size, n, self.decode_kernel.splits(len(decodes), hk, n), cascade)
        if any(e.ring is not None for e in layout.entries):
            R = g.ring_slots
            n = min(R, max(e.end for e in decodes))
            ring = DecodeTables(upload([[e.ring] for e in decodes], torch.int32, dev),
                                upload([min(e.end, R) for e in decodes], torch.int32, dev),
                                R, n, self.decode_kernel.splits(len(decodes), hk, n))
        return paged, ring

    def decode(self, tables: DecodeTables, q, kflat, vflat, out) -> None:
        """The first ``B`` rows of ``q`` against their caches, into the first ``B`` rows of ``out``."""
        B = tables.lens.shape[0]
        self.decode_kernel(q[:B], kflat, vflat, tables, self.scale, out[:B])

    @abstractmethod
    def prepare(self, layout: StepLayout) -> Any: ...

    @abstractmethod
    def decode_only_meta(self, num: int, paged_write, ring_write_tok, ring_write_slot,
                         paged: DecodeTables | None, ring: DecodeTables | None) -> Any:
        """Metadata of a step made of ``num`` decodes only, from tensors the caller owns (CUDA graphs
        replay it with new contents in the same tensors)."""

    @abstractmethod
    def forward(
        self, spec: LayerSpec, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor,
        cache: tuple[torch.Tensor, torch.Tensor], meta: Any,
    ) -> torch.Tensor: ...


# name -> "module:Class", imported on first use so optional kernels cost nothing when unused.
_REGISTRY: dict[str, str] = {
    "torch": "swaa_engine.attention.torch_backend:TorchBackend",
    "flash": "swaa_engine.attention.flash_backend:FlashBackend",
}
_PREFERENCE = ("flash", "torch")


def _load(name: str) -> type[AttentionBackend]:
    module, cls = _REGISTRY[name].split(":")
    return getattr(importlib.import_module(module), cls)


def available_backends() -> list[str]:
    return sorted(_REGISTRY)


def create_backend(name: str, device: torch.device, **kwargs) -> AttentionBackend:
    """``auto`` takes the first backend in preference order that imports, supports the device and accepts the
    model's shapes (``refuses``). A named backend that refuses the shapes falls back the same way, with a
    warning naming the reason: the engine serves on a backend that works, and says which (``backend.name``)."""
    if name != "auto":
        if name not in _REGISTRY:
            raise ValueError(f"unknown attention backend {name!r}; available: {available_backends()}")
        cls = _load(name)
        if not cls.supports(device):
            raise ValueError(f"attention backend {name!r} does not support device {device}")
        why = cls.refuses(device, **kwargs)
        if why is None:
            return cls(device=device, **kwargs)
        backend = _first_usable(device, kwargs, skip=name)
        log.warning("attention backend %r refuses this model (%s): using %r instead", name, why, backend.name)
        return backend
    return _first_usable(device, kwargs)


def _first_usable(device: torch.device, kwargs: dict, skip: str | None = None) -> AttentionBackend:
    for cand in _PREFERENCE:
        if cand not in _REGISTRY or cand == skip:
            continue
        try:
            cls = _load(cand)
        except Exception as e:  # a kernel package that is missing or cannot load its libraries
            log.info("attention backend %r unavailable: %r", cand, e)
            continue
        if not cls.supports(device):
            continue
        why = cls.refuses(device, **kwargs)
        if why is not None:
            log.warning("attention backend %r refuses this model: %s", cand, why)
            continue
        return cls(device=device, **kwargs)
    raise RuntimeError("no attention backend supports this device and model")
