"""The ranked list of regions to label: what ``sssi.select`` writes and training reads.

A ranking is a JSON file (``regions.json``): the candidate regions of a data layout
(the same non-overlapping regions as ``data.region_size``, :mod:`sssi.data.splits`),
label first, each with its tile id, rectangle in the files' pixels and score. Training
reads it with ``data.label_regions=FILE`` in place of the seeded permutation, so the
pixel-fraction rule, nesting and ``label_split.json`` stay as they are. The file names
its regions by tile and rectangle, not by position, so a ranking made on the same images
under another root, or with more tiles than a run trains on, still applies; a region
that does not exist in the run's partition is an error that names the file.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from sssi.data.datasets import Region
from sssi.errors import ConfigError
from sssi.utils.io import atomic_write_text

#: the ``format`` value of ranking files (a later layout changes the number)
FORMAT = "sssi-label-regions/1"
_KEYS = ("tile", "row", "col", "height", "width")


@dataclass(frozen=True)
class RankedRegion:
    """One candidate region of a ranking: where it is and how it scored."""

    tile: str
    row: int
    col: int
    height: int
    width: int
    score: float | None = None
    cluster: int | None = None

    @property
    def key(self) -> tuple[str, int, int, int, int]:
        return (self.tile, self.row, self.col, self.height, self.width)


@dataclass
class Ranking:
    """Regions in the order they should be labelled, and how the order was made.

    ``info`` holds the provenance written beside the regions (selector, checkpoint,
    dataset, split, budget): free-form, for people and for ``label_split.json``."""

    regions: list[RankedRegion]
    region_size: int
    selector: str
    info: dict[str, Any] = field(default_factory=dict)
    path: Path | None = None
    digest: str | None = None

    # ------------------------------------------------------------------------ files
    def to_json(self) -> str:
        record = {"format": FORMAT, "selector": self.selector,
                  "region_size": self.region_size, **self.info,
                  "regions": [{"rank": i, "tile": r.tile, "row": r.row, "col": r.col,
                               "height": r.height, "width": r.width, "score": r.score,
                               **({"cluster": r.cluster} if r.cluster is not None else {})}
                              for i, r in enumerate(self.regions)]}
        return json.dumps(record, indent=1, allow_nan=False)

    def write(self, path: str | Path) -> Path:
        """Write the ranking (to a temporary name, then renamed)."""
        return atomic_write_text(path, self.to_json())

    @classmethod
    def read(cls, path: str | Path, key: str = "data.label_regions") -> Ranking:
        """Read a ranking file; anything wrong with it is one :class:`ConfigError` that
        names ``key`` and the file."""
        path = Path(path).expanduser()
        where = f"{key}={path}"
        try:
            raw = path.read_bytes()
        except FileNotFoundError:
            raise ConfigError(f"{where}: file not found (make one with python -m "
                              "sssi.select)") from None
        except OSError as exc:
            raise ConfigError(f"{where}: cannot read ({exc.strerror or exc})") from exc
        try:
            record = json.loads(raw)
        except (UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise ConfigError(f"{where}: not a JSON file ({exc}); expected the regions.json "
                              "of python -m sssi.select") from exc
        if not isinstance(record, dict) or record.get("format") != FORMAT:
            raise ConfigError(f"{where}: not a ranking of regions (expected \"format\": "
                              f"\"{FORMAT}\", the regions.json of python -m sssi.select)")
        items = record.get("regions")
        if not isinstance(items, list) or not items:
            raise ConfigError(f"{where}: lists no regions")
        regions = []
        for i, item in enumerate(items):
            if not isinstance(item, Mapping) or any(k not in item for k in _KEYS):
                raise ConfigError(f"{where}: region {i} lacks one of {', '.join(_KEYS)}")
            try:
                score = item.get("score")
                cluster = item.get("cluster")
                regions.append(RankedRegion(
                    str(item["tile"]), *(int(item[k]) for k in _KEYS[1:]),
                    score=None if score is None else float(score),
                    cluster=None if cluster is None else int(cluster)))
            except (TypeError, ValueError) as exc:
                raise ConfigError(f"{where}: region {i}: {exc}") from exc
        size = record.get("region_size")
        info = {k: v for k, v in record.items()
                if k not in ("format", "selector", "region_size", "regions")}
        return cls(regions, int(size) if isinstance(size, int) else 0,
                   str(record.get("selector", "?")), info, path,
                   hashlib.sha256(raw).hexdigest())

    def provenance(self) -> dict[str, Any]:
        """What ``label_split.json`` records of the ranking a run trained on."""
        return {"file": str(self.path) if self.path else None, "sha256": self.digest,
                "selector": self.selector, "regions_ranked": len(self.regions),
                **{k: self.info[k] for k in ("checkpoint", "fraction") if k in self.info}}

    # ---------------------------------------------------------------------- matching
    def order(self, tile_ids: Sequence[str], regions: Sequence[Region], region_size: int,
              key: str = "data.label_regions") -> np.ndarray:
        """The ranking as indices into ``regions`` (a run's partition of the tiles
        ``tile_ids``), label first. Regions of tiles the run does not train on are passed over (a
        ranking of more tiles applies to fewer); a region of a training tile that is not
        in the partition is an error, as is a region ranked twice."""
        where = f"{key}={self.path}" if self.path else key
        if self.region_size and self.region_size != region_size:
            raise ConfigError(
                f"{where}: ranks regions of ~{self.region_size} px, but data.region_size="
                f"{region_size}; select again with data.region_size={region_size} or train "
                f"with data.region_size={self.region_size}")
        index = {(tile_ids[r.tile], r.row, r.col, r.height, r.width): i
                 for i, r in enumerate(regions)}
        run_tiles = set(tile_ids)
        order, seen = [], set()
        for rank, r in enumerate(self.regions):
            if r.tile not in run_tiles:
                continue
            i = index.get(r.key)
            if i is None:
                raise ConfigError(
                    f"{where}: region {rank} (tile {r.tile}, row {r.row}, col {r.col}, "
                    f"{r.height}x{r.width}) is not one of this run's regions; were the "
                    "tiles or data.region_size changed since the selection?")
            if i in seen:
                raise ConfigError(f"{where}: region {rank} (tile {r.tile}, row {r.row}, "
                                  f"col {r.col}) is ranked twice")
            seen.add(i)
            order.append(i)
        if not order:
            raise ConfigError(f"{where}: none of its regions is on this run's training "
                              f"tiles ({', '.join(sorted(run_tiles)[:5])}"
                              f"{', ...' if len(run_tiles) > 5 else ''})")
        return np.asarray(order, dtype=np.int64)
