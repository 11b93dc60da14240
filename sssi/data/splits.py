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


def prefix_holding(order: np.ndarray, areas: np.ndarray, need: float) -> int:
    """Length of the shortest prefix of ``order`` whose regions' ``areas`` add up to at
    least ``need`` pixels (at least 1; all of ``order`` when they never do)."""
    held = np.cumsum(areas[order], dtype=np.float64)
    return min(len(order), max(1, int(np.searchsorted(held, need * (1 - 1e-9),
                                                        side="left")) + 1))


def seeded_order(count: int, seed: int) -> np.ndarray:
    """The regions' order without a ranking: ``split_seed``'s permutation of ``count``
    (``sssi.select``'s random selector writes the same order)."""
    return np.random.default_rng(seed).permutation(count).astype(np.int64)


def select_label_regions(sizes: Sequence[tuple[int, int]], region_size: int, fraction: float,
                         seed: int, order: Sequence[int] | None = None, pool: float = 1.0,
                         source: str = "data.label_regions") -> tuple[list[Region], int]:
    """The labelled regions of a ``fraction`` split (of pixels), and the number of
    regions in all.

    ``order``: indices into :func:`partition_regions`, label first (a selector's
    ranking; it may rank only some regions); None is the seeded permutation. ``pool``:
    with an ``order``, ``seed`` draws the regions at random within its prefix holding
    ``pool * fraction`` of the pixels (1: the ranking's own choice, no randomness)."""
    if not 0 < fraction <= 1:
        raise ConfigError(f"data.label_fraction={fraction}: expected a value in (0, 1]")
    if not pool >= 1:
        raise ConfigError(f"data.label_pool={pool}: expected a number >= 1 (1: the "
                          "ranking's first regions; 2: drawn within twice the budget)")
    regions = partition_regions(sizes, region_size)
    areas = np.array([r.height * r.width for r in regions], dtype=np.float64)
    need = fraction * areas.sum()
    if order is None:
        ranked = seeded_order(len(regions), seed)
    else:
        ranked = np.asarray(order, dtype=np.int64)
        held = areas[ranked].sum()
        if held < need * (1 - 1e-9):
            raise ConfigError(
                f"{source}: its regions hold {held / areas.sum():.4g} of the pixels; "
                f"data.label_fraction={fraction:g} needs more (rank more regions, or ask for "
                "a smaller fraction)")
        if pool > 1:
            wide = prefix_holding(ranked, areas, min(1.0, pool * fraction) * areas.sum())
            ranked = np.random.default_rng(seed).permutation(ranked[:wide])
    keep = prefix_holding(ranked, areas, need)
    return [regions[i] for i in sorted(ranked[:keep])], len(regions)


def write_split(path: str | Path, regions: Sequence[Region], tiles: Sequence[Tile], *,
                fraction: float, seed: int, region_size: int, total: int,
                total_pixels: int | None = None, ranking: dict | None = None) -> Path:
    """Record a split as JSON (written to a temporary name, then renamed): the requested
    fraction and the pixel fraction the selected regions really hold; ``ranking``: where
    the order came from (``data.label_regions``: its file, selector and digest), None
    for the seeded permutation."""
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
        "label_regions": ranking,
        "regions": [r.as_dict(tiles) for r in regions],
    }
    return atomic_write_text(path, json.dumps(record, indent=1))
