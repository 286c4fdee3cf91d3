"""Where a decode step's time goes, kernel by kernel (torch.profiler), at batch B and context L.

    python bench/profile_decode.py --out DIR [--config FA] [--batch 1] [--length 8192] [--steps 20]

The engine runs eagerly (no CUDA graphs) so every kernel shows up in the profile; the GPU's busy time per
step is the sum of kernel times, which is what a captured graph replays. Writes DIR/profile_decode_<config>.txt
(top kernels) and DIR/profile_decode.json (kernels per step, GPU time per step, the bytes roofline).
"""

from __future__ import annotations

import argparse
import json
import os
import random
import sys

import torch

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
sys.path.insert(0, os.path.join(ROOT, "bench"))

from gpu_bench import D, HKV, ceilings, env_info, paper_configs, qwen3_4b_config  # noqa: E402


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", required=True)
    ap.add_argument("--config", default="FA")
    ap.add_argument("--batch", type=int, default=1)
    ap.add_argument("--length", type=int, default=8192)
    ap.add_argument("--steps", type=int, default=20)
    args = ap.parse_args()
    os.makedirs(args.out, exist_ok=True)
    from torch.profiler import ProfilerActivity, profile

    from swaa_engine.config import CacheConfig, EngineConfig, SchedulerConfig
    from swaa_engine.engine import LLMEngine
    from swaa_engine.sampling_params import SamplingParams

    L, B = args.length, args.batch
    max_len = L + 4 * args.steps + 64
    cfg = EngineConfig(model=None, swaa=paper_configs()[args.config], dtype="bfloat16", device="cuda",
                       attention_backend="flash", random_weights=True, max_model_len=max_len, cuda_graphs=False,
                       scheduler=SchedulerConfig(max_num_seqs=B, max_num_batched_tokens=8192),
                       cache=CacheConfig(block_size=128, budget_fraction=0.5))
    engine = LLMEngine(cfg, hf_config=qwen3_4b_config(max_len))
    rng = random.Random(0)
    for _ in range(B):
        engine.add_request([rng.randrange(engine.dims.vocab_size) for _ in range(L)],
                           SamplingParams(max_tokens=3 * args.steps + 8, ignore_eos=True))
    while engine.scheduler.waiting or not all(s.is_decoding for s in engine.scheduler.running):
        engine.step()  # prefill
    for _ in range(args.steps):  # warm-up decode steps: every kernel compiled
        engine.step()
    torch.cuda.synchronize()
    with profile(activities=[ProfilerActivity.CUDA]) as prof:
        for _ in range(args.steps):
            engine.step()
        torch.cuda.synchronize()
    kernels = [e for e in prof.events() if e.device_type == torch.autograd.DeviceType.CUDA]
    gpu_ms = sum(e.device_time for e in kernels) / 1e3 / args.steps
    table = prof.key_averages().table(sort_by="self_cuda_time_total", row_limit=30)
    with open(os.path.join(args.out, f"profile_decode_{args.config.replace(' ', '').replace('/', '_')}.txt"), "w") as f:
        f.write(table)
    ceil = ceilings()
    weight_bytes = sum(p.numel() * p.element_size() for p in engine.model.parameters())
    kv_bytes = B * 36 * 2 * HKV * D * 2 * (L + 2 * args.steps)
    roof_ms = 1e3 * (weight_bytes + kv_bytes) / (ceil["copy_tbps"] * 1e12)
    row = dict(config=args.config, batch=B, length=L, kernels_per_step=len(kernels) / args.steps,
               gpu_ms_per_step=gpu_ms, roofline_ms=roof_ms, ratio_to_roofline=gpu_ms / roof_ms, ceilings=ceil)
    print(table[:6000])
    print(json.dumps(row), flush=True)
    with open(os.path.join(args.out, "profile_decode.json"), "w") as f:
        json.dump(dict(env=env_info(), rows=[row]), f, indent=1)
    engine.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
