"""Losses of the segmentation task (the pretext losses live beside the game).

Every loss takes logits (B, K, H, W) and labels (B, H, W) with 255 = ignore.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from sssi.data.palettes import IGNORE_INDEX


class SegmentationLoss(nn.Module):
    """A weighted sum of segmentation loss terms; returns the total and each term.

    Terms with weight 0 are not computed. Returning the parts lets the task log them.
    """

    def __init__(self, ce_weight: float = 1.0, class_weights: Sequence[float] | None = None,
                 ignore_index: int = IGNORE_INDEX) -> None:
        super().__init__()
        self.ce_weight = float(ce_weight)
        self.ignore_index = int(ignore_index)
        weights = torch.tensor(class_weights, dtype=torch.float32) if class_weights else None
        self.register_buffer("class_weights", weights, persistent=False)

    def forward(self, logits: Tensor, target: Tensor) -> tuple[Tensor, dict[str, Tensor]]:
        parts: dict[str, Tensor] = {}
        if self.ce_weight:
            parts["ce"] = F.cross_entropy(logits.float(), target, weight=self.class_weights,
                                          ignore_index=self.ignore_index)
        total = sum(getattr(self, f"{k}_weight") * v for k, v in parts.items())
        return total, parts
