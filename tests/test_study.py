"""The label-efficiency study: a real two-stage sweep in fixed folders, restart, and the
aggregation of its run folders into tables and a plot."""

from __future__ import annotations

import csv
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path
from statistics import mean, stdev

import pytest

from sssi.aggregate import aggregate
from sssi.config import study_init
from sssi.errors import ConfigError
from tests.test_train import TINY

METHODS = ("random_blocks", "scratch")
SEEDS = (0, 1)


def _module(module: str, args: list[str], cwd: Path, timeout: int = 600
            ) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    return subprocess.run([sys.executable, "-m", module, *args], cwd=cwd, env=env,
                          capture_output=True, text=True, timeout=timeout)


def _finetune_args(study_dir: Path, data_dir: Path) -> list[str]:
    return ["-m", "+experiment=label_efficiency/demo_finetune", *TINY, "trainer.max_steps=2",
            f"study.method={','.join(METHODS)}", "data.label_fraction=0.5",
            f"seed={','.join(map(str, SEEDS))}", f"study.dir={study_dir}",
            f"paths.data_dir={data_dir}"]


@pytest.fixture(scope="module")
def study(tmp_path_factory) -> Path:
    """Stage 1 with one pretext method, stage 2 as one multirun of four jobs."""
    base = tmp_path_factory.mktemp("study")
    study_dir, data_dir = base / "study", base / "data"
    proc = _module("sssi.train", [
        "-m", "+experiment=label_efficiency/demo_pretrain", "mask_policy=random_blocks", *TINY,
        "trainer.max_steps=2", f"study.dir={study_dir}", f"paths.data_dir={data_dir}"], base)
    assert proc.returncode == 0, proc.stderr[-3000:]
    proc = _module("sssi.train", _finetune_args(study_dir, data_dir), base)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return study_dir


def _job(study_dir: Path, method: str, seed: int) -> Path:
    return study_dir / "finetune" / method / "fraction_0.5" / f"seed_{seed}"


@pytest.mark.slow
def test_stage_two_starts_from_stage_one_in_fixed_folders(study):
    assert (study / "pretrain" / "random_blocks" / "checkpoints" / "last.ckpt").is_file()
    for method in METHODS:
        for seed in SEEDS:
            job = _job(study, method, seed)
            metrics = json.loads((job / "metrics.json").read_text())
            assert 0.0 <= metrics["test/mIoU"] <= 1.0
            log = (job / "label_efficiency.log").read_text()
            pretext = "initialised from the pretext checkpoint" in log
            assert pretext == (method == "random_blocks"), log[-2000:]
    # the labelled crops follow the seed and are the same for both methods
    split = {(m, s): json.loads((_job(study, m, s) / "label_split.json").read_text())
             for m in METHODS for s in SEEDS}
    assert split["random_blocks", 0]["regions"] == split["scratch", 0]["regions"]
    assert split["random_blocks", 0]["regions"] != split["random_blocks", 1]["regions"]


@pytest.mark.slow
def test_a_restarted_sweep_skips_finished_jobs(study):
    stamps = {p: p.stat().st_mtime_ns for p in (study / "finetune").rglob("metrics.json")}
    assert len(stamps) == len(METHODS) * len(SEEDS)
    proc = _module("sssi.train", _finetune_args(study, study.parent / "data"), study.parent)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert (proc.stdout + proc.stderr).count("skip_if_done=true") == len(stamps)
    assert {p: p.stat().st_mtime_ns for p in (study / "finetune").rglob("metrics.json")} == stamps


@pytest.mark.slow
def test_aggregation_of_the_study_folders(study, tmp_path):
    # an unfinished job (no metrics.json yet) is reported and left out
    unfinished = study / "finetune" / "scratch" / "fraction_0.5" / "seed_9"
    shutil.copytree(_job(study, "scratch", 0) / ".hydra", unfinished / ".hydra")
    written = aggregate([study / "finetune"], out=tmp_path)

    expected = {}
    for method in METHODS:
        vals = [json.loads((_job(study, method, s) / "metrics.json").read_text())["test/mIoU"]
                for s in SEEDS]
        expected[method] = (mean(vals), stdev(vals))
    with written["csv"].open() as fh:
        rows = {r["method"]: r for r in csv.DictReader(fh)}
    assert set(rows) == set(METHODS)
    for method, (mu, sd) in expected.items():
        assert float(rows[method]["mIoU_mean"]) == pytest.approx(mu, abs=1e-6)
        assert float(rows[method]["mIoU_std"]) == pytest.approx(sd, abs=1e-6)
        assert rows[method]["n_seeds"] == "2" and float(rows[method]["label_fraction"]) == 0.5

    table = written["markdown"].read_text()
    assert "1 run folders had no metrics" in table
    for method, (mu, sd) in expected.items():
        assert f"| {method} | 50 % | 2 | {100 * mu:.1f} ± {100 * sd:.1f} |" in table
    with written["runs"].open() as fh:
        assert len(list(csv.DictReader(fh))) == len(METHODS) * len(SEEDS)
    png = written["plot"].read_bytes()
    assert png[:8] == b"\x89PNG\r\n\x1a\n" and len(png) > 10_000


def test_aggregate_without_runs_is_one_error_line_naming_the_folder(tmp_path):
    empty = tmp_path / "no_runs_here"
    empty.mkdir()
    proc = _module("sssi.aggregate", [str(empty)], tmp_path, timeout=120)
    assert proc.returncode == 1
    errors = [line for line in proc.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and str(empty) in errors[0]
    assert not list(empty.iterdir())  # nothing written


def test_study_init_maps_methods_to_their_starting_weights(tmp_path):
    assert study_init("scratch", "S/pretrain", None) is None
    assert study_init("instructor", "S/pretrain", None) == \
        "S/pretrain/instructor/checkpoints/last.ckpt"
    assert study_init("imagenet", "S/pretrain", "/w/resnet50.pth") == "/w/resnet50.pth"
    with pytest.raises(ConfigError, match=r"study.imagenet_weights"):
        study_init("imagenet", "S/pretrain", None)
    with pytest.raises(ConfigError, match=r"study.method"):
        study_init("a/b", "S/pretrain", None)
