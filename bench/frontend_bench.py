"""How many streamed tokens the gRPC front end delivers per second when the engine costs nothing.

    python bench/frontend_bench.py [--streams 128 --tokens 256 --step-ms 1]

The servicer, AsyncEngine (its stepping thread and per-request queues) and gRPC run as in `swaa serve`. The
engine is a stand-in that "decodes" one token for every running request each step, in ``--step-ms``, so the front end is
the bottleneck. The client runs in a separate process, so it does not compete with the server for the GIL. The
benchmark runs twice: with chunk coalescing (a lagging stream's queued tokens go out as one message) and without.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import multiprocessing as mp
import os
import socket
import sys
import threading
import time


class StandInEngine:
    """The slice of LLMEngine that AsyncEngine uses; one token per running request per step."""

    def __init__(self, step_s: float):
        from swaa_engine.outputs import StreamChunk, Timings, Usage
        from swaa_engine.sequence import FinishReason

        from swaa_engine.config import EngineConfig

        self.step_s, self._lock, self.left = step_s, threading.RLock(), {}
        self.StreamChunk, self.Timings, self.Usage, self.FinishReason = StreamChunk, Timings, Usage, FinishReason
        self.config = EngineConfig()  # AsyncEngine reads its waiting-queue limit from here
        self.prompt_bounds = None  # no tokenizer behind the stand-in: no prompt bounds to check

    def add_request(self, prompt, params, request_id):
        with self._lock:
            self.left[request_id] = [params.max_tokens, params.max_tokens]

    def has_work(self):
        return bool(self.left)

    def _final(self, rid, reason, n):
        return self.StreamChunk(rid, [], "", None, True, reason, usage=self.Usage(1, n), timings=self.Timings(0.0, 0.0, 0.0))

    def step(self):
        time.sleep(self.step_s)
        out = []
        with self._lock:
            for rid, st in list(self.left.items()):
                st[0] -= 1
                if st[0] == 0:
                    del self.left[rid]
                    c = self._final(rid, self.FinishReason.LENGTH, st[1])
                    c.token_ids, c.text = [7], "a"
                    out.append(c)
                else:
                    out.append(self.StreamChunk(rid, [7], "a"))
        return out

    def abort(self, rid):
        with self._lock:
            st = self.left.pop(rid, None)
        return None if st is None else self._final(rid, self.FinishReason.ABORT, st[1] - st[0])


def stand_in_replica(step_s: float, coalesce: bool):
    """An EngineReplica whose engine is the stand-in: the Ray path (submit, per-step output objects, router) is real."""
    import asyncio as aio

    from swaa_engine.async_engine import AsyncEngine
    from swaa_server.frontend import EngineSnapshot
    from swaa_server.replicas import EngineReplica

    class StandInReplica(EngineReplica):
        def __init__(self, config, index):
            if not coalesce:  # this runs in the actor's own process
                import swaa_engine.async_engine as ae

                ae.take_ready = lambda first, q: (first, None)
            self.index, self.engine = index, StandInEngine(step_s)
            self.front = AsyncEngine(self.engine)
            self._outbox, self._tasks = None, {}

        async def load(self):
            await aio.sleep(0)
            return os.getpid(), EngineSnapshot("stand-in", "llama", 4096, None, (), 16, 8,
                                               {"paged": {"used": 0, "total": 1}, "ring": {"used": 0, "total": 0}}, 0, 0, 0)

    return StandInReplica


def run_server(port: int, step_s: float, coalesce: bool, ready, replicas: int = 0) -> None:
    import grpc

    import swaa_engine.async_engine as ae
    import swaa_server.replicas as rp
    from swaa_client._pb.swaa.v1 import generation_pb2_grpc as pb_grpc
    from swaa_engine.async_engine import AsyncEngine
    from swaa_engine.config import EngineConfig
    from swaa_server.frontend import LocalFrontend
    from swaa_server.servicer import GenerationServicer

    if not coalesce:
        ae.take_ready = rp.take_ready = lambda first, q: (first, None)

    async def main():
        if replicas:
            rp._check_config = lambda cfg: None  # no model behind the stand-in
            rp.ReplicaRouter.replica_cls = stand_in_replica(step_s, coalesce)
            front = await rp.ReplicaRouter.start(EngineConfig(), rp.ReplicaConfig(replicas=replicas, ray_num_cpus=replicas,
                                                                                  object_store_bytes=100 << 20))
        else:
            front = LocalFrontend(AsyncEngine(StandInEngine(step_s)))
        server = grpc.aio.server()
        pb_grpc.add_GenerationServicer_to_server(GenerationServicer(front), server)
        server.add_insecure_port(f"127.0.0.1:{port}")
        await server.start()
        ready.set()
        await server.wait_for_termination()

    asyncio.run(main())


async def drive(target: str, streams: int, tokens: int) -> dict:
    from swaa_client import AsyncClient

    msgs = toks = 0
    async with AsyncClient(target, timeout=600) as c:
        async def one():
            nonlocal msgs, toks
            async for ch in c.stream([1] * 8, max_tokens=tokens):
                msgs += 1
                toks += len(ch.token_ids)

        await asyncio.gather(*(one() for _ in range(8)))  # warm-up
        msgs = toks = 0
        t0 = time.perf_counter()
        await asyncio.gather(*(one() for _ in range(streams)))
        wall = time.perf_counter() - t0
    return dict(wall_s=round(wall, 3), tokens=toks, messages=msgs, tok_per_s=round(toks / wall),
                msg_per_s=round(msgs / wall), tokens_per_message=round(toks / msgs, 2))


def main() -> int:
    p = argparse.ArgumentParser()
    p.add_argument("--streams", type=int, default=128)
    p.add_argument("--tokens", type=int, default=256)
    p.add_argument("--step-ms", type=float, default=1.0)
    p.add_argument("--replicas", type=int, default=0, help="0: in-process engine; N: N Ray actors behind the router")
    p.add_argument("--json", default=None)
    a = p.parse_args()
    # the stand-in classes must be importable by name in Ray's worker processes (not only as __main__)
    here = os.path.dirname(os.path.abspath(__file__))
    sys.path.insert(0, here)
    os.environ["PYTHONPATH"] = here + os.pathsep + os.environ.get("PYTHONPATH", "")
    import frontend_bench as module

    ctx = mp.get_context("spawn")
    results = {}
    for coalesce in (False, True):
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        ready = ctx.Event()
        proc = ctx.Process(target=module.run_server, args=(port, a.step_ms / 1e3, coalesce, ready, a.replicas))
        proc.start()
        if not ready.wait(120):
            proc.terminate()
            raise SystemExit("the server did not start")
        try:
            r = asyncio.run(drive(f"127.0.0.1:{port}", a.streams, a.tokens))
        finally:
            proc.terminate()
            proc.join(10)
        # the stand-in's own ceiling: one token per running request per step (per replica)
        r["engine_ceiling_tok_per_s"] = round(a.streams / (a.step_ms / 1e3))
        results["coalesced" if coalesce else "one token per message"] = r
        print(("coalesced: " if coalesce else "per token: ") + json.dumps(r), flush=True)
    out = dict(streams=a.streams, tokens=a.tokens, step_ms=a.step_ms, replicas=a.replicas, results=results, command="python " + " ".join(sys.argv))
    if a.json:
        with open(a.json, "w") as f:
            json.dump(out, f, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
