"""The demo and the label-efficiency study: the whole story at toy size (a pretext run,
a fine-tuning multirun of two jobs that start from it or from scratch, evaluation,
table, maps), restart of a sweep with fixed folders, and the aggregation of real run
folders into tables and a plot."""

from __future__ import annotations

import csv
import json
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path
from statistics import mean, stdev

import numpy as np
import pytest
import yaml

from sssi.aggregate import aggregate
from sssi.config import study_init
from sssi.errors import ConfigError
from tests.helpers import REPO, TINY, removed_after, run_module

METHODS = ("instructor", "scratch")
TRAIN = [*TINY, "trainer.max_steps=2"]


_module = run_module


@pytest.fixture(scope="module")
def demo(tmp_path_factory) -> Iterator[tuple[Path, Path, subprocess.CompletedProcess]]:
    """``python -m sssi.demo`` on 3 tiles of 256 px with two training steps per run."""
    with removed_after(tmp_path_factory.mktemp("demo")) as base:
        out, data = base / "demo", base / "data"
        proc = _module("sssi.demo", ["--out", str(out), "--data-root", str(data), "--tiles",
                                     "3", "--size", "256", *TRAIN], base)
        assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
        yield out, data, proc


def _job(out: Path, method: str) -> Path:
    return out / "finetune" / method / "fraction_0.1" / "seed_0"


def _test_tile(root: Path) -> Path:
    tid = json.loads((root / "SYNTHETIC.json").read_text())["test_tiles"][0]
    return next((root / "2_Ortho_RGB").glob(f"*_{tid}_RGB.tif"))


@pytest.mark.slow
def test_demo_tells_the_whole_story(demo):
    import rasterio

    out, data, proc = demo
    for step in ("1/6", "2/6", "3/6", "4/6", "5/6", "6/6"):
        assert f"== {step}" in proc.stdout
    assert "$ python -m sssi.train +experiment=demo_pretrain" in proc.stdout
    assert "Where everything is" in proc.stdout
    # one seed on synthetic tiles proves nothing; the summary says so and points to the
    # real-image measurements, which exist
    assert "not evidence either way" in proc.stdout
    assert "experiments/label_efficiency/results_dubai/" in proc.stdout
    repo = REPO
    assert (repo / "experiments/label_efficiency/results_dubai/README.md").is_file()
    table = (out / "results.md").read_text()
    tile = _test_tile(data)
    for method in METHODS:
        score = json.loads((_job(out, method) / "evaluation" / "metrics.json").read_text())
        assert f"| {method} | 10 % | 1 | {100 * score['mIoU']:.1f} |" in table
        assert f"{100 * score['mIoU']:.1f}%" in proc.stdout  # the closing summary
        with rasterio.open(out / "predictions" / f"{tile.stem}_{method}.tif") as dst, \
                rasterio.open(tile) as src:
            assert dst.crs == src.crs and dst.transform == src.transform
            assert set(np.unique(dst.read(1)).tolist()) <= {*range(6), 255}


@pytest.mark.slow
def test_fine_tuning_jobs_start_from_stage_one_in_fixed_folders(demo):
    out, _, _ = demo
    assert (out / "pretrain" / "instructor" / "checkpoints" / "last.ckpt").is_file()
    for method in METHODS:
        job = _job(out, method)
        assert 0.0 <= json.loads((job / "metrics.json").read_text())["test/mIoU"] <= 1.0
        log = (job / "label_efficiency.log").read_text()
        assert ("initialised from the pretext checkpoint" in log) == (method == "instructor")
        cfg = yaml.safe_load((job / ".hydra" / "config.yaml").read_text())
        assert cfg["data"]["split_seed"] == "${seed}"  # labelled crops follow the seed
        assert cfg["callbacks"]["model_checkpoint"]["monitor"] is None  # no selection on test


@pytest.mark.slow
def test_a_restarted_sweep_skips_finished_jobs_and_resumes_an_interrupted_one(demo):
    """The scratch job is made to look interrupted (its checkpoint, no metrics.json):
    the restarted sweep resumes it from last.ckpt and skips the finished one."""
    out, data, _ = demo
    stamps = {p: p.stat().st_mtime_ns for p in (out / "finetune").rglob("metrics.json")}
    assert len(stamps) == len(METHODS) * 2  # training and evaluation
    (cut,) = [p for p in stamps if "scratch" in p.parts and p.parent.name != "evaluation"]
    cut.unlink()
    proc = _module("sssi.train", [
        "-m", "+experiment=label_efficiency/demo_finetune", f"data.root={data}",
        f"study.dir={out}", f"study.method={','.join(METHODS)}", "data.label_fraction=0.1",
        "seed=0", *TRAIN], out.parent)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert (proc.stdout + proc.stderr).count("skip_if_done=true") == len(METHODS) - 1
    log = (cut.parent / "label_efficiency.log").read_text()
    assert f"resuming from {cut.parent / 'checkpoints' / 'last.ckpt'}" in log
    assert cut.is_file()
    assert {p: t for p, t in stamps.items() if p != cut} == {
        p: p.stat().st_mtime_ns for p in stamps if p != cut}


@pytest.mark.slow
def test_aggregation_of_real_run_folders(demo, tmp_path):
    out, _, _ = demo
    runs = tmp_path / "runs"
    shutil.copytree(out / "finetune", runs / "finetune", ignore=shutil.ignore_patterns("*.ckpt"))
    # a second seed of each method: the same run with another seed and score
    for method in METHODS:
        src, dst = _job(runs, method), _job(runs, method).with_name("seed_1")
        shutil.copytree(src, dst)
        cfg = (dst / ".hydra" / "config.yaml").read_text().replace("\nseed: 0\n", "\nseed: 1\n")
        (dst / ".hydra" / "config.yaml").write_text(cfg)
        metrics = json.loads((dst / "metrics.json").read_text())
        metrics["test/mIoU"] = metrics["test/mIoU"] / 2 + 0.1
        (dst / "metrics.json").write_text(json.dumps(metrics))
    # a job that has not finished (no metrics.json yet) is reported and left out
    shutil.copytree(_job(runs, "scratch") / ".hydra", _job(runs, "scratch").with_name(
        "seed_9") / ".hydra")
    written = aggregate([runs / "finetune"], out=tmp_path / "table")

    expected = {}
    for method in METHODS:
        vals = [json.loads((_job(runs, method).with_name(s) / "metrics.json").read_text())
                ["test/mIoU"] for s in ("seed_0", "seed_1")]
        expected[method] = (mean(vals), stdev(vals))
    with written["csv"].open() as fh:
        rows = {r["method"]: r for r in csv.DictReader(fh)}
    assert set(rows) == set(METHODS)
    for method, (mu, sd) in expected.items():
        assert float(rows[method]["mIoU_mean"]) == pytest.approx(mu, abs=1e-6)
        assert float(rows[method]["mIoU_std"]) == pytest.approx(sd, abs=1e-6)
        assert rows[method]["n_seeds"] == "2" and float(rows[method]["label_fraction"]) == 0.1
    table = written["markdown"].read_text()
    assert "1 run folders had no metrics" in table
    for method, (mu, sd) in expected.items():
        assert f"| {method} | 10 % | 2 | {100 * mu:.1f} ± {100 * sd:.1f} |" in table
    with written["runs"].open() as fh:
        assert len(list(csv.DictReader(fh))) == 2 * len(METHODS)
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


def test_study_init_maps_methods_to_their_starting_weights():
    assert study_init("scratch", "S/pretrain", None) is None
    assert study_init("instructor", "S/pretrain", None) == \
        "S/pretrain/instructor/checkpoints/last.ckpt"
    assert study_init("imagenet", "S/pretrain", "/w/resnet50.pth") == "/w/resnet50.pth"
    with pytest.raises(ConfigError, match=r"study.imagenet_weights"):
        study_init("imagenet", "S/pretrain", None)
    with pytest.raises(ConfigError, match=r"study.method"):
        study_init("a/b", "S/pretrain", None)


def test_paired_differences_compare_within_a_protocol_seed_by_seed():
    from sssi.aggregate import Paired, Run, group_runs, paired_differences, paired_markdown

    scores = {  # (method, seed) -> mIoU at 10 % labels
        ("instructor/finetune", 0): 0.40, ("instructor/finetune", 1): 0.44,
        ("instructor/finetune", 2): 0.42,
        ("scratch/finetune", 0): 0.30, ("scratch/finetune", 1): 0.36,
        ("scratch/finetune", 2): 0.33,
        ("random_blocks/finetune", 0): 0.41, ("random_blocks/finetune", 1): 0.40,
        ("random_blocks/finetune", 2): 0.47,
        ("instructor/probe", 0): 0.20, ("instructor/probe", 1): 0.22,
        ("scratch/probe", 0): 0.25, ("scratch/probe", 1): 0.21,
    }
    runs = [Run(Path(f"{m}/{s}"), m, 0.1, s, {"mIoU": v}) for (m, s), v in scores.items()]
    pairs = paired_differences(runs, group_runs(runs, ["mIoU"]), "mIoU",
                               ["scratch", "random_blocks"])
    found = {(p.method, p.baseline): p for p in pairs}
    # each method against each baseline of its own protocol; the baselines once
    assert set(found) == {("instructor/finetune", "scratch/finetune"),
                          ("random_blocks/finetune", "scratch/finetune"),
                          ("instructor/probe", "scratch/probe"),
                          ("instructor/finetune", "random_blocks/finetune")}
    game = found[("instructor/finetune", "scratch/finetune")]
    assert game.seeds == [0, 1, 2]
    assert game.differences == pytest.approx([0.10, 0.08, 0.09])
    # two-sided, on the pairs: 9 ± 1 points, t(2) = 4.303 -> 9 ± 2.5 is above 0
    assert game.sd == pytest.approx(0.01)
    assert game.interval == pytest.approx((0.09 - 4.3027 * 0.01 / 3 ** 0.5,
                                           0.09 + 4.3027 * 0.01 / 3 ** 0.5), abs=1e-4)
    assert game.verdict == "ahead"
    versus_blocks = found[("instructor/finetune", "random_blocks/finetune")]
    assert versus_blocks.differences == pytest.approx([-0.01, 0.04, -0.05])
    assert versus_blocks.verdict == "level"
    probe = found[("instructor/probe", "scratch/probe")]
    assert probe.differences == pytest.approx([-0.05, 0.01]) and probe.verdict == "level"
    # the pairing counts: a loss on every seed is "behind" even where the two methods'
    # own spreads over seeds (which hold the seeds' luck) are far larger than the gap
    behind = Paired("a", "b", 0.1, [0, 1, 2], [-0.02, -0.021, -0.019])
    assert behind.verdict == "behind" and behind.interval[1] < 0
    assert Paired("a", "b", 0.1, [0], [0.3]).verdict == "level"  # one seed: no interval
    table = paired_markdown(pairs, "mIoU")
    assert "| instructor/finetune | scratch/finetune | 10 % | 3 | +9.0 ± 1.0 | [+6.5, +11.5] | " \
           "0: +10.0, 1: +8.0, 2: +9.0 | ahead |" in table


def test_pair_by_seed_pairs_within_a_cell_and_pools_under_a_shared_name():
    from sssi.aggregate import pair_by_seed, seed_differences

    rows = [  # two pretext seeds of one method against scratch, two protocols
        {"start": "scratch", "protocol": "probe", "label_fraction": 0.1, "seed": 0, "mIoU": 0.30},
        {"start": "scratch", "protocol": "probe", "label_fraction": 0.1, "seed": 1, "mIoU": 0.20},
        {"start": "scratch", "protocol": "finetune", "label_fraction": 0.1, "seed": 0,
         "mIoU": 0.50},
        {"start": "b/seed_0", "protocol": "probe", "label_fraction": 0.1, "seed": 0, "mIoU": 0.35},
        {"start": "b/seed_0", "protocol": "probe", "label_fraction": 0.1, "seed": 1, "mIoU": 0.21},
        {"start": "b/seed_1", "protocol": "probe", "label_fraction": 0.1, "seed": 0, "mIoU": 0.28},
        {"start": "b/seed_1", "protocol": "finetune", "label_fraction": 0.1, "seed": 0,
         "mIoU": 0.44},
        # no scratch run of seed 2, and a run without a score: neither is paired
        {"start": "b/seed_1", "protocol": "probe", "label_fraction": 0.1, "seed": 2, "mIoU": 0.9},
        {"start": "b/seed_0", "protocol": "finetune", "label_fraction": 0.1, "seed": 0},
    ]

    def is_scratch(r):
        return r["start"] == "scratch"

    def cell(r):
        return r["protocol"], r["label_fraction"]

    diffs = [(r["start"], r["protocol"], r["seed"], d)
             for r, d in seed_differences(rows, is_scratch, cell)]
    assert [d[:3] for d in diffs] == [("b/seed_0", "probe", 0), ("b/seed_0", "probe", 1),
                                      ("b/seed_1", "probe", 0), ("b/seed_1", "finetune", 0)]
    assert [d[3] for d in diffs] == pytest.approx([5.0, 1.0, -2.0, -6.0])  # points
    pairs = pair_by_seed(rows, is_scratch, cell, lambda r: [r["start"], "b/all"],
                         lambda c: f"scratch/{c[0]}")
    pooled = pairs[("b/all", "probe", 0.1)]
    assert pooled.baseline == "scratch/probe" and pooled.fraction == 0.1
    assert pooled.seeds == [0, 1, 0] and pooled.differences == pytest.approx([5.0, 1.0, -2.0])
    assert pairs[("b/seed_1", "finetune", 0.1)].differences == pytest.approx([-6.0])
    assert ("b/seed_0", "finetune", 0.1) not in pairs
    # b/seed_1 alone feeds the pooled name there: no pooled row, it would be b/seed_1 again
    assert ("b/all", "finetune", 0.1) not in pairs


def test_mean_sd_pct_writes_a_collectors_cell_in_percent():
    from sssi.aggregate import mean_sd_pct

    assert mean_sd_pct([]) == "–"
    assert mean_sd_pct([0.3456]) == "34.6"  # one run: no spread to state
    assert mean_sd_pct([0.1, 0.3]) == f"20.0 ± {100 * stdev([0.1, 0.3]):.1f}" == "20.0 ± 14.1"
