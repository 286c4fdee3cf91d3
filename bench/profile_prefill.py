"""Where a long prefill's time goes, kernel by kernel (torch.profiler), for each named paper config.

    python bench/profile_prefill.py --out DIR [--configs FA,SWA] [--length 131072] [--chunk 8192]

One request of ``length`` random tokens, one generated token, after a warm-up that compiles every kernel
shape; the profiled run's wall time is set beside the GPU's busy time (the sum of kernel times): the
difference is time the GPU waited on the host. Writes DIR/profile_<config>.txt (top kernels) and a JSON row
per config to DIR/profile_prefill.json.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import sys
import time

import torch

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
sys.path.insert(0, os.path.join(ROOT, "bench"))

from gpu_bench import env_info, paper_configs, qwen3_4b_config  # noqa: E402


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", required=True)
    ap.add_argument("--configs", default="FA,SWA")
    ap.add_argument("--length", type=int, default=131072)
    ap.add_argument("--chunk", type=int, default=8192)
    args = ap.parse_args()
    os.makedirs(args.out, exist_ok=True)
    from torch.profiler import ProfilerActivity, profile

    from swaa_engine.config import CacheConfig, EngineConfig, SchedulerConfig
    from swaa_engine.engine import LLMEngine
    from swaa_engine.sampling_params import SamplingParams

    rows = []
    for name in args.configs.split(","):
        L = args.length
        cfg = EngineConfig(model=None, swaa=paper_configs()[name], dtype="bfloat16", device="cuda", attention_backend="flash",
                           random_weights=True, max_model_len=L + 16,
                           scheduler=SchedulerConfig(max_num_seqs=4, max_num_batched_tokens=args.chunk),
                           cache=CacheConfig(block_size=128, budget_fraction=0.5))
        engine = LLMEngine(cfg, hf_config=qwen3_4b_config(L + 16))
        rng = random.Random(0)
        prompt = [rng.randrange(engine.dims.vocab_size) for _ in range(L)]
        params = SamplingParams(max_tokens=1, ignore_eos=True)

        def run():
            engine.add_request(prompt, params)
            n = 0
            while engine.has_work():
                engine.step()
                n += 1
            torch.cuda.synchronize()
            return n

        run()  # warm-up: every chunk shape compiles here
        t0 = time.perf_counter()
        steps = run()
        plain = time.perf_counter() - t0
        with profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA]) as prof:
            t0 = time.perf_counter()
            run()
            profiled = time.perf_counter() - t0
        events = prof.key_averages()
        # kernels only: an op's row repeats the time of the kernels it launched
        gpu_us = sum(e.device_time for e in prof.events() if e.device_type == torch.autograd.DeviceType.CUDA)
        table = events.table(sort_by="self_cuda_time_total", row_limit=25)
        with open(os.path.join(args.out, f"profile_{name.replace(' ', '').replace('/', '_')}.txt"), "w") as f:
            f.write(table)
        print(f"== {name}: {L} tokens in {steps} steps, {plain:.3f} s wall; GPU busy {gpu_us / 1e6:.3f} s under the profiler")
        print(table[:6000], flush=True)
        rows.append(dict(config=name, length=L, chunk=args.chunk, steps=steps, wall_s=plain, profiled_wall_s=profiled,
                         gpu_busy_s=gpu_us / 1e6))
        engine.close()
    with open(os.path.join(args.out, "profile_prefill.json"), "w") as f:
        json.dump(dict(env=env_info(), rows=rows), f, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
