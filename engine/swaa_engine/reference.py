"""Slow, obviously-correct SWAA: transformers' own model with an explicit per-layer mask.

No cache and no chunking: every call runs the whole sequence. The mask is the definition
(``swaa.sliding_visible``) over whole index grids, and attention is eager softmax(QKᵀ)V.

"""

from __future__ import annotations

import contextvars
import functools

import torch

from swaa_engine.models.registry import model_layer_specs
from swaa_engine.swaa import AttentionKind, SWAAConfig

_STATE: contextvars.ContextVar = contextvars.ContextVar("swaa_reference_state")
IMPLEMENTATION = "swaa_reference"


@functools.lru_cache(maxsize=64)
def explicit_mask(kind: AttentionKind, length: int, num_prompt: int, window: int | None, sinks: int) -> torch.Tensor:
    """``[length, length]`` bool, True where query i may see key j: ``sliding_visible`` written over
    whole index grids (a test checks the two agree pair by pair)."""
    i = torch.arange(length)[:, None]
    j = torch.arange(length)[None, :]
    causal = j <= i
    if kind is AttentionKind.FULL:
        return causal
    sliding = causal & ((i - j < window) | (j < sinks))
    if kind is AttentionKind.SLIDING_FA_DECODE:
        return torch.where(i >= num_prompt, causal, sliding)
    return sliding


def _attention(module, query, key, value, attention_mask, scaling=None, dropout=0.0, **kwargs):
    specs, num_prompt = _STATE.get()
    spec = specs[module.layer_idx]
    L = key.shape[-2]
    assert query.shape[-2] == L, "the reference always recomputes the whole sequence"
    mask = explicit_mask(spec.kind, L, num_prompt, spec.window, spec.sinks).to(query.device)
    groups = query.shape[1] // key.shape[1]
    k = key.repeat_interleave(groups, dim=1).float()
    v = value.repeat_interleave(groups, dim=1).float()
    scores = (query.float() @ k.transpose(-1, -2)) * (scaling if scaling is not None else query.shape[-1] ** -0.5)
    scores = scores.masked_fill(~mask, float("-inf"))
    out = torch.softmax(scores, dim=-1) @ v
    return out.to(query.dtype).transpose(1, 2).contiguous(), None


def _register() -> None:
    from transformers import AttentionInterface, AttentionMaskInterface

    AttentionInterface.register(IMPLEMENTATION, _attention)
    # the mask is built per layer inside _attention; transformers' own mask is not needed
    AttentionMaskInterface.register(IMPLEMENTATION, lambda *a, **k: None)


class SWAAReference:
    """Wraps a transformers causal LM (float32 recommended) with SWAA semantics."""

    def __init__(self, hf_model, swaa: SWAAConfig):
        _register()
        self.swaa = swaa
        self.model = hf_model.eval()
        self.specs = model_layer_specs(swaa, hf_model.config)  # the model's own sliding layers included

    @torch.inference_mode()
    def logits(self, token_ids: list[int], num_prompt: int) -> torch.Tensor:
        """``[len(token_ids), vocab]``; positions >= num_prompt count as generated tokens."""
        # fa_tail: the last T prompt tokens are read with full attention, like generated ones
        token = _STATE.set((self.specs, max(0, num_prompt - self.swaa.fa_tail)))
        previous = self.model.config._attn_implementation
        self.model.set_attn_implementation(IMPLEMENTATION)  # only for this call: the model may be shared
        try:
            ids = torch.tensor([token_ids], dtype=torch.long, device=self.model.device)
            return self.model(input_ids=ids, use_cache=False).logits[0].float()
        finally:
            self.model.set_attn_implementation(previous)
            _STATE.reset(token)

    def greedy(self, prompt_ids: list[int], max_new_tokens: int, eos_ids=frozenset()) -> list[int]:
        """Greedy decoding that recomputes the whole sequence at every step."""
        ids = list(prompt_ids)
        for _ in range(max_new_tokens):
            nxt = int(self.logits(ids, len(prompt_ids))[-1].argmax())
            ids.append(nxt)
            if nxt in eos_ids:
                break
        return ids[len(prompt_ids) :]

    def first_greedy_mismatch(self, prompt_ids: list[int], generated: list[int]) -> tuple[int, int, float] | None:
        """Check a whole greedy continuation with one forward.

        With causal masks the logits at position i depend only on tokens 0..i (and on which of
        them are prompt tokens), so one pass over prompt + generated gives exactly the logits
        that step-by-step recomputation would. Returns (index, expected token, logit margin) of
        the first token that is not the argmax, or None.
        """
        seq = list(prompt_ids) + list(generated)
        logits = self.logits(seq[:-1], len(prompt_ids))[len(prompt_ids) - 1 :]
        for i, tok in enumerate(generated):
            best = int(logits[i].argmax())
            if best != tok:
                return i, best, float(logits[i, best] - logits[i, tok])
        return None
