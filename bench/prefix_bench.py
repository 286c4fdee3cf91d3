"""Prefix caching's effect, with and without the cache, on the embedded model (or any model/device):

- many requests sharing one system prompt, each with its own question, submitted at once: TTFT p50/p99;
- a multi-turn chat: prompt tokens computed against the new tokens of every turn.

    python bench/prefix_bench.py [--requests 64] [--system 4096] [--question 64] [--turns 8] [--out FILE]

Prompts are real text (the GPL-3 licence, tokenized), greedy, outputs short so that TTFT is what is compared.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

TEXT = "/usr/share/common-licenses/GPL-3"


def build(prefix: bool, args):
    from swaa_engine.config import CacheConfig, EngineConfig, SchedulerConfig
    from swaa_engine.engine import LLMEngine

    return LLMEngine(EngineConfig(model=args.model, device=args.device,
                                  scheduler=SchedulerConfig(max_num_seqs=args.requests, max_waiting=args.requests + 1),
                                  cache=CacheConfig(prefix_caching=prefix)))


def drain(engine, progress=None) -> dict:
    finals = {}
    while engine.has_work():
        for c in engine.step():
            if c.finished:
                finals[c.request_id] = c
                if progress is not None:
                    progress.update(1)
    return finals


def shared_system_prompt(engine, args) -> dict:
    from swaa_engine.sampling_params import SamplingParams

    ids = engine.tokenize(open(TEXT).read())
    system = ids[: args.system]
    rest = ids[args.system:]
    span = max(1, len(rest) - args.question)
    questions = [rest[(i * 97) % span:(i * 97) % span + args.question] for i in range(args.requests)]  # distinct
    params = SamplingParams(max_tokens=args.max_tokens, ignore_eos=True)
    engine.add_request(system[:64], params)  # warm-up: first-call costs outside the timing
    drain(engine)
    t0 = time.monotonic()
    for q in questions:
        engine.add_request(system + q, params)
    bar = None
    if sys.stderr.isatty():
        from tqdm import tqdm

        bar = tqdm(total=args.requests, desc="requests", unit="req")
    finals = drain(engine, bar)
    if bar is not None:
        bar.close()
    ttft = sorted(c.timings.ttft_s for c in finals.values())
    n = len(ttft)
    return dict(requests=n, system_tokens=len(system), question_tokens=args.question, duration_s=time.monotonic() - t0,
                ttft_p50_s=statistics.median(ttft), ttft_p99_s=ttft[min(n - 1, int(0.99 * n))],
                cached_tokens=sum(c.usage.cached_tokens for c in finals.values()),
                prompt_tokens=sum(c.usage.prompt_tokens for c in finals.values()))


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
    ap.add_argument("--out", default=None)
    args = ap.parse_args()
    rows = {}
    for prefix in (True, False):
        engine = build(prefix, args)
        rows["cache" if prefix else "no_cache"] = dict(shared_system_prompt=shared_system_prompt(engine, args),
                                                        chat=chat(engine, args))
        print(json.dumps({("cache" if prefix else "no_cache"): rows["cache" if prefix else "no_cache"]}), flush=True)
        engine.close()
    a, b = rows["cache"]["shared_system_prompt"], rows["no_cache"]["shared_system_prompt"]
    rows["ttft_p50_speedup"] = b["ttft_p50_s"] / a["ttft_p50_s"]
    print(f"shared system prompt: TTFT p50 {a['ttft_p50_s']:.2f} s with the cache, {b['ttft_p50_s']:.2f} s without "
          f"({rows['ttft_p50_speedup']:.1f}x); chat: {rows['cache']['chat']['ratio']:.2f}x the new tokens computed "
          f"with the cache, {rows['no_cache']['chat']['ratio']:.2f}x without")
    if args.out:
        with open(args.out, "w") as f:
            json.dump(rows, f, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
