"""Runs tasks × SWAA configs × context lengths through the engine; resumable; writes Markdown, JSON and a plot.

    results = run_grid(EvalConfig(...), hf_model, tokenizer)   # appends to OUT/results.jsonl as it goes
    write_report(EvalConfig(...))                              # OUT/table.md, OUT/table.json, OUT/plot.png
"""

from __future__ import annotations

import json
import math
import os
import time
from dataclasses import asdict, dataclass, field

from swaa_eval import tasks as T
from swaa_engine.swaa import SWAAConfig, canonical_configs


_NAMES = {"fa": "FA", "swa": "SWA", "swa+sinks": "SWA+sinks", "swa+sinks+fa_decode": "SWA+sinks+FA-decode",
          "swa+sinks+half_fa": "SWA+sinks+1/2 FA", "swa+sinks+fa_decode+quarter_fa": "SWA+sinks+FA-decode+1/4"}


def config_grid(window: int, sinks: int, tail: int, native: tuple[int | None, ...] = ()) -> dict[str, SWAAConfig]:
    """The paper's configurations (the canonical six plus FA-decode + ½), and the question-tail knob beyond it.

    A model with sliding layers of its own (``native``: each layer's window, ``models.registry.native_windows``)
    gets its own grid (:func:`hybrid_grid`): the paper's interleaved patterns would name its sliding layers."""
    if any(w is not None for w in native):
        return hybrid_grid(window, sinks, tail, native)
    canon = {_NAMES[k]: v for k, v in canonical_configs(window, sinks).items()}
    grid = {k: canon[k] for k in ("FA", "SWA", "SWA+sinks", "SWA+sinks+FA-decode", "SWA+sinks+1/2 FA")}
    grid["SWA+sinks+FA-decode+1/2"] = SWAAConfig(window=window, sinks=sinks, fa_decode=True, fa_layers="odd")
    grid["SWA+sinks+FA-decode+1/4"] = canon["SWA+sinks+FA-decode+1/4"]
    grid[f"SWA+sinks+FA-decode+tail{tail}"] = SWAAConfig(window=window, sinks=sinks, fa_decode=True, fa_tail=tail)
    return grid


def spread(layers: list[int], k: int) -> tuple[int, ...]:
    """``k`` of ``layers`` spread evenly (the i-th of k at the middle of the i-th k-th): 1 of 3 → the middle one,
    2 of 3 → the first and the last. The analogue of the paper's interleaved full layers."""
    n = len(layers)
    return tuple(sorted({layers[min(n - 1, int((i + 0.5) * n / k))] for i in range(k)}))


def hybrid_grid(window: int, sinks: int, tail: int, native: tuple[int | None, ...]) -> dict[str, SWAAConfig]:
    """A natively hybrid model (Gemma 3): its own sliding layers keep their window; SWAA slides its full layers.

    - ``native``: the model as trained (its baseline, in place of FA);
    - SWA / +sinks / +FA-decode / +question tail: every full layer slides by ``window``; sinks and FA-decode apply
      to every sliding layer, its own included (``SWAAConfig.layer_specs``: sinks are one knob for all of them);
    - FA-decode@full (± tail): FA-decode on the formerly full layers only and no sinks, so its own layers attend
      exactly as trained (rings) and the KV memory stays the native model's;
    - keep k: k of its full layers stay full (spread evenly), the others slide (rings: memory saved), no sinks.
      (Sinks reach its own sliding layers too, which were trained without them: on Gemma 3 270M that turned
      answers into noise at 1k tokens, docs/quality.md; so the memory-saving configs go without.)
    """
    full = [i for i, w in enumerate(native) if w is None]
    if not full:
        raise ValueError("native: every layer slides by its own window; there is no full layer for SWAA to slide")
    at = ",".join(map(str, full))
    grid = {
        "native": SWAAConfig(),
        "SWA": SWAAConfig(window=window),
        "SWA+sinks": SWAAConfig(window=window, sinks=sinks),
        "SWA+sinks+FA-decode": SWAAConfig(window=window, sinks=sinks, fa_decode=True),
        f"SWA+sinks+FA-decode+tail{tail}": SWAAConfig(window=window, sinks=sinks, fa_decode=True, fa_tail=tail),
        f"SWA+FA-decode@{at}": SWAAConfig(window=window, fa_decode=tuple(full)),
        f"SWA+FA-decode@{at}+tail{tail}": SWAAConfig(window=window, fa_decode=tuple(full), fa_tail=tail),
    }
    for k in (1, 2):
        if k < len(full):
            keep = spread(full, k)
            grid[f"SWA+keep {k} full ({','.join(map(str, keep))})"] = SWAAConfig(window=window, fa_layers=keep)
    return grid


@dataclass(frozen=True)
class EvalConfig:
    out: str
    window: int = 512
    sinks: int = 64
    tail: int = 32
    lengths: tuple[int, ...] = (1024, 2048, 4096, 7936)
    samples: int = 6
    tasks: tuple[str, ...] = ("passkey", "multikey", "lm")
    configs: tuple[str, ...] = ()  # empty = every config of the grid
    seed: int = 0
    dtype: str = "bfloat16"
    max_num_batched_tokens: int = 2048  # also the chunk the LM-loss task is scored in
    native: tuple[int | None, ...] = ()  # the model's own window per layer (a hybrid model's grid); () = none
    prompts: str | None = None  # samples written by `swaa eval --write-prompts` (no texts needed), else built here

    def __post_init__(self):
        object.__setattr__(self, "native", tuple(self.native))
        if self.max_num_batched_tokens < 1:
            raise ValueError(f"max_num_batched_tokens: must be >= 1, got {self.max_num_batched_tokens}")
        if self.window < 1 or self.sinks < 0 or self.tail < 1 or self.samples < 1:
            raise ValueError("window, tail and samples must be >= 1 and sinks >= 0")
        unknown = set(self.tasks) - set(T.TASKS)
        if unknown:
            raise ValueError(f"tasks: unknown {sorted(unknown)}; known {sorted(T.TASKS)}")
        if any(L <= T.LM_TOKENS + 64 for L in self.lengths):
            raise ValueError(f"lengths: each must exceed {T.LM_TOKENS + 64} tokens")
        known = config_grid(self.window, self.sinks, self.tail, self.native)
        unknown = set(self.configs) - set(known)
        if unknown:
            raise ValueError(f"configs: unknown {sorted(unknown)}; known {list(known)}")

    def grid(self) -> dict[str, SWAAConfig]:
        g = config_grid(self.window, self.sinks, self.tail, self.native)
        return {k: v for k, v in g.items() if not self.configs or k in self.configs}

    @property
    def baseline(self) -> str:
        """The config the others are compared with: FA, or a hybrid model's own attention."""
        return "native" if any(w is not None for w in self.native) else "FA"


def build_samples(cfg: EvalConfig, tokenizer) -> list[T.Sample]:
    """Every sample of the grid's tasks and lengths, from the eval plays (the same for every config)."""
    from swaa_eval.texts import plays

    hay = T.Haystack(tokenizer, plays("eval"))
    return [T.TASKS[t](hay, cfg.seed, L, i) for t in cfg.tasks for L in cfg.lengths for i in range(cfg.samples)]


def _sample_source(cfg: EvalConfig, tokenizer):
    """(task, length, index) → sample: from ``cfg.prompts`` (checked to hold what the grid needs), else built."""
    if cfg.prompts is None:
        samples = {}

        def get(task, L, i):
            if not samples:
                samples.update({(s.task, s.length, s.index): s for s in build_samples(cfg, tokenizer)})
            return samples[(task, L, i)]
        return get
    meta, samples = T.load_samples(cfg.prompts)
    if meta.get("seed") != cfg.seed:
        raise ValueError(f"prompts: {cfg.prompts} was built with seed {meta.get('seed')}, not {cfg.seed}")
    missing = [(t, L, i) for t in cfg.tasks for L in cfg.lengths for i in range(cfg.samples) if (t, L, i) not in samples]
    if missing:
        raise ValueError(f"prompts: {cfg.prompts} lacks {len(missing)} samples, e.g. {missing[0]}")
    return lambda task, L, i: samples[(task, L, i)]


def _done(path: str) -> dict[tuple, dict]:
    out = {}
    if os.path.exists(path):
        with open(path) as f:
            for line in f:
                if line.strip():
                    r = json.loads(line)
                    out[(r["task"], r["config"], r["length"], r["index"])] = r
    return out


def run_grid(cfg: EvalConfig, hf_model, tokenizer, progress: bool = True) -> list[dict]:
    """Every (task, config, length, sample) not yet in OUT/results.jsonl, through the engine (offline LLM)."""
    from tqdm import tqdm

    from swaa_engine.config import SchedulerConfig
    from swaa_engine.engine import LLM
    from swaa_engine.sampling_params import SamplingParams
    from swaa_eval.scoring import score

    os.makedirs(cfg.out, exist_ok=True)
    path = os.path.join(cfg.out, "results.jsonl")
    with open(os.path.join(cfg.out, "config.json"), "w") as f:
        json.dump(asdict(cfg), f, indent=1)
    done = _done(path)
    sample = _sample_source(cfg, tokenizer)
    todo = [(t, c, L, i) for c in cfg.grid() for t in cfg.tasks for L in cfg.lengths for i in range(cfg.samples)
            if (t, c, L, i) not in done]
    bar = tqdm(total=len(todo), desc="eval", disable=not progress, unit="sample")
    max_len = max(cfg.lengths) + T.ANSWER_TOKENS + 8
    for name, swaa in cfg.grid().items():
        mine = [k for k in todo if k[1] == name]
        if not mine:
            continue
        # CUDA graphs off: an eval decodes 10 tokens per batch, far fewer than capturing the graphs costs (graph
        # replay decodes as the eager path does: tests/engine/test_cuda_graphs.py)
        llm = LLM(None, swaa=swaa, hf_model=hf_model, tokenizer=tokenizer, dtype=cfg.dtype, max_model_len=max_len,
                  scheduler=SchedulerConfig(max_num_batched_tokens=cfg.max_num_batched_tokens), cuda_graphs=False)
        for task in cfg.tasks:
            for L in cfg.lengths:
                keys = [k for k in mine if k[0] == task and k[2] == L]
                if not keys:
                    continue
                samples = [sample(task, L, i) for _, _, _, i in keys]
                t0 = time.perf_counter()
                rows = []
                if task == "lm":
                    for s in samples:
                        lp = score(llm.engine, list(s.prompt_ids), s.num_prompt, chunk=cfg.max_num_batched_tokens)
                        rows.append(dict(loss=-sum(lp) / len(lp)))
                else:
                    outs = llm.generate([list(s.prompt_ids) for s in samples],
                                        SamplingParams(max_tokens=T.ANSWER_TOKENS, temperature=0.0), progress=False)
                    rows = [dict(output=o.text, correct=T.first_number(o.text) == s.answer) for o, s in zip(outs, samples)]
                dt = (time.perf_counter() - t0) / len(samples)
                with open(path, "a") as f:
                    for s, r in zip(samples, rows):
                        rec = dict(task=task, config=name, length=L, index=s.index, swaa=swaa.describe(), answer=s.answer,
                                   depth=s.depth, prompt_tokens=len(s.prompt_ids), seconds=round(dt, 3), **r)
                        f.write(json.dumps(rec) + "\n")
                        done[(task, name, L, s.index)] = rec
                bar.update(len(samples))
        del llm
    bar.close()
    return list(done.values())


def wilson(k: int, n: int, z: float = 1.96) -> tuple[float, float]:
    if n == 0:
        return 0.0, 1.0
    p = k / n
    d = 1 + z * z / n
    c = (p + z * z / (2 * n)) / d
    h = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / d
    return max(0.0, c - h), min(1.0, c + h)


@dataclass
class Cell:
    task: str
    config: str
    length: int
    n: int
    value: float  # accuracy or mean loss
    low: float
    high: float
    seconds: float
    extra: dict = field(default_factory=dict)


def summarize(records: list[dict]) -> list[Cell]:
    cells = {}
    for r in records:
        cells.setdefault((r["task"], r["config"], r["length"]), []).append(r)
    out = []
    for (task, config, L), rs in cells.items():
        sec = sum(r["seconds"] for r in rs) / len(rs)
        if task == "lm":
            xs = [r["loss"] for r in rs]
            m = sum(xs) / len(xs)
            sd = math.sqrt(sum((x - m) ** 2 for x in xs) / (len(xs) - 1)) if len(xs) > 1 else 0.0
            h = 1.96 * sd / math.sqrt(len(xs))
            out.append(Cell(task, config, L, len(xs), m, m - h, m + h, sec))
        else:
            k = sum(r["correct"] for r in rs)
            lo, hi = wilson(k, len(rs))
            out.append(Cell(task, config, L, len(rs), k / len(rs), lo, hi, sec, {"correct": k}))
    return out


def write_report(cfg: EvalConfig, records: list[dict] | None = None, title: str = "") -> str:
    """OUT/table.md (returned), OUT/table.json and OUT/plot.png from the records (default: OUT/results.jsonl)."""
    records = records if records is not None else list(_done(os.path.join(cfg.out, "results.jsonl")).values())
    cells = summarize(records)
    configs = [c for c in cfg.grid() if any(x.config == c for x in cells)]
    lengths = sorted({x.length for x in cells})
    get = {(x.task, x.config, x.length): x for x in cells}
    md = [title] if title else []
    for task in [t for t in cfg.tasks if any(x.task == t for x in cells)]:
        if task == "lm":
            md.append(f"\n**lm** — mean NLL (nats/token) of the last {T.LM_TOKENS} tokens of an excerpt (95 % CI; Δ vs {cfg.baseline}):\n")
        else:
            md.append(f"\n**{task}** — correct / samples (accuracy, Wilson 95 % CI):\n")
        md.append("| config | " + " | ".join(f"{L:,} tokens" for L in lengths) + " |")
        md.append("|---|" + "---|" * len(lengths))
        for c in configs:
            row = []
            for L in lengths:
                x = get.get((task, c, L))
                if x is None:
                    row.append("–")
                elif task == "lm":
                    fa = get.get((task, cfg.baseline, L))
                    delta = f" (Δ {x.value - fa.value:+.3f})" if fa and c != cfg.baseline else ""
                    row.append(f"{x.value:.3f} ± {x.high - x.value:.3f}{delta}")
                else:
                    row.append(f"{x.extra['correct']}/{x.n} ({x.value:.0%}, {x.low:.0%}–{x.high:.0%})")
            md.append(f"| {c} | " + " | ".join(row) + " |")
    text = "\n".join(md) + "\n"
    with open(os.path.join(cfg.out, "table.md"), "w") as f:
        f.write(text)
    with open(os.path.join(cfg.out, "table.json"), "w") as f:
        json.dump([asdict(x) for x in cells], f, indent=1)
    _plot(cfg, cells, configs, lengths)
    return text


def _plot(cfg: EvalConfig, cells: list[Cell], configs: list[str], lengths: list[int]) -> None:
    try:
        import matplotlib
    except ImportError:  # plots are a convenience: the tables carry the numbers
        return
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    tasks = [t for t in cfg.tasks if any(x.task == t for x in cells)]
    fig, axes = plt.subplots(1, len(tasks), figsize=(5 * len(tasks), 3.8), squeeze=False)
    get = {(x.task, x.config, x.length): x for x in cells}
    for ax, task in zip(axes[0], tasks):
        for c in configs:
            pts = [(L, get[(task, c, L)]) for L in lengths if (task, c, L) in get]
            if not pts:
                continue
            xs = [p[0] for p in pts]
            ys = [p[1].value for p in pts]
            err = [[p[1].value - p[1].low for p in pts], [p[1].high - p[1].value for p in pts]]
            ax.errorbar(xs, ys, yerr=err, marker="o", capsize=2, label=c)
        ax.set_xscale("log", base=2)
        ax.set_xlabel("context tokens")
        ax.set_ylabel("mean NLL" if task == "lm" else "accuracy")
        ax.set_title(task)
    axes[0][-1].legend(fontsize=6)
    fig.tight_layout()
    fig.savefig(os.path.join(cfg.out, "plot.png"), dpi=110)
    plt.close(fig)
