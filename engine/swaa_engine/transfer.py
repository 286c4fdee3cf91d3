"""Host values onto the device without stalling the host."""

from __future__ import annotations

import torch


def upload(values, dtype: torch.dtype, device: torch.device) -> torch.Tensor:
    """A host list (or numpy array) on ``device`` in one copy: pinned and asynchronous on CUDA, so the host goes on
    while the copy waits its turn on the stream (a pageable copy would wait for every kernel queued before it); a plain
    tensor elsewhere. The caching host allocator keeps the pinned block until the copy has run."""
    # a host tensor, a numpy array or a list: torch.tensor(..., pin_memory=True) refuses numpy arrays
    host = torch.as_tensor(values, dtype=dtype)
    return host if device.type != "cuda" else host.pin_memory().to(device, non_blocking=True)
