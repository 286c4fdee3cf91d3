"""Throughput and TTFT of the gRPC service with 1 vs N engine replicas (Ray actors, one GPU each) under the same load.

    python bench/replicas_bench.py run --replicas 1 --out bench/results/replicas_1.json
    python bench/replicas_bench.py run --replicas 2 --out bench/results/replicas_2.json
    python bench/replicas_bench.py report bench/results/replicas_*.json      # table (Markdown) + plot

Each run starts the whole service in this process (gRPC front end + Ray replicas) on a Qwen3-4B-shaped model with
random bf16 weights, warms it up, then submits all requests at once through `swaa load` (the SDK over loopback
gRPC), so the numbers include the front end and the router. ``--replicas 0`` runs one engine in-process, no Ray.
"""

from __future__ import annotations

import argparse
import asyncio
import datetime
import json
import os
import sys
import tempfile
import threading
import time


def model_folder(max_len: int, layers: int) -> str:
    sys.path.insert(0, os.path.dirname(__file__))
    from gpu_bench import qwen3_4b_config

    folder = tempfile.mkdtemp(prefix="qwen3-4b-random-")
    cfg = qwen3_4b_config(max_len)
    if layers != cfg.num_hidden_layers:  # 36 = Qwen3-4B; fewer only for smoke runs
        cfg.num_hidden_layers, cfg.layer_types = layers, cfg.layer_types[:layers]
    cfg.save_pretrained(folder)
    return folder


def run(args) -> dict:
    from swaa_engine.config import CacheConfig, EngineConfig, SchedulerConfig
    from swaa_engine.swaa import SWAAConfig
    from swaa_server.app import ServerConfig, serve
    from swaa_server.loadgen import LoadConfig, run_load
    from swaa_server.replicas import ReplicaConfig

    max_len = args.prompt + args.max_tokens + 16
    cfg = EngineConfig(model=model_folder(max_len, args.layers), random_weights=True, dtype="bfloat16", max_model_len=max_len,
                       attention_backend=args.backend,
                       swaa=SWAAConfig(window=2048, sinks=100, fa_decode=True, fa_layers="odd"),
                       scheduler=SchedulerConfig(max_num_seqs=args.max_num_seqs, max_num_batched_tokens=8192,
                                                 max_waiting=4 * args.requests),
                       cache=CacheConfig(block_size=128, budget_fraction=0.8))
    import torch

    gpus = 1 if torch.cuda.is_available() else 0
    rc = ReplicaConfig(replicas=args.replicas, gpus_per_replica=gpus, cpus_per_replica=args.cpus_per_replica,
                       object_store_bytes=None if gpus else 200 << 20) if args.replicas else None
    loop = asyncio.new_event_loop()
    ready, stop = asyncio.Event(), asyncio.Event()
    t_start = time.perf_counter()
    th = threading.Thread(target=loop.run_until_complete,
                          args=(serve(cfg, ServerConfig(port=0, grace_s=5, metrics_port=None), ready, stop, replicas=rc),),
                          daemon=True)
    th.start()
    while not ready.is_set():
        if not th.is_alive():
            raise SystemExit("the service failed to start")
        time.sleep(0.2)
    front = ready.engine
    while rc and not all(front.ready):
        time.sleep(0.2)
    startup = time.perf_counter() - t_start
    target = f"127.0.0.1:{ready.port}"
    # warm-up: every replica compiles its kernel shapes outside the timing
    warm = LoadConfig(target=target, concurrency=4 * max(1, args.replicas), requests=8 * max(1, args.replicas),
                      prompt_tokens=(args.prompt, args.prompt), max_tokens=(8, 8), cancel_fraction=0.0, seed=1)
    asyncio.run(run_load(warm, progress=False))
    load = LoadConfig(target=target, concurrency=args.requests, requests=args.requests, duration_s=3600,
                      prompt_tokens=(args.prompt, args.prompt), max_tokens=(args.max_tokens, args.max_tokens),
                      cancel_fraction=0.0, seed=0)
    report = asyncio.run(run_load(load, progress=True))
    loop.call_soon_threadsafe(stop.set)
    th.join(60)

    out = dict(replicas=args.replicas, requests=args.requests, prompt=args.prompt, max_tokens=args.max_tokens,
               backend=args.backend, startup_s=startup, wall_s=report.wall_s, statuses=report.statuses,
               output_tokens=report.output_tokens, output_tok_s=report.output_tok_per_s, ttft_s=report.ttft_s,
               itl_s=report.itl_s, card=torch.cuda.get_device_name() if torch.cuda.is_available() else "cpu",
               gpus=torch.cuda.device_count(), torch=torch.__version__,
               date=datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
               command="python " + " ".join(sys.argv))
    with open(args.out, "w") as f:
        json.dump(out, f, indent=1)
    print(json.dumps(out, indent=1))
    return out


def report(paths: list[str], plot: str | None) -> str:
    rows = sorted((json.load(open(p)) for p in paths), key=lambda r: r["replicas"])
    base = next((r for r in rows if r["replicas"] == 1), rows[0])
    lines = ["| replicas | requests | output tok/s | × 1 replica | TTFT p50 | TTFT p90 | TTFT p99 | inter-token p50 | wall |",
             "|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        label = "in-process (no Ray)" if r["replicas"] == 0 else str(r["replicas"])
        t, i = r["ttft_s"], r["itl_s"]
        lines.append(f"| {label} | {r['requests']} | {r['output_tok_s']:,.0f} | {r['output_tok_s'] / base['output_tok_s']:.2f} | "
                     f"{t['p50']:.2f} s | {t['p90']:.2f} s | {t['p99']:.2f} s | {1e3 * i['p50']:.1f} ms | {r['wall_s']:.1f} s |")
    md = "\n".join(lines)
    if plot:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        fig, ax = plt.subplots(1, 2, figsize=(9, 3.5))
        names = ["in-proc" if r["replicas"] == 0 else f"{r['replicas']} repl." for r in rows]
        ax[0].bar(names, [r["output_tok_s"] for r in rows])
        ax[0].set_ylabel("output tokens / s")
        ax[1].bar(names, [r["ttft_s"]["p50"] for r in rows], label="p50")
        ax[1].scatter(names, [r["ttft_s"]["p99"] for r in rows], color="k", label="p99", zorder=3)
        ax[1].set_ylabel("TTFT (s)")
        ax[1].legend()
        fig.suptitle(f"{rows[0]['requests']} requests × {rows[0]['prompt']} in / {rows[0]['max_tokens']} out, {rows[0]['card']}")
        fig.tight_layout()
        fig.savefig(plot, dpi=110)
    return md


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="cmd", required=True)
    r = sub.add_parser("run")
    r.add_argument("--replicas", type=int, default=1)
    r.add_argument("--requests", type=int, default=128)
    r.add_argument("--prompt", type=int, default=4096)
    r.add_argument("--max-tokens", type=int, default=256)
    r.add_argument("--max-num-seqs", type=int, default=128)
    r.add_argument("--backend", default="auto")
    r.add_argument("--layers", type=int, default=36, help="36 = Qwen3-4B (fewer: smoke runs only)")
    r.add_argument("--cpus-per-replica", type=float, default=1.0)
    r.add_argument("--out", required=True)
    rp = sub.add_parser("report")
    rp.add_argument("paths", nargs="+")
    rp.add_argument("--plot", default=None)
    a = p.parse_args()
    if a.cmd == "run":
        run(a)
    else:
        print(report(a.paths, a.plot))
    return 0


if __name__ == "__main__":
    sys.exit(main())
