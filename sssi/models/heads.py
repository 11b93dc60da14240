"""Segmentation heads sized from an encoder's ``out_channels`` and ``reductions``.

Every head is ``Head(in_channels, reductions, num_classes, **options)`` and maps the
encoder's features (shallow to deep) to logits at the input size, so it fits any
backbone, output stride or stem. Configs pick one by name through :func:`build_head`.
"""

from __future__ import annotations

import itertools
import math
import numbers
from collections.abc import Callable, Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from sssi.errors import ConfigError
from sssi.utils.registry import register_into

#: Heads by the name a config gives in ``task.head.name`` (see :func:`register_head`).
HEADS: dict[str, type[nn.Module]] = {}


def register_head(name: str) -> Callable[[type[nn.Module]], type[nn.Module]]:
    """Class decorator: make a head buildable by name (``task.head.name``), as
    :func:`sssi.models.register` does for backbones. A name is registered once."""
    return register_into(HEADS, "head", name)


@register_head("fcn")
class FCNFusionHead(nn.Module):
    """Multi-level fusion in the FCN spirit, as in the paper's segmentation network.

    Each encoder level is projected by a 1x1 conv to ``channels``, upsampled to the
    finest used level and summed; a 3x3 conv refines the sum and a 1x1 conv classifies.
    ``levels`` picks which features to fuse (default: all from reduction 4 down).
    """

    def __init__(self, in_channels: Sequence[int], reductions: Sequence[int], num_classes: int,
                 channels: int = 128, levels: Sequence[int] | None = None) -> None:
        super().__init__()
        if levels is None:
            levels = [i for i, r in enumerate(reductions) if r >= 4] or [len(reductions) - 1]
        self.levels = list(levels)
        self.proj = nn.ModuleList(
            nn.Sequential(nn.Conv2d(in_channels[i], channels, 1, bias=False),
                          nn.BatchNorm2d(channels), nn.ReLU(inplace=True))
            for i in self.levels)
        self.fuse = nn.Sequential(nn.Conv2d(channels, channels, 3, padding=1, bias=False),
                                  nn.BatchNorm2d(channels), nn.ReLU(inplace=True))
        self.classifier = nn.Conv2d(channels, num_classes, 1)

    def forward(self, features: Sequence[Tensor], size: tuple[int, int]) -> Tensor:
        feats = [features[i] for i in self.levels]
        base = feats[0].shape[-2:]
        out = None
        for f, proj in zip(feats, self.proj, strict=True):
            y = proj(f)
            if y.shape[-2:] != base:
                y = F.interpolate(y, size=base, mode="bilinear", align_corners=False)
            out = y if out is None else out + y
        logits = self.classifier(self.fuse(out))
        return F.interpolate(logits, size=size, mode="bilinear", align_corners=False)


class Segmenter(nn.Module):
    """Encoder + head: images (B, C, H, W) -> class logits (B, K, H, W)."""

    def __init__(self, encoder: nn.Module, head: nn.Module) -> None:
        super().__init__()
        self.encoder = encoder
        self.head = head

    def forward(self, x: Tensor) -> Tensor:
        return self.head(self.encoder(x), x.shape[-2:])


# ---------------------------------------------------------------------------------------
# U-Net and DeepLabV3+ heads, and the head registry
# ---------------------------------------------------------------------------------------


def _conv_bn_relu(in_ch: int, out_ch: int, kernel: int = 3, dilation: int = 1) -> nn.Sequential:
    # bias=False: the BatchNorm that follows has its own shift.
    padding = dilation * (kernel // 2)
    return nn.Sequential(
        nn.Conv2d(in_ch, out_ch, kernel, padding=padding, dilation=dilation, bias=False),
        nn.BatchNorm2d(out_ch), nn.ReLU(inplace=True))


def _is_positive_int(value: object) -> bool:
    if isinstance(value, bool):
        return False
    if isinstance(value, numbers.Integral):
        return int(value) >= 1
    return isinstance(value, float) and value.is_integer() and value >= 1


def _positive_ints(name: str, values: Sequence[int] | int, at_least: int = 1) -> tuple[int, ...]:
    """Plain ints from a config value (lists arrive as OmegaConf ListConfig)."""
    items = (values,) if isinstance(values, numbers.Number | str) else tuple(values)
    if len(items) < at_least or not all(_is_positive_int(v) for v in items):
        raise ConfigError(f"{name} must be {at_least} or more positive integers, got {values!r}")
    return tuple(int(v) for v in items)


def _check_levels(in_channels: Sequence[int], reductions: Sequence[int]) -> None:
    """A head trusts these to describe the features it gets; fail at build time if not."""
    if len(in_channels) == 0 or len(in_channels) != len(reductions):
        raise ValueError(f"in_channels {list(in_channels)} and reductions {list(reductions)} "
                         f"must be non-empty and of equal length (one entry per feature)")
    if any(a > b for a, b in itertools.pairwise(reductions)):
        raise ValueError(f"reductions must be ordered shallow to deep, got {list(reductions)}")


@register_head("unet")
class UNetHead(nn.Module):
    """U-Net-style decoder: from the deepest feature back up through every skip level.

    Stage i (deepest first) brings the running map to the size of the next shallower
    encoder feature, concatenates that feature and applies two 3x3 conv+BN+ReLU with
    ``channels[i]`` outputs. Between ResNet stages that is a x2 bilinear upsample; levels
    of equal reduction (dilated encoders: ``[2, 4, 8, 8, 8]``) are fused without
    upsampling. Resizing to the skip's actual size, not by a fixed x2, keeps odd input
    sizes working. A 1x1 conv classifies; logits are resized bilinearly to ``size``.

    ``channels`` needs one entry per stage (features - 1: four for the ResNets); extra
    entries are unused, so the default also fits encoders with fewer levels.
    """

    def __init__(self, in_channels: Sequence[int], reductions: Sequence[int], num_classes: int,
                 channels: Sequence[int] = (256, 128, 64, 32)) -> None:
        super().__init__()
        _check_levels(in_channels, reductions)
        stages = len(in_channels) - 1
        widths = _positive_ints("channels", channels)
        if len(widths) < stages:
            raise ConfigError(f"channels needs {stages} entries (one per decoder stage, deepest "
                              f"first) for an encoder with {len(in_channels)} levels, got "
                              f"{list(widths)}")
        self.skip_levels = list(range(stages - 1, -1, -1))  # deep -> shallow
        self.upsamples = [reductions[i] < reductions[i + 1] for i in self.skip_levels]
        blocks = []
        previous = int(in_channels[-1])
        for width, skip in zip(widths, self.skip_levels, strict=False):
            blocks.append(nn.Sequential(_conv_bn_relu(previous + int(in_channels[skip]), width),
                                        _conv_bn_relu(width, width)))
            previous = width
        self.blocks = nn.ModuleList(blocks)
        self.classifier = nn.Conv2d(previous, num_classes, 1)

    def forward(self, features: Sequence[Tensor], size: tuple[int, int]) -> Tensor:
        x = features[-1]
        for skip, block in zip(self.skip_levels, self.blocks, strict=True):
            s = features[skip]
            if x.shape[-2:] != s.shape[-2:]:
                x = F.interpolate(x, size=s.shape[-2:], mode="bilinear", align_corners=False)
            x = block(torch.cat([x, s], dim=1))
        logits = self.classifier(x)
        return F.interpolate(logits, size=size, mode="bilinear", align_corners=False)


class _PooledBatchNorm(nn.BatchNorm2d):
    """BatchNorm for the ASPP image-pooling branch, whose map is 1x1.

    In eval mode it is a plain BatchNorm (running statistics), so batch size 1 works.
    In training, a batch of one image gives one value per channel: its batch variance is
    undefined and torch raises. Such a batch (e.g. the last, short batch of an epoch, or
    training with batch size 1) is normalised by the running statistics instead, without
    updating them; every other BatchNorm still uses batch statistics. Train with batches
    of 2 or more for this branch to learn its statistics.
    """

    def forward(self, x: Tensor) -> Tensor:
        if self.training and x.shape[0] * x.shape[2] * x.shape[3] == 1:
            return F.batch_norm(x, self.running_mean, self.running_var, self.weight, self.bias,
                                training=False, eps=self.eps)
        return super().forward(x)


class ASPP(nn.Module):
    """Atrous spatial pyramid pooling: 1x1, one 3x3 per rate, image pooling, 1x1 projection."""

    def __init__(self, in_channels: int, channels: int, rates: Sequence[int]) -> None:
        super().__init__()
        self.branches = nn.ModuleList(
            [_conv_bn_relu(in_channels, channels, 1)]
            + [_conv_bn_relu(in_channels, channels, 3, dilation=r) for r in rates])
        self.pool = nn.Sequential(nn.AdaptiveAvgPool2d(1),
                                  nn.Conv2d(in_channels, channels, 1, bias=False),
                                  _PooledBatchNorm(channels), nn.ReLU(inplace=True))
        self.project = _conv_bn_relu(channels * (len(rates) + 2), channels, 1)

    def forward(self, x: Tensor) -> Tensor:
        outs = [branch(x) for branch in self.branches]
        # Bilinear upsampling of a 1x1 map is a broadcast.
        outs.append(self.pool(x).expand(-1, -1, *x.shape[-2:]))
        return self.project(torch.cat(outs, dim=1))


def scale_rates(rates: Sequence[int], output_stride: int) -> tuple[int, ...]:
    """ASPP rates given for output stride 16, scaled to ``output_stride``.

    The atrous rates span a fixed field of view in *image* pixels: a denser feature map
    (OS 8) needs twice the rate, a coarser one (OS 32) half (floored, at least 1).
    """
    return tuple(max(1, int(r) * 16 // int(output_stride)) for r in rates)


def _closest_level(reductions: Sequence[int], target: int) -> int:
    """Index of the shallowest feature at ``target`` reduction, else the nearest one."""
    return min(range(len(reductions)),
               key=lambda i: (abs(math.log2(reductions[i] / target)), reductions[i], i))


@register_head("deeplabv3plus")
class DeepLabV3PlusHead(nn.Module):
    """DeepLabV3+: ASPP on the deepest feature, refined with a low-level feature.

    ``rates`` are those for output stride 16 and are scaled to the encoder's
    (:func:`scale_rates`; the result is ``self.rates``). The decoder projects the
    reduction-``low_level_reduction`` feature (the shallowest at 4, e.g. ResNet layer1,
    or layer2 without the stem pool; the nearest if none is at 4) to
    ``low_level_channels`` with a 1x1 conv, concatenates the upsampled ASPP output, and
    applies two 3x3 convs and a 1x1 classifier; logits are resized to ``size``.
    Batch size 1: see :class:`_PooledBatchNorm`.
    """

    def __init__(self, in_channels: Sequence[int], reductions: Sequence[int], num_classes: int,
                 aspp_channels: int = 256, rates: Sequence[int] = (6, 12, 18),
                 low_level_channels: int = 48, low_level_reduction: int = 4) -> None:
        super().__init__()
        _check_levels(in_channels, reductions)
        (aspp_channels,) = _positive_ints("aspp_channels", aspp_channels)
        (low_level_channels,) = _positive_ints("low_level_channels", low_level_channels)
        (low_level_reduction,) = _positive_ints("low_level_reduction", low_level_reduction)
        self.output_stride = int(reductions[-1])
        self.rates = scale_rates(_positive_ints("rates", rates), self.output_stride)
        self.low_level_index = _closest_level(reductions, low_level_reduction)
        self.aspp = ASPP(int(in_channels[-1]), aspp_channels, self.rates)
        self.low_level = _conv_bn_relu(int(in_channels[self.low_level_index]),
                                       low_level_channels, 1)
        self.decoder = nn.Sequential(
            _conv_bn_relu(aspp_channels + low_level_channels, aspp_channels),
            _conv_bn_relu(aspp_channels, aspp_channels))
        self.classifier = nn.Conv2d(aspp_channels, num_classes, 1)

    def forward(self, features: Sequence[Tensor], size: tuple[int, int]) -> Tensor:
        low = self.low_level(features[self.low_level_index])
        x = self.aspp(features[-1])
        if x.shape[-2:] != low.shape[-2:]:
            x = F.interpolate(x, size=low.shape[-2:], mode="bilinear", align_corners=False)
        logits = self.classifier(self.decoder(torch.cat([x, low], dim=1)))
        return F.interpolate(logits, size=size, mode="bilinear", align_corners=False)


@register_head("linear")
class LinearProbeHead(nn.Module):
    """A linear classifier on the deepest feature only: the frozen-encoder probe.

    A 1x1 conv on the deepest map, logits upsampled bilinearly. Nothing else can learn
    features, so the score measures what the encoder's deepest level already separates
    (a head that fuses shallow levels lets even random weights score well). A BatchNorm
    without affine parameters first puts every encoder's features on one scale, as in
    MAE's linear probe; it is linear at inference.
    """

    def __init__(self, in_channels: Sequence[int], reductions: Sequence[int], num_classes: int,
                 level: int = -1) -> None:
        super().__init__()
        _check_levels(in_channels, reductions)
        self.level = int(level)
        width = int(in_channels[self.level])
        self.norm = nn.BatchNorm2d(width, affine=False)
        self.classifier = nn.Conv2d(width, num_classes, 1)

    def forward(self, features: Sequence[Tensor], size: tuple[int, int]) -> Tensor:
        logits = self.classifier(self.norm(features[self.level]))
        return F.interpolate(logits, size=size, mode="bilinear", align_corners=False)


def build_head(name: str, in_channels: Sequence[int], reductions: Sequence[int],
               num_classes: int, **options: Any) -> nn.Module:
    """Build the head registered as ``name`` for an encoder's channels and reductions.

    Pass ``encoder.out_channels`` and ``encoder.reductions``; ``options`` go to the head.
    An unknown name or option raises :class:`ConfigError` naming the ``task.head`` key,
    so a typo in a config ends with one line that says what is accepted.
    """
    cls = HEADS.get(name)
    if cls is None:
        raise ConfigError(f"task.head.name={name!r} is not a known head; "
                          f"known heads: {', '.join(sorted(HEADS))}")
    if isinstance(num_classes, bool) or int(num_classes) != num_classes or num_classes < 1:
        raise ConfigError(f"num_classes must be a positive integer, got {num_classes!r}")
    try:
        return cls(list(in_channels), list(reductions), int(num_classes), **options)
    except TypeError as err:
        # A misspelt option (``task.head.chanels``) lands here; other TypeErrors are bugs.
        if "keyword argument" not in str(err):
            raise
        raise ConfigError(f"task.head ({name}): {err}") from err
    except ConfigError as err:
        raise ConfigError(f"task.head ({name}): {err}") from err
