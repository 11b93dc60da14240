"""The real-data study at toy size: ``run.sh dubai`` on the shared Dubai images with one
pretext run and two fine-tuning jobs (full fine-tuning and the frozen-encoder probe),
scored on a test image by full-image evaluation (a window larger than the image), and
tabulated; then a label map of an ungeoreferenced JPEG from the probe's checkpoint."""

from __future__ import annotations

import csv
import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import rasterio

from tests.helpers import REPO, real_sample, removed_after, run_module

PROTOCOLS = ("finetune", "probe")


@pytest.fixture(scope="module")
def study(tmp_path_factory) -> Iterator[tuple[Path, Path, subprocess.CompletedProcess]]:
    root = real_sample("dubai")
    with removed_after(tmp_path_factory.mktemp("dubai_study")) as base:
        out = base / "study"
        tiny = [f"data.root={root}", "data.train_split=[2]", "data.val_split=[3]",
                "data.test_split=['2_001']", "data.crop_size=64", "data.batch_size=4",
                "data.samples_per_epoch=8", "data.num_workers=0", "data.val_window=64",
                "data.val_max_windows=2", "data.region_size=128", "trainer.max_steps=2",
                "trainer.log_every_n_steps=1",
                # one pretext method and one job per protocol instead of the grids
                "mask_policy=instructor", "study.method=instructor", "data.label_fraction=0.1",
                "seed=0"]
        env = {**os.environ, "PYTHON": sys.executable, "STUDY_DIR": str(out),
               "EVAL_ARGS": "window=576 stride=512", "PYTHONUNBUFFERED": "1"}
        proc = subprocess.run(["bash", str(REPO / "experiments/label_efficiency/run.sh"), "dubai",
                               *tiny], cwd=out.parent, env=env, capture_output=True, text=True,
                              timeout=900)
        assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
        yield root, out, proc


def _job(out: Path, protocol: str) -> Path:
    return out / "finetune" / protocol / "instructor" / "fraction_0.1" / "seed_0"


@pytest.mark.slow
def test_study_scores_both_protocols_on_the_test_images(study):
    _, out, _ = study
    assert (out / "pretrain" / "instructor" / "checkpoints" / "last.ckpt").is_file()
    rows = list(csv.DictReader((out / "results.csv").open()))
    assert {r["method"] for r in rows} == {f"instructor/{p}" for p in PROTOCOLS}
    for protocol in PROTOCOLS:
        job = _job(out, protocol)
        scored = json.loads((job / "evaluation" / "metrics.json").read_text())
        assert scored["settings"]["split"] == ["2_001"] and len(scored["tiles"]) == 1
        assert 0.0 <= scored["mIoU"] <= 1.0
        assert scored["class_names"] == ["building", "land", "road", "vegetation", "water"]
        split = json.loads((job / "label_split.json").read_text())
        assert split["pixel_fraction"] >= 0.1
        log = (job / "label_efficiency.log").read_text()
        # run once, by one of the two lanes (run.sh's LANES is 2 for dubai)
        assert log.count("initialised from the pretext checkpoint") == 1
        config = (job / ".hydra" / "config.yaml").read_text()
        assert ("freeze_encoder: true" in config) == (protocol == "probe")
    table = (out / "results.md").read_text()
    assert "instructor/finetune" in table and "instructor/probe" in table
    for stage in ("finetune", "probe", "evaluate"):
        assert [(out / "logs" / f"{stage}.lane{i}.log").is_file() for i in range(2)] == [
            True, True]
    timed = [line.split("\t") for line in (out / "wall_time.tsv").read_text().splitlines()]
    assert [name for name, _ in timed] == ["pretrain", "finetune", "probe", "evaluate"]
    assert all(int(seconds) >= 0 for _, seconds in timed)


@pytest.mark.slow
def test_probe_keeps_the_pretrained_encoder_and_maps_a_plain_jpeg(study, tmp_path):
    import torch

    root, out, _ = study
    ckpt = _job(out, "probe") / "checkpoints" / "last.ckpt"
    pretext = torch.load(out / "pretrain" / "instructor" / "checkpoints" / "last.ckpt",
                         map_location="cpu", weights_only=False)["state_dict"]
    probe = torch.load(ckpt, map_location="cpu", weights_only=False)["state_dict"]
    # the frozen encoder, BatchNorm statistics included, is the pretext encoder
    for key, value in probe.items():
        if key.startswith("model.encoder."):
            source = "game.inpainter.encoder." + key.removeprefix("model.encoder.")
            assert torch.equal(value, pretext[source]), key
    image = root / "Semantic segmentation dataset" / "Tile 2" / "images" / "image_part_001.jpg"
    proc = run_module("sssi.predict", [f"ckpt={ckpt}", f"input={image}",
                                       f"output={tmp_path / 'map.tif'}",
                                       f"hydra.run.dir={tmp_path / 'logs'}"], tmp_path)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "Warning" not in proc.stderr  # no georeferencing warnings for plain JPEGs
    item = json.loads((tmp_path / "map.json").read_text())  # its STAC Item: no footprint
    assert item["geometry"] is None and "bbox" not in item
    assert item["properties"]["proj:code"] is None
    with rasterio.open(tmp_path / "map.tif") as ds:
        assert ds.crs is None and ds.transform.is_identity
        assert (ds.width, ds.height) == (509, 544)
        assert set(np.unique(ds.read(1)).tolist()) <= set(range(5))
