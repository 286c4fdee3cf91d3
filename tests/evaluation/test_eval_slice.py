"""A fast slice of `swaa eval` on the embedded model: full attention finds the passkey where naive SWA,
with a window too small to see it, cannot (a real check that the mask is applied); resume; report files."""

import json
import os

import pytest

from swaa_eval import tasks as T
from swaa_eval.harness import EvalConfig, run_grid, summarize, wilson, write_report
from swaa_eval.texts import plays


def test_splits_are_disjoint_and_real():
    ev, tr = dict(plays("eval")), dict(plays("train"))
    assert ev and tr and not set(ev) & set(tr)
    assert sum(len(t) > 50_000 for t in ev.values()) >= 10  # whole plays (a few short poems too)


def test_wilson_interval():
    lo, hi = wilson(5, 5)
    assert hi == 1.0 and 0.5 < lo < 0.6
    assert wilson(0, 4)[0] == 0.0


def test_samples_are_deterministic_and_sized(smollm2):
    hay = T.Haystack(smollm2[1], plays("eval")[:2])
    a, b = T.passkey(hay, 0, 700, 3), T.passkey(hay, 0, 700, 3)
    assert a == b and len(a.prompt_ids) == 700 and a.depth == T.DEPTHS[3]
    m = T.multikey(hay, 0, 900, 1)
    assert len(m.prompt_ids) == 900 and m.answer in smollm2[1].decode(list(m.prompt_ids))
    assert T.first_number(" 12345. Remember") == "12345"


def test_full_attention_finds_the_passkey_naive_swa_cannot(smollm2, tmp_path):
    hf, tok = smollm2
    cfg = EvalConfig(out=str(tmp_path), window=64, sinks=8, lengths=(600,), samples=2, tasks=("passkey", "lm"),
                     configs=("FA", "SWA"), dtype="float32")
    recs = run_grid(cfg, hf, tok, progress=False)
    cells = {(c.task, c.config): c for c in summarize(recs)}
    # needles at depths 0.1 and 0.3 of 600 tokens sit hundreds of tokens before the question: far outside 64
    assert cells[("passkey", "FA")].value == 1.0
    assert cells[("passkey", "SWA")].value == 0.0
    assert cells[("lm", "SWA")].value > cells[("lm", "FA")].value + 0.5  # the window also costs LM loss
    lines = open(os.path.join(tmp_path, "results.jsonl")).read().splitlines()
    assert len(lines) == 8
    run_grid(cfg, hf, tok, progress=False)  # resumes: nothing left to do
    assert len(open(os.path.join(tmp_path, "results.jsonl")).read().splitlines()) == 8
    table = write_report(cfg)
    assert "| FA | 2/2" in table and "| SWA | 0/2" in table
    assert json.load(open(os.path.join(tmp_path, "table.json")))
    assert os.path.exists(os.path.join(tmp_path, "plot.png"))


def test_config_validation():
    with pytest.raises(ValueError, match="tasks"):
        EvalConfig(out="x", tasks=("nope",))
    with pytest.raises(ValueError, match="configs"):
        EvalConfig(out="x", configs=("nope",))
