"""The decoder layer's fused pointwise kernels against their torch definitions (``models/pointwise.py``).
On CUDA the kernels compile and run in bfloat16; without it they run under Triton's interpreter in
float32 (its numpy has no bfloat16), which is how CI checks them."""

import os

import pytest
import torch

from swaa_engine.models import pointwise

if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")  # read when the kernels are defined
fused = pytest.importorskip("swaa_engine.kernels.fused")
pytestmark = pytest.mark.triton

DEV = torch.device("cuda" if torch.cuda.is_available() else "cpu")
DTYPES = [torch.float32, torch.bfloat16] if DEV.type == "cuda" else [torch.float32]


def close(out, ref, scale=1.0):
    """bfloat16: the kernels round where the eager ops do, but a product may still land one ulp apart (the CUDA
    kernel against CPU eager ops), and where RoPE's two products nearly cancel that ulp of the product's
    magnitude (``scale``) is all that is left of the sum."""
    tol = dict(rtol=1e-5, atol=1e-5) if out.dtype == torch.float32 else dict(rtol=8e-3, atol=2 ** -7 * scale)
    torch.testing.assert_close(out.cpu(), ref.cpu(), **tol)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("with_residual", [False, True])
def test_add_rms_norm(dtype, with_residual):
    torch.manual_seed(0)
    T, N = 7, 48  # N not a power of two: the row is masked
    x = torch.randn(T, N, device=DEV).to(dtype)
    res = torch.randn(T, N, device=DEV).to(dtype) if with_residual else None
    w = (1 + 0.1 * torch.randn(N, device=DEV)).to(dtype)
    ref_out, ref_res = pointwise.add_rms_norm(x.cpu(), None if res is None else res.cpu(), w.cpu(), 1e-6)
    xk, rk = x.clone(), None if res is None else res.clone()
    fused.add_rms_norm_(xk, rk, w, 1e-6)
    close(xk, ref_out)
    if with_residual:
        assert torch.equal(rk.cpu(), ref_res)  # one rounded add: bit-exact


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("norm", [False, True])
@pytest.mark.parametrize("heads,kv_heads,dim", [(4, 2, 16), (3, 1, 32), (8, 8, 8)])
def test_qk_norm_rope(dtype, norm, heads, kv_heads, dim):
    torch.manual_seed(1)
    T, max_pos = 6, 64
    qkv = torch.randn(T, (heads + 2 * kv_heads) * dim, device=DEV).to(dtype)
    inv = 1.0 / (10000 ** (torch.arange(0, dim, 2, dtype=torch.float32) / dim))
    freqs = torch.arange(max_pos, dtype=torch.float32)[:, None] * inv[None, :]
    emb = torch.cat((freqs, freqs), dim=-1)
    cos, sin = emb.cos().to(DEV), emb.sin().to(DEV)
    pos = torch.tensor([0, 5, 63, 17, 17, 2], device=DEV)
    qw = (1 + 0.1 * torch.randn(dim, device=DEV)).to(dtype) if norm else None
    kw = (1 + 0.1 * torch.randn(dim, device=DEV)).to(dtype) if norm else None
    cpu = lambda t: None if t is None else t.cpu()  # noqa: E731
    ref_q, ref_k = pointwise.qk_norm_rope(qkv.cpu(), heads, kv_heads, dim, pos.cpu(), cos.cpu(), sin.cpu(), cpu(qw),
                                          cpu(kw), 1e-6)
    before = qkv.clone()
    q, k = fused.qk_norm_rope(qkv, heads, kv_heads, dim, pos, cos, sin, qw, kw, 1e-6)
    assert q.is_contiguous() and k.is_contiguous() and torch.equal(qkv, before)  # the projection is left as it was
    scale = qkv.abs().max().item()  # the products' magnitude bound (|cos|, |sin| <= 1; norm weights near 1)
    close(q, ref_q, scale)
    close(k, ref_k, scale)


@pytest.mark.parametrize("dtype", DTYPES)
def test_silu_mul(dtype):
    torch.manual_seed(2)
    T, n = 5, 1500  # more than one column block, the last one partial
    gate_up = (3 * torch.randn(T, 2 * n, device=DEV)).to(dtype)
    close(fused.silu_mul(gate_up), pointwise.silu_mul(gate_up.cpu()))


def test_empty_step_launches_nothing():
    x = torch.empty(0, 16, device=DEV)
    fused.add_rms_norm_(x, x.clone(), torch.ones(16, device=DEV), 1e-6)
    assert fused.silu_mul(torch.empty(0, 32, device=DEV)).shape == (0, 16)
