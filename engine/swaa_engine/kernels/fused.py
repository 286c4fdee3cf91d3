"""Fused pointwise kernels of the decoder layer (Triton): residual add + RMSNorm, q/k RMSNorm + RoPE, SiLU·mul.

Unfused, these ops launch ~10 kernels per layer and move several times the bytes a layer needs; at a
128k prefill they cost more than the attention of a sliding layer. Each kernel here reads its inputs
once and writes once, and rounds to the activation dtype at the same points as the eager ops they
replace (``models/pointwise.py`` holds those: the definition, and what runs on CPU), so the two agree to
the last bit except for the order of the float32 sum of squares.

They run under ``TRITON_INTERPRET=1`` on CPU tensors (float32 there: the interpreter's numpy has no
bfloat16), which is how CI checks them.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl


@triton.jit
def _add_rms_norm_kernel(x_ptr, res_ptr, w_ptr, n_cols, stride_x, stride_r, eps,
                         HAS_RES: tl.constexpr, BLOCK: tl.constexpr):
    row = tl.program_id(0).to(tl.int64)
    cols = tl.arange(0, BLOCK)
    mask = cols < n_cols
    dt = x_ptr.dtype.element_ty
    x = tl.load(x_ptr + row * stride_x + cols, mask=mask, other=0.0)
    if HAS_RES:
        r = tl.load(res_ptr + row * stride_r + cols, mask=mask, other=0.0)
        x = (x.to(tl.float32) + r.to(tl.float32)).to(dt)  # the residual stream is kept in the activation dtype
        tl.store(res_ptr + row * stride_r + cols, x, mask=mask)
    xf = x.to(tl.float32)
    rstd = tl.rsqrt(tl.sum(xf * xf, axis=0) / n_cols + eps)
    y = (xf * rstd).to(dt)
    w = tl.load(w_ptr + cols, mask=mask, other=0.0)
    tl.store(x_ptr + row * stride_x + cols, (w.to(tl.float32) * y.to(tl.float32)).to(dt), mask=mask)


def add_rms_norm_(x: torch.Tensor, residual: torch.Tensor | None, weight: torch.Tensor, eps: float) -> None:
    """In place: ``residual += x`` (when given), then ``x = weight * rms_norm(residual or x)``. 2-D, rows contiguous."""
    T, N = x.shape
    if T == 0:
        return
    has_res = residual is not None
    _add_rms_norm_kernel[(T,)](x, residual if has_res else x, weight, N, x.stride(0),
                               residual.stride(0) if has_res else 0, eps,
                               HAS_RES=has_res, BLOCK=triton.next_power_of_2(N), num_warps=8 if N >= 2048 else 4)


@triton.jit
def _qk_norm_rope_kernel(qkv_ptr, q_ptr, k_ptr, qw_ptr, kw_ptr, cos_ptr, sin_ptr, pos_ptr, stride_t, stride_c,
                         num_q_heads, num_qk_heads, eps,
                         NORM: tl.constexpr, D: tl.constexpr, HB: tl.constexpr):
    t = tl.program_id(0).to(tl.int64)
    h = tl.program_id(1) * HB + tl.arange(0, HB)
    d = tl.arange(0, D)
    half: tl.constexpr = D // 2
    rot = (d + half) % D  # rotate_half(x)[d] = -x[d + D/2] for d < D/2, x[d - D/2] after
    sign = tl.where(d < half, -1.0, 1.0)
    dt = qkv_ptr.dtype.element_ty
    hmask = (h < num_qk_heads)[:, None]
    base = qkv_ptr + t * stride_t + h[:, None] * D
    x = tl.load(base + d[None, :], mask=hmask, other=0.0)
    xr = tl.load(base + rot[None, :], mask=hmask, other=0.0)
    if NORM:
        xf = x.to(tl.float32)
        rstd = tl.rsqrt(tl.sum(xf * xf, axis=1) / D + eps)[:, None]
        is_q = (h < num_q_heads)[:, None]
        w = tl.where(is_q, tl.load(qw_ptr + d)[None, :], tl.load(kw_ptr + d)[None, :]).to(tl.float32)
        wr = tl.where(is_q, tl.load(qw_ptr + rot)[None, :], tl.load(kw_ptr + rot)[None, :]).to(tl.float32)
        x = (w * (xf * rstd).to(dt).to(tl.float32)).to(dt)
        xr = (wr * (xr.to(tl.float32) * rstd).to(dt).to(tl.float32)).to(dt)
    p = tl.load(pos_ptr + t).to(tl.int64)
    c = tl.load(cos_ptr + p * stride_c + d).to(dt).to(tl.float32)[None, :]
    s = tl.load(sin_ptr + p * stride_c + d).to(dt).to(tl.float32)[None, :]
    a = (x.to(tl.float32) * c).to(dt).to(tl.float32)
    b = (xr.to(tl.float32) * sign[None, :] * s).to(dt).to(tl.float32)
    dst = tl.where(h < num_q_heads, q_ptr + (t * num_q_heads + h) * D, k_ptr + (t * (num_qk_heads - num_q_heads) + h - num_q_heads) * D)
    tl.store(dst[:, None] + d[None, :], (a + b).to(dt), mask=hmask)


def qk_norm_rope(qkv: torch.Tensor, num_heads: int, num_kv_heads: int, head_dim: int, positions: torch.Tensor,
                 cos: torch.Tensor, sin: torch.Tensor, q_weight: torch.Tensor | None, k_weight: torch.Tensor | None,
                 eps: float) -> tuple[torch.Tensor, torch.Tensor]:
    """q ``[T, H*D]`` and k ``[T, Hk*D]`` (contiguous) from the q and k heads of a packed ``[T, (H + 2 Hk) * D]``
    projection: optional per-head RMSNorm (``q_weight``/``k_weight``), then RoPE at ``positions`` from float32
    ``[max_pos, D]`` tables."""
    T = qkv.shape[0]
    q = torch.empty(T, num_heads * head_dim, dtype=qkv.dtype, device=qkv.device)
    k = torch.empty(T, num_kv_heads * head_dim, dtype=qkv.dtype, device=qkv.device)
    if T:
        qk, hb = num_heads + num_kv_heads, 4
        _qk_norm_rope_kernel[(T, triton.cdiv(qk, hb))](
            qkv, q, k, q_weight if q_weight is not None else cos, k_weight if k_weight is not None else cos, cos, sin,
            positions, qkv.stride(0), cos.stride(0), num_heads, qk, eps, NORM=q_weight is not None, D=head_dim, HB=hb,
            num_warps=4)
    return q, k


@triton.jit
def _silu_mul_kernel(x_ptr, out_ptr, n_cols, stride_x, stride_o, BLOCK: tl.constexpr):
    t = tl.program_id(0).to(tl.int64)
    cols = tl.program_id(1) * BLOCK + tl.arange(0, BLOCK)
    mask = cols < n_cols
    dt = out_ptr.dtype.element_ty
    g = tl.load(x_ptr + t * stride_x + cols, mask=mask, other=0.0).to(tl.float32)
    u = tl.load(x_ptr + t * stride_x + n_cols + cols, mask=mask, other=0.0).to(tl.float32)
    act = (g / (1.0 + tl.exp(-g))).to(dt).to(tl.float32)
    tl.store(out_ptr + t * stride_o + cols, (act * u).to(dt), mask=mask)


def silu_mul(gate_up: torch.Tensor) -> torch.Tensor:
    """``silu(gate) * up`` for ``gate_up = [gate | up]`` along the last dimension."""
    T, n2 = gate_up.shape
    n = n2 // 2
    out = torch.empty(T, n, dtype=gate_up.dtype, device=gate_up.device)
    if T:
        block = 1024
        _silu_mul_kernel[(T, triton.cdiv(n, block))](gate_up, out, n, gate_up.stride(0), out.stride(0), BLOCK=block,
                                                      num_warps=4)
    return out
