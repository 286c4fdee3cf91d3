"""The peer load through the gRPC service against the same engine in process (issue 16's target: through gRPC
≥ 0.9× the in-process engine's throughput).

    python bench/grpc_peer.py --device cuda [--n 64 --l-in 1024 --l-out 128] [--unary] [--out FILE]
    python bench/grpc_peer.py --device cpu --tiny --n 16 --l-in 64 --l-out 16       # a CPU smoke run of the path

Three processes, so that no arm's Python work competes with another's for the interpreter: the in-process arm
(``inproc``: the engine stepped directly, as `gpu_bench.py --only peer` does), then the served arm (``serve``: the
same engine behind `swaa serve`'s own `app.serve`, on a free loopback port), whose load comes from a third process
(``client``: the asyncio SDK, every request at once, token-id prompts, greedy, ignore_eos; streamed unless
``--unary``). One engine per process (the GPU host's rule for benchmarks). Both arms warm up first (the served one
through `serve`'s warm-up plus two requests from the client) and time from the first request sent to the last token.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import subprocess
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path[:0] = [ROOT, os.path.join(ROOT, "bench")]


def engine_config(args):
    """The model of the arm: the Qwen3-4B-shaped random bf16 model (gpu_bench's) or, with --tiny, tests' tiny Qwen3."""
    from swaa_engine.config import CacheConfig, EngineConfig, SchedulerConfig
    from swaa_engine.swaa import SWAAConfig

    max_len = args.l_in + args.l_out + 8
    sched = SchedulerConfig(max_num_seqs=max(args.n, 1), max_num_batched_tokens=args.chunk, max_waiting=2 * args.n + 4)
    if args.tiny:
        import tempfile

        from tests.models import save_tiny_qwen3

        folder = tempfile.mkdtemp(prefix="grpc-peer-")
        save_tiny_qwen3(folder)
        return EngineConfig(model=folder, swaa=SWAAConfig(), device=args.device, max_model_len=max_len,
                            scheduler=sched, cache=CacheConfig(block_size=16, budget_bytes=256 << 20)), None
    from gpu_bench import qwen3_4b_config

    cfg = EngineConfig(model=None, swaa=SWAAConfig(), dtype="bfloat16", device=args.device, attention_backend=args.backend,
                       random_weights=True, max_model_len=max_len, cuda_graphs=args.device == "cuda", scheduler=sched,
                       cache=CacheConfig(block_size=128, budget_fraction=0.9))
    return cfg, qwen3_4b_config(max_len)


def prompts(args, vocab: int) -> list[list[int]]:
    rng = random.Random(args.seed)
    return [[rng.randrange(vocab) for _ in range(args.l_in)] for _ in range(args.n)]


def build_engine(args):
    from swaa_engine.engine import LLMEngine

    cfg, hf = engine_config(args)
    return LLMEngine(cfg, hf_config=hf) if hf is not None else LLMEngine(cfg)


def sync(device: str) -> None:
    if device == "cuda":
        import torch

        torch.cuda.synchronize()


def run_inproc(args) -> dict:
    from swaa_engine.sampling_params import SamplingParams

    engine = build_engine(args)
    engine.warmup()
    ps = prompts(args, engine.dims.vocab_size)
    for p in ps[:2]:  # the same warm-up requests as the client sends the served arm
        engine.add_request(p[: min(len(p), 128)], SamplingParams(max_tokens=4, ignore_eos=True))
    while engine.has_work():
        engine.step()
    sync(args.device)
    params = SamplingParams(max_tokens=args.l_out, ignore_eos=True)
    t0 = time.perf_counter()
    for p in ps:
        engine.add_request(p, params)
    tokens = 0
    while engine.has_work():
        tokens += sum(len(c.token_ids) for c in engine.step())
    dt = time.perf_counter() - t0
    assert tokens == args.n * args.l_out, (tokens, args.n * args.l_out)
    return dict(arm="in-process engine", duration_s=dt, tokens=tokens, out_tok_s=tokens / dt)


async def client_load(args) -> dict:
    from swaa_client import AsyncClient

    async with AsyncClient(args.target, timeout=3600) as c:
        vocab = (await c.model_info()).vocab_size
        ps = prompts(args, vocab)

        async def one(p: list[int], max_tokens: int) -> int:
            if args.unary:
                return len((await c.generate(p, max_tokens=max_tokens, ignore_eos=True)).token_ids)
            n = 0
            async for chunk in c.stream(p, max_tokens=max_tokens, ignore_eos=True):
                n += len(chunk.token_ids)
            return n

        await asyncio.gather(*(one(p[: min(len(p), 128)], 4) for p in ps[:2]))  # warm-up, as the in-process arm
        t0 = time.perf_counter()
        counts = await asyncio.gather(*(one(p, args.l_out) for p in ps))
        dt = time.perf_counter() - t0
    tokens = sum(counts)
    assert tokens == args.n * args.l_out, (tokens, args.n * args.l_out)
    return dict(arm="through gRPC (" + ("unary" if args.unary else "streamed") + ", client in its own process)",
                duration_s=dt, tokens=tokens, out_tok_s=tokens / dt)


def run_served(args) -> dict:
    import threading

    from swaa_server.app import serve
    from swaa_server.config import ServerConfig

    engine = build_engine(args)
    loop = asyncio.new_event_loop()
    ready, stop = asyncio.Event(), asyncio.Event()
    server = threading.Thread(target=loop.run_until_complete, daemon=True,
                              args=(serve(engine.config, ServerConfig(port=0, grace_s=2), ready, stop, engine=engine),))
    server.start()
    while not ready.is_set():
        if not server.is_alive():
            raise RuntimeError("the server stopped before it was ready")
        time.sleep(0.05)
    try:
        cmd = [sys.executable, os.path.abspath(__file__), "client", "--target", f"127.0.0.1:{ready.port}"] + passthrough(args)
        out = subprocess.run(cmd, check=True, capture_output=True, text=True)
        return json.loads(out.stdout.strip().splitlines()[-1])
    finally:
        loop.call_soon_threadsafe(stop.set)
        server.join(30)


def passthrough(args) -> list[str]:
    flags = ["--device", args.device, "--n", str(args.n), "--l-in", str(args.l_in), "--l-out", str(args.l_out),
             "--chunk", str(args.chunk), "--seed", str(args.seed), "--backend", args.backend]
    return flags + (["--tiny"] if args.tiny else []) + (["--unary"] if args.unary else [])


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("mode", nargs="?", default="all", choices=("all", "inproc", "serve", "client"))
    ap.add_argument("--device", default="cuda")
    ap.add_argument("--backend", default="auto")
    ap.add_argument("--n", type=int, default=64)
    ap.add_argument("--l-in", type=int, default=1024)
    ap.add_argument("--l-out", type=int, default=128)
    ap.add_argument("--chunk", type=int, default=8192, help="max_num_batched_tokens")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--tiny", action="store_true", help="tests' tiny random Qwen3 instead of the Qwen3-4B shape")
    ap.add_argument("--unary", action="store_true", help="GenerateOnce instead of the streamed Generate")
    ap.add_argument("--target", help="client mode: the server's host:port")
    ap.add_argument("--out", default=None)
    args = ap.parse_args()
    if args.mode == "client":
        print(json.dumps(asyncio.run(client_load(args))), flush=True)
        return 0
    if args.mode in ("inproc", "serve"):
        print(json.dumps(run_inproc(args) if args.mode == "inproc" else run_served(args)), flush=True)
        return 0
    rows = []
    for mode in ("inproc", "serve"):  # each arm in its own process: one engine per process
        out = subprocess.run([sys.executable, os.path.abspath(__file__), mode] + passthrough(args), check=True,
                             capture_output=True, text=True)
        rows.append(json.loads(out.stdout.strip().splitlines()[-1]))
        print(json.dumps(rows[-1]), flush=True)
    ratio = rows[1]["out_tok_s"] / rows[0]["out_tok_s"]
    summary = dict(device=args.device, model="tiny random Qwen3" if args.tiny else "Qwen3-4B-shaped random bf16",
                   n=args.n, l_in=args.l_in, l_out=args.l_out, grpc_vs_inproc=ratio, command=" ".join(sys.argv),
                   date=time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()), load_avg_1m=os.getloadavg()[0])
    print(f"{args.n} × {args.l_in} → {args.l_out}: in-process {rows[0]['out_tok_s']:.0f} tok/s, through gRPC "
          f"{rows[1]['out_tok_s']:.0f} tok/s ({ratio:.3f}×; target ≥ 0.9×)", flush=True)
    if args.out:
        with open(args.out, "w") as f:
            json.dump(dict(rows=rows, summary=summary), f, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
