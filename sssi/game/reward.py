"""The instructor's reward: how much a soft mask over the inpainter's error earns.

``raw`` (the paper): the mask-weighted mean error. ``relative``: per cell, the error
minus what the inpainter usually gets wrong at that position (:class:`PositionBaseline`),
so that the always-hard crop edge stops paying. Pure tensors in, tensors out: the task
decides when to update the baseline and how to reduce it over DDP ranks.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch
from torch import Tensor, nn
from torch.nn import functional as F

from sssi.errors import ConfigError

#: ``mask_policy.instructor.reward``
REWARDS = ("raw", "relative")


def raw_reward(soft: Tensor, err: Tensor) -> Tensor:
    """The soft-mask-weighted mean of the per-pixel error ``err`` (both ``(B, 1, H, W)``);
    also the hole error that the logs report."""
    return (soft * err).sum() / soft.sum().clamp_min(1e-6)


def relative_reward(soft_cells: Tensor, cell_err: Tensor, baseline: Tensor
                    ) -> tuple[Tensor, Tensor]:
    """``(reward, hole_error)`` of soft cell masks ``(B, 1, h, w)`` over the per-cell
    errors ``cell_err``: the soft-mask-weighted mean of ``cell_err - baseline`` (0 when
    every cell's error is its position's baseline ``(h, w)``) and of ``cell_err`` (the
    raw reward, for the logs)."""
    total = soft_cells.sum().clamp_min(1e-6)
    reward = (soft_cells * (cell_err - baseline)).sum() / total
    hole_error = (soft_cells.detach() * cell_err).sum() / total.detach()
    return reward, hole_error


class PositionBaseline(nn.Module):
    """Exponential moving average of the inpainter's hole error per cell position.

    The relative instructor reward subtracts it, so that a cell pays only for being
    harder than what the inpainter usually gets wrong *at that position* (the crop's
    edge is always hard: a positional, not a content, signal). Buffers, so that
    checkpoints resume exactly: ``mean`` ``(h, w)`` float32 and ``seen`` ``(h, w)``
    bool. The grid is sized on the first update (or by the checkpoint loaded): it is
    the instructor's cell grid, fixed for a run (zoomed crops are resized back to the
    crop size); a different grid later raises :class:`ConfigError`. A position takes
    its first observation as is, later ones with ``momentum``; unseen positions have
    baseline 0 (the raw reward), which also draws the instructor to explore them.
    """

    def __init__(self, momentum: float = 0.9) -> None:
        super().__init__()
        if isinstance(momentum, bool) or not isinstance(momentum, int | float) or \
                not 0.0 <= float(momentum) < 1.0:
            raise ConfigError(f"mask_policy.instructor.reward_baseline_momentum={momentum!r}: "
                              "expected a number "
                              "in [0, 1) (the weight of the old baseline in the moving average)")
        self.momentum = float(momentum)
        self.register_buffer("mean", torch.zeros(0, 0))
        self.register_buffer("seen", torch.zeros(0, 0, dtype=torch.bool))
        self.register_load_state_dict_pre_hook(self._resize_to_checkpoint)

    def extra_repr(self) -> str:
        return f"momentum={self.momentum}, grid={tuple(self.mean.shape)}"

    @staticmethod
    def _resize_to_checkpoint(module: PositionBaseline, state_dict: Mapping, prefix: str,
                              *args: Any) -> None:
        # lazily sized: take the checkpoint's grid before load_state_dict copies into it
        for name in ("mean", "seen"):
            value = state_dict.get(prefix + name)
            current = getattr(module, name)
            if value is not None and value.shape != current.shape:
                setattr(module, name, torch.zeros(value.shape, dtype=current.dtype,
                                                  device=current.device))

    def _check_grid(self, grid: tuple[int, int], device: torch.device) -> None:
        if self.mean.numel() == 0:
            self.mean = torch.zeros(grid, device=device)
            self.seen = torch.zeros(grid, dtype=torch.bool, device=device)
        elif tuple(self.mean.shape) != tuple(grid):
            h, w = self.mean.shape
            raise ConfigError(
                f"mask_policy.instructor.reward=relative: the instructor's cell grid changed from "
                f"{h}x{w} to {grid[0]}x{grid[1]} during the run; the per-position reward "
                "baseline needs one crop size (data.crop_size) for the whole run")

    def value(self, grid: tuple[int, int], device: torch.device) -> Tensor:
        """The baseline ``(h, w)``: the moving average where seen, else 0."""
        self._check_grid(grid, device)
        return torch.where(self.seen, self.mean, torch.zeros_like(self.mean))

    @torch.no_grad()
    def update(self, sums: Tensor, counts: Tensor) -> None:
        """Fold in one batch: ``sums`` ``(h, w)`` of per-cell mean hole errors over the
        images that erased that cell, ``counts`` ``(h, w)`` how many did. Positions not
        erased (count 0) keep their value."""
        self._check_grid(tuple(sums.shape), sums.device)
        erased = counts > 0
        batch_mean = sums / counts.clamp_min(1)
        ema = self.momentum * self.mean + (1.0 - self.momentum) * batch_mean
        new = torch.where(self.seen, ema, batch_mean)
        self.mean = torch.where(erased, new, self.mean)
        self.seen = self.seen | erased


def cell_errors(err: Tensor, grid: tuple[int, int] | torch.Size) -> Tensor:
    """Per-pixel error ``(B, 1, H, W)`` -> mean error of each cell ``(B, 1, h, w)``."""
    return F.adaptive_avg_pool2d(err.float(), tuple(grid))
