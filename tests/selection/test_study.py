"""The label-selection study's scripts at toy size on the shared Dubai images: a ranking
from sssi.select, fine-tuning on it and on random regions (dubai_selection.sh), the
paired table (collect.py)."""

from __future__ import annotations

import csv
import json
import os
import subprocess
import sys

import pytest

from experiments.label_selection.collect import (
    gaps,
    labelled_facts,
    region_facts,
    start_averaged,
    what_goes_with_miou,
)
from experiments.label_selection.collect import main as collect
from sssi.cli import compose_entry
from sssi.select import run as select_run
from tests.helpers import REPO, real_sample

TINY = ["data.train_split=[2]", "data.val_split=[3]", "data.region_size=128"]
TRAIN = [*TINY, "data.crop_size=64", "data.batch_size=4", "data.samples_per_epoch=8",
         "data.num_workers=0", "data.val_window=64", "data.val_max_windows=2",
         "trainer.max_steps=2", "trainer.log_every_n_steps=1", "trainer.check_val_every_n_epoch=1",
         "trainer.enable_progress_bar=false"]


def test_selection_study_trains_on_a_ranking_and_pairs_it_with_random(tmp_path):
    root = real_sample("dubai")
    rankings = tmp_path / "rankings"
    select_run(compose_entry("select", ["+experiment=dubai_finetune", f"data.root={root}",
                                        "data.input_scale=0.5", "data.num_workers=0",
                                        *TINY, "selector=texture", "select.picture=false"],
                             rankings / "texture"))
    # the Dubai JPEGs are not georeferenced: a ranking, no GeoJSON
    assert (rankings / "texture" / "regions.json").is_file()
    assert not (rankings / "texture" / "regions.geojson").exists()
    out = tmp_path / "study"
    env = {**os.environ, "PYTHON": sys.executable, "SETTINGS": " ".join(TRAIN),
           "PYTHONUNBUFFERED": "1"}
    script = REPO / "experiments/label_selection/dubai_selection.sh"
    for selector in ("texture", "random"):
        proc = subprocess.run(["bash", str(script), "train", str(root), str(out),
                               str(rankings), "scratch", selector, "0.1", "0"],
                              cwd=tmp_path, env=env, capture_output=True, text=True,
                              timeout=600)
        assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    run = out / "train" / "scratch" / "texture" / "fraction_0.1" / "seed_0"
    split = json.loads((run / "label_split.json").read_text())
    assert split["label_regions"]["selector"] == "texture"
    assert split["label_regions"]["label_pool"] == 2.0
    assert json.loads((out / "train/scratch/random/fraction_0.1/seed_0/label_split.json")
                      .read_text())["label_regions"] is None
    bad = subprocess.run(["bash", str(script), "train", str(root), str(out), str(rankings),
                          "scratch", "nothing", "0.1", "0"], env=env, capture_output=True,
                         text=True)
    assert bad.returncode == 2 and "nothing/regions.json: not found" in bad.stderr
    results = tmp_path / "results"
    collect([str(out), str(results)])
    rows = list(csv.DictReader((results / "runs.csv").open()))
    assert {r["selector"] for r in rows} == {"texture", "random"}
    table = (results / "table.md").read_text()
    assert "| texture |" in table and "(n=1)" in table and "level" in table
    assert (results / "selection.png").stat().st_size > 1000


def test_the_starts_are_averaged_per_seed_not_pooled():
    """Two starts share each seed's regions: a seed's two gaps become one value (their
    mean), and a seed that one start lacks is left out."""
    def row(start, selector, seed, miou):
        return {"split": "train", "start": start, "selector": selector,
                "label_fraction": 0.05, "seed": seed, "mIoU": miou}

    found = [row("scratch", "random", 0, 0.30), row("scratch", "random", 1, 0.40),
             row("scratch", "random", 2, 0.35), row("scratch", "instructor", 0, 0.34),
             row("scratch", "instructor", 1, 0.42), row("scratch", "instructor", 2, 0.30),
             row("blocks", "random", 0, 0.20), row("blocks", "random", 1, 0.50),
             row("blocks", "instructor", 0, 0.30), row("blocks", "instructor", 1, 0.50)]
    (split, pair), = start_averaged(gaps(found))
    assert split == "train" and pair.method == "instructor" and pair.baseline == "random"
    assert pair.seeds == [0, 1]  # seed 2 has no blocks run
    assert pair.differences == pytest.approx([(4.0 + 10.0) / 2, (2.0 + 0.0) / 2])
    assert start_averaged(gaps([r for r in found if r["start"] == "scratch"])) == []


def test_a_runs_labelled_regions_get_their_balance_and_difficulty(tmp_path):
    regions = tmp_path / "regions.csv"
    regions.write_text("tile,row,col,height,width,cross_entropy,pixel_error,a,b\n"
                       "1_001,0,0,10,10,0.2,0.1,100,0\n"
                       "1_001,0,10,10,10,0.8,0.3,100,200\n"
                       "1_002,0,0,10,10,0.5,0.2,0,100\n")
    classes, facts = region_facts(regions)
    assert classes == ["a", "b"]
    run = tmp_path / "run"
    run.mkdir()
    (run / "label_split.json").write_text(json.dumps({"regions": [
        {"tile": "1_001", "row": 0, "col": 0, "height": 10, "width": 10},
        {"tile": "1_001", "row": 0, "col": 10, "height": 10, "width": 10}]}))
    got = labelled_facts(run, facts)
    assert got["balance"] == pytest.approx(1.0)  # 200 px of each class
    assert got["difficulty"] == pytest.approx((0.2 * 100 + 0.8 * 300) / 400)  # by pixels
    # a region the gate did not see: nothing rather than a wrong figure
    (run / "label_split.json").write_text(json.dumps({"regions": [
        {"tile": "9_009", "row": 0, "col": 0, "height": 10, "width": 10}]}))
    assert labelled_facts(run, facts) == {}

    def row(seed, miou, bal, diff):
        return {"split": "train", "start": "scratch", "selector": "random",
                "label_fraction": 0.05, "seed": seed, "mIoU": miou, "balance": bal,
                "difficulty": diff}

    (start, fraction, n, with_balance, with_difficulty), = what_goes_with_miou(
        [row(0, 0.3, 0.5, 0.9), row(1, 0.4, 0.6, 0.7), row(2, 0.5, 0.9, 0.8)])
    assert (start, fraction, n) == ("scratch", 0.05, 3)
    assert with_balance == pytest.approx(1.0) and with_difficulty == pytest.approx(-0.5)
