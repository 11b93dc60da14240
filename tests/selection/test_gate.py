"""The label-selection gate's readings on a made-up set of regions (the gate itself runs
on the Dubai tiles, outside the suite)."""

from __future__ import annotations

import numpy as np
import pytest

from experiments.label_selection.gate import balance, score
from sssi.data.ranking import RankedRegion, Ranking
from sssi.data.splits import partition_regions


def test_balance_is_one_for_equal_shares_and_zero_for_one_class():
    assert balance(np.array([5.0, 5.0, 5.0, 5.0])) == pytest.approx(1.0)
    assert balance(np.array([0.0, 9.0, 0.0])) == pytest.approx(0.0)
    assert 0 < balance(np.array([8.0, 1.0, 1.0])) < balance(np.array([4.0, 3.0, 3.0])) < 1


def _truth() -> dict:
    """One 400 x 1000 tile cut into 4 x 10 regions of 100 px; region i's error is i and
    the first 20 regions are all class 0, the rest class 1."""
    sizes = [(400, 1000)]
    rows = []
    for i, r in enumerate(partition_regions(sizes, 100)):
        rows.append({"tile": "t", "row": r.row, "col": r.col, "height": r.height,
                     "width": r.width, "cross_entropy": float(i), "pixel_error": i / 40,
                     "class_pixels": [10000, 0] if i < 20 else [0, 10000]})
    return {"tiles": ["t"], "sizes": sizes, "region_size": 100, "classes": ["a", "b"],
            "regions": rows}


def _rank(truth: dict, order: list[int]) -> Ranking:
    rows = truth["regions"]
    return Ranking([RankedRegion("t", rows[i]["row"], rows[i]["col"], 100, 100)
                    for i in order], 100, "made-up")


def test_hardest_first_correlates_and_alternating_classes_balance():
    truth = _truth()
    hardest = score(truth, _rank(truth, list(range(39, -1, -1))))
    assert hardest[0]["spearman_ce"] == pytest.approx(1.0)
    assert [r["regions"] for r in hardest] == [1, 2, 4]  # 1, 5, 10 % of 40 regions
    assert hardest[-1]["share_b"] == 1.0 and hardest[-1]["balance"] == 0.0
    mixed = [i for pair in zip(range(20), range(20, 40), strict=True) for i in pair]
    alternating = score(truth, _rank(truth, mixed))
    assert alternating[-1]["balance"] == pytest.approx(1.0)
    assert abs(alternating[0]["spearman_ce"]) < 0.9


def test_correlation_beyond_a_control_is_what_the_control_does_not_explain():
    from experiments.label_selection.gate import partial_spearman

    rng = np.random.default_rng(0)
    control = rng.normal(size=400)
    extra = rng.normal(size=400)
    difficulty = control + extra
    assert abs(partial_spearman(control + 0.01 * rng.normal(size=400), difficulty,
                                control)) < 0.15
    assert partial_spearman(extra, difficulty, control) > 0.6
    assert np.isnan(partial_spearman(control, difficulty, control))
