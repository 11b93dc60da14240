"""Segmentation heads sized from an encoder's ``out_channels`` and ``reductions``."""

from __future__ import annotations

from collections.abc import Sequence

import torch.nn.functional as F
from torch import Tensor, nn


class FCNFusionHead(nn.Module):
    """Multi-level fusion in the FCN spirit, as in the paper's segmentation network.

    Each encoder level is projected by a 1x1 conv to ``channels``, upsampled to the
    finest used level and summed; a 3x3 conv refines the sum and a 1x1 conv classifies.
    ``levels`` picks which features to fuse (default: all from reduction 4 down).
    """

    def __init__(self, in_channels: Sequence[int], reductions: Sequence[int], num_classes: int,
                 channels: int = 128, levels: Sequence[int] | None = None) -> None:
        super().__init__()
        if levels is None:
            levels = [i for i, r in enumerate(reductions) if r >= 4] or [len(reductions) - 1]
        self.levels = list(levels)
        self.proj = nn.ModuleList(
            nn.Sequential(nn.Conv2d(in_channels[i], channels, 1, bias=False),
                          nn.BatchNorm2d(channels), nn.ReLU(inplace=True))
            for i in self.levels)
        self.fuse = nn.Sequential(nn.Conv2d(channels, channels, 3, padding=1, bias=False),
                                  nn.BatchNorm2d(channels), nn.ReLU(inplace=True))
        self.classifier = nn.Conv2d(channels, num_classes, 1)

    def forward(self, features: Sequence[Tensor], size: tuple[int, int]) -> Tensor:
        feats = [features[i] for i in self.levels]
        base = feats[0].shape[-2:]
        out = None
        for f, proj in zip(feats, self.proj, strict=True):
            y = proj(f)
            if y.shape[-2:] != base:
                y = F.interpolate(y, size=base, mode="bilinear", align_corners=False)
            out = y if out is None else out + y
        logits = self.classifier(self.fuse(out))
        return F.interpolate(logits, size=size, mode="bilinear", align_corners=False)


class Segmenter(nn.Module):
    """Encoder + head: images (B, C, H, W) -> class logits (B, K, H, W)."""

    def __init__(self, encoder: nn.Module, head: nn.Module) -> None:
        super().__init__()
        self.encoder = encoder
        self.head = head

    def forward(self, x: Tensor) -> Tensor:
        return self.head(self.encoder(x), x.shape[-2:])
