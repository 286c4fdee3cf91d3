"""Before/after table and plot for SWA-aware fine-tuning, from `swaa eval` folders (bench/lora_run.sh eval).

    python bench/lora_report.py docs/eval/lora        # → docs/eval/lora/before_after.md and before_after.png
"""

from __future__ import annotations

import json
import os
import sys

RUNS = (  # (eval folder, config, label)
    ("eval-base", "FA", "FA (reference)"),
    ("eval-base", "SWA+sinks+FA-decode+tail32", "default config, before"),
    ("eval-ft-default", "SWA+sinks+FA-decode+tail32", "default config, after LoRA"),
    ("eval-base", "SWA+sinks+1/2 FA", "ring + ½ FA, before"),
    ("eval-ft-ring", "SWA+sinks+1/2 FA", "ring + ½ FA, after LoRA"),
)


def load(root: str) -> dict:
    cells = {}
    for folder, config, label in RUNS:
        for c in json.load(open(os.path.join(root, folder, "table.json"))):
            if c["config"] == config:
                cells[(label, c["task"], c["length"])] = c
    return cells


def table(cells: dict) -> str:
    lengths = sorted({k[2] for k in cells})
    out = []
    for task in ("passkey", "multikey", "lm"):
        unit = "mean NLL, nats/token (95 % CI)" if task == "lm" else "correct / samples (Wilson 95 % CI)"
        out += [f"\n**{task}** — {unit}\n", "| model | " + " | ".join(f"{L:,} tokens" for L in lengths) + " |",
                "|---|" + "---|" * len(lengths)]
        for _, _, label in RUNS:
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


def plot(cells: dict, path: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    lengths = sorted({k[2] for k in cells})
    fig, axes = plt.subplots(1, 3, figsize=(15, 4))
    styles = {"FA (reference)": ("k", "-"), "default config, before": ("C0", "--"), "default config, after LoRA": ("C0", "-"),
              "ring + ½ FA, before": ("C1", "--"), "ring + ½ FA, after LoRA": ("C1", "-")}
    for ax, task in zip(axes, ("passkey", "multikey", "lm")):
        for _, _, label in RUNS:
            pts = [cells[(label, task, L)] for L in lengths if (label, task, L) in cells]
            color, ls = styles[label]
            ax.errorbar([c["length"] for c in pts], [c["value"] for c in pts],
                        yerr=[[c["value"] - c["low"] for c in pts], [c["high"] - c["value"] for c in pts]],
                        color=color, ls=ls, marker="o", capsize=2, label=label)
        ax.set_xscale("log", base=2)
        ax.set_xlabel("context tokens")
        ax.set_ylabel("mean NLL" if task == "lm" else "accuracy")
        ax.set_title(task)
    axes[0].legend(fontsize=7)
    fig.suptitle("SmolLM2-135M-Instruct, window 1024, sinks 64: before / after SWA-aware LoRA")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main(root: str) -> None:
    cells = load(root)
    md = table(cells)
    with open(os.path.join(root, "before_after.md"), "w") as f:
        f.write(md)
    plot(cells, os.path.join(root, "before_after.png"))
    print(md)


if __name__ == "__main__":
    main(sys.argv[1] if len(sys.argv) > 1 else "docs/eval/lora")
