"""Many (prompt, answer) examples packed into one row, with what the SWAA training mask needs per token.

Packing (no padding) keeps a batch's cost equal to its real tokens. Each example keeps its own
positions (RoPE restarts at 0) and its own prompt/answer boundary, so one row carries sequences
of different lengths and splits.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import torch


@dataclass(frozen=True)
class Example:
    prompt_ids: tuple[int, ...]
    answer_ids: tuple[int, ...]

    def __post_init__(self):
        if not self.prompt_ids or not self.answer_ids:
            raise ValueError("an example needs a non-empty prompt and answer")

    def __len__(self) -> int:
        return len(self.prompt_ids) + len(self.answer_ids)


@dataclass(frozen=True)
class PackedBatch:
    input_ids: torch.Tensor  # [1, T]
    position_ids: torch.Tensor  # [1, T], restarting at 0 for every example
    doc: torch.Tensor  # [T] example index of each token
    full_row: torch.Tensor  # [T] bool: answer tokens (and the question tail) — full attention in fa_decode layers
    bounds: tuple[tuple[int, int], ...]  # [start, end) of each example in the row
    loss_index: torch.Tensor  # [N] rows whose next token is an answer token of the same example
    loss_target: torch.Tensor  # [N] that next token

    @property
    def num_tokens(self) -> int:
        return int(self.input_ids.shape[1])

    def to(self, device) -> "PackedBatch":
        return PackedBatch(*(getattr(self, f).to(device) if isinstance(getattr(self, f), torch.Tensor) else getattr(self, f)
                             for f in self.__dataclass_fields__))


def pack(examples: Sequence[Example], fa_tail: int = 0, pad_to: int | None = None) -> PackedBatch:
    """One row from ``examples``. ``fa_tail``: the last T prompt tokens count as full rows, as in serving.
    ``pad_to``: append a filler segment (its own document, no loss) up to this length, so compiled kernels see one
    shape for every batch."""
    ids, pos, doc, full, bounds, li, lt = [], [], [], [], [], [], []
    for d, ex in enumerate(examples):
        start = len(ids)
        seq = list(ex.prompt_ids) + list(ex.answer_ids)
        n_prompt = len(ex.prompt_ids)
        full_from = max(0, n_prompt - fa_tail)
        ids += seq
        pos += range(len(seq))
        doc += [d] * len(seq)
        full += [p >= full_from for p in range(len(seq))]
        # the logits at position p predict token p+1: the answer's tokens are predicted from n_prompt-1 on
        for p in range(n_prompt - 1, len(seq) - 1):
            li.append(start + p)
            lt.append(seq[p + 1])
        bounds.append((start, len(ids)))
    if pad_to is not None and pad_to > len(ids):
        n = pad_to - len(ids)
        bounds.append((len(ids), pad_to))
        ids += [0] * n
        pos += range(n)
        doc += [len(examples)] * n
        full += [False] * n
    long = dict(dtype=torch.long)
    return PackedBatch(torch.tensor([ids], **long), torch.tensor([pos], **long), torch.tensor(doc, **long),
                       torch.tensor(full, dtype=torch.bool), tuple(bounds), torch.tensor(li, **long), torch.tensor(lt, **long))


def batches(examples: Sequence[Example], max_tokens: int) -> list[list[int]]:
    """Greedy packing of example indices, in order, into rows of at most ``max_tokens`` tokens."""
    out: list[list[int]] = []
    cur, size = [], 0
    for i, ex in enumerate(examples):
        if len(ex) > max_tokens:
            raise ValueError(f"max_tokens: example {i} has {len(ex)} tokens, more than the batch budget {max_tokens}")
        if cur and size + len(ex) > max_tokens:
            out.append(cur)
            cur, size = [], 0
        cur.append(i)
        size += len(ex)
    if cur:
        out.append(cur)
    return out
