"""The inpainter: an encoder and a skip-free decoder that restores the masked image.

No skip connections on purpose: every pixel of a hole must be explained by the deepest
features, so the encoder (the part the segmentation task keeps) has to learn the scene,
not copy edges from shallow layers across the hole.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

from torch import Tensor, nn

from sssi.errors import ConfigError
from sssi.models.conv_transpose import ConvTranspose2d
from sssi.models.registry import Encoder

__all__ = ["Inpainter", "decoder_plan"]

_OUTPUTS = ("linear", "tanh")


def decoder_plan(reduction: int, channels: Sequence[int]) -> list[tuple[int, int]]:
    """``(out_channels, stride)`` of each decoder layer for an encoder of ``reduction``.

    ``log2(reduction)`` stride-2 layers come first, then stride-1 layers until
    ``channels`` is used up; ``channels`` is extended with its last value when there are
    more stride-2 layers than channels. For DRN-A-50 (reduction 8) and the default
    channels this is the paper's 512, 256, 128 (stride 2), 64, 32 (stride 1).
    """
    if reduction < 1 or reduction & (reduction - 1):
        raise ConfigError(
            f"inpainter: the encoder's reduction must be a power of 2 to be undone by "
            f"stride-2 layers, got {reduction}"
        )
    n_up = int(math.log2(reduction))
    n_layers = max(n_up, len(channels))
    widths = [*channels, *[channels[-1]] * (n_layers - len(channels))]
    return [(width, 2 if i < n_up else 1) for i, width in enumerate(widths)]


class Inpainter(nn.Module):
    """Encoder + upsampling decoder: masked images ``(B, C, H, W)`` -> restored images.

    Args:
        encoder: any registry :class:`~sssi.models.Encoder`; only its deepest feature map
            (``out_channels[-1]`` channels at ``reductions[-1]``) feeds the decoder.
            Kept as ``.encoder`` so the segmentation task can take its weights.
        out_channels: bands to restore (3 for RGB, 4 for RGBIR, ...).
        decoder_channels: widths of the decoder layers (see :func:`decoder_plan`).
            Stride-2 layers are 4x4 transposed convs (padding 1), which exactly double
            the size; stride-1 layers are 3x3 transposed convs (padding 1). Each is
            followed by BatchNorm and ReLU; a 3x3 conv then maps to ``out_channels``.
            Wide layers run as a matrix product on CPUs
            (:class:`~sssi.models.conv_transpose.ConvTranspose2d`).
        output: ``"tanh"`` for targets scaled to [-1, 1] (the paper's choice) or
            ``"linear"`` for standardised targets (unbounded).

    Inputs must have H and W divisible by ``encoder.reductions[-1]``; other sizes raise
    ``ValueError`` naming the size rather than being silently resized, because a resize
    would blur the very pixels the reconstruction loss compares.
    """

    def __init__(
        self,
        encoder: Encoder,
        out_channels: int,
        decoder_channels: Sequence[int] = (512, 256, 128, 64, 32),
        output: str = "linear",
    ) -> None:
        super().__init__()
        if output not in _OUTPUTS:
            raise ConfigError(f"inpainter output={output!r} (task.output): expected one of "
                              f"{_OUTPUTS}")
        if isinstance(out_channels, bool) or not isinstance(out_channels, int) or out_channels < 1:
            raise ConfigError(f"inpainter out_channels={out_channels!r}: expected a positive int")
        channels = list(decoder_channels)
        if not channels or any(isinstance(c, bool) or int(c) != c or c < 1 for c in channels):
            raise ConfigError(
                f"inpainter decoder_channels={channels!r}: expected a non-empty list of "
                f"positive ints"
            )
        self.encoder = encoder
        self.reduction = int(encoder.reductions[-1])
        self.output = output

        layers: list[nn.Module] = []
        width = int(encoder.out_channels[-1])
        for out, stride in decoder_plan(self.reduction, [int(c) for c in channels]):
            kernel = 4 if stride == 2 else 3
            layers += [
                ConvTranspose2d(width, out, kernel, stride=stride, padding=1, bias=False),
                nn.BatchNorm2d(out),
                nn.ReLU(inplace=True),
            ]
            width = out
        self.decoder = nn.Sequential(*layers)
        self.head = nn.Conv2d(width, out_channels, 3, padding=1)
        self.activation: nn.Module = nn.Tanh() if output == "tanh" else nn.Identity()

    def forward(self, masked: Tensor) -> Tensor:
        """Restore ``masked`` (the image with its holes blanked); same shape as the image."""
        height, width = masked.shape[-2:]
        if height % self.reduction or width % self.reduction:
            raise ValueError(
                f"inpainter input size {height}x{width} is not a multiple of the encoder's "
                f"reduction {self.reduction}"
            )
        features = self.encoder(masked)[-1]
        return self.activation(self.head(self.decoder(features)))
