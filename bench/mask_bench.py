"""The token masks alone (issue 21): filling and applying the grammar bitmasks of 64 JSON-Schema requests at
Qwen3's 151,936-token vocabulary, on CPU logits (the fill is host work whatever the device).

    python bench/mask_bench.py [--rows 64] [--vocab 151936] [--steps 60] [--threads N] [--serial] [--out FILE]

The tokenizer is the embedded SmolLM2 one widened to ``--vocab`` ids (``host_step.widened_tokenizer``; or
``--tokenizer FOLDER``, e.g. a saved copy). Each matcher starts at its own point of one valid document of
``structured_bench.SCHEMA`` (rows spread over it: inside keys, numbers, strings, between records) and moves on
one token of it per step, outside the timed part, so the states vary as in a decode; ``--states random`` instead
moves on by a token drawn uniformly (seeded) from those the mask allowed, as a random-weight model does (it stays
inside strings, the costly states, much longer). ``--serial`` times the former path (a fresh bitmask, the rows
filled one by one in Python) and ``--xgrammar-strings`` keeps xgrammar's form of length-bounded strings: both
together are the code before issue 21's fix, for a before/after on one machine. ``ms_*``: fill + apply (the engine's
CPU path); ``fill_ms_*``: the fill alone (what a GPU step waits for: there the apply is a kernel); ``apply_ms``: the
CPU apply alone, timed again at the end.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
for sub in ("engine", "server", "client"):
    sys.path.insert(0, os.path.join(ROOT, sub))


def document() -> str:
    """A valid instance of ``SCHEMA`` written as the grammar wants it (no free whitespace)."""
    recs = [dict(id=1000 + 37 * i, name=f"User Number {i} Smith", email=f"user.{i}.smith@example-shop.com",
                 active=i % 3 != 0) for i in range(24)]
    return json.dumps(recs, separators=(", ", ": "))  # the separators of any_whitespace=False


def serial_fill(rows, matchers, n, vocab):
    """The fill before issue 21's fix, kept here as the baseline: a fresh host bitmask, rows filled one by one."""
    import xgrammar as xgr

    bitmask = xgr.allocate_token_bitmask(n, vocab)
    for i, m in zip(rows, matchers):
        m.fill_next_token_bitmask(bitmask, i)
    return bitmask


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--rows", type=int, default=64)
    ap.add_argument("--vocab", type=int, default=151936)
    ap.add_argument("--steps", type=int, default=60)
    ap.add_argument("--threads", type=int, default=None, help="fill threads (default: the engine's default)")
    ap.add_argument("--serial", action="store_true", help="time the former serial path instead")
    ap.add_argument("--states", choices=("doc", "random"), default="doc")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--xgrammar-strings", action="store_true",
                    help="keep xgrammar's form of length-bounded strings (before issue 21's rewrite)")
    ap.add_argument("--tokenizer", default=None, help="a saved tokenizer folder (default: widen the embedded one)")
    ap.add_argument("--out", default=None)
    args = ap.parse_args()
    import torch

    from bench.structured_bench import SCHEMA
    from swaa_engine.sampling_params import StructuredOutput
    from swaa_engine.structured import Grammars

    if args.tokenizer:
        from transformers import PreTrainedTokenizerFast

        tok = PreTrainedTokenizerFast.from_pretrained(args.tokenizer)
    else:
        from bench.host_step import widened_tokenizer

        tok = widened_tokenizer(args.vocab)
    if args.xgrammar_strings:
        import swaa_engine.structured as st

        st.expand_bounded_strings = lambda ebnf, cap=0: ebnf
    grammars = Grammars(tok, args.vocab, [tok.eos_token_id])
    so = StructuredOutput("json_schema", json.dumps(SCHEMA))
    t = time.perf_counter()
    grammars.compile(so)
    compile_s = time.perf_counter() - t
    doc = tok.encode(document(), add_special_tokens=False)
    matchers, pos = [], []
    for j in range(args.rows):
        m = grammars.matcher(so)
        start = j * (len(doc) // 2) // args.rows  # spread over the first half: every row has steps left
        for tid in doc[:start]:
            assert m.accept_token(tid), (j, tid)
        matchers.append(m)
        pos.append(start)
    rows = list(range(args.rows))
    logits = torch.zeros(args.rows, args.vocab)
    import xgrammar as xgr

    if args.serial:
        fill, threads = (lambda: serial_fill(rows, matchers, args.rows, args.vocab)), 1
    else:
        from swaa_engine.structured import TokenMasker, default_fill_threads

        threads = args.threads or default_fill_threads()
        masker = TokenMasker(threads)
        fill = lambda: masker.fill(rows, matchers, args.rows, args.vocab, logits.device)  # noqa: E731
    gen = torch.Generator().manual_seed(args.seed)
    times, fill_times = [], []
    for step in range(args.steps + 3):  # 3 warm-up steps
        logits.zero_()
        t = time.perf_counter()
        bitmask = fill()
        t1 = time.perf_counter()
        xgr.apply_token_bitmask_inplace(logits, bitmask, vocab_size=args.vocab, indices=rows)
        dt = time.perf_counter() - t
        if step >= 3:
            times.append(dt)
            fill_times.append(t1 - t)
        if args.states == "random":  # the next state, untimed
            picks = torch.multinomial(torch.isfinite(logits).float(), 1, generator=gen)[:, 0].tolist()
            for m, t in zip(matchers, picks):
                assert m.accept_token(t), t
                if m.is_terminated():
                    m.reset()
        else:
            for j, m in enumerate(matchers):
                if pos[j] < len(doc):
                    assert m.accept_token(doc[pos[j]])
                    pos[j] += 1
    allowed = int(torch.isfinite(logits).sum())
    full = xgr.allocate_token_bitmask(args.rows, args.vocab)
    for j, m in enumerate(matchers):
        m.fill_next_token_bitmask(full, j)
    apply_times = []
    for _ in range(10):
        t = time.perf_counter()
        xgr.apply_token_bitmask_inplace(logits, full, vocab_size=args.vocab, indices=rows)
        apply_times.append(time.perf_counter() - t)
    r = dict(mode="serial" if args.serial else "batch", states=args.states,
             strings="xgrammar" if args.xgrammar_strings else "rewritten", threads=threads, rows=args.rows,
             vocab=args.vocab,
             steps=args.steps, ms_median=1e3 * statistics.median(times), ms_mean=1e3 * statistics.mean(times),
             ms_min=1e3 * min(times), fill_ms_median=1e3 * statistics.median(fill_times),
             fill_ms_min=1e3 * min(fill_times), fill_ms_per_row=1e3 * statistics.median(fill_times) / args.rows,
             apply_ms=1e3 * statistics.median(apply_times), allowed_last_step=allowed, compile_s=compile_s,
             cpus=os.cpu_count(),
             loadavg=open("/proc/loadavg").read().split()[:3])
    print(json.dumps(r), flush=True)
    if args.out:
        with open(args.out, "w") as f:
            json.dump(dict(result=r, command="python " + " ".join(sys.argv)), f, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
