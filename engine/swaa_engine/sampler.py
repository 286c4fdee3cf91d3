"""Token selection from logits.

Randomness comes from one uniform number per request per token, drawn from the request's own
generator (``random.Random(seed)``) on the host, so a seeded request samples the same tokens
whatever else is in the batch. Filters run on sorted probabilities: top-k, top-p, min-p.
"""

from __future__ import annotations

import random
from dataclasses import dataclass

import torch

from swaa_engine.sampling_params import SamplingParams


@dataclass
class SampleRow:
    params: SamplingParams
    rng: random.Random | None  # None when greedy
    history: list[int]  # prompt + generated, for the repetition penalty


@dataclass
class SampleResult:
    token_ids: list[int]
    logprobs: list[tuple[float, list[tuple[int, float]]] | None]  # (chosen, top-n) per row


def _finite(x: torch.Tensor) -> torch.Tensor:
    info = torch.finfo(x.dtype)
    return x.clamp(min=info.min, max=info.max)


def sample(logits: torch.Tensor, rows: list[SampleRow]) -> SampleResult:
    """``logits`` is ``[len(rows), vocab]`` float32."""
    n, vocab = logits.shape
    raw = logits
    if any(r.params.repetition_penalty != 1.0 for r in rows):
        logits = logits.clone()
        for i, r in enumerate(rows):
            pen = r.params.repetition_penalty
            if pen != 1.0 and r.history:
                ids = torch.tensor(sorted(set(t for t in r.history if t < vocab)), dtype=torch.long, device=logits.device)
                sel = logits[i, ids]
                logits[i, ids] = torch.where(sel > 0, sel / pen, sel * pen)
        logits = _finite(logits)  # a penalty near 0 can overflow a logit to ±inf

    chosen = logits.argmax(dim=-1)
    stochastic = [i for i, r in enumerate(rows) if not r.params.greedy]
    if stochastic:
        idx = torch.tensor(stochastic, dtype=torch.long, device=logits.device)
        sub = logits[idx]
        temp = torch.tensor([rows[i].params.temperature for i in stochastic], device=logits.device)[:, None]
        # temperatures are >= GREEDY_TEMPERATURE here, but large logits over a small one can still overflow:
        # clamped, equal maxima share the mass instead of turning the softmax into NaN
        probs_sorted, order = torch.sort(torch.softmax(_finite(sub / temp), dim=-1), dim=-1, descending=True)
        rank = torch.arange(vocab, device=logits.device)[None, :]
        top_k = torch.tensor([rows[i].params.top_k or vocab for i in stochastic], device=logits.device)[:, None]
        top_p = torch.tensor([rows[i].params.top_p for i in stochastic], device=logits.device)[:, None]
        min_p = torch.tensor([rows[i].params.min_p for i in stochastic], device=logits.device)[:, None]
        cum_before = probs_sorted.cumsum(-1) - probs_sorted
        keep = (rank < top_k) & (cum_before < top_p) & (probs_sorted >= min_p * probs_sorted[:, :1])
        keep[:, 0] = True  # the most likely token always survives
        probs_sorted = probs_sorted * keep
        cdf = probs_sorted.cumsum(-1)
        u = torch.tensor([rows[i].rng.random() for i in stochastic], dtype=cdf.dtype, device=logits.device)[:, None]
        pick = torch.searchsorted(cdf, u * cdf[:, -1:], right=True).clamp_(max=vocab - 1)
        # searchsorted can land on a zeroed tail entry after float rounding: step back to a kept one
        pick = torch.minimum(pick, keep.sum(-1, keepdim=True) - 1)
        chosen[idx] = order.gather(1, pick).squeeze(1)

    token_ids = chosen.tolist()
    lps: list = [None] * n
    want = [i for i, r in enumerate(rows) if r.params.logprobs is not None]
    if want:
        logp = torch.log_softmax(raw[want], dim=-1)
        kmax = max(rows[i].params.logprobs for i in want)
        top_v, top_i = logp.topk(kmax, dim=-1) if kmax else (None, None)
        for j, i in enumerate(want):
            k = rows[i].params.logprobs
            top = list(zip(top_i[j, :k].tolist(), top_v[j, :k].tolist())) if k else []
            lps[i] = (float(logp[j, token_ids[i]]), top)
    return SampleResult(token_ids, lps)
