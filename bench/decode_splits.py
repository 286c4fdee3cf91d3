"""The split-KV decode kernel's achieved bandwidth against its split count and key block, at the shapes the
scale benchmark decodes (Qwen3-4B-shaped: 32 q / 8 kv heads, d 128, pages of 128), for choosing
``triton_ops.num_splits_for``.

    python bench/decode_splits.py --out DIR [--shapes 1x8192,2x131072,6x131072,16x32768,64x4096]
"""

from __future__ import annotations

import argparse
import json
import os
import sys

import torch

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(ROOT, "bench"))

from gpu_bench import D, HKV, H, cuda_time, env_info  # noqa: E402


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", required=True)
    ap.add_argument("--shapes", default="1x8192,2x131072,6x131072,16x32768,64x4096,256x1024")
    args = ap.parse_args()
    from swaa_engine.attention.triton_ops import DecodeWorkspace, decode_attention, num_splits_for

    dev = torch.device("cuda")
    sms = torch.cuda.get_device_properties(dev).multi_processor_count
    rows = []
    for shape in args.shapes.split(","):
        B, L = (int(x) for x in shape.split("x"))
        page = 128
        pages = L // page
        k = torch.randn(B * pages * page, HKV, D, device=dev, dtype=torch.bfloat16)
        v = torch.randn_like(k)
        table = torch.randperm(B * pages, device=dev).view(B, pages).int()
        lens = torch.full((B,), L, dtype=torch.int32, device=dev)
        q = torch.randn(B, H, D, device=dev, dtype=torch.bfloat16)
        out = torch.empty_like(q)
        gb = 2 * k.numel() * 2 / 1e9
        ws = DecodeWorkspace(B, H, D, 256, dev)
        current = num_splits_for(B, HKV, L, sms)
        for block_n in (64, 128):
            for splits in sorted({1, 2, 4, 8, 16, 32, 64, 128, 256, current}):
                if splits * block_n > L:
                    continue
                t = cuda_time(lambda: decode_attention(q, k, v, table, lens, page, D**-0.5, splits, out, ws, block_n=block_n),
                              iters=20)
                r = dict(batch=B, length=L, block_n=block_n, splits=splits, current=splits == current, ms=1e3 * t,
                         tbps=gb / t / 1e3)
                rows.append(r)
                print(json.dumps(r), flush=True)
        del k, v
        torch.cuda.empty_cache()
    with open(os.path.join(args.out, "decode_splits.json"), "w") as f:
        json.dump(dict(env=env_info(), rows=rows), f, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
