"""The fine-tuning objective over a packed batch (``packing``): cross-entropy on retrieval answers, and on LM rows the
KL divergence from the full-attention teacher's distribution (``swaa distill --lm-samples``).

Each kind is averaged over its own tokens, then summed (LM term times ``lm_weight``): a 128-token LM row must not drown a
10-token answer, and a batch without one kind simply lacks that term.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from swaa_train.packing import PackedBatch


def teacher_kl(logits: torch.Tensor, teacher_ids: torch.Tensor, teacher_logprobs: torch.Tensor) -> torch.Tensor:
    """Per row, KL(teacher ‖ student) over k + 1 buckets: the teacher's top-k tokens, and every other token as one.

    The rest bucket keeps the student from being pushed to put all its mass on the teacher's top k (which a
    renormalised top-k target would do: a sharper model, worse on text whose next token lies outside them)."""
    logq = logits.float().log_softmax(-1)
    logq_top = logq.gather(1, teacher_ids)
    kl = (teacher_logprobs.exp() * (teacher_logprobs - logq_top)).sum(-1)
    if teacher_ids.shape[1] >= logits.shape[1]:
        return kl  # the whole vocabulary: no rest bucket (its log-mass would be -inf, and 0 · -inf is NaN)
    logq_rest = logq.scatter(1, teacher_ids, float("-inf")).logsumexp(-1)
    p_rest = (1 - teacher_logprobs.exp().sum(-1)).clamp(min=0)  # stored log-probs are rounded: the sum may exceed 1 by ~1e-4
    return kl + torch.xlogy(p_rest, p_rest) - p_rest * logq_rest


def mixed_loss(logits: torch.Tensor, batch: PackedBatch, lm_weight: float = 1.0) -> tuple[torch.Tensor, dict]:
    """``logits``: ``[N, vocab]`` at ``batch.loss_index``. Returns the loss to minimise and its parts (floats, for the
    log): ``answer_ce`` (retrieval rows), ``lm_kl`` and ``lm_nll`` (LM rows: KL to the teacher, and for reference the
    student's NLL of the real text, which is not trained on)."""
    lm = batch.lm_loss
    hard = ~lm
    loss = logits.new_zeros((), dtype=torch.float32)
    parts: dict = {}
    if bool(hard.any()):
        ce = F.cross_entropy(logits[hard].float(), batch.loss_target[hard])
        loss = loss + ce
        parts["answer_ce"] = float(ce.detach())
    if bool(lm.any()):
        kl = teacher_kl(logits[lm], batch.teacher_ids, batch.teacher_logprobs).mean()
        loss = loss + lm_weight * kl
        parts["lm_kl"] = float(kl.detach())
        with torch.no_grad():
            parts["lm_nll"] = float(F.cross_entropy(logits[lm].float(), batch.loss_target[lm]))
    return loss, parts
