"""GPU: a random Gemma-3-shaped model (head_dim 256, one KV head, its own sliding layers of window 64 beside full
ones) on the `flash` backend (flash-attn-4) in bf16, greedy tokens checked against the slow reference (transformers
with explicit per-layer masks, float32 activations, the same bf16-rounded weights) as tests/gpu/test_engine_gpu.py
does, for the native model and SWAA on top of it.

flash-attn-4 accepts head_dim up to 256 on SM 9.0 (its own shape check), but whether each call form compiles and
computes right at 256 is known only on the card. The designed behaviour (attention/base.py `create_backend`,
`FlashBackend.refuses`): the backend runs a tiny probe of its three call forms against float32 first; if the probe
fails, the engine starts on the torch backend with a warning naming the reason instead of failing its first step.
These tests assert whichever of the two the probe decides, and that the tokens are right either way."""

import logging
import random

import pytest
import torch

from swaa_engine.config import CacheConfig, SchedulerConfig
from swaa_engine.engine import LLM
from swaa_engine.sampling_params import SamplingParams
from swaa_engine.swaa import AttentionKind, SWAAConfig
from tests.gpu.test_engine_gpu import TIE, margins

pytestmark = pytest.mark.gpu
VOCAB, HEADS, KV_HEADS, HEAD_DIM, NATIVE = 1024, 4, 1, 256, 64
CONFIGS = {
    "native": SWAAConfig(),  # its own hybrid: window 64 on layers 0, 1, 3, 4; 2 and 5 full
    "same_window+sinks": SWAAConfig(window=NATIVE, sinks=8),  # one window: one backend, CUDA graphs
    "swa+sinks": SWAAConfig(window=96, sinks=8),  # two windows: two backends, eager decodes
    "swa+sinks+fa_decode+tail": SWAAConfig(window=96, sinks=8, fa_decode=True, fa_tail=24),
    "swa+sinks+keep5": SWAAConfig(window=96, sinks=8, fa_decode=[2], fa_layers=[5]),
}


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    from transformers import Gemma3ForCausalLM, Gemma3TextConfig

    cfg = Gemma3TextConfig(
        vocab_size=VOCAB, hidden_size=256, intermediate_size=512, num_hidden_layers=6, num_attention_heads=HEADS,
        num_key_value_heads=KV_HEADS, head_dim=HEAD_DIM, max_position_embeddings=4096, sliding_window=NATIVE,
        layer_types=["sliding_attention", "sliding_attention", "full_attention"] * 2, query_pre_attn_scalar=HEAD_DIM,
        initializer_range=0.25, rms_norm_eps=1e-6, pad_token_id=0,
        rope_parameters={"sliding_attention": {"rope_type": "default", "rope_theta": 10000.0},
                         "full_attention": {"rope_type": "default", "rope_theta": 1e6}},
    )
    torch.manual_seed(0)
    model = Gemma3ForCausalLM(cfg).eval()
    gen = torch.Generator().manual_seed(0)
    with torch.no_grad():  # transformers starts Gemma's (1 + w) norms at w = 0: random ones check that form too
        for name, p in model.named_parameters():
            if name.endswith("norm.weight"):
                p.copy_(torch.randn(p.shape, generator=gen) * 0.3)
    f = tmp_path_factory.mktemp("gemma3-gpu")
    model.save_pretrained(f)
    return str(f)


@pytest.fixture(scope="module")
def hf(folder):
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.bfloat16)
    return model.float().cuda().eval()  # bf16-rounded weights, as the engine holds them


@pytest.fixture(scope="module")
def refusal():
    """What the flash backend's probe says about these shapes on this card (None: flash runs them)."""
    from swaa_engine.attention.base import CacheGeometry
    from swaa_engine.attention.flash_backend import FlashBackend

    why = FlashBackend.refuses(torch.device("cuda"), geometry=CacheGeometry(128, NATIVE, 0), num_heads=HEADS,
                               num_kv_heads=KV_HEADS, head_dim=HEAD_DIM, scale=HEAD_DIM**-0.5)
    print(f"flash-attn-4 at head_dim {HEAD_DIM}: {'runs' if why is None else 'refused: ' + why}")
    return why


@pytest.fixture(scope="module")
def prompts():
    rng = random.Random(0)
    return [[rng.randrange(1, VOCAB) for _ in range(n)] for n in (700, 130, 333, 9)]


def test_flash_at_head_dim_256_matches_float64_or_falls_back(refusal, caplog):
    """The backend alone, through real paged caches and rings: within bf16 error of float64 when flash-attn-4
    runs head_dim 256; otherwise `create_backend("flash")` hands out the torch backend with a warning."""
    from tests.engine.test_attention_backend import run_backend

    for kind in AttentionKind:
        with caplog.at_level(logging.WARNING, logger="swaa_engine.attention.base"):
            err = run_backend("flash", "cuda", torch.bfloat16, kind, 64, 8, heads=(HEADS, KV_HEADS, HEAD_DIM),
                              block_size=128, lens=(300, 130, 1, 77), generated=40, max_chunk=96)
        assert err <= 1e-2, (kind, err)
        warned = any("refuses this model" in r.getMessage() for r in caplog.records)
        assert warned == (refusal is not None), caplog.text
        caplog.clear()


@pytest.mark.parametrize("name", list(CONFIGS))
def test_gemma_shaped_engine_on_flash_follows_the_reference(name, folder, hf, prompts, refusal, caplog):
    from swaa_engine.reference import SWAAReference

    swaa = CONFIGS[name]
    with caplog.at_level(logging.WARNING, logger="swaa_engine.attention.base"):
        llm = LLM(folder, swaa=swaa, dtype="bfloat16", device="cuda", attention_backend="flash",
                  cache=CacheConfig(block_size=128, budget_bytes=256 << 20),
                  scheduler=SchedulerConfig(max_num_batched_tokens=256))
    if refusal is None:
        assert llm.engine.backend.name == "flash"
    else:  # the designed fallback: the torch backend, and the reason in the log
        assert llm.engine.backend.name == "torch"
        assert "refuses this model" in caplog.text
    windows = {s.window for s in llm.engine.specs if s.window is not None}
    assert (llm.engine.runner.graphs is not None) == (len(windows) == 1)  # one window: decodes replay graphs
    outs = [o.token_ids for o in llm.generate(prompts, SamplingParams(max_tokens=100, ignore_eos=True))]
    ref = SWAAReference(hf, swaa)
    m = [x for p, gen in zip(prompts, outs) for x in margins(ref, p, gen)]
    ties = sum(x > 0 for x in m)
    print(f"{name} on {llm.engine.backend.name}: worst {max(m):.2%}, {ties} of {len(m)} tokens not the reference's argmax")
    assert max(m) < TIE, f"a token {max(m):.2%} of the logit scale below the reference's best"
    assert ties <= 0.06 * len(m), f"{ties} of {len(m)} tokens are not the reference's argmax"
