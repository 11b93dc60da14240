"""Augmentation and normalisation of whole batches, on the batch's device.

DataLoader workers only read: a training sample is the raw window (the file's dtype,
``uint8`` for ISPRS and Dubai) with its ``uint8`` label, plus ``augment``, a short
float64 vector of the sample's augmentation parameters, a pure function of ``(seed,
index)`` (:mod:`sssi.data.draws`, see :class:`~sssi.data.datasets.RandomWindowDataset`).
After the batch reached its device, :func:`augment_batch` applies the flips, 90-degree
rotations and photometric jitter (kornia's ``adjust_contrast`` / ``adjust_brightness``
with per-sample factors) those parameters say, jointly on image and label, and
:class:`BatchNormalizer` standardises every batch (training, validation, test).

So augmentation is a pure function of ``(seed, sample index)`` as before (resume stays
bit-exact, the number of workers changes nothing), the workers do no float work, and
the host-to-device copy carries bytes instead of float32 (4x less).

The parameters follow what the albumentations pipeline of earlier versions drew, so
that training sees the same distribution (``tests/data/test_augment.py`` compares
them): horizontal and vertical flips with probability 1/2 each, a rotation by k x 90
degrees with k uniform in 0-3, brightness/contrast (``x * (1 + c) + b * max``, c and b
uniform in +-0.15) with probability ``brightness_contrast``, Gaussian noise of standard
deviation uniform in 1-4 % of the value range with probability ``noise``, values
clipped to the dtype's range.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, fields

import kornia
import numpy as np
import torch
from torch import Tensor

from sssi.errors import DataError

#: the columns of a sample's ``augment`` vector
PARAMS = ("rot90", "hflip", "vflip", "contrast", "brightness", "noise_std", "noise_seed")
_COL = {name: i for i, name in enumerate(PARAMS)}

#: brightness and contrast limits, and the noise's standard deviation range (fractions
#: of the value range), as the earlier albumentations pipeline had them
BRIGHTNESS_CONTRAST_LIMIT = 0.15
NOISE_STD_RANGE = (0.01, 0.04)


@dataclass(frozen=True)
class Augment:
    """``data.augment``: which augmentations a training window gets (probabilities for
    the photometric ones; 0 disables them)."""

    hflip: bool = True
    vflip: bool = True
    rot90: bool = True
    brightness_contrast: float = 0.0
    noise: float = 0.0

    @classmethod
    def keys(cls) -> list[str]:
        return [f.name for f in fields(cls)]

    @property
    def active(self) -> bool:
        return bool(self.hflip or self.vflip or self.rot90 or self.brightness_contrast > 0
                    or self.noise > 0)

    #: uniforms a sample's parameters take (:meth:`draw`)
    DRAWS = 9

    def draw(self, u: np.ndarray) -> np.ndarray:
        """Parameters ``(n, len(PARAMS))`` float64 of ``n`` samples from their uniforms
        ``(n, DRAWS)`` (:func:`sssi.data.draws.uniforms`): one fixed column per
        parameter, so switching one augmentation on or off does not change the others."""
        u = np.asarray(u, dtype=np.float64).reshape(-1, self.DRAWS)
        out = np.zeros((len(u), len(PARAMS)), dtype=np.float64)
        if self.hflip:
            out[:, _COL["hflip"]] = u[:, 0] < 0.5
        if self.vflip:
            out[:, _COL["vflip"]] = u[:, 1] < 0.5
        if self.rot90:
            out[:, _COL["rot90"]] = np.minimum(np.floor(u[:, 2] * 4), 3)
        if self.brightness_contrast > 0:
            jitter = u[:, 3] < self.brightness_contrast
            lim = BRIGHTNESS_CONTRAST_LIMIT
            out[:, _COL["contrast"]] = np.where(jitter, (2 * u[:, 4] - 1) * lim, 0.0)
            out[:, _COL["brightness"]] = np.where(jitter, (2 * u[:, 5] - 1) * lim, 0.0)
        if self.noise > 0:
            noisy = u[:, 6] < self.noise
            lo, hi = NOISE_STD_RANGE
            out[:, _COL["noise_std"]] = np.where(noisy, lo + (hi - lo) * u[:, 7], 0.0)
            out[:, _COL["noise_seed"]] = np.where(noisy, np.floor(u[:, 8] * 2**31), 0.0)
        return out


def value_range(dtype: torch.dtype) -> float | None:
    """The largest value of an integer image dtype (255 for uint8); None for floats,
    which are neither scaled nor clipped by the photometric jitter."""
    if dtype.is_floating_point or dtype == torch.bool:
        return None
    return float(torch.iinfo(dtype).max)


def _dihedral(t: Tensor, hflip: bool, vflip: bool, k: int) -> Tensor:
    """One sample (``(..., H, W)``) flipped and rotated by ``k`` x 90 degrees."""
    dims = [d for d, on in ((-1, hflip), (-2, vflip)) if on]
    if dims:
        t = t.flip(dims)
    return torch.rot90(t, k, (-2, -1)) if k else t


def augment_batch(image: Tensor, label: Tensor | None, params: Tensor,
                  max_value: float | None) -> tuple[Tensor, Tensor | None]:
    """Apply each sample's ``params`` ``(B, len(PARAMS))`` to ``image`` ``(B, C, H, W)``
    (raw values, any dtype; returned as float32 in raw units) and ``label``
    ``(B, H, W)`` (geometric transforms only). ``max_value``: the images' value range
    (:func:`value_range` of the raw dtype) for brightness and clipping.

    Flips and rotations move the raw values (bytes for uint8 images) sample by sample
    and the batch is put together once; the photometric steps run only when some
    sample asks for them."""
    p = params.detach().to(device="cpu", dtype=torch.float64)  # B x 7 numbers
    geo = [(bool(r[_COL["hflip"]] > 0), bool(r[_COL["vflip"]] > 0),
            round(float(r[_COL["rot90"]])) % 4) for r in p]
    if any(h or v or k for h, v, k in geo):
        square = image.shape[-1] == image.shape[-2]
        geo = [(h, v, k if square else 0) for h, v, k in geo]  # grid windows may be oblong
        image = torch.stack([_dihedral(x, *g) for x, g in zip(image, geo, strict=True)])
        if label is not None:
            label = torch.stack([_dihedral(y, *g) for y, g in zip(label, geo, strict=True)])
    x = image.float()
    contrast = 1.0 + p[:, _COL["contrast"]]
    brightness = p[:, _COL["brightness"]]
    std = p[:, _COL["noise_std"]]
    jitter, noisy = bool((contrast != 1).any() or (brightness != 0).any()), bool((std > 0).any())
    if not (jitter or noisy):
        return x, label
    # photometric steps on the [0, 1] range of the dtype (kornia's convention), clipped
    scale = 1.0 if max_value is None else max_value
    clip = max_value is not None
    x = x / scale
    if jitter:
        x = kornia.enhance.adjust_contrast(x, contrast.float().to(x.device), clip_output=clip)
        x = kornia.enhance.adjust_brightness(x, brightness.float().to(x.device),
                                             clip_output=clip)
    if noisy:
        g = torch.Generator(device=x.device)
        seed = int(p[:, _COL["noise_seed"]].sum().item()) % (2**62)
        g.manual_seed(seed)  # a function of the batch's samples
        noise = torch.randn(x.shape, generator=g, device=x.device, dtype=x.dtype)
        x = x + noise * std.float().to(x.device)[:, None, None, None]
        if clip:
            x = x.clamp_(0.0, 1.0)
    return x * scale, label


class BatchNormalizer:
    """Per-band standardisation ``(x - mean) / std`` of float batches on their device
    (the tensors are cached per device)."""

    def __init__(self, mean: Sequence[float], std: Sequence[float]) -> None:
        self.mean = [float(m) for m in mean]
        self.std = [float(s) for s in std]
        if len(self.mean) != len(self.std) or any(s <= 0 for s in self.std):
            raise DataError(f"normalisation needs one positive std per mean, got mean "
                            f"{self.mean} std {self.std}")
        self._cache: dict[torch.device, tuple[Tensor, Tensor]] = {}

    def __call__(self, image: Tensor) -> Tensor:
        device = image.device
        if device not in self._cache:
            mean = torch.tensor(self.mean, dtype=torch.float32, device=device)
            inv = 1.0 / torch.tensor(self.std, dtype=torch.float32, device=device)
            self._cache[device] = (mean[:, None, None], inv[:, None, None])
        mean, inv = self._cache[device]
        return (image.float() - mean) * inv
