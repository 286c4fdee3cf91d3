"""`swaa load`: a bounded asyncio load generator for the gRPC API, for loopback targets only.

N concurrent streams draw requests until the request count or the time limit (if any) is reached, whichever
comes first; the report says which. Prompt and
output lengths are mixed, and a fraction of the streams are cancelled at a random point. The report
gives TTFT and inter-token latency percentiles, throughput, counts per status code, and the server's
cache usage before and after.
"""

from __future__ import annotations

import asyncio
import ipaddress
import random
import socket
import time
from dataclasses import asdict, dataclass, field


@dataclass(frozen=True)
class LoadConfig:
    target: str = "127.0.0.1:50051"
    concurrency: int = 8
    requests: int = 100
    duration_s: float | None = None  # None: run until ``requests`` are done
    prompt_tokens: tuple[int, int] = (16, 512)
    max_tokens: tuple[int, int] = (8, 128)
    cancel_fraction: float = 0.1
    seed: int = 0
    token: str | None = field(default=None, repr=False)

    def __post_init__(self):
        if not loopback(self.target):
            raise ValueError(f"target: {self.target} is not a loopback address; `swaa load` only loads local servers")
        for name in ("concurrency", "requests", "duration_s"):
            value = getattr(self, name)
            if value is not None and value <= 0:
                raise ValueError(f"{name}: must be positive, got {value}")
        if not 0 <= self.cancel_fraction <= 1:
            raise ValueError(f"cancel_fraction: must be in [0, 1], got {self.cancel_fraction}")
        for name in ("prompt_tokens", "max_tokens"):
            lo, hi = getattr(self, name)
            if not 1 <= lo <= hi:
                raise ValueError(f"{name}: need 1 <= min <= max, got {lo}..{hi}")


def loopback(target: str) -> bool:
    host = target.rsplit(":", 1)[0].strip("[]")
    try:
        return all(ipaddress.ip_address(info[4][0]).is_loopback
                   for info in socket.getaddrinfo(host, None, proto=socket.IPPROTO_TCP))
    except (socket.gaierror, ValueError):
        return False


def _pct(xs: list[float], p: float) -> float | None:
    if not xs:
        return None
    xs = sorted(xs)
    return xs[min(len(xs) - 1, int(p / 100 * len(xs)))]


@dataclass
class LoadReport:
    config: dict
    wall_s: float
    statuses: dict[str, int]
    completed: int
    cancelled: int
    output_tokens: int
    ttft_s: dict[str, float | None]
    itl_s: dict[str, float | None]
    output_tok_per_s: float
    cache_before: dict
    cache_after: dict
    ended_by: str = ""  # "requests" or "duration"

    def lines(self) -> list[str]:
        def fmt(d):
            return ", ".join(f"{k} {v * 1e3:.1f} ms" if v is not None else f"{k} –" for k, v in d.items())

        why = (f"the duration limit ({self.config['duration_s']:g} s) ended it before {self.config['requests']} requests"
               if self.ended_by == "duration" else f"all {self.config['requests']} requests done")
        return [f"{sum(self.statuses.values())} requests in {self.wall_s:.1f} s ({why}): {self.statuses}",
                f"completed {self.completed}, cancelled by the client {self.cancelled}, output {self.output_tokens} tokens "
                f"({self.output_tok_per_s:.1f} tok/s)",
                f"TTFT: {fmt(self.ttft_s)}", f"inter-token: {fmt(self.itl_s)}",
                f"cache before: {self.cache_before}", f"cache after:  {self.cache_after}"]


async def run_load(cfg: LoadConfig, progress: bool = True) -> LoadReport:
    from tqdm import tqdm

    from swaa_client import AsyncClient, SwaaError

    statuses: dict[str, int] = {}
    ttft, itl = [], []
    counts = {"completed": 0, "cancelled": 0, "tokens": 0}
    issued = 0
    t_end = time.monotonic() + cfg.duration_s if cfg.duration_s is not None else float("inf")
    bar = tqdm(total=cfg.requests, desc="load", unit="req", disable=not progress)

    async with AsyncClient(cfg.target, token=cfg.token, timeout=600) as client:
        info = await client.model_info()
        vocab = info.vocab_size
        before = {"paged": asdict(info.paged), "ring": asdict(info.ring)}

        async def one(i: int) -> None:
            r = random.Random(f"{cfg.seed}/{i}")
            n_prompt = min(r.randint(*cfg.prompt_tokens), info.max_context - cfg.max_tokens[1] - 1)
            prompt = [r.randrange(vocab) for _ in range(n_prompt)]
            cancel_after = r.randint(0, cfg.max_tokens[0]) if r.random() < cfg.cancel_fraction else None
            t0 = time.perf_counter()
            last = None
            got = 0
            try:
                async for chunk in client.stream(prompt, max_tokens=r.randint(*cfg.max_tokens), ignore_eos=True):
                    now = time.perf_counter()
                    if chunk.token_ids:
                        if last is None:
                            ttft.append(now - t0)
                        else:
                            itl.append((now - last) / len(chunk.token_ids))
                        last = now
                        got += len(chunk.token_ids)
                    if cancel_after is not None and got > cancel_after:
                        counts["cancelled"] += 1
                        break
                else:
                    counts["completed"] += 1
                code = "OK"
            except SwaaError as e:
                code = e.code.name
            counts["tokens"] += got
            statuses[code] = statuses.get(code, 0) + 1
            bar.update(1)

        async def worker() -> None:
            nonlocal issued
            while issued < cfg.requests and time.monotonic() < t_end:
                i = issued
                issued += 1
                await one(i)

        t0 = time.perf_counter()
        await asyncio.gather(*(worker() for _ in range(cfg.concurrency)))
        wall = time.perf_counter() - t0
        # cancelled streams are released by the server asynchronously: give it a moment before reading usage
        for _ in range(50):
            info = await client.model_info()
            if info.paged.used == 0 and info.ring.used == 0:
                break
            await asyncio.sleep(0.1)
        after = {"paged": asdict(info.paged), "ring": asdict(info.ring)}
    bar.close()
    pct = lambda xs: {f"p{p}": _pct(xs, p) for p in (50, 90, 99)}  # noqa: E731
    return LoadReport(asdict(cfg) | {"token": None}, wall, statuses, counts["completed"], counts["cancelled"],
                      counts["tokens"], pct(ttft), pct(itl), counts["tokens"] / wall, before, after,
                      ended_by="requests" if issued >= cfg.requests else "duration")
