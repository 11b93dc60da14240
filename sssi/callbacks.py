"""Lightning callbacks of sssi (everything else uses Lightning's own)."""

from __future__ import annotations

import logging
from pathlib import Path

import lightning as L
import numpy as np
import torch
from torch import Tensor

from sssi.utils.io import write_png

log = logging.getLogger(__name__)


class ImageGrid(L.Callback):
    """Saves image grids of the game: input | mask | masked input | restoration | result.

    The task keeps a few images every ``task.image_every_n_steps`` steps; this callback
    writes them as PNG under ``dirpath`` (temporary name, then rename) and hands them to
    loggers that show images (W&B, TensorBoard). *result* is the input with the holes
    filled by the restoration. Images are shown with a per-band min-max stretch of
    the input, so standardised data looks natural.
    """

    def __init__(self, dirpath: str, bands: tuple[int, int, int] = (0, 1, 2)) -> None:
        self.dirpath = Path(dirpath)
        self.bands = tuple(bands)

    def on_train_batch_end(self, trainer: L.Trainer, pl_module: L.LightningModule,
                           outputs, batch, batch_idx: int) -> None:
        pop = getattr(pl_module, "pop_visuals", None)
        visuals = pop() if pop is not None else None
        if visuals is None or not trainer.is_global_zero:
            return
        grid = make_grid(visuals["image"], visuals["mask"], visuals["restored"], self.bands)
        step = trainer.global_step
        self.dirpath.mkdir(parents=True, exist_ok=True)
        path = self.dirpath / f"game_step{step:07d}.png"
        write_png(path, grid[:, :, ::-1])
        for lg in trainer.loggers:
            if hasattr(lg, "log_image"):  # W&B
                lg.log_image(key="game/grid", images=[grid], step=step)
            elif hasattr(getattr(lg, "experiment", None), "add_image"):  # TensorBoard
                lg.experiment.add_image("game/grid", grid, step, dataformats="HWC")


def make_grid(images: Tensor, masks: Tensor, restored: Tensor,
              bands: tuple[int, ...] = (0, 1, 2)) -> np.ndarray:
    """Rows of [input, mask, masked input, restoration, input with holes filled] as one
    uint8 (H, W, 3) array."""
    idx = [b for b in bands if b < images.shape[1]] or [0]
    while len(idx) < 3:
        idx.append(idx[-1])
    img = images[:, idx].float().cpu()
    rec = restored[:, idx].float().cpu()
    m = masks.float().cpu()
    lo = img.amin(dim=(0, 2, 3), keepdim=True)
    hi = img.amax(dim=(0, 2, 3), keepdim=True)

    def show(x: Tensor) -> Tensor:
        return ((x - lo) / (hi - lo).clamp_min(1e-6)).clamp(0, 1)

    rows = []
    for i in range(img.shape[0]):
        a = show(img[i : i + 1])
        hole = m[i : i + 1]
        r = show(rec[i : i + 1])
        tiles = [a, hole.expand_as(a), a * (1 - hole), r, a * (1 - hole) + r * hole]
        rows.append(torch.cat(tiles, dim=3))
    grid = torch.cat(rows, dim=2)[0].permute(1, 2, 0)
    return (grid.numpy() * 255).round().astype(np.uint8)
