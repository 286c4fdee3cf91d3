"""One decode-attention call on the torch (CPU) path: n rows sharing a prompt's pages, read per row (the plain
path) against the shared-prefix cascade (``ops.plan_cascade``), float32. Shapes default to the embedded
SmolLM2-135M (9 query heads, 3 KV heads, head_dim 64); rows as n samples of one prompt make them: the prompt's
full pages shared, each row's last pages its own.

    python bench/cascade_decode_bench.py [--rows 8] [--prompt 2048] [--generated 32] [--threads 1] [--iters 50]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(ROOT, "engine"))


def timed(fn, iters: int) -> float:
    fn()
    out = []
    for _ in range(iters):
        t = time.perf_counter()
        fn()
        out.append(time.perf_counter() - t)
    return 1e3 * statistics.median(out)


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--rows", type=int, default=8)
    ap.add_argument("--prompt", type=int, default=2048)
    ap.add_argument("--generated", type=int, default=32, help="tokens each row has generated (its own keys)")
    ap.add_argument("--heads", type=int, default=9)
    ap.add_argument("--kv-heads", type=int, default=3)
    ap.add_argument("--head-dim", type=int, default=64)
    ap.add_argument("--block-size", type=int, default=16)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--iters", type=int, default=50)
    args = ap.parse_args()
    import torch

    from swaa_engine.attention import ops

    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    bs, B = args.block_size, args.rows
    shared = args.prompt // bs  # the prompt's full pages; its last partial page is each sample's own
    n = args.prompt + args.generated
    own = -(-n // bs) - shared
    num_blocks = 1 + shared + B * own
    tables = [list(range(1, 1 + shared)) + list(range(1 + shared + r * own, 1 + shared + (r + 1) * own)) for r in range(B)]
    lens = [n] * B
    kflat = torch.randn(num_blocks * bs, args.kv_heads, args.head_dim)
    vflat = torch.randn_like(kflat)
    q = torch.randn(B, args.heads, args.head_dim)
    scale = args.head_dim**-0.5
    plain = ops.DecodeTables(ops.block_tables(tables), torch.tensor(lens, dtype=torch.int32), bs, n)
    cascade = ops.plan_cascade(tables, lens, bs)
    casc = ops.DecodeTables(plain.table, plain.lens, bs, n, cascade=cascade)
    a = ops.decode_attention_torch(q, kflat, vflat, plain, scale)
    b = ops.decode_attention_torch(q, kflat, vflat, casc, scale)
    err = (a - b).abs().max().item()
    res = dict(rows=B, keys=n, shared_keys=shared * bs, heads=args.heads, kv_heads=args.kv_heads,
               head_dim=args.head_dim, threads=args.threads, max_abs_diff=err,
               plain_ms=timed(lambda: ops.decode_attention_torch(q, kflat, vflat, plain, scale), args.iters),
               cascade_ms=timed(lambda: ops.decode_attention_torch(q, kflat, vflat, casc, scale), args.iters),
               plan_ms=timed(lambda: ops.plan_cascade(tables, lens, bs), args.iters),
               one_row_ms=timed(lambda: ops.decode_attention_torch(
                   q[:1], kflat, vflat, ops.DecodeTables(plain.table[:1], plain.lens[:1], bs, n), scale), args.iters),
               load_avg_1m=os.getloadavg()[0])
    res["speedup"] = res["plain_ms"] / res["cascade_ms"]
    print(json.dumps(res))
    return 0


if __name__ == "__main__":
    sys.exit(main())
