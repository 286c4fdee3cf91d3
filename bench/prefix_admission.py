"""Scheduler time per step while many requests wait for one running request to prefill the prefix they share
(the racing case: each waiting request is looked up, and found to wait, at every step). Torch-free.

    python bench/prefix_admission.py [WAITING=1000] [PREFIX_TOKENS=8192] [ring]

``ring``: window 1024 + 64 sinks in ring layers (chunks stop at ring-snapshot boundaries, so steps leave budget and
admission runs every step); else the embedded model's default config (fa_decode, paged only). PROF=1: cProfile of
the steps after the first.
"""
import sys, time, os
from swaa_engine.config import SchedulerConfig
from swaa_engine.kv_cache.manager import CacheManager
from swaa_engine.sampling_params import SamplingParams
from swaa_engine.scheduler import Scheduler
from swaa_engine.sequence import Sequence
from swaa_engine.defaults import EMBEDDED_SWAA
from swaa_engine.swaa import SWAAConfig
N = int(sys.argv[1]) if len(sys.argv) > 1 else 1000
L = int(sys.argv[2]) if len(sys.argv) > 2 else 8192
swaa = SWAAConfig(window=1024, sinks=64) if "ring" in sys.argv else EMBEDDED_SWAA
specs = swaa.layer_specs(4, max_len=L + 200)
mgr = CacheManager(specs, 16, (L * 4) // 16, 64 if "ring" in sys.argv else 0, prefix_caching=True)
sched = Scheduler(SchedulerConfig(max_num_seqs=256, max_num_batched_tokens=2048, max_waiting=N + 1, decode_reserve_tokens=0), mgr)
system = list(range(L))
for i in range(N):
    sched.add(Sequence(f"r{i}", system + [100000 + i] * 64, SamplingParams(max_tokens=4, ignore_eos=True)))
ts = []
r0 = sched.waiting[0]
while r0.num_computed < L:  # while r0 prefills the shared prefix, the rest wait for it
    if len(ts) == 1 and os.environ.get("PROF"):
        import cProfile; pr = cProfile.Profile(); pr.enable()
    t0 = time.perf_counter(); out = sched.schedule(); ts.append(time.perf_counter() - t0)
    sched.advance(out)
    assert [c.seq.request_id for c in out.chunks] == ["r0"], [c.seq.request_id for c in out.chunks][:5]
if os.environ.get("PROF"):
    pr.disable(); import pstats; pstats.Stats(pr).sort_stats("tottime").print_stats(12)
print("steps ms", [round(t * 1e3, 1) for t in ts])
print(f"{N} waiting on a {L}-token prefix in flight ({'ring' if 'ring' in sys.argv else 'default'}): schedule() "
      f"{1e3 * sum(ts) / len(ts):.1f} ms/step over {len(ts)} steps, load {os.getloadavg()[0]:.1f}")
