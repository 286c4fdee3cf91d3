"""Boolean SWAA masks (True = visible) from query and key positions."""

from __future__ import annotations

import torch


def swaa_mask(
    q_pos: torch.Tensor, k_pos: torch.Tensor, window: int | None, sinks: int, full_rows: torch.Tensor | None = None
) -> torch.Tensor:
    """``[len(q_pos), len(k_pos)]``: causal, limited to the window and sinks when ``window`` is set.

    ``full_rows`` (bool per query) marks queries that see every earlier key (generated tokens
    in fa_decode layers).
    """
    q = q_pos[:, None]
    k = k_pos[None, :]
    causal = k <= q
    if window is None:
        return causal
    visible = causal & ((q - k < window) | (k < sinks))
    if full_rows is not None:
        visible = visible | (causal & full_rows[:, None])
    return visible
