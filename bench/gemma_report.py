"""The Gemma 3 270M quality table (issue 22) from a `swaa eval` folder, and one plot of both real models.

    python bench/gemma_report.py OUT/gemma-eval                 # → docs/eval/gemma3/{table.md,table.json,plot.png,results.jsonl}
    python bench/gemma_report.py OUT/gemma-eval --plot docs/eval/quality_models.png --smollm2 docs/eval/smollm2

The table is `swaa_eval.harness.write_report`'s (Wilson 95 % intervals for accuracies, mean ± 1.96·sd/√n for the
LM loss, Δ against the model's own attention), so both models' tables read alike.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil

from swaa_eval.harness import EvalConfig, _done, summarize, write_report


def load_config(folder: str, out: str) -> EvalConfig:
    with open(os.path.join(folder, "config.json")) as f:
        d = json.load(f)
    d = {k: tuple(v) if isinstance(v, list) else v for k, v in d.items() if k in EvalConfig.__dataclass_fields__}
    d["out"] = out
    return EvalConfig(**d)


def plot_models(models: list[tuple[str, EvalConfig, list[dict]]], path: str) -> None:
    """One row per model, one column per task; each config's value per length with its 95 % interval."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    tasks = ("passkey", "multikey", "lm")
    fig, axes = plt.subplots(len(models), len(tasks), figsize=(5 * len(tasks), 3.9 * len(models)), squeeze=False)
    for row, (name, cfg, records) in zip(axes, models):
        cells = summarize(records)
        get = {(c.task, c.config, c.length): c for c in cells}
        configs = [c for c in cfg.grid() if any(x.config == c for x in cells)]
        for ax, task in zip(row, tasks):
            for c in configs:
                pts = sorted((x.length, x) for x in cells if x.task == task and x.config == c)
                if not pts:
                    continue
                ax.errorbar([L for L, _ in pts], [x.value for _, x in pts],
                            yerr=[[x.value - x.low for _, x in pts], [x.high - x.value for _, x in pts]],
                            marker="o", capsize=2, label=c, lw=2.2 if c == cfg.baseline else 1.2)
            ax.set_xscale("log", base=2)
            ax.set_xlabel("context tokens")
            ax.set_ylabel("mean NLL (nats/token)" if task == "lm" else "accuracy")
            n = max((x.n for x in cells if x.task == task), default=0)
            ax.set_title(f"{name}: {task} ({n} samples per point)")
        row[-1].legend(fontsize=6)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("folder", help="the eval folder of the Gemma run (config.json, results.jsonl)")
    ap.add_argument("--out", default="docs/eval/gemma3", help="where the table, plot and results go")
    ap.add_argument("--smollm2", default="docs/eval/smollm2", help="SmolLM2's eval folder, for the two-model plot")
    ap.add_argument("--plot", default="docs/eval/quality_models.png", help="the two-model plot")
    ap.add_argument("--title", default="Model gemma-3-270m-q4_k_m.gguf (base)")
    args = ap.parse_args()
    os.makedirs(args.out, exist_ok=True)
    cfg = load_config(args.folder, args.out)
    if os.path.abspath(args.folder) != os.path.abspath(args.out):
        shutil.copy(os.path.join(args.folder, "results.jsonl"), os.path.join(args.out, "results.jsonl"))
        with open(os.path.join(args.out, "config.json"), "w") as f:
            json.dump({**json.load(open(os.path.join(args.folder, "config.json"))), "out": args.out}, f, indent=1)
    records = list(_done(os.path.join(args.out, "results.jsonl")).values())
    title = (f"{args.title}; window {cfg.window}, sinks {cfg.sinks}, question tail {cfg.tail}; "
             f"{cfg.samples} samples per cell; seed {cfg.seed}; {cfg.dtype}.")
    print(write_report(cfg, records, title=title))
    models = [("Gemma 3 270M", cfg, records)]
    if args.smollm2 and os.path.isdir(args.smollm2):
        s = load_config(args.smollm2, args.smollm2)
        models.insert(0, ("SmolLM2-135M", s, list(_done(os.path.join(args.smollm2, "results.jsonl")).values())))
    plot_models(models, args.plot)
    print(f"wrote {args.out}/table.md, table.json, plot.png, results.jsonl and {args.plot}")


if __name__ == "__main__":
    main()
