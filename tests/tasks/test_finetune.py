"""Fine-tuning from the game: encoder initialisation from real checkpoints, end to end."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest
import torch

from sssi.checkpoints import checkpoint_kind, data_state, init_encoder
from sssi.errors import ConfigError
from sssi.models import build_backbone
from sssi.train import run
from tests.helpers import REPO, TINY, compose_train

TINY_SEG = [*TINY, "trainer.enable_progress_bar=false"]


def test_encoder_initialised_from_the_game_has_the_inpainters_weights(pretext_ckpt):
    ckpt = torch.load(pretext_ckpt, weights_only=True)
    state = ckpt["state_dict"]
    # bands and normalisation under a key that names no datamodule class
    assert data_state(ckpt) is ckpt["sssi_data"] and ckpt["sssi_data"]["band_names"]
    assert checkpoint_kind(ckpt) == "pretext"
    encoder = build_backbone("resnet18", in_channels=3)
    assert init_encoder(encoder, pretext_ckpt) == "pretext"
    own = encoder.state_dict()
    prefix = "game.inpainter.encoder."
    expected = {k[len(prefix):]: v for k, v in state.items() if k.startswith(prefix)}
    assert own.keys() == expected.keys()
    for k, v in own.items():
        assert torch.equal(v, expected[k]), k
    # the instructor's encoder is a different network: it must not have been taken
    instr = state["game.instructor.encoder.conv1.weight"]
    assert not torch.equal(own["conv1.weight"], instr)


def test_mismatched_backbone_or_file_is_reported_with_keys(pretext_ckpt, tmp_path):
    with pytest.raises(ConfigError, match=r"last.ckpt \(pretext checkpoint\).*(missing|unexp)"):
        init_encoder(build_backbone("resnet50", in_channels=3), pretext_ckpt)
    with pytest.raises(ConfigError, match=r"task.init=.*nothing.ckpt: file not found"):
        init_encoder(build_backbone("resnet18"), tmp_path / "nothing.ckpt")
    bad = tmp_path / "bad.ckpt"
    bad.write_bytes(b"garbage")
    with pytest.raises(ConfigError, match=r"task.init=.*bad.ckpt: cannot read"):
        init_encoder(build_backbone("resnet18"), bad)


@pytest.mark.slow
def test_demo_finetune_from_the_game_end_to_end(pretext_ckpt, tmp_path):
    cfg = compose_train(["+experiment=demo_finetune", f"task.init={pretext_ckpt}",
                       "data.label_fraction=0.1", *TINY_SEG], tmp_path / "ft",
                      pretext_ckpt.parents[2] / "data")
    metrics = run(cfg)
    assert 0 <= metrics["test/mIoU"] <= 1
    ckpt = torch.load(tmp_path / "ft" / "checkpoints" / "last.ckpt", weights_only=True)
    assert ckpt["hyper_parameters"]["init"] == str(pretext_ckpt)
    # a second segmentation run can start from this one's encoder
    encoder = build_backbone("resnet18")
    assert init_encoder(encoder, tmp_path / "ft" / "checkpoints" / "last.ckpt") == "segmentation"


def test_finetune_without_init_is_one_line_naming_the_key(tmp_path):
    root = REPO
    proc = subprocess.run([sys.executable, "-m", "sssi.train", "+experiment=demo_finetune",
                           f"hydra.run.dir={tmp_path / 'o'}", f"paths.data_dir={tmp_path}"],
                          cwd=root, capture_output=True, text=True, timeout=300,
                          env={**os.environ, "PYTHONUNBUFFERED": "1"})
    assert proc.returncode == 1
    errors = [line for line in proc.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and "task.init" in errors[0]
