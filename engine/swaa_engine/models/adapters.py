"""LoRA adapters at serving time (``--lora``): merged into the base weights once, at load (no per-token adapter cost)."""

from __future__ import annotations

import json
import logging
import os

from swaa_engine.config import ConfigError

log = logging.getLogger(__name__)

# Beside a peft adapter (``swaa finetune``) or a merged model folder (``swaa merge``): the SWAA config it was trained under.
SWAA_FILE = "swaa.json"


def check_adapter(path: str) -> str:
    path = os.path.expanduser(path)
    if not os.path.isfile(os.path.join(path, "adapter_config.json")):
        raise ConfigError("lora", f"{path}: not a peft adapter folder (no adapter_config.json)")
    return path


def trained_swaa(path: str) -> dict | None:
    """The SWAA config the adapter was trained under (written by ``swaa finetune``), if recorded."""
    f = os.path.join(path, SWAA_FILE)
    if not os.path.isfile(f):
        return None
    with open(f) as fh:
        return json.load(fh)


def _swaa(d: dict):
    from swaa_engine.swaa import SWAAConfig

    return SWAAConfig.from_dict(d)


def merge_adapter(hf_model, path: str, swaa=None):
    """``hf_model`` with the adapter's deltas added to its weights (modified in place; returned unwrapped).

    Merging at float32 keeps the sum exact before the engine casts to its dtype."""
    from peft import PeftModel

    path = check_adapter(path)
    trained = trained_swaa(path)
    if swaa is not None and trained is not None and _swaa(trained) != swaa:
        # legal (e.g. evaluating an adapter under another config) but rarely intended
        log.warning("adapter %s was trained under SWAA %s, serving under %s", path, trained, swaa.to_dict())
    try:
        return PeftModel.from_pretrained(hf_model, path, is_trainable=False).merge_and_unload()
    except (ValueError, RuntimeError, KeyError) as e:
        raise ConfigError("lora", f"{path} does not fit this model: {e}") from None

