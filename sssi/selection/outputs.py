"""What a selection is shown as, besides its ranking: a GeoJSON to open in QGIS and a
picture of the regions a budget takes.

- :func:`regions_geojson`: one polygon per ranked region with its rank, score and
  whether the budget takes it, in longitude/latitude (RFC 7946: WGS 84), reprojected
  from each tile's own CRS; tiles that are not georeferenced are left out (and counted).
- :func:`contact_sheet`: every tile as a thumbnail, the chosen regions outlined and the
  rest dimmed, tiles with chosen regions first.
"""

from __future__ import annotations

import json
import logging
import math
from collections.abc import Sequence
from typing import Any

import numpy as np

from sssi.data.datasets import Region
from sssi.data.layouts import Tile
from sssi.data.raster import open_raster, read_decimated

log = logging.getLogger(__name__)


def _georeference(tile: Tile) -> tuple[Any, Any] | None:
    """``(transform, crs)`` of a tile's image, or None when it has no CRS."""
    with open_raster(tile.image_path) as ds:
        if ds.crs is None or ds.transform.is_identity:
            return None
        return ds.transform, ds.crs


def regions_geojson(tiles: Sequence[Tile], regions: Sequence[Region], order: np.ndarray,
                    scores: np.ndarray | None, chosen: set[int],
                    clusters: np.ndarray | None = None) -> tuple[dict | None, int]:
    """``(feature collection, tiles left out)``: None when no tile is georeferenced."""
    from rasterio.warp import transform_geom

    refs = {}
    for t in {regions[i].tile for i in order}:
        refs[t] = _georeference(tiles[t])
    features = []
    for rank, i in enumerate(order):
        r = regions[int(i)]
        ref = refs[r.tile]
        if ref is None:
            continue
        transform, crs = ref
        corners = [transform @ (c, w) for c, w in ((r.col, r.row), (r.col + r.width, r.row),
                                                    (r.col + r.width, r.row + r.height),
                                                    (r.col, r.row + r.height), (r.col, r.row))]
        geometry = transform_geom(crs, "EPSG:4326",
                                  {"type": "Polygon", "coordinates": [corners]})
        score = None if scores is None or not np.isfinite(scores[i]) else float(scores[i])
        properties = {"rank": rank, "tile": tiles[r.tile].id, "row": r.row, "col": r.col,
                      "height": r.height, "width": r.width, "score": score,
                      "chosen": int(i) in chosen}
        if clusters is not None:
            properties["cluster"] = int(clusters[i])
        features.append({"type": "Feature", "geometry": geometry, "properties": properties})
    missing = sum(ref is None for ref in refs.values())
    if not features:
        return None, missing
    return {"type": "FeatureCollection", "features": features}, missing


def geojson_text(collection: dict) -> str:
    return json.dumps(collection, allow_nan=False)


def _thumbnail(tile: Tile, side: int) -> np.ndarray:
    """An 8-bit BGR thumbnail of a tile's first three bands (or its one band), each
    stretched between its 2nd and 98th percentiles."""
    import cv2

    image = read_decimated(tile.image_path, side).astype(np.float32)  # (C, h, w)
    bands = image[:3] if image.shape[0] >= 3 else np.repeat(image[:1], 3, axis=0)
    out = np.empty_like(bands)
    for b in range(3):
        low, high = np.percentile(bands[b], (2, 98))
        out[b] = (bands[b] - low) / max(high - low, 1e-6) * 255
    rgb = np.clip(out, 0, 255).astype(np.uint8).transpose(1, 2, 0)
    return cv2.cvtColor(np.ascontiguousarray(rgb), cv2.COLOR_RGB2BGR)


def contact_sheet(tiles: Sequence[Tile], sizes: Sequence[tuple[int, int]],
                  regions: Sequence[Region], chosen: set[int], side: int = 192,
                  max_tiles: int = 120, title: str = "") -> np.ndarray:
    """A BGR picture: a grid of tile thumbnails, the ``chosen`` regions outlined in
    yellow and the other regions dimmed. Tiles with chosen regions come first; at most
    ``max_tiles`` are drawn (the log says how many were left out)."""
    import cv2

    picked_tiles = sorted({regions[i].tile for i in chosen})
    rest = [t for t in range(len(tiles)) if t not in set(picked_tiles)]
    show = (picked_tiles + rest)[:max_tiles]
    if len(show) < len(tiles):
        log.info("picture: %d of %d tiles drawn (those with chosen regions first)",
                 len(show), len(tiles))
    columns = max(1, min(len(show), math.ceil(math.sqrt(len(show)))))
    rows = math.ceil(len(show) / columns)
    label_h, pad = 18, 6
    head = 24 if title else 0
    sheet = np.full((head + rows * (side + label_h + pad) + pad,
                     columns * (side + pad) + pad, 3), 32, np.uint8)
    if title:
        cv2.putText(sheet, title, (pad, 17), cv2.FONT_HERSHEY_SIMPLEX, 0.5, (255, 255, 255), 1,
                    cv2.LINE_AA)
    by_tile: dict[int, list[int]] = {}
    for i, r in enumerate(regions):
        by_tile.setdefault(r.tile, []).append(i)
    for k, t in enumerate(show):
        thumb = _thumbnail(tiles[t], side)
        h, w = sizes[t]
        sy, sx = thumb.shape[0] / h, thumb.shape[1] / w
        dim = np.full(thumb.shape[:2], True)
        boxes = []
        for i in by_tile.get(t, []):
            if i in chosen:
                r = regions[i]
                y0, x0 = int(r.row * sy), int(r.col * sx)
                y1 = max(y0 + 1, int((r.row + r.height) * sy))
                x1 = max(x0 + 1, int((r.col + r.width) * sx))
                dim[y0:y1, x0:x1] = False
                boxes.append((x0, y0, x1 - 1, y1 - 1))
        thumb[dim] = (thumb[dim] * 0.35).astype(np.uint8)
        for x0, y0, x1, y1 in boxes:
            cv2.rectangle(thumb, (x0, y0), (x1, y1), (0, 230, 255), 1)
        r0 = head + pad + (k // columns) * (side + label_h + pad)
        c0 = pad + (k % columns) * (side + pad)
        sheet[r0:r0 + thumb.shape[0], c0:c0 + thumb.shape[1]] = thumb
        cv2.putText(sheet, f"{tiles[t].id} ({len(boxes)})", (c0, r0 + side + 13),
                    cv2.FONT_HERSHEY_SIMPLEX, 0.4, (220, 220, 220), 1, cv2.LINE_AA)
    return sheet
