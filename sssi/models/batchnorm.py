"""Batch-norm statistics of a trained network, re-estimated on the images it will see.

A pretext encoder's running statistics describe images with holes in them, and a
randomly initialised encoder's describe nothing (mean 0, variance 1): an encoder used
frozen on whole images (the probe, ``sssi.select``'s features) should normalise with
statistics of whole images.
"""

from __future__ import annotations

from collections.abc import Iterable

import torch
from torch import Tensor, nn

from sssi.errors import ConfigError


@torch.no_grad()
def reestimate_batchnorm(encoder: nn.Module, batches: Iterable[Tensor]) -> int:
    """Replace every BatchNorm's running statistics by their average over ``batches``.

    Statistics kept from the pretext describe images with holes in them; a frozen
    encoder used on whole images should normalise with statistics of whole images.
    Returns the number of images seen; the encoder is left in eval mode."""
    norms = [m for m in encoder.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    momenta = [m.momentum for m in norms]
    for m in norms:
        m.reset_running_stats()
        m.momentum = None  # cumulative moving average: every batch weighs the same
    encoder.train()
    seen = 0
    for images in batches:
        encoder(images)
        seen += images.shape[0]
    for m, momentum in zip(norms, momenta, strict=True):
        m.momentum = momentum
    encoder.eval()
    if norms and not seen:
        raise ConfigError("probe: no images to re-estimate the BatchNorm statistics on")
    return seen
