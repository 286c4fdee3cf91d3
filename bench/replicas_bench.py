"""Throughput and TTFT of the gRPC service with 1 vs N engine replicas (Ray actors, one GPU each) under the same load.

    python bench/replicas_bench.py run --replicas 1 --out bench/results/replicas_1.json
    python bench/replicas_bench.py run --replicas 2 --out bench/results/replicas_2.json
    python bench/replicas_bench.py report bench/results/replicas_*.json      # tables (Markdown) + plot
    bash bench/replicas_run.sh                                               # all of it, in-process / 1 / 2 + profile

Each run starts the service in this process (gRPC front end + Ray replicas) on a Qwen3-4B-shaped model with
random bf16 weights (``--tiny``: the tests' tiny Qwen3, for CPU smoke runs). The load generator (`swaa load`: the SDK
over loopback gRPC) runs in its own spawned process, so its Python work does not share the front end's GIL or event
loop: it warms the replicas up, waits for the go, then submits all requests at once. The numbers include the front
end and the router. ``--replicas 0`` runs one engine in-process, no Ray.

During the timed load this process reads each replica's engine step counters (``swaa_engine_steps_total``,
``swaa_engine_step_seconds_total``) from the front end's /metrics: before, every ``--sample-s``, and after. The JSON
gets per replica the steps, seconds inside steps, mean step time and the share of the load's wall time spent inside
steps (``replica_steps``), and the samples (``step_samples``). ``--profile-out DIR`` records one replica's process
with py-spy for the whole load (speedscope JSON in DIR, a per-thread self-time summary in the JSON and the report).
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


def model_folder(max_len: int, layers: int, tiny: bool = False) -> str:
    sys.path.insert(0, os.path.dirname(__file__))
    from gpu_bench import qwen3_4b_config

    folder = tempfile.mkdtemp(prefix="qwen3-4b-random-")
    if tiny:  # CPU smoke runs: the tests' tiny Qwen3 shape (hidden 64, vocab 384), random weights
        from tests.models import tiny_qwen3_config

        cfg = tiny_qwen3_config(max_position_embeddings=max_len)
    else:
        cfg = qwen3_4b_config(max_len)
    if layers != cfg.num_hidden_layers:  # 36 = Qwen3-4B; fewer only for smoke runs
        cfg.num_hidden_layers, cfg.layer_types = layers, cfg.layer_types[:layers]
    cfg.save_pretrained(folder)
    return folder


def scrape(url: str) -> dict[str, tuple[int, float]]:
    """{replica: (engine steps, step seconds)} from the front end's /metrics."""
    import urllib.request

    from swaa_server.telemetry import step_totals

    with urllib.request.urlopen(url, timeout=10) as r:
        return step_totals(r.read().decode())


def step_summary(before: dict, after: dict, wall_s: float) -> dict[str, dict]:
    """Per replica, what its engine did between two scrapes: steps, seconds inside steps, mean step time, and the
    share of the load's wall time spent inside steps (near 1: the replica's own step is the limit; well below 1: it
    waited for work, i.e. the front end, Ray or the client starved it)."""
    out = {}
    for r in sorted(set(before) | set(after), key=int):
        if r not in after:
            out[r] = dict(note="not ready at the end of the run")
            continue
        (s0, t0), (s1, t1) = before.get(r, (0, 0.0)), after[r]
        if s1 < s0:  # the counters restarted with the process: the replica died during the run
            out[r] = dict(note="counters went back (the replica restarted during the run)")
            continue
        steps, secs = s1 - s0, t1 - t0
        out[r] = dict(steps=steps, step_s=secs, mean_step_ms=1e3 * secs / steps if steps else None,
                      step_share=secs / wall_s if wall_s > 0 else None)
    return out


def load_process(conn, warm: dict, load: dict) -> None:
    """The load generator's own process (spawned): warm-up, then the timed load once the parent says go. Its
    asyncio loop and the SDK's work on every chunk stay off the front end's process."""
    from dataclasses import asdict

    from swaa_server.loadgen import LoadConfig, run_load

    try:
        asyncio.run(run_load(LoadConfig(**warm), progress=False))
        conn.send("warm")
        if conn.recv() != "go":
            return
        conn.send(asdict(asyncio.run(run_load(LoadConfig(**load), progress=True))))
    except BaseException as e:  # the parent reports it
        conn.send(f"load process failed: {type(e).__name__}: {e}")
        raise


def _recv(conn, proc, timeout: float):
    """The load process's next message; a dead process or an error string ends the run."""
    end = time.monotonic() + timeout
    while not conn.poll(0.5):
        if not proc.is_alive() or time.monotonic() > end:
            raise SystemExit(f"the load process {'died' if not proc.is_alive() else 'timed out'}")
    msg = conn.recv()
    if isinstance(msg, str) and msg.startswith("load process failed"):
        raise SystemExit(msg)
    return msg


def find_py_spy() -> str | None:
    """$PY_SPY, then PATH, then beside this Python, then bin/ beside a sys.path folder (a wheel installed with
    ``pip install --target /tmp/site``, as on the offline GPU host, puts it in /tmp/site/bin)."""
    import shutil

    places = [os.environ.get("PY_SPY"), shutil.which("py-spy"), os.path.join(os.path.dirname(sys.executable), "py-spy")]
    places += [os.path.join(p, "bin", "py-spy") for p in sys.path if p]
    return next((p for p in places if p and os.path.isfile(p) and os.access(p, os.X_OK)), None)


def start_py_spy(pid: int, path: str):
    """py-spy sampling ``pid`` until SIGINT, written as speedscope JSON (one profile per thread), without pausing
    the process (--nonblocking: a paused replica would distort the run). None, with a reason, when py-spy is absent."""
    import subprocess

    exe = find_py_spy()
    if exe is None:
        return None, "py-spy not found (pip install py-spy: the test extra; or set PY_SPY)"
    proc = subprocess.Popen([exe, "record", "--pid", str(pid), "--output", path, "--format", "speedscope",
                             "--threads", "--nonblocking", "--rate", "100"],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    return proc, None


def stop_py_spy(proc) -> str:
    import signal

    proc.send_signal(signal.SIGINT)  # py-spy writes its file on SIGINT
    try:
        out, _ = proc.communicate(timeout=60)
    except Exception:
        proc.kill()
        out, _ = proc.communicate()
    return out[-2000:]


def profile_summary(path: str, top: int = 8) -> list[dict]:
    """A py-spy speedscope file → per thread (busiest first): seconds sampled active (py-spy leaves idle samples out)
    and the functions holding the most of them as the innermost frame ("self" time), as "name (file:line)"."""
    with open(path) as f:
        d = json.load(f)
    frames = d["shared"]["frames"]
    out = []
    for prof in d["profiles"]:
        own: dict[int, float] = {}
        for stack, w in zip(prof["samples"], prof["weights"]):  # each stack is outermost frame first
            if stack:
                own[stack[-1]] = own.get(stack[-1], 0.0) + w
        best = sorted(own.items(), key=lambda kv: -kv[1])[:top]
        out.append(dict(thread=prof["name"], active_s=round(sum(prof["weights"]), 3),
                        self_s=[[f"{frames[i]['name']} ({os.path.basename(frames[i]['file'] or '?')}:{frames[i]['line']})",
                                 round(w, 3)] for i, w in best]))
    return sorted(out, key=lambda t: -t["active_s"])


def run(args) -> dict:
    import multiprocessing

    from swaa_engine.config import CacheConfig, EngineConfig, SchedulerConfig
    from swaa_engine.swaa import SWAAConfig
    from swaa_server.app import ServerConfig, serve
    from swaa_server.replicas import ReplicaConfig

    max_len = args.prompt + args.max_tokens + 16
    cfg = EngineConfig(model=model_folder(max_len, args.layers, args.tiny), random_weights=True, dtype=args.dtype, max_model_len=max_len,
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
                          args=(serve(cfg, ServerConfig(port=0, grace_s=5, metrics_port=0), ready, stop, replicas=rc),),
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
    url = f"http://{ready.metrics_host}:{ready.metrics_port}/metrics"
    settle = 2 * rc.poll_s + 0.2 if rc else 0.0  # the router republishes replica stats once per poll
    # warm-up: every replica compiles its kernel shapes outside the timing
    warm = dict(target=target, concurrency=4 * max(1, args.replicas), requests=8 * max(1, args.replicas),
                prompt_tokens=(args.prompt, args.prompt), max_tokens=(8, 8), cancel_fraction=0.0, seed=1)
    load = dict(target=target, concurrency=args.requests, requests=args.requests, duration_s=3600,
                prompt_tokens=(args.prompt, args.prompt), max_tokens=(args.max_tokens, args.max_tokens),
                cancel_fraction=0.0, seed=0)
    ctx = multiprocessing.get_context("spawn")  # a fresh interpreter: no copy of the service's threads or Ray state
    conn, child = ctx.Pipe()
    proc = ctx.Process(target=load_process, args=(child, warm, load), daemon=True, name="replicas-bench-load")
    proc.start()
    _recv(conn, proc, 1800)  # "warm"
    time.sleep(settle)
    before = scrape(url)
    spy, profile = None, None
    if args.profile_out:
        pid = os.getpid() if not rc else front._pid[args.profile_replica]
        path = os.path.join(args.profile_out, f"replicas_{args.replicas}_replica{args.profile_replica}.speedscope.json")
        spy, why = start_py_spy(pid, path)
        profile = dict(tool="py-spy", pid=pid, replica=args.profile_replica, path=path, error=why)
    conn.send("go")
    t0 = time.perf_counter()
    samples = []  # the step counters read during the run, every --sample-s
    while not conn.poll(args.sample_s):
        if not proc.is_alive():
            raise SystemExit("the load process died")
        samples.append(dict(t=round(time.perf_counter() - t0, 3), steps=scrape(url)))
    rep = _recv(conn, proc, 60)
    if spy is not None:
        profile["py_spy_output"] = stop_py_spy(spy)
        profile["written"] = os.path.exists(profile["path"])
        profile["seconds"] = round(time.perf_counter() - t0, 3)
        if profile["written"]:
            profile["threads"] = profile_summary(profile["path"])
    proc.join(30)
    time.sleep(settle)
    after = scrape(url)
    loop.call_soon_threadsafe(stop.set)
    th.join(60)

    out = dict(replicas=args.replicas, requests=args.requests, prompt=args.prompt, max_tokens=args.max_tokens,
               backend=args.backend, startup_s=startup, wall_s=rep["wall_s"], statuses=rep["statuses"],
               output_tokens=rep["output_tokens"], output_tok_s=rep["output_tok_per_s"], ttft_s=rep["ttft_s"],
               itl_s=rep["itl_s"], load_generator="own process (multiprocessing spawn)",
               replica_steps=step_summary(before, after, rep["wall_s"]), step_samples=samples, profile=profile,
               card=torch.cuda.get_device_name() if torch.cuda.is_available() else "cpu",
               gpus=torch.cuda.device_count(), torch=torch.__version__, cpus=os.cpu_count(), loadavg=os.getloadavg(),
               date=datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
               command="python " + " ".join(sys.argv))
    with open(args.out, "w") as f:
        json.dump(out, f, indent=1)
    print(json.dumps({k: v for k, v in out.items() if k not in ("step_samples", "profile")}, indent=1))
    steps = ", ".join(f"replica {r}: {st['steps']} steps, mean {st['mean_step_ms']:.1f} ms, {100 * st['step_share']:.0f} % of wall"
                      if st.get("mean_step_ms") is not None else f"replica {r}: {st.get('note', 'no steps')}"
                      for r, st in out["replica_steps"].items())
    print(f"replicas {args.replicas}: {out['output_tok_s']:,.0f} output tok/s in {out['wall_s']:.1f} s; {steps}")
    if profile:
        print(f"profile: {profile['path']} written={profile.get('written')} error={profile.get('error')}")
    return out


def step_rows(rows: list[dict]) -> list[str]:
    """The per-replica step table's rows (runs without step counters, from before they were read, are skipped)."""
    out = []
    for r in rows:
        label = "in-process (no Ray)" if r["replicas"] == 0 else str(r["replicas"])
        for rep, st in (r.get("replica_steps") or {}).items():
            if "steps" not in st:
                out.append(f"| {label} | {rep} | – | – | – | {st.get('note', '')} |")
                continue
            mean = f"{st['mean_step_ms']:.1f} ms" if st["mean_step_ms"] is not None else "–"
            share = f"{100 * st['step_share']:.0f} %" if st["step_share"] is not None else "–"
            out.append(f"| {label} | {rep} | {st['steps']:,} | {st['step_s']:.2f} s | {mean} | {share} |")
    return out


def profile_lines(profile: dict | None, threads: int = 4, funcs: int = 4) -> list[str]:
    """The profiled replica's busiest threads and their top self-time functions, as Markdown lines."""
    if not profile:
        return []
    head = f"py-spy on replica {profile['replica']} (pid {profile['pid']}), {profile.get('seconds', 0):.1f} s: `{profile['path']}`"
    if profile.get("error") or not profile.get("threads"):
        return ["", head, "", f"no profile: {profile.get('error') or profile.get('py_spy_output', '')[-300:]}"]
    out = ["", head + " (active seconds per thread; self time = innermost frame)", "",
           "| thread | active | top self time |", "|---|---|---|"]
    for t in profile["threads"][:threads]:
        top = "; ".join(f"{name} {sec:.2f} s" for name, sec in t["self_s"][:funcs])
        out.append(f"| {t['thread']} | {t['active_s']:.2f} s | {top} |")
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
    lines += ["", "Each replica's own engine steps during the timed load (the step counters read from /metrics before and after; "
              "share = seconds inside steps / the load's wall time):", "",
              "| replicas | replica | steps | seconds in steps | mean step | share of wall in steps |", "|---|---|---|---|---|---|"]
    lines += step_rows(rows)
    for r in rows:
        lines += profile_lines(r.get("profile"))
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
    r.add_argument("--tiny", action="store_true", help="the tests' tiny Qwen3 shape instead of Qwen3-4B (CPU smoke runs)")
    r.add_argument("--dtype", default="bfloat16")
    r.add_argument("--sample-s", type=float, default=1.0, help="how often the step counters are read during the run")
    r.add_argument("--profile-out", default=None, help="folder: record one replica with py-spy during the run")
    r.add_argument("--profile-replica", type=int, default=0)
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
