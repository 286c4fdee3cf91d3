"""Plot of the scale benchmark (``gpu_bench.py --only scale``): per config, the measured duration beside its own
roofline, vLLM where it ran, and the paper's time per request scaled to the same request count.

    python bench/plot_scale.py OUT.png RESULT.json [RESULT.json ...]
"""

from __future__ import annotations

import json
import sys


def main() -> int:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    out, paths = sys.argv[1], sys.argv[2:]
    rows = [r for p in paths for r in json.load(open(p))["rows"]]
    groups = sorted({(r["n"], r["l_in"]) for r in rows})
    fig, axes = plt.subplots(1, len(groups), figsize=(6 * len(groups), 4.5), squeeze=False)
    for ax, (n, l_in) in zip(axes[0], groups):
        rs = [r for r in rows if (r["n"], r["l_in"]) == (n, l_in)]
        x = range(len(rs))
        w = 0.2
        ax.bar([i - 1.5 * w for i in x], [r["duration_s"] for r in rs], w, label="swaa-serve (measured)")
        ax.bar([i - 0.5 * w for i in x], [r["roofline_s"] for r in rs], w, label="own roofline")
        ax.bar([i + 0.5 * w for i in x], [r.get("vllm_s", 0) for r in rs], w, label="vLLM 0.21, same card")
        ax.bar([i + 1.5 * w for i in x], [n * r.get("paper_s_per_request", 0) for r in rs], w,
               label="paper's s/request × n (vLLM 0.11 eager)")
        ax.set_xticks(list(x), [r["config"] for r in rs], rotation=20, ha="right", fontsize=8)
        ax.set_ylabel("seconds")
        ax.set_title(f"{n} × {l_in:,} → {rs[0]['l_out']}, H200")
        ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(out, dpi=110)
    return 0


if __name__ == "__main__":
    sys.exit(main())
