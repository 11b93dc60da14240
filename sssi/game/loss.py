"""The inpainter's loss: the error it makes in the holes (and a little outside).

The paper's: squared error clamped at 2, averaged over bands; 0.99 x the mean in the
holes + 0.01 x the mean outside. The same per-pixel error map scores validation, the
instructor's reward and the classical reference, so every hole error sssi reports is
measured one way.
"""

from __future__ import annotations

from torch import Tensor, nn

from sssi.errors import ConfigError


def reconstruction_error(restored: Tensor, target: Tensor, kind: str = "l2",
                         clamp: float | None = 2.0) -> Tensor:
    """Per-pixel error (B, 1, H, W), averaged over bands; clamped like the paper (at 2).

    The clamp keeps a few saturated pixels from dominating the gradient; it is applied
    per band before averaging, as the reference code squares then clamps.
    """
    diff = restored.float() - target.float()
    err = diff.square() if kind == "l2" else diff.abs()
    if clamp is not None:
        err = err.clamp(max=clamp)
    return err.mean(dim=1, keepdim=True)


def masked_mean(values: Tensor, weights: Tensor, eps: float = 1e-6) -> Tensor:
    """Mean of ``values`` weighted by ``weights`` (broadcast over bands)."""
    return (values * weights).sum() / (weights.expand_as(values).sum() + eps)


class ReconstructionLoss(nn.Module):
    """The inpainter's loss: error in the holes, a little context, optional SSIM.

    ``hole_weight`` x mean error in the holes + ``context_weight`` x mean error outside
    (the paper: 0.99 / 0.01, squared error clamped at 2). ``ssim_weight`` adds
    ``1 - SSIM`` (kornia) averaged over the holes; ``ssim_range`` is the dynamic range
    of the images (standardised images span roughly 6, images in [-1, 1] span 2).
    """

    def __init__(self, kind: str = "l2", clamp: float | None = 2.0, hole_weight: float = 0.99,
                 context_weight: float = 0.01, ssim_weight: float = 0.0, ssim_window: int = 11,
                 ssim_range: float = 6.0) -> None:
        super().__init__()
        if kind not in ("l1", "l2"):
            raise ConfigError(f"task.loss.kind={kind!r}: expected 'l1' or 'l2'")
        for key, weight in (("hole_weight", hole_weight), ("context_weight", context_weight),
                            ("ssim_weight", ssim_weight)):
            if float(weight) < 0:
                raise ConfigError(f"task.loss.{key}={float(weight)}: expected a weight >= 0")
        if clamp is not None and float(clamp) <= 0:
            raise ConfigError(f"task.loss.clamp={float(clamp)}: expected a positive error bound "
                              "or null (no clamp)")
        self.kind = kind
        self.clamp = clamp
        self.hole_weight = float(hole_weight)
        self.context_weight = float(context_weight)
        self.ssim_weight = float(ssim_weight)
        self.ssim_window = int(ssim_window)
        self.ssim_range = float(ssim_range)

    def error_map(self, restored: Tensor, target: Tensor) -> Tensor:
        return reconstruction_error(restored, target, self.kind, self.clamp)

    def forward(self, restored: Tensor, target: Tensor, mask: Tensor
                ) -> tuple[Tensor, dict[str, Tensor]]:
        err = self.error_map(restored, target)
        parts = {"hole": masked_mean(err, mask), "context": masked_mean(err, 1.0 - mask)}
        total = self.hole_weight * parts["hole"] + self.context_weight * parts["context"]
        if self.ssim_weight:
            from kornia.metrics import ssim

            sim = ssim(restored.float(), target.float(), self.ssim_window,
                       max_val=self.ssim_range)
            parts["ssim"] = masked_mean(1.0 - sim, mask)
            total = total + self.ssim_weight * parts["ssim"]
        return total, parts
