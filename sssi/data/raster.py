"""Reading GeoTIFF windows through rasterio, with errors that name the file.

Aerial tiles are large (ISPRS Potsdam: 6000x6000 px), so nothing here reads a whole
tile per sample: datasets ask for windows, and each worker process keeps its own
open handles (GDAL handles must not cross a ``fork``).
"""

from __future__ import annotations

import contextlib
import logging
import os
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import rasterio
from rasterio.enums import ColorInterp
from rasterio.errors import NotGeoreferencedWarning, RasterioError
from rasterio.windows import Window

from sssi.errors import DataError, first_line

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class RasterInfo:
    """What a reader needs to know about a raster without reading its pixels."""

    path: Path
    width: int
    height: int
    count: int
    dtype: str
    paletted: bool = False  # one band of palette indexes with a colour table (PNG mode P)


def open_raster(path: str | Path):
    """``rasterio.open(path)`` without ``NotGeoreferencedWarning``: plain JPEG/PNG imagery
    (the Dubai dataset, converted crops) has no geotransform, which is expected and not
    worth a warning per file opened by every worker."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", NotGeoreferencedWarning)
        return rasterio.open(path)


def describe(path: str | Path) -> RasterInfo:
    """Open ``path`` and return its size and band count, or raise a clear :class:`DataError`."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"{path}: file not found")
    try:
        with open_raster(path) as ds:
            return RasterInfo(path, ds.width, ds.height, ds.count, ds.dtypes[0],
                              _is_paletted(ds))
    except RasterioError as exc:
        raise DataError(f"{path}: not a readable raster ({first_line(exc)})") from exc


def check_readable(path: str | Path) -> RasterInfo:
    """Like :func:`describe`, and also read the last row of blocks.

    A truncated GeoTIFF usually opens fine (its header is intact) and fails only when
    the missing tail is read; reading the bottom-right corner catches that at setup
    instead of hours into training.
    """
    info = describe(path)
    h = min(info.height, 16)
    w = min(info.width, 16)
    corner = Window(info.width - w, info.height - h, w, h)
    read_window(path, corner)
    return info


def read_window(path: str | Path, window: Window, bands: Sequence[int] | None = None,
                handles: dict | None = None, out: np.ndarray | None = None) -> np.ndarray:
    """Read ``window`` of ``bands`` (1-based; all when None) as a (C, h, w) array.

    ``handles`` is an optional per-process cache of open datasets, keyed by path;
    ``out`` an optional (C, h, w) array of the file's dtype to read into (a batch's
    memory), returned.
    """
    path = path if isinstance(path, Path) else Path(path)  # once per sample: keep it cheap
    try:
        ds = _open(path, handles)
        return ds.read(indexes=list(bands) if bands is not None else None, window=window,
                       out=out)
    except RasterioError as exc:
        if handles is not None:
            _drop(path, handles)
        raise DataError(
            f"{path}: failed to read window (col {window.col_off}, row {window.row_off}, "
            f"{window.width}x{window.height}): {first_line(exc)}; the file may be truncated "
            "or corrupt"
        ) from exc


def read_label_window(path: str | Path, window: Window, handles: dict | None = None
                      ) -> np.ndarray:
    """Read a label window as stored, except that palette-mode files (a band of indexes
    and a colour table, as some PNG masks are saved) come back as (3, h, w) RGB, so that
    colour palettes decode them like any RGB label, and an alpha band saved with colour
    labels (RGBA) is dropped."""
    path = path if isinstance(path, Path) else Path(path)
    raw = read_window(path, window, None, handles)
    if raw.shape[0] == 4:  # colour labels saved with an alpha band
        return raw[:3]
    if raw.shape[0] != 1:
        return raw
    table = colour_table(path, handles)  # a cached handle stays open
    if table is None:
        return raw
    return table[raw[0]].transpose(2, 0, 1)


def colour_table(path: str | Path, handles: dict | None = None) -> np.ndarray | None:
    """The (256, 3) colour table of a palette-mode raster, None for any other."""
    path = path if isinstance(path, Path) else Path(path)
    try:
        opened = open_raster(path) if handles is None else \
            contextlib.nullcontext(_open(path, handles))
        with opened as ds:
            return _colour_table(ds) if _is_paletted(ds) else None
    except RasterioError as exc:
        raise DataError(f"{path}: failed to read the colour table ({first_line(exc)})") from exc


def _is_paletted(ds) -> bool:
    return ds.count == 1 and ds.colorinterp[0] == ColorInterp.palette


def _colour_table(ds) -> np.ndarray:
    """(256, 3) uint8 RGB of a paletted band; indexes without an entry map to black."""
    table = np.zeros((256, 3), dtype=np.uint8)
    for index, rgba in ds.colormap(1).items():
        if 0 <= index < 256:
            table[index] = rgba[:3]
    return table


def read_decimated(path: str | Path, max_side: int = 512) -> np.ndarray:
    """Read a whole raster downsampled so its longest side is at most ``max_side``.

    GDAL uses overviews when present and otherwise nearest-neighbour decimation, so
    this is cheap even for 6000x6000 tiles: used for normalisation statistics.
    """
    path = Path(path)
    try:
        with open_raster(path) as ds:
            scale = max(ds.width, ds.height) / max_side
            if scale <= 1:
                return ds.read()
            shape = (ds.count, max(1, round(ds.height / scale)), max(1, round(ds.width / scale)))
            return ds.read(out_shape=shape)
    except RasterioError as exc:
        raise DataError(f"{path}: failed to read ({first_line(exc)})") from exc


class HandleCache(dict):
    """Open rasterio datasets of one process; rebuilt automatically after ``fork``."""

    def __init__(self) -> None:
        super().__init__()
        self.pid = os.getpid()

    def close(self) -> None:
        for ds in self.values():
            ds.close()
        self.clear()


def _open(path: Path, handles: dict | None):
    if handles is None:
        return _OneShot(path)
    if isinstance(handles, HandleCache) and handles.pid != os.getpid():
        handles.clear()  # inherited from the parent process: never reuse across fork
        handles.pid = os.getpid()
    ds = handles.get(path)
    if ds is None:
        if not path.is_file():
            raise DataError(f"{path}: file not found")
        ds = open_raster(path)
        handles[path] = ds
    return ds


def _drop(path: Path, handles: dict) -> None:
    ds = handles.pop(path, None)
    if ds is not None:
        ds.close()


class _OneShot:
    """Open, read once, close: for callers without a handle cache."""

    def __init__(self, path: Path) -> None:
        if not path.is_file():
            raise DataError(f"{path}: file not found")
        self.path = path

    def read(self, **kwargs) -> np.ndarray:
        with open_raster(self.path) as ds:
            return ds.read(**kwargs)
