"""What n samples of one request cost against one sample: time(n) / time(1) for a long prompt and short outputs
(issue 21's target: n = 8 within 1.3x for a 2k-token prompt and 64 new tokens), split into the prompt phase and the
decode phase, and the prompt tokens computed (the prompt must be computed once, not n times).

    python bench/n_samples_bench.py [--n 8] [--prompt 2048] [--new 64] [--reps 2] [--out FILE]      # embedded model, CPU
    python bench/n_samples_bench.py --device cuda --qwen3-4b [--block-size 16]                      # random Qwen3-4B, GPU

Runs alternate n = 1 and n = n (interleaved, so machine load affects both alike); the prefix cache is cleared before
each run, so every run computes its prompt from scratch. The samples are fanned out as the server does
(``LLMEngine.add_samples``): sample 0 computes the prompt, the others wait for it and share its KV, recomputing only
their prompt's last block. Sampling at temperature 1 (n greedy samples would all be the same), ignore_eos.

- prompt phase: submission until every sample has its first token;
- decode phase: the rest (n rows per step against 1);
- prompt tokens computed: tokens the scheduler computed minus the n x (new - 1) decode tokens.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
import uuid

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
sys.path.insert(0, os.path.join(ROOT, "bench"))

TEXT = "/usr/share/common-licenses/GPL-3"


def build(args):
    from swaa_engine.config import CacheConfig, EngineConfig, SchedulerConfig
    from swaa_engine.engine import LLMEngine

    sched = SchedulerConfig(max_num_seqs=max(16, args.n), max_waiting=4 * args.n)
    cache = CacheConfig(block_size=args.block_size)
    if not args.qwen3_4b:
        return LLMEngine(EngineConfig(device=args.device, scheduler=sched, cache=cache, num_threads=args.threads))
    from gpu_bench import qwen3_4b_config

    max_len = args.prompt + args.new + 8
    cfg = EngineConfig(model=None, dtype="bfloat16", device=args.device, random_weights=True, max_model_len=max_len,
                       scheduler=sched, cache=CacheConfig(block_size=args.block_size, budget_fraction=0.9))
    return LLMEngine(cfg, hf_config=qwen3_4b_config(max_len))


def prompt_ids(engine, length: int) -> list[int]:
    if engine.tokenizer is not None:
        ids = engine.tokenize(open(TEXT).read())
        return (ids * (length // len(ids) + 1))[:length]
    import random

    rng = random.Random(0)
    return [rng.randrange(engine.dims.vocab_size) for _ in range(length)]


def sync(engine) -> None:
    if engine.device.type == "cuda":
        import torch

        torch.cuda.synchronize(engine.device)


def run(engine, prompt: list[int], n: int, new: int, seed: int) -> dict:
    from swaa_engine.engine import sample_id
    from swaa_engine.sampling_params import SamplingParams

    engine.cache.clear_prefix_cache()  # every run computes its prompt from scratch
    stats = engine.scheduler.stats
    computed0, pre0 = stats.computed_tokens, stats.preemptions
    params = SamplingParams(n=n, max_tokens=new, temperature=1.0, seed=seed, ignore_eos=True)
    rid = uuid.uuid4().hex
    sync(engine)
    t0 = time.perf_counter()
    if n == 1:
        engine.add_request(prompt, params, request_id=rid)
    else:
        engine.add_samples(prompt, params, [sample_id(rid, i) for i in range(n)])
    first: set[str] = set()
    t_first = None
    steps = {"prompt": 0, "decode": 0}
    decode_s = []
    while engine.has_work():
        s = time.perf_counter()
        chunks = engine.step()
        phase = "prompt" if t_first is None else "decode"
        steps[phase] += 1
        if phase == "decode":
            sync(engine)
            decode_s.append(time.perf_counter() - s)
        for c in chunks:
            if c.token_ids:
                first.add(c.request_id)
        if t_first is None and len(first) == n:
            sync(engine)
            t_first = time.perf_counter()
    sync(engine)
    total = time.perf_counter() - t0
    computed = stats.computed_tokens - computed0
    return dict(n=n, total_s=total, prompt_phase_s=t_first - t0, decode_phase_s=total - (t_first - t0),
                prompt_steps=steps["prompt"], decode_steps=steps["decode"],
                decode_step_ms=1e3 * statistics.median(decode_s) if decode_s else None,
                prompt_tokens_computed=computed - n * (new - 1), preemptions=stats.preemptions - pre0)


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--n", type=int, default=8)
    ap.add_argument("--prompt", type=int, default=2048)
    ap.add_argument("--new", type=int, default=64)
    ap.add_argument("--reps", type=int, default=2, help="pairs of runs (n = 1, n = n), interleaved")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--qwen3-4b", action="store_true", help="random-weight Qwen3-4B-shaped model (bf16) instead of "
                                                             "the embedded one")
    ap.add_argument("--block-size", type=int, default=16)
    ap.add_argument("--threads", type=int, default=None, help="CPU threads (default: torch's)")
    ap.add_argument("--out", default=None)
    args = ap.parse_args()
    engine = build(args)
    prompt = prompt_ids(engine, args.prompt)
    run(engine, prompt[: min(len(prompt), 256)], 2, 4, seed=0)  # warm-up: first-call costs (and CUDA JIT) outside
    rows = []
    for rep in range(args.reps):
        for n in (1, args.n):
            r = run(engine, prompt, n, args.new, seed=rep)
            r["load_avg_1m"] = os.getloadavg()[0]
            rows.append(r)
            print(json.dumps(r), flush=True)
    one = [r for r in rows if r["n"] == 1]
    many = [r for r in rows if r["n"] == args.n]

    def med(rs, k):
        return statistics.median(r[k] for r in rs)

    summary = dict(model=engine.model_name, device=str(engine.device), n=args.n, prompt=args.prompt, new=args.new,
                   block_size=args.block_size,
                   ratio_total=med(many, "total_s") / med(one, "total_s"),
                   ratio_prompt_phase=med(many, "prompt_phase_s") / med(one, "prompt_phase_s"),
                   ratio_decode_phase=med(many, "decode_phase_s") / med(one, "decode_phase_s"),
                   prompt_tokens_computed={1: med(one, "prompt_tokens_computed"),
                                           args.n: med(many, "prompt_tokens_computed")},
                   total_s={1: med(one, "total_s"), args.n: med(many, "total_s")},
                   decode_step_ms={1: med(one, "decode_step_ms"), args.n: med(many, "decode_step_ms")})
    print(json.dumps(summary), flush=True)
    print(f"n={args.n}: {summary['ratio_total']:.2f}x the time of n=1 (prompt phase {summary['ratio_prompt_phase']:.2f}x, "
          f"decode phase {summary['ratio_decode_phase']:.2f}x); prompt tokens computed "
          f"{summary['prompt_tokens_computed'][args.n]} for n={args.n}, {summary['prompt_tokens_computed'][1]} for n=1")
    if args.out:
        with open(args.out, "w") as f:
            json.dump(dict(rows=rows, summary=summary, command="python " + " ".join(sys.argv)), f, indent=1)
    engine.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
