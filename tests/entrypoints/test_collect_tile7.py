"""The tile-7 table of the budget study (experiments/label_efficiency/collect_tile7.py)
on a hand-made OUT/test folder."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest

from experiments.label_efficiency import collect_tile7

START = "blocks/seed_{}/30720"


def _probe(out: Path, start: str, fraction: float, seed: int, layer3: float) -> None:
    run = out / "test" / "probe" / start / f"fraction_{fraction}" / f"seed_{seed}"
    run.mkdir(parents=True)
    layers = {"layer3": {"mIoU": 0.9, "test": {"mIoU": layer3}},  # 0.9: tile 6, not read
              "layer4": {"mIoU": 0.9}}  # no test scores: left out
    (run / "probe.json").write_text(json.dumps({"layers": layers}))


def _finetune(out: Path, start: str, fraction: float, seed: int, miou: float) -> None:
    run = out / "test" / "finetune" / start / f"fraction_{fraction}" / f"seed_{seed}"
    run.mkdir(parents=True)
    (run / "metrics.json").write_text(json.dumps({"mIoU": miou, "OA": 0.9}))


@pytest.fixture
def out(tmp_path) -> Path:
    """Scratch and two pretext seeds of blocks, 3 seeds at 10 %: pretext seed 0 is 2
    points ahead on the probe, seed 1 level (±0.5); fine-tuning only at 1 %."""
    out = tmp_path / "out"
    for seed in range(3):
        _probe(out, "scratch", 0.1, seed, 0.30 + 0.01 * seed)
        _probe(out, START.format(0), 0.1, seed, 0.32 + 0.01 * seed + 0.001 * (seed - 1))
        _probe(out, START.format(1), 0.1, seed, 0.30 + 0.01 * seed + 0.005 * (seed - 1))
        _finetune(out, "scratch", 0.01, seed, 0.20)
    _finetune(out, START.format(0), 0.01, 0, 0.25)  # one seed only: no interval
    return out


def test_tile7_rows_and_paired_gaps(out, tmp_path):
    collect_tile7.main([str(out), str(tmp_path / "res")])
    rows = list(csv.DictReader((tmp_path / "res" / "tile7.csv").open()))
    assert len(rows) == 3 * 3 + 3 + 1  # probe layer3 only (layer4 has no test scores)
    assert {r["protocol"] for r in rows} == {"probe/layer3", "finetune"}
    assert rows[0]["start"] == "scratch"
    pairs = {(p.method, p.baseline, p.fraction): p for p in
             collect_tile7.gaps(collect_tile7.rows(out))}
    ahead = pairs[(START.format(0), "scratch/probe/layer3", 0.1)]
    assert ahead.differences == pytest.approx([1.9, 2.0, 2.1]) and ahead.verdict == "ahead"
    level = pairs[(START.format(1), "scratch/probe/layer3", 0.1)]
    assert level.verdict == "level"
    pooled = pairs[("blocks/all/30720", "scratch/probe/layer3", 0.1)]
    assert len(pooled.differences) == 6 and pooled.mean == pytest.approx(1.0)
    lone = pairs[(START.format(0), "scratch/finetune", 0.01)]
    assert lone.differences == pytest.approx([5.0]) and lone.verdict == "level"
    assert ("blocks/all/30720", "scratch/finetune", 0.01) not in pairs  # one pretext seed
    text = (tmp_path / "res" / "tile7.md").read_text()
    assert "| scratch | 20.0 ± 0.0 / – | – / 31.0 ± 1.0 | – / – |" in text
    assert "| blocks/all/30720 | – / – | – / 32.0 ± 1.6 | – / – |" in text  # 1 % : one seed
    order = [line.split(" | ")[0] for line in text.splitlines()[4:8]]
    assert order == ["| blocks/seed_0/30720", "| blocks/seed_1/30720", "| blocks/all/30720",
                     "| scratch"]
    assert f"| {START.format(0)} | probe/layer3 | 10 % | 3 | +2.0 ± 0.1 |" in text


def test_tile7_without_finished_jobs_says_so(tmp_path, capsys):
    with pytest.raises(SystemExit) as stop:
        collect_tile7.main([str(tmp_path), str(tmp_path / "res")])
    assert stop.value.code == 2 and "no finished test job" in capsys.readouterr().err
    assert not (tmp_path / "res").exists()
