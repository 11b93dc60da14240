"""The instructor's reward maths: the per-position baseline and the two rewards as pure
functions (the task's use of them: tests/tasks/test_pretrain.py)."""

from __future__ import annotations

import pytest
import torch

from sssi.errors import ConfigError
from sssi.game.reward import PositionBaseline, cell_errors, raw_reward, relative_reward


def test_position_baseline_moving_average_and_state():
    baseline = PositionBaseline(momentum=0.5)
    assert baseline.mean.shape == (0, 0)  # sized by the first use
    assert torch.equal(baseline.value((2, 3), torch.device("cpu")), torch.zeros(2, 3))
    baseline.update(torch.tensor([[2.0, 0, 0], [0, 0, 3]]), torch.tensor([[2.0, 0, 0],
                                                                         [0, 0, 1]]))
    # a first observation is taken as is, never-erased positions stay unseen (0)
    assert baseline.value((2, 3), torch.device("cpu")).tolist() == [[1, 0, 0], [0, 0, 3]]
    baseline.update(torch.tensor([[4.0, 0, 0], [0, 5, 0]]), torch.tensor([[1.0, 0, 0],
                                                                         [0, 1, 0]]))
    assert baseline.mean.tolist() == [[2.5, 0, 0], [0, 5, 3]]  # 0.5 * 1 + 0.5 * 4 at (0, 0)
    assert baseline.seen.tolist() == [[True, False, False], [False, True, True]]
    fresh = PositionBaseline(momentum=0.5)  # lazily sized from the checkpoint
    fresh.load_state_dict(baseline.state_dict())
    assert torch.equal(fresh.mean, baseline.mean) and torch.equal(fresh.seen, baseline.seen)
    with pytest.raises(ConfigError,
                       match=r"mask_policy\.instructor\.reward=relative: .* from 2x3 to 4x4"):
        baseline.update(torch.zeros(4, 4), torch.ones(4, 4))
    for momentum in (1.0, -0.1, "0.9"):
        with pytest.raises(ConfigError,
                           match=r"mask_policy\.instructor\.reward_baseline_momentum="):
            PositionBaseline(momentum)


def test_raw_and_relative_rewards_of_a_soft_mask():
    err = torch.zeros(1, 1, 4, 4)
    err[..., :2, :2] = 1.0  # the top-left cell of a 2x2 grid is wrong, the rest right
    cells = cell_errors(err, (2, 2))
    assert cells.flatten().tolist() == [1.0, 0.0, 0.0, 0.0]
    on_it = torch.zeros(1, 1, 4, 4)
    on_it[..., :2, :2] = 1.0
    assert raw_reward(on_it, err).item() == 1.0 and raw_reward(1 - on_it, err).item() == 0.0
    soft = torch.tensor([[[[1.0, 0.0], [0.0, 1.0]]]])  # two cells, one of them wrong
    reward, hole_error = relative_reward(soft, cells, torch.zeros(2, 2))
    assert reward.item() == hole_error.item() == 0.5  # zero baseline: the raw reward
    reward, hole_error = relative_reward(soft, cells, torch.tensor([[1.0, 0.0], [0.0, 0.0]]))
    assert reward.item() == 0.0 and hole_error.item() == 0.5  # the usual error pays nothing
