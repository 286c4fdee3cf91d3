"""SWAA knobs and their expansion into one attention spec per layer.

Semantics (0-based positions within one sequence), as in the SWAA paper (arXiv 2512.10411):
  sliding prompt token i sees key j  iff  j <= i and (i - j < window or j < sinks)
  generated tokens under fa_decode see every j <= i
  layers in fa_layers are full causal for every token
"""

from __future__ import annotations

import enum
import re
from dataclasses import dataclass
from typing import Sequence

from swaa_engine.errors import ConfigError
from swaa_engine.kv_cache.pools import ring_size


class AttentionKind(enum.Enum):
    FULL = "full"
    # Sliding mask for prompt tokens, full attention for generated ones; needs every key.
    SLIDING_FA_DECODE = "sliding_fa_decode"
    # Sliding mask for every token; only sinks + window keys are ever read.
    SLIDING_RING = "sliding_ring"


class CacheKind(enum.Enum):
    PAGED = "paged"
    RING = "ring"


# The one place that decides which cache a layer needs.
CACHE_KIND_OF: dict[AttentionKind, CacheKind] = {
    AttentionKind.FULL: CacheKind.PAGED,
    AttentionKind.SLIDING_FA_DECODE: CacheKind.PAGED,
    AttentionKind.SLIDING_RING: CacheKind.RING,
}


@dataclass(frozen=True, slots=True)
class LayerSpec:
    """How one layer attends and what it caches."""

    layer: int
    kind: AttentionKind
    window: int | None  # None for FULL
    sinks: int
    max_len: int | None = None  # most tokens a sequence holds (the engine's max_model_len); caps the ring

    @property
    def cache_kind(self) -> CacheKind:
        return CACHE_KIND_OF[self.kind]

    @property
    def ring_slots(self) -> int:
        assert self.kind is AttentionKind.SLIDING_RING and self.window is not None
        return ring_size(self.window, self.sinks, self.max_len)


_EVERY = re.compile(r"^every:(\d+)(?::(\d+))?$")


def parse_layer_pattern(value: str | Sequence[int] | None, num_layers: int, field_name: str) -> frozenset[int]:
    """Layer ids from a list or a pattern: ``odd``, ``even``, ``every:N[:offset]``, ``1,3,5``, ``all``, ``none``.

    ``every:4`` means layers 1, 5, 9, … (offset 1 by default, as in the paper's ¼ pattern);
    ``every:4:0`` means 0, 4, 8, ….
    """
    if value is None:
        return frozenset()
    if isinstance(value, str):
        text = value.strip().lower()
        if text in ("", "none"):
            return frozenset()
        if text == "all":
            return frozenset(range(num_layers))
        if text == "odd":
            return frozenset(range(1, num_layers, 2))
        if text == "even":
            return frozenset(range(0, num_layers, 2))
        m = _EVERY.match(text)
        if m:
            step = int(m.group(1))
            offset = int(m.group(2)) if m.group(2) is not None else 1
            if step <= 0:
                raise ConfigError(field_name, f"every:N needs N >= 1, got {step}")
            if offset >= step:
                raise ConfigError(field_name, f"offset {offset} must be smaller than N={step}")
            return frozenset(range(offset, num_layers, step))
        try:
            ids = [int(x) for x in text.split(",") if x.strip()]
        except ValueError:
            raise ConfigError(
                field_name, f"expected a layer list or one of odd, even, every:N[:offset], all, none; got {value!r}"
            ) from None
        value = ids
    ids = set()
    for x in value:
        if isinstance(x, bool) or not isinstance(x, int):
            raise ConfigError(field_name, f"layer ids must be integers, got {x!r}")
        if not 0 <= x < num_layers:
            raise ConfigError(field_name, f"layer id {x} out of range [0, {num_layers})")
        ids.add(x)
    return frozenset(ids)


@dataclass(frozen=True)
class SWAAConfig:
    """The four SWAA knobs of one deployment.

    ``window=None`` leaves the model's full layers full; with no other knob set the model attends as trained
    (sinks and fa_decode without a window apply to the sliding layers a model has of its own, if any).
    ``fa_decode`` is a bool (all sliding layers) or a layer pattern/list; ``fa_layers`` a layer
    pattern/list. Patterns are resolved against the model's layer count by :meth:`layer_specs`.
    """

    window: int | None = None
    sinks: int = 0
    fa_decode: bool | str | tuple[int, ...] = False
    fa_layers: str | tuple[int, ...] = ()
    # Beyond the paper (experimental): the last fa_tail prompt tokens (the question) attend to everything in
    # fa_decode layers. It needs those layers' full cache, so it requires fa_decode; ring layers are unaffected.
    fa_tail: int = 0

    def __post_init__(self) -> None:
        if isinstance(self.fa_decode, list):
            object.__setattr__(self, "fa_decode", tuple(self.fa_decode))
        if isinstance(self.fa_layers, list):
            object.__setattr__(self, "fa_layers", tuple(self.fa_layers))
        if self.window is not None:
            if isinstance(self.window, bool) or not isinstance(self.window, int):
                raise ConfigError("window", f"must be an integer or None, got {self.window!r}")
            if self.window <= 0:
                raise ConfigError("window", f"must be > 0, got {self.window}")
        if isinstance(self.sinks, bool) or not isinstance(self.sinks, int):
            raise ConfigError("sinks", f"must be an integer, got {self.sinks!r}")
        if self.sinks < 0:
            raise ConfigError("sinks", f"must be >= 0, got {self.sinks}")
        # sinks and fa_decode without a window apply to the model's own sliding layers (Gemma 3, Mistral with a
        # sliding_window): whether it has any is known only in layer_specs, which refuses them otherwise
        if self.window is None and self.fa_layers not in ((), "", "none"):
            raise ConfigError("fa_layers", "set without a window (every layer SWAA could slide is already full)")
        if isinstance(self.fa_tail, bool) or not isinstance(self.fa_tail, int) or self.fa_tail < 0:
            raise ConfigError("fa_tail", f"must be an integer >= 0, got {self.fa_tail!r}")
        if self.fa_tail and self.fa_decode in (False, (), "", "none"):
            raise ConfigError("fa_tail", "needs fa_decode: only sliding layers that keep a full cache can read "
                                             "the whole prompt for the question tokens")
        if not isinstance(self.fa_decode, (bool, str, tuple)):
            raise ConfigError("fa_decode", f"must be a bool or a layer list, got {self.fa_decode!r}")
        if not isinstance(self.fa_layers, (str, tuple)):
            raise ConfigError("fa_layers", f"must be a layer list or pattern, got {self.fa_layers!r}")

    @property
    def is_full(self) -> bool:
        """No knob set: every layer attends as the model was trained (full, or its own sliding window)."""
        return self.window is None and not self.sinks and not _fa_decode_set(self.fa_decode)

    def layer_specs(self, num_layers: int, max_len: int | None = None,
                    native: Sequence[int | None] | None = None) -> tuple[LayerSpec, ...]:
        """One spec per layer; ``max_len`` (tokens a sequence can reach) caps ring layers' rings.

        ``native``: the model's own sliding window per layer (None: a full layer; ``models.registry.native_windows``).
        Its sliding layers keep their own window, as trained; ``window`` slides its full layers; ``sinks`` and
        ``fa_decode`` apply to every sliding layer, its own included; ``fa_layers`` keeps some of its full layers full
        (naming one of its sliding layers is refused: that would change the model, not adapt it).
        """
        if num_layers <= 0:
            raise ConfigError("num_layers", f"must be > 0, got {num_layers}")
        native = _check_native(native, num_layers)
        own = {i: w for i, w in enumerate(native) if w is not None}
        if self.window is None and not own:
            if self.sinks:
                raise ConfigError("sinks", "set without a window, and the model has no sliding layers of its own "
                                               "(sinks only apply to sliding layers)")
            if _fa_decode_set(self.fa_decode):
                raise ConfigError("fa_decode", "set without a window, and the model has no sliding layers of its "
                                                   "own (it only applies to sliding layers)")
        if self.window is not None and len(own) == num_layers:
            raise ConfigError("window", f"the model's layers all slide by their own window ({sorted(set(own.values()))}): "
                                            "there is no full layer for a window to apply to; leave it unset "
                                            "(sinks and fa_decode apply to the model's own sliding layers)")
        full = parse_layer_pattern(self.fa_layers, num_layers, "fa_layers")
        if full & own.keys():
            raise ConfigError("fa_layers", f"layers {sorted(full & own.keys())} slide by the model's own window; "
                                               f"fa_layers can keep only its full layers {sorted(set(range(num_layers)) - own.keys())} full")
        if isinstance(self.fa_decode, bool):
            fad = frozenset(range(num_layers)) if self.fa_decode else frozenset()
        else:
            fad = parse_layer_pattern(self.fa_decode, num_layers, "fa_decode")
        specs = []
        for i in range(num_layers):
            window = own.get(i, self.window)
            if window is None or i in full:
                specs.append(LayerSpec(i, AttentionKind.FULL, None, 0))
            elif i in fad:
                specs.append(LayerSpec(i, AttentionKind.SLIDING_FA_DECODE, window, self.sinks))
            else:
                specs.append(LayerSpec(i, AttentionKind.SLIDING_RING, window, self.sinks, max_len))
        return tuple(specs)

    def describe(self) -> str:
        if self.is_full:
            return "full attention"  # (the model's own sliding layers, if it has any, keep their window)
        parts = [f"window={self.window}", f"sinks={self.sinks}"]
        if self.fa_decode not in (False, (), ""):
            parts.append(f"fa_decode={self.fa_decode}")
        if self.fa_layers not in ((), ""):
            parts.append(f"fa_layers={self.fa_layers}")
        if self.fa_tail:
            parts.append(f"fa_tail={self.fa_tail}")
        return ", ".join(parts)

    @classmethod
    def from_dict(cls, d: dict) -> "SWAAConfig":
        known = {"window", "sinks", "fa_decode", "fa_layers", "fa_tail"}
        unknown = set(d) - known
        if unknown:
            raise ConfigError(sorted(unknown)[0], f"unknown SWAA knob; known: {sorted(known)}")
        return cls(**d)

    def to_dict(self) -> dict:
        return {"window": self.window, "sinks": self.sinks, "fa_decode": self.fa_decode, "fa_layers": self.fa_layers,
                "fa_tail": self.fa_tail}


def _fa_decode_set(value) -> bool:
    return value not in (False, (), "", "none")


def _check_native(native: Sequence[int | None] | None, num_layers: int) -> tuple[int | None, ...]:
    if native is None:
        return (None,) * num_layers
    native = tuple(native)
    if len(native) != num_layers:
        raise ConfigError("native", f"{len(native)} native windows for {num_layers} layers")
    for w in native:
        if w is not None and (isinstance(w, bool) or not isinstance(w, int) or w <= 0):
            raise ConfigError("native", f"a native window must be an integer > 0 or None, got {w!r}")
    return native


def sliding_visible(q_pos: int, k_pos: int, window: int, sinks: int) -> bool:
    """The sliding mask for one (query, key) pair; the definition everything else is tested against."""
    return k_pos <= q_pos and (q_pos - k_pos < window or k_pos < sinks)


# The six canonical configs the paper compares (windows are per deployment; these are templates).
def canonical_configs(window: int, sinks: int) -> dict[str, SWAAConfig]:
    return {
        "fa": SWAAConfig(),
        "swa": SWAAConfig(window=window),
        "swa+sinks": SWAAConfig(window=window, sinks=sinks),
        "swa+sinks+fa_decode": SWAAConfig(window=window, sinks=sinks, fa_decode=True),
        "swa+sinks+half_fa": SWAAConfig(window=window, sinks=sinks, fa_layers="odd"),
        "swa+sinks+fa_decode+quarter_fa": SWAAConfig(window=window, sinks=sinks, fa_decode=True, fa_layers="every:4"),
    }
