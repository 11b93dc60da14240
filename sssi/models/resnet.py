"""ResNet encoders in plain torch, named exactly like torchvision's ``resnet*``.

torchvision does not run with the CPU torch build this project targets, so the networks
are written here; their parameter and buffer names (``conv1``, ``bn1``, ``layer1.0.conv1``,
``layer2.0.downsample.0`` ...) match torchvision's so its ImageNet state dicts load with
strict key matching (minus the ``fc`` classifier, which an encoder does not have).
"""

from __future__ import annotations

import numbers
from typing import Literal

from torch import Tensor, nn

from sssi.errors import ConfigError
from sssi.models.registry import Encoder, register

EntryDilation = Literal["previous", "one"]

# Which of layer2, layer3, layer4 trade their stride for dilation, per output stride
# (torchvision's ``replace_stride_with_dilation``).
_DILATE_STAGES: dict[int, tuple[bool, bool, bool]] = {
    32: (False, False, False),
    16: (False, False, True),
    8: (False, True, True),
}


def _conv3x3(in_planes: int, out_planes: int, stride: int = 1, dilation: int = 1) -> nn.Conv2d:
    # padding = dilation keeps the spatial size for stride 1 at any dilation.
    return nn.Conv2d(
        in_planes, out_planes, 3, stride=stride, padding=dilation, dilation=dilation, bias=False
    )


def _conv1x1(in_planes: int, out_planes: int, stride: int = 1) -> nn.Conv2d:
    return nn.Conv2d(in_planes, out_planes, 1, stride=stride, bias=False)


class BasicBlock(nn.Module):
    """Two 3x3 convs with a residual (ResNet-18/34).

    Unlike torchvision, which refuses it, ``dilation > 1`` is allowed and applies to both
    3x3 convs, so a ResNet-18 can run at output stride 8/16 as well.
    """

    expansion = 1

    def __init__(
        self,
        inplanes: int,
        planes: int,
        stride: int = 1,
        dilation: int = 1,
        downsample: nn.Module | None = None,
    ) -> None:
        super().__init__()
        self.conv1 = _conv3x3(inplanes, planes, stride, dilation)
        self.bn1 = nn.BatchNorm2d(planes)
        self.relu = nn.ReLU(inplace=True)
        self.conv2 = _conv3x3(planes, planes, 1, dilation)
        self.bn2 = nn.BatchNorm2d(planes)
        self.downsample = downsample

    @property
    def last_bn(self) -> nn.BatchNorm2d:
        return self.bn2

    def forward(self, x: Tensor) -> Tensor:
        identity = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return self.relu(out + identity)


class Bottleneck(nn.Module):
    """1x1 reduce, 3x3, 1x1 expand with a residual (ResNet-50/101).

    The stride sits on the 3x3 conv (torchvision's "ResNet v1.5"), as in the ImageNet
    weights this must load.
    """

    expansion = 4

    def __init__(
        self,
        inplanes: int,
        planes: int,
        stride: int = 1,
        dilation: int = 1,
        downsample: nn.Module | None = None,
    ) -> None:
        super().__init__()
        self.conv1 = _conv1x1(inplanes, planes)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = _conv3x3(planes, planes, stride, dilation)
        self.bn2 = nn.BatchNorm2d(planes)
        self.conv3 = _conv1x1(planes, planes * self.expansion)
        self.bn3 = nn.BatchNorm2d(planes * self.expansion)
        self.relu = nn.ReLU(inplace=True)
        self.downsample = downsample

    @property
    def last_bn(self) -> nn.BatchNorm2d:
        return self.bn3

    def forward(self, x: Tensor) -> Tensor:
        identity = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.relu(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        return self.relu(out + identity)


class ResNet(Encoder):
    """ResNet trunk returning ``[stem, layer1, layer2, layer3, layer4]`` features.

    Args:
        block: :class:`BasicBlock` or :class:`Bottleneck`.
        layers: blocks per stage, e.g. ``(3, 4, 6, 3)`` for ResNet-50.
        in_channels: input bands (3 RGB/IRRG, 4 RGBIR, 5 RGBIR+nDSM, any number works).
        output_stride: 32, 16 or 8, the stride with the stem max-pool. 16 and 8 replace
            the stride of layer4 (and layer3) by dilation, which keeps every parameter
            shape, so ImageNet weights still load, while giving denser deep features.
        dilated: shortcut for ``output_stride=8`` (DRN-A style); conflicts with any
            other explicit ``output_stride``.
        stem_pool: keep the stem's 3x3/2 max-pool. Without it every reduction after
            the stem halves (the paper's instructor: ResNet-18, no pool, stride 16).
        entry_dilation: dilation of the first block of a dilated stage. ``"previous"``
            (torchvision) gives it the previous stage's dilation; ``"one"`` leaves it
            undilated, as the DRN-A code the paper's authors used does.
        zero_init_residual: start each block's last BN at gamma 0 so every residual
            branch begins as identity (helps large-batch training from scratch).
    """

    stem_conv_key = "conv1.weight"
    pretrained_head_prefixes = ("fc.",)

    def __init__(
        self,
        block: type[BasicBlock] | type[Bottleneck],
        layers: tuple[int, int, int, int] | list[int],
        in_channels: int = 3,
        output_stride: int | None = None,
        dilated: bool = False,
        stem_pool: bool = True,
        entry_dilation: EntryDilation = "previous",
        zero_init_residual: bool = False,
    ) -> None:
        super().__init__()
        if (
            isinstance(in_channels, bool)
            or not isinstance(in_channels, numbers.Integral)
            or in_channels < 1
        ):
            raise ConfigError(f"in_channels must be a positive integer, got {in_channels!r}")
        in_channels = int(in_channels)
        if len(layers) != 4:
            raise ConfigError(f"a ResNet has 4 stages, got layers={list(layers)}")
        if dilated and output_stride not in (None, 8):
            raise ConfigError(
                f"dilated=True means output_stride 8, but output_stride={output_stride} was given"
            )
        if output_stride is None:
            output_stride = 8 if dilated else 32
        if output_stride not in _DILATE_STAGES:
            raise ConfigError(
                f"output_stride must be one of 32, 16, 8 (the stride with the stem pool), "
                f"got {output_stride!r}"
            )
        if entry_dilation not in ("previous", "one"):
            raise ConfigError(f"entry_dilation must be 'previous' or 'one', got {entry_dilation!r}")

        self.in_channels = in_channels
        self.output_stride = output_stride if stem_pool else output_stride // 2
        self.conv1 = nn.Conv2d(in_channels, 64, 7, stride=2, padding=3, bias=False)
        self.bn1 = nn.BatchNorm2d(64)
        self.relu = nn.ReLU(inplace=True)
        self.maxpool: nn.Module = (
            nn.MaxPool2d(kernel_size=3, stride=2, padding=1) if stem_pool else nn.Identity()
        )

        reduction = 2 * (2 if stem_pool else 1)
        self.out_channels = [64]
        self.reductions = [2]
        inplanes, dilation = 64, 1
        dilate_flags = (False, *_DILATE_STAGES[output_stride])
        stages: list[nn.Sequential] = []
        for index, (planes, blocks, dilate) in enumerate(
            zip((64, 128, 256, 512), layers, dilate_flags, strict=True)
        ):
            stride = 1 if index == 0 else 2
            previous = dilation
            if dilate:
                dilation *= stride
                stride = 1
            first = previous if entry_dilation == "previous" else 1
            width = planes * block.expansion
            downsample = None
            if stride != 1 or inplanes != width:
                downsample = nn.Sequential(_conv1x1(inplanes, width, stride), nn.BatchNorm2d(width))
            stage = [block(inplanes, planes, stride, first, downsample)]
            stage += [block(width, planes, 1, dilation) for _ in range(1, blocks)]
            stages.append(nn.Sequential(*stage))
            inplanes = width
            reduction *= stride
            self.out_channels.append(width)
            self.reductions.append(reduction)
        self.layer1, self.layer2, self.layer3, self.layer4 = stages

        self._init_weights(zero_init_residual)

    def _init_weights(self, zero_init_residual: bool) -> None:
        # torchvision's initialisation, so training from scratch behaves like it does.
        for module in self.modules():
            if isinstance(module, nn.Conv2d):
                nn.init.kaiming_normal_(module.weight, mode="fan_out", nonlinearity="relu")
            elif isinstance(module, nn.BatchNorm2d):
                nn.init.ones_(module.weight)
                nn.init.zeros_(module.bias)
        if zero_init_residual:
            for module in self.modules():
                if isinstance(module, BasicBlock | Bottleneck):
                    nn.init.zeros_(module.last_bn.weight)

    def forward(self, x: Tensor) -> list[Tensor]:
        x = self.relu(self.bn1(self.conv1(x)))
        features = [x]
        x = self.maxpool(x)
        for stage in (self.layer1, self.layer2, self.layer3, self.layer4):
            x = stage(x)
            features.append(x)
        return features


@register("resnet18")
def resnet18(in_channels: int = 3, **options: object) -> ResNet:
    """ResNet-18; the paper's instructor is this with ``stem_pool=False``."""
    return ResNet(BasicBlock, (2, 2, 2, 2), in_channels, **options)  # type: ignore[arg-type]


@register("resnet34")
def resnet34(in_channels: int = 3, **options: object) -> ResNet:
    """ResNet-34."""
    return ResNet(BasicBlock, (3, 4, 6, 3), in_channels, **options)  # type: ignore[arg-type]


@register("resnet50")
def resnet50(in_channels: int = 3, **options: object) -> ResNet:
    """ResNet-50 (v1.5, stride on the 3x3 conv, as torchvision)."""
    return ResNet(Bottleneck, (3, 4, 6, 3), in_channels, **options)  # type: ignore[arg-type]


@register("resnet101")
def resnet101(in_channels: int = 3, **options: object) -> ResNet:
    """ResNet-101."""
    return ResNet(Bottleneck, (3, 4, 23, 3), in_channels, **options)  # type: ignore[arg-type]


@register("drn_a_50")
def drn_a_50(
    in_channels: int = 3,
    output_stride: int | None = 8,
    entry_dilation: EntryDilation = "one",
    **options: object,
) -> ResNet:
    """DRN-A-50, the paper's inpainter encoder: ResNet-50 at output stride 8.

    layer3 is dilated 2 and layer4 dilated 4. By default the first block of each
    dilated stage is undilated, as in the DRN-A code the authors used (fyu/drn);
    ``entry_dilation="previous"`` gives torchvision's variant (layer4.0 dilated 2).
    Parameter shapes are the same either way, so ResNet-50 ImageNet weights load.
    """
    if output_stride not in (None, 8):
        raise ConfigError(f"drn_a_50 has output_stride 8 by definition, got {output_stride!r}")
    return ResNet(
        Bottleneck,
        (3, 4, 6, 3),
        in_channels,
        output_stride=8,
        entry_dilation=entry_dilation,
        **options,  # type: ignore[arg-type]
    )
