"""The budget curve's tables (experiments/label_efficiency/collect_scaling.py) on a
hand-made OUT folder, and dubai_scaling.sh's refusals."""

from __future__ import annotations

import csv
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from experiments.label_efficiency import collect_scaling
from tests.helpers import REPO, real_sample

SCRIPT = REPO / "experiments/label_efficiency/dubai_scaling.sh"
BUDGETS = (1000, 10000, 100000)


def _probe(out: Path, start: str, seed: int, layer3: float, layer4: float) -> None:
    run = out / "score" / "probe" / start / "fraction_0.1" / f"seed_{seed}"
    run.mkdir(parents=True)
    (run / "probe.json").write_text(json.dumps(
        {"layers": {"layer3": {"mIoU": layer3}, "layer4": {"mIoU": layer4}}}))


def _finetune(out: Path, start: str, seed: int, miou: float) -> None:
    run = out / "score" / "finetune" / start / "fraction_0.1" / f"seed_{seed}"
    run.mkdir(parents=True)
    (run / "metrics.json").write_text(json.dumps({"val/mIoU": miou}))


@pytest.fixture
def out(tmp_path) -> Path:
    """Blocks at three budgets, each decade 2 points better on layer3 than the last
    (seed noise added), scratch at a fixed score per seed; two legs of wall time."""
    out = tmp_path / "out"
    run = out / "pretext" / "blocks" / "seed_0"
    (run / "budgets").mkdir(parents=True)
    for budget in BUDGETS:
        torch.save({"game": {"inpainter_crops": budget + 16}},
                   run / "budgets" / f"crops_{budget:07d}.ckpt")
    (run / "wall_time.tsv").write_text("10000\t0\t100\n100000\t100\t1000\n")
    noise = {0: 0.0, 1: 0.004, 2: -0.004}
    for seed in range(3):
        _probe(out, "scratch", seed, 0.30 + 0.01 * seed, 0.25)
        _finetune(out, "scratch", seed, 0.40)
        for decade, budget in enumerate(BUDGETS):
            start = f"blocks/seed_0/{budget}"
            _probe(out, start, seed, 0.30 + 0.01 * seed + 0.02 * decade + noise[seed], 0.25)
        _finetune(out, "blocks/seed_0/100000", seed, 0.42 + noise[seed])
    return out


def test_scaling_csv_has_one_row_per_score_with_crops_and_wall_time(out, tmp_path):
    collect_scaling.main([str(out), str(tmp_path / "res"), "--no-holes"])
    rows = list(csv.DictReader((tmp_path / "res" / "scaling.csv").open()))
    assert list(rows[0]) == collect_scaling.FIELDS
    # 3 seeds x (scratch: 2 layers + finetune; blocks: 3 budgets x 2 layers + 1 finetune)
    assert len(rows) == 3 * (3 + 7)
    first = next(r for r in rows if r["budget"] == "1000")
    assert first["crops"] == "1016"  # what the inpainter trained on, from the checkpoint
    # wall time: 1000 of the first leg's 10000 crops, and the two legs in full
    walls = {r["budget"]: float(r["pretext_wall_s"]) for r in rows if r["method"] == "blocks"}
    assert walls == {"1000": 10.0, "10000": 100.0, "100000": 1000.0}
    assert (tmp_path / "res" / "scaling.png").read_bytes()[:4] == b"\x89PNG"


def test_gaps_are_paired_and_the_slope_per_decade_is_recovered(out, tmp_path):
    rows = collect_scaling.table(out, measure=False)
    pairs, slopes = collect_scaling.gaps(rows)
    by_name = {(p.method, p.baseline): p for p in pairs}
    top = by_name[("blocks/seed_0/100000", "scratch/probe/layer3")]
    assert top.seeds == [0, 1, 2]
    assert top.differences == pytest.approx([4.0, 4.4, 3.6])
    assert top.verdict == "ahead"
    assert by_name[("blocks/seed_0/100000", "scratch/finetune/all")].mean == pytest.approx(2.0)
    slope = {(s[2]): s for s in slopes if s[0] == "blocks"}
    *_, per_decade, half, n = slope["probe/layer3"]
    assert per_decade == pytest.approx(2.0, abs=0.01) and n == 9 and 0 < half < 1
    assert slope["probe/layer4"][4] == pytest.approx(0.0, abs=1e-9)
    assert "slope / decade" in collect_scaling.markdown(pairs, slopes)


def test_a_second_pretext_seed_is_pooled_with_the_first(out):
    """Pretext seed 1 at the top budget, 2 points below seed 0 on layer3: the pooled row
    holds all six differences, the pooled slope every point; a cell that only seed 0
    scored (fine-tuning) gets no pooled row or line: it would be seed 0 under another name."""
    run = out / "pretext" / "blocks" / "seed_1" / "budgets"
    run.mkdir(parents=True)
    torch.save({"game": {"inpainter_crops": 100016}}, run / "crops_0100000.ckpt")
    for seed, noise in enumerate((0.0, 0.004, -0.004)):
        _probe(out, "blocks/seed_1/100000", seed, 0.32 + 0.01 * seed + noise, 0.25)
    pairs, slopes = collect_scaling.gaps(collect_scaling.table(out, measure=False))
    by_name = {(p.method, p.baseline): p for p in pairs}
    pooled = by_name[("blocks/all/100000", "scratch/probe/layer3")]
    assert sorted(pooled.differences) == pytest.approx([1.6, 2.0, 2.4, 3.6, 4.0, 4.4])
    assert pooled.mean == pytest.approx(3.0)
    assert ("blocks/all/100000", "scratch/finetune/all") not in by_name  # seed 0 alone
    assert ("blocks/seed_0/100000", "scratch/finetune/all") in by_name
    lines = {(s[0], s[1], s[2]): s for s in slopes}
    assert ("blocks", "all", "finetune/all") not in lines
    assert lines[("blocks", "all", "probe/layer3")][-1] == 12
    assert lines[("blocks", 1, "probe/layer3")][-1] == 3  # one budget: no slope
    assert "| blocks | 1 | probe/layer3 | 0.1 | – | 3 |" in collect_scaling.markdown(pairs, slopes)
    rows = collect_scaling.table(out, measure=False)
    assert collect_scaling.plot(rows, pairs)[:4] == b"\x89PNG"  # the pooled rows plot too


def test_one_pretext_seed_gets_no_pooled_rows(out):
    pairs, slopes = collect_scaling.gaps(collect_scaling.table(out, measure=False))
    assert not any("/all/" in p.method for p in pairs)
    assert not any(s[1] == "all" for s in slopes)


def test_a_decayed_run_extends_its_base_methods_curve(out):
    """blocks_decay at 10^6 crops, on blocks' line (2 points per decade): the combined
    line has blocks' 9 points and the decayed run's 3 (its 10^5 budget, blocks' own, is
    not counted twice) and keeps the slope; the decayed run alone has one budget."""
    run = out / "pretext" / "blocks_decay" / "seed_0" / "budgets"
    run.mkdir(parents=True)
    for budget in (100000, 1000000):
        torch.save({"game": {"inpainter_crops": budget + 16}}, run / f"crops_{budget:07d}.ckpt")
    for seed, noise in enumerate((0.0, 0.004, -0.004)):
        for decade, budget in ((2, 100000), (3, 1000000)):
            _probe(out, f"blocks_decay/seed_0/{budget}", seed,
                   0.30 + 0.01 * seed + 0.02 * decade + noise, 0.25)
    _, slopes = collect_scaling.gaps(collect_scaling.table(out, measure=False))
    lines = {(s[0], s[1], s[2]): s for s in slopes}
    *_, per_decade, half, n = lines[("blocks+blocks_decay", "all", "probe/layer3")]
    assert n == 12 and per_decade == pytest.approx(2.0, abs=0.01) and 0 < half < 1
    assert lines[("blocks", 0, "probe/layer3")][-1] == 9
    assert ("blocks+blocks_decay", "all", "finetune/all") not in lines  # not scored there


@pytest.mark.parametrize("args, message", [
    (["bogus", "R", "O"], "stage 'bogus'"),
    (["pretext", "R", "O", "masks", "0", "512"], "METHOD 'masks'"),
    # a decayed run's schedule is fixed by the last budget it started with
    (["pretext", "R", "{out}", "blocks_decay", "0", "512", "2048"], "towards budget 1024"),
    (["pretext", "R", "O", "blocks", "0"], "no BUDGET"),
    (["score", "R", "{out}", "probe", "blocks/seed_0/512", "0.1", "0"], "crops_0000512.ckpt"),
])
def test_scaling_script_refuses_bad_arguments_with_one_line(args, message, tmp_path):
    (tmp_path / "pretext" / "blocks" / "seed_0").mkdir(parents=True)
    (tmp_path / "pretext" / "blocks" / "seed_0" / "norm_stats.json").write_text(
        json.dumps({"mean": [1.0, 2.0, 3.0], "std": [1.0, 1.0, 1.0]}))
    (tmp_path / "pretext" / "blocks_decay" / "seed_0").mkdir(parents=True)
    (tmp_path / "pretext" / "blocks_decay" / "seed_0" / "schedule.txt").write_text("1024\n")
    args = [a.replace("{out}", str(tmp_path)) for a in args]
    proc = subprocess.run(["bash", str(SCRIPT), *args], capture_output=True, text=True,
                          cwd=tmp_path, timeout=60)
    assert proc.returncode == 2
    assert message in proc.stderr.strip().splitlines()[-1]


@pytest.mark.slow
def test_gpu_script_makes_a_budget_curve_at_tiny_scale_on_the_cpu(tmp_path):
    """gpu_scaling.sh end to end on two images of the real Dubai data, on the CPU: a
    budget checkpoint, both protocols from it and from scratch, and the tables."""
    root = real_sample("dubai")
    out = tmp_path / "out"
    env = {**os.environ, "PYTHON": sys.executable, "BUDGETS": "16", "EPOCH": "16",
           "BATCH": "4", "ACCEL": "cpu", "PRECISION": "32-true", "SEEDS": "0",
           "EXTRA": "data.train_split=['2_001'] data.val_split=['3_001'] data.crop_size=64 "
                    "data.val_window=64 data.val_max_windows=2 data.region_size=128",
           "SCORE_EXTRA": "probe.crops=8 probe.max_iter=20 trainer.max_epochs=1 "
                          "trainer.check_val_every_n_epoch=1 "
                          "data.samples_per_epoch=8"}
    proc = subprocess.run(["bash", str(REPO / "experiments/label_efficiency/gpu_scaling.sh"),
                           str(root), str(out)], env=env, cwd=tmp_path, capture_output=True,
                          text=True, timeout=900)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-3000:]
    assert (out / "pretext/blocks/seed_0/budgets/crops_0000016.ckpt").is_file()
    collect_scaling.main([str(out), str(tmp_path / "res")])
    rows = list(csv.DictReader((tmp_path / "res" / "scaling.csv").open()))
    scored = {(r["method"], r["protocol"], r["layer"]) for r in rows}
    assert scored == {(m, "probe", "layer3") for m in ("blocks", "scratch")} | \
        {(m, "probe", "layer4") for m in ("blocks", "scratch")} | \
        {(m, "finetune", "all") for m in ("blocks", "scratch")}
    block = [r for r in rows if r["method"] == "blocks"]
    assert all(float(r["hole_error"]) > 0 and float(r["telea_error"]) > 0 for r in block)
    assert all(r["crops"] == "16" for r in block)


@pytest.mark.slow
def test_a_decayed_pretext_run_drops_its_rate_towards_its_last_budget(tmp_path):
    """blocks_decay at tiny scale: 4 epochs of 8 crops to the last budget of 32, so the
    rate falls 10x after epoch 2 (60 %) and again after epoch 3 (85 %); the budget
    before the first drop still trains at the full rate. The same run started from a
    constant-rate run's checkpoint at 16 crops (FROM=blocks, branch_decay.py) ends with
    the same weights."""
    env = {**os.environ, "PYTHON": sys.executable,
           "SETTINGS": "data.samples_per_epoch=8 data.batch_size=4 data.num_workers=0 "
                       "data.train_split=['2_001'] data.val_split=['3_001'] data.crop_size=64 "
                       "data.val_window=64 data.val_max_windows=2 data.region_size=128 "
                       "trainer.check_val_every_n_epoch=100 "
                       "callbacks.model_checkpoint.every_n_epochs=1"}

    def pretext(out: Path, *args: str, **extra: str) -> subprocess.CompletedProcess:
        proc = subprocess.run(["bash", str(SCRIPT), "pretext", str(real_sample("dubai")),
                               str(out), *args], env={**env, **extra}, cwd=tmp_path,
                              capture_output=True, text=True, timeout=600)
        assert proc.returncode == 0, proc.stderr[-3000:]
        return proc

    pretext(tmp_path / "a", "blocks_decay", "0", "16", "32")
    run = tmp_path / "a" / "pretext" / "blocks_decay" / "seed_0"
    assert (run / "schedule.txt").read_text().strip() == "32"

    def load(run: Path, budget: int) -> dict:
        return torch.load(run / "budgets" / f"crops_{budget:07d}.ckpt", map_location="cpu",
                          weights_only=False)

    def rate(ckpt: dict) -> float:
        assert dict(ckpt["lr_schedulers"][0]["milestones"]) == {2: 1, 3: 1}
        return ckpt["optimizer_states"][0]["param_groups"][0]["lr"]

    assert rate(load(run, 16)) == pytest.approx(0.01)
    assert rate(load(run, 32)) == pytest.approx(0.0001)

    # the branch: a constant-rate run to 16 crops, then the decayed run from its last.ckpt
    pretext(tmp_path / "b", "blocks", "0", "16")
    base = tmp_path / "b" / "pretext" / "blocks" / "seed_0"
    pretext(tmp_path / "b", "blocks_decay", "0", "16", "32", FROM="blocks")
    branched = tmp_path / "b" / "pretext" / "blocks_decay" / "seed_0"
    assert str(base) in (branched / "PROVENANCE.txt").read_text()
    assert (branched / "norm_stats.json").read_bytes() == (base / "norm_stats.json").read_bytes()
    straight, other = load(run, 32), load(branched, 32)
    assert rate(other) == pytest.approx(0.0001)
    assert other["game"]["inpainter_crops"] == straight["game"]["inpainter_crops"]
    for key, value in straight["state_dict"].items():
        assert torch.equal(value, other["state_dict"][key]), key
    # the constant-rate run is left as it was; a second branch, or a checkpoint past the
    # first fall, is refused
    assert dict(torch.load(base / "checkpoints" / "last.ckpt", weights_only=False)
                ["lr_schedulers"][0]["milestones"]) == {1000000: 1}
    from experiments.label_efficiency import branch_decay

    assert branch_decay.main([str(base), str(branched), "--milestones", "2", "3"]) == 2
    assert branch_decay.main([str(base), str(tmp_path / "c"), "--milestones", "1", "3"]) == 2
    assert not (tmp_path / "c" / "checkpoints" / "last.ckpt").exists()
