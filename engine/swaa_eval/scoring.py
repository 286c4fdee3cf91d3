"""Teacher-forced log-probabilities through the serving path: the LM-loss task's measure."""

from __future__ import annotations

import uuid

import torch

from swaa_engine.config import ConfigError
from swaa_engine.engine import LLMEngine
from swaa_engine.sampling_params import InvalidRequestError, SamplingParams
from swaa_engine.scheduler import Chunk
from swaa_engine.sequence import Sequence


@torch.inference_mode()
def score(engine: LLMEngine, token_ids: list[int], num_prompt: int, chunk: int = 512) -> list[float]:
    """Log-probability of each token at positions >= ``num_prompt`` given all before it, teacher-forced
    through the serving path (caches, backend, SWAA masks): the prefix is read as a prompt, the rest as
    if generated (so fa_decode layers attend to everything there). Needs an idle engine (offline use)."""
    ids = list(token_ids)
    if not 1 <= num_prompt < len(ids):
        raise InvalidRequestError("num_prompt", f"must be in [1, {len(ids)}), got {num_prompt}")
    if len(ids) > engine.max_model_len:
        raise InvalidRequestError("prompt", f"{len(ids)} tokens exceed max_model_len {engine.max_model_len}")
    with engine.idle("score"):
        seq = Sequence(f"score-{uuid.uuid4().hex}", ids[:num_prompt], SamplingParams(max_tokens=len(ids)))
        seq.token_ids.extend(ids[num_prompt:])
        out: list[float] = []
        try:
            for start in range(0, len(ids) - 1, chunk):
                n = min(chunk, len(ids) - 1 - start)  # the last token is only ever a target
                if not engine.cache.can_allocate(seq, n):
                    raise ConfigError("cache", f"too small to score {len(ids)} tokens")
                engine.cache.allocate(seq, n)
                hidden = engine.runner.hidden([Chunk(seq, start, n)])
                lo = max(start, num_prompt - 1)  # rows whose next token is a scored one
                if lo < start + n:
                    logp = engine.model.logits(hidden[lo - start:]).float().log_softmax(-1)
                    target = torch.tensor(ids[lo + 1:start + n + 1], device=logp.device)
                    out += logp.gather(1, target[:, None])[:, 0].tolist()
                seq.num_computed = start + n
        finally:
            engine.cache.free(seq)
    return out
