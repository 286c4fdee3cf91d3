"""SWA-aware LoRA fine-tuning with peft: packed batches under the exact serving mask; loss on retrieval answers, and on
LM rows the KL to the full-attention teacher (``objective``), mixed at ``lm_ratio``.

    result = finetune(TrainConfig(data="distill.jsonl", out="run", swaa=SWAAConfig(...)), hf_model)

Writes OUT/adapter (a standard peft adapter, plus swaa.json: the config it was trained under),
OUT/log.jsonl (one line per step), OUT/loss.png, OUT/training.json, and OUT/checkpoint (adapter,
optimizer, scheduler and RNG state every ``save_every`` steps; a rerun resumes from it).
"""

from __future__ import annotations

import json
import math
import os
import random
import time
from dataclasses import asdict

import torch

from swaa_engine.models.adapters import SWAA_FILE
from swaa_engine.models.registry import model_layer_specs
from swaa_train.attention import answer_logits, default_kernel, swaa_masks
from swaa_train.config import TrainConfig
from swaa_train.distill import read_examples
from swaa_train.objective import mixed_loss
from swaa_train.packing import batches, pack


def select(cfg: TrainConfig, examples) -> list:
    """The training rows: without ``lm_ratio`` the data's first ``limit`` rows as they are; with it, the first ``limit``
    retrieval rows and round(lm_ratio × their number) LM rows, a seeded choice among the data's (in file order)."""
    if cfg.lm_ratio is None:
        return examples[: cfg.limit]
    answers = [e for e in examples if not e.is_lm][: cfg.limit]
    lms = [e for e in examples if e.is_lm]
    n = round(cfg.lm_ratio * len(answers))
    if n > len(lms):
        raise ValueError(f"lm_ratio: {cfg.lm_ratio} × {len(answers)} retrieval rows needs {n} LM rows, the data has "
                         f"{len(lms)} (swaa distill --lm-samples)")
    chosen = sorted(random.Random(f"{cfg.seed}/lm").sample(range(len(lms)), n))
    return answers + [lms[i] for i in chosen]


def _plan(cfg: TrainConfig, examples) -> list[list[int]]:
    """Every step's example indices: each epoch a seeded shuffle, packed greedily."""
    steps = []
    for epoch in range(cfg.epochs):
        order = list(range(len(examples)))
        random.Random(f"{cfg.seed}/{epoch}").shuffle(order)
        steps += [[order[i] for i in g] for g in batches([examples[i] for i in order], cfg.max_batch_tokens)]
    return steps[: cfg.max_steps] if cfg.max_steps else steps


def lora_config(cfg: TrainConfig):
    from peft import LoraConfig

    return LoraConfig(r=cfg.rank, lora_alpha=cfg.alpha, lora_dropout=cfg.dropout, use_rslora=cfg.rslora,
                      target_modules=list(cfg.target_modules), task_type="CAUSAL_LM")


def _save_checkpoint(model, opt, sched, step: int, path: str) -> None:
    tmp = path + ".tmp"
    model.save_pretrained(tmp)
    torch.save({"step": step, "optimizer": opt.state_dict(), "scheduler": sched.state_dict(),
                "torch_rng": torch.get_rng_state(),
                "cuda_rng": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else None},
               os.path.join(tmp, "state.pt"))
    if os.path.exists(path):
        import shutil

        shutil.rmtree(path)
    os.replace(tmp, path)  # a crash mid-save leaves the previous checkpoint intact


def finetune(cfg: TrainConfig, hf_model, progress: bool = True) -> dict:
    """Trains LoRA on ``hf_model`` (modified in place: peft injects its layers). Returns the summary written to
    OUT/training.json."""
    from peft import get_peft_model, set_peft_model_state_dict
    from safetensors.torch import load_file
    from tqdm import tqdm
    from transformers import get_linear_schedule_with_warmup

    os.makedirs(cfg.out, exist_ok=True)
    torch.manual_seed(cfg.seed)
    device = hf_model.device
    kernel = default_kernel(device) if cfg.kernel == "auto" else cfg.kernel
    examples = select(cfg, read_examples(cfg.data))
    plan = _plan(cfg, examples)
    specs = model_layer_specs(cfg.swaa, hf_model.config)  # the model's own sliding layers keep their window

    model = get_peft_model(hf_model, lora_config(cfg))
    if cfg.gradient_checkpointing:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    model.train()
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=cfg.lr, weight_decay=0.0)
    sched = get_linear_schedule_with_warmup(opt, math.ceil(cfg.warmup * len(plan)), len(plan))

    ckpt = os.path.join(cfg.out, "checkpoint")
    log_path = os.path.join(cfg.out, "log.jsonl")
    start = 0
    if os.path.exists(os.path.join(ckpt, "state.pt")):
        state = torch.load(os.path.join(ckpt, "state.pt"), weights_only=False)
        set_peft_model_state_dict(model, load_file(os.path.join(ckpt, "adapter_model.safetensors")))
        opt.load_state_dict(state["optimizer"])
        sched.load_state_dict(state["scheduler"])
        torch.set_rng_state(state["torch_rng"])
        if state["cuda_rng"] is not None:
            torch.cuda.set_rng_state_all(state["cuda_rng"])
        start = state["step"]
        _truncate_log(log_path, start)
    elif os.path.exists(log_path):
        os.remove(log_path)

    autocast = torch.autocast("cuda", dtype=torch.bfloat16) if device.type == "cuda" else torch.autocast("cpu", enabled=False)
    bar = tqdm(total=len(plan), initial=start, desc="finetune", unit="step", disable=not progress)
    t_start = time.perf_counter()
    for step in range(start, len(plan)):
        t0 = time.perf_counter()
        batch = pack([examples[i] for i in plan[step]], fa_tail=cfg.swaa.fa_tail,
                     pad_to=cfg.max_batch_tokens if kernel == "flex" else None).to(device)
        with swaa_masks(model, specs, batch, kernel):  # backward recomputes attention (checkpointing): inside too
            with autocast:
                logits = answer_logits(model, batch)
            loss, parts = mixed_loss(logits, batch, cfg.lm_weight)
            loss.backward()
        grad_norm = float(torch.nn.utils.clip_grad_norm_(params, cfg.grad_clip))
        opt.step()
        sched.step()
        opt.zero_grad(set_to_none=True)
        rec = dict(step=step + 1, loss=float(loss.detach()), lr=sched.get_last_lr()[0], grad_norm=grad_norm,
                   **parts, examples=len(plan[step]), tokens=sum(len(examples[i]) for i in plan[step]),
                   answer_tokens=int((~batch.lm_loss).sum()), lm_tokens=int(batch.lm_loss.sum()),
                   seconds=round(time.perf_counter() - t0, 3))
        with open(log_path, "a") as f:
            f.write(json.dumps(rec) + "\n")
        bar.set_postfix(loss=f"{rec['loss']:.3f}")
        bar.update(1)
        if (step + 1) % cfg.save_every == 0 and step + 1 < len(plan):
            _save_checkpoint(model, opt, sched, step + 1, ckpt)
    bar.close()

    adapter = os.path.join(cfg.out, "adapter")
    model.save_pretrained(adapter)
    with open(os.path.join(adapter, SWAA_FILE), "w") as f:
        json.dump(cfg.swaa.to_dict(), f, indent=1)
    log = read_log(log_path)
    summary = dict(config={**asdict(cfg), "swaa": cfg.swaa.to_dict()}, kernel=kernel, device=str(device),
                   examples=len(examples), lm_examples=sum(e.is_lm for e in examples), steps=len(plan), seconds_this_run=round(time.perf_counter() - t_start, 1),
                   first_loss=log[0]["loss"] if log else None, last_loss=log[-1]["loss"] if log else None,
                   trainable_params=sum(p.numel() for p in params))
    with open(os.path.join(cfg.out, "training.json"), "w") as f:
        json.dump(summary, f, indent=1)
    plot_loss(log, os.path.join(cfg.out, "loss.png"))
    return summary


def _truncate_log(path: str, steps: int) -> None:
    if os.path.exists(path):
        keep = [r for r in read_log(path) if r["step"] <= steps]
        with open(path, "w") as f:
            f.writelines(json.dumps(r) + "\n" for r in keep)


def read_log(path: str) -> list[dict]:
    with open(path) as f:
        return [json.loads(line) for line in f if line.strip()]


def plot_loss(log: list[dict], path: str) -> None:
    try:
        import matplotlib
    except ImportError:  # the plot is a convenience: log.jsonl carries the numbers
        return
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 3.5))
    steps = [r["step"] for r in log]
    ax.plot(steps, [r["loss"] for r in log], lw=1, label="loss")
    for key, label in (("answer_ce", "answers: cross-entropy"), ("lm_kl", "LM rows: KL to the FA teacher")):
        pts = [(r["step"], r[key]) for r in log if key in r]
        if pts and len(pts) < len(log):  # a mixed run: show each term (a pure run's loss is its one term)
            ax.plot(*zip(*pts), lw=0.8, alpha=0.7, label=label)
    k = max(1, len(log) // 20)
    if len(log) > k:
        smooth = [sum(r["loss"] for r in log[max(0, i - k + 1): i + 1]) / len(log[max(0, i - k + 1): i + 1]) for i in range(len(log))]
        ax.plot(steps, smooth, lw=2, label=f"moving mean ({k})")
    ax.set_xlabel("step")
    ax.set_ylabel("nats/token")
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
