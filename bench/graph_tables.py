"""Host time of a graph decode step's block tables: the full rebuild from Python lists (before) against the
resident tables' incremental writes (now), at a batch and context where the rebuild's O(batch x pages) shows.

Steady decoding: every step each row advances one token; a row crosses into a new block every ``block`` steps, so
the incremental path writes about batch / block ids a step. Both paths run on CPU tensors here (the host's share;
on CUDA the rebuild also uploaded batch x pages ids each step, the incremental path uploads those few ids).
Reports per step, min and median over the measured steps, milliseconds.

    python bench/graph_tables.py [--batch 256] [--context 131072] [--block 128] [--steps 64]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import time
from types import SimpleNamespace

import torch


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--batch", type=int, default=256)
    ap.add_argument("--context", type=int, default=131072)
    ap.add_argument("--block", type=int, default=128)
    ap.add_argument("--steps", type=int, default=64)
    args = ap.parse_args()
    torch.set_num_threads(1)

    from swaa_engine.attention.base import CacheGeometry
    from swaa_engine.attention.ops import block_tables as padded_tables
    from swaa_engine.cuda_graphs import DecodeGraphs
    from swaa_engine.sampling_params import SamplingParams
    from swaa_engine.sequence import Sequence
    from swaa_engine.swaa import SWAAConfig

    B, bs = args.batch, args.block
    max_len = args.context + args.steps + bs
    pages = -(-max_len // bs)
    g = DecodeGraphs(SimpleNamespace(dims=SimpleNamespace(vocab_size=8)), SimpleNamespace(device=torch.device("cpu")),
                     [], SWAAConfig().layer_specs(2), CacheGeometry(bs, None, 0, max_len=max_len), max_batch=B,
                     max_model_len=max_len, scratch_block=B * pages, scratch_ring=None)
    # contexts spread over the last block, so rows cross block boundaries on different steps
    seqs = []
    for i in range(B):
        n = args.context - (i * 7) % bs
        s = Sequence(f"r{i}", [1] * n, SamplingParams())
        s.block_table = list(range(i * pages, i * pages + -(-n // bs)))
        s.num_computed = n - 1
        seqs.append(s)
    static = torch.zeros(B, pages, dtype=torch.int32)

    def grow():
        for s in seqs:
            s.token_ids.append(1)
            s.num_computed += 1
            if len(s.block_table) * bs < s.num_tokens:
                s.block_table.append(s.block_table[-1] + 1)

    def old_step():
        """What DecodeGraphs.run did per step before: write slots and the padded tables from the lists."""
        pos = [s.num_tokens - 1 for s in seqs]
        tables = [s.block_table for s in seqs]
        _ = [t[p // bs] * bs + p % bs for t, p in zip(tables, pos)]
        table = padded_tables(tables)
        static[:B, : table.shape[1]].copy_(table)

    def new_step():
        chunks = [SimpleNamespace(seq=s, start=s.num_tokens - 1, is_decode=True, samples=True) for s in seqs]
        step = g.plan(chunks)
        g.load(step)
        g.gather(step.bucket)
        return step.writes

    new_step()  # the first step writes every table whole (once per sequence)
    times = {"rebuild": [], "resident": []}
    writes = []
    for _ in range(args.steps):
        grow()
        # interleaved, so the machine's load affects both alike
        t = time.perf_counter()
        old_step()
        times["rebuild"].append(time.perf_counter() - t)
        t = time.perf_counter()
        writes.append(new_step())
        times["resident"].append(time.perf_counter() - t)
    assert torch.equal(g.s.paged_table[:B], static[:B])  # the same tables
    row = dict(batch=B, context=args.context, block=bs, pages=pages, steps=args.steps,
               ids_written_per_step=sum(writes) / len(writes), load_average=os.getloadavg())
    for k, v in times.items():
        row[f"{k}_ms_min"] = 1e3 * min(v)
        row[f"{k}_ms_median"] = 1e3 * statistics.median(v)
    print(json.dumps(row))


if __name__ == "__main__":
    main()
