"""Supported architectures and how each maps onto the Llama-family model."""

from __future__ import annotations

from typing import Callable

from swaa_engine.models.dims import ModelDims


class UnsupportedModelError(ValueError):
    pass


def _dims(cfg, arch: str, *, qkv_bias: bool, o_bias: bool, qk_norm: bool) -> ModelDims:
    head_dim = getattr(cfg, "head_dim", None) or cfg.hidden_size // cfg.num_attention_heads
    return ModelDims(
        architecture=arch,
        num_layers=cfg.num_hidden_layers,
        hidden_size=cfg.hidden_size,
        intermediate_size=cfg.intermediate_size,
        num_heads=cfg.num_attention_heads,
        num_kv_heads=getattr(cfg, "num_key_value_heads", None) or cfg.num_attention_heads,
        head_dim=head_dim,
        vocab_size=cfg.vocab_size,
        rms_norm_eps=cfg.rms_norm_eps,
        max_position_embeddings=cfg.max_position_embeddings,
        tie_word_embeddings=bool(getattr(cfg, "tie_word_embeddings", False)),
        qkv_bias=qkv_bias,
        o_bias=o_bias,
        qk_norm=qk_norm,
    )


def _llama(cfg) -> ModelDims:
    if getattr(cfg, "mlp_bias", False):
        raise UnsupportedModelError("Llama with mlp_bias=True is not supported")
    bias = bool(getattr(cfg, "attention_bias", False))
    return _dims(cfg, "llama", qkv_bias=bias, o_bias=bias, qk_norm=False)


def _mistral(cfg) -> ModelDims:
    return _dims(cfg, "mistral", qkv_bias=False, o_bias=False, qk_norm=False)


def _qwen2(cfg) -> ModelDims:
    return _dims(cfg, "qwen2", qkv_bias=True, o_bias=False, qk_norm=False)


def _qwen3(cfg) -> ModelDims:
    bias = bool(getattr(cfg, "attention_bias", False))
    return _dims(cfg, "qwen3", qkv_bias=bias, o_bias=bias, qk_norm=True)


# transformers model_type -> ModelDims reader
ARCHITECTURES: dict[str, Callable[[object], ModelDims]] = {
    "llama": _llama,
    "mistral": _mistral,
    "qwen2": _qwen2,
    "qwen3": _qwen3,
}


def dims_from_config(cfg) -> ModelDims:
    model_type = getattr(cfg, "model_type", None)
    if model_type not in ARCHITECTURES:
        raise UnsupportedModelError(
            f"unsupported architecture {model_type!r}; supported: {', '.join(sorted(ARCHITECTURES))}"
        )
    return ARCHITECTURES[model_type](cfg)
