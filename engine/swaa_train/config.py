"""``TrainConfig``: a fine-tuning run's settings, torch-free (the CLI's parser reads its defaults)."""

from __future__ import annotations

from dataclasses import dataclass, field

from swaa_engine.swaa import SWAAConfig

KERNELS = ("sdpa", "flex")  # the training attention kernels (swaa_train.attention)


@dataclass(frozen=True)
class TrainConfig:
    """Defaults are the recipe of the SWAA paper's reference code (arXiv 2512.10411): r 16, alpha 32, rsLoRA, dropout 0.1 on q/k/v; lr 1e-4,
    linear decay after 5 % warm-up; 1 epoch; loss on answer tokens only."""

    data: str
    out: str
    swaa: SWAAConfig = field(default_factory=SWAAConfig)
    rank: int = 16
    alpha: int = 32
    dropout: float = 0.1
    rslora: bool = True
    target_modules: tuple[str, ...] = ("q_proj", "k_proj", "v_proj")
    lr: float = 1e-4
    warmup: float = 0.05
    epochs: int = 1
    max_steps: int | None = None  # stop early (smoke runs)
    max_batch_tokens: int = 16384  # tokens per packed row: the batch holds as many examples as fit
    grad_clip: float = 1.0
    gradient_checkpointing: bool = True
    kernel: str = "auto"  # sdpa | flex | auto (flex on CUDA)
    seed: int = 0
    save_every: int = 50
    limit: int | None = None  # use only the first N examples

    def __post_init__(self):
        if not isinstance(self.swaa, SWAAConfig):
            raise ValueError("swaa: must be a SWAAConfig")
        if self.swaa.is_full:
            raise ValueError("swaa: SWA-aware fine-tuning needs a sliding window (full attention needs no adaptation)")
        for name in ("rank", "alpha", "epochs", "max_batch_tokens", "save_every"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name}: must be >= 1, got {getattr(self, name)}")
        if not 0 <= self.dropout < 1 or not 0 <= self.warmup < 1 or self.lr <= 0:
            raise ValueError("dropout and warmup must be in [0, 1) and lr > 0")
        if self.kernel not in KERNELS + ("auto",):
            raise ValueError(f"kernel: one of {KERNELS + ('auto',)}, got {self.kernel!r}")
        if self.max_steps is not None and self.max_steps < 1:
            raise ValueError("max_steps: must be >= 1")
