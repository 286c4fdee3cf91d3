"""GPU: every attention path of the `flash` (flash-attn-4) and `torch` backends against float64 by
relative error in bf16, through real paged and ring caches."""

import pytest
import torch

from swaa_engine.swaa import AttentionKind
from tests.engine.test_attention_backend import run_backend

pytestmark = pytest.mark.gpu


@pytest.mark.parametrize("backend", ["flash", "torch"])
@pytest.mark.parametrize("kind", list(AttentionKind))
@pytest.mark.parametrize("window,sinks,block_size", [(64, 0, 16), (64, 4, 16), (48, 5, 128), (200, 16, 128)])
def test_backend_matches_float64_in_bf16(backend, kind, window, sinks, block_size):
    err = run_backend(backend, "cuda", torch.bfloat16, kind, window, sinks, heads=(8, 2, 128), block_size=block_size,
                      lens=(300, 130, 1, 77), generated=40, max_chunk=96)
    assert err <= 1e-2, err


def test_auto_picks_flash_on_cuda():
    from swaa_engine.attention.base import CacheGeometry, create_backend

    b = create_backend("auto", torch.device("cuda"), geometry=CacheGeometry(128, None, 0), num_heads=8, num_kv_heads=2, head_dim=128)
    assert b.name == "flash"


@pytest.mark.parametrize("block_size", [16, 128])
def test_flash_is_not_refused_at_head_dim_128(block_size):
    """`create_backend("flash")` falls back to torch when the probe refuses the shapes; the parametrized "flash" rows
    above would then check the torch backend twice and pass. They mean flash-attn-4 only if this passes."""
    from swaa_engine.attention.base import CacheGeometry
    from swaa_engine.attention.flash_backend import FlashBackend

    why = FlashBackend.refuses(torch.device("cuda"), geometry=CacheGeometry(block_size, 64, 4), num_heads=8,
                               num_kv_heads=2, head_dim=128)
    assert why is None, why
