"""Teacher-forced log-probabilities through the serving path: the LM-loss task's measure, and the teacher's top-k
distributions that LM distillation (``swaa distill --lm-samples``) trains towards."""

from __future__ import annotations

import uuid
from typing import Iterator

import torch

from swaa_engine.config import ConfigError
from swaa_engine.engine import LLMEngine
from swaa_engine.sampling_params import InvalidRequestError, SamplingParams
from swaa_engine.scheduler import Chunk
from swaa_engine.sequence import Sequence


def _scored_logprobs(engine: LLMEngine, ids: list[int], num_prompt: int, chunk: int) -> Iterator[tuple[torch.Tensor, list[int]]]:
    """Per chunk: ``[n, vocab]`` float32 log-probabilities of the rows that predict tokens at positions >= ``num_prompt``,
    and those tokens. The prefix is read as a prompt, the rest as if generated (so fa_decode layers attend to everything
    there), which is how ``swaa_train.packing`` lays out an example's answer."""
    if not 1 <= num_prompt < len(ids):
        raise InvalidRequestError("num_prompt", f"must be in [1, {len(ids)}), got {num_prompt}")
    if len(ids) > engine.max_model_len:
        raise InvalidRequestError("prompt", f"{len(ids)} tokens exceed max_model_len {engine.max_model_len}")
    with engine.idle("score"):
        seq = Sequence(f"score-{uuid.uuid4().hex}", ids[:num_prompt], SamplingParams(max_tokens=len(ids)))
        seq.token_ids.extend(ids[num_prompt:])
        try:
            for start in range(0, len(ids) - 1, chunk):
                n = min(chunk, len(ids) - 1 - start)  # the last token is only ever a target
                if not engine.cache.can_allocate(seq, n):
                    raise ConfigError("cache", f"too small to score {len(ids)} tokens")
                engine.cache.allocate(seq, n)
                hidden = engine.runner.hidden([Chunk(seq, start, n)])
                lo = max(start, num_prompt - 1)  # rows whose next token is a scored one
                if lo < start + n:
                    yield engine.model.logits(hidden[lo - start:]).float().log_softmax(-1), ids[lo + 1:start + n + 1]
                seq.num_computed = start + n
        finally:
            engine.cache.free(seq)


@torch.inference_mode()
def score(engine: LLMEngine, token_ids: list[int], num_prompt: int, chunk: int = 512) -> list[float]:
    """Log-probability of each token at positions >= ``num_prompt`` given all before it, teacher-forced through the
    serving path (caches, backend, SWAA masks). Needs an idle engine (offline use)."""
    out: list[float] = []
    for logp, target in _scored_logprobs(engine, list(token_ids), num_prompt, chunk):
        out += logp.gather(1, torch.tensor(target, device=logp.device)[:, None])[:, 0].tolist()
    return out


@torch.inference_mode()
def top_logprobs(engine: LLMEngine, token_ids: list[int], num_prompt: int, k: int,
                 chunk: int = 512) -> tuple[list[list[int]], list[list[float]]]:
    """For each position >= ``num_prompt``: the ``k`` most likely token ids given everything before it and their
    log-probabilities (over the whole vocabulary, so the mass outside them is 1 - sum(exp)), teacher-forced as ``score``."""
    if k < 1:
        raise InvalidRequestError("k", f"must be >= 1, got {k}")
    ids_out: list[list[int]] = []
    lp_out: list[list[float]] = []
    for logp, _ in _scored_logprobs(engine, list(token_ids), num_prompt, chunk):
        top = logp.topk(k, dim=-1)
        ids_out += top.indices.tolist()
        lp_out += top.values.tolist()
    return ids_out, lp_out
