"""Shared fixtures: small synthetic datasets in the real ISPRS layout (the real samples:
``tests.helpers.real_sample``)."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest

if os.environ.get("PYTEST_XDIST_WORKER"):
    # several test processes share the cores (pytest -n N): one thread each, also in the
    # runs they start as subprocesses, so that they do not oversubscribe the cores
    os.environ["OMP_NUM_THREADS"] = os.environ.get("SSSI_TEST_THREADS", "1")
    import torch

    torch.set_num_threads(int(os.environ["OMP_NUM_THREADS"]))


@pytest.fixture(scope="session")
def synthetic_root(tmp_path_factory) -> Path:
    """A 4-tile, 256 px synthetic Potsdam (3 train tiles, 1 test tile). Read-only; a run
    on it says so (``+debug=tiny data.synthetic.tiles=4``): a run that asks for other
    parameters is refused rather than replacing it."""
    from sssi.data.synthetic import generate

    return generate(tmp_path_factory.mktemp("synth") / "potsdam", tiles=4, size=256, seed=0)


@pytest.fixture(scope="session")
def pretext_ckpt(tmp_path_factory) -> Path:
    """A real checkpoint of the game on the synthetic tiles (2 epochs: warm-up, then the
    instructor); shared by the fine-tuning and selection tests."""
    from sssi.train import run
    from tests.helpers import SMALL, compose_train

    root = tmp_path_factory.mktemp("game")
    cfg = compose_train([*SMALL, "trainer.max_epochs=2", "task.schedule.warmup_epochs=1",
                         "task.image_every_n_steps=0"], root / "run", root / "data")
    run(cfg)
    return root / "run" / "checkpoints" / "last.ckpt"


@pytest.fixture
def potsdam_copy(synthetic_root, tmp_path) -> Path:
    """A private copy of the synthetic dataset that a test may damage."""
    dst = tmp_path / "potsdam"
    shutil.copytree(synthetic_root, dst)
    return dst
