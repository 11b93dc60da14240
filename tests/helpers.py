"""What several test files share: where things are, the run sizes (the ``debug`` config
group), composing the real configs, running an entry point as a subprocess, the shared
real samples, a poisoned loss, and test-only callbacks (added to runs with
``+callbacks.NAME._target_=tests.helpers.X``). Fixtures live in ``conftest.py``."""

from __future__ import annotations

import json
import os
import shutil
import struct
import subprocess
import sys
import zlib
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import lightning as L
import pytest
import torch
from hydra import compose, initialize_config_dir
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig, open_dict

from sssi.cli import CONFIG_DIR

REPO = Path(__file__).resolve().parents[1]
CONF = REPO / "conf"
#: test data kept in the repository (reference key lists, old checkpoint skeletons)
ASSETS = REPO / "tests" / "assets"
#: the shared real imagery beside the checkout (never copied into the repository)
REAL = REPO.parent / "shared" / "data" / "real"

# run sizes from conf/debug/ (after any +experiment: the later default wins)
#: small enough for 2 CPU cores: 3 tiles of 256 px, 64 px crops, one short epoch
TINY = ["+debug=tiny"]
#: the demo game, smaller: 3 tiles of 256 px, 4 steps of batch 8 per epoch
SMALL = ["+experiment=demo_pretrain", "+debug=small"]


@contextmanager
def removed_after(path: Path) -> Iterator[Path]:
    """``path``, deleted with its contents when the block ends. A module fixture's run
    folder holds hundreds of MB of checkpoints that pytest would keep until the session
    ends; the suite's peak disk use is the sum of what is kept at once."""
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


class FillingFile:
    """A binary file on a disk that fills after ``room`` more bytes: the write that
    crosses it stores what fits and raises ``OSError(code)``, as the kernel does."""

    def __init__(self, fh: Any, room: int, code: int) -> None:
        self.fh, self.room, self.code = fh, room, code

    def write(self, data: Any) -> int:
        data = memoryview(data).cast("B")
        if len(data) > self.room:
            self.fh.write(data[:self.room])
            self.room = 0
            raise OSError(self.code, os.strerror(self.code))
        self.room -= len(data)
        return self.fh.write(data)

    def flush(self) -> None:
        self.fh.flush()


def real_sample(*parts: str) -> Path:
    """Path of a file of the shared real samples; skips the test where they are absent."""
    path = REAL.joinpath(*parts)
    if not path.exists():
        pytest.skip(f"real sample data not present: {path}")
    return path


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
    from sssi.game.loss import ReconstructionLoss

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


class SignalAt(L.Callback):
    """Sends this process ``signum`` at the start of training batch ``step`` (counted over
    the whole fit, from 0), as a scheduler's preemption or a Ctrl-C would."""

    def __init__(self, step: int, signum: int = 15) -> None:
        self.step, self.signum, self.seen = int(step), int(signum), 0

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        if self.seen == self.step:
            os.kill(os.getpid(), self.signum)
        self.seen += 1


class RecordValMetrics(L.Callback):
    """Appends the validation metrics of every epoch to a JSON list file."""

    def __init__(self, path: str) -> None:
        self.path = Path(path)
        self.history: list[dict[str, float]] = []

    def on_validation_end(self, trainer, pl_module) -> None:
        # after the module's own epoch-end logs (its on_validation_epoch_end runs after
        # the callbacks')
        if trainer.sanity_checking:
            return
        self.history.append({k: float(v) for k, v in trainer.callback_metrics.items()
                             if k.startswith("val/")})
        self.path.write_text(json.dumps(self.history))


LEGACY = ASSETS / "legacy"


def legacy_checkpoint(kind: str, path: Path, seed: int = 0) -> Path:
    """Rebuild a checkpoint written by an earlier sssi (``tests/assets/legacy/KIND_*.json``:
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


# ------------------------------------------------------------------ offline W&B run files
# Offline runs keep everything in their binary run-*.wandb file until `wandb sync`
# uploads it; the logging tests read back what sssi sent.
_HEADER = b":W&B"
_BLOCK = 32768  # LevelDB log format, as wandb writes it
_RECORD_HEADER = 7


def _records(path: Path) -> Iterator[Any]:
    """The protobuf records of a ``run-*.wandb`` file."""
    from wandb.proto import wandb_internal_pb2 as pb

    data = path.read_bytes()
    if data[:4] != _HEADER:
        raise ValueError(f"{path}: not a W&B run file")
    pos, parts = 7, []
    while pos + _RECORD_HEADER <= len(data):
        left = _BLOCK - pos % _BLOCK
        if left < _RECORD_HEADER:  # block trailer padding
            pos += left
            continue
        crc, length, kind = struct.unpack("<IHB", data[pos : pos + _RECORD_HEADER])
        if kind == 0 and length == 0:
            pos += left  # zero padding to the end of the block
            continue
        chunk = data[pos + _RECORD_HEADER : pos + _RECORD_HEADER + length]
        if len(chunk) < length:  # a run still writing: stop at its last whole record
            break
        if kind not in (1, 2, 3, 4) or zlib.crc32(chunk, zlib.crc32(bytes([kind]))) != crc:
            raise ValueError(f"{path}: corrupt record at byte {pos}")
        pos += _RECORD_HEADER + length
        if kind in (1, 2):  # full, first
            parts = [chunk]
        else:  # middle, last
            parts.append(chunk)
        if kind in (1, 4):
            record = pb.Record()
            record.ParseFromString(b"".join(parts))
            yield record


def _apply(target: dict, items) -> None:
    for item in items:
        keys = list(item.nested_key) or [item.key]
        node = target
        for k in keys[:-1]:
            node = node.setdefault(k, {})
        node[keys[-1]] = json.loads(item.value_json)


def read_offline_run(run_dir: str | Path) -> dict[str, Any]:
    """What an offline W&B run folder (``.../wandb/offline-run-*``) recorded:
    ``{"id", "project", "group", "job_type", "config", "summary", "artifacts",
    "complete"}``; ``complete``: the run's exit record is there (a run still going, or
    one whose process died, lacks it).

    ``summary`` holds the final values; a metric with a summary aggregation (see
    :class:`sssi.callbacks.WandbSummary`) is a dict such as ``{"max": 0.71}``.
    ``artifacts`` lists ``{"name", "type", "aliases", "files"}``.
    """
    run_dir = Path(run_dir)
    files = sorted(run_dir.glob("run-*.wandb"))
    if not files:
        raise FileNotFoundError(f"{run_dir}: no run-*.wandb file")
    out: dict[str, Any] = {"config": {}, "summary": {}, "artifacts": [], "complete": False}
    for record in _records(files[0]):
        kind = record.WhichOneof("record_type")
        if kind == "run":
            r = record.run
            out.update(id=r.run_id, project=r.project, group=r.run_group, job_type=r.job_type)
            _apply(out["config"], r.config.update)
            _apply(out["summary"], r.summary.update)
        elif kind == "config":
            _apply(out["config"], record.config.update)
        elif kind == "summary":
            _apply(out["summary"], record.summary.update)
            for item in record.summary.remove:
                out["summary"].pop(item.key, None)
        elif kind == "artifact":
            a = record.artifact
            out["artifacts"].append({"name": a.name, "type": a.type, "aliases": list(a.aliases),
                                     "files": [e.path for e in a.manifest.contents]})
        elif kind == "exit":
            out["complete"] = True
    out["config"].pop("_wandb", None)
    return out
