"""The serving mask inside a transformers model, for training on packed batches.

Registered as a transformers attention implementation: while :func:`swaa_masks` is active, each
layer attends with its own SWAA mask over the packed row (see ``packing``). Two kernels compute the
same thing:
- ``sdpa``: one masked SDPA call per example, the mask from ``attention.masks.swaa_mask`` (the function
  the engine's torch backend uses); CPU and GPU.
- ``flex``: FlexAttention over the whole row with a block-sparse mask (GPU; forward and backward are
  compiled Triton kernels, so cost scales with the visible blocks, not T²).
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F

from swaa_engine.attention.masks import swaa_mask
from swaa_engine.swaa import AttentionKind, LayerSpec
from swaa_train.config import KERNELS
from swaa_train.packing import PackedBatch

IMPLEMENTATION = "swaa_train"
# A plain global, not a ContextVar: gradient checkpointing recomputes the forward during backward, which on CUDA runs
# in autograd's device thread where a context variable set here would be unset. Training is one thread.
_STATE: list = []

# Which layers let full rows (answers, question tail) see every earlier key: only those that keep a full cache.
_FULL_ROWS_APPLY: dict[AttentionKind, bool] = {
    AttentionKind.FULL: False,  # already full
    AttentionKind.SLIDING_FA_DECODE: True,
    AttentionKind.SLIDING_RING: False,
}


@dataclass
class _State:
    specs: tuple[LayerSpec, ...]
    batch: PackedBatch
    kernel: str
    block_masks: dict = field(default_factory=dict)  # per layer kind: built once per batch, shared by its layers
    dense_masks: dict = field(default_factory=dict)


def _sdpa(spec: LayerSpec, st: _State, q, k, v, scaling):
    b = st.batch
    outs = []
    for s, e in b.bounds:
        key = (spec.kind, spec.window, spec.sinks, s)
        if key not in st.dense_masks:
            pos = b.position_ids[0, s:e]
            full_rows = b.full_row[s:e] if _FULL_ROWS_APPLY[spec.kind] else None
            st.dense_masks[key] = swaa_mask(pos, pos, spec.window, spec.sinks, full_rows)
        mask = st.dense_masks[key]
        outs.append(F.scaled_dot_product_attention(q[:, :, s:e], k[:, :, s:e], v[:, :, s:e], attn_mask=mask,
                                                   scale=scaling, enable_gqa=True))
    return torch.cat(outs, dim=2)


_FLEX_COMPILED = None


def _flex_fn(device: torch.device):
    """Compiled on CUDA (the fast kernels); eager elsewhere, where it only serves to test the mask_mod."""
    global _FLEX_COMPILED
    from torch.nn.attention.flex_attention import flex_attention

    if device.type != "cuda":
        return flex_attention
    if _FLEX_COMPILED is None:
        _FLEX_COMPILED = torch.compile(flex_attention, dynamic=False)
    return _FLEX_COMPILED


def _block_mask(spec: LayerSpec, st: _State):
    key = (spec.kind, spec.window, spec.sinks)
    if key not in st.block_masks:
        from torch.nn.attention.flex_attention import create_block_mask

        b = st.batch
        doc, pos, full = b.doc, b.position_ids[0], b.full_row
        window, sinks, full_rows = spec.window, spec.sinks, _FULL_ROWS_APPLY[spec.kind]

        def mask_mod(_b, _h, qi, ki):
            seen = (doc[qi] == doc[ki]) & (ki <= qi)
            if window is None:
                return seen
            slide = (pos[qi] - pos[ki] < window) | (pos[ki] < sinks)
            return seen & ((slide | full[qi]) if full_rows else slide)

        T = b.num_tokens
        st.block_masks[key] = create_block_mask(mask_mod, None, None, T, T, device=doc.device)
    return st.block_masks[key]


def _flex(spec: LayerSpec, st: _State, q, k, v, scaling):
    return _flex_fn(q.device)(q, k, v, block_mask=_block_mask(spec, st), scale=scaling, enable_gqa=True)


_KERNEL_FN = {"sdpa": _sdpa, "flex": _flex}


def _attention(module, query, key, value, attention_mask, scaling=None, dropout=0.0, **kwargs):
    st: _State = _STATE[-1]
    out = _KERNEL_FN[st.kernel](st.specs[module.layer_idx], st, query, key, value, scaling)
    return out.transpose(1, 2).contiguous(), None


def register() -> None:
    from transformers import AttentionInterface, AttentionMaskInterface

    AttentionInterface.register(IMPLEMENTATION, _attention)
    # masks are built per layer from the packed batch; transformers' own T×T mask is not needed
    AttentionMaskInterface.register(IMPLEMENTATION, lambda *a, **k: None)


def default_kernel(device: torch.device) -> str:
    return "flex" if device.type == "cuda" else "sdpa"


@contextlib.contextmanager
def swaa_masks(model, specs: tuple[LayerSpec, ...], batch: PackedBatch, kernel: str):
    """Run ``model`` (a transformers causal LM, possibly peft-wrapped) with the SWAA masks of ``batch``.

    With gradient checkpointing the backward pass recomputes attention, so it must run inside this block too."""
    if kernel not in KERNELS:
        raise ValueError(f"kernel: one of {KERNELS}, got {kernel!r}")
    register()
    _STATE.append(_State(specs, batch, kernel))
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    previous = base.config._attn_implementation
    base.set_attn_implementation(IMPLEMENTATION)
    try:
        yield
    finally:
        base.set_attn_implementation(previous)
        _STATE.pop()


def answer_logits(model, batch: PackedBatch) -> torch.Tensor:
    """Logits at the rows that predict answer tokens only (the LM head over all T rows would dominate memory)."""
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    hidden = base.model(input_ids=batch.input_ids, position_ids=batch.position_ids, use_cache=False).last_hidden_state
    return base.lm_head(hidden[0, batch.loss_index])


def all_logits(model, batch: PackedBatch) -> torch.Tensor:
    """``[T, vocab]`` logits of the packed row (tests)."""
    return model(input_ids=batch.input_ids, position_ids=batch.position_ids, use_cache=False).logits[0]
