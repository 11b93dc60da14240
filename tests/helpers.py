"""Test-only callbacks, added to runs with ``+callbacks.NAME._target_=tests.helpers.X``."""

from __future__ import annotations

import json
from pathlib import Path

import lightning as L
import torch


class DumpWeights(L.Callback):
    """Saves each rank's final parameters and the windows it trained on (DDP tests).

    Parameters only: BatchNorm running statistics are per rank under CPU DDP (no
    SyncBatchNorm without GPUs; DDP broadcasts rank 0's at every forward).
    """

    def __init__(self, dirpath: str) -> None:
        self.dirpath = Path(dirpath)
        self.windows: list[list[int]] = []

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        self.windows.extend(batch["window"].tolist())

    def on_train_end(self, trainer, pl_module) -> None:
        self.dirpath.mkdir(parents=True, exist_ok=True)
        weights = {k: v.detach().cpu().clone() for k, v in pl_module.named_parameters()}
        torch.save({"weights": weights, "windows": self.windows,
                    "world_size": trainer.world_size},
                   self.dirpath / f"rank{trainer.global_rank}.pt")


class RecordValMetrics(L.Callback):
    """Appends the validation metrics of every epoch to a JSON list file."""

    def __init__(self, path: str) -> None:
        self.path = Path(path)
        self.history: list[dict[str, float]] = []

    def on_validation_epoch_end(self, trainer, pl_module) -> None:
        if trainer.sanity_checking:
            return
        self.history.append({k: float(v) for k, v in trainer.callback_metrics.items()
                             if k.startswith("val/")})
        self.path.write_text(json.dumps(self.history))
