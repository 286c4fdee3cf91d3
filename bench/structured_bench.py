"""What structured output costs (issue 21's targets: at most 10 % of throughput at 64 concurrent JSON-Schema requests
against the same requests unconstrained, and a cached schema adding at most 5 ms to TTFT).

    python bench/structured_bench.py [--requests 64] [--new 48] [--reps 2] [--ttft-pairs 10] [--out FILE]

The embedded model (real tokenizer) on CPU by default. Throughput: ``--requests`` requests submitted at once, each
``--new`` tokens (ignore_eos; the schema, an array of at least 20 records, cannot be complete that early, so both arms
decode exactly the same number of tokens), runs alternating constrained / unconstrained so machine load affects both
alike. The time the sampler spends filling and applying the token masks (``structured.mask_logits``) is measured
beside it. TTFT: one request alone, the schema compiled by an earlier request (xgrammar's cache), from before
``add_request`` (matcher construction included) to its first token, alternating with the same request unconstrained;
and, since that difference is below a shared machine's noise, the parts it adds timed alone (medians): the cached
schema's lookup and matcher construction, and the first step's mask.
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

SCHEMA = {
    "type": "array", "minItems": 20,
    "items": {"type": "object", "additionalProperties": False, "required": ["id", "name", "email", "active"],
              "properties": {"id": {"type": "integer", "minimum": 0},
                             "name": {"type": "string", "maxLength": 40},
                             "email": {"type": "string", "maxLength": 60},
                             "active": {"type": "boolean"}}},
}
PROMPT = [{"role": "user", "content": "List twenty users of a web shop as a JSON array of objects with id, name, "
                                      "email and active."}]


class MaskTimer:
    """Wraps ``structured.mask_logits`` (as the sampler imports it at each call) to add up its time."""

    def __init__(self):
        import swaa_engine.structured as st

        self.st, self.orig, self.seconds, self.calls = st, st.mask_logits, 0.0, 0

        def timed(*a, **kw):
            t = time.perf_counter()
            try:
                return self.orig(*a, **kw)
            finally:
                self.seconds += time.perf_counter() - t
                self.calls += 1

        st.mask_logits = timed


def build(args):
    if args.random_qwen3_4b:  # the GPU host has no embedded model: random weights, a real tokenizer's vocabulary
        sys.path.insert(0, os.path.join(ROOT, "bench"))
        from host_step import cuda_engine

        shape = argparse.Namespace(prompt_tokens=256, new=args.new, batch=args.requests, backend=args.backend,
                                   tokenizer=args.tokenizer)
        return cuda_engine(shape)[0]
    from swaa_engine.config import EngineConfig, SchedulerConfig
    from swaa_engine.engine import LLMEngine

    return LLMEngine(EngineConfig(device=args.device, num_threads=args.threads,
                                  scheduler=SchedulerConfig(max_num_seqs=args.requests, max_waiting=2 * args.requests)))


def params(constrained: bool, new: int, seed: int):
    from swaa_engine.sampling_params import SamplingParams, StructuredOutput

    so = StructuredOutput("json_schema", json.dumps(SCHEMA)) if constrained else None
    return SamplingParams(max_tokens=new, temperature=0.7, seed=seed, ignore_eos=True, structured_output=so)


def throughput(engine, args, constrained: bool, timer: MaskTimer) -> dict:
    engine.cache.clear_prefix_cache()
    mask0, calls0 = timer.seconds, timer.calls
    t0 = time.perf_counter()
    for i in range(args.requests):
        engine.add_request(PROMPT, params(constrained, args.new, seed=i))
    tokens, steps = 0, 0
    while engine.has_work():
        tokens += sum(len(c.token_ids) for c in engine.step())
        steps += 1
    dt = time.perf_counter() - t0
    return dict(constrained=constrained, requests=args.requests, tokens=tokens, seconds=dt, tok_s=tokens / dt,
                steps=steps, mask_s=timer.seconds - mask0, mask_calls=timer.calls - calls0,
                load_avg_1m=os.getloadavg()[0])


def ttft_once(engine, constrained: bool) -> float:
    t0 = time.perf_counter()
    engine.add_request(PROMPT, params(constrained, 1, seed=0))
    while engine.has_work():
        engine.step()
    return time.perf_counter() - t0


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--requests", type=int, default=64)
    ap.add_argument("--new", type=int, default=48)
    ap.add_argument("--reps", type=int, default=2, help="pairs of throughput runs (constrained, unconstrained)")
    ap.add_argument("--ttft-pairs", type=int, default=10)
    ap.add_argument("--intake-reps", type=int, default=50, help="timings of a cached schema's matcher construction")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--out", default=None)
    ap.add_argument("--random-qwen3-4b", action="store_true",
                    help="CUDA: the Qwen3-4B-shaped random bf16 model with CUDA graphs (host_step's) instead of the embedded one")
    ap.add_argument("--tokenizer", help="with --random-qwen3-4b: a folder written by host_step.py --save-tokenizer")
    ap.add_argument("--backend", default="auto", help="with --random-qwen3-4b: the attention backend")
    args = ap.parse_args()
    if args.random_qwen3_4b and args.device != "cuda":
        ap.error("--random-qwen3-4b runs on CUDA")
    if args.random_qwen3_4b:  # the saved tokenizer has no chat template: the request's text as a plain prompt
        global PROMPT
        PROMPT = PROMPT[0]["content"]
    engine = build(args)
    timer = MaskTimer()
    t = time.perf_counter()
    engine.grammars.compile(params(True, 1, 0).structured_output)  # first compile: the vocabulary read + the schema
    first_compile_s = time.perf_counter() - t
    t = time.perf_counter()
    engine.grammars.compile(params(True, 1, 0).structured_output)
    cached_compile_s = time.perf_counter() - t
    # what a cached schema adds at intake, timed alone (the whole TTFT varies by more than 5 ms on a shared machine):
    # the cache lookup and a matcher's construction (LLMEngine.add_request), then its first mask (the sampler)
    so = params(True, 1, 0).structured_output
    intake, first_mask = [], []
    import torch

    from swaa_engine.structured import mask_logits

    logits = torch.zeros(1, engine.dims.vocab_size)
    for _ in range(args.intake_reps):
        t = time.perf_counter()
        m = engine.grammars.matcher(so)
        t1 = time.perf_counter()
        mask_logits(logits, [0], [m])
        intake.append(t1 - t)
        first_mask.append(time.perf_counter() - t1)
    ttft_once(engine, True), ttft_once(engine, False)  # warm-up
    ttft = {True: [], False: []}
    for i in range(args.ttft_pairs):
        for c in ((True, False) if i % 2 == 0 else (False, True)):
            engine.cache.clear_prefix_cache()
            ttft[c].append(ttft_once(engine, c))
    rows = []
    for rep in range(args.reps):
        for c in ((True, False) if rep % 2 == 0 else (False, True)):
            r = throughput(engine, args, c, timer)
            rows.append(r)
            print(json.dumps(r), flush=True)
    con = [r for r in rows if r["constrained"]]
    unc = [r for r in rows if not r["constrained"]]
    tok_c, tok_u = statistics.median(r["tok_s"] for r in con), statistics.median(r["tok_s"] for r in unc)
    summary = dict(
        model=engine.model_name, device=str(engine.device), requests=args.requests, new=args.new,
        throughput_tok_s={"constrained": tok_c, "unconstrained": tok_u}, cost=1 - tok_c / tok_u,
        mask_share_of_constrained_time=sum(r["mask_s"] for r in con) / sum(r["seconds"] for r in con),
        mask_ms_per_step=1e3 * sum(r["mask_s"] for r in con) / max(1, sum(r["mask_calls"] for r in con)),
        ttft_ms={"cached_schema": 1e3 * statistics.median(ttft[True]), "unconstrained": 1e3 * statistics.median(ttft[False])},
        ttft_added_ms=1e3 * (statistics.median(ttft[True]) - statistics.median(ttft[False])),
        ttft_all_ms={str(k): [round(1e3 * x, 2) for x in v] for k, v in ttft.items()},
        first_compile_s=first_compile_s, cached_compile_ms=1e3 * cached_compile_s,
        cached_matcher_ms_median=1e3 * statistics.median(intake), first_mask_ms_median=1e3 * statistics.median(first_mask))
    print(json.dumps(summary), flush=True)
    print(f"{args.requests} JSON-Schema requests: {tok_c:.1f} tok/s against {tok_u:.1f} unconstrained "
          f"(cost {100 * summary['cost']:.1f} %; masks {100 * summary['mask_share_of_constrained_time']:.1f} % of the "
          f"time, {summary['mask_ms_per_step']:.2f} ms per step); TTFT with a cached schema "
          f"{summary['ttft_ms']['cached_schema']:.1f} ms against {summary['ttft_ms']['unconstrained']:.1f} ms "
          f"(+{summary['ttft_added_ms']:.1f} ms); intake of a cached schema {summary['cached_matcher_ms_median']:.2f} ms, "
          f"its first mask {summary['first_mask_ms_median']:.2f} ms (medians)")
    if args.out:
        with open(args.out, "w") as f:
            json.dump(dict(rows=rows, summary=summary, command="python " + " ".join(sys.argv)), f, indent=1)
    engine.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
