"""The first step whose loss was not finite, remembered without a host sync per step.

Reading a loss's value every step would stall a GPU; :class:`DivergenceWatch` keeps the
step number on the device and is asked only every few steps (and before validation and
checkpoints), so a diverged model is never saved over a good checkpoint.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor, nn

from sssi.errors import SssiError


class TrainingDivergedError(SssiError):
    """A player's loss became NaN or infinite."""


class DivergenceWatch(nn.Module):
    """Per named loss, the first step at which it was not finite (-1: none yet).

    A module so that its buffer follows the task to its device; the buffer is not
    persistent (checkpoints are only ever written before a divergence is seen)."""

    def __init__(self, names: Sequence[str]) -> None:
        super().__init__()
        self.names = tuple(names)
        self.register_buffer("first_bad", torch.full((len(self.names),), -1, dtype=torch.long),
                             persistent=False)

    def watch(self, loss: Tensor, name: str, step: int) -> None:
        """Remember ``step`` if ``loss`` is not finite and nothing was seen before."""
        i = self.names.index(name)
        bad = ~torch.isfinite(loss.detach())
        now = torch.tensor(step, device=self.first_bad.device)
        self.first_bad[i] = torch.where(bad & (self.first_bad[i] < 0), now, self.first_bad[i])

    def raise_if_diverged(self, where: str, last_checkpoint: str) -> None:
        """Raise :class:`TrainingDivergedError` naming the loss, the step, ``where`` (e.g.
        the epoch and phase) and the last good checkpoint, if one was seen (a host sync)."""
        for name, step in zip(self.names, self.first_bad.tolist(), strict=True):
            if step >= 0:
                raise TrainingDivergedError(
                    f"the {name}'s loss is NaN or infinite at step {step} ({where}); "
                    f"stopped. The last good checkpoint is intact: {last_checkpoint}")
