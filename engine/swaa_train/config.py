"""``TrainConfig``: a fine-tuning run's settings, torch-free (the CLI's parser reads its defaults)."""

from __future__ import annotations

from dataclasses import dataclass, field

from swaa_engine.swaa import SWAAConfig

KERNELS = ("sdpa", "flex")  # the training attention kernels (swaa_train.attention)


@dataclass(frozen=True)
class TrainConfig:
    """Defaults are the recipe of the SWAA paper's reference code (arXiv 2512.10411): r 16, alpha 32, rsLoRA, dropout 0.1 on q/k/v; lr 1e-4,
    linear decay after 5 % warm-up; 1 epoch; loss on answer tokens only.

    Issue 22 adds LM rows (``swaa distill --lm-samples``) to keep general quality: ``lm_ratio`` LM rows per retrieval
    row are mixed in (None: every row of the data), their loss is the KL to the full-attention teacher times
    ``lm_weight`` (``swaa_train.objective``). ``fa_baseline`` trains with no SWAA at all (the model as it attends
    natively), the fair baseline for what fine-tuning on this data does by itself."""

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
    limit: int | None = None  # use only the first N (retrieval) examples
    lm_ratio: float | None = None  # LM rows per retrieval row (None: the data's rows as they are)
    lm_weight: float = 1.0  # the LM term's weight beside the answers' cross-entropy
    fa_baseline: bool = False  # train without SWAA: the full-attention baseline (swaa must be full)

    def __post_init__(self):
        if not isinstance(self.swaa, SWAAConfig):
            raise ValueError("swaa: must be a SWAAConfig")
        if self.swaa.is_full and not self.fa_baseline:
            raise ValueError("swaa: SWA-aware fine-tuning needs a sliding window (full attention needs no adaptation; "
                             "fa_baseline / --full-attention trains the full-attention baseline on purpose)")
        if self.fa_baseline and not self.swaa.is_full:
            raise ValueError(f"fa_baseline: trains without SWAA, but swaa is {self.swaa.describe()}")
        if self.lm_ratio is not None and not 0 <= self.lm_ratio <= 100:
            raise ValueError(f"lm_ratio: must be in [0, 100], got {self.lm_ratio}")
        if not 0 <= self.lm_weight <= 100:
            raise ValueError(f"lm_weight: must be in [0, 100], got {self.lm_weight}")
        for name in ("rank", "alpha", "epochs", "max_batch_tokens", "save_every"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name}: must be >= 1, got {getattr(self, name)}")
        if not 0 <= self.dropout < 1 or not 0 <= self.warmup < 1 or self.lr <= 0:
            raise ValueError("dropout and warmup must be in [0, 1) and lr > 0")
        if self.kernel not in KERNELS + ("auto",):
            raise ValueError(f"kernel: one of {KERNELS + ('auto',)}, got {self.kernel!r}")
        if self.max_steps is not None and self.max_steps < 1:
            raise ValueError("max_steps: must be >= 1")
