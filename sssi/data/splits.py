"""Label fractions: which labelled regions a fine-tuning run may see.

The paper cuts the training tiles into fixed crops and fine-tunes on a random 1-100 %
of them. sssi does the same on the fly: the training tiles are cut into a grid of
``region_size`` crops, a seeded permutation orders them, and a fraction ``f`` keeps
the first ``ceil(f * n)``. Subsets are therefore nested (the 10 % crops are inside the
25 % crops for the same seed), and the choice is written next to the run.
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from sssi.data.datasets import Region, grid_regions
from sssi.data.layouts import Tile
from sssi.errors import ConfigError
from sssi.utils.io import atomic_write_text


def select_label_regions(sizes: Sequence[tuple[int, int]], region_size: int, fraction: float,
                         seed: int) -> tuple[list[Region], int]:
    """The labelled regions of a ``fraction`` split, and the number of regions in all."""
    if not 0 < fraction <= 1:
        raise ConfigError(f"data.label_fraction={fraction}: expected a value in (0, 1]")
    regions = grid_regions(sizes, region_size, region_size)
    order = np.random.default_rng(seed).permutation(len(regions))
    keep = max(1, math.ceil(fraction * len(regions) - 1e-9))
    return [regions[i] for i in sorted(order[:keep])], len(regions)


def write_split(path: str | Path, regions: Sequence[Region], tiles: Sequence[Tile], *,
                fraction: float, seed: int, region_size: int, total: int) -> Path:
    """Record a split as JSON (written to a temporary name, then renamed)."""
    record = {
        "label_fraction": fraction,
        "split_seed": seed,
        "region_size": region_size,
        "regions_total": total,
        "regions_selected": len(regions),
        "regions": [r.as_dict(tiles) for r in regions],
    }
    return atomic_write_text(path, json.dumps(record, indent=1))
