"""Label fractions: which labelled regions a fine-tuning run may see.

The paper cuts the training tiles into fixed crops and fine-tunes on a random 1-100 %
of them. sssi does the same on the fly, with fractions of *pixels*: each training tile
is partitioned into non-overlapping regions of about ``region_size`` (the size adapts
so that the regions tile the image exactly: a 1,100 px side with 500 px regions gives
two regions of 550 px, and a side shorter than ``region_size`` is one region), a seeded
permutation orders the regions, and a fraction ``f`` keeps the shortest prefix of that
order holding at least ``f`` of the labelled pixels. Subsets are therefore nested (the
10 % regions are inside the 25 % regions for the same seed), and the realised pixel
fraction is written next to the requested one.
"""

from __future__ import annotations

import itertools
import json
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from sssi.data.datasets import Region
from sssi.data.layouts import Tile
from sssi.errors import ConfigError
from sssi.utils.io import atomic_write_text


def partition(length: int, size: int) -> list[tuple[int, int]]:
    """``(offset, length)`` of the ``max(1, round(length / size))`` near-equal parts of
    ``[0, length)``: no overlap, no gap."""
    n = max(1, round(length / size))
    edges = [round(i * length / n) for i in range(n + 1)]
    return [(a, b - a) for a, b in itertools.pairwise(edges)]


def partition_regions(sizes: Sequence[tuple[int, int]], region_size: int) -> list[Region]:
    """Every tile cut into non-overlapping regions of about ``region_size`` (row-major)."""
    if region_size < 1:
        raise ConfigError(f"data.region_size={region_size}: expected a positive size in pixels")
    regions = []
    for t, (h, w) in enumerate(sizes):
        for r, rh in partition(h, region_size):
            for c, cw in partition(w, region_size):
                regions.append(Region(t, r, c, rh, cw))
    return regions


def select_label_regions(sizes: Sequence[tuple[int, int]], region_size: int, fraction: float,
                         seed: int) -> tuple[list[Region], int]:
    """The labelled regions of a ``fraction`` split (of pixels), and the number of
    regions in all."""
    if not 0 < fraction <= 1:
        raise ConfigError(f"data.label_fraction={fraction}: expected a value in (0, 1]")
    regions = partition_regions(sizes, region_size)
    order = np.random.default_rng(seed).permutation(len(regions))
    areas = np.array([regions[i].height * regions[i].width for i in order], dtype=np.float64)
    need = fraction * areas.sum() * (1 - 1e-9)
    keep = max(1, int(np.searchsorted(np.cumsum(areas), need, side="left")) + 1)
    return [regions[i] for i in sorted(order[:min(keep, len(regions))])], len(regions)


def write_split(path: str | Path, regions: Sequence[Region], tiles: Sequence[Tile], *,
                fraction: float, seed: int, region_size: int, total: int,
                total_pixels: int | None = None) -> Path:
    """Record a split as JSON (written to a temporary name, then renamed): the requested
    fraction and the pixel fraction the selected regions really hold."""
    pixels = sum(r.height * r.width for r in regions)
    record = {
        "label_fraction": fraction,
        "pixel_fraction": pixels / total_pixels if total_pixels else None,
        "pixels_selected": pixels,
        "pixels_total": total_pixels,
        "split_seed": seed,
        "region_size": region_size,
        "regions_total": total,
        "regions_selected": len(regions),
        "regions": [r.as_dict(tiles) for r in regions],
    }
    return atomic_write_text(path, json.dumps(record, indent=1))
