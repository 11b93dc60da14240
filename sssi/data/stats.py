"""Per-band normalisation statistics computed from the data itself.

ImageNet means are wrong for IRRG, RGBIR or nDSM bands, so statistics come from the
tiles: each band source is read decimated (cheap even for 6000x6000 tiles) and the
mean and standard deviation are pooled over all selected tiles.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from sssi.data.layouts import Tile
from sssi.data.raster import read_decimated


def band_stats(tiles: Sequence[Tile], max_side: int = 512) -> tuple[list[float], list[float]]:
    """Mean and std of every stacked band over ``tiles``, in raw units (0-255 for uint8)."""
    total = None
    total_sq = None
    count = 0
    for tile in tiles:
        parts = []
        for src in tile.sources:
            data = read_decimated(src.path, max_side)
            parts.append(data[[b - 1 for b in src.bands]].astype(np.float64))
        h = min(p.shape[1] for p in parts)
        w = min(p.shape[2] for p in parts)
        stack = np.concatenate([p[:, :h, :w] for p in parts]).reshape(-1, h * w)
        s = stack.sum(axis=1)
        sq = (stack**2).sum(axis=1)
        total = s if total is None else total + s
        total_sq = sq if total_sq is None else total_sq + sq
        count += h * w
    assert total is not None and total_sq is not None and count > 0
    mean = total / count
    std = np.sqrt(np.maximum(total_sq / count - mean**2, 1e-12))
    return [float(m) for m in mean], [float(max(s, 1e-3)) for s in std]
