"""Two recordings of the budget curve compared start by start
(experiments/label_efficiency/compare_scaling.py) on hand-made tables."""

from __future__ import annotations

import csv
from pathlib import Path

import pytest

from experiments.label_efficiency import compare_scaling
from experiments.label_efficiency.collect_scaling import FIELDS


def _table(path: Path, shift: dict[int, float], drop_seed: int | None = None,
           hole: float = 0.2) -> Path:
    """Scratch, and the game at 3,000 crops for pretext seeds 0 and 1 (probe layer3, 3
    seeds) with mIoU 0.30 + seed/100 + ``shift[pretext seed]``; one unscored budget."""
    rows = [{"method": "scratch", "pretext_seed": 0, "budget": 0, "protocol": "probe",
             "layer": "layer3", "label_fraction": 0.1, "seed": s, "mIoU": 0.9}
            for s in range(3)]
    for pseed in (0, 1):
        rows += [{"method": "game", "pretext_seed": pseed, "budget": 3000, "crops": 3000,
                  "hole_error": hole + pseed / 100, "telea_error": 0.1, "protocol": "probe",
                  "layer": "layer3", "label_fraction": 0.1, "seed": s,
                  "mIoU": 0.30 + s / 100 + shift[pseed]}
                 for s in range(3) if not (pseed == 1 and s == drop_seed)]
        rows.append({"method": "game", "pretext_seed": pseed, "budget": 9000, "crops": 9000,
                     "hole_error": hole, "telea_error": 0.1})
    with open(path, "w", newline="") as fh:
        writer = csv.DictWriter(fh, FIELDS)
        writer.writeheader()
        writer.writerows(rows)
    return path


def test_differences_pair_pretext_seed_and_seed_and_pool_the_pretext_seeds(tmp_path):
    base = compare_scaling.read(_table(tmp_path / "base.csv", {0: 0.0, 1: 0.0}))
    # OTHER: 2 points up for pretext seed 0, 4 for seed 1, whose seed 2 was not scored
    other = compare_scaling.read(_table(tmp_path / "other.csv", {0: 0.02, 1: 0.04},
                                        drop_seed=2, hole=0.1))
    [pair] = compare_scaling.compare(base, other)  # scratch and the unscored budget left out
    assert (pair.method, pair.baseline, pair.fraction) == ("game/3000", "probe/layer3", 0.1)
    assert sorted(pair.seeds) == ["0/0", "0/1", "0/2", "1/0", "1/1"]
    assert sorted(pair.differences) == pytest.approx([2, 2, 2, 4, 4])
    assert pair.verdict == "ahead"
    holes = compare_scaling.hole_errors(base, other)
    assert [h[:3] for h in holes] == [("game", 0, 3000), ("game", 0, 9000),
                                      ("game", 1, 3000), ("game", 1, 9000)]
    assert holes[2][3] == pytest.approx((0.21, 2.1)) and holes[2][4] == pytest.approx((0.11, 1.1))


def test_the_command_writes_the_table_and_refuses_a_file_that_is_not_a_curve(tmp_path, capsys):
    base = _table(tmp_path / "base.csv", {0: 0.0, 1: 0.0})
    other = _table(tmp_path / "other.csv", {0: -0.01, 1: 0.01})
    out = tmp_path / "compare.md"
    assert compare_scaling.main([str(base), str(other), str(out)]) == 0
    text = out.read_text()
    assert "| game/3000 | probe/layer3 | 0.1 | 6 | +0.0 ± 1.1 |" in text
    assert "| level |" in text and "| game/3000 | 1 | 0.210 (2.10) | 0.210 (2.10) |" in text
    wrong = tmp_path / "runs.csv"
    wrong.write_text("method,seed\nx,0\n")
    with pytest.raises(SystemExit) as stop:
        compare_scaling.main([str(base), str(wrong)])
    assert stop.value.code == 2
    assert f"error: {wrong}: not a collect_scaling table" in capsys.readouterr().err
