"""`swaa merge`: an adapter written into a model folder, servable without peft."""

from __future__ import annotations

import json
import os

from swaa_engine.models.adapters import SWAA_FILE, merge_adapter, trained_swaa


def write_merged(hf_model, tokenizer, path: str, out: str) -> None:
    """A Hugging Face model folder (safetensors) with the adapter merged in: servable without peft."""
    from transformers import AutoModelForCausalLM

    merged = merge_adapter(hf_model, path)
    # A model loaded from GGUF counts as quantized and refuses save_pretrained, although its weights are plain
    # dequantized tensors: rebuild a clean model from its config and copy them in.
    config = merged.config
    if hasattr(config, "quantization_config"):
        delattr(config, "quantization_config")
    clean = AutoModelForCausalLM.from_config(config, dtype=next(merged.parameters()).dtype)
    clean.load_state_dict(merged.state_dict())
    os.makedirs(out, exist_ok=True)
    clean.save_pretrained(out)
    if tokenizer is not None:
        tokenizer.save_pretrained(out)
    trained = trained_swaa(path)
    if trained is not None:
        with open(os.path.join(out, SWAA_FILE), "w") as f:
            json.dump(trained, f, indent=1)
