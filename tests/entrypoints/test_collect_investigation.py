"""experiments/label_efficiency/collect_investigation.py on a hand-made OUT folder: the
score tables' mean ± std over seeds are sssi.aggregate's (sample std), runs are named by
their folders, and the pretext table gains Telea's columns when a run logged them."""

from __future__ import annotations

import csv
import json
import subprocess
import sys
from pathlib import Path
from statistics import mean, stdev

from tests.helpers import REPO

SCRIPT = REPO / "experiments/label_efficiency/collect_investigation.py"

# protocol -> name -> seed -> val/mIoU
SCORES = {
    "probe": {"scratch": {0: 0.309, 1: 0.335}, "blocks_e011": {0: 0.287}},
    "finetune": {"scratch": {0: 0.298, 1: 0.372, 2: 0.306}, "game": {0: 0.347, 1: 0.372}},
}


def _score(out: Path, protocol: str, name: str, seed: int, metrics: dict,
           config: str | None = None) -> None:
    run = out / protocol / name / f"seed_{seed}"
    run.mkdir(parents=True)
    (run / "metrics.json").write_text(json.dumps(metrics))
    if config is not None:
        (run / ".hydra").mkdir()
        (run / ".hydra" / "config.yaml").write_text(config)


def _pretext_log(out: Path, name: str, rows: list[dict]) -> None:
    log = out / "pretext" / name / "csv" / "metrics.csv"
    log.parent.mkdir(parents=True)
    keys = list(dict.fromkeys(k for row in rows for k in row))
    with log.open("w", newline="") as f:
        writer = csv.DictWriter(f, keys)
        writer.writeheader()
        writer.writerows(rows)


def _fake_out(out: Path) -> None:
    for protocol, names in SCORES.items():
        for name, seeds in names.items():
            for seed, value in seeds.items():
                # one run per name as sssi.train leaves it (read by sssi.aggregate.read_run;
                # the same task_name everywhere: the folder names the method)
                config = (f"task_name: label_efficiency\nseed: {seed}\n"
                          "data:\n  label_fraction: 0.1\n") if seed == 0 else None
                _score(out, protocol, name, seed, {"val/mIoU": value, "val/OA": 0.8,
                                                   "epoch": 5}, config)
    _score(out, "probe", "unfinished", 0, {"val/OA": 0.5})  # no val/mIoU: left out
    _pretext_log(out, "game", [
        {"epoch": 0, "step": 31, "train/loss": 0.5},
        {"epoch": 0, "step": 31, "val/hole_error_random": 0.3, "val/hole_error_instructor": 0.4,
         "val/hole_error_telea": 0.25, "val/hole_error_vs_telea": 1.2, "val/border_freq": 0.5,
         "val/inner_freq": 0.2, "val/border_ratio": 2.5},
        {"epoch": 5, "step": 191, "val/hole_error_random": 0.205,
         "val/hole_error_instructor": 0.316, "val/hole_error_telea": 0.25,
         "val/hole_error_vs_telea": 0.82, "val/border_freq": 0.367, "val/inner_freq": 0.159,
         "val/border_ratio": 2.308},
        {"epoch": 6, "step": 200, "train/loss": 0.4},
    ])
    _pretext_log(out, "blocks", [  # an older log: no Telea, no instructor
        {"epoch": 11, "step": 383, "val/hole_error_random": 0.075},
    ])


def _cell(values: dict[int, float]) -> str:
    seeds = sorted(values)
    if len(seeds) == 1:
        return f"{100 * values[seeds[0]]:.1f} (s{seeds[0]})"
    vals = [values[s] for s in seeds]
    each = ", ".join(f"s{s} {100 * values[s]:.1f}" for s in seeds)
    return f"{100 * mean(vals):.1f} ± {100 * stdev(vals):.1f} ({each})"


def test_collect_investigation(tmp_path: Path) -> None:
    out = tmp_path / "out"
    _fake_out(out)
    table = tmp_path / "table.md"
    proc = subprocess.run([sys.executable, str(SCRIPT), str(out), "--out", str(table)],
                          capture_output=True, text=True, timeout=120, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    text = table.read_text()
    assert text in proc.stdout
    lines = text.splitlines()

    assert ("| run | epochs | hole error, random masks | hole error, instructor masks | "
            "edge freq | inner freq | edge/inner | hole error, Telea (random masks) | "
            "random / Telea |") in lines
    # the last validation of each run; Telea's cells empty where it was not logged
    assert "| game | 6 | 0.205 | 0.316 | 0.367 | 0.159 | 2.308 | 0.250 | 0.820 |" in lines
    assert "| blocks | 12 | 0.075 | – | – | – | – | – | – |" in lines

    start = next(i for i, line in enumerate(lines) if line.startswith("val/mIoU on tile 6"))
    assert "10 % of the labelled pixels" in lines[start]
    assert lines[start + 2:start + 4] == ["| setting | probe | fine-tune |", "|---|---|---|"]
    probe, finetune = SCORES["probe"], SCORES["finetune"]
    assert lines[start + 4:] == [
        f"| blocks_e011 | {_cell(probe['blocks_e011'])} | – |",
        f"| game | – | {_cell(finetune['game'])} |",
        f"| scratch | {_cell(probe['scratch'])} | {_cell(finetune['scratch'])} |",
    ]
    # the numbers themselves, worked out once (sample std: n - 1)
    assert lines[-1] == ("| scratch | 32.2 ± 1.8 (s0 30.9, s1 33.5) | "
                         "32.5 ± 4.1 (s0 29.8, s1 37.2, s2 30.6) |")


def test_collect_investigation_without_pretext_telea(tmp_path: Path) -> None:
    """Logs from before Telea was scored keep the old pretext columns."""
    out = tmp_path / "out"
    _pretext_log(out, "blocks", [{"epoch": 2, "step": 10, "val/hole_error_random": 0.1}])
    _score(out, "finetune", "scratch", 0, {"val/mIoU": 0.5})
    proc = subprocess.run([sys.executable, str(SCRIPT), str(out)], capture_output=True,
                          text=True, timeout=120, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.splitlines()
    assert "| blocks | 3 | 0.100 | – | – | – | – |" in lines
    assert not any("Telea" in line for line in lines)
    assert "| scratch | – | 50.0 (s0) |" in lines


def test_collect_investigation_fractions_from_configs(tmp_path: Path) -> None:
    """The label fraction is the run config's (sssi.aggregate.read_run): with several,
    each row names its own and only runs at the same fraction are averaged."""
    out = tmp_path / "out"
    for seed, value in ((0, 0.30), (1, 0.34)):
        _score(out, "finetune", "scratch", seed, {"val/mIoU": value},
               f"task_name: x\nseed: {seed}\ndata:\n  label_fraction: 0.1\n")
    _score(out, "finetune", "scratch", 2, {"val/mIoU": 0.2},
           "task_name: x\nseed: 2\ndata:\n  label_fraction: 0.05\n")
    proc = subprocess.run([sys.executable, str(SCRIPT), str(out)], capture_output=True,
                          text=True, timeout=120, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.splitlines()
    assert any("the fraction of the labelled pixels in each row" in line for line in lines)
    assert "| scratch (5 %) | – | 20.0 (s2) |" in lines
    assert "| scratch (10 %) | – | 32.0 ± 2.8 (s0 30.0, s1 34.0) |" in lines
