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


GEMMA_NATIVE = ((512,) * 5 + (None,)) * 3  # Gemma 3 270M: full at 5, 11, 17


def test_hybrid_grid_slides_only_the_full_layers():
    """A natively hybrid model gets its own grid (the paper's odd/every:4 patterns would name its sliding layers,
    which SWAAConfig refuses): every config builds on its layers, its own windows stay, the kept layers are spread."""
    from swaa_engine.swaa import AttentionKind as K

    cfg = EvalConfig(out="x", native=GEMMA_NATIVE, lengths=(4096,))
    grid = cfg.grid()
    assert cfg.baseline == "native" and next(iter(grid)) == "native"
    assert set(grid) == {"native", "SWA", "SWA+sinks", "SWA+sinks+FA-decode", "SWA+sinks+FA-decode+tail32",
                         "SWA+FA-decode@5,11,17", "SWA+FA-decode@5,11,17+tail32",
                         "SWA+keep 1 full (11)", "SWA+keep 2 full (5,17)"}
    specs = {n: c.layer_specs(18, max_len=4200, native=GEMMA_NATIVE) for n, c in grid.items()}
    full = {n: [s.layer for s in sp if s.kind is K.FULL] for n, sp in specs.items()}
    assert full["native"] == [5, 11, 17] and full["SWA"] == [] and full["SWA+keep 1 full (11)"] == [11]
    assert full["SWA+keep 2 full (5,17)"] == [5, 17]
    for n, sp in specs.items():  # its own layers keep 512 everywhere; SWAA's window is 512 too here
        assert all(s.window == 512 for s in sp if s.layer not in (5, 11, 17)), n
    at_full = specs["SWA+FA-decode@5,11,17+tail32"]
    assert [s.layer for s in at_full if s.kind is K.SLIDING_FA_DECODE] == [5, 11, 17]
    # its own layers exactly as trained: rings of its window, no sinks
    assert all(s.sinks == 0 and s.kind is K.SLIDING_RING for s in at_full if s.layer not in (5, 11, 17))
    assert all(s.kind is K.SLIDING_FA_DECODE for s in specs["SWA+sinks+FA-decode"])
    assert EvalConfig(out="x").baseline == "FA" and "FA" in EvalConfig(out="x").grid()


class _WithBos:
    """A tokenizer that puts id 1 before any text when asked for special tokens (as Gemma's puts <bos>)."""

    def __init__(self, tok):
        self.tok = tok

    def encode(self, text, add_special_tokens=True):
        return ([1] if add_special_tokens else []) + self.tok.encode(text, add_special_tokens=False)


def test_prompts_start_as_the_tokenizer_starts_them(smollm2):
    plain = T.Haystack(smollm2[1], plays("eval")[:2])
    assert plain.start == []  # SmolLM2 adds nothing: its samples (and docs/eval tables) are unchanged
    bos = T.Haystack(_WithBos(smollm2[1]), plays("eval")[:2])
    assert bos.start == [1]
    for make in (T.passkey, T.multikey, T.lm):
        with_bos, without = make(bos, 0, 700, 2), make(plain, 0, 700, 2)
        assert len(with_bos.prompt_ids) == 700 and with_bos.prompt_ids[0] == 1 and without.prompt_ids[0] != 1
        assert with_bos.answer == without.answer


def test_precomputed_prompts_are_the_built_ones(smollm2, tmp_path):
    """`swaa eval --write-prompts` then `--prompts`: the host runs exactly the samples built here; a file built
    with another seed, or lacking a sample, is refused."""
    from swaa_eval.harness import _sample_source, build_samples

    cfg = EvalConfig(out=str(tmp_path), lengths=(400, 600), samples=2)
    built = build_samples(cfg, smollm2[1])
    path = str(tmp_path / "p.json.gz")
    T.save_samples(path, built, {"seed": 0})
    get = _sample_source(EvalConfig(out=str(tmp_path), lengths=(400, 600), samples=2, prompts=path), None)
    assert [get(s.task, s.length, s.index) for s in built] == built
    with pytest.raises(ValueError, match="seed"):
        _sample_source(EvalConfig(out="x", lengths=(400,), samples=1, seed=1, prompts=path), None)
    with pytest.raises(ValueError, match="lacks"):
        _sample_source(EvalConfig(out="x", lengths=(400, 800), samples=1, prompts=path), None)
