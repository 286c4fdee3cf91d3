"""Prefix caching's effect, with and without the cache, on the embedded model (or any model/device):

- many requests sharing one system prompt, each with its own question, submitted at once: TTFT p50/p99;
- a multi-turn chat: prompt tokens computed against the new tokens of every turn.

    python bench/prefix_bench.py [--requests 64] [--system 4096] [--question 64] [--turns 8] [--out FILE]
    python bench/prefix_bench.py --device cuda --random-qwen3-4b --turns 0 --out FILE   # the GPU host

Prompts are real text (the GPL-3 licence, tokenized), greedy, outputs short so that TTFT is what is compared.
``--random-qwen3-4b``: Qwen3-4B-shaped random bf16 weights and random token-id prompts (no tokenizer or model file;
speed does not depend on weights), the flash backend where it loads (``auto``), block 128 as in ``gpu_bench.py``;
there is no chat part (it needs a tokenizer). ``--swaa`` is the embedded model's default config unless ``fa``.
``--time-limit S``: an arm's shared-prompt run stops after S seconds; if fewer than half the requests had their first
token by then, its TTFT p50 is reported as a lower bound (``ttft_p50_lower_bound``: every request still waiting has a
TTFT above the elapsed time), and the speedup with it.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import statistics
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

TEXT = "/usr/share/common-licenses/GPL-3"


def swaa_config(args):
    from swaa_engine.defaults import EMBEDDED_SWAA
    from swaa_engine.swaa import SWAAConfig

    return SWAAConfig() if args.swaa == "fa" else EMBEDDED_SWAA


def build(prefix: bool, args):
    from swaa_engine.config import CacheConfig, EngineConfig, SchedulerConfig
    from swaa_engine.engine import LLMEngine

    sched = SchedulerConfig(max_num_seqs=args.requests, max_waiting=args.requests + 1,
                            max_num_batched_tokens=args.chunk)
    if args.random_qwen3_4b:
        from gpu_bench import qwen3_4b_config

        max_len = args.system + args.question + args.max_tokens + 64
        cfg = EngineConfig(model=None, swaa=swaa_config(args), dtype="bfloat16", device=args.device, random_weights=True,
                           max_model_len=max_len, scheduler=sched,
                           cache=CacheConfig(block_size=128, budget_fraction=0.9, prefix_caching=prefix))
        return LLMEngine(cfg, hf_config=qwen3_4b_config(max_len))
    return LLMEngine(EngineConfig(model=args.model, device=args.device, swaa=swaa_config(args), scheduler=sched,
                                  num_threads=args.threads, cache=CacheConfig(prefix_caching=prefix)))


def prompt_ids(engine, args) -> tuple[list[int], list[list[int]]]:
    """The shared system prompt and one distinct question per request: real text, or random ids without a tokenizer."""
    if engine.tokenizer is None:
        rng = random.Random(0)
        vocab = engine.dims.vocab_size
        system = [rng.randrange(vocab) for _ in range(args.system)]
        return system, [[rng.randrange(vocab) for _ in range(args.question)] for _ in range(args.requests)]
    ids = engine.tokenize(open(TEXT).read())
    system = ids[: args.system]
    rest = ids[args.system:]
    span = max(1, len(rest) - args.question)
    return system, [rest[(i * 97) % span:(i * 97) % span + args.question] for i in range(args.requests)]  # distinct


def sync(engine) -> None:
    if engine.device.type == "cuda":
        import torch

        torch.cuda.synchronize()


def drain(engine, progress=None, until: float | None = None, first: dict | None = None, t0: float = 0.0) -> dict:
    """Step until no work is left (or ``until``, a ``time.monotonic`` deadline): the finished requests' last chunks.
    ``first``: request id -> seconds from ``t0`` to its first token, for requests still running at ``until``."""
    finals = {}
    while engine.has_work() and (until is None or time.monotonic() < until):
        for c in engine.step():
            if first is not None and c.token_ids and c.request_id not in first:
                first[c.request_id] = time.monotonic() - t0
            if c.finished:
                finals[c.request_id] = c
                if progress is not None:
                    progress.update(1)
    return finals


def shared_system_prompt(engine, args) -> dict:
    from swaa_engine.sampling_params import SamplingParams

    system, questions = prompt_ids(engine, args)
    params = SamplingParams(max_tokens=args.max_tokens, ignore_eos=True)
    # warm-up: first-call costs (and on CUDA each kernel shape's compilation) outside the timing: a full chunk,
    # then a short prompt beside another's decodes; a different prompt from the timed one, so nothing is cached
    engine.add_request([(t + 1) % engine.dims.vocab_size for t in system[: args.chunk]], params)
    engine.add_request(system[-64:][::-1], params)
    drain(engine)
    sync(engine)
    load = os.getloadavg()
    t0 = time.monotonic()
    ids = [engine.add_request(system + q, params) for q in questions]
    bar = None
    if sys.stderr.isatty():
        from tqdm import tqdm

        bar = tqdm(total=args.requests, desc="requests", unit="req")
    first: dict[str, float] = {}
    finals = drain(engine, bar, None if args.time_limit is None else t0 + args.time_limit, first, t0)
    sync(engine)
    elapsed = time.monotonic() - t0
    if bar is not None:
        bar.close()
    # the engine's own TTFT (arrival -> first token) for finished requests; the stream's stamp for the others
    ttft = sorted([c.timings.ttft_s for c in finals.values()] + [first[r] for r in ids if r in first and r not in finals])
    n, done = args.requests, len(ttft)
    for r in ids:  # stopped at the time limit: the rest are ended, not timed
        engine.abort(r)
    drain(engine)
    out = dict(requests=n, finished=len(finals), system_tokens=len(system), question_tokens=args.question,
               duration_s=elapsed, load_before=load, load_after=os.getloadavg(),
               cached_tokens=sum(c.usage.cached_tokens for c in finals.values()),
               prompt_tokens=sum(c.usage.prompt_tokens for c in finals.values()))
    if done == n:
        out.update(ttft_p50_s=statistics.median(ttft), ttft_p99_s=ttft[min(n - 1, int(0.99 * n))])
    elif done > n // 2:  # the median's two middle values are known: everyone else's TTFT is larger
        out.update(ttft_p50_s=statistics.median(ttft + [float("inf")] * (n - done)), ttft_p99_s=None)
    else:
        out.update(ttft_p50_s=None, ttft_p50_lower_bound_s=elapsed, ttft_p99_s=None)
    return out


def chat(engine, args) -> dict:
    from swaa_engine.sampling_params import SamplingParams

    words = open(TEXT).read().split()
    messages, turns = [], []
    prev_prompt = 0
    for t in range(args.turns):
        messages.append({"role": "user", "content": " ".join(words[t * 90:(t + 1) * 90]) + " Summarize this."})
        rid = engine.add_request(messages, SamplingParams(max_tokens=args.answer, ignore_eos=True))
        c = drain(engine)[rid]
        turns.append(dict(prompt=c.usage.prompt_tokens, cached=c.usage.cached_tokens,
                          computed=c.usage.prompt_tokens - c.usage.cached_tokens, new=c.usage.prompt_tokens - prev_prompt))
        prev_prompt = c.usage.prompt_tokens
        messages.append({"role": "assistant", "content": engine.tokenizer.decode(c.token_ids, skip_special_tokens=True)})
    computed, new = sum(x["computed"] for x in turns), sum(x["new"] for x in turns)
    return dict(turns=turns, prompt_tokens_computed=computed, new_tokens=new, ratio=computed / new)


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", default=None, help="HF folder or GGUF file (default: the embedded model)")
    ap.add_argument("--device", default="auto")
    ap.add_argument("--requests", type=int, default=64)
    ap.add_argument("--system", type=int, default=4096)
    ap.add_argument("--question", type=int, default=64)
    ap.add_argument("--max-tokens", type=int, default=4)
    ap.add_argument("--turns", type=int, default=8)
    ap.add_argument("--answer", type=int, default=128)
    ap.add_argument("--swaa", choices=("default", "fa"), default="default",
                    help="default: window 1024, 64 sinks, fa_decode, question tail 32 (the embedded model's); fa: full")
    ap.add_argument("--random-qwen3-4b", action="store_true",
                    help="Qwen3-4B-shaped random bf16 weights, random token-id prompts (GPU host; no chat part)")
    ap.add_argument("--chunk", type=int, default=None, help="max_num_batched_tokens (default 2048; 8192 with "
                                                             "--random-qwen3-4b)")
    ap.add_argument("--threads", type=int, default=None, help="CPU intra-op threads (default: torch's)")
    ap.add_argument("--time-limit", type=float, default=None, help="seconds per arm's shared-prompt run")
    ap.add_argument("--arms", default="cache,no_cache", help="which arms, in order")
    ap.add_argument("--out", default=None)
    args = ap.parse_args()
    if args.chunk is None:
        args.chunk = 8192 if args.random_qwen3_4b else 2048
    if args.random_qwen3_4b:
        sys.path.insert(0, os.path.join(ROOT, "bench"))
        args.turns = 0
    rows = dict(command=" ".join(sys.argv), date=time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()))
    for arm in args.arms.split(","):
        engine = build(arm == "cache", args)
        rows["backend"] = engine.backend.name if hasattr(engine, "backend") else None
        rows[arm] = dict(shared_system_prompt=shared_system_prompt(engine, args))
        if args.turns:
            rows[arm]["chat"] = chat(engine, args)
        print(json.dumps({arm: rows[arm]}), flush=True)
        engine.close()
    if "cache" in rows and "no_cache" in rows:
        a, b = rows["cache"]["shared_system_prompt"], rows["no_cache"]["shared_system_prompt"]
        if a["ttft_p50_s"] and b["ttft_p50_s"]:
            rows["ttft_p50_speedup"] = b["ttft_p50_s"] / a["ttft_p50_s"]
        elif a["ttft_p50_s"] and b.get("ttft_p50_lower_bound_s"):
            rows["ttft_p50_speedup_lower_bound"] = b["ttft_p50_lower_bound_s"] / a["ttft_p50_s"]
        print(json.dumps({k: rows[k] for k in rows if k.startswith("ttft_p50_speedup")}))
    if args.out:
        with open(args.out, "w") as f:
            json.dump(rows, f, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
