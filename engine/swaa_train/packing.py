"""Many (prompt, answer) examples packed into one row, with what the SWAA training mask needs per token.

Two kinds of example share the layout: retrieval rows (the answer is the target, hard tokens) and LM rows (the answer
is a continuation of real text, the target is the full-attention teacher's top-k distribution at each of its tokens).
Both read the prompt as a prompt and the answer as if generated, which is how serving and ``swaa_eval.scoring`` see them.

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
    # LM rows: per answer token, the teacher's k most likely ids and their log-probabilities (over the whole vocabulary)
    teacher_ids: tuple[tuple[int, ...], ...] | None = None
    teacher_logprobs: tuple[tuple[float, ...], ...] | None = None

    def __post_init__(self):
        if not self.prompt_ids or not self.answer_ids:
            raise ValueError("an example needs a non-empty prompt and answer")
        if (self.teacher_ids is None) != (self.teacher_logprobs is None):
            raise ValueError("teacher_ids and teacher_logprobs: give both or neither")
        if self.teacher_ids is not None:
            n, k = len(self.answer_ids), len(self.teacher_ids[0]) if self.teacher_ids else 0
            if len(self.teacher_ids) != n or len(self.teacher_logprobs) != n or k < 1 or any(
                    len(a) != k or len(b) != k for a, b in zip(self.teacher_ids, self.teacher_logprobs)):
                raise ValueError(f"teacher_ids/teacher_logprobs: need {n} rows (one per answer token) of one width k >= 1")

    @property
    def is_lm(self) -> bool:
        return self.teacher_ids is not None

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
    lm_loss: torch.Tensor  # [N] bool: the row belongs to an LM example (teacher targets, not loss_target)
    teacher_ids: torch.Tensor  # [M, k] for the M rows where lm_loss, in order ([0, 0] without LM examples)
    teacher_logprobs: torch.Tensor  # [M, k] float32

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
    ids, pos, doc, full, bounds, li, lt, lm, t_ids, t_lp = [], [], [], [], [], [], [], [], [], []
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
            lm.append(ex.is_lm)
        if ex.is_lm:
            if t_ids and len(t_ids[0]) != len(ex.teacher_ids[0]):
                raise ValueError(f"teacher_ids: LM examples of one batch need one top-k width, got "
                                 f"{len(t_ids[0])} and {len(ex.teacher_ids[0])}")
            t_ids += ex.teacher_ids
            t_lp += ex.teacher_logprobs
        bounds.append((start, len(ids)))
    if pad_to is not None and pad_to > len(ids):
        n = pad_to - len(ids)
        bounds.append((len(ids), pad_to))
        ids += [0] * n
        pos += range(n)
        doc += [len(examples)] * n
        full += [False] * n
    long = dict(dtype=torch.long)
    k = len(t_ids[0]) if t_ids else 0
    return PackedBatch(torch.tensor([ids], **long), torch.tensor([pos], **long), torch.tensor(doc, **long),
                       torch.tensor(full, dtype=torch.bool), tuple(bounds), torch.tensor(li, **long), torch.tensor(lt, **long),
                       torch.tensor(lm, dtype=torch.bool), torch.tensor(t_ids, **long).reshape(len(t_ids), k),
                       torch.tensor(t_lp, dtype=torch.float32).reshape(len(t_lp), k))


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
