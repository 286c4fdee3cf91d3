"""The decoder layer's pointwise ops: residual add + RMSNorm, q/k RMSNorm + RoPE, SiLU·mul.

The torch versions here are the definition (float32 statistics and activation-dtype rounding where
transformers rounds) and what runs on CPU; on CUDA the same ops run as one Triton kernel each
(``kernels/fused.py``), which matters at long prefills and inside the captured decode graphs.
"""

from __future__ import annotations

import torch
from torch import nn

from swaa_engine.attention.ops import uses_triton


def fused(x: torch.Tensor) -> bool:
    return x.is_cuda and uses_triton(x.device)  # the fused kernels need what the attention kernels need: Triton on CUDA


def rms_norm(x: torch.Tensor, weight: torch.Tensor, eps: float) -> torch.Tensor:
    # float32 statistics as transformers does, so logits agree to fp32 tolerance
    return weight * nn.functional.rms_norm(x.float(), (x.shape[-1],), eps=eps).to(x.dtype)


def add_rms_norm(x: torch.Tensor, residual: torch.Tensor | None, weight: torch.Tensor,
                 eps: float) -> tuple[torch.Tensor, torch.Tensor]:
    """``(rms_norm(x + residual), x + residual)``; without a residual, ``(rms_norm(x), x)``. May reuse ``x``'s
    and ``residual``'s storage: the caller passes tensors it no longer needs."""
    if fused(x):
        from swaa_engine.kernels.fused import add_rms_norm_

        if residual is None:
            residual = x.clone()
            add_rms_norm_(x, None, weight, eps)
        else:
            add_rms_norm_(x, residual, weight, eps)
        return x, residual
    if residual is not None:
        x = residual + x
    return rms_norm(x, weight, eps), x


def rotate_half(x: torch.Tensor) -> torch.Tensor:
    x1, x2 = x.chunk(2, dim=-1)
    return torch.cat((-x2, x1), dim=-1)


def qk_norm_rope(qkv: torch.Tensor, num_heads: int, num_kv_heads: int, head_dim: int, positions: torch.Tensor,
                 cos: torch.Tensor, sin: torch.Tensor, q_weight: torch.Tensor | None, k_weight: torch.Tensor | None,
                 eps: float) -> tuple[torch.Tensor, torch.Tensor]:
    """q and k of a packed ``[T, (H + 2 Hk) * D]`` projection, each head RMS-normed (when weights are given)
    and rotated at ``positions``; ``cos``/``sin`` are the float32 ``[max_pos, D]`` tables. Returns ``q [T, H*D]``
    and ``k [T, Hk*D]``, contiguous."""
    if fused(qkv):
        from swaa_engine.kernels.fused import qk_norm_rope as kernel

        return kernel(qkv, num_heads, num_kv_heads, head_dim, positions, cos, sin, q_weight, k_weight, eps)
    T = qkv.shape[0]
    q_size, kv_size = num_heads * head_dim, num_kv_heads * head_dim
    qk = qkv[:, : q_size + kv_size].view(T, num_heads + num_kv_heads, head_dim)  # rotated in one pass
    if q_weight is not None:
        qk = torch.cat([rms_norm(qk[:, :num_heads], q_weight, eps), rms_norm(qk[:, num_heads:], k_weight, eps)], dim=1)
    c, s = cos[positions].to(qkv.dtype)[:, None, :], sin[positions].to(qkv.dtype)[:, None, :]
    qk = qk * c + rotate_half(qk) * s
    return qk[:, :num_heads].reshape(T, q_size), qk[:, num_heads:].reshape(T, kv_size)


def silu_mul(gate_up: torch.Tensor) -> torch.Tensor:
    """``silu(gate) * up`` for ``gate_up = [gate | up]`` along the last dimension."""
    if fused(gate_up):
        from swaa_engine.kernels.fused import silu_mul as kernel

        return kernel(gate_up)
    gate, up = gate_up.chunk(2, dim=-1)
    return nn.functional.silu(gate) * up
