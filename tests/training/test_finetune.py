"""SWA-aware fine-tuning on the embedded model, CPU-sized: the training mask is the serving mask; a few steps
lower the loss; training is deterministic and resumable; the merged adapter serves like transformers+peft."""

import copy
import json
import os
import random

import pytest
import torch

from swaa_engine.config import ConfigError
from swaa_engine.engine import LLM
from swaa_engine.reference import SWAAReference
from swaa_engine.sampling_params import SamplingParams
from swaa_engine.swaa import SWAAConfig
from swaa_eval.scoring import score
from swaa_train import finetune as ft
from swaa_train.attention import all_logits, answer_logits, swaa_masks
from swaa_train.distill import DistillConfig, distill, read_examples
from swaa_train.packing import Example, batches, pack

CONFIGS = {
    "fa_decode+tail": SWAAConfig(window=32, sinks=4, fa_decode=True, fa_tail=8),
    "ring+half_fa": SWAAConfig(window=32, sinks=4, fa_layers="odd"),
    "fa_decode_every2": SWAAConfig(window=24, sinks=2, fa_decode="every:2"),
}
TRAIN_SWAA = SWAAConfig(window=64, sinks=4, fa_decode=True)


def random_examples(seed=0, shapes=((150, 20), (90, 7), (200, 30))):
    rng = random.Random(seed)
    return [Example(tuple(rng.randrange(100, 40000) for _ in range(n)), tuple(rng.randrange(100, 40000) for _ in range(a)))
            for n, a in shapes]


def test_pack_layout():
    exs = random_examples()
    b = pack(exs, fa_tail=5)
    assert b.bounds == ((0, 170), (170, 267), (267, 497))
    assert b.position_ids[0, 170].item() == 0 and b.position_ids[0, 266].item() == 96
    # full rows: the answer and the last 5 prompt tokens of each example
    assert b.full_row[:145].sum() == 0 and b.full_row[145:170].all()
    # targets are exactly the answer tokens, in order
    assert b.loss_target.tolist() == [t for e in exs for t in e.answer_ids]
    assert b.input_ids[0, b.loss_index + 1].tolist() == b.loss_target.tolist()
    assert batches(exs, 300) == [[0, 1], [2]]
    padded = pack(exs[:2], pad_to=300)
    assert padded.num_tokens == 300 and padded.bounds[-1] == (267, 300) and padded.doc[-1] == 2
    assert padded.loss_target.tolist() == pack(exs[:2]).loss_target.tolist()
    with pytest.raises(ValueError, match="max_tokens"):
        batches(exs, 200)


@pytest.mark.parametrize("name", list(CONFIGS))
def test_training_mask_is_the_serving_mask(name, smollm2):
    """One packed batch of three sequences: every row's logits equal the reference's for that sequence alone (prompt
    and answer parts), the answer log-probs equal the engine's teacher-forced scores, and flex equals sdpa."""
    hf, tok = smollm2
    swaa = CONFIGS[name]
    exs = random_examples()
    specs = swaa.layer_specs(hf.config.num_hidden_layers)
    b = pack(exs, fa_tail=swaa.fa_tail)
    with torch.no_grad():
        with swaa_masks(hf, specs, b, "sdpa"):
            logits = all_logits(hf, b)
            ans = answer_logits(hf, b)
        padded = pack(exs, fa_tail=swaa.fa_tail, pad_to=b.num_tokens + 40)
        with swaa_masks(hf, specs, padded, "flex"):
            flex = all_logits(hf, padded)[: b.num_tokens]
    ref = SWAAReference(hf, swaa)
    llm = LLM(None, swaa=swaa, hf_model=hf, tokenizer=tok, dtype="float32", max_model_len=512)
    off = 0
    for (s, e), ex in zip(b.bounds, exs):
        seq = list(ex.prompt_ids) + list(ex.answer_ids)
        r = ref.logits(seq, len(ex.prompt_ids))
        torch.testing.assert_close(logits[s:e], r, atol=5e-3, rtol=1e-4)
        engine_lp = torch.tensor(score(llm.engine, seq, len(ex.prompt_ids)))
        train_lp = ans[off: off + len(ex.answer_ids)].log_softmax(-1).gather(1, torch.tensor(ex.answer_ids)[:, None])[:, 0]
        torch.testing.assert_close(train_lp, engine_lp, atol=5e-3, rtol=1e-4)
        off += len(ex.answer_ids)
    torch.testing.assert_close(flex, logits, atol=5e-3, rtol=1e-4)
    # the masks matter: full attention gives other logits on these lengths
    with torch.no_grad(), swaa_masks(hf, SWAAConfig().layer_specs(hf.config.num_hidden_layers), b, "sdpa"):
        assert (all_logits(hf, b) - logits).abs().max() > 0.1


@pytest.fixture(scope="module")
def distilled(smollm2, tmp_path_factory):
    hf, tok = smollm2
    out = str(tmp_path_factory.mktemp("distill") / "data.jsonl")
    cfg = DistillConfig(out=out, lengths=(384,), samples=3, dtype="float32")
    first = distill(cfg, hf, tok, progress=False)
    again = distill(cfg, hf, tok, progress=False)  # resumes: nothing left to attempt
    return out, first, again


def test_distill_keeps_only_correct_answers(distilled, smollm2):
    path, first, again = distilled
    _, tok = smollm2
    assert first == again and first["attempted"] == 6 and 1 <= first["kept"] <= 6
    rows = [json.loads(line) for line in open(path)]
    assert len(rows) == first["kept"]
    for r in rows:
        assert r["meta"]["expected"] in tok.decode(r["answer_ids"])
        assert len(r["prompt_ids"]) == 384
    assert len(read_examples(path)) == len(rows)


def _loss(model, examples, swaa):
    b = pack(examples, fa_tail=swaa.fa_tail)
    with torch.no_grad(), swaa_masks(model, swaa.layer_specs(30), b, "sdpa"):
        return float(torch.nn.functional.cross_entropy(answer_logits(model, b), b.loss_target))


@pytest.fixture(scope="module")
def trained(distilled, smollm2, tmp_path_factory):
    path = distilled[0]
    hf, _ = smollm2
    out = str(tmp_path_factory.mktemp("ft"))
    cfg = ft.TrainConfig(data=path, out=out, swaa=TRAIN_SWAA, lr=3e-3, epochs=4, warmup=0.0, max_batch_tokens=4096,
                         save_every=2, seed=3)
    model = copy.deepcopy(hf)
    summary = ft.finetune(cfg, model, progress=False)
    return cfg, summary, model


def test_a_few_steps_lower_the_training_loss(trained, distilled, smollm2):
    cfg, summary, model = trained
    hf, _ = smollm2
    examples = read_examples(distilled[0])
    before = _loss(hf, examples, TRAIN_SWAA)
    model.eval()
    after = _loss(model, examples, TRAIN_SWAA)
    assert summary["steps"] == 4 and summary["kernel"] == "sdpa"
    assert after < before - 0.05, (before, after)
    log = ft.read_log(os.path.join(cfg.out, "log.jsonl"))
    assert [r["step"] for r in log] == [1, 2, 3, 4]
    for f in ("adapter/adapter_config.json", "adapter/adapter_model.safetensors", "adapter/swaa.json", "training.json"):
        assert os.path.isfile(os.path.join(cfg.out, f)), f
    assert SWAAConfig.from_dict(json.load(open(os.path.join(cfg.out, "adapter/swaa.json")))) == TRAIN_SWAA
    conf = json.load(open(os.path.join(cfg.out, "adapter/adapter_config.json")))
    assert conf["r"] == 16 and conf["lora_alpha"] == 32 and conf["use_rslora"] is True
    assert set(conf["target_modules"]) == {"q_proj", "k_proj", "v_proj"}


def test_training_is_deterministic_and_resumes(trained, smollm2, tmp_path, monkeypatch):
    """Same seed, same losses; a run interrupted after step 3 resumes from the step-2 checkpoint to the same end."""
    cfg, _, _ = trained
    hf, _ = smollm2
    ref_log = ft.read_log(os.path.join(cfg.out, "log.jsonl"))
    calls = {"n": 0}
    real_pack = ft.pack

    def failing_pack(*a, **k):
        calls["n"] += 1
        if calls["n"] == 4:
            raise KeyboardInterrupt
        return real_pack(*a, **k)

    cfg2 = ft.TrainConfig(**{**cfg.__dict__, "out": str(tmp_path)})
    monkeypatch.setattr(ft, "pack", failing_pack)
    with pytest.raises(KeyboardInterrupt):
        ft.finetune(cfg2, copy.deepcopy(hf), progress=False)
    assert os.path.isfile(tmp_path / "checkpoint" / "state.pt")
    monkeypatch.setattr(ft, "pack", real_pack)
    ft.finetune(cfg2, copy.deepcopy(hf), progress=False)
    log = ft.read_log(str(tmp_path / "log.jsonl"))
    assert [r["step"] for r in log] == [1, 2, 3, 4]
    for a, b in zip(log, ref_log):
        assert a["loss"] == pytest.approx(b["loss"], rel=1e-5, abs=1e-6), (a, b)


def test_merged_adapter_serves_like_peft(trained, distilled, smollm2, tmp_path):
    """The engine with --lora (merged at load) decodes greedily what transformers+peft (unmerged) does under the same
    SWAA mask; and the adapter really changes the model. `swaa merge` writes a folder the engine serves the same."""
    from peft import PeftModel

    cfg, _, _ = trained
    hf, tok = smollm2
    adapter = os.path.join(cfg.out, "adapter")
    ex = read_examples(distilled[0])[0]
    prompts = [list(ex.prompt_ids), tok.encode("The secret passkey is 12345. Remember it. What is the secret passkey?")]
    llm = LLM(None, swaa=TRAIN_SWAA, hf_model=hf, tokenizer=tok, dtype="float32", max_model_len=512, lora=adapter)
    outs = llm.generate(prompts, SamplingParams(max_tokens=12, ignore_eos=True))
    peft_model = PeftModel.from_pretrained(copy.deepcopy(hf), adapter).eval()
    ref = SWAAReference(peft_model, TRAIN_SWAA)
    base_ref = SWAAReference(hf, TRAIN_SWAA)
    for p, o in zip(prompts, outs):
        assert ref.first_greedy_mismatch(p, o.token_ids) is None
    seq = prompts[0] + outs[0].token_ids
    assert (ref.logits(seq, len(prompts[0])) - base_ref.logits(seq, len(prompts[0]))).abs().max() > 0.5
    assert llm.engine.model_name.endswith("+lora:adapter")

    from swaa_server.cli import main

    merged = str(tmp_path / "merged")
    assert main(["merge", "--lora", adapter, "--out", merged]) == 0
    assert SWAAConfig.from_dict(json.load(open(os.path.join(merged, "swaa.json")))) == TRAIN_SWAA
    llm2 = LLM(merged, swaa=TRAIN_SWAA, dtype="float32", max_model_len=512)
    outs2 = llm2.generate(prompts, SamplingParams(max_tokens=12, ignore_eos=True))
    assert [o.token_ids for o in outs2] == [o.token_ids for o in outs]


def test_bad_adapter_and_config_errors(smollm2, tmp_path):
    hf, tok = smollm2
    with pytest.raises(ConfigError, match="lora"):
        LLM(None, swaa=TRAIN_SWAA, hf_model=hf, tokenizer=tok, dtype="float32", max_model_len=256, lora=str(tmp_path))
    with pytest.raises(ValueError, match="swaa"):
        ft.TrainConfig(data="x", out="y", swaa=SWAAConfig())
    with pytest.raises(ValueError, match="kernel"):
        ft.TrainConfig(data="x", out="y", swaa=TRAIN_SWAA, kernel="cuda")
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"prompt_ids": [1, 2]}\n')
    with pytest.raises(ValueError, match="bad.jsonl:1"):
        read_examples(str(bad))
    from swaa_server.cli import build_parser, engine_config_from_args

    args = build_parser({}).parse_args(["serve", "--lora", str(tmp_path)])
    assert engine_config_from_args(args).lora == str(tmp_path)
