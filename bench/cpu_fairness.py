"""A short chat sent while a long prompt prefills, on the embedded model (CPU): its time to first token beside
its time alone, and the time of one prefill chunk; the issue's bar is TTFT <= 2 x alone + one chunk.

    python bench/cpu_fairness.py [--long 8192] [--chunk 2048]
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--long", type=int, default=8192)
    ap.add_argument("--chunk", type=int, default=2048)
    args = ap.parse_args()
    from swaa_engine.config import EngineConfig, SchedulerConfig
    from swaa_engine.engine import LLMEngine
    from swaa_engine.sampling_params import SamplingParams

    engine = LLMEngine(EngineConfig(scheduler=SchedulerConfig(max_num_batched_tokens=args.chunk)))
    chat = [{"role": "user", "content": "Hi"}]
    short = SamplingParams(max_tokens=4)

    def first_token(rid: str) -> float:
        t0 = time.monotonic()
        while True:
            if any(c.request_id == rid and c.token_ids for c in engine.step()):
                return time.monotonic() - t0

    alone = first_token(engine.add_request(chat, short))
    while engine.has_work():
        engine.step()
    long_ids = [(i * 7919) % engine.dims.vocab_size for i in range(args.long - 300)]
    engine.add_request(long_ids, SamplingParams(max_tokens=16, ignore_eos=True))
    t0 = time.monotonic()
    engine.step()  # the long prompt's first chunk: the chat arrives while it prefills
    chunk_s = time.monotonic() - t0
    beside = first_token(engine.add_request(chat, short))
    while engine.has_work():
        engine.step()
    row = dict(long_tokens=len(long_ids), chunk=args.chunk, ttft_alone_s=alone, one_chunk_s=chunk_s,
               ttft_during_long_prefill_s=beside, bar_s=2 * alone + chunk_s, threads=__import__("torch").get_num_threads())
    print(json.dumps(row))
    return 0


if __name__ == "__main__":
    sys.exit(main())
