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
import socket
import sys
import threading
import time


class StandInEngine:
    """The slice of LLMEngine that AsyncEngine uses; one token per running request per step."""

    def __init__(self, step_s: float):
        from swaa_engine.outputs import StreamChunk, Timings, Usage
        from swaa_engine.sequence import FinishReason

        self.step_s, self._lock, self.left = step_s, threading.RLock(), {}
        self.StreamChunk, self.Timings, self.Usage, self.FinishReason = StreamChunk, Timings, Usage, FinishReason

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


def run_server(port: int, step_s: float, coalesce: bool, ready) -> None:
    import grpc

    import swaa_engine.async_engine as ae
    from swaa_client._pb.swaa.v1 import generation_pb2_grpc as pb_grpc
    from swaa_engine.async_engine import AsyncEngine
    from swaa_server.frontend import LocalFrontend
    from swaa_server.servicer import GenerationServicer

    if not coalesce:
        ae.take_ready = lambda first, q: (first, None)

    async def main():
        server = grpc.aio.server()
        pb_grpc.add_GenerationServicer_to_server(GenerationServicer(LocalFrontend(AsyncEngine(StandInEngine(step_s)))), server)
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
    p.add_argument("--json", default=None)
    a = p.parse_args()
    ctx = mp.get_context("spawn")
    results = {}
    for coalesce in (False, True):
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        ready = ctx.Event()
        proc = ctx.Process(target=run_server, args=(port, a.step_ms / 1e3, coalesce, ready), daemon=True)
        proc.start()
        ready.wait(60)
        try:
            r = asyncio.run(drive(f"127.0.0.1:{port}", a.streams, a.tokens))
        finally:
            proc.terminate()
            proc.join(10)
        # the stand-in's own ceiling: one token per running request per step
        r["engine_ceiling_tok_per_s"] = round(a.streams / (a.step_ms / 1e3))
        results["coalesced" if coalesce else "one token per message"] = r
        print(("coalesced: " if coalesce else "per token: ") + json.dumps(r), flush=True)
    out = dict(streams=a.streams, tokens=a.tokens, step_ms=a.step_ms, results=results, command="python " + " ".join(sys.argv))
    if a.json:
        with open(a.json, "w") as f:
            json.dump(out, f, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
