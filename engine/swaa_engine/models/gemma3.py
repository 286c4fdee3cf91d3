"""Gemma 3 text decoder (``Gemma3ForCausalLM``) over packed variable-length batches.

What differs from the Llama family, each as transformers' ``modeling_gemma3`` does it: RMSNorm scales by
``1 + weight`` with float32 statistics; four norms per layer (after attention and around the MLP as well);
embeddings scaled by ``sqrt(hidden)`` (rounded to the weights' dtype); q/k normalized per head; attention
scaled by ``query_pre_attn_scalar ** -0.5`` (handed to the attention backend as ``attention_scale``); RoPE
per layer type (sliding layers: the local base frequency, full layers: the global one); GELU-tanh MLP; tied
embeddings; the final logits soft-capped when ``final_logit_softcapping`` is set. ``attn_logit_softcapping``
is not applied: transformers' Gemma 3 does not pass it to attention either (Gemma 3 replaced it by q/k norm).
Which layers slide is not decided here: the layer specs (``registry.native_windows``) carry each layer's
window to the attention backend.
"""

from __future__ import annotations

import torch
from torch import nn

from swaa_engine.models.dims import ModelDims
from swaa_engine.models.llama import AttentionContext, Rotary
from swaa_engine.models.pointwise import rotate_half
from swaa_engine.models.registry import UnsupportedModelError

SLIDING, FULL = "sliding_attention", "full_attention"


class GemmaRMSNorm(nn.Module):
    def __init__(self, dim: int, eps: float):
        super().__init__()
        self.weight = nn.Parameter(torch.zeros(dim))  # stored as an offset from 1
        self.eps = eps

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        xf = x.float()
        out = xf * torch.rsqrt(xf.pow(2).mean(-1, keepdim=True) + self.eps)
        return (out * (1.0 + self.weight.float())).type_as(x)


class Gemma3Attention(nn.Module):
    def __init__(self, dims: ModelDims, layer: int):
        super().__init__()
        self.dims, self.layer = dims, layer
        self.qkv_proj = nn.Linear(dims.hidden_size, dims.q_size + 2 * dims.kv_size, bias=dims.qkv_bias)
        self.o_proj = nn.Linear(dims.q_size, dims.hidden_size, bias=dims.o_bias)
        self.q_norm = GemmaRMSNorm(dims.head_dim, dims.rms_norm_eps)
        self.k_norm = GemmaRMSNorm(dims.head_dim, dims.rms_norm_eps)

    def forward(self, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor, attn: AttentionContext) -> torch.Tensor:
        d = self.dims
        T = x.shape[0]
        qkv = self.qkv_proj(x)
        heads = qkv.view(T, d.num_heads + 2 * d.num_kv_heads, d.head_dim)
        q = self.q_norm(heads[:, : d.num_heads])
        k = self.k_norm(heads[:, d.num_heads : d.num_heads + d.num_kv_heads])
        q = (q * cos + rotate_half(q) * sin).reshape(T, d.q_size)
        k = (k * cos + rotate_half(k) * sin).reshape(T, d.kv_size)
        v = qkv[:, d.q_size + d.kv_size :]
        return self.o_proj(attn(self.layer, q, k, v))


class Gemma3MLP(nn.Module):
    def __init__(self, dims: ModelDims):
        super().__init__()
        self.inter = dims.intermediate_size
        self.gate_up_proj = nn.Linear(dims.hidden_size, 2 * dims.intermediate_size, bias=False)
        self.down_proj = nn.Linear(dims.intermediate_size, dims.hidden_size, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        gate, up = self.gate_up_proj(x).split(self.inter, dim=-1)
        return self.down_proj(nn.functional.gelu(gate, approximate="tanh") * up)  # transformers' gelu_pytorch_tanh


class Gemma3DecoderLayer(nn.Module):
    def __init__(self, dims: ModelDims, layer: int):
        super().__init__()
        self.self_attn = Gemma3Attention(dims, layer)
        self.mlp = Gemma3MLP(dims)
        eps = dims.rms_norm_eps
        self.input_layernorm = GemmaRMSNorm(dims.hidden_size, eps)
        self.post_attention_layernorm = GemmaRMSNorm(dims.hidden_size, eps)
        self.pre_feedforward_layernorm = GemmaRMSNorm(dims.hidden_size, eps)
        self.post_feedforward_layernorm = GemmaRMSNorm(dims.hidden_size, eps)

    def forward(self, x, cos, sin, attn):
        x = x + self.post_attention_layernorm(self.self_attn(self.input_layernorm(x), cos, sin, attn))
        return x + self.post_feedforward_layernorm(self.mlp(self.pre_feedforward_layernorm(x)))


class Gemma3Model(nn.Module):
    """Parameter names follow transformers' (``model.layers.N.…``) except the fused projections, as in
    ``LlamaFamilyModel`` (the loader's ``load_weights`` reads ``packed`` and ``shard_sizes``)."""

    packed = {
        "q_proj": ("qkv_proj", 0), "k_proj": ("qkv_proj", 1), "v_proj": ("qkv_proj", 2),
        "gate_proj": ("gate_up_proj", 0), "up_proj": ("gate_up_proj", 1),
    }

    def __init__(self, dims: ModelDims, layer_types: tuple[str, ...], query_pre_attn_scalar: float,
                 final_logit_softcapping: float | None):
        super().__init__()
        self.dims = dims
        self.layer_types = layer_types
        self.attention_scale = float(query_pre_attn_scalar) ** -0.5  # read by the engine for its attention backend
        self.final_logit_softcapping = final_logit_softcapping
        self.model = nn.Module()
        self.model.embed_tokens = nn.Embedding(dims.vocab_size, dims.hidden_size)
        self.model.layers = nn.ModuleList(Gemma3DecoderLayer(dims, i) for i in range(dims.num_layers))
        self.model.norm = GemmaRMSNorm(dims.hidden_size, dims.rms_norm_eps)
        self.lm_head = nn.Linear(dims.hidden_size, dims.vocab_size, bias=False)
        if dims.tie_word_embeddings:
            self.lm_head.weight = self.model.embed_tokens.weight
        self.rotary = nn.ModuleDict()  # layer type -> Rotary, set by build()

    def shard_sizes(self, fused: str) -> list[int]:
        d = self.dims
        return [d.q_size, d.kv_size, d.kv_size] if fused == "qkv_proj" else [d.intermediate_size] * 2

    @torch.inference_mode()
    def forward(self, input_ids: torch.Tensor, positions: torch.Tensor, attn: AttentionContext) -> torch.Tensor:
        w = self.model.embed_tokens.weight
        # sqrt(hidden) rounded to the weights' dtype as transformers does, made on the host: a tensor made on the
        # device from a host value is a synchronous copy, which CUDA-graph capture refuses (decode graphs capture this)
        scale = torch.tensor(self.dims.hidden_size**0.5, dtype=w.dtype).item()
        h = self.model.embed_tokens(input_ids) * scale
        tables = {t: r(positions, h.dtype) for t, r in self.rotary.items()}
        for layer, kind in zip(self.model.layers, self.layer_types):
            h = layer(h, *tables[kind], attn)
        return self.model.norm(h)

    @torch.inference_mode()
    def logits(self, hidden: torch.Tensor) -> torch.Tensor:
        logits = self.lm_head(hidden).float()
        cap = self.final_logit_softcapping
        return logits if cap is None else torch.tanh(logits / cap) * cap


def rope_table(cfg, layer_type: str, head_dim: int) -> tuple[torch.Tensor, float]:
    """(inv_freq, attention scaling) of one layer type, as ``Gemma3RotaryEmbedding`` computes them."""
    params = cfg.rope_parameters[layer_type]
    rope_type = params.get("rope_type", "default")
    if rope_type == "default":
        theta = params["rope_theta"]
        return 1.0 / (theta ** (torch.arange(0, head_dim, 2, dtype=torch.float) / head_dim)), 1.0
    if rope_type in ("dynamic", "longrope"):
        raise UnsupportedModelError(f"rope_type {rope_type!r} (position-dependent scaling) is not supported")
    from transformers.modeling_rope_utils import ROPE_INIT_FUNCTIONS

    inv_freq, scaling = ROPE_INIT_FUNCTIONS[rope_type](cfg, "cpu", layer_type=layer_type)
    return inv_freq, float(scaling)


def build(cfg, dims: ModelDims, dtype: torch.dtype, device: torch.device) -> Gemma3Model:
    """An uninitialised model on ``device`` (built on the meta device, as ``loader.build_model``)."""
    layer_types = tuple(cfg.layer_types)
    with torch.device("meta"):
        model = Gemma3Model(dims, layer_types, cfg.query_pre_attn_scalar, getattr(cfg, "final_logit_softcapping", None))
    model = model.to_empty(device=device).to(dtype)
    if dims.tie_word_embeddings:
        model.lm_head.weight = model.model.embed_tokens.weight
    for t in sorted(set(layer_types)):  # float32 tables, built off the meta device
        inv_freq, scaling = rope_table(cfg, t, dims.head_dim)
        model.rotary[t] = Rotary(inv_freq, scaling, dims.max_position_embeddings).to(device)
    return model.eval()
