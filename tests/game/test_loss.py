"""The inpainter's loss: reconstruction weighting, clamp, L1/L2, SSIM."""

from __future__ import annotations

import pytest
import torch

from sssi.game.loss import ReconstructionLoss, reconstruction_error


def test_reconstruction_error_clamps_per_band_and_averages_bands():
    target = torch.zeros(1, 2, 1, 2)
    restored = torch.tensor([[[[1.0, 3.0]], [[0.5, 0.0]]]])
    err = reconstruction_error(restored, target, "l2", clamp=2.0)
    assert err.shape == (1, 1, 1, 2)
    assert torch.allclose(err, torch.tensor([[[[(1 + 0.25) / 2, (2 + 0) / 2]]]]))
    assert torch.allclose(reconstruction_error(restored, target, "l1", clamp=None),
                          torch.tensor([[[[0.75, 1.5]]]]))


def test_hole_and_context_weights():
    target = torch.zeros(2, 3, 4, 4)
    restored = torch.zeros(2, 3, 4, 4)
    mask = torch.zeros(2, 1, 4, 4)
    mask[:, :, :2] = 1  # top half is the hole
    restored[:, :, :2] = 1.0  # error 1 in the holes
    restored[:, :, 2:] = 0.5  # error 0.25 outside
    loss, parts = ReconstructionLoss(hole_weight=0.99, context_weight=0.01)(restored, target,
                                                                          mask)
    assert parts["hole"].item() == pytest.approx(1.0, abs=1e-5)
    assert parts["context"].item() == pytest.approx(0.25, abs=1e-5)
    assert loss.item() == pytest.approx(0.99 + 0.0025, abs=1e-5)


def test_ssim_term_is_zero_for_a_perfect_restoration_and_positive_otherwise():
    g = torch.Generator().manual_seed(0)
    target = torch.randn(2, 3, 32, 32, generator=g)
    mask = (torch.rand(2, 1, 32, 32, generator=g) > 0.5).float()
    crit = ReconstructionLoss(ssim_weight=1.0)
    _, parts = crit(target.clone(), target, mask)
    assert parts["ssim"].item() == pytest.approx(0.0, abs=1e-4)
    _, parts = crit(target + torch.randn(2, 3, 32, 32, generator=g), target, mask)
    assert parts["ssim"].item() > 0.1
