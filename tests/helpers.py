"""What several test files share: composing the real configs, running an entry point
as a subprocess, a poisoned loss, and test-only callbacks (added to runs with
``+callbacks.NAME._target_=tests.helpers.X``)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import lightning as L
import torch
from hydra import compose, initialize_config_dir
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig, open_dict

from sssi.cli import CONFIG_DIR

# small enough for 2 CPU cores: 3 tiles of 256 px, 64 px crops, one short epoch
TINY = [
    "data.synthetic.size=256", "data.synthetic.tiles=3", "data.crop_size=64",
    "data.batch_size=4", "data.samples_per_epoch=8", "data.num_workers=0",
    "data.region_size=128", "trainer.max_epochs=1", "trainer.log_every_n_steps=1",
]


def compose_train(overrides: list[str], out: Path | None = None, data_dir: Path | None = None,
                  hydra_node: bool = False) -> DictConfig:
    """``conf/train.yaml`` with ``overrides``, as ``python -m sssi.train`` would see it:
    Hydra's run-time config set and its node removed, output and data folders given.
    ``hydra_node=True`` returns the composition with the ``hydra`` node (launcher tests).
    """
    with initialize_config_dir(config_dir=CONFIG_DIR, version_base="1.3"):
        cfg = compose("train", overrides=overrides, return_hydra_config=True)
        if hydra_node:
            return cfg
        HydraConfig.instance().set_config(cfg)
        with open_dict(cfg):
            del cfg["hydra"]  # as in a real run: the app never sees the hydra node
    with open_dict(cfg):
        cfg.paths.output_dir = str(out or "unused")
        cfg.paths.data_dir = str(data_dir or "unused")
    return cfg


def run_module(module: str, args: list[str], cwd: Path, timeout: int = 600
               ) -> subprocess.CompletedProcess:
    """``python -m module args`` in ``cwd`` with this interpreter; output captured."""
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    return subprocess.run([sys.executable, "-m", module, *args], cwd=cwd, env=env,
                          capture_output=True, text=True, timeout=timeout)


def poison_reconstruction_loss(monkeypatch, nth_call: int) -> None:
    """Make the ``nth_call``-th reconstruction loss (1-based, over the test) NaN."""
    from sssi.losses import ReconstructionLoss

    calls = {"n": 0}
    real_forward = ReconstructionLoss.forward

    def poisoned(self, restored, target, mask):
        calls["n"] += 1
        total, parts = real_forward(self, restored, target, mask)
        return (total * float("nan") if calls["n"] == nth_call else total), parts

    monkeypatch.setattr(ReconstructionLoss, "forward", poisoned)


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


LEGACY = Path(__file__).resolve().parent / "data" / "legacy"


def legacy_checkpoint(kind: str, path: Path, seed: int = 0) -> Path:
    """Rebuild a checkpoint written by an earlier sssi (``tests/data/legacy/KIND_*.json``:
    everything the file held but the tensors, which are stored as shapes and refilled
    with seeded random values) at ``path``. Keeps the old format's keys and hyper-
    parameters exactly, so loaders can be tested against it without 100 MB of weights."""
    (skeleton,) = sorted(LEGACY.glob(f"{kind}_*.json"))
    ckpt = json.loads(skeleton.read_text())
    g = torch.Generator().manual_seed(seed)
    state = {}
    for key, (shape, dtype) in ckpt["state_dict"].items():
        dt = getattr(torch, dtype)
        if dt.is_floating_point:
            value = torch.randn(shape, generator=g, dtype=dt) * 0.05
            if key.endswith("running_var"):
                value = value.abs() + 1.0
        else:
            value = torch.zeros(shape, dtype=dt)
        state[key] = value
    ckpt["state_dict"] = state
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save(ckpt, path)
    return path
