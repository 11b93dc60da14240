"""Segmentation heads: output size for every backbone/stride/stem, ASPP rates, registry."""

from __future__ import annotations

from functools import cache

import pytest
import torch
from torch import Tensor

from sssi.errors import ConfigError
from sssi.models import build_backbone
from sssi.models.heads import (
    HEADS,
    DeepLabV3PlusHead,
    FCNFusionHead,
    Segmenter,
    UNetHead,
    build_head,
    scale_rates,
)

SIZE = 64
NUM_CLASSES = 6
# (backbone name, options, expected reductions, device). The ResNet-50s run on the meta
# device (shapes only, no compute) to keep the suite fast; the ResNet-18s compute.
ENCODERS = {
    "resnet18-os32": ("resnet18", {}, [2, 4, 8, 16, 32], "cpu"),
    "resnet50-os16": ("resnet50", {"output_stride": 16}, [2, 4, 8, 16, 16], "meta"),
    "resnet50-os8": ("resnet50", {"output_stride": 8}, [2, 4, 8, 8, 8], "meta"),
    "drn_a_50": ("drn_a_50", {}, [2, 4, 8, 8, 8], "meta"),
    "resnet18-nopool": ("resnet18", {"stem_pool": False}, [2, 2, 4, 8, 16], "cpu"),
}
HEAD_NAMES = ["fcn", "unet", "deeplabv3plus"]


@cache
def _encoded(key: str, bands: int) -> tuple[list[int], list[int], tuple[Tensor, ...]]:
    """Encoder spec and features of one 64x64 image (built once per backbone and bands)."""
    name, options, reductions, device = ENCODERS[key]
    torch.manual_seed(0)
    with torch.device(device):
        encoder = build_backbone(name, in_channels=bands, **options).eval()
        assert encoder.reductions == reductions
        with torch.no_grad():
            features = encoder(torch.randn(1, bands, SIZE, SIZE))
    return encoder.out_channels, encoder.reductions, tuple(features)


@pytest.mark.parametrize("head_name", HEAD_NAMES)
@pytest.mark.parametrize("bands", [3, 5])
@pytest.mark.parametrize("encoder_key", list(ENCODERS))
def test_logits_have_the_input_size(encoder_key: str, bands: int, head_name: str):
    channels, reductions, features = _encoded(encoder_key, bands)
    device = features[0].device
    with torch.device(device):
        head = build_head(head_name, channels, reductions, NUM_CLASSES).eval()
    with torch.no_grad():  # eval, batch 1: the ASPP pooling BatchNorm must cope
        logits = head(list(features), (SIZE, SIZE))
    assert logits.shape == (1, NUM_CLASSES, SIZE, SIZE)
    if device.type != "meta":
        assert torch.isfinite(logits).all()


@pytest.mark.parametrize("head_name", HEAD_NAMES)
def test_odd_input_sizes(head_name: str):
    encoder = build_backbone("resnet18", in_channels=3).eval()
    model = Segmenter(encoder, build_head(head_name, encoder.out_channels,
                                          encoder.reductions, 3)).eval()
    with torch.no_grad():
        assert model(torch.randn(1, 3, 37, 45)).shape == (1, 3, 37, 45)


@pytest.mark.parametrize("head_name", HEAD_NAMES)
def test_gradients_reach_the_encoder(head_name: str):
    torch.manual_seed(0)
    encoder = build_backbone("resnet18", in_channels=4)
    head = build_head(head_name, encoder.out_channels, encoder.reductions, 3)
    model = Segmenter(encoder, head).train()
    logits = model(torch.randn(2, 4, 32, 32))
    target = torch.randint(0, 3, (2, 32, 32))
    torch.nn.functional.cross_entropy(logits, target).backward()
    grad = encoder.conv1.weight.grad
    assert grad is not None and torch.isfinite(grad).all() and grad.abs().sum() > 0
    for name, p in head.named_parameters():
        assert p.grad is not None and torch.isfinite(p.grad).all(), name


@pytest.mark.parametrize(("reductions", "expected"), [
    ([2, 4, 8, 16, 32], (3, 6, 9)),
    ([2, 4, 8, 16, 16], (6, 12, 18)),
    ([2, 4, 8, 8, 8], (12, 24, 36)),
    ([2, 2, 4, 8, 16], (6, 12, 18)),
])
def test_aspp_rates_scale_with_output_stride(reductions: list[int], expected: tuple[int, ...]):
    head = DeepLabV3PlusHead([8, 8, 8, 8, 16], reductions, 2, aspp_channels=8,
                             low_level_channels=4)
    assert head.output_stride == reductions[-1]
    assert head.rates == expected
    dilations = [b[0].dilation[0] for b in head.aspp.branches[1:]]
    assert tuple(dilations) == expected
    assert [b[0].padding[0] for b in head.aspp.branches[1:]] == dilations


def test_scale_rates_halves_with_a_floor_of_one():
    assert scale_rates((1, 2, 3), 32) == (1, 1, 1)
    assert scale_rates((6, 12, 18), 8) == (12, 24, 36)


def test_deeplab_low_level_is_the_reduction_4_feature():
    assert DeepLabV3PlusHead([64, 64, 128, 256, 512], [2, 4, 8, 16, 32], 2).low_level_index == 1
    assert DeepLabV3PlusHead([64, 64, 128, 256, 512], [2, 2, 4, 8, 16], 2).low_level_index == 2


def test_deeplab_trains_with_batch_size_1():
    head = DeepLabV3PlusHead([8, 8, 8, 8, 16], [2, 4, 8, 16, 32], 2, aspp_channels=8,
                             low_level_channels=4).train()
    pool_bn = head.aspp.pool[2]
    before = pool_bn.running_mean.clone()
    features = [torch.randn(1, c, SIZE // r, SIZE // r)
                for c, r in zip([8, 8, 8, 8, 16], [2, 4, 8, 16, 32], strict=True)]
    out = head(features, (SIZE, SIZE))
    out.sum().backward()
    assert out.shape == (1, 2, SIZE, SIZE) and torch.isfinite(out).all()
    assert torch.equal(pool_bn.running_mean, before)  # running stats used, not updated
    head([torch.cat([f, f]) for f in features], (SIZE, SIZE))  # batch 2: batch statistics
    assert not torch.equal(pool_bn.running_mean, before)


def test_unet_fuses_equal_reductions_without_upsampling():
    head = UNetHead([64, 256, 512, 1024, 2048], [2, 4, 8, 8, 8], 2)
    assert head.skip_levels == [3, 2, 1, 0]
    assert head.upsamples == [False, False, True, True]
    with pytest.raises(ConfigError, match="channels"):
        UNetHead([64, 256, 512, 1024, 2048], [2, 4, 8, 8, 8], 2, channels=(32, 16))


def test_registry_names_and_types():
    assert set(HEADS) == {"linear", "fcn", "unet", "deeplabv3plus"}
    assert isinstance(build_head("fcn", [8, 16], [4, 8], 2, channels=8), FCNFusionHead)
    assert isinstance(build_head("unet", [8, 16], [4, 8], 2, channels=[8]), UNetHead)


def test_unknown_head_name_lists_the_known_ones():
    with pytest.raises(ConfigError) as info:
        build_head("pspnet", [8, 16], [4, 8], 2)
    message = str(info.value)
    assert "task.head.name" in message and "pspnet" in message
    for name in HEADS:
        assert name in message


def test_bad_head_options_are_config_errors():
    with pytest.raises(ConfigError, match=r"task\.head"):
        build_head("unet", [8, 16], [4, 8], 2, chanels=(8,))
    with pytest.raises(ConfigError, match="rates"):
        build_head("deeplabv3plus", [8, 16], [4, 8], 2, rates=(6, 0))


# ------------------------------------------------------------------ the probe protocol
def _task(**kw):
    from sssi.tasks.segment import SegmentTask

    return SegmentTask(backbone={"_target_": "sssi.models.build_backbone", "name": "resnet18",
                                 "in_channels": 3},
                       loss={"_target_": "sssi.losses.SegmentationLoss"}, num_classes=3,
                       optimizer={"_target_": "torch.optim.SGD", "_partial_": True, "lr": 0.1},
                       **kw)


def test_linear_probe_head_sees_only_the_deepest_feature():
    import torch

    head = build_head("linear", [8, 16, 32], [4, 8, 16], 3)
    feats = [torch.randn(2, 8, 16, 16), torch.randn(2, 16, 8, 8), torch.randn(2, 32, 4, 4)]
    out = head(feats, (64, 64))
    assert out.shape == (2, 3, 64, 64)
    shallow = [torch.randn_like(feats[0]), torch.randn_like(feats[1]), feats[2]]
    head.eval()
    assert torch.equal(head(feats, (64, 64)), head(shallow, (64, 64)))
    assert sum(p.numel() for p in head.parameters()) == 32 * 3 + 3  # a 1x1 conv, nothing else


def test_frozen_encoder_keeps_or_updates_its_batchnorm_statistics():
    import torch

    batch = {"image": torch.randn(2, 3, 64, 64), "label": torch.zeros(2, 64, 64).long()}
    for stats, changes in (("frozen", False), ("update", True)):
        task = _task(freeze_encoder=True, head={"name": "linear"}, encoder_bn_stats=stats)
        task.train()
        before = task.model.encoder.bn1.running_mean.clone()
        task.on_train_batch_start(batch, 0)
        task.model(batch["image"])
        changed = not torch.equal(before, task.model.encoder.bn1.running_mean)
        assert changed == changes, stats
        assert not any(p.requires_grad for p in task.model.encoder.parameters())
    with pytest.raises(ConfigError, match="encoder_bn_stats"):
        _task(freeze_encoder=True, encoder_bn_stats="sometimes")


def test_pretrained_encoder_learns_slower_than_the_head_and_scratch_does_not():
    for init, expected in (("pretext.ckpt", 0.01), (None, 0.1)):
        task = _task(pretrained_lr_scale=0.1, init=init)
        head, encoder = task.configure_optimizers().param_groups
        assert head["lr"] == 0.1 and abs(encoder["lr"] - expected) < 1e-12, init
        ids = {id(p) for p in task.model.encoder.parameters()}
        assert {id(p) for p in encoder["params"]} == ids
    with pytest.raises(ConfigError, match="pretrained_lr_scale"):
        _task(pretrained_lr_scale=0)
