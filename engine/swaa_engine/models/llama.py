"""Llama-family decoder over packed variable-length batches (Llama, Qwen2, Qwen3, Mistral).

The variants differ only in details picked from the config: Qwen2 adds q/k/v biases, Qwen3
normalizes q and k per head. Attention is delegated to the step's ``AttentionContext``.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from swaa_engine.attention.base import AttentionBackend
from swaa_engine.models.dims import ModelDims
from swaa_engine.models.pointwise import add_rms_norm, qk_norm_rope, rms_norm, silu_mul
from swaa_engine.swaa import LayerSpec


class AttentionContext:
    """What every layer's attention needs for one step: backend, its metadata, the layer caches."""

    def __init__(self, backend: AttentionBackend, meta: Any, caches: list[tuple[torch.Tensor, torch.Tensor]], specs: tuple[LayerSpec, ...]):
        self.backend, self.meta, self.caches, self.specs = backend, meta, caches, specs

    def __call__(self, layer: int, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        return self.backend.forward(self.specs[layer], q, k, v, self.caches[layer], self.meta)


class RMSNorm(nn.Module):
    def __init__(self, dim: int, eps: float):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(dim))
        self.eps = eps

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return rms_norm(x, self.weight, self.eps)


class Rotary(nn.Module):
    """cos/sin table for every position, computed once (float32, as transformers does)."""

    def __init__(self, inv_freq: torch.Tensor, scaling: float, max_positions: int):
        super().__init__()
        pos = torch.arange(max_positions, dtype=torch.float32)
        freqs = pos[:, None] * inv_freq.float()[None, :]
        emb = torch.cat((freqs, freqs), dim=-1)
        self.register_buffer("cos", emb.cos() * scaling, persistent=False)
        self.register_buffer("sin", emb.sin() * scaling, persistent=False)

    def forward(self, positions: torch.Tensor, dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor]:
        """``[T, 1, D]`` cos and sin at ``positions``, in the activation dtype (the eager RoPE's inputs)."""
        return self.cos[positions].to(dtype)[:, None, :], self.sin[positions].to(dtype)[:, None, :]


class Attention(nn.Module):
    def __init__(self, dims: ModelDims, layer: int):
        super().__init__()
        self.dims, self.layer = dims, layer
        self.qkv_proj = nn.Linear(dims.hidden_size, dims.q_size + 2 * dims.kv_size, bias=dims.qkv_bias)
        self.o_proj = nn.Linear(dims.q_size, dims.hidden_size, bias=dims.o_bias)
        if dims.qk_norm:
            self.q_norm = RMSNorm(dims.head_dim, dims.rms_norm_eps)
            self.k_norm = RMSNorm(dims.head_dim, dims.rms_norm_eps)

    def forward(self, x: torch.Tensor, positions: torch.Tensor, rotary: Rotary, attn: AttentionContext) -> torch.Tensor:
        d = self.dims
        qkv = self.qkv_proj(x)
        norm = d.qk_norm
        q, k = qk_norm_rope(qkv, d.num_heads, d.num_kv_heads, d.head_dim, positions, rotary.cos, rotary.sin,
                            self.q_norm.weight if norm else None, self.k_norm.weight if norm else None, d.rms_norm_eps)
        v = qkv[:, d.q_size + d.kv_size :]
        o = attn(self.layer, q, k, v)
        return self.o_proj(o)


class MLP(nn.Module):
    def __init__(self, dims: ModelDims):
        super().__init__()
        self.gate_up_proj = nn.Linear(dims.hidden_size, 2 * dims.intermediate_size, bias=False)
        self.down_proj = nn.Linear(dims.intermediate_size, dims.hidden_size, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.down_proj(silu_mul(self.gate_up_proj(x)))


class DecoderLayer(nn.Module):
    def __init__(self, dims: ModelDims, layer: int):
        super().__init__()
        self.self_attn = Attention(dims, layer)
        self.mlp = MLP(dims)
        self.input_layernorm = RMSNorm(dims.hidden_size, dims.rms_norm_eps)
        self.post_attention_layernorm = RMSNorm(dims.hidden_size, dims.rms_norm_eps)

    def forward(self, x, residual, positions, rotary, attn):
        """``x`` is the previous layer's output and ``residual`` the stream before it (None at the first
        layer): the add is fused into this layer's first norm, and this layer's output is left unadded."""
        n = self.input_layernorm
        h, residual = add_rms_norm(x, residual, n.weight, n.eps)
        h = self.self_attn(h, positions, rotary, attn)
        n = self.post_attention_layernorm
        h, residual = add_rms_norm(h, residual, n.weight, n.eps)
        return self.mlp(h), residual


class LlamaFamilyModel(nn.Module):
    """Parameter names follow transformers' (``model.layers.N.…``) except the fused projections."""

    # transformers name -> (our fused parameter, shard index)
    packed = {
        "q_proj": ("qkv_proj", 0), "k_proj": ("qkv_proj", 1), "v_proj": ("qkv_proj", 2),
        "gate_proj": ("gate_up_proj", 0), "up_proj": ("gate_up_proj", 1),
    }

    def __init__(self, dims: ModelDims, rotary: Rotary):
        super().__init__()
        self.dims = dims
        self.model = nn.Module()
        self.model.embed_tokens = nn.Embedding(dims.vocab_size, dims.hidden_size)
        self.model.layers = nn.ModuleList(DecoderLayer(dims, i) for i in range(dims.num_layers))
        self.model.norm = RMSNorm(dims.hidden_size, dims.rms_norm_eps)
        self.lm_head = nn.Linear(dims.hidden_size, dims.vocab_size, bias=False)
        if dims.tie_word_embeddings:
            self.lm_head.weight = self.model.embed_tokens.weight
        self.rotary = rotary

    def shard_sizes(self, fused: str) -> list[int]:
        d = self.dims
        return [d.q_size, d.kv_size, d.kv_size] if fused == "qkv_proj" else [d.intermediate_size] * 2

    @torch.inference_mode()
    def forward(self, input_ids: torch.Tensor, positions: torch.Tensor, attn: AttentionContext) -> torch.Tensor:
        h, residual = self.model.embed_tokens(input_ids), None
        for layer in self.model.layers:
            h, residual = layer(h, residual, positions, self.rotary, attn)
        n = self.model.norm
        return add_rms_norm(h, residual, n.weight, n.eps)[0]

    @torch.inference_mode()
    def logits(self, hidden: torch.Tensor) -> torch.Tensor:
        return self.lm_head(hidden).float()
