"""Issue 22: LM rows distilled from the full-attention model, mixed into SWA-aware fine-tuning, and the
full-attention baseline; on a tiny random Llama with the embedded model's tokenizer (CPU, seconds)."""

import copy
import json
import os
import random

import pytest
import torch
import torch.nn.functional as F

from swaa_engine.swaa import AttentionKind, SWAAConfig
from swaa_eval import texts
from swaa_eval.tasks import LM_TOKENS, Haystack
from swaa_train import finetune as ft
from swaa_train.attention import all_logits, answer_logits, swaa_masks
from swaa_train.distill import DistillConfig, distill, read_examples
from swaa_train.objective import mixed_loss, teacher_kl
from swaa_train.packing import Example, pack

SWAA = SWAAConfig(window=32, sinks=4, fa_decode=True, fa_tail=8)
LENGTH = 256


@pytest.fixture(scope="module")
def tok():
    from transformers import AutoTokenizer

    from swaa_engine.models.loader import resolve_source

    src = resolve_source(None)
    return AutoTokenizer.from_pretrained(src.folder, **src.hf_kwargs())


@pytest.fixture(scope="module")
def tiny(tok):
    """A random 2-layer Llama over the embedded tokenizer's vocabulary (real text in, fast forward)."""
    from transformers import AutoModelForCausalLM, LlamaConfig

    torch.manual_seed(0)
    cfg = LlamaConfig(vocab_size=len(tok), hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                      num_attention_heads=4, num_key_value_heads=2, head_dim=16, max_position_embeddings=2048,
                      tie_word_embeddings=True, initializer_range=0.1)
    return AutoModelForCausalLM.from_config(cfg, dtype=torch.float32).eval()


@pytest.fixture(scope="module")
def lm_data(tiny, tok, tmp_path_factory):
    out = str(tmp_path_factory.mktemp("lm") / "data.jsonl")
    cfg = DistillConfig(out=out, lengths=(LENGTH,), tasks=(), lm_samples=3, lm_top_k=8, dtype="float32")
    calls = []
    real = texts.plays

    def recording(split):
        calls.append(split)
        return real(split)

    mp = pytest.MonkeyPatch()
    mp.setattr(texts, "plays", recording)
    try:
        counts = distill(cfg, tiny, tok, progress=False)
    finally:
        mp.undo()
    return out, counts, calls


def _ids_key(ids) -> str:
    return "," + ",".join(map(str, ids)) + ","


def test_lm_rows_come_from_the_train_plays_only(lm_data, tok):
    path, counts, calls = lm_data
    assert calls == ["train"] and counts == {"attempted": 0, "kept": 0, "lm": 3}
    rows = [json.loads(line) for line in open(path)]
    assert len(rows) == 3 and all(r["meta"]["task"] == "lm" for r in rows)
    train = _ids_key(Haystack(tok, texts.plays("train")).ids)
    evals = _ids_key(Haystack(tok, texts.plays("eval")).ids)
    for r in rows:
        seq = r["prompt_ids"] + r["answer_ids"]
        assert len(seq) == LENGTH and len(r["answer_ids"]) == LM_TOKENS
        assert _ids_key(seq) in train  # a contiguous excerpt of the train plays
        assert _ids_key(seq[:64]) not in evals  # ... that no eval play contains


def test_lm_rows_carry_the_full_attention_teachers_top_k(lm_data, tiny):
    """The stored top-k is the FA model's own next-token distribution at each continuation token (transformers, plain
    causal attention, computed here independently of the engine path distill uses)."""
    path, _, _ = lm_data
    exs = read_examples(path)
    assert all(e.is_lm for e in exs)
    for e in exs:
        seq = list(e.prompt_ids) + list(e.answer_ids)
        with torch.no_grad():
            logp = tiny(torch.tensor([seq])).logits[0].float().log_softmax(-1)
        rows = logp[len(e.prompt_ids) - 1: len(seq) - 1]
        ids = torch.tensor(e.teacher_ids)
        lp = torch.tensor(e.teacher_logprobs)
        assert ids.shape == (LM_TOKENS, 8)
        torch.testing.assert_close(rows.gather(1, ids), lp, atol=2e-3, rtol=0)
        torch.testing.assert_close(rows.topk(8, -1).values, lp, atol=2e-3, rtol=0)


def test_kl_over_top_k_and_rest():
    torch.manual_seed(1)
    V, k = 50, 5
    teacher = torch.randn(4, V).log_softmax(-1)
    student = torch.randn(4, V, requires_grad=True)
    # k = vocabulary: the exact KL
    full = teacher.topk(V, -1)
    exact = F.kl_div(student.log_softmax(-1), teacher, log_target=True, reduction="none").sum(-1)
    torch.testing.assert_close(teacher_kl(student, full.indices, full.values), exact)
    # k < vocabulary: the KL between the (top-k, rest) coarse distributions, by hand
    top = teacher.topk(k, -1)
    q = student.detach().softmax(-1).double()
    p = teacher.exp().double()
    want = []
    for r in range(4):
        idx = top.indices[r]
        pk, qk = p[r, idx], q[r, idx]
        pr, qr = 1 - pk.sum(), 1 - qk.sum()
        want.append(float((pk * (pk / qk).log()).sum() + pr * (pr / qr).log()))
    torch.testing.assert_close(teacher_kl(student, top.indices, top.values).double(), torch.tensor(want, dtype=torch.float64), atol=1e-5, rtol=0)
    # zero when the student matches the teacher on the buckets
    assert teacher_kl(teacher, top.indices, top.values).abs().max() < 1e-5


def _mixed_examples(seed=0, k=4):
    rng = random.Random(seed)
    r = lambda n: tuple(rng.randrange(100, 40000) for _ in range(n))  # noqa: E731
    answer = Example(r(60), r(5))
    lm = Example(r(70), r(12), tuple(r(k) for _ in range(12)),
                 tuple(tuple(sorted((-rng.uniform(0.5, 5) for _ in range(k)), reverse=True)) for _ in range(12)))
    return answer, lm


def test_the_loss_is_on_the_right_tokens(tiny):
    """Answer CE on the retrieval answer's tokens, KL to the teacher on the LM continuation's; nothing else in the row
    receives a gradient, and the LM rows ignore the real next token (the teacher is their target)."""
    answer, lm = _mixed_examples()
    b = pack([answer, lm], fa_tail=SWAA.fa_tail)
    assert b.lm_loss.tolist() == [False] * 5 + [True] * 12
    assert b.loss_index.tolist() == list(range(59, 64)) + list(range(65 + 69, 65 + 81))
    assert b.teacher_ids.shape == (12, 4)
    logits = torch.randn(b.num_tokens, 500, requires_grad=True)
    target = b.loss_target.clamp(max=499)
    b2 = type(b)(**{**b.__dict__, "loss_target": target, "teacher_ids": b.teacher_ids % 500})
    loss, parts = mixed_loss(logits[b.loss_index], b2, lm_weight=0.5)
    want_ce = F.cross_entropy(logits[b.loss_index[:5]], target[:5])
    want_kl = teacher_kl(logits[b.loss_index[5:]], b2.teacher_ids, b2.teacher_logprobs).mean()
    torch.testing.assert_close(loss, want_ce + 0.5 * want_kl)
    assert parts["answer_ce"] == pytest.approx(float(want_ce)) and parts["lm_kl"] == pytest.approx(float(want_kl))
    loss.backward()
    touched = logits.grad.abs().sum(-1) > 0
    assert touched.nonzero()[:, 0].tolist() == b.loss_index.tolist()
    # LM rows: the real tokens are not the target
    b3 = type(b)(**{**b2.__dict__, "loss_target": torch.cat([target[:5], (target[5:] + 1) % 500])})
    assert float(mixed_loss(logits[b.loss_index], b3)[0]) == pytest.approx(float(mixed_loss(logits[b.loss_index], b2)[0]))
    with pytest.raises(ValueError, match="teacher_ids"):
        Example((1, 2), (3,), ((4, 5),), ((-1.0,),))
    with pytest.raises(ValueError, match="top-k width"):
        pack([lm, _mixed_examples(k=3)[1]])


def test_mix_ratio_selects_lm_rows(lm_data, tmp_path):
    path, _, _ = lm_data
    lms = read_examples(path)
    answers = [Example(tuple(range(10, 60)), (7, 8, 9)) for _ in range(4)]
    cfg = lambda **k: ft.TrainConfig(data="x", out="y", swaa=SWAA, **k)  # noqa: E731
    assert ft.select(cfg(), answers + lms) == answers + lms
    got = ft.select(cfg(lm_ratio=0.5), answers + lms)
    assert got[:4] == answers and len(got) == 6 and all(e.is_lm for e in got[4:])
    assert ft.select(cfg(lm_ratio=0.5, limit=2), answers + lms)[:2] == answers[:2]
    assert len(ft.select(cfg(lm_ratio=0.5, limit=2), answers + lms)) == 3
    assert ft.select(cfg(lm_ratio=0), answers + lms) == answers
    with pytest.raises(ValueError, match="lm_ratio: 1.0 × 4 retrieval rows needs 4 LM rows, the data has 3"):
        ft.select(cfg(lm_ratio=1.0), answers + lms)


def _write(rows, path):
    with open(path, "w") as f:
        for e in rows:
            r = dict(prompt_ids=list(e.prompt_ids), answer_ids=list(e.answer_ids))
            if e.is_lm:
                r.update(teacher_ids=[list(x) for x in e.teacher_ids], teacher_logprobs=[list(x) for x in e.teacher_logprobs])
            f.write(json.dumps(r) + "\n")


def test_mixed_finetune_trains_both_terms(lm_data, tiny, tmp_path):
    """A few mixed steps on LM rows + retrieval-shaped rows: both terms logged, the KL to the teacher (0 at the
    start up to the SWAA mask's effect) stays small while the answers' CE drops."""
    path, _, _ = lm_data
    rng = random.Random(0)
    answers = [Example(tuple(rng.randrange(100, 40000) for _ in range(120)), (11, 12, 13, 14)) for _ in range(6)]
    data = str(tmp_path / "mix.jsonl")
    _write(answers + read_examples(path), data)
    cfg = ft.TrainConfig(data=data, out=str(tmp_path / "run"), swaa=SWAA, lr=3e-3, warmup=0.0, epochs=4,
                         max_batch_tokens=2048, lm_ratio=0.5, save_every=100, rank=4, alpha=8, dropout=0.0)
    summary = ft.finetune(cfg, copy.deepcopy(tiny), progress=False)
    log = ft.read_log(os.path.join(cfg.out, "log.jsonl"))
    assert summary["examples"] == 9 and summary["lm_examples"] == 3
    assert all("answer_ce" in r and "lm_kl" in r and "lm_nll" in r for r in log), log
    assert all(r["lm_tokens"] == 3 * LM_TOKENS and r["answer_tokens"] == 6 * 4 for r in log)
    assert log[-1]["answer_ce"] < log[0]["answer_ce"] - 0.1, log
    assert all(r["lm_kl"] < 0.5 for r in log), log


def test_fa_baseline_trains_without_the_swaa_mask(lm_data, tiny, tmp_path, monkeypatch):
    path, _, _ = lm_data
    seen = []
    real = ft.swaa_masks

    def recording(model, specs, batch, kernel):
        seen.append(specs)
        return real(model, specs, batch, kernel)

    monkeypatch.setattr(ft, "swaa_masks", recording)
    cfg = ft.TrainConfig(data=path, out=str(tmp_path / "fa"), swaa=SWAAConfig(), fa_baseline=True, max_steps=2,
                         max_batch_tokens=600, save_every=100)
    ft.finetune(cfg, copy.deepcopy(tiny), progress=False)
    assert len(seen) == 2
    assert all(s.kind == AttentionKind.FULL and s.window is None for specs in seen for s in specs)
    assert SWAAConfig.from_dict(json.load(open(tmp_path / "fa" / "adapter" / "swaa.json"))).is_full
    # ... and those masks are plain causal attention per example: the model's own logits
    ex = read_examples(path)[0]
    b = pack([ex])
    with torch.no_grad(), swaa_masks(tiny, seen[0], b, "sdpa"):
        torch.testing.assert_close(all_logits(tiny, b), tiny(b.input_ids).logits[0], atol=1e-5, rtol=1e-5)
    with pytest.raises(ValueError, match="fa_baseline"):
        ft.TrainConfig(data="x", out="y", swaa=SWAA, fa_baseline=True)
    with pytest.raises(ValueError, match="swaa: SWA-aware fine-tuning needs a sliding window"):
        ft.TrainConfig(data="x", out="y", swaa=SWAAConfig())
    from swaa_server.cli import build_parser

    args = build_parser({}).parse_args(["finetune", "--data", "d", "--out", "o", "--full-attention", "--lm-ratio", "0.5"])
    assert args.full_attention and args.lm_ratio == 0.5
