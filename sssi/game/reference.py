"""The classical inpainter a pretext has to beat: OpenCV's Telea fast marching.

An inpainter that does not restore holes better than Telea's method, which learns
nothing, has not learned structure, and comparisons of its masks say nothing yet
(``design.md``, experimental protocol). Validation scores it on the same windows, the
same holes and with the same error map as the inpainter (``val/hole_error_telea``).

Telea runs on each band of each image as a float32 single-channel image, so it works
for any number of bands without 8-bit quantisation. OpenCV's implementation is tuned to
the 0-255 range of 8-bit images (on standardised values, negative and of unit scale, it
oscillates: a hole error 200x larger on a smooth ramp), so each band is mapped linearly
onto 0-255 by its visible pixels' range first, and back afterwards.
"""

from __future__ import annotations

import cv2
import numpy as np
import torch
from torch import Tensor

#: OpenCV's neighbourhood radius in pixels (its documentation's example uses 3)
TELEA_RADIUS = 3


@torch.no_grad()
def telea_restore(images: Tensor, mask: Tensor, radius: int = TELEA_RADIUS) -> Tensor:
    """``images`` ``(B, C, H, W)`` with the holes of ``mask`` ``(B, 1, H, W)`` (1 = hole,
    values >= 0.5 count as holes) filled by ``cv2.inpaint`` (Telea), band by band; the
    pixels outside the holes are returned unchanged. On the images' device and dtype
    (the work itself runs on the CPU)."""
    if images.ndim != 4 or mask.ndim != 4 or mask.shape[1] != 1 or \
            mask.shape[0] != images.shape[0] or mask.shape[-2:] != images.shape[-2:]:
        raise ValueError(f"expected images (B, C, H, W) and masks (B, 1, H, W), got "
                         f"{tuple(images.shape)} and {tuple(mask.shape)}")
    pixels = images.detach().float().cpu().numpy()
    holes = (mask.detach().float().cpu().numpy()[:, 0] >= 0.5).astype(np.uint8)
    out = pixels.copy()
    for i in range(pixels.shape[0]):
        visible = holes[i] == 0
        if visible.all() or not visible.any():
            continue  # nothing to fill, or nothing to fill it from
        for band in range(pixels.shape[1]):
            values = pixels[i, band]
            low, high = float(values[visible].min()), float(values[visible].max())
            scale = (high - low) / 255.0 or 1.0
            filled = cv2.inpaint(((values - low) / scale).astype(np.float32), holes[i],
                                 radius, cv2.INPAINT_TELEA)
            out[i, band] = np.where(visible, values, filled * scale + low)
    return torch.from_numpy(out).to(device=images.device, dtype=images.dtype)
