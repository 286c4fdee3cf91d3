"""Small models for tests: a tiny random Qwen3 (q/k norm) saved as a Hugging Face folder."""

from __future__ import annotations

import torch


def tiny_qwen3_config(**overrides):
    from transformers import Qwen3Config

    cfg = dict(
        vocab_size=384, hidden_size=64, intermediate_size=160, num_hidden_layers=4,
        num_attention_heads=4, num_key_value_heads=2, head_dim=16, max_position_embeddings=2048,
        rope_theta=10000.0, tie_word_embeddings=False, initializer_range=0.25, rms_norm_eps=1e-6,
    )
    cfg.update(overrides)
    return Qwen3Config(**cfg)


def save_tiny_qwen3(folder, seed: int = 0, **overrides):
    """Random weights with a large init so logits are peaked and greedy choices have clear margins."""
    from transformers import AutoModelForCausalLM

    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_config(tiny_qwen3_config(**overrides), dtype=torch.float32)
    model.save_pretrained(folder)
    return model
