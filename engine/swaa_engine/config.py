"""Engine configuration: frozen dataclasses validated on construction."""

from __future__ import annotations

from dataclasses import dataclass, field

from swaa_engine.errors import ConfigError
from swaa_engine.swaa import SWAAConfig


def _require(ok: bool, field_name: str, message: str) -> None:
    if not ok:
        raise ConfigError(field_name, message)


@dataclass(frozen=True)
class SchedulerConfig:
    max_num_seqs: int = 64
    max_num_batched_tokens: int = 2048  # per-step token budget; also the prefill chunk size
    max_waiting: int = 1024  # queue capacity before new requests are refused
    # admission keeps free blocks for this many more generated tokens of every running sequence (capped by
    # each one's max_tokens), so decodes rarely need to preempt anyone
    decode_reserve_tokens: int = 512

    def __post_init__(self) -> None:
        _require(self.max_num_seqs >= 1, "max_num_seqs", f"must be >= 1, got {self.max_num_seqs}")
        _require(self.max_num_batched_tokens >= 1, "max_num_batched_tokens", f"must be >= 1, got {self.max_num_batched_tokens}")
        _require(self.max_waiting >= 1, "max_waiting", f"must be >= 1, got {self.max_waiting}")
        _require(self.decode_reserve_tokens >= 0, "decode_reserve_tokens", f"must be >= 0, got {self.decode_reserve_tokens}")


@dataclass(frozen=True)
class CacheConfig:
    """The KV budget: ``budget_bytes`` if given; otherwise what ``max_num_seqs`` full-length sequences can use
    (pools as planned), no more than ``budget_fraction`` of free device memory (of available RAM on CPU) and, on
    CPU, no more than ``cpu_cap_bytes``: there the pools are the process's own RAM, and a newcomer's laptop
    should not give half of it to a 135M model.

    ``swap_bytes``: host memory that preempted sequences' KV moves to instead of being recomputed; ``None``
    sizes it like the device budget, at most half the available RAM (on CPU host and device are one tier, so
    a swap is a plain copy); 0 turns swapping off (preemption then recomputes).

    ``prefix_caching``: keep computed prompt KV for later requests that start with the same tokens (shared
    blocks, ring snapshots; ``kv_cache.prefix``); cached blocks are evicted before any request is preempted.
    """

    block_size: int = 16
    budget_bytes: int | None = None
    budget_fraction: float = 0.5
    cpu_cap_bytes: int | None = 512 << 20  # None: no cap beyond budget_fraction. 512 MiB: 11k tokens of the embedded
    # model with full KV in all 30 layers (a full 8k context and more); `make serve` then peaks at ~1.9 GB RSS
    swap_bytes: int | None = None
    prefix_caching: bool = True

    def __post_init__(self) -> None:
        _require(self.block_size >= 1, "block_size", f"must be >= 1, got {self.block_size}")
        _require(self.budget_bytes is None or self.budget_bytes > 0, "budget_bytes", f"must be > 0, got {self.budget_bytes}")
        _require(0 < self.budget_fraction <= 0.95, "budget_fraction", f"must be in (0, 0.95], got {self.budget_fraction}")
        _require(self.swap_bytes is None or self.swap_bytes >= 0, "swap_bytes", f"must be >= 0, got {self.swap_bytes}")
        _require(self.cpu_cap_bytes is None or self.cpu_cap_bytes > 0, "cpu_cap_bytes", f"must be > 0, got {self.cpu_cap_bytes}")

    def resolve_budget(self, need_bytes: int, free_bytes: int, on_cpu: bool) -> tuple[int, str]:
        """(bytes, why): ``need_bytes`` is what max_num_seqs full-length sequences use, ``free_bytes`` the device's
        free memory (available RAM on CPU). ``why`` says which limit decided, for the start-up log and ``swaa info``."""
        if self.budget_bytes is not None:
            return self.budget_bytes, "set by budget_bytes (--cache-bytes)"
        limits = [(need_bytes, "what max_num_seqs x max_model_len can use"),
                  (int(self.budget_fraction * free_bytes), f"{self.budget_fraction:g} of free memory (--cache-fraction)")]
        if on_cpu and self.cpu_cap_bytes is not None:
            limits.append((self.cpu_cap_bytes, "the CPU cap (--cache-cpu-cap)"))
        size, why = min(limits, key=lambda x: x[0])
        return max(1, size), why


@dataclass(frozen=True)
class EngineConfig:
    """Everything needed to build an engine.

    ``model`` is a Hugging Face folder, a ``.gguf`` file, or ``None`` for the embedded default.
    ``dtype`` is ``auto`` (bfloat16 on CUDA, float32 on CPU), ``float32``, ``bfloat16`` or ``float16``.
    ``max_model_len`` defaults to the model's ``max_position_embeddings``.
    """

    model: str | None = None
    swaa: SWAAConfig = field(default_factory=SWAAConfig)
    dtype: str = "auto"
    device: str = "auto"
    attention_backend: str = "auto"
    max_model_len: int | None = None
    scheduler: SchedulerConfig = field(default_factory=SchedulerConfig)
    cache: CacheConfig = field(default_factory=CacheConfig)
    random_weights: bool = False  # build from the config alone (benchmarks; speed does not depend on weights)
    seed: int = 0
    num_threads: int | None = None  # CPU intra-op threads; None keeps torch's default
    lora: str | None = None  # a peft adapter folder (``swaa finetune``), merged into the weights at load
    cuda_graphs: bool = True  # replay decode steps as CUDA graphs on CUDA (bucketed batch sizes); ignored elsewhere
    # host threads filling structured output's token masks each step; None: structured.default_fill_threads()
    grammar_threads: int | None = None

    def __post_init__(self) -> None:
        _require(isinstance(self.swaa, SWAAConfig), "swaa", "must be a SWAAConfig")
        _require(self.dtype in ("auto", "float32", "bfloat16", "float16"), "dtype", f"unknown dtype {self.dtype!r}")
        _require(self.max_model_len is None or self.max_model_len >= 2, "max_model_len", f"must be >= 2, got {self.max_model_len}")
        _require(self.lora is None or (self.lora and not self.random_weights), "lora",
                 "an adapter needs real weights (not random_weights) and a folder path")
        _require(self.num_threads is None or self.num_threads >= 1, "num_threads", f"must be >= 1, got {self.num_threads}")
        _require(self.grammar_threads is None or self.grammar_threads >= 1, "grammar_threads",
                 f"must be >= 1, got {self.grammar_threads}")
