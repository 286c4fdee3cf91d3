"""Host time per engine decode step, at a large batch: what the engine spends beside the model's own work.

CPU (default): a tiny random Qwen3 (the tests' model: 4 layers of width 64, so the forward is cheap and the host work
shows) with the embedded SmolLM2 tokenizer (real detokenization), ``--batch`` requests decoding at once with stop
strings, a repetition penalty and top-5 logprobs, so every host path of a step runs. Reports per decode step: the
whole step, the model (forward + lm_head, timed around the model's calls), and the rest (host: scheduling, tensors,
sampling, detokenization, outputs); with ``--profile`` the top functions by own time. ``--graphs``: decode steps go
through the CUDA-graph runner's bookkeeping (run eagerly on CPU: planning, resident block tables, upload).

``--device cuda``: the Qwen3-4B-shaped random model (bf16, block 128, ``bench/gpu_bench.py``'s config) with CUDA
graphs, batch 256 by default, random token-id prompts; the SmolLM2 tokenizer's vocabulary widened to the model's
151,936 ids (extra byte-level words), so detokenization and stop strings run on every token. Reports per decode
step: the step's wall time, the GPU time of its graph replay (CUDA events around the replay inside the step), host =
step − replay, and the graph replayed alone afterwards (the step's last inputs in place). ``--plain``: greedy, no
stop strings, penalty or logprobs.

``--embedded``: the embedded SmolLM2-135M itself (bfloat16, greedy, no penalty or logprobs: the cpu_offline load),
to see how a step's time splits between the model and the host there.

    python bench/host_step.py [--batch 128] [--steps 64] [--profile] [--graphs] [--embedded]
    python bench/host_step.py --device cuda [--batch 256] [--prompt-tokens 1024] [--steps 32] [--plain]
"""

from __future__ import annotations

import argparse
import cProfile
import json
import os
import pstats
import sys
import tempfile
import time
from dataclasses import dataclass, field

import torch

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))  # tests.models


class TimedModel:
    """The model with its two entry points timed (``__call__``: the forward; ``logits``: the lm_head)."""

    def __init__(self, model):
        self._model, self.seconds = model, 0.0

    def __call__(self, *args, **kw):
        t = time.perf_counter()
        try:
            return self._model(*args, **kw)
        finally:
            self.seconds += time.perf_counter() - t

    def logits(self, hidden):
        t = time.perf_counter()
        try:
            return self._model.logits(hidden)
        finally:
            self.seconds += time.perf_counter() - t

    def __getattr__(self, name):
        return getattr(self._model, name)


@dataclass
class TimedReplay:
    """A captured graph whose replays are timed on the GPU (CUDA events around each)."""

    graph: object
    events: list = field(default_factory=list)

    def replay(self) -> None:
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        self.graph.replay()
        end.record()
        self.events.append((start, end))

    def take_ms(self) -> float:
        """GPU milliseconds of the replays since the last call (their step has synchronized)."""
        ms = sum(s.elapsed_time(e) for s, e in self.events)
        self.events.clear()
        return ms


def widened_tokenizer(vocab_size: int):
    """The embedded SmolLM2 tokenizer with its vocabulary widened to ``vocab_size`` ids: the extra ids decode to
    byte-level words (" wq", " wr", ...), so every id a random model samples detokenizes like a real token."""
    from tokenizers import Tokenizer
    from transformers import AutoTokenizer, PreTrainedTokenizerFast

    from swaa_engine.models.loader import resolve_source

    src = resolve_source(None)
    ref = AutoTokenizer.from_pretrained(src.folder, **src.hf_kwargs())
    data = json.loads(ref.backend_tokenizer.to_str())
    vocab = data["model"]["vocab"]
    letters, i, n = "abcdefghijklmnopqrstuvwxyz", 0, len(vocab)
    while n < vocab_size:
        word, k = "", i
        while True:
            word, k = letters[k % 26] + word, k // 26
            if not k:
                break
        i += 1
        if "\u0120" + word not in vocab:  # "\u0120": the byte-level space
            vocab["\u0120" + word] = n
            n += 1
    tok = PreTrainedTokenizerFast(tokenizer_object=Tokenizer.from_str(json.dumps(data)), eos_token=ref.eos_token,
                                  bos_token=ref.bos_token)
    assert len(tok) >= vocab_size, len(tok)
    return tok


CUDA_CHUNK = 8192  # max_num_batched_tokens of the CUDA engine


def cuda_engine(args):
    """The Qwen3-4B-shaped random model with CUDA graphs and a tokenizer covering its vocabulary."""
    from gpu_bench import qwen3_4b_config

    from swaa_engine.config import CacheConfig, EngineConfig, SchedulerConfig
    from swaa_engine.engine import LLMEngine
    from swaa_engine.swaa import SWAAConfig

    max_len = args.prompt_tokens + args.new + 64
    hf_config = qwen3_4b_config(max_len)
    if args.tokenizer:  # saved by --save-tokenizer here: the GPU host has no model package to widen
        from transformers import PreTrainedTokenizerFast

        tok = PreTrainedTokenizerFast.from_pretrained(args.tokenizer)
    else:
        tok = widened_tokenizer(hf_config.vocab_size)
    cfg = EngineConfig(model=None, swaa=SWAAConfig(), dtype="bfloat16", device="cuda", attention_backend=args.backend,
                       random_weights=True, max_model_len=max_len, cuda_graphs=True,
                       scheduler=SchedulerConfig(max_num_seqs=args.batch, max_num_batched_tokens=CUDA_CHUNK,
                                                 max_waiting=args.batch + 1),
                       cache=CacheConfig(block_size=128, budget_fraction=0.9))
    return LLMEngine(cfg, hf_config=hf_config, tokenizer=tok), tok


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--batch", type=int, default=None, help="default 128 on CPU, 256 on CUDA")
    ap.add_argument("--prompt-tokens", type=int, default=None, help="default 64 on CPU, 1024 on CUDA")
    ap.add_argument("--steps", type=int, default=64, help="decode steps measured (after the prefill)")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--profile", action="store_true")
    ap.add_argument("--embedded", action="store_true", help="the embedded SmolLM2 in bfloat16 instead of the tiny model")
    ap.add_argument("--device", choices=("cpu", "cuda"), default="cpu")
    ap.add_argument("--graphs", action="store_true", help="CPU: decode steps through the graph runner (eager)")
    ap.add_argument("--plain", action="store_true", help="greedy only: no stop strings, penalty or logprobs")
    ap.add_argument("--backend", default="auto", help="CUDA: the attention backend (prefill; decodes replay graphs)")
    ap.add_argument("--tokenizer", help="CUDA: a folder saved by --save-tokenizer (instead of widening SmolLM2's)")
    ap.add_argument("--save-tokenizer", metavar="DIR", help="write the widened tokenizer to DIR and exit")
    args = ap.parse_args()
    if args.save_tokenizer:
        sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
        from gpu_bench import qwen3_4b_config

        widened_tokenizer(qwen3_4b_config(1024).vocab_size).save_pretrained(args.save_tokenizer)
        return
    cuda = args.device == "cuda"
    args.batch = args.batch or (256 if cuda else 128)
    args.prompt_tokens = args.prompt_tokens or (1024 if cuda else 64)
    if cuda and args.embedded:
        ap.error("--embedded runs on CPU")
    torch.set_num_threads(args.threads)
    sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))  # gpu_bench

    from transformers import AutoTokenizer

    from swaa_engine import LLM, CacheConfig, SamplingParams, SchedulerConfig, SWAAConfig
    from swaa_engine.models.loader import resolve_source
    from tests.models import save_tiny_qwen3

    # the prefill samples one, two unmeasured decode steps, then the measured ones; on CUDA the prompts take several
    # chunked steps, during which the sequences already prefilled decode: they must not finish before the last measured step
    # (decode rows and per-sequence chunk caps stretch the prefill past its ideal step count: 21 steps for 16 ideal on CPU)
    prefill_steps = -(-args.batch * args.prompt_tokens // CUDA_CHUNK) if cuda else 0
    new = args.new = args.steps + 4 + 4 * prefill_steps
    full = dict(stop=("zzqx stop", "@@@"), repetition_penalty=1.1, logprobs=5)
    params = SamplingParams(max_tokens=new, ignore_eos=True, **({} if args.plain else full))
    if cuda:
        e, tok = cuda_engine(args)
        import random

        rng = random.Random(0)
        prompts = [[rng.randrange(e.dims.vocab_size) for _ in range(args.prompt_tokens)] for _ in range(args.batch)]
    else:
        src = resolve_source(None)
        tok = AutoTokenizer.from_pretrained(src.folder, **src.hf_kwargs())
        if args.embedded:
            from swaa_engine.defaults import EMBEDDED_SWAA

            llm = LLM(None, swaa=EMBEDDED_SWAA, dtype="bfloat16", max_model_len=2048, cache=CacheConfig(budget_bytes=1 << 30),
                      scheduler=SchedulerConfig(max_num_seqs=max(8, args.batch)))
            params = SamplingParams(max_tokens=new, ignore_eos=True)
        else:
            folder = tempfile.mkdtemp(prefix="host-step-")
            save_tiny_qwen3(folder, vocab_size=len(tok), eos_token_id=tok.eos_token_id)
            tok.save_pretrained(folder)
            llm = LLM(folder, swaa=SWAAConfig(window=32, sinks=4, fa_layers=[1]), max_model_len=args.prompt_tokens + new + 8,
                      cache=CacheConfig(block_size=16, budget_bytes=256 << 20),
                      scheduler=SchedulerConfig(max_num_seqs=args.batch,
                                                max_num_batched_tokens=max(2048, args.batch * args.prompt_tokens)))
        e = llm.engine
        if args.graphs:
            e.runner.use_graphs(e.decode_graphs())
        ids = tok.encode(open("/usr/share/common-licenses/GPL-3").read())
        prompts = [ids[i * 7 : i * 7 + args.prompt_tokens] for i in range(args.batch)]
    timed = TimedModel(e.runner.model)
    e.runner.model = timed
    graphs = e.runner.graphs
    if graphs is not None:
        graphs.model = timed  # CPU: the graph runner's eager forward is timed too
    replays = {}
    if cuda:
        e.runner.model = timed._model  # the GPU's time is read from events, not around asynchronous launches
        if graphs is None:
            sys.exit("no CUDA graphs on this engine (the attention backend cannot replay them)")
        for b, g in list(graphs._graphs.items()):
            replays[b] = graphs._graphs[b] = TimedReplay(g)
    for p in prompts:
        e.add_request(p, params)
    while any(s.num_computed < s.num_prompt for s in e.scheduler.running) or e.scheduler.waiting:
        e.step()  # prefill (not measured)
    left = min(s.params.max_tokens - s.num_generated for s in e.scheduler.running)
    if left < args.steps + 2:
        sys.exit(f"the prefill took so many steps that a sequence has only {left} tokens left to decode")
    for _ in range(2):
        e.step()  # the first decode steps write whole block tables and fill the sampling tables (not measured)
    for r in replays.values():
        r.take_ms()
    kinds = dict(e.runner.step_kinds)
    prof = cProfile.Profile() if args.profile else None
    timed.seconds, steps, t0 = 0.0, 0, time.perf_counter()
    if prof:
        prof.enable()
    for _ in range(args.steps):
        out = e.step()
        assert len(out) == args.batch
        steps += 1
    if prof:
        prof.disable()
    wall = time.perf_counter() - t0
    graph_steps = e.runner.step_kinds["graph"] - kinds["graph"]
    if cuda:
        name = "Qwen3-4B-shaped random bf16 + widened SmolLM2 tokenizer"
        gpu = sum(r.take_ms() for r in replays.values()) / 1e3  # the measured steps' replays, GPU time
        b = graphs.bucket(args.batch)
        real = graphs._graphs[b].graph
        torch.cuda.synchronize()
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        for _ in range(20):
            real.replay()
        end.record()
        end.synchronize()
        extra = dict(replay_in_step_ms=1e3 * gpu / steps, replay_alone_ms=start.elapsed_time(end) / 20,
                     host_over_replay=(wall - gpu) / gpu if gpu else None, prompt_tokens=args.prompt_tokens,
                     card=torch.cuda.get_device_name())
    else:
        name = "embedded SmolLM2-135M bf16" if args.embedded else "tiny random Qwen3 + SmolLM2 tokenizer"
        gpu, extra = timed.seconds, dict(threads=args.threads, load_average=os.getloadavg())
    row = dict(model=name, device=args.device, batch=args.batch, steps=steps, graph_steps=graph_steps,
               plain=args.plain, step_ms=1e3 * wall / steps, model_ms=1e3 * gpu / steps,
               host_ms=1e3 * (wall - gpu) / steps, **extra)
    print(json.dumps(row))
    if prof:
        pstats.Stats(prof).sort_stats("tottime").print_stats(25)


if __name__ == "__main__":
    main()
