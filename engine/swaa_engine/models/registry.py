"""Supported architectures: the facts the engine reads from each config, and each layer's own sliding window."""

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


def _gemma3(cfg) -> ModelDims:
    if getattr(cfg, "use_bidirectional_attention", False):
        raise UnsupportedModelError("Gemma 3 with use_bidirectional_attention=True (an encoder) is not supported")
    if getattr(cfg, "hidden_activation", "gelu_pytorch_tanh") != "gelu_pytorch_tanh":
        raise UnsupportedModelError(f"Gemma 3 with hidden_activation={cfg.hidden_activation!r} is not supported")
    bias = bool(getattr(cfg, "attention_bias", False))
    return _dims(cfg, "gemma3", qkv_bias=bias, o_bias=bias, qk_norm=True)


def _qwen2(cfg) -> ModelDims:
    return _dims(cfg, "qwen2", qkv_bias=True, o_bias=False, qk_norm=False)


def _qwen3(cfg) -> ModelDims:
    bias = bool(getattr(cfg, "attention_bias", False))
    return _dims(cfg, "qwen3", qkv_bias=bias, o_bias=bias, qk_norm=True)


# transformers model_type -> ModelDims reader
ARCHITECTURES: dict[str, Callable[[object], ModelDims]] = {
    "llama": _llama,
    "mistral": _mistral,
    "gemma3_text": _gemma3,
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


def native_windows(cfg) -> tuple[int | None, ...]:
    """Each layer's own sliding window (None: a full layer), as transformers' model of this config attends:
    ``layer_types`` with ``sliding_window`` (Gemma 3; Qwen2/3 with use_sliding_window), or one
    ``sliding_window`` for every layer (Mistral). ``SWAAConfig.layer_specs(native=…)`` keeps these windows."""
    n = cfg.num_hidden_layers
    window = getattr(cfg, "sliding_window", None)
    if getattr(cfg, "model_type", None) == "mistral":
        # transformers' Mistral slides every layer by sliding_window (it ignores any layer_types)
        return (int(window),) * n if window else (None,) * n
    types = getattr(cfg, "layer_types", None)
    if types is None:
        return (None,) * n
    unknown = sorted(set(types) - {"full_attention", "sliding_attention"})
    if unknown:
        raise UnsupportedModelError(f"layer types {unknown} are not supported (only full and sliding attention)")
    if "sliding_attention" in types and not window:
        raise UnsupportedModelError("layer_types has sliding layers but sliding_window is not set")
    return tuple(int(window) if t == "sliding_attention" else None for t in types)


def model_layer_specs(swaa, cfg, max_len: int | None = None):
    """``swaa``'s layer specs on this model, its own sliding layers included (the one place that joins them)."""
    return swaa.layer_specs(cfg.num_hidden_layers, max_len=max_len, native=native_windows(cfg))
