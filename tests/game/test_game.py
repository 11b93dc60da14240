"""The game's maths without a Trainer: holes per phase, each player's turn, the reward
baseline's update and the validation errors beside OpenCV's Telea."""

from __future__ import annotations

import pytest
import torch

from sssi.errors import ConfigError
from sssi.game import Game, Inpainter, Instructor, RandomBlocks, ReconstructionLoss
from sssi.game.reference import telea_restore
from sssi.game.schedule import INPAINTER, INSTRUCTOR, WARMUP
from sssi.models import build_backbone


def _game(reward: str = "raw", instructor: bool = True, seed: int = 0,
          random_share: float = 0.0) -> Game:
    torch.manual_seed(seed)
    inpainter = Inpainter(build_backbone("resnet18", in_channels=3), 3, (64, 32))
    player = Instructor(build_backbone("resnet18", in_channels=3, stem_pool=False),
                        latent_dim=8) if instructor else None
    return Game(inpainter, RandomBlocks(0.25, 16), ReconstructionLoss(), player,
                reward=reward, random_share=random_share)


def _images(n: int = 2, size: int = 64) -> torch.Tensor:
    return torch.randn(n, 3, size, size, generator=torch.Generator().manual_seed(3))


def test_the_holes_of_each_phase():
    game, images = _game(), _images()
    mask, cells = game.holes(WARMUP, images, torch.Generator().manual_seed(0))
    assert cells is None
    torch.testing.assert_close(mask, game.random_policy(images,
                                                        torch.Generator().manual_seed(0)))
    mask, cells = game.holes(INPAINTER, images, torch.Generator().manual_seed(0))
    assert cells.shape == (2, 1, 4, 4) and cells.sum() == 2 * 4  # a quarter of 16 cells
    torch.testing.assert_close(mask, game.instructor.upsample(cells, (64, 64)))
    with pytest.raises(ValueError, match="no holes in phase 'instructor'"):
        game.holes(INSTRUCTOR, images)
    with pytest.raises(ValueError, match="no holes in phase 'inpainter'"):
        _game(instructor=False).holes(INPAINTER, images)


def test_a_random_share_gives_the_first_images_random_holes_in_the_inpainters_phase():
    images = _images(4)
    paper, _ = _game().holes(INPAINTER, images, torch.Generator().manual_seed(0))
    game = _game(reward="relative", random_share=0.5)
    g = torch.Generator().manual_seed(0)
    mask, cells = game.holes(INPAINTER, images, g)
    # the instructor's draw comes first, so its images keep the holes they had
    torch.testing.assert_close(mask[2:], paper[2:])
    again = torch.Generator().manual_seed(0)
    expected = game.instructor_cells(images, again)
    torch.testing.assert_close(cells[2:], expected[2:])
    assert not cells[:2].any()  # no instructor holes where random ones were given
    # ... and the random holes drawn after it
    torch.testing.assert_close(mask[:2], game.random_policy(images[:2], again))
    assert not torch.equal(mask[:2], paper[:2])
    # the reward baseline learns from the instructor's holes only
    turn = game.inpainter_turn(images, mask, cells)
    assert turn.baseline_sums[1].sum() == 2 * 4
    assert torch.isfinite(turn.logs["mask/border_ratio"])
    everything, cells = _game(random_share=1.0).holes(INPAINTER, images, g)
    assert not cells.any() and 0.2 < everything.mean() < 0.3
    assert _game(random_share=0.3).random_rows(16) == 5
    with pytest.raises(ConfigError, match=r"random_share=-0\.1: expected a share in \[0, 1\]"):
        _game(random_share=-0.1)


def test_the_inpainters_turn_is_its_loss_and_teaches_only_it():
    game, images = _game(), _images()
    mask, _ = game.holes(WARMUP, images, torch.Generator().manual_seed(0))
    turn = game.inpainter_turn(images, mask)
    expected, parts = game.criterion(game.restore(images * (1 - mask)), images, mask)
    torch.testing.assert_close(turn.loss, expected)
    torch.testing.assert_close(turn.logs["train/inpainter_hole"], parts["hole"])
    torch.testing.assert_close(turn.logs["mask/ratio"], mask.mean())
    assert turn.baseline_sums is None  # random holes teach the baseline nothing
    turn.loss.backward()
    assert all(p.grad is not None for p in game.inpainter.parameters())
    assert all(p.grad is None for p in game.instructor.parameters())
    pictures = turn.visuals(n=1)
    assert pictures["image"].shape == (1, 3, 64, 64) and not pictures["restored"].requires_grad


def test_the_instructors_turn_teaches_only_it_through_the_soft_mask():
    game, images = _game(), _images()
    turn = game.instructor_turn(images, torch.Generator().manual_seed(0))
    assert game.inpainter.training is False and game.instructor.training is True
    assert float(turn.logs["train/hole_error"].detach()) > 0
    assert "train/instructor_kl" in turn.logs
    torch.testing.assert_close(turn.loss, 1 - turn.logs["train/hole_error"]
                               + game.kl_weight * turn.logs["train/instructor_kl"])
    turn.loss.backward()
    assert all(p.grad is None for p in game.inpainter.parameters())
    assert any(p.grad is not None and p.grad.abs().sum() > 0
               for p in game.instructor.parameters())
    assert float(turn.mask.mean()) == pytest.approx(0.25)  # hard top-k: a quarter


def test_the_relative_reward_learns_its_baseline_from_the_holes_filled():
    game, images = _game("relative"), _images()
    assert game.reward_baseline is not None and not game.reward_baseline.seen.any()
    mask, cells = game.holes(INPAINTER, images, torch.Generator().manual_seed(0))
    turn = game.inpainter_turn(images, mask, cells)
    sums = turn.baseline_sums
    assert sums.shape == (2, 4, 4)
    torch.testing.assert_close(sums[1], cells.float().sum(dim=(0, 1)))  # holes per position
    game.update_baseline(sums)
    assert torch.equal(game.reward_baseline.seen, sums[1] > 0)
    turn = game.instructor_turn(images, torch.Generator().manual_seed(1))
    assert turn.baseline_sums is not None and "train/instructor_reward" in turn.logs


def test_validation_scores_telea_on_the_same_holes_with_the_same_error():
    game, images = _game(), _images(size=64)
    game.eval()
    errors, cells = game.validation_errors(images, torch.Generator().manual_seed(0))
    assert set(errors) == {"random", "instructor", "telea"} and cells.shape == (2, 1, 4, 4)
    mask = game.random_policy(images, torch.Generator().manual_seed(0))
    err = game.criterion.error_map(telea_restore(images, mask), images)
    torch.testing.assert_close(errors["telea"], (err * mask).sum() / mask.sum())
    errors, cells = _game(instructor=False).eval().validation_errors(images)
    assert set(errors) == {"random", "telea"} and cells is None


def test_telea_restores_smooth_holes_and_leaves_the_rest():
    """On a smooth scene Telea's fill is close, far closer than the crop's mean colour,
    at any offset and scale of the values (OpenCV's float path needs them mapped to
    0-255 first), and the visible pixels come back unchanged."""
    y, x = torch.meshgrid(torch.linspace(-1, 1, 64), torch.linspace(-1, 1, 64), indexing="ij")
    mask = torch.zeros(1, 1, 64, 64)
    mask[..., 6:22, 40:56] = 1  # off centre, where the mean colour is a poor guess
    for scale, offset in ((1.0, 0.0), (0.01, -3.0), (50.0, 100.0)):
        scene = (torch.stack([x, y, x * y]) * scale + offset)[None]
        restored = telea_restore(scene, mask)
        hole = mask.bool().expand_as(scene)
        telea = (restored - scene)[hole].square().mean()
        mean_fill = (scene.mean(dim=(2, 3), keepdim=True) - scene).expand_as(scene)[hole]
        assert telea < 0.1 * mean_fill.square().mean(), (scale, offset)
        assert torch.equal(restored[~hole], scene[~hole])
    with pytest.raises(ValueError, match=r"\(B, 1, H, W\)"):
        telea_restore(scene, mask[0])
