"""Self-distillation from the full-attention model, on the **train** plays only (the eval never reads them):

- retrieval rows: the model answers long-context prompts; only answers its task's rule judges correct are kept;
- LM rows (``lm_samples`` > 0): an excerpt whose last ``tasks.LM_TOKENS`` tokens (the real text) are the target, with
  the teacher's top-k log-probabilities at each of them; fine-tuning matches that distribution (``swaa_train.objective``)
  so the adapter keeps general continuation quality while it learns retrieval under the window.

Output: JSONL, one example per line, appended as it goes (resumable)."""

from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass

from swaa_eval import tasks as T

RETRIEVAL = ("passkey", "multikey")  # tasks whose answers a rule can judge
LM = "lm"  # the task name of LM rows (the eval's LM-loss task, cut from the train plays)


@dataclass(frozen=True)
class DistillConfig:
    out: str  # the JSONL file
    lengths: tuple[int, ...] = (1024, 2048, 4096, 7936)
    samples: int = 50  # prompts per task and length (kept ones are fewer)
    tasks: tuple[str, ...] = RETRIEVAL
    seed: int = 1000  # a different seed space from eval's; the text split (train plays) is disjoint anyway
    max_tokens: int = T.ANSWER_TOKENS
    dtype: str = "bfloat16"
    max_num_batched_tokens: int = 4096
    batch: int = 16  # prompts handed to the engine at once (and the resume granularity)
    lm_samples: int = 0  # LM rows per length (0: retrieval rows only, the issue-6 data)
    lm_top_k: int = 16  # teacher log-probabilities kept per target token (the rest is one bucket: its mass)

    def __post_init__(self):
        bad = set(self.tasks) - set(RETRIEVAL)
        if bad:
            raise ValueError(f"tasks: {sorted(bad)} have no correctness rule; use {RETRIEVAL}")
        if self.samples < 1 or self.max_tokens < 1 or self.batch < 1:
            raise ValueError("samples, max_tokens and batch must be >= 1")
        if self.lm_samples < 0:
            raise ValueError(f"lm_samples: must be >= 0, got {self.lm_samples}")
        if not 1 <= self.lm_top_k <= 256:
            raise ValueError(f"lm_top_k: must be in [1, 256], got {self.lm_top_k}")
        if not self.tasks and not self.lm_samples:
            raise ValueError("tasks: empty and lm_samples 0: nothing to distill")
        if any(L < 256 for L in self.lengths):
            raise ValueError("lengths: each must be >= 256 tokens")


def _done(path: str) -> set[tuple]:
    seen = set()
    if os.path.exists(path):
        with open(path) as f:
            for line in f:
                if line.strip():
                    m = json.loads(line)["meta"]
                    seen.add((m["task"], m["length"], m["index"]))
    return seen


def distill(cfg: DistillConfig, hf_model, tokenizer, progress: bool = True) -> dict:
    """Appends kept examples to ``cfg.out``; every attempted prompt is recorded (kept or not) so a rerun resumes.
    Returns counts over the whole file: retrieval prompts {attempted, kept} and LM rows {lm}."""
    from tqdm import tqdm

    from swaa_engine.config import SchedulerConfig
    from swaa_engine.engine import LLM
    from swaa_engine.sampling_params import SamplingParams
    from swaa_engine.swaa import SWAAConfig
    from swaa_eval.texts import plays

    os.makedirs(os.path.dirname(os.path.abspath(cfg.out)), exist_ok=True)
    log = cfg.out + ".attempts"  # every attempted key, so rejected prompts are not retried on resume
    done = _done(log)
    hay = T.Haystack(tokenizer, plays("train"))
    todo = [(t, L, i) for t in cfg.tasks for L in cfg.lengths for i in range(cfg.samples) if (t, L, i) not in done]
    lm_todo = [(LM, L, i) for L in cfg.lengths for i in range(cfg.lm_samples) if (LM, L, i) not in done]
    bar = tqdm(total=len(todo) + len(lm_todo), desc="distill", unit="prompt", disable=not progress)
    if todo or lm_todo:
        llm = LLM(None, swaa=SWAAConfig(), hf_model=hf_model, tokenizer=tokenizer, dtype=cfg.dtype,
                  max_model_len=max(cfg.lengths) + cfg.max_tokens + 8,
                  scheduler=SchedulerConfig(max_num_batched_tokens=cfg.max_num_batched_tokens))
        params = SamplingParams(max_tokens=cfg.max_tokens, temperature=0.0)
        for start in range(0, len(todo), cfg.batch):
            keys = todo[start : start + cfg.batch]
            samples = [T.TASKS[t](hay, cfg.seed, L, i) for t, L, i in keys]
            outs = llm.generate([list(s.prompt_ids) for s in samples], params, progress=False)
            with open(cfg.out, "a") as f, open(log, "a") as g:
                for (t, L, i), s, o in zip(keys, samples, outs):
                    ok = T.first_number(o.text) == s.answer and len(o.token_ids) > 0
                    if ok:
                        meta = dict(task=t, length=L, index=i, expected=s.answer, depth=s.depth, seed=cfg.seed,
                                    teacher="full attention", answer_text=o.text)
                        f.write(json.dumps(dict(prompt_ids=list(s.prompt_ids), answer_ids=list(o.token_ids), meta=meta)) + "\n")
                    g.write(json.dumps(dict(meta=dict(task=t, length=L, index=i, kept=ok))) + "\n")
            bar.update(len(keys))
        for start in range(0, len(lm_todo), cfg.batch):
            keys = lm_todo[start : start + cfg.batch]
            with open(cfg.out, "a") as f, open(log, "a") as g:
                for t, L, i in keys:
                    f.write(json.dumps(_lm_row(llm, hay, cfg, L, i)) + "\n")
                    g.write(json.dumps(dict(meta=dict(task=t, length=L, index=i, kept=True))) + "\n")
            bar.update(len(keys))
        del llm
    bar.close()
    attempted = kept = lm = 0
    with open(log) as g:
        for line in g:
            m = json.loads(line)["meta"]
            if m["task"] == LM:
                lm += 1
            else:
                attempted += 1
                kept += m["kept"]
    with open(cfg.out + ".config.json", "w") as f:
        json.dump(asdict(cfg), f, indent=1)
    return {"attempted": attempted, "kept": kept, "lm": lm}


def _lm_row(llm, hay, cfg: DistillConfig, length: int, index: int) -> dict:
    """An LM row: the eval's LM-loss sample built from the train plays; the target is the real text's last
    ``LM_TOKENS`` tokens, and the full-attention teacher's top-k distribution at each of them."""
    from swaa_eval.scoring import top_logprobs

    s = T.lm(hay, cfg.seed, length, index)
    ids = list(s.prompt_ids)
    top_ids, top_lp = top_logprobs(llm.engine, ids, s.num_prompt, cfg.lm_top_k, chunk=cfg.max_num_batched_tokens)
    meta = dict(task=LM, length=length, index=index, seed=cfg.seed, teacher="full attention", top_k=cfg.lm_top_k)
    # 4 decimals: ~1e-4 relative error on a probability, far below the KL the student is trained to close
    return dict(prompt_ids=ids[: s.num_prompt], answer_ids=ids[s.num_prompt:], teacher_ids=top_ids,
                teacher_logprobs=[[round(x, 4) for x in row] for row in top_lp], meta=meta)


def read_examples(path: str):
    """The kept examples of a distilled JSONL file, in file order."""
    from swaa_train.packing import Example

    out = []
    with open(path) as f:
        for n, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                r = json.loads(line)
                teacher = None
                if "teacher_ids" in r:
                    teacher = (tuple(map(tuple, r["teacher_ids"])), tuple(map(tuple, r["teacher_logprobs"])))
                out.append(Example(tuple(r["prompt_ids"]), tuple(r["answer_ids"]), *(teacher or (None, None))))
            except (ValueError, KeyError, TypeError) as e:
                raise ValueError(f"{path}:{n}: not a training example ({e})") from None
    if not out:
        raise ValueError(f"{path}: no examples")
    return out
