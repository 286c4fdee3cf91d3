"""Models with sliding windows of their own (issue 22): Gemma 3 (five sliding layers, then a full one) and
Mistral with ``sliding_window``, as tiny random float32 models on CPU.

Without SWAA the engine decodes token for token as transformers' own model does (which implements the native
window); with SWAA on top (a window on the full layers, sinks and fa_decode on every sliding layer) it decodes
as the explicit-mask reference. Prompts are many native windows long; prefill chunks split them mid-window.
"""

import random
from dataclasses import replace

import pytest
import torch

from swaa_engine.config import CacheConfig, SchedulerConfig
from swaa_engine.engine import LLM
from swaa_engine.models.registry import native_windows
from swaa_engine.reference import SWAAReference
from swaa_engine.sampling_params import SamplingParams
from swaa_engine.errors import ConfigError
from swaa_engine.swaa import AttentionKind, SWAAConfig

NATIVE_WINDOW = 8
VOCAB = 384


def _random_norms(model, seed: int) -> None:
    """transformers initialises Gemma's norms at 0 (a scale of 1 + 0): random ones check the 1 + w form."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith("norm.weight"):
                p.copy_(torch.randn(p.shape, generator=gen) * 0.3)


@pytest.fixture(scope="module")
def tiny_gemma3(tmp_path_factory):
    """(folder, transformers Gemma3ForCausalLM in float32): layers 0, 1, 3, 4 slide by 8, layers 2 and 5 are full.
    query_pre_attn_scalar differs from head_dim, the final logits are soft-capped, the full layers' RoPE is
    linearly scaled: each detail shows if the engine misses it."""
    from transformers import Gemma3ForCausalLM, Gemma3TextConfig

    cfg = Gemma3TextConfig(
        vocab_size=VOCAB, hidden_size=64, intermediate_size=160, num_hidden_layers=6, num_attention_heads=4,
        num_key_value_heads=1, head_dim=32, max_position_embeddings=1024, sliding_window=NATIVE_WINDOW,
        layer_types=["sliding_attention", "sliding_attention", "full_attention"] * 2, query_pre_attn_scalar=20,
        final_logit_softcapping=8.0, initializer_range=0.25, rms_norm_eps=1e-6, pad_token_id=0,
        rope_parameters={"sliding_attention": {"rope_type": "default", "rope_theta": 10000.0},
                         "full_attention": {"rope_type": "linear", "factor": 4.0, "rope_theta": 1e6}},
    )
    torch.manual_seed(0)
    model = Gemma3ForCausalLM(cfg).to(torch.float32).eval()
    _random_norms(model, 0)
    folder = tmp_path_factory.mktemp("tiny-gemma3")
    model.save_pretrained(folder)
    return str(folder), model


@pytest.fixture(scope="module")
def tiny_mistral(tmp_path_factory):
    """(folder, transformers MistralForCausalLM in float32) sliding every layer by 8."""
    from transformers import AutoModelForCausalLM, MistralConfig

    cfg = MistralConfig(vocab_size=VOCAB, hidden_size=64, intermediate_size=160, num_hidden_layers=4,
                        num_attention_heads=4, num_key_value_heads=2, head_dim=16, max_position_embeddings=1024,
                        sliding_window=NATIVE_WINDOW, initializer_range=0.25, rms_norm_eps=1e-6)
    torch.manual_seed(1)
    model = AutoModelForCausalLM.from_config(cfg, dtype=torch.float32).eval()
    folder = tmp_path_factory.mktemp("tiny-mistral")
    model.save_pretrained(folder)
    return str(folder), model


@pytest.fixture(scope="module")
def prompts():
    rng = random.Random(0)
    return [[rng.randrange(1, VOCAB) for _ in range(n)] for n in (70, 23, 41, 5)]


def engine(folder, swaa=SWAAConfig(), **kw):
    return LLM(folder, swaa=swaa, cache=CacheConfig(block_size=8, budget_bytes=8 << 20),
               scheduler=SchedulerConfig(max_num_batched_tokens=20), **kw)


def transformers_greedy(hf, prompt, n):
    """transformers' own decoding (its cache and its native sliding-window masks)."""
    with torch.inference_mode():
        out = hf.generate(torch.tensor([prompt]), max_new_tokens=n, do_sample=False, min_new_tokens=n,
                          pad_token_id=0, eos_token_id=None)
    return out[0, len(prompt):].tolist()


def assert_reference_parity(ref, prompts, outs, steps):
    for p, o in zip(prompts, outs):
        assert len(o.token_ids) == steps
        mismatch = ref.first_greedy_mismatch(p, o.token_ids)
        assert mismatch is None, f"token {mismatch[0]}: reference picks {mismatch[1]} by a margin of {mismatch[2]:.3g}"


def test_native_windows_read_from_configs(tiny_gemma3, tiny_mistral):
    from transformers import MistralConfig, Qwen2Config

    W = NATIVE_WINDOW
    assert native_windows(tiny_gemma3[1].config) == (W, W, None, W, W, None)
    assert native_windows(tiny_mistral[1].config) == (W,) * 4
    assert native_windows(MistralConfig(num_hidden_layers=3, sliding_window=None)) == (None,) * 3
    qwen = Qwen2Config(num_hidden_layers=4, use_sliding_window=True, sliding_window=32, max_window_layers=2)
    assert native_windows(qwen) == (None, None, 32, 32)  # as transformers' Qwen2 attends
    assert native_windows(Qwen2Config(num_hidden_layers=4)) == (None,) * 4


@pytest.mark.parametrize("model", ["gemma3", "mistral"])
def test_greedy_equals_transformers_own_model(model, tiny_gemma3, tiny_mistral, prompts):
    """No SWAA: the model's own sliding layers run on ring caches, and decode as transformers does."""
    folder, hf = tiny_gemma3 if model == "gemma3" else tiny_mistral
    llm = engine(folder)
    kinds = [s.kind for s in llm.engine.specs]
    assert kinds.count(AttentionKind.SLIDING_RING) == 4
    assert {s.window for s in llm.engine.specs if s.window} == {NATIVE_WINDOW}
    outs = llm.generate(prompts, SamplingParams(max_tokens=20, ignore_eos=True))
    for p, o in zip(prompts, outs):
        assert o.token_ids == transformers_greedy(hf, p, 20)
    # the window matters: the same weights with every layer full decode differently on the long prompt
    full = SWAAReference(hf, SWAAConfig())
    full.specs = tuple(replace(s, kind=AttentionKind.FULL, window=None, sinks=0) for s in full.specs)
    assert full.greedy(prompts[0], 20) != outs[0].token_ids


def test_gemma3_logits_match_transformers(tiny_gemma3):
    """Every position's logits of one 120-token prefill (15 native windows) against transformers' forward."""
    from swaa_engine.attention.base import StepEntry, StepLayout
    from swaa_engine.models.llama import AttentionContext
    from swaa_engine.sequence import Sequence

    folder, hf = tiny_gemma3
    eng = engine(folder).engine
    ids = list(range(3, 123))
    seq = Sequence("x", ids, SamplingParams())
    eng.cache.allocate(seq, len(ids))
    meta = eng.backend.prepare(StepLayout((StepEntry(0, len(ids), len(ids), tuple(seq.block_table), seq.ring),), 0))
    ours = eng.model.logits(eng.model(torch.tensor(ids), torch.arange(len(ids)), AttentionContext(eng.backend, meta, eng.runner.caches, eng.specs)))
    with torch.inference_mode():
        theirs = hf(torch.tensor([ids])).logits[0].float()
    assert (ours - theirs).abs().max() < 1e-4 * theirs.abs().max()
    # and the explicit-mask reference, with no knob set, is transformers' model too
    ref = SWAAReference(hf, SWAAConfig()).logits(ids, len(ids))
    assert (ref - theirs).abs().max() < 1e-4 * theirs.abs().max()


GEMMA_SWAA = {  # (no knob: test_greedy_equals_transformers_own_model, and the reference is transformers' logits)
    "swa": SWAAConfig(window=16),  # full layers slide by 16, native ones by 8: two backends
    "swa+sinks": SWAAConfig(window=16, sinks=2),
    "swa+sinks+fa_decode": SWAAConfig(window=16, sinks=2, fa_decode=True),
    "swa+sinks+keep5": SWAAConfig(window=12, sinks=3, fa_decode=[0, 2], fa_layers=[5]),
    "same_window": SWAAConfig(window=NATIVE_WINDOW, sinks=2),  # one window: one backend
    "native+sinks+fa_decode": SWAAConfig(sinks=2, fa_decode=True),  # no window: the native layers only
}


@pytest.mark.parametrize("name", list(GEMMA_SWAA))
def test_gemma3_swaa_on_top_equals_reference(name, tiny_gemma3, prompts):
    folder, hf = tiny_gemma3
    swaa = GEMMA_SWAA[name]
    llm = engine(folder, swaa)
    outs = llm.generate(prompts, SamplingParams(max_tokens=30, ignore_eos=True))
    assert_reference_parity(SWAAReference(hf, swaa), prompts, outs, 30)
    assert llm.engine.cache.is_idle()


MISTRAL_SWAA = {
    "native": SWAAConfig(),
    "sinks": SWAAConfig(sinks=2),
    "sinks+fa_decode": SWAAConfig(sinks=2, fa_decode=True),
    "sinks+fa_decode_odd": SWAAConfig(sinks=3, fa_decode="odd"),
}


@pytest.mark.parametrize("name", list(MISTRAL_SWAA))
def test_mistral_swaa_on_top_equals_reference(name, tiny_mistral, prompts):
    folder, hf = tiny_mistral
    swaa = MISTRAL_SWAA[name]
    outs = engine(folder, swaa).generate(prompts, SamplingParams(max_tokens=30, ignore_eos=True))
    assert_reference_parity(SWAAReference(hf, swaa), prompts, outs, 30)


def test_knobs_differ_on_top_of_the_native_window(tiny_gemma3, prompts):
    """The SWAA knobs really change what a native model computes (so the parity above is not vacuous)."""
    folder, _ = tiny_gemma3
    runs = {name: tuple(engine(folder, swaa).generate(prompts[:1], SamplingParams(max_tokens=20, ignore_eos=True))[0].token_ids)
            for name, swaa in [("native", SWAAConfig()), *((n, GEMMA_SWAA[n]) for n in ("swa", "swa+sinks", "native+sinks+fa_decode"))]}
    assert len(set(runs.values())) == 4


def test_a_window_on_an_all_sliding_model_is_refused(tiny_mistral):
    with pytest.raises(ConfigError) as e:
        engine(tiny_mistral[0], SWAAConfig(window=16))
    assert e.value.field == "window" and "own window" in str(e.value)
    with pytest.raises(ConfigError) as e:
        engine(tiny_mistral[0], SWAAConfig(window=16, fa_layers=[1]))
    assert e.value.field in ("window", "fa_layers")


@pytest.mark.parametrize("swap", [True, False], ids=["swap", "recompute"])
def test_two_windows_survive_preemption(swap, tiny_gemma3, prompts):
    """Rings of two sizes (native 8 + sinks, SWAA 16 + sinks) swapped out and back, or recomputed."""
    folder, _ = tiny_gemma3
    swaa = SWAAConfig(window=16, sinks=2, fa_layers=[5])  # layer 5 paged, others rings of 10 and 18 slots
    params = SamplingParams(max_tokens=30, ignore_eos=True)
    want = [o.token_ids for o in engine(folder, swaa).generate(prompts, params)]
    kv_token = 2 * 1 * 32 * 4  # K+V, one kv head, head dim, fp32
    budget = 20 * 8 * kv_token + 4 * (4 * 10 + 18) * kv_token  # 20 blocks of 8 for the paged layer: too few for all
    tight = LLM(folder, swaa=swaa, max_model_len=160, cache=CacheConfig(block_size=8, budget_bytes=budget,
                                                                       swap_bytes=None if swap else 0),
                scheduler=SchedulerConfig(max_num_seqs=4, max_num_batched_tokens=20))
    outs = tight.generate(prompts, params)
    stats = tight.engine.scheduler.stats
    assert stats.preemptions > 0
    assert (stats.swapped_out > 0) == swap
    assert [o.token_ids for o in outs] == want
    assert tight.engine.cache.is_idle() and len(tight.engine.swapper) == 0


def test_flash_refusing_gemma_head_dim_serves_on_torch(tiny_gemma3, prompts, monkeypatch, caplog):
    """`--attention-backend flash` on a model whose head_dim the kernel refuses (emulated here; Gemma 3's 256 on
    the GPU host: tests/gpu/test_gemma_flash.py): the engine starts on the torch backend, says so, and decodes
    as transformers' own model."""
    import importlib.util
    import logging

    from tests.engine.test_attention_backend import _fake_fa4_refusing

    if importlib.util.find_spec("flash_attn") is not None:
        pytest.skip("the real flash-attn-4 is installed: tests/gpu checks it")
    _fake_fa4_refusing(monkeypatch, lambda q, k: "raise")
    folder, hf = tiny_gemma3
    with caplog.at_level(logging.WARNING, logger="swaa_engine.attention.base"):
        llm = engine(folder, attention_backend="flash")
    assert llm.engine.backend.name == "torch"
    assert any("refuses this model" in r.getMessage() for r in caplog.records)
    outs = llm.generate(prompts[:2], SamplingParams(max_tokens=12, ignore_eos=True))
    for p, o in zip(prompts[:2], outs):
        assert o.token_ids == transformers_greedy(hf, p, 12)


def test_gemma3_forward_makes_no_tensor_on_the_device_from_host_values(tiny_gemma3, monkeypatch):
    """The decode graphs capture this forward. ``torch.tensor(x, device=cuda)`` inside it is a synchronous host→device
    copy: a host stall every eager step, and cudaErrorStreamCaptureUnsupported while a graph is being captured (the
    engine then fails to start with CUDA graphs on). A CPU run cannot fail that way, so the calls are watched."""
    from swaa_engine.attention.base import StepEntry, StepLayout
    from swaa_engine.models.llama import AttentionContext
    from swaa_engine.sequence import Sequence

    folder, _ = tiny_gemma3
    eng = engine(folder).engine
    ids = list(range(3, 23))
    seq = Sequence("x", ids, SamplingParams())
    eng.cache.allocate(seq, len(ids))
    meta = eng.backend.prepare(StepLayout((StepEntry(0, len(ids), len(ids), tuple(seq.block_table), seq.ring),), 0))
    ctx = AttentionContext(eng.backend, meta, eng.runner.caches, eng.specs)
    input_ids, positions = torch.tensor(ids), torch.arange(len(ids))
    made, real = [], torch.tensor

    def watched(*args, **kwargs):
        if kwargs.get("device") is not None:
            made.append(kwargs["device"])
        return real(*args, **kwargs)

    monkeypatch.setattr(torch, "tensor", watched)
    eng.model.logits(eng.model(input_ids, positions, ctx))
    assert not made, f"torch.tensor(..., device=...) inside the forward: {made}"
