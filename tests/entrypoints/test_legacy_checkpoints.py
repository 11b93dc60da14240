"""Checkpoints written before the house redesign (issue 12) still load: for evaluation
and prediction (a segmentation run) and as ``task.init`` (a pretext run and a
segmentation run). The files are rebuilt from ``tests/assets/legacy/`` (see
``tests.helpers.legacy_checkpoint``)."""

from __future__ import annotations

import json

import numpy as np
import rasterio
import torch
from hydra import compose, initialize_config_dir
from omegaconf import open_dict

from sssi.checkpoints import init_encoder
from sssi.cli import CONFIG_DIR
from sssi.inference import load_segmenter
from sssi.models import build_backbone
from sssi.predict import predict_file
from tests.helpers import legacy_checkpoint


def test_legacy_pretext_checkpoint_initialises_an_encoder(tmp_path):
    ckpt = legacy_checkpoint("pretext", tmp_path / "pretext.ckpt")
    encoder = build_backbone("resnet18", in_channels=3)
    assert init_encoder(encoder, ckpt) == "pretext"
    state = torch.load(ckpt, weights_only=True)["state_dict"]
    assert torch.equal(encoder.conv1.weight, state["inpainter.encoder.conv1.weight"])


def test_legacy_segmentation_checkpoint_evaluates_predicts_and_initialises(
        synthetic_root, tmp_path):
    from sssi.evaluate import run

    ckpt = legacy_checkpoint("segment", tmp_path / "segment.ckpt")
    loaded = load_segmenter(ckpt)
    assert loaded.band_names == ("R", "G", "B") and loaded.num_classes == 6
    assert loaded.class_names[0] == "impervious_surfaces"
    logits = loaded.model(torch.zeros(1, 3, 64, 64))
    assert logits.shape == (1, 6, 64, 64) and torch.isfinite(logits).all()

    with initialize_config_dir(config_dir=CONFIG_DIR, version_base="1.3"):
        cfg = compose("evaluate", overrides=[f"ckpt={ckpt}", f"data.root={synthetic_root}",
                                             "save_predictions=false", "window=128",
                                             "stride=128"])
    with open_dict(cfg):
        cfg.paths.output_dir = str(tmp_path / "eval")
    metrics = run(cfg)
    assert 0.0 <= metrics["mIoU"] <= 1.0
    assert json.loads((tmp_path / "eval" / "metrics.json").read_text())["tiles"]

    image = next((synthetic_root / "2_Ortho_RGB").glob("*.tif"))
    out = predict_file(loaded, image, tmp_path / "labels.tif", window=128, stride=128)
    with rasterio.open(out) as dst, rasterio.open(image) as src:
        labels = dst.read(1)
        assert dst.crs == src.crs and dst.transform == src.transform
    assert labels.shape == (256, 256) and np.all(labels < 6)

    encoder = build_backbone("resnet18", in_channels=3)
    assert init_encoder(encoder, ckpt) == "segmentation"


def test_a_game_checkpoint_from_before_sssi_game_loads_with_its_players_and_targets(tmp_path):
    """Written when the players sat at the top of the state dict (``inpainter.*``,
    ``reward_baseline.*``) and the configs named ``sssi.masking`` and ``sssi.losses``:
    the alias table (``sssi.checkpoints.LEGACY_*``) renames both on load."""
    from sssi.checkpoints import LEGACY_TARGETS
    from sssi.tasks import PretrainTask

    ckpt = legacy_checkpoint("game", tmp_path / "game.ckpt")
    saved = torch.load(ckpt, weights_only=True)
    old_targets = json.dumps(saved["hyper_parameters"])
    assert "sssi.masking.RandomBlocks" in old_targets and "inpainter.encoder.conv1.weight" \
        in saved["state_dict"]  # the old format, as written then
    task = PretrainTask.load_from_checkpoint(ckpt, map_location="cpu")
    assert task.hparams.mask_policy["random"]["_target_"] == "sssi.game.masking.RandomBlocks"
    assert task.hparams.loss["_target_"] == "sssi.game.loss.ReconstructionLoss"
    assert not any(old in json.dumps(task.hparams) for old in LEGACY_TARGETS)
    state = saved["state_dict"]
    assert torch.equal(task.game.inpainter.encoder.conv1.weight,
                       state["inpainter.encoder.conv1.weight"])
    assert torch.equal(task.game.instructor.encoder.conv1.weight,
                       state["instructor.encoder.conv1.weight"])
    assert torch.equal(task.game.reward_baseline.mean, state["reward_baseline.mean"])
    restored = task(torch.zeros(1, 3, 64, 64))
    assert restored.shape == (1, 3, 64, 64) and torch.isfinite(restored).all()
    encoder = build_backbone("resnet18", in_channels=3)
    assert init_encoder(encoder, ckpt) == "pretext"
    assert torch.equal(encoder.conv1.weight, state["inpainter.encoder.conv1.weight"])
