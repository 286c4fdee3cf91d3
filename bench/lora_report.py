"""Before/after table and plot for SWA-aware fine-tuning, from `swaa eval` folders (bench/lora_run.sh eval).

    python bench/lora_report.py docs/eval/lora        # → docs/eval/lora/before_after.md and before_after.png
    python bench/lora_report.py DIR --tag -mix --title "Gemma 3 270M, window 2048"   # run folders eval-ft-<run><tag>

Runs whose folders are missing are left out. With LM loss in the evals, a second table gives each adapter's LM loss
minus its config's before (per sample, paired: the same eval samples), the issue-22 criterion being |Δ| ≤ 0.05.
"""

from __future__ import annotations

import argparse
import json
import math
import os

RUNS: tuple = ()  # (eval folder, config, label, label of the same config before); set by main()


def runs(tag: str, default_name: str, ring_name: str) -> tuple:
    return (
        ("eval-base", "FA", "FA (reference)", None),
        (f"eval-ft-fa{tag}", "FA", "FA, after LoRA (same data)", "FA (reference)"),
        ("eval-base", default_name, "default config, before", None),
        (f"eval-ft-default{tag}", default_name, "default config, after LoRA", "default config, before"),
        ("eval-base", ring_name, "ring + ½ FA, before", None),
        (f"eval-ft-ring{tag}", ring_name, "ring + ½ FA, after LoRA", "ring + ½ FA, before"),
    )


def load(root: str) -> dict:
    cells = {}
    for folder, config, label, _ in RUNS:
        path = os.path.join(root, folder, "table.json")
        if not os.path.exists(path):
            continue
        for c in json.load(open(path)):
            if c["config"] == config:
                cells[(label, c["task"], c["length"])] = c
    return cells


def lm_losses(root: str) -> dict:
    """(label, length) -> {sample index: LM loss}."""
    out: dict = {}
    for folder, config, label, _ in RUNS:
        path = os.path.join(root, folder, "results.jsonl")
        if not os.path.exists(path):
            continue
        for line in open(path):
            r = json.loads(line)
            if r["task"] == "lm" and r["config"] == config:
                out.setdefault((label, r["length"]), {})[r["index"]] = r["loss"]
    return out


def lm_deltas(losses: dict) -> str:
    """After − before LM loss per length: mean of the paired per-sample differences ± 1.96 standard errors."""
    lengths = sorted({L for _, L in losses})
    rows = []
    for _, _, label, before in RUNS:
        if before is None or not any((label, L) in losses for L in lengths):
            continue
        cells = []
        for L in lengths:
            a, b = losses.get((label, L), {}), losses.get((before, L), {})
            d = [a[i] - b[i] for i in sorted(set(a) & set(b))]
            if len(d) < 2:
                cells.append("–")
                continue
            m = sum(d) / len(d)
            se = math.sqrt(sum((x - m) ** 2 for x in d) / (len(d) - 1) / len(d))
            cells.append(f"{m:+.3f} ± {1.96 * se:.3f} (n={len(d)})")
        rows.append(f"| {label} − {before} | " + " | ".join(cells) + " |")
    if not rows:
        return ""
    head = ["\n**lm, after − before** — paired mean difference of NLL, nats/token (95 % CI)\n",
            "| adapter | " + " | ".join(f"{L:,} tokens" for L in lengths) + " |", "|---|" + "---|" * len(lengths)]
    return "\n".join(head + rows) + "\n"


def table(cells: dict) -> str:
    lengths = sorted({k[2] for k in cells})
    out = []
    for task in ("passkey", "multikey", "lm"):
        unit = "mean NLL, nats/token (95 % CI)" if task == "lm" else "correct / samples (Wilson 95 % CI)"
        out += [f"\n**{task}** — {unit}\n", "| model | " + " | ".join(f"{L:,} tokens" for L in lengths) + " |",
                "|---|" + "---|" * len(lengths)]
        for _, _, label, _ in RUNS:
            if not any(k[0] == label for k in cells):
                continue
            row = []
            for L in lengths:
                c = cells.get((label, task, L))
                if c is None:
                    row.append("–")
                elif task == "lm":
                    row.append(f"{c['value']:.3f} ± {c['high'] - c['value']:.3f}")
                else:
                    row.append(f"{c['extra']['correct']}/{c['n']} ({c['low']:.0%}–{c['high']:.0%})")
            out.append(f"| {label} | " + " | ".join(row) + " |")
    return "\n".join(out) + "\n"


def plot(cells: dict, path: str, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    lengths = sorted({k[2] for k in cells})
    fig, axes = plt.subplots(1, 3, figsize=(15, 4))
    styles = {"FA (reference)": ("k", "--"), "FA, after LoRA (same data)": ("k", "-"),
              "default config, before": ("C0", "--"), "default config, after LoRA": ("C0", "-"),
              "ring + ½ FA, before": ("C1", "--"), "ring + ½ FA, after LoRA": ("C1", "-")}
    for ax, task in zip(axes, ("passkey", "multikey", "lm")):
        for _, _, label, _ in RUNS:
            pts = [cells[(label, task, L)] for L in lengths if (label, task, L) in cells]
            if not pts:
                continue
            color, ls = styles[label]
            ax.errorbar([c["length"] for c in pts], [c["value"] for c in pts],
                        yerr=[[c["value"] - c["low"] for c in pts], [c["high"] - c["value"] for c in pts]],
                        color=color, ls=ls, marker="o", capsize=2, label=label)
        ax.set_xscale("log", base=2)
        ax.set_xlabel("context tokens")
        ax.set_ylabel("mean NLL" if task == "lm" else "accuracy")
        ax.set_title(task)
    axes[0].legend(fontsize=7)
    fig.suptitle(f"{title}: before / after SWA-aware LoRA")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main(argv=None) -> None:
    global RUNS
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("root", nargs="?", default="docs/eval/lora")
    p.add_argument("--tag", default="", help="the TAG of bench/lora_run.sh (run folders eval-ft-<run><tag>)")
    p.add_argument("--default-name", default="SWA+sinks+FA-decode+tail32", help="the default run's eval config name")
    p.add_argument("--ring-name", default="SWA+sinks+1/2 FA", help="the ring run's eval config name")
    p.add_argument("--title", default="SmolLM2-135M-Instruct, window 1024, sinks 64")
    a = p.parse_args(argv)
    RUNS = runs(a.tag, a.default_name, a.ring_name)
    cells = load(a.root)
    md = table(cells) + lm_deltas(lm_losses(a.root))
    with open(os.path.join(a.root, f"before_after{a.tag}.md"), "w") as f:
        f.write(md)
    plot(cells, os.path.join(a.root, f"before_after{a.tag}.png"), a.title)
    print(md)


if __name__ == "__main__":
    main()
