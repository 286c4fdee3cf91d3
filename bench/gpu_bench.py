"""GPU benchmarks: kernels, the paper's speed table, cache capacity, transformers as peer, and the paper's
many-long-requests workload (``scale``) against each config's own roofline and vLLM's figures.

    python bench/gpu_bench.py --out DIR [--only kernels,paper,decode,capacity,peer,scale] [--paper-lengths 32768,131072]
    python bench/gpu_bench.py --out DIR --only scale --scale-runs FA:8x131072,SWA:8x131072

Each part writes DIR/gpu_<part>.json (rows + card, versions, date, command); bench/gpu_report.py turns
them into the tables and plots of bench/RESULTS.md. Models are Qwen3-4B-shaped with random bf16
weights (speed does not depend on weights); prompts are random token ids, decoding is greedy with
ignore_eos so every request produces exactly its output length.
"""

from __future__ import annotations

import argparse
import datetime
import gc
import json
import os
import random
import sys
import time

import torch

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

from swaa_engine.attention.base import CacheGeometry, StepEntry, StepLayout, create_backend  # noqa: E402
from swaa_engine.swaa import AttentionKind, LayerSpec, SWAAConfig  # noqa: E402

W, SINKS = 2048, 100
H, HKV, D = 32, 8, 128


def qwen3_4b_config(max_len: int):
    from transformers import Qwen3Config

    return Qwen3Config(vocab_size=151936, hidden_size=2560, intermediate_size=9728, num_hidden_layers=36,
                       num_attention_heads=H, num_key_value_heads=HKV, head_dim=D, max_position_embeddings=max_len,
                       rope_theta=1_000_000.0, tie_word_embeddings=True, initializer_range=0.02)


def paper_configs() -> dict[str, SWAAConfig]:
    return {
        "FA": SWAAConfig(),
        "SWA": SWAAConfig(window=W),
        "SWA + 1/2 FA": SWAAConfig(window=W, sinks=SINKS, fa_layers="odd"),
        "FA-decode": SWAAConfig(window=W, sinks=SINKS, fa_decode=True),
        "FA-decode + 1/4": SWAAConfig(window=W, sinks=SINKS, fa_decode=True, fa_layers="every:4"),
        "FA-decode + 1/2": SWAAConfig(window=W, sinks=SINKS, fa_decode=True, fa_layers="odd"),
    }


PAPER_SPEEDUP_128K = {"SWA": 8.0, "SWA + 1/2 FA": 1.79, "FA-decode": 1.71, "FA-decode + 1/4": 1.45, "FA-decode + 1/2": 1.26}
# The paper's 100 x 128k -> 512 run (vLLM 0.11 eager, the authors' FA2 fork, Qwen3-4B-Thinking, GPU not stated):
# seconds per request
PAPER_S_PER_REQUEST_128K = {"FA": 34.4, "SWA": 4.3, "SWA + 1/2 FA": 19.2, "FA-decode": 20.1, "FA-decode + 1/4": 23.7,
                            "FA-decode + 1/2": 27.2}
# vLLM 0.21 on the same H200 (2026-12-03, ../shared/notes/gpu.md): seconds for n x L -> 512
VLLM_S = {("FA", 64, 1024): 2.26, ("FA", 8, 131072): 105.3, ("FA", 16, 131072): 208.5, ("SWA", 8, 131072): 18.2}


def env_info() -> dict:
    import transformers

    try:
        from importlib.metadata import version

        fa4 = version("flash-attn-4")
    except Exception:
        fa4 = None
    import triton

    return dict(card=torch.cuda.get_device_name(), torch=torch.__version__, cuda=torch.version.cuda,
                transformers=transformers.__version__, flash_attn_4=fa4, triton=triton.__version__,
                date=datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
                command="python " + " ".join(sys.argv))


def cuda_time(fn, iters: int = 10, warmup: int = 2) -> float:
    """Median seconds per call, by CUDA events."""
    for _ in range(warmup):
        fn()
    torch.cuda.synchronize()
    times = []
    for _ in range(iters):
        a, b = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        a.record()
        fn()
        b.record()
        b.synchronize()
        times.append(a.elapsed_time(b) / 1e3)
    return sorted(times)[len(times) // 2]


def ceilings() -> dict:
    n = 8192
    a = torch.randn(n, n, device="cuda", dtype=torch.bfloat16)
    b = torch.randn(n, n, device="cuda", dtype=torch.bfloat16)
    t = cuda_time(lambda: a @ b, iters=20, warmup=5)
    src = torch.empty(1 << 30, dtype=torch.uint8, device="cuda")
    dst = torch.empty_like(src)
    tc = cuda_time(lambda: dst.copy_(src), iters=20, warmup=5)
    return {"gemm_tflops": 2 * n**3 / t / 1e12, "copy_tbps": 2 * src.numel() / tc / 1e12}


# -- kernels ------------------------------------------------------------------------------------
def _layer_step(kind: AttentionKind, window, sinks, entries_fn, block_size=128):
    """Backend, cache and step metadata for one layer of `kind` over the entries entries_fn makes."""
    dev = torch.device("cuda")
    geometry = CacheGeometry(block_size, window, sinks)
    backend = create_backend("flash", dev, geometry=geometry, num_heads=H, num_kv_heads=HKV, head_dim=D)
    # create_backend falls back (with a warning) when flash-attn-4 refuses the shapes: these rows are flash's only
    if backend.name != "flash":
        raise SystemExit(f"flash-attn-4 refused this model's shapes; the kernel rows would time {backend.name!r}")
    spec = LayerSpec(0, kind, window if kind is not AttentionKind.FULL else None, sinks if kind is not AttentionKind.FULL else 0)
    entries, n_units = entries_fn(geometry)
    shape = (n_units, block_size if kind is not AttentionKind.SLIDING_RING else geometry.ring_slots, HKV, D)
    cache = (torch.randn(shape, device=dev, dtype=torch.bfloat16), torch.randn(shape, device=dev, dtype=torch.bfloat16))
    layout = StepLayout(tuple(entries), sum(e.is_decode for e in entries))
    meta = backend.prepare(layout)
    T = layout.num_tokens
    q = torch.randn(T, H * D, device=dev, dtype=torch.bfloat16)
    k = torch.randn(T, HKV * D, device=dev, dtype=torch.bfloat16)
    v = torch.randn(T, HKV, D, device=dev, dtype=torch.bfloat16)
    return lambda: backend.forward(spec, q, k, v, cache, meta)


def bench_kernels(ceil: dict) -> list[dict]:
    rows = []
    for L in (32768, 131072):
        blocks = -(-L // 128)

        def prefill(g, L=L, blocks=blocks):
            return [StepEntry(0, L, L, tuple(range(blocks)), None)], blocks

        def ring_prefill(g, L=L):
            return [StepEntry(0, L, L, (), 0)], 1  # ring layers only: no block table

        cases = [("full causal (paged)", AttentionKind.FULL, None, 0, prefill),
                 ("window (paged, fa_decode layer)", AttentionKind.SLIDING_FA_DECODE, W, 0, prefill),
                 ("window + sinks (paged, fa_decode layer)", AttentionKind.SLIDING_FA_DECODE, W, SINKS, prefill),
                 ("window (ring layer)", AttentionKind.SLIDING_RING, W, 0, ring_prefill),
                 ("window + sinks (ring layer)", AttentionKind.SLIDING_RING, W, SINKS, ring_prefill)]
        for name, kind, window, sinks, fn in cases:
            run = _layer_step(kind, window, sinks, fn)
            t = cuda_time(run, iters=5)
            if window is None:
                pairs = L * (L + 1) / 2
            else:
                pairs = sum(min(i + 1, window) for i in range(0, L, 64)) * 64 + (
                    sum(max(0, min(sinks, i - window + 1)) for i in range(0, L, 64)) * 64 if sinks else 0)
            flops = 4 * pairs * H * D
            rows.append(dict(part="prefill", case=name, seq_len=L, ms=t * 1e3, tflops=flops / t / 1e12,
                             frac_of_gemm=flops / t / 1e12 / ceil["gemm_tflops"]))
            print(rows[-1], flush=True)
            del run
            torch.cuda.empty_cache()
    for B in (1, 16, 64, 256):
        for L in (2048, 16384, 131072):
            if B * L > 4 * 131072:
                continue
            blocks = -(-L // 128)

            def dec(g, B=B, L=L, blocks=blocks):
                return [StepEntry(L - 1, 1, 1, tuple(range(b * blocks, (b + 1) * blocks)), None) for b in range(B)], B * blocks

            run = _layer_step(AttentionKind.FULL, None, 0, dec)
            t = cuda_time(run, iters=20)
            nbytes = 2 * B * L * HKV * D * 2
            rows.append(dict(part="decode", case="paged full", batch=B, keys=L, ms=t * 1e3, tbps=nbytes / t / 1e12,
                             frac_of_copy=nbytes / t / 1e12 / ceil["copy_tbps"]))
            print(rows[-1], flush=True)
            del run
            torch.cuda.empty_cache()
        R = W + SINKS

        def ring_dec(g, B=B):
            return [StepEntry(10 * R, 1, 1, (), b) for b in range(B)], B

        run = _layer_step(AttentionKind.SLIDING_RING, W, SINKS, ring_dec)
        t = cuda_time(run, iters=20)
        nbytes = 2 * B * R * HKV * D * 2
        rows.append(dict(part="decode", case="ring (all valid slots)", batch=B, keys=R, ms=t * 1e3, tbps=nbytes / t / 1e12,
                         frac_of_copy=nbytes / t / 1e12 / ceil["copy_tbps"]))
        print(rows[-1], flush=True)
    return rows


# -- end-to-end ---------------------------------------------------------------------------------
def run_engine(swaa: SWAAConfig, n: int, l_in: int, l_out: int, *, max_len: int, chunk: int = 8192, seed: int = 0,
               device: str = "cuda", backend: str = "flash", hf_config=None, cuda_graphs: bool = True,
               progress: bool = False) -> dict:
    from swaa_engine.config import CacheConfig, EngineConfig, SchedulerConfig
    from swaa_engine.engine import LLMEngine
    from swaa_engine.sampling_params import SamplingParams

    cfg = EngineConfig(model=None, swaa=swaa, dtype="bfloat16", device=device, attention_backend=backend,
                       random_weights=True, max_model_len=max_len, cuda_graphs=cuda_graphs,
                       scheduler=SchedulerConfig(max_num_seqs=max(n, 1), max_num_batched_tokens=chunk, max_waiting=n + 1),
                       cache=CacheConfig(block_size=128, budget_fraction=0.9))
    engine = LLMEngine(cfg, hf_config=hf_config or qwen3_4b_config(max_len))
    vocab = engine.dims.vocab_size
    rng = random.Random(seed)
    prompts = [[rng.randrange(vocab) for _ in range(l_in)] for _ in range(n)]
    params = SamplingParams(max_tokens=l_out, ignore_eos=True)
    # warm-up: JIT-compiles every kernel shape the run will meet, outside the timing
    # Two requests, so steps that mix one's decodes with the other's prefill chunks compile here too
    # (each kernel configuration compiles on first use, ~2.5 s for flash-attn-4).
    for _ in range(min(n, 2)):
        engine.add_request(prompts[0][: min(l_in, 3 * chunk)], SamplingParams(max_tokens=8, ignore_eos=True))
    while engine.has_work():
        engine.step()
    sync = torch.cuda.synchronize if device == "cuda" else (lambda: None)
    sync()
    t0 = time.perf_counter()
    for p in prompts:
        engine.add_request(p, params)
    finals = []
    bar = None
    if progress and sys.stderr.isatty():
        from tqdm import tqdm

        bar = tqdm(total=n, desc=f"{n} x {l_in}", unit="req")
    while engine.has_work():
        done = [c for c in engine.step() if c.finished]
        finals += done
        if bar is not None and done:
            bar.update(len(done))
    if bar is not None:
        bar.close()
    sync()
    duration = time.perf_counter() - t0
    ttft = sorted(c.timings.ttft_s for c in finals)
    tpot = [(c.timings.total_s - c.timings.ttft_s) / (c.usage.completion_tokens - 1) for c in finals]
    usage = engine.cache_usage()
    held = engine.cache.blocks.total // max(1, engine.cache.blocks_for(l_in + l_out)) if engine.cache.has_paged else n
    if engine.cache.has_ring:
        held = min(held, engine.cache.rings.total)
    pre = engine.load.preemptions
    graphs = engine.runner.graphs
    if graphs is not None and graphs.bucket(n) is not None:
        # the GPU's share of a decode step: the graph replayed alone (the step's last inputs are still in place)
        replay_ms = 1e3 * cuda_time(graphs._graphs[graphs.bucket(n)].replay, iters=20)
    else:
        replay_ms = None
    out = dict(n=n, l_in=l_in, l_out=l_out, duration_s=duration, out_tok_s=n * l_out / duration,
               ttft_mean_s=sum(ttft) / n, ttft_p50_s=ttft[n // 2], ttft_p99_s=ttft[min(n - 1, int(0.99 * n))],
               tpot_mean_ms=1e3 * sum(tpot) / n, preemptions=pre["total"], swapped=pre["swapped"],
               swapped_gb=pre["swapped_bytes"] / 1e9, recomputed_tokens=pre["recomputed_tokens"],
               paged_blocks=usage["paged"]["total"], rings=usage["ring"]["total"], seqs_held=min(held, n),
               weight_bytes=sum(p.numel() * p.element_size() for p in engine.model.parameters()), graph_replay_ms=replay_ms)
    engine.close()
    return out


def attention_rates() -> dict:
    """flash-attn-4's measured prefill rates on this card (TFLOP/s): full causal and window-only, 32k tokens."""
    out = {}
    for name, kind, window in (("full", AttentionKind.FULL, None), ("window", AttentionKind.SLIDING_FA_DECODE, W)):
        L = 32768
        run = _layer_step(kind, window, 0, lambda g, L=L: ([StepEntry(0, L, L, tuple(range(L // 128)), None)], L // 128))
        t = cuda_time(run, iters=5)
        pairs = L * (L + 1) / 2 if window is None else sum(min(i + 1, window) for i in range(L))
        out[name] = 4 * pairs * H * D / t / 1e12
        del run
        torch.cuda.empty_cache()
    return out


def roofline_s(swaa: SWAAConfig, n: int, l_in: int, l_out: int, held: int, weight_bytes: int, ceil: dict, att: dict) -> dict:
    """The workload's own roofline: every prompt's prefill FLOPs at the measured rates (linear layers at the GEMM
    ceiling, attention at flash-attn-4's full/window rate), plus each decode wave's bytes at the copy rate; a wave
    is as many sequences as the cache holds at full length, each step reading the weights and their KV."""
    specs = swaa.layer_specs(36)
    embed = 151936 * 2560 * 2  # tied embedding table, bf16: read once per token as a row, not a GEMM
    linear_flops = 2 * (weight_bytes - embed) / 2 * l_in
    full_pairs = l_in * (l_in + 1) / 2

    def window_pairs(sinks):
        w = min(W, l_in)
        return w * (w + 1) / 2 + (l_in - w) * w + sinks * max(0, l_in - W)

    t_att = 0.0
    kv_tok_bytes = 0  # KV bytes per sequence at full length, summed over layers
    per_token = 2 * HKV * D * 2
    for s in specs:
        if s.window is None:
            t_att += 4 * full_pairs * H * D / (att["full"] * 1e12)
        else:
            t_att += 4 * window_pairs(s.sinks) * H * D / (att["window"] * 1e12)
        ring = s.cache_kind.value == "ring"
        kv_tok_bytes += per_token * (min(l_in + l_out, s.sinks + s.window) if ring else l_in + l_out)
    prefill = n * (linear_flops / (ceil["gemm_tflops"] * 1e12) + t_att)
    decode, left = 0.0, n
    while left > 0:
        m = min(held, left)
        decode += l_out * (weight_bytes + m * kv_tok_bytes) / (ceil["copy_tbps"] * 1e12)
        left -= m
    return dict(roofline_prefill_s=prefill, roofline_decode_s=decode, roofline_s=prefill + decode)


def bench_scale(runs: list[tuple[str, int, int]], l_out: int, ceil: dict) -> list[dict]:
    """The paper's workload: n requests of l_in tokens -> l_out, submitted at once, for each named config."""
    att = attention_rates()
    print("attention rates (TFLOP/s)", att, flush=True)
    rows = []
    for name, n, l_in in runs:
        swaa = paper_configs()[name]
        r = run_engine(swaa, n, l_in, l_out, max_len=l_in + l_out + 8, progress=True)
        r.update(config=name, swaa=swaa.describe(), attention_tflops=att)
        r.update(roofline_s(swaa, n, l_in, l_out, r["seqs_held"], r["weight_bytes"], ceil, att))
        r["ratio_to_roofline"] = r["duration_s"] / r["roofline_s"]
        r["s_per_request"] = r["duration_s"] / n
        if l_in == 131072:
            r["paper_s_per_request"] = PAPER_S_PER_REQUEST_128K[name]
        if (name, n, l_in) in VLLM_S:
            r["vllm_s"] = VLLM_S[(name, n, l_in)]
        rows.append(r)
        print(json.dumps(r), flush=True)
    return rows


def bench_paper(lengths: list[int], sizes: dict[int, int], l_out: int, ceil: dict) -> list[dict]:
    rows = []
    for L in lengths:
        fa = None
        for name, swaa in paper_configs().items():
            r = run_engine(swaa, sizes[L], L, l_out, max_len=L + l_out + 8)
            r.update(config=name, swaa=swaa.describe())
            if name == "FA":
                fa = r["duration_s"]
            r["speedup_vs_fa"] = fa / r["duration_s"]
            if L == 131072 and name in PAPER_SPEEDUP_128K:
                r["paper_speedup"] = PAPER_SPEEDUP_128K[name]
                r["target_speedup"] = 1.2 * PAPER_SPEEDUP_128K[name]
            rows.append(r)
            print(json.dumps(r), flush=True)
    return rows + bench_decode(ceil)


def bench_decode(ceil: dict, eager_too: bool = True) -> list[dict]:
    """Batch-1 decode against the bytes roofline: every step reads all weights and the request's KV."""
    rows = []
    for graphs in (True, False) if eager_too else (True,):
        r = run_engine(SWAAConfig(), 1, 8192, 128, max_len=8192 + 136, cuda_graphs=graphs)
        kv_bytes = 36 * 2 * HKV * D * 2 * (8192 + 64)
        r.update(config="FA batch-1 decode" + ("" if graphs else " (eager, no CUDA graphs)"),
                 roofline_ms=1e3 * (r["weight_bytes"] + kv_bytes) / (ceil["copy_tbps"] * 1e12))
        r["ratio_to_roofline"] = r["tpot_mean_ms"] / r["roofline_ms"]
        rows.append(r)
        print(json.dumps(r), flush=True)
    return rows


def bench_capacity(L: int = 131072) -> list[dict]:
    """How many L-token sequences fit at once: the engine's own cache manager over a budget of 90 % of the
    memory left after the weights, with the cache tensors really allocated."""
    from swaa_engine.config import CacheConfig, EngineConfig, SchedulerConfig
    from swaa_engine.engine import LLMEngine
    from swaa_engine.sampling_params import SamplingParams
    from swaa_engine.sequence import Sequence

    from swaa_engine.kv_cache.manager import KVShape, plan_pools

    rows, budget = [], None
    kv = KVShape(HKV, D, 2)
    for name, swaa in paper_configs().items():
        specs = swaa.layer_specs(36)
        if budget is None:  # FA comes first: 90 % of what the weights leave free, then the same bytes for all
            cache = CacheConfig(block_size=128, budget_fraction=0.9)
            max_seqs = 100_000
        else:
            # rings are sized for max_num_seqs: pick the count where rings and blocks run out together
            unit = plan_pools(specs, kv, 128, budget, 1)
            per_seq = unit.ring_bytes + -(-L // 128) * unit.block_bytes
            max_seqs = max(1, budget // per_seq)
            cache = CacheConfig(block_size=128, budget_bytes=budget)
        cfg = EngineConfig(model=None, swaa=swaa, dtype="bfloat16", device="cuda", attention_backend="flash",
                           random_weights=True, max_model_len=L + 8, scheduler=SchedulerConfig(max_num_seqs=max_seqs),
                           cache=cache)
        engine = LLMEngine(cfg, hf_config=qwen3_4b_config(L + 8))
        if budget is None:
            budget = engine.pool_plan.num_blocks * engine.pool_plan.block_bytes
        count = 0
        while True:
            seq = Sequence(f"s{count}", [0] * L, SamplingParams())
            if not engine.cache.can_allocate(seq, L):
                break
            engine.cache.allocate(seq, L)
            count += 1
        kv_gb = sum(k.numel() * k.element_size() * 2 for k, _ in engine.runner.caches) / 1e9
        rows.append(dict(config=name, seq_len=L, max_sequences=count, kv_cache_gb=kv_gb, budget_gb=budget / 1e9))
        print(rows[-1], flush=True)
        del engine
        gc.collect()
        torch.cuda.empty_cache()
    fa = rows[0]["max_sequences"]
    for r in rows:
        r["vs_fa"] = r["max_sequences"] / fa if fa else float("inf")
    return rows


def bench_peer(n: int = 64, l_in: int = 1024, l_out: int = 128) -> list[dict]:
    from transformers import AutoModelForCausalLM

    rows = []
    for name in ("FA", "FA-decode + 1/2"):
        r = run_engine(paper_configs()[name], n, l_in, l_out, max_len=l_in + l_out + 8)
        r.update(system="swaa-serve engine (flash)", config=name)
        rows.append(r)
        print(json.dumps(r), flush=True)
    cfg = qwen3_4b_config(l_in + l_out + 8)
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_config(cfg, dtype=torch.bfloat16, attn_implementation="sdpa").cuda().eval()
    rng = random.Random(0)
    ids = torch.tensor([[rng.randrange(151936) for _ in range(l_in)] for _ in range(n)], device="cuda")
    with torch.no_grad():
        model.generate(ids[:2, :128], max_new_tokens=4, min_new_tokens=4, do_sample=False)  # warm-up
        torch.cuda.synchronize()
        t0 = time.perf_counter()
        out = model.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=l_out, min_new_tokens=l_out,
                             do_sample=False)
        torch.cuda.synchronize()
    dt = time.perf_counter() - t0
    assert out.shape[1] == l_in + l_out
    rows.append(dict(system="transformers generate (sdpa)", config="FA", n=n, l_in=l_in, l_out=l_out, duration_s=dt,
                     out_tok_s=n * l_out / dt))
    print(json.dumps(rows[-1]), flush=True)
    peer = rows[-1]["out_tok_s"]
    for r in rows:
        r["vs_transformers"] = r["out_tok_s"] / peer
    return rows


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", required=True)
    ap.add_argument("--only", default="kernels,paper,capacity,peer")
    ap.add_argument("--paper-lengths", default="32768,131072")
    ap.add_argument("--paper-n", default="32768:8,131072:2", help="requests per input length")
    ap.add_argument("--paper-out", type=int, default=512)
    ap.add_argument("--scale-runs", default=",".join(f"{c}:{w}" for w in ("16x131072", "100x32768") for c in paper_configs()),
                    help="CONFIG:NxL,... (configs as in paper_configs; split them across calls to fit a time limit)")
    args = ap.parse_args()
    os.makedirs(args.out, exist_ok=True)
    info = env_info()
    ceil = ceilings()
    print("ceilings", ceil, flush=True)
    sizes = {int(k): int(v) for k, v in (x.split(":") for x in args.paper_n.split(","))}
    parts = {
        "kernels": lambda: bench_kernels(ceil),
        "paper": lambda: bench_paper([int(x) for x in args.paper_lengths.split(",")], sizes, args.paper_out, ceil),
        "decode": lambda: bench_decode(ceil, eager_too=False),
        "capacity": bench_capacity,
        "peer": bench_peer,
        "scale": lambda: bench_scale([(c, int(w.split("x")[0]), int(w.split("x")[1]))
                                      for c, w in (x.rsplit(":", 1) for x in args.scale_runs.split(","))], args.paper_out, ceil),
    }
    for part in args.only.split(","):
        t0 = time.perf_counter()
        rows = parts[part]()
        tag = os.environ.get("BENCH_TAG", "")
        with open(os.path.join(args.out, f"gpu_{part}{tag}.json"), "w") as f:
            json.dump(dict(env=info, ceilings=ceil, rows=rows, wall_s=time.perf_counter() - t0), f, indent=1)
        print(f"{part}: {time.perf_counter() - t0:.0f} s", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
