"""Segmentation losses: :class:`SegmentationLoss` (cross-entropy, the paper's patch
SSIM term, soft Dice / IoU) for fine-tuning. (The inpainter's reconstruction loss is the
game's: :mod:`sssi.game.loss`.)

Segmentation losses take logits (B, K, H, W) and labels (B, H, W), where the ignore
index (``sssi.data.palettes.IGNORE_INDEX``) marks pixels that take no part.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from sssi.data.palettes import IGNORE_INDEX
from sssi.errors import ConfigError


class SegmentationLoss(nn.Module):
    """A weighted sum of segmentation loss terms; returns the total and each term.

    ``ce``: pixel cross-entropy (optional ``class_weights``). ``ssim``: the paper's
    patch-level term, ``1 - SSIM`` between class probabilities and one-hot labels
    (:func:`ssim_loss`), which rewards getting the local structure of each class map
    right, not just each pixel. ``dice`` / ``iou``: soft Dice / Jaccard losses
    (:func:`soft_overlap_loss`), which weigh small classes (cars) like large ones.
    Pixels labelled ``ignore_index`` take no part in any term.

    Terms with weight 0 are not computed. Returning the parts lets the task log them.
    All terms are computed from float32 logits, also under mixed precision.
    """

    def __init__(self, ce_weight: float = 1.0, class_weights: Sequence[float] | None = None,
                 ignore_index: int = IGNORE_INDEX, ssim_weight: float = 0.0,
                 ssim_window: int = 11, dice_weight: float = 0.0,
                 iou_weight: float = 0.0) -> None:
        super().__init__()
        self.ce_weight = float(ce_weight)
        self.ssim_weight = float(ssim_weight)
        self.dice_weight = float(dice_weight)
        self.iou_weight = float(iou_weight)
        weights = {"ce": self.ce_weight, "ssim": self.ssim_weight, "dice": self.dice_weight,
                   "iou": self.iou_weight}
        bad = [f"loss.{k}_weight={v}" for k, v in weights.items() if not v >= 0]
        if bad:
            raise ConfigError(f"segmentation loss weights must be >= 0: {', '.join(bad)}")
        if not any(weights.values()):
            raise ConfigError("segmentation loss has no term: set loss.ce_weight, "
                              "loss.ssim_weight, loss.dice_weight or loss.iou_weight above 0")
        ssim_window = int(ssim_window)
        if ssim_window < 3 or ssim_window % 2 == 0:
            raise ConfigError(f"loss.ssim_window must be an odd integer >= 3, got {ssim_window}")
        self.ssim_window = ssim_window
        self.ignore_index = int(ignore_index)
        weights_t = None
        if class_weights is not None and len(class_weights) > 0:
            weights_t = torch.tensor([float(w) for w in class_weights], dtype=torch.float32)
        self.register_buffer("class_weights", weights_t, persistent=False)

    def forward(self, logits: Tensor, target: Tensor) -> tuple[Tensor, dict[str, Tensor]]:
        logits = logits.float()
        parts: dict[str, Tensor] = {}
        if self.ce_weight:
            parts["ce"] = cross_entropy(logits, target, self.class_weights, self.ignore_index)
        if self.ssim_weight or self.dice_weight or self.iou_weight:
            probs = logits.softmax(dim=1)
            onehot, valid = one_hot_valid(target, logits.shape[1], self.ignore_index)
            if self.ssim_weight:
                parts["ssim"] = ssim_loss(probs, onehot, valid, self.ssim_window)
            if self.dice_weight:
                parts["dice"] = soft_overlap_loss(probs, onehot, valid, "dice")
            if self.iou_weight:
                parts["iou"] = soft_overlap_loss(probs, onehot, valid, "iou")
        total = sum((getattr(self, f"{k}_weight") * v for k, v in parts.items()),
                    logits.new_zeros(()))
        return total, parts


def cross_entropy(logits: Tensor, target: Tensor, weight: Tensor | None = None,
                  ignore_index: int = IGNORE_INDEX) -> Tensor:
    """``F.cross_entropy``'s (class-weighted) mean over non-ignored pixels, but 0, not NaN,
    for a batch with no labelled pixel (a crop inside an eroded boundary or no-data area
    would otherwise poison the total and, through it, the weights)."""
    per_pixel = F.cross_entropy(logits, target, weight=weight, ignore_index=ignore_index,
                                reduction="none")
    valid = target != ignore_index
    if weight is None:
        norm = valid.sum(dtype=per_pixel.dtype)
    else:
        norm = (weight.to(per_pixel.dtype)[torch.where(valid, target, 0)] * valid).sum()
    return per_pixel.sum() / norm.clamp_min(torch.finfo(per_pixel.dtype).tiny)


def one_hot_valid(target: Tensor, num_classes: int, ignore_index: int = IGNORE_INDEX
                  ) -> tuple[Tensor, Tensor]:
    """One-hot labels (B, K, H, W) float32, all zero at ignored pixels, and the valid mask
    (B, 1, H, W) float32 (1 where the label is a class)."""
    valid = target != ignore_index
    onehot = F.one_hot(torch.where(valid, target, 0), num_classes)
    onehot = onehot.permute(0, 3, 1, 2).float() * valid.unsqueeze(1)
    return onehot, valid.unsqueeze(1).float()


def ssim_loss(probs: Tensor, onehot: Tensor, valid: Tensor, window: int = 11) -> Tensor:
    """``1 - SSIM`` (kornia, ``max_val=1``) per class channel, averaged over valid pixels.

    Both the probabilities and the one-hot labels are set to 0 at ignored pixels before
    SSIM. Without that, an ignored pixel's prediction would still enter the Gaussian
    windows of its valid neighbours and get a gradient from them; with it, ignored pixels
    look the same ("no class") in both maps, so what the network predicts there cannot
    change the loss. Their own map values are then excluded from the mean. No valid
    pixel gives 0 (with a zero gradient), not NaN. The window shrinks on inputs too small
    for it.
    """
    from kornia.metrics import ssim

    # kornia's reflect padding needs window // 2 < H, W; 2 * min - 1 is the largest odd fit.
    window = min(window, 2 * min(probs.shape[-2:]) - 1)
    sim = ssim(probs * valid, onehot, window, max_val=1.0)
    count = valid.sum() * probs.shape[1]
    return ((1.0 - sim) * valid).sum() / count.clamp_min(1.0)


def soft_overlap_loss(probs: Tensor, onehot: Tensor, valid: Tensor, kind: str = "dice",
                      eps: float = 1e-7) -> Tensor:
    """Soft Dice (``2|P∩T| / (|P|+|T|)``) or Jaccard (``|P∩T| / |P∪T|``) loss.

    Sums run over the batch and the valid pixels, per class; the loss is 1 minus the mean
    over the classes present in the (valid) labels, so a class absent from the batch
    neither rewards nor punishes (its score would be 0/0). Predicting an absent class
    still costs, through the present classes' lost overlap. No valid pixel gives 0.
    """
    probs = probs * valid
    dims = (0, 2, 3)
    inter = (probs * onehot).sum(dims)
    total = probs.sum(dims) + onehot.sum(dims)
    if kind == "dice":
        score = 2.0 * inter / total.clamp_min(eps)
    elif kind == "iou":
        score = inter / (total - inter).clamp_min(eps)
    else:
        raise ValueError(f"kind must be 'dice' or 'iou', got {kind!r}")
    present = onehot.sum(dims) > 0
    n_present = present.sum()
    return (1.0 - score).mul(present).sum() / n_present.clamp_min(1)
