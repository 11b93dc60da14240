"""Batch norm folded into convolutions: the eval-mode outputs, and nothing else touched."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from sssi.game.inpainter import Inpainter
from sssi.models import build_backbone
from sssi.models.conv_transpose import ConvTranspose2d
from sssi.models.folding import FoldedCopy, fold_batch_norm


def _randomise_statistics(module: nn.Module, seed: int = 0) -> None:
    """Batch norms far from the identity, so that a fold that is skipped or wrong shows."""
    g = torch.Generator().manual_seed(seed)
    for m in module.modules():
        if isinstance(m, nn.BatchNorm2d):
            c = m.num_features
            m.running_mean.copy_(torch.randn(c, generator=g) * 0.3)
            m.running_var.copy_(torch.rand(c, generator=g) + 0.5)
            m.weight.data.copy_(torch.rand(c, generator=g) + 0.5)
            m.bias.data.copy_(torch.randn(c, generator=g) * 0.3)


def _batch_norms(module: nn.Module) -> int:
    return sum(isinstance(m, nn.BatchNorm2d) for m in module.modules())


@pytest.mark.parametrize("fmt", [torch.contiguous_format, torch.channels_last])
def test_the_folded_inpainter_restores_what_the_eval_inpainter_does(fmt):
    """Every batch norm of an inpainter (encoder and decoder, whose forward cannot be
    traced as a whole) is folded; the outputs are the eval-mode ones; the original keeps
    its mode, its weights and its gradients."""
    torch.manual_seed(0)
    net = Inpainter(build_backbone("resnet18", in_channels=3), 3, (64, 32, 16, 16, 8))
    _randomise_statistics(net)
    net = net.to(memory_format=fmt).train()
    before = {k: v.clone() for k, v in net.state_dict().items()}
    x = torch.randn(2, 3, 64, 64).to(memory_format=fmt)

    folded = fold_batch_norm(net)

    assert _batch_norms(net) == 25 and _batch_norms(folded) == 0
    assert net.training and all(m.training for m in net.modules())
    assert all(torch.equal(v, net.state_dict()[k]) for k, v in before.items())
    assert not any(p.requires_grad for p in folded.parameters())
    assert isinstance(folded, Inpainter) and not folded.training
    assert any(isinstance(m, ConvTranspose2d) for m in folded.modules())
    conv = next(m for m in folded.modules() if isinstance(m, nn.Conv2d))
    assert conv.weight.is_contiguous(memory_format=fmt)
    with torch.no_grad():
        want = net.eval()(x)
        got = folded(x)
    torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-4)


def test_a_convolution_read_by_anything_else_keeps_its_batch_norm():
    """Folding would change what the other reader sees, so that pair is left alone."""

    class Shared(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.conv, self.bn = nn.Conv2d(3, 4, 3, padding=1), nn.BatchNorm2d(4)
            self.conv2, self.bn2 = nn.Conv2d(4, 4, 1), nn.BatchNorm2d(4)

        def forward(self, x):
            y = self.conv(x)
            z = self.bn2(self.conv2(self.bn(y)))
            return y + z  # conv's output read twice; conv2's only by bn2

    net = Shared()
    _randomise_statistics(net, seed=1)
    folded = fold_batch_norm(net)
    assert [type(m) for m in folded.modules()].count(nn.BatchNorm2d) == 1
    assert folded.get_submodule("bn") is not None
    x = torch.randn(2, 3, 8, 8)
    with torch.no_grad():
        torch.testing.assert_close(folded(x), net.eval()(x), rtol=1e-5, atol=1e-5)


def test_batch_norm_without_running_statistics_is_not_folded():
    """Without running statistics a batch norm normalises with the batch's own, even in
    eval mode: there is nothing fixed to fold."""
    net = nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4, track_running_stats=False))
    folded = fold_batch_norm(net)
    assert _batch_norms(folded) == 1
    x = torch.randn(2, 3, 8, 8)
    with torch.no_grad():
        torch.testing.assert_close(folded(x), net.eval()(x))


def test_a_synced_copy_follows_the_weights_and_statistics_it_was_made_from():
    """After the source learned (weights of folded and unfolded layers, batch norm
    statistics, all changed in place) one sync gives the source's new outputs."""
    torch.manual_seed(0)
    net = Inpainter(build_backbone("resnet18", in_channels=3), 3, (32, 16, 16, 16, 8))
    _randomise_statistics(net)
    copy = FoldedCopy(net)
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        before = copy.module(x)
        for p in net.parameters():
            p.add_(0.05 * torch.randn_like(p))
        _randomise_statistics(net, seed=3)
        net.head.bias.add_(1.0)  # a layer with no batch norm after it
        want = net.eval()(x)
        assert (copy.module(x) - want).abs().max() > 0.1  # stale
        copy.sync()
        synced, fresh = copy.module(x), fold_batch_norm(net)(x)
        assert not torch.equal(before, synced)
        torch.testing.assert_close(synced, fresh)  # what folding the new weights gives
        assert (synced - want).abs().max() < 1e-3 * want.abs().max()  # float rounding
