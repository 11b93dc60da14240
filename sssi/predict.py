"""Georeferenced label maps for any GeoTIFF: ``python -m sssi.predict ckpt=PATH input=IN.tif
output=OUT.tif``.

The input is read chunk by chunk (never whole), predicted with the sliding window of
:mod:`sssi.inference` and written as a single-band uint8 Cloud-Optimized GeoTIFF with
the input's size, CRS and geotransform, the palette as its colour table and 255 where
the input has no data. Optionally the class probabilities go to a second COG.

Every output is first written as a tiled GeoTIFF under a temporary name beside it,
translated to COG (GDAL's ``COG`` driver) under another temporary name, and only then
renamed over the output: a failed run never leaves a damaged file behind, and an
existing output stays as it was.
"""

from __future__ import annotations

import contextlib
import logging
import os
import time
import uuid
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import hydra
import numpy as np
import rasterio
import rasterio.shutil
import torch
from affine import Affine
from omegaconf import DictConfig, ListConfig
from rasterio._err import CPLE_BaseError  # GDAL's errors (no public name in rasterio)
from rasterio.enums import MaskFlags
from rasterio.errors import NotGeoreferencedWarning, RasterioError
from rasterio.windows import Window

from sssi.cli import CONFIG_DIR, flag, run_or_exit
from sssi.data.raster import HandleCache, check_readable, open_raster, read_window
from sssi.errors import ConfigError, DataError, first_line
from sssi.evaluate import require
from sssi.inference import (
    BLENDS,
    LoadedModel,
    fast_predictor,
    load_segmenter,
    predict_chunks,
    progress_bar,
    resolve_device,
    window_count,
)
from sssi.utils import io as files
from sssi.utils.background import Behind
from sssi.utils.io import remove_quietly, write_failure

log = logging.getLogger("sssi.predict")

NODATA = 255  # label value where the input has no data (the ignore index)
BLOCK = 512  # internal tile size of the outputs


#: the temporary tiled GTiff that chunks are written into, and its translation to a
#: Cloud-Optimized GeoTIFF; BIGTIFF=IF_SAFER: GDAL writes a BigTIFF whenever the file
#: could pass 4 GB uncompressed (a classic TIFF cannot address more)
GTIFF_OPTIONS = {"driver": "GTiff", "tiled": True, "blockxsize": BLOCK, "blockysize": BLOCK,
                 "compress": "deflate", "BIGTIFF": "IF_SAFER"}
COG_OPTIONS = {"compress": "DEFLATE", "blocksize": BLOCK, "BIGTIFF": "IF_SAFER"}


def remove_stale_temporaries(path: Path) -> list[Path]:
    """Remove the temporaries that a killed predict left beside ``path``
    (``.NAME.PID-TAG.tmp.tif``, ``.cog.tif``) when process PID is gone (a live one may
    be writing); each removal is logged. Returns what was removed."""
    return files.remove_stale_temporaries(path.parent, f".{path.name}.*-*.*.tif")


class CogWriter:
    """One output GeoTIFF: chunks go to a temporary tiled GTiff beside ``path``;
    :meth:`finish` translates it to a COG under a second temporary name; :meth:`commit`
    renames that over ``path``. :meth:`discard` removes whatever temporary is left."""

    def __init__(self, path: Path, profile: dict[str, Any]) -> None:
        self.path = path
        tag = f"{os.getpid()}-{uuid.uuid4().hex[:8]}"
        self.tmp = path.parent / f".{path.name}.{tag}.tmp.tif"
        self.cog = path.parent / f".{path.name}.{tag}.cog.tif"
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            remove_stale_temporaries(path)
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", NotGeoreferencedWarning)
                self.ds = rasterio.open(self.tmp, "w", **profile)
        except (OSError, RasterioError, CPLE_BaseError) as exc:
            self.discard()
            raise self._failure(exc, "cannot write here") from exc

    def _failure(self, exc: BaseException, doing: str) -> DataError:
        """One line for a write that failed (:func:`~sssi.utils.io.write_failure`); the
        temporaries are removed first, so the free space and an existing output are as
        they were."""
        self.discard()
        return write_failure(self.path, exc, doing)

    def write(self, array: np.ndarray, window: Window) -> None:
        try:
            self.ds.write(array, window=window)
        except (OSError, RasterioError, CPLE_BaseError) as exc:
            raise self._failure(exc, "writing failed") from exc

    def finish(self, **cog_options: Any) -> None:
        """Close the GTiff and translate it to a COG (overviews, compression)."""
        try:
            self.ds.close()
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", NotGeoreferencedWarning)
                rasterio.shutil.copy(self.tmp, self.cog, driver="COG", **cog_options)
        except (OSError, RasterioError, CPLE_BaseError) as exc:
            raise self._failure(exc, "writing the Cloud-Optimized GeoTIFF failed") from exc
        finally:
            remove_quietly(self.tmp)

    def commit(self) -> None:
        try:
            os.replace(self.cog, self.path)
        except OSError as exc:
            raise self._failure(exc, "renaming the finished file failed") from exc

    def discard(self) -> None:
        ds = getattr(self, "ds", None)
        if ds is not None and not ds.closed:
            ds.close()
        for p in (self.tmp, self.cog):
            remove_quietly(p)


def select_bands(path: Path, count: int, bands: Sequence[int] | None,
                 loaded: LoadedModel) -> list[int]:
    """1-based input bands fed to the model, in the checkpoint's band order."""
    names = ",".join(loaded.band_names)
    n = len(loaded.band_names)
    if bands is None:
        if count != n:
            raise ConfigError(f"{path}: has {count} bands but checkpoint {loaded.path} expects "
                              f"{n} ({names}); pick them with bands=[...] (1-based)")
        return list(range(1, n + 1))
    try:
        chosen = [int(b) for b in bands]
    except (TypeError, ValueError) as exc:
        raise ConfigError(f"bands={list(bands)}: expected 1-based band numbers") from exc
    bad = [b for b in chosen if not 1 <= b <= count]
    if bad:
        raise ConfigError(f"bands={chosen}: {path} has bands 1..{count} only")
    if len(chosen) != n:
        raise ConfigError(f"bands={chosen}: checkpoint {loaded.path} expects {n} bands "
                          f"({names})")
    return chosen


def predict_file(loaded: LoadedModel, input_path: str | Path, output_path: str | Path, *,
                 bands: Sequence[int] | None = None, probabilities: str | Path | None = None,
                 probabilities_dtype: str = "uint8", chunk: int = 2048, window: int = 512,
                 stride: int = 384, batch_size: int = 4, blend: str = "gaussian",
                 flip_tta: bool = False, device: Any = "cpu", progress: bool = False,
                 precision: str = "auto", channels_last: bool = True) -> Path:
    """Write the label COG of ``input_path`` (and optionally its probabilities);
    ``progress`` shows a bar over the windows on stderr; ``precision``: see
    :func:`~sssi.inference.resolve_precision`.

    Three threads share the work: one reads and normalises the next chunk, this one
    runs the network, one takes the argmax and writes the finished chunk."""
    src_path = Path(input_path).expanduser()
    out_path = Path(output_path).expanduser()
    prob_path = Path(probabilities).expanduser() if probabilities else None
    if blend not in BLENDS:
        raise ConfigError(f"blend={blend!r}: expected one of {list(BLENDS)}")
    if probabilities_dtype not in ("uint8", "float32"):
        raise ConfigError(f"probabilities_dtype={probabilities_dtype!r}: expected uint8 or "
                          "float32")
    for key, p in (("output", out_path), ("probabilities", prob_path)):
        if p is not None and p.suffix.lower() not in (".tif", ".tiff"):
            raise ConfigError(f"{key}={p}: predictions are written as GeoTIFF; give a name "
                              "ending in .tif or .tiff")
        if p is not None and p.exists() and src_path.exists() and p.samefile(src_path):
            raise ConfigError(f"{p}: output would overwrite the input")
    check_readable(src_path)  # missing, unreadable or truncated input: one clear line
    try:
        src = open_raster(src_path)
    except RasterioError as exc:
        raise DataError(f"{src_path}: not a readable raster ({first_line(exc)})") from exc
    with src, contextlib.ExitStack() as stack:
        indexes = select_bands(src_path, src.count, bands, loaded)
        masked = any(src.mask_flag_enums[i - 1] != [MaskFlags.all_valid] for i in indexes)
        handles = HandleCache()
        stack.callback(handles.close)
        # an input without georeferencing (plain JPEG/PNG) gives an output without it
        georef = {"crs": src.crs, "transform": src.transform} if _georeferenced(src) else {}
        base = {**GTIFF_OPTIONS, "width": src.width, "height": src.height, **georef}
        writers: list[CogWriter] = []
        stack.callback(lambda: [w.discard() for w in writers])
        labels = CogWriter(out_path, {**base, "count": 1, "dtype": "uint8", "nodata": NODATA})
        writers.append(labels)
        probs_out = None
        if prob_path is not None:
            probs_out = CogWriter(prob_path, {
                **base, "count": loaded.num_classes, "dtype": probabilities_dtype,
                "nodata": float("nan") if probabilities_dtype == "float32" else None})
            writers.append(probs_out)
        _describe(labels.ds, probs_out.ds if probs_out else None, loaded, src_path)

        def read(win: Window) -> np.ndarray:
            return read_window(src_path, win, indexes, handles).transpose(1, 2, 0)

        def write(win: Window, probs: torch.Tensor) -> None:
            # numpy (one thread) beside the network, not torch's parallel kernels
            pred = probs.numpy().argmax(0).astype(np.uint8)
            valid = _valid(src, src_path, indexes, win) if masked else None
            if valid is not None:
                pred[~valid] = NODATA
            labels.write(pred[None], win)
            if probs_out is not None:
                probs_out.write(_probability_bands(probs.numpy(), valid, probabilities_dtype),
                                win)

        dev = torch.device(device)
        model_fn, _ = fast_predictor(loaded, precision, channels_last, dev, src_path.name)
        t0 = time.perf_counter()
        size = (src.height, src.width)
        bar = stack.enter_context(progress_bar(window_count(size, chunk, window, stride),
                                               src_path.name, progress))
        chunks = stack.enter_context(contextlib.closing(predict_chunks(
            model_fn, read, size, loaded.num_classes,
            loaded.normalize, chunk=chunk, window=window, stride=stride,
            batch_size=batch_size, blend=blend, flip_tta=flip_tta, device=dev,
            progress=bar.update)))  # closed (its reading thread stopped) before the handles
        with Behind(write, depth=1) as behind:  # a finished chunk waits, one is written
            for win, probs in chunks:
                behind.submit(win, probs)
        log.debug("%s: predicted in %.1f s", src_path.name, time.perf_counter() - t0)
        for w in writers:
            resampling = "NEAREST" if w is labels else "AVERAGE"
            w.finish(**COG_OPTIONS, overview_resampling=resampling)
        for w in writers:
            w.commit()
    log.info("wrote %s (%dx%d, %d classes)", out_path, src.width, src.height,
             loaded.num_classes)
    return out_path


def _georeferenced(src) -> bool:
    return src.crs is not None or src.transform != Affine.identity() or bool(src.gcps[0])


def _describe(labels, probs, loaded: LoadedModel, src_path: Path) -> None:
    """Colour table, class names and provenance in the outputs' metadata."""
    colours = {i: (*c, 255) for i, c in enumerate(loaded.palette.colors)}
    colours[NODATA] = (0, 0, 0, 0)
    labels.write_colormap(1, colours)
    labels.set_band_description(1, "class")
    tags = {"classes": ",".join(loaded.class_names),
            "checkpoint": str(loaded.path.resolve()), "source": str(src_path.resolve())}
    labels.update_tags(**tags, nodata_value=str(NODATA))
    if probs is not None:
        for i, name in enumerate(loaded.class_names, start=1):
            probs.set_band_description(i, name)
        scale = "probability x 255" if probs.dtypes[0] == "uint8" else "probability"
        probs.update_tags(**tags, values=scale)


def _valid(src, path: Path, indexes: list[int], win: Window) -> np.ndarray:
    """(h, w) bool: pixels where at least one used band has data."""
    try:
        return src.read_masks(indexes, window=win).any(axis=0)
    except RasterioError as exc:
        raise DataError(f"{path}: failed to read the no-data mask ({first_line(exc)})") from exc


def _probability_bands(probs: np.ndarray, valid: np.ndarray | None, dtype: str) -> np.ndarray:
    """(K, h, w) probabilities as written: uint8 x 255 (all 0 = no data) or float32 (NaN)."""
    if dtype == "uint8":
        out = np.rint(probs * 255).astype(np.uint8)
        if valid is not None:
            out[:, ~valid] = 0
        return out
    out = probs.astype(np.float32, copy=True)
    if valid is not None:
        out[:, ~valid] = np.nan
    return out


def _bands(value: Any) -> list[int] | None:
    if value is None:
        return None
    if isinstance(value, (ListConfig, list, tuple)):
        return list(value)
    return [value]


def run(cfg: DictConfig) -> Path:
    """Predict ``cfg.input`` into ``cfg.output`` with ``cfg.ckpt``; then the legend and the
    STAC Item beside it (and the folder's Collection) as ``cfg`` says."""
    require(cfg, "ckpt", "input", "output")
    device = resolve_device(cfg.device)
    loaded = load_segmenter(cfg.ckpt, map_location=device)
    out = predict_file(
        loaded, cfg.input, cfg.output, bands=_bands(cfg.bands),
        probabilities=cfg.probabilities, probabilities_dtype=cfg.probabilities_dtype,
        chunk=int(cfg.chunk), window=int(cfg.window), stride=int(cfg.stride),
        batch_size=int(cfg.batch_size), blend=cfg.blend, flip_tta=flag(cfg, "flip_tta"),
        device=device, progress=flag(cfg, "progress", True),
        precision=cfg.get("precision", "auto"), channels_last=flag(cfg, "channels_last", True))
    describe_outputs(out, loaded, cfg)
    return out


def describe_outputs(out: Path, loaded: LoadedModel, cfg: DictConfig) -> None:
    """``OUT.qml`` (``legend``), ``OUT.json`` (``stac``: a STAC Item) and the output
    folder's ``collection.json`` (``stac_collection``), each written whole or not at all."""
    from sssi.legend import write_qml
    from sssi.stac import prediction_item, write_collection, write_item

    names, colors = loaded.class_names, loaded.palette.colors
    assets: dict[str, Path] = {}
    if cfg.get("legend", True):
        assets["style"] = write_qml(out, names, colors)
        log.info("wrote %s (QGIS legend)", assets["style"])
    if cfg.get("probabilities"):
        assets["probabilities"] = Path(cfg.probabilities).expanduser()
    if cfg.get("stac", True):
        item = prediction_item(out, names, colors, NODATA, source=cfg.input,
                               checkpoint=loaded.path, extra_assets=assets)
        log.info("wrote %s (STAC Item)", write_item(item, out.with_suffix(".json")))
        if cfg.get("stac_collection", False):
            log.info("wrote %s (STAC Collection)", write_collection(out.parent))


@hydra.main(version_base="1.3", config_path=CONFIG_DIR, config_name="predict")
def main(cfg: DictConfig) -> None:
    run_or_exit(run, cfg)


if __name__ == "__main__":
    main()
