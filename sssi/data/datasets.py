"""Patch datasets over large tiles: random windows for training, a grid for evaluation.

A sample is a dict: ``image`` (C x H x W in the files' dtype, raw values: ``uint8`` for
ISPRS), ``label`` (``uint8`` H x W, 255 = ignore; only when the dataset has labels),
``tile`` (tile id), ``window`` (int64 ``[row_off, col_off, height, width]`` in tile
pixels) and, for training windows, ``augment`` (the sample's augmentation parameters,
:mod:`sssi.data.augment`). Workers only read (and resize zoomed windows); the
datamodule augments and normalises whole batches on their device. Only the window is
read from disk, so a 6000x6000 tile never sits in memory whole.

A DataLoader asks for whole batches (``__getitems__``): the windows are read straight
into the shared block the worker hands over (:class:`~sssi.data.collate.BatchRoom`),
the same values as collating the samples one by one, without making, stacking and
collating a dict of tensors per window. Training labels can come from memory: the
datamodule decodes the labelled regions once (its label audit) and, within
``data.label_memory_mb``, a window's label is a slice of its region's.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist
from rasterio.windows import Window
from torch.utils.data import Dataset, DistributedSampler

from sssi.data.augment import Augment
from sssi.data.collate import BatchRoom, TensorSpec, WindowBatch, different_shapes
from sssi.data.draws import uniforms
from sssi.data.layouts import Tile
from sssi.data.palettes import DecodeResult, Palette
from sssi.data.raster import (
    HandleCache,
    colour_table,
    describe,
    read_label_window,
    read_window,
)
from sssi.errors import DataError
from sssi.utils.grid import grid_offsets

log = logging.getLogger(__name__)

#: uniforms a training window takes before its augmentation's: region, zoom, row, column
_WINDOW_DRAWS = 4


@dataclass(frozen=True)
class Region:
    """A rectangle of one tile that samples are drawn from (a whole tile or a crop)."""

    tile: int  # index into the dataset's tile list
    row: int
    col: int
    height: int
    width: int

    def as_dict(self, tiles: Sequence[Tile]) -> dict:
        return {"tile": tiles[self.tile].id, "row": self.row, "col": self.col,
                "height": self.height, "width": self.width}


def grid_regions(sizes: Sequence[tuple[int, int]], window: int, stride: int) -> list[Region]:
    """Every window of a regular grid over each tile (row-major, tile by tile)."""
    regions = []
    for t, (h, w) in enumerate(sizes):
        for r in grid_offsets(h, window, stride):
            for c in grid_offsets(w, window, stride):
                regions.append(Region(t, r, c, min(window, h), min(window, w)))
    return regions


class TileReader:
    """Reads stacked image bands and decoded labels of windows of a list of tiles.

    Holds one handle cache per process; picklable for DataLoader workers (handles are
    opened lazily in each worker).
    """

    def __init__(self, tiles: Sequence[Tile], palette: Palette, use_eval_labels: bool = False
                 ) -> None:
        self.tiles = list(tiles)
        self.palette = palette
        self.use_eval_labels = use_eval_labels
        self._handles = HandleCache()
        self._tables: dict[Path, np.ndarray | None] = {}  # colour tables of label files
        self._dtypes: dict[Path, np.dtype] = {}  # of image files
        self.off_palette = 0  # pixels seen in this process that matched no class

    def __getstate__(self) -> dict:
        state = dict(self.__dict__)
        state["_handles"] = HandleCache()
        return state

    def image(self, t: int, window: Window) -> np.ndarray:
        """(H, W, C) raw image bands of tile ``t`` (dtype of the files, uint8 for ISPRS)."""
        parts = [read_window(s.path, window, s.bands, self._handles)
                 for s in self.tiles[t].sources]
        if len(parts) == 1:
            return parts[0].transpose(1, 2, 0)
        dtype = np.result_type(*parts)
        return np.concatenate([p.astype(dtype, copy=False) for p in parts]).transpose(1, 2, 0)

    def image_into(self, t: int, window: Window, out: np.ndarray) -> None:
        """Read the image bands of tile ``t`` into ``out`` (C, h, w): straight from the
        file when the tile is one file of ``out``'s dtype, else through :meth:`image`."""
        sources = self.tiles[t].sources
        if len(sources) == 1 and out.dtype == self._dtype(sources[0].path):
            read_window(sources[0].path, window, sources[0].bands, self._handles, out=out)
        else:
            out[...] = self.image(t, window).transpose(2, 0, 1)

    def _dtype(self, path: Path) -> np.dtype:
        """The file's dtype, looked up once per file and process."""
        dtype = self._dtypes.get(path)
        if dtype is None:
            dtype = self._dtypes[path] = np.dtype(describe(path).dtype)
        return dtype

    def label(self, t: int, window: Window) -> np.ndarray:
        """(H, W) uint8 class indices, ignore index where the palette has no class."""
        return self.decode_label(t, window).index

    def decode_label(self, t: int, window: Window) -> DecodeResult:
        """The decoded label window with its ignored and off-palette pixel counts."""
        tile = self.tiles[t]
        path = tile.eval_label if self.use_eval_labels else tile.label
        if path is None:
            raise DataError(f"tile {tile.id}: no label file")
        table = self._tables.get(path, False)
        if table is False:  # once per file: a palette-mode label decodes by its entries
            table = self._tables[path] = colour_table(path, self._handles)
        if table is not None:
            decoded = self.palette.decode_paletted(
                read_window(path, window, None, self._handles)[0], table)
        else:
            decoded = self.palette.decode(read_label_window(path, window, self._handles))
        self.off_palette += decoded.n_off_palette
        return decoded

    def close(self) -> None:
        self._handles.close()


class _WindowDataset(Dataset):
    """Shared sample assembly: read (and resize), tensorise; no float work."""

    def __init__(self, reader: TileReader, with_labels: bool) -> None:
        self.reader = reader
        self.with_labels = with_labels

    def _sample(self, t: int, window: Window, out_size: int | None = None,
                label: np.ndarray | None = None) -> dict:
        """``label``: the window's decoded label when the caller already has it (a slice
        of labels kept in memory); otherwise it is read and decoded from the file."""
        image = self.reader.image(t, window)
        if label is None and self.with_labels:
            label = self.reader.label(t, window)
        h, w = image.shape[:2]
        if out_size is not None and (h, w) != (out_size, out_size):
            image, label = _resize(image, label, out_size)
        sample = {
            "image": torch.from_numpy(np.ascontiguousarray(image.transpose(2, 0, 1))),
            "tile": self.reader.tiles[t].id,
            "window": torch.from_numpy(np.array([window.row_off, window.col_off, h, w],
                                                dtype=np.int64)),
        }
        if label is not None:
            sample["label"] = torch.from_numpy(np.ascontiguousarray(label, dtype=np.uint8))
        return sample

    def _batch(self, items: Sequence[_Item], out_size: int | None) -> WindowBatch:
        """The samples of ``items`` as one batch (what :func:`collate_windows` makes of
        them), each window read straight into the batch's memory, the shared block a
        worker hands over: no per-sample arrays, tensors and dicts to make, stack and
        collate. Equal to collating the samples one by one (tests/data/test_datasets.py)."""
        t, window, label, params = items[0]
        first = self._sample(t, window, out_size, label)  # gives the shapes and dtypes
        if params is not None:
            first["augment"] = torch.from_numpy(params)
        n = len(items)
        room = BatchRoom([
            (key, [self.reader.tiles[item[0]].id for item in items]) if key == "tile"
            else (key, TensorSpec(value.dtype, (n, *value.shape)))
            for key, value in first.items()])
        views = {key: value.numpy() for key, value in room.batch.items()
                 if torch.is_tensor(value)}
        try:
            for key, view in views.items():
                view[0] = first[key].numpy()
            for i, (t, window, label, params) in enumerate(items[1:], 1):
                self._write(views, i, t, window, label, out_size)
                if params is not None:
                    views["augment"][i] = params
        except BaseException:
            room.abandon()
            raise
        return WindowBatch(room, n)

    def _write(self, views: dict[str, np.ndarray], i: int, t: int, window: Window,
               label: np.ndarray | None, out_size: int | None) -> None:
        """Sample ``i`` of a batch into its rows of ``views``."""
        h, w = int(window.height), int(window.width)
        if out_size is not None and (h, w) != (out_size, out_size):  # zoomed: resized
            sample = self._sample(t, window, out_size, label)
            for key in ("image", "label"):
                if key in views:
                    _put(views, key, i, sample[key].numpy())
        else:
            _check_shape(views, "image", (views["image"].shape[1], h, w))
            self.reader.image_into(t, window, views["image"][i])
            if "label" in views:
                _put(views, "label", i, label if label is not None else
                     self.reader.label(t, window))
        views["window"][i] = (window.row_off, window.col_off, h, w)


class RandomWindowDataset(_WindowDataset):
    """Random square windows drawn from ``regions`` (area-weighted).

    Sample ``index`` is a pure function of ``(seed, index)`` (counter-based uniforms,
    :mod:`sssi.data.draws`, drawn for a whole batch at once): the :class:`EpochSampler`
    hands out indices ``epoch * length + i``, so every epoch draws new windows, yet a
    run resumed from a checkpoint, or one with another number of workers, draws
    exactly the same ones. ``scale`` = (lo, hi) draws a zoom factor s per sample: a
    window of ``crop / s`` pixels is read and resized to ``crop`` (s > 1 zooms in).

    ``region_labels`` (optional, one decoded ``uint8`` label array per region, as the
    datamodule's label audit produces them) are sliced instead of reading and decoding
    the label file per sample: a window always lies inside the region it was drawn
    from, and a colour label's decoding costs a worker more than reading the window.
    """

    def __init__(self, reader: TileReader, regions: Sequence[Region], crop_size: int,
                 length: int, with_labels: bool = False, augment: Augment | None = None,
                 scale: tuple[float, float] | None = None, seed: int = 0,
                 region_labels: Sequence[np.ndarray] | None = None) -> None:
        super().__init__(reader, with_labels)
        self.augment = augment
        if not regions:
            raise DataError("no regions to sample training windows from")
        self.regions = list(regions)
        if region_labels is not None:
            region_labels = list(region_labels)
            shapes = [(r.height, r.width) for r in self.regions]
            if [lab.shape for lab in region_labels] != shapes:
                raise ValueError("region_labels must hold one (height, width) array per region")
        self.region_labels = region_labels
        self.crop_size = int(crop_size)
        self.length = int(length)
        self.scale = tuple(scale) if scale else None
        self.seed = int(seed)
        areas = np.array([r.height * r.width for r in self.regions], dtype=np.float64)
        self.cumulative = np.cumsum(areas / areas.sum())

    def __len__(self) -> int:
        return self.length

    def window(self, index: int) -> tuple[int, Window]:
        """The tile and window of sample ``index``."""
        k, window, _ = self._draws([index])[0]
        return self.regions[k].tile, window

    def _draws(self, indices: Sequence[int]) -> list[tuple[int, Window, np.ndarray | None]]:
        """Region (its index), window and augmentation parameters of each sample of
        ``indices``, from the samples' counter-based uniforms (:mod:`sssi.data.draws`):
        region, zoom, row, column, then the augmentation's."""
        n_aug = Augment.DRAWS if self.augment is not None else 0
        u = uniforms(self.seed, indices, _WINDOW_DRAWS + n_aug)
        picks = np.searchsorted(self.cumulative, u[:, 0], side="right")
        picks = np.minimum(picks, len(self.regions) - 1).tolist()
        sizes = [self.crop_size] * len(picks)
        if self.scale is not None:
            lo, hi = math.log(self.scale[0]), math.log(self.scale[1])
            zoom = np.exp(lo + (hi - lo) * u[:, 1])
            sizes = np.maximum(8, np.round(self.crop_size / zoom)).astype(int).tolist()
        params = self.augment.draw(u[:, _WINDOW_DRAWS:]) if n_aug else None
        rows, cols = u[:, 2].tolist(), u[:, 3].tolist()
        out = []
        for i, (k, size) in enumerate(zip(picks, sizes, strict=True)):
            region = self.regions[k]
            h, w = min(size, region.height), min(size, region.width)
            window = Window(region.col + int(cols[i] * (region.width - w + 1)),
                            region.row + int(rows[i] * (region.height - h + 1)), w, h)
            out.append((k, window, None if params is None else params[i]))
        return out

    def _kept_label(self, k: int, window: Window) -> np.ndarray | None:
        """The window's label sliced from region ``k``'s kept label, if labels are kept."""
        if self.region_labels is None or not self.with_labels:
            return None
        region = self.regions[k]
        row, col = window.row_off - region.row, window.col_off - region.col
        return self.region_labels[k][row:row + window.height, col:col + window.width]

    def __getitems__(self, indices: Sequence[int]) -> WindowBatch:
        """A whole batch (the DataLoader's fetcher calls this with a batch's indices):
        the same windows, parameters and values as ``__getitem__`` per index."""
        items = [(self.regions[k].tile, window, self._kept_label(k, window), params)
                 for k, window, params in self._draws(indices)]
        return self._batch(items, self.crop_size)

    def __getitem__(self, index: int) -> dict:
        k, window, params = self._draws([index])[0]
        sample = self._sample(self.regions[k].tile, window, out_size=self.crop_size,
                              label=self._kept_label(k, window))
        if params is not None:  # drawn here, applied per batch on the device
            sample["augment"] = torch.from_numpy(params)
        return sample


class EpochSampler(DistributedSampler):
    """Indices ``epoch * length + i`` for :class:`RandomWindowDataset`, split over ranks.

    Each rank takes every ``world``-th index, so DDP ranks draw different windows.
    Lightning calls :meth:`set_epoch` on it every epoch and, as it is a
    ``DistributedSampler``, does not wrap it in another one.
    """

    def __init__(self, dataset: Dataset, num_replicas: int | None = None,
                 rank: int | None = None) -> None:
        if num_replicas is None or rank is None:
            if dist.is_available() and dist.is_initialized():
                num_replicas, rank = dist.get_world_size(), dist.get_rank()
            else:
                num_replicas, rank = 1, 0
        super().__init__(dataset, num_replicas=num_replicas, rank=rank, shuffle=False)
        self.length = len(dataset)  # type: ignore[arg-type]
        self.per_rank = math.ceil(self.length / num_replicas)
        self._skip = 0

    def skip_once(self, n: int) -> None:
        """Leave out this rank's first ``n`` indices in the next pass only (a fit resumed
        inside an epoch continues where it stopped)."""
        self._skip = int(n)

    def __iter__(self):
        base, skip = self.epoch * self.length, self._skip
        self._skip = 0
        for k in range(skip, self.per_rank):
            yield base + (self.rank + k * self.num_replicas) % self.length

    def __len__(self) -> int:
        return self.per_rank


class GridWindowDataset(_WindowDataset):
    """Fixed windows (e.g. a grid from :func:`grid_regions`), in order, no randomness."""

    def __init__(self, reader: TileReader, regions: Sequence[Region], with_labels: bool = True,
                 out_size: int | None = None) -> None:
        super().__init__(reader, with_labels)
        self.regions = list(regions)
        self.out_size = out_size

    def __len__(self) -> int:
        return len(self.regions)

    def __getitem__(self, index: int) -> dict:
        r = self.regions[index]
        return self._sample(r.tile, Window(r.col, r.row, r.width, r.height), self.out_size)

    def __getitems__(self, indices: Sequence[int]) -> WindowBatch:
        """A whole batch, read straight into its memory (see ``_batch``)."""
        regions = [self.regions[i] for i in indices]
        return self._batch([(r.tile, Window(r.col, r.row, r.width, r.height), None, None)
                            for r in regions], self.out_size)


#: a batch item: tile index, window, its kept label (None: read it), its augmentation
#: parameters (None: no augmentation)
_Item = tuple[int, Window, "np.ndarray | None", "np.ndarray | None"]


def _check_shape(views: dict[str, np.ndarray], key: str, shape: tuple) -> None:
    if tuple(views[key].shape[1:]) != tuple(shape):
        raise ValueError(different_shapes(key, {tuple(views[key].shape[1:]), tuple(shape)}))


def _put(views: dict[str, np.ndarray], key: str, i: int, value: np.ndarray) -> None:
    _check_shape(views, key, value.shape)
    views[key][i] = value


def _resize(image: np.ndarray, label: np.ndarray | None, size: int
            ) -> tuple[np.ndarray, np.ndarray | None]:
    """Resize to ``size`` x ``size``: area/linear for images, nearest for labels."""
    import cv2

    interp = cv2.INTER_AREA if image.shape[0] > size else cv2.INTER_LINEAR
    # OpenCV resizes at most 4 channels at once (RGBIR + nDSM has 5): in groups of 4
    parts = [cv2.resize(image[:, :, c:c + 4], (size, size), interpolation=interp)
             for c in range(0, image.shape[2], 4)]
    parts = [p[:, :, None] if p.ndim == 2 else p for p in parts]
    out = parts[0] if len(parts) == 1 else np.concatenate(parts, axis=2)
    if label is not None:
        label = cv2.resize(label, (size, size), interpolation=cv2.INTER_NEAREST)
    return out, label
