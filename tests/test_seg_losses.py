"""Segmentation loss terms: CE, SSIM, soft Dice / IoU, ignore handling, weights, configs."""

from __future__ import annotations

import inspect
import math

import pytest
import torch
import torch.nn.functional as F
from omegaconf import OmegaConf

from sssi.errors import ConfigError
from sssi.losses import SegmentationLoss, soft_overlap_loss
from tests.helpers import CONF

IGNORE = 255
K = 4
ALL_TERMS = {"ce_weight": 1.0, "ssim_weight": 1.0, "dice_weight": 1.0, "iou_weight": 1.0}
LOSS_CONF = CONF / "loss"


def _blocky_target(batch: int = 2, size: int = 32, seed: int = 0) -> torch.Tensor:
    """Labels made of 8x8 blocks: structured like a scene, every class present."""
    g = torch.Generator().manual_seed(seed)
    coarse = torch.randint(0, K, (batch, size // 8, size // 8), generator=g)
    coarse[0, 0, :K] = torch.arange(K)
    return coarse.repeat_interleave(8, 1).repeat_interleave(8, 2)


def _perfect_logits(target: torch.Tensor, scale: float = 30.0) -> torch.Tensor:
    onehot = F.one_hot(target.clamp(max=K - 1), K).permute(0, 3, 1, 2).float()
    return scale * onehot


def _random_logits(target: torch.Tensor, seed: int = 1) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(target.shape[0], K, *target.shape[1:], generator=g)


def test_only_active_terms_are_computed():
    target = _blocky_target()
    logits = _random_logits(target)
    assert set(SegmentationLoss()(logits, target)[1]) == {"ce"}
    assert set(SegmentationLoss(ce_weight=0, dice_weight=1)(logits, target)[1]) == {"dice"}
    assert set(SegmentationLoss(**ALL_TERMS)(logits, target)[1]) == {"ce", "ssim", "dice",
                                                                     "iou"}


@pytest.mark.parametrize("term", ["ssim", "dice", "iou"])
def test_terms_vanish_for_perfect_predictions_and_not_otherwise(term: str):
    target = _blocky_target()
    crit = SegmentationLoss(ce_weight=0, **{f"{term}_weight": 1.0})
    perfect = crit(_perfect_logits(target), target)[1][term]
    assert perfect.item() == pytest.approx(0.0, abs=1e-3)
    wrong = crit(_random_logits(target), target)[1][term]
    assert 0.05 < wrong.item() <= 1.0


def test_confidently_wrong_overlap_losses_reach_one():
    target = _blocky_target()
    logits = _perfect_logits((target + 1) % K)  # every pixel confidently wrong
    _, parts = SegmentationLoss(ce_weight=0, dice_weight=1, iou_weight=1)(logits, target)
    assert parts["dice"].item() == pytest.approx(1.0, abs=1e-4)
    assert parts["iou"].item() == pytest.approx(1.0, abs=1e-4)


def test_soft_dice_and_iou_values_by_hand():
    # 2 classes on 4 pixels: target [0, 0, 1, 1]; P(class 0) = [1, .5, .5, 0].
    p0 = torch.tensor([1.0, 0.5, 0.5, 0.0]).view(1, 1, 1, 4)
    probs = torch.cat([p0, 1 - p0], dim=1)
    onehot = F.one_hot(torch.tensor([[[0, 0, 1, 1]]]), 2).permute(0, 3, 1, 2).float()
    valid = torch.ones(1, 1, 1, 4)
    # per class: |P∩T| = 1.5, |P| = |T| = 2 -> Dice 0.75, IoU 1.5 / 2.5 = 0.6
    assert soft_overlap_loss(probs, onehot, valid, "dice").item() == pytest.approx(0.25)
    assert soft_overlap_loss(probs, onehot, valid, "iou").item() == pytest.approx(0.4)


def _with_ignored_region(target: torch.Tensor) -> torch.Tensor:
    target = target.clone()
    target[:, 10:20, 5:25] = IGNORE  # an eroded boundary, say
    target[1, :, :3] = IGNORE
    return target


@pytest.mark.parametrize("term", ["ce", "ssim", "dice", "iou"])
def test_predictions_at_ignored_pixels_do_not_matter(term: str):
    target = _with_ignored_region(_blocky_target())
    ignored = (target == IGNORE).unsqueeze(1)
    logits = _random_logits(target).requires_grad_()
    other = torch.where(ignored, 50 * _random_logits(target, seed=7), logits.detach())
    crit = SegmentationLoss(**{k: float(k == f"{term}_weight") for k in ALL_TERMS})
    value, parts = crit(logits, target)
    assert value.item() > 0.01
    assert crit(other, target)[1][term].item() == pytest.approx(parts[term].item(), abs=1e-6)
    value.backward()
    assert logits.grad[ignored.expand_as(logits)].abs().max() == 0


@pytest.mark.parametrize("term", ["dice", "iou"])
def test_overlap_losses_count_valid_pixels_only(term: str):
    # Half the image ignored gives the same loss as the other half alone.
    target = _blocky_target()
    logits = _random_logits(target)
    half = target.clone()
    half[..., :16] = IGNORE
    crit = SegmentationLoss(ce_weight=0, **{f"{term}_weight": 1.0})
    assert crit(logits, half)[0].item() == pytest.approx(
        crit(logits[..., 16:], target[..., 16:])[0].item(), abs=1e-6)


def test_ssim_averages_over_valid_pixels_only():
    # Perfect on the valid pixels, garbage at the ignored ones: still ~0.
    target = _with_ignored_region(_blocky_target())
    logits = torch.where((target == IGNORE).unsqueeze(1), _random_logits(target),
                         _perfect_logits(target))
    _, parts = SegmentationLoss(ce_weight=0, ssim_weight=1)(logits, target)
    assert parts["ssim"].item() == pytest.approx(0.0, abs=1e-3)


def test_all_ignored_labels_give_zero_not_nan():
    target = torch.full((2, 16, 16), IGNORE)
    logits = _random_logits(target).requires_grad_()
    total, parts = SegmentationLoss(**ALL_TERMS)(logits, target)
    assert set(parts) == {"ce", "ssim", "dice", "iou"}
    for name, value in parts.items():
        assert value.item() == 0.0, name
    assert total.item() == 0.0
    total.backward()
    assert torch.isfinite(logits.grad).all()


def test_total_is_the_weighted_sum_of_parts():
    target = _with_ignored_region(_blocky_target())
    weights = {"ce_weight": 0.7, "ssim_weight": 2.0, "dice_weight": 0.3, "iou_weight": 0.5}
    total, parts = SegmentationLoss(**weights)(_random_logits(target), target)
    expected = sum(weights[f"{k}_weight"] * v.item() for k, v in parts.items())
    assert total.item() == pytest.approx(expected, rel=1e-6)


def test_cross_entropy_matches_torch_and_class_weights_change_it():
    target = _with_ignored_region(_blocky_target())
    logits = _random_logits(target)
    plain = SegmentationLoss()(logits, target)[1]["ce"]
    assert plain.item() == pytest.approx(
        F.cross_entropy(logits, target, ignore_index=IGNORE).item(), rel=1e-6)
    w = [1.0, 5.0, 0.5, 2.0]
    weighted = SegmentationLoss(class_weights=w)(logits, target)[1]["ce"]
    assert weighted.item() == pytest.approx(
        F.cross_entropy(logits, target, weight=torch.tensor(w), ignore_index=IGNORE).item(),
        rel=1e-6)
    assert abs(weighted.item() - plain.item()) > 1e-3


def test_half_precision_logits_give_float32_losses():
    target = _blocky_target()
    logits = _random_logits(target).to(torch.bfloat16)
    total, parts = SegmentationLoss(**ALL_TERMS)(logits, target)
    assert total.dtype == torch.float32 and all(v.dtype == torch.float32 for v in parts.values())
    assert math.isfinite(total.item())


def test_ssim_works_on_inputs_smaller_than_the_window():
    target = torch.randint(0, K, (2, 4, 4), generator=torch.Generator().manual_seed(0))
    _, parts = SegmentationLoss(ce_weight=0, ssim_weight=1, ssim_window=11)(
        _random_logits(target), target)
    assert math.isfinite(parts["ssim"].item()) and parts["ssim"].item() > 0


@pytest.mark.parametrize("kwargs", [
    {"ce_weight": 0.0},
    {"dice_weight": -1.0},
    {"ssim_weight": 1.0, "ssim_window": 10},
])
def test_bad_settings_are_config_errors(kwargs: dict):
    with pytest.raises(ConfigError, match="loss"):
        SegmentationLoss(**kwargs)


@pytest.mark.parametrize(("name", "active"), [
    ("cross_entropy", {"ce"}),
    ("ce_ssim", {"ce", "ssim"}),
    ("ce_dice", {"ce", "dice"}),
])
def test_loss_configs(name: str, active: set[str]):
    from hydra.utils import instantiate

    cfg = OmegaConf.load(LOSS_CONF / f"{name}.yaml")
    assert cfg._target_ == "sssi.losses.SegmentationLoss"
    params = set(inspect.signature(SegmentationLoss).parameters)
    if name != "cross_entropy":  # the configs list every key but the ignore index,
        # which sssi.data.palettes owns (configs do not repeat it)
        assert set(cfg) - {"_target_"} == params - {"ignore_index"}
    assert "ignore_index" not in cfg
    crit = instantiate(cfg)
    target = _blocky_target()
    assert set(crit(_random_logits(target), target)[1]) == active


def test_segmentation_ce_ignores_255():
    logits = torch.zeros(1, 3, 2, 2)
    logits[0, 1] = 10.0  # confident class 1 everywhere
    target = torch.tensor([[[1, 1], [255, 255]]])
    loss, parts = SegmentationLoss()(logits, target)
    assert loss.item() < 1e-3 and "ce" in parts
    target_bad = torch.tensor([[[0, 0], [255, 255]]])
    assert SegmentationLoss()(logits, target_bad)[0].item() > 5

