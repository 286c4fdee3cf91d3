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
        # float32 statistics as transformers does, so logits agree to fp32 tolerance
        dtype = x.dtype
        x = nn.functional.rms_norm(x.float(), (x.shape[-1],), eps=self.eps)
        return self.weight * x.to(dtype)


def rotate_half(x: torch.Tensor) -> torch.Tensor:
    x1, x2 = x.chunk(2, dim=-1)
    return torch.cat((-x2, x1), dim=-1)


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

    def forward(self, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor, attn: AttentionContext) -> torch.Tensor:
        d = self.dims
        T = x.shape[0]
        qkv = self.qkv_proj(x)
        heads = qkv.view(T, d.num_heads + 2 * d.num_kv_heads, d.head_dim)
        qk = heads[:, : d.num_heads + d.num_kv_heads]  # q and k heads are adjacent: rotate them in one pass
        if d.qk_norm:
            qk = torch.cat([self.q_norm(qk[:, : d.num_heads]), self.k_norm(qk[:, d.num_heads :])], dim=1)
        qk = qk * cos + rotate_half(qk) * sin
        q = qk[:, : d.num_heads].reshape(T, d.q_size)
        k = qk[:, d.num_heads :].reshape(T, d.kv_size)
        v = qkv[:, d.q_size + d.kv_size :]
        o = attn(self.layer, q, k, v)
        return self.o_proj(o)


class MLP(nn.Module):
    def __init__(self, dims: ModelDims):
        super().__init__()
        self.inter = dims.intermediate_size
        self.gate_up_proj = nn.Linear(dims.hidden_size, 2 * dims.intermediate_size, bias=False)
        self.down_proj = nn.Linear(dims.intermediate_size, dims.hidden_size, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        gate, up = self.gate_up_proj(x).split(self.inter, dim=-1)
        return self.down_proj(nn.functional.silu(gate) * up)


class DecoderLayer(nn.Module):
    def __init__(self, dims: ModelDims, layer: int):
        super().__init__()
        self.self_attn = Attention(dims, layer)
        self.mlp = MLP(dims)
        self.input_layernorm = RMSNorm(dims.hidden_size, dims.rms_norm_eps)
        self.post_attention_layernorm = RMSNorm(dims.hidden_size, dims.rms_norm_eps)

    def forward(self, x, cos, sin, attn):
        x = x + self.self_attn(self.input_layernorm(x), cos, sin, attn)
        return x + self.mlp(self.post_attention_layernorm(x))


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
        h = self.model.embed_tokens(input_ids)
        cos, sin = self.rotary(positions, h.dtype)
        for layer in self.model.layers:
            h = layer(h, cos, sin, attn)
        return self.model.norm(h)

    @torch.inference_mode()
    def logits(self, hidden: torch.Tensor) -> torch.Tensor:
        return self.lm_head(hidden).float()
