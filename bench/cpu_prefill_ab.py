"""The engine's CPU prefill (one prompt, one output token, prefix cache off) against transformers' forward of the
same tokens (float32, logits of the last position only), alternating in one process so that the machine's load
falls on both alike. Embedded model; configs: ``default`` (window 1024, 64 sinks, fa_decode, tail 32) and ``fa``.

    python bench/cpu_prefill_ab.py [--lens 2048,4096] [--reps 2] [--configs default,fa] [--threads N]
"""
import argparse
import os
import sys
import time

import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
ap = argparse.ArgumentParser()
ap.add_argument("--lens", default="2048")
ap.add_argument("--reps", type=int, default=2)
ap.add_argument("--configs", default="default,fa")
ap.add_argument("--threads", type=int, default=None)
a = ap.parse_args()
if a.threads: torch.set_num_threads(a.threads)
from swaa_engine.config import EngineConfig, SchedulerConfig, CacheConfig
from swaa_engine.engine import LLMEngine
from swaa_engine.sampling_params import SamplingParams
from swaa_engine.swaa import SWAAConfig
from swaa_engine.defaults import EMBEDDED_SWAA
from swaa_engine.models.loader import embedded_model_path
from transformers import AutoModelForCausalLM
text = open("/usr/share/common-licenses/GPL-3").read()
engines = {c: LLMEngine(EngineConfig(swaa=EMBEDDED_SWAA if c == "default" else SWAAConfig(), num_threads=a.threads,
                                     cache=CacheConfig(prefix_caching=False))) for c in a.configs.split(",")}
e0 = next(iter(engines.values()))
ids = e0.tokenize(text) * 3
d, f = os.path.split(embedded_model_path())
hf = AutoModelForCausalLM.from_pretrained(d, gguf_file=f, dtype=torch.float32).eval()
def run_engine(eng, L):
    eng.add_request(ids[:L], SamplingParams(max_tokens=1))
    t0 = time.perf_counter()
    while eng.has_work(): eng.step()
    return time.perf_counter() - t0
def run_hf(L):
    with torch.inference_mode():
        t0 = time.perf_counter(); hf(torch.tensor([ids[:L]]), logits_to_keep=1); return time.perf_counter() - t0
for eng in engines.values(): run_engine(eng, 64)
run_hf(64)
print("threads", torch.get_num_threads())
for rep in range(a.reps):
    for L in map(int, a.lens.split(",")):
        for c, eng in engines.items():
            dt = run_engine(eng, L); print(f"rep{rep} engine[{c}] L={L}: {dt:.2f} s {L/dt:.0f} tok/s load1 {os.getloadavg()[0]:.2f}", flush=True)
        dt = run_hf(L); print(f"rep{rep} transformers L={L}: {dt:.2f} s {L/dt:.0f} tok/s load1 {os.getloadavg()[0]:.2f}", flush=True)
