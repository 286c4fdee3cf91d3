"""Token selection from logits.

Randomness comes from one uniform number per request per token, drawn from the request's own
generator (``random.Random(seed)``) on the host, so a seeded request samples the same tokens
whatever else is in the batch. Filters run on sorted probabilities: top-k, top-p, min-p.
"""

from __future__ import annotations

import random
import threading
from dataclasses import dataclass

import torch

from swaa_engine.sampling_params import SamplingParams
from swaa_engine.transfer import upload


@dataclass
class SampleRow:
    params: SamplingParams
    rng: random.Random | None  # None when greedy
    history: list[int]  # prompt + generated, for the penalties (only ever appended to; empty when none applies)
    key: str | None = None  # the request's id: its presence row in a TokenPresence is kept across steps
    matcher: object | None = None  # structured output: an xgrammar GrammarMatcher (allowed tokens), advanced by the engine
    num_prompt: int = 0  # history[num_prompt:] were generated (presence and frequency penalties count those only)
    masked: tuple[int, ...] = ()  # token ids that cannot be picked this step (banned, bad words, EOS before min_tokens)


class TokenPresence:
    """Which tokens each request has seen (prompt and generated), as one bool row per request on the device, kept
    incrementally: a row is filled from the whole history once, then each step scatters only the tokens appended
    since (one upload for the batch), instead of rebuilding a sorted set over the context per row per step.

    ``counts``: float32 rows counting each generated token instead (``history[num_prompt:]``: the presence and
    frequency penalties). ``drop`` (any thread) frees a finished request's row; rows are reused, the table doubles
    when full."""

    def __init__(self, vocab: int, device: torch.device, capacity: int = 8, counts: bool = False):
        self.vocab, self.device, self.counts = vocab, device, counts
        self.table = torch.zeros(capacity, vocab, dtype=torch.float32 if counts else torch.bool, device=device)
        self._rows: dict[str, list[int]] = {}  # key -> [row, tokens of its history already in the row]
        self._free = list(range(capacity - 1, -1, -1))
        self._lock = threading.Lock()

    def drop(self, key: str) -> None:
        with self._lock:
            entry = self._rows.pop(key, None)
            if entry is not None:
                self._free.append(entry[0])

    def rows(self, rows: list[SampleRow]) -> torch.Tensor:
        """``[len(rows), vocab]`` presence of each row's history (rows without a key get a row for this call)."""
        with self._lock:
            slots, fresh, new_rows, new_toks, temp = [], [], [], [], []
            for r in rows:
                key = r.key if r.key is not None else object()
                entry = self._rows.get(key)
                if entry is None:
                    entry = self._rows[key] = [self._take(), r.num_prompt if self.counts else 0]
                    fresh.append(entry[0])
                    if r.key is None:
                        temp.append(key)
                hist = r.history
                for t in hist[entry[1]:]:
                    if t < self.vocab:
                        new_rows.append(entry[0])
                        new_toks.append(t)
                entry[1] = len(hist)
                slots.append(entry[0])
            if fresh:
                self.table[upload(fresh, torch.long, self.device)] = False
            if new_rows:
                at = (upload(new_rows, torch.long, self.device), upload(new_toks, torch.long, self.device))
                if self.counts:  # a token twice in one update counts twice
                    self.table.index_put_(at, torch.ones(len(new_rows), device=self.device), accumulate=True)
                else:
                    self.table[at] = True
            out = self.table[upload(slots, torch.long, self.device)]
            for key in temp:
                self._free.append(self._rows.pop(key)[0])
            return out

    def _take(self) -> int:
        if not self._free:
            n = self.table.shape[0]
            self.table = torch.cat([self.table, torch.zeros_like(self.table)])
            self._free = list(range(2 * n - 1, n - 1, -1))
        return self._free.pop()


def _adjust(logits: torch.Tensor, rows: list[SampleRow], counts: TokenPresence | None, inplace: bool) -> torch.Tensor:
    """Presence and frequency penalties (dense over the penalized rows), logit bias and masks (sparse)."""
    n, vocab = logits.shape
    out_pen = [i for i, r in enumerate(rows) if r.params.penalizes_output and len(r.history) > r.num_prompt]
    sparse = [i for i, r in enumerate(rows) if r.params.logit_bias or r.masked]
    if not out_pen and not sparse:
        return logits
    logits = logits if inplace else logits.clone()
    dev = logits.device
    if out_pen:
        counts = counts if counts is not None and counts.vocab == vocab else TokenPresence(vocab, dev, len(out_pen), counts=True)
        c = counts.rows([rows[i] for i in out_pen])
        pres = upload([rows[i].params.presence_penalty for i in out_pen], logits.dtype, dev)[:, None]
        freq = upload([rows[i].params.frequency_penalty for i in out_pen], logits.dtype, dev)[:, None]
        idx = upload(out_pen, torch.long, dev)
        logits[idx] = logits[idx] - freq * c - pres * (c > 0).to(logits.dtype)
    if sparse:
        b_row, b_tok, b_val, m_row, m_tok = [], [], [], [], []
        for i in sparse:
            for t, b in rows[i].params.logit_bias:
                if t < vocab:
                    b_row.append(i)
                    b_tok.append(t)
                    b_val.append(b)
            m_tok.extend(t for t in rows[i].masked if t < vocab)
            m_row.extend([i] * (len(m_tok) - len(m_row)))
        if b_row:  # (row, token) pairs are unique: a bias map has one entry per token
            at = (upload(b_row, torch.long, dev), upload(b_tok, torch.long, dev))
            logits[at] = _finite(logits[at] + upload(b_val, logits.dtype, dev))
        if m_row:
            logits[upload(m_row, torch.long, dev), upload(m_tok, torch.long, dev)] = float("-inf")
    return logits


@dataclass
class SampleResult:
    token_ids: list[int]
    logprobs: list[tuple[float, list[tuple[int, float]]] | None]  # (chosen, top-n) per row
    # request id -> (logprob, top-n) of prompt tokens this step computed (``prompt_logprobs``), in prompt order
    prompt_logprobs: dict[str, list[tuple[float, list[tuple[int, float]]]]] | None = None


def token_logprobs(logits: torch.Tensor, targets: list[int], k: int) -> list[tuple[float, list[tuple[int, float]]]]:
    """The logprob of ``targets[i]`` under ``logits[i]`` and the top-``k`` alternatives, in one transfer."""
    logp = torch.log_softmax(logits.float(), dim=-1)
    parts = [logp.gather(1, upload(targets, torch.long, logits.device)[:, None])]
    if k:
        top_v, top_i = logp.topk(k, dim=-1)
        parts += [top_v, top_i.to(logp.dtype)]  # ids < 2^24: exact in float32
    host = torch.cat(parts, dim=1).double().tolist()
    return [(row[0], list(zip(map(int, row[1 + k:]), row[1:1 + k]))) for row in host]


def _finite(x: torch.Tensor) -> torch.Tensor:
    info = torch.finfo(x.dtype)
    return x.clamp(min=info.min, max=info.max)


def _unfiltered(p: SamplingParams, vocab: int) -> bool:
    """No top-k, top-p or min-p cuts this row's distribution (the filters need sorted probabilities)."""
    return (p.top_k == 0 or p.top_k >= vocab) and p.top_p >= 1.0 and p.min_p == 0.0


def _temperatures(rows: list[SampleRow], which: list[int], device) -> torch.Tensor:
    return upload([rows[i].params.temperature for i in which], torch.float32, device)[:, None]


def _uniforms(rows: list[SampleRow], which: list[int], like: torch.Tensor) -> torch.Tensor:
    """One draw from each row's own generator (the same draw whatever else is in the batch)."""
    return upload([rows[i].rng.random() for i in which], like.dtype, like.device)[:, None]


def sample(logits: torch.Tensor, rows: list[SampleRow], presence: TokenPresence | None = None,
           inplace: bool = False, counts: TokenPresence | None = None, masker=None) -> SampleResult:
    """``logits`` is ``[len(rows), vocab]`` float32. ``presence``/``counts``: the requests' seen tokens and generated
    token counts kept across steps (the engine's); without them, the penalized rows' histories are read whole for
    this call. ``inplace``: the caller gives ``logits`` up (the penalties then change them without a copy).
    ``masker``: the engine's ``structured.TokenMasker`` (its threads and buffers), for the rows with a matcher.

    Order: repetition penalty, presence and frequency penalties, logit bias, then the masked ids (-inf)."""
    n, vocab = logits.shape
    raw = logits
    want = [i for i, r in enumerate(rows) if r.params.logprobs is not None]
    # logprobs are of the raw logits: taken before the penalty and the grammar mask, which then change the logits
    logp = torch.log_softmax(raw if len(want) == n else raw[want], dim=-1) if want else None
    masked = [i for i, r in enumerate(rows) if r.matcher is not None]
    if masked:  # the host fills the masks while a GPU still runs the step's kernels (nothing above synchronized)
        from swaa_engine.structured import mask_logits

        logits = logits if inplace else logits.clone()
        inplace = True
        mask_logits(logits, masked, [rows[i].matcher for i in masked], masker)
    penalized = [i for i, r in enumerate(rows) if r.params.repetition_penalty != 1.0 and r.history]
    if penalized:
        presence = presence if presence is not None and presence.vocab == vocab else TokenPresence(vocab, logits.device, len(penalized))
        seen = presence.rows([rows[i] for i in penalized])
        pen = upload([rows[i].params.repetition_penalty for i in penalized], logits.dtype, logits.device)
        idx = upload(penalized, torch.long, logits.device)
        logits = logits if inplace else logits.clone()
        if logits.device.type == "cuda":
            # dense over the vocabulary: a few passes cost microseconds on a GPU, and nonzero would sync the host
            sub, pen = logits[idx], pen[:, None]
            logits[idx] = torch.where(seen, _finite(torch.where(sub > 0, sub / pen, sub * pen)), sub)
        else:
            # only the seen (row, token) pairs: a few hundred per row, where each pass over the vocabulary costs
            # milliseconds on a CPU
            j, tok = seen.nonzero(as_tuple=True)
            row, pen = idx[j], pen[j]
            sel = logits[row, tok]
            logits[row, tok] = _finite(torch.where(sel > 0, sel / pen, sel * pen))  # a penalty near 0 can overflow
    logits = _adjust(logits, rows, counts, inplace or logits is not raw)

    chosen = logits.argmax(dim=-1)
    stochastic = [i for i, r in enumerate(rows) if not r.params.greedy]
    # rows without top-k/p or min-p draw from the probabilities as they are: sorting the vocabulary (which only the
    # filters need) cost more than the rest of a CPU decode step at batch 8 (bench/RESULTS.md, "API costs")
    plain, filtered = [], []
    for i in stochastic:
        (plain if _unfiltered(rows[i].params, vocab) else filtered).append(i)
    if plain:
        idx = upload(plain, torch.long, logits.device)
        cdf = torch.softmax(_finite(logits[idx] / _temperatures(rows, plain, logits.device)), dim=-1).cumsum(-1)
        total = cdf[:, -1:]
        pick = torch.searchsorted(cdf, _uniforms(rows, plain, cdf) * total, right=True)
        # u rounded up to 1 in float32 lands past the last token with mass: the first index where the cdf is whole
        chosen[idx] = torch.minimum(pick, (cdf < total).sum(-1, keepdim=True)).squeeze(1)
    stochastic = filtered
    if stochastic:
        idx = upload(stochastic, torch.long, logits.device)
        sub = logits[idx]
        temp = _temperatures(rows, stochastic, logits.device)
        # temperatures are >= GREEDY_TEMPERATURE here, but large logits over a small one can still overflow:
        # clamped, equal maxima share the mass instead of turning the softmax into NaN
        probs_sorted, order = torch.sort(torch.softmax(_finite(sub / temp), dim=-1), dim=-1, descending=True)
        rank = torch.arange(vocab, device=logits.device)[None, :]
        top_k = upload([rows[i].params.top_k or vocab for i in stochastic], torch.long, logits.device)[:, None]
        top_p = upload([rows[i].params.top_p for i in stochastic], torch.float32, logits.device)[:, None]
        min_p = upload([rows[i].params.min_p for i in stochastic], torch.float32, logits.device)[:, None]
        cum_before = probs_sorted.cumsum(-1) - probs_sorted
        keep = (rank < top_k) & (cum_before < top_p) & (probs_sorted >= min_p * probs_sorted[:, :1])
        keep[:, 0] = True  # the most likely token always survives
        probs_sorted = probs_sorted * keep
        cdf = probs_sorted.cumsum(-1)
        pick = torch.searchsorted(cdf, _uniforms(rows, stochastic, cdf) * cdf[:, -1:], right=True).clamp_(max=vocab - 1)
        # searchsorted can land on a zeroed tail entry after float rounding: step back to a kept one
        pick = torch.minimum(pick, keep.sum(-1, keepdim=True) - 1)
        chosen[idx] = order.gather(1, pick).squeeze(1)

    lps: list = [None] * n
    if not want:
        return SampleResult(chosen.tolist(), lps)
    picked = chosen if len(want) == n else chosen[upload(want, torch.long, chosen.device)]
    kmax = max(rows[i].params.logprobs for i in want)
    # everything the host needs in one transfer: the chosen ids, then per logprob row the chosen token's logprob,
    # the top-k values and ids (ids < 2^24: exact in float32, and in float64 here)
    parts = [logp.gather(1, picked[:, None])]
    if kmax:
        top_v, top_i = logp.topk(kmax, dim=-1)
        parts += [top_v, top_i.to(logp.dtype)]
    flat = torch.cat([chosen.double(), torch.cat(parts, dim=1).double().flatten()]).tolist()
    token_ids, width = [int(t) for t in flat[:n]], 1 + 2 * kmax
    for j, i in enumerate(want):
        k, row = rows[i].params.logprobs, flat[n + j * width : n + (j + 1) * width]
        lps[i] = (row[0], list(zip(map(int, row[1 + kmax : 1 + kmax + k]), row[1 : 1 + k])))
    return SampleResult(token_ids, lps)
