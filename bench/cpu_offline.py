"""Engine vs transformers `generate` on the embedded model, on this CPU, in one run.

Measures (a) one request: TTFT and decode tokens/s; (b) N concurrent requests: total output
tokens/s (transformers batched with left padding). Appends a table to bench/RESULTS.md and
writes a plot next to it.

    python bench/cpu_offline.py [--dtype bfloat16] [--prompt-tokens 512] [--new-tokens 128] [--batch 8]
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import sys
import time

import torch


def real_text_prompts(tok, n_tokens: int, count: int) -> list[list[int]]:
    text = open("/usr/share/common-licenses/GPL-3").read()
    ids = tok.encode(text)
    step = max(1, (len(ids) - n_tokens) // max(1, count))
    return [ids[i * step : i * step + n_tokens] for i in range(count)]


def bench_hf(hf, tok, prompts, new_tokens):
    """Returns (ttft_s of a 1-token generate, seconds for the whole generate)."""
    tok.padding_side = "left"
    if tok.pad_token is None:
        tok.pad_token = tok.eos_token
    batch = tok.pad({"input_ids": prompts}, return_tensors="pt")
    kw = dict(do_sample=False, pad_token_id=tok.pad_token_id)
    with torch.inference_mode():
        t = time.perf_counter()
        hf.generate(**batch, max_new_tokens=1, min_new_tokens=1, **kw)
        ttft = time.perf_counter() - t
        t = time.perf_counter()
        out = hf.generate(**batch, max_new_tokens=new_tokens, min_new_tokens=new_tokens, **kw)
        total = time.perf_counter() - t
    assert out.shape[1] - batch["input_ids"].shape[1] == new_tokens
    return ttft, total


def bench_engine(llm, prompts, new_tokens):
    from swaa_engine import SamplingParams

    p = SamplingParams(max_tokens=new_tokens, ignore_eos=True)
    t = time.perf_counter()
    outs = llm.generate(prompts, p)
    total = time.perf_counter() - t
    assert all(len(o.token_ids) == new_tokens for o in outs)
    ttft = sum(o.timings.ttft_s for o in outs) / len(outs)
    return ttft, total


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--dtype", default="bfloat16", choices=["float32", "bfloat16"])
    ap.add_argument("--prompt-tokens", type=int, default=512)
    ap.add_argument("--new-tokens", type=int, default=128)
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--out", default=os.path.join(os.path.dirname(__file__), "RESULTS.md"))
    args = ap.parse_args()

    import transformers
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from swaa_engine import LLM, CacheConfig, SWAAConfig
    from swaa_engine.defaults import EMBEDDED_SWAA
    from swaa_engine.models.loader import resolve_source

    dtype = getattr(torch, args.dtype)
    src = resolve_source(None)
    hf = AutoModelForCausalLM.from_pretrained(src.folder, dtype=dtype, **src.hf_kwargs()).eval()
    tok = AutoTokenizer.from_pretrained(src.folder, **src.hf_kwargs())
    prompts = real_text_prompts(tok, args.prompt_tokens, args.batch)
    rows = []
    n = args.new_tokens

    def record(system, batch, ttft, total):
        # decode rate excludes the prefill (first token) time, as tokens/s per request
        decode_tps = (n - 1) * batch / max(1e-9, total - ttft)
        rows.append(dict(system=system, batch=batch, ttft_s=ttft, total_s=total,
                         decode_tok_s=decode_tps, throughput_tok_s=n * batch / total))
        print(json.dumps(rows[-1]), file=sys.stderr)

    for batch in (1, args.batch):
        record("transformers generate (sdpa)", batch, *bench_hf(hf, tok, prompts[:batch], n))
    for name, swaa in [("swaa-serve, full attention", SWAAConfig()), (f"swaa-serve, {EMBEDDED_SWAA.describe()}", EMBEDDED_SWAA)]:
        llm = LLM(None, swaa=swaa, hf_model=hf, tokenizer=tok, dtype=args.dtype,
                  max_model_len=2048, cache=CacheConfig(budget_bytes=1 << 30))
        bench_engine(llm, prompts[:1], 4)  # warm-up
        for batch in (1, args.batch):
            record(name, batch, *bench_engine(llm, prompts[:batch], n))

    import subprocess

    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True).stdout.strip()
    dirty = subprocess.run(["git", "status", "--porcelain", "engine"], capture_output=True, text=True).stdout.strip()
    base = {r["batch"]: r for r in rows if r["system"].startswith("transformers")}
    lines = [
        f"\n## CPU offline: engine vs transformers generate ({datetime.date.today()})\n",
        f"- machine: {platform.processor() or platform.machine()}, {os.cpu_count()} cores, torch {torch.__version__}, "
        f"transformers {transformers.__version__}, dtype {args.dtype}, code {commit}{'+uncommitted engine changes' if dirty else ''}",
        f"- model: embedded SmolLM2-135M-Instruct; {args.prompt_tokens}-token real-text prompts, {n} generated tokens (greedy, EOS ignored)",
        f"- command: `python bench/cpu_offline.py --dtype {args.dtype} --prompt-tokens {args.prompt_tokens} --new-tokens {n} --batch {args.batch}`\n",
        "| system | requests | mean TTFT s | total s | decode tok/s | output tok/s | × transformers |",
        "|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        ref = base[r["batch"]]
        key = "decode_tok_s" if r["batch"] == 1 else "throughput_tok_s"
        lines.append(f"| {r['system']} | {r['batch']} | {r['ttft_s']:.3f} | {r['total_s']:.2f} | {r['decode_tok_s']:.1f} | "
                     f"{r['throughput_tok_s']:.1f} | {r[key] / ref[key]:.2f} ({'decode' if r['batch'] == 1 else 'throughput'}) |")
    plot = plot_rows(rows, os.path.join(os.path.dirname(args.out), "cpu_offline.png"))
    if plot:
        lines.append(f"\n![CPU offline]({os.path.basename(plot)})")
    with open(args.out, "a") as f:
        f.write("\n".join(lines) + "\n")
    print("\n".join(lines))


def plot_rows(rows, path):
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print("matplotlib not installed: no plot", file=sys.stderr)
        return None
    systems = list(dict.fromkeys(r["system"] for r in rows))
    batches = sorted({r["batch"] for r in rows})
    fig, ax = plt.subplots(figsize=(8, 4))
    width = 0.8 / len(systems)
    for i, s in enumerate(systems):
        vals = [next(r["throughput_tok_s"] for r in rows if r["system"] == s and r["batch"] == b) for b in batches]
        ax.bar([j + i * width for j in range(len(batches))], vals, width, label=s)
    ax.set_xticks([j + width * (len(systems) - 1) / 2 for j in range(len(batches))], [f"{b} request(s)" for b in batches])
    ax.set_ylabel("output tokens/s")
    ax.set_title("SmolLM2-135M on CPU: engine vs transformers generate")
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    return path


if __name__ == "__main__":
    main()
