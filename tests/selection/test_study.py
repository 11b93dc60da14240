"""The label-selection study's scripts at toy size on the shared Dubai images: a ranking
from sssi.select, fine-tuning on it and on random regions (dubai_selection.sh), the
paired table (collect.py)."""

from __future__ import annotations

import csv
import json
import os
import subprocess
import sys

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
