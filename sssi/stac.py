"""Predictions described for catalogues: a STAC Item beside every label map, and a STAC
Collection over a folder of them (pystac).

The Item (``NAME.json`` beside ``NAME.tif``) has the map as its ``data`` asset with the
``classification`` extension (value, name and colour of every class, the no-data
value), the ``raster`` extension (data type, no data, resolution) and the
``projection`` extension (CRS, shape, transform); the QGIS style and the probabilities,
when written, are further assets. Its footprint is the map's bounds in WGS 84; a map
without georeferencing (a plain JPEG's) has a null geometry. Which model made it is in
``sssi:checkpoint`` and ``sssi:source``.
"""

from __future__ import annotations

import datetime as dt
import json
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from rasterio.warp import transform_bounds

from sssi.data.raster import open_raster
from sssi.errors import DataError
from sssi.utils.io import atomic_write_text

COLLECTION_FILE = "collection.json"


def _footprint(ds) -> tuple[dict[str, Any] | None, list[float] | None]:
    if ds.crs is None:
        return None, None
    west, south, east, north = transform_bounds(ds.crs, "EPSG:4326", *ds.bounds,
                                                densify_pts=21)
    ring = [[west, south], [east, south], [east, north], [west, north], [west, south]]
    return {"type": "Polygon", "coordinates": [ring]}, [west, south, east, north]


def prediction_item(labels: str | Path, class_names: Sequence[str],
                    colors: Sequence[Sequence[int]], nodata: int, *, source: str | Path,
                    checkpoint: str | Path, extra_assets: dict[str, Path] | None = None,
                    when: dt.datetime | None = None):
    """The :class:`pystac.Item` of the label map ``labels`` (hrefs relative to its folder)."""
    import pystac
    from pystac.extensions.classification import Classification, ClassificationExtension
    from pystac.extensions.projection import ProjectionExtension
    from pystac.extensions.raster import DataType, RasterBand, RasterExtension

    labels = Path(labels)
    with open_raster(labels) as ds:  # a map of a plain JPEG has no georeferencing
        geometry, bbox = _footprint(ds)
        shape = [ds.height, ds.width]
        transform = list(ds.transform)[:6] if ds.crs is not None else None
        epsg = ds.crs.to_epsg() if ds.crs is not None else None
        wkt2 = ds.crs.to_wkt() if ds.crs is not None and epsg is None else None
        resolution = float(abs(ds.transform.a)) if ds.crs is not None else None
    item = pystac.Item(
        id=labels.stem, geometry=geometry, bbox=bbox,
        datetime=when or dt.datetime.now(dt.timezone.utc),
        properties={"sssi:checkpoint": str(Path(checkpoint).resolve()),
                    "sssi:source": str(Path(source).resolve())})
    asset = pystac.Asset(href=f"./{labels.name}", media_type=pystac.MediaType.COG,
                         roles=["data"], title="class labels")
    item.add_asset("labels", asset)
    classes = [Classification.create(value=i, name=name, description=name,
                                     color_hint=f"{r:02X}{g:02X}{b:02X}")
               for i, (name, (r, g, b)) in enumerate(zip(class_names, colors, strict=True))]
    classes.append(Classification.create(value=nodata, name="no_data", nodata=True))
    ClassificationExtension.ext(asset, add_if_missing=True).classes = classes
    RasterExtension.ext(asset, add_if_missing=True).bands = [RasterBand.create(
        nodata=nodata, data_type=DataType.UINT8, spatial_resolution=resolution)]
    proj = ProjectionExtension.ext(item, add_if_missing=True)
    proj.epsg = epsg
    if wkt2 is not None:
        proj.wkt2 = wkt2
    proj.shape = shape
    if transform is not None:
        proj.transform = transform
    media = {".qml": "text/xml", ".tif": pystac.MediaType.COG}
    for key, path in (extra_assets or {}).items():
        roles = ["metadata"] if path.suffix == ".qml" else ["data"]
        href = os.path.relpath(Path(path).resolve(), labels.resolve().parent)
        item.add_asset(key, pystac.Asset(href=f"./{href}" if not href.startswith(".") else href,
                                         media_type=media.get(Path(path).suffix), roles=roles))
    return item


def write_item(item, path: str | Path) -> Path:
    """Write ``item`` to ``path`` (atomically), its asset hrefs relative to the file."""
    return atomic_write_text(path, json.dumps(item.to_dict(include_self_link=False),
                                              indent=1) + "\n")


def write_collection(folder: str | Path, description: str | None = None) -> Path:
    """(Re)write ``folder/collection.json`` over every STAC Item in ``folder``: their
    joint extent in space and time, a link to each, and the union of their classes."""
    import pystac

    folder = Path(folder)
    items = []
    for path in sorted(folder.glob("*.json")):
        if path.name == COLLECTION_FILE:
            continue
        try:
            data = json.loads(path.read_text())
        except (OSError, json.JSONDecodeError) as exc:
            raise DataError(f"{path}: not a readable JSON file ({exc})") from exc
        if data.get("type") == "Feature" and "stac_version" in data:
            items.append((path, pystac.Item.from_dict(data)))
    if not items:
        raise DataError(f"{folder}: no STAC Item (*.json) to collect")
    boxes = [item.bbox for _, item in items if item.bbox]
    spatial = [min(b[0] for b in boxes), min(b[1] for b in boxes), max(b[2] for b in boxes),
               max(b[3] for b in boxes)] if boxes else [-180.0, -90.0, 180.0, 90.0]
    times = sorted(item.datetime for _, item in items if item.datetime)
    collection = pystac.Collection(
        id=folder.resolve().name, license="other",
        description=description or f"Label maps predicted by sssi in {folder.resolve()}",
        extent=pystac.Extent(pystac.SpatialExtent([spatial]),
                             pystac.TemporalExtent([[times[0], times[-1]]])))
    classes: dict[int, dict[str, Any]] = {}
    for _, item in items:
        for asset in item.assets.values():
            for c in asset.extra_fields.get("classification:classes", []):
                classes.setdefault(c["value"], c)
    if classes:
        collection.summaries.add("classification:classes",
                                 [classes[v] for v in sorted(classes)])
    for path, _ in items:
        collection.add_link(pystac.Link(rel="item", target=f"./{path.name}",
                                        media_type=pystac.MediaType.GEOJSON))
    out = folder / COLLECTION_FILE
    return atomic_write_text(out, json.dumps(collection.to_dict(include_self_link=False),
                                             indent=1) + "\n")
