"""Host time per engine step on CPU: what the engine spends outside the model's forward, at a large batch.

A tiny random Qwen3 (the tests' model: 4 layers of width 64, so the forward is cheap and the host work shows) with
the embedded SmolLM2 tokenizer (real detokenization), ``--batch`` requests decoding at once with stop strings, a
repetition penalty and top-5 logprobs, so every host path of a step runs. Reports per decode step: the whole step,
the model (forward + lm_head, timed around the model's calls), and the rest (host: scheduling, tensors, sampling,
detokenization, outputs); with ``--profile`` the top functions by own time.

``--embedded``: the embedded SmolLM2-135M itself (bfloat16, greedy, no penalty or logprobs: the cpu_offline load),
to see how a step's time splits between the model and the host there.

    python bench/host_step.py [--batch 128] [--steps 64] [--profile] [--embedded]
"""

from __future__ import annotations

import argparse
import cProfile
import json
import os
import pstats
import sys
import tempfile
import time

import torch

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))  # tests.models


class TimedModel:
    """The model with its two entry points timed (``__call__``: the forward; ``logits``: the lm_head)."""

    def __init__(self, model):
        self._model, self.seconds = model, 0.0

    def __call__(self, *args, **kw):
        t = time.perf_counter()
        try:
            return self._model(*args, **kw)
        finally:
            self.seconds += time.perf_counter() - t

    def logits(self, hidden):
        t = time.perf_counter()
        try:
            return self._model.logits(hidden)
        finally:
            self.seconds += time.perf_counter() - t

    def __getattr__(self, name):
        return getattr(self._model, name)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--batch", type=int, default=128)
    ap.add_argument("--prompt-tokens", type=int, default=64)
    ap.add_argument("--steps", type=int, default=64, help="decode steps measured (after the prefill)")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--profile", action="store_true")
    ap.add_argument("--embedded", action="store_true", help="the embedded SmolLM2 in bfloat16 instead of the tiny model")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)

    from transformers import AutoTokenizer

    from swaa_engine import LLM, CacheConfig, SamplingParams, SchedulerConfig, SWAAConfig
    from swaa_engine.models.loader import resolve_source
    from tests.models import save_tiny_qwen3

    src = resolve_source(None)
    tok = AutoTokenizer.from_pretrained(src.folder, **src.hf_kwargs())
    new = args.steps + 2
    if args.embedded:
        from swaa_engine.defaults import EMBEDDED_SWAA

        llm = LLM(None, swaa=EMBEDDED_SWAA, dtype="bfloat16", max_model_len=2048, cache=CacheConfig(budget_bytes=1 << 30),
                  scheduler=SchedulerConfig(max_num_seqs=max(8, args.batch)))
        params = SamplingParams(max_tokens=new, ignore_eos=True)
    else:
        folder = tempfile.mkdtemp(prefix="host-step-")
        save_tiny_qwen3(folder, vocab_size=len(tok), eos_token_id=tok.eos_token_id)
        tok.save_pretrained(folder)
        llm = LLM(folder, swaa=SWAAConfig(window=32, sinks=4, fa_layers=[1]), max_model_len=args.prompt_tokens + new + 8,
                  cache=CacheConfig(block_size=16, budget_bytes=256 << 20),
                  scheduler=SchedulerConfig(max_num_seqs=args.batch,
                                            max_num_batched_tokens=max(2048, args.batch * args.prompt_tokens)))
        params = SamplingParams(max_tokens=new, ignore_eos=True, stop=("zzqx stop", "@@@"), repetition_penalty=1.1,
                                logprobs=5)
    e = llm.engine
    timed = TimedModel(e.runner.model)
    e.runner.model = timed
    text = open("/usr/share/common-licenses/GPL-3").read()
    ids = tok.encode(text)
    for i in range(args.batch):
        e.add_request(ids[i * 7 : i * 7 + args.prompt_tokens], params)
    while any(s.num_computed < s.num_prompt for s in e.scheduler.running) or e.scheduler.waiting:
        e.step()  # prefill (not measured)
    prof = cProfile.Profile() if args.profile else None
    timed.seconds, steps, t0 = 0.0, 0, time.perf_counter()
    if prof:
        prof.enable()
    for _ in range(args.steps):
        out = e.step()
        assert len(out) == args.batch
        steps += 1
    if prof:
        prof.disable()
    wall = time.perf_counter() - t0
    row = dict(model="embedded SmolLM2-135M bf16" if args.embedded else "tiny random Qwen3 + SmolLM2 tokenizer", batch=args.batch, steps=steps, step_ms=1e3 * wall / steps, model_ms=1e3 * timed.seconds / steps,
               host_ms=1e3 * (wall - timed.seconds) / steps, threads=args.threads)
    print(json.dumps(row))
    if prof:
        pstats.Stats(prof).sort_stats("tottime").print_stats(25)


if __name__ == "__main__":
    main()
