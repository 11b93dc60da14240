"""CPU-side augmentation with albumentations, applied jointly to image and label.

Only what is safe for every band count lives here (geometry, brightness/contrast);
GPU-side work such as masking belongs to the tasks. Scale augmentation is done by the
datasets when they read a window (read a larger or smaller window, resize to the
crop), which needs no padding and keeps labels exact.
"""

from __future__ import annotations

import albumentations as A


def train_transform(hflip: bool = True, vflip: bool = True, rot90: bool = True,
                    brightness_contrast: float = 0.0, noise: float = 0.0) -> A.Compose | None:
    """Flips, 90-degree rotations (aerial images have no up) and optional photometric jitter.

    ``brightness_contrast`` and ``noise`` are probabilities (0 disables the step).
    """
    steps: list[A.BasicTransform] = []
    if hflip:
        steps.append(A.HorizontalFlip(p=0.5))
    if vflip:
        steps.append(A.VerticalFlip(p=0.5))
    if rot90:
        steps.append(A.RandomRotate90(p=1.0))
    if brightness_contrast > 0:
        steps.append(A.RandomBrightnessContrast(brightness_limit=0.15, contrast_limit=0.15,
                                                p=brightness_contrast))
    if noise > 0:
        steps.append(A.GaussNoise(std_range=(0.01, 0.04), p=noise))
    return A.Compose(steps) if steps else None
