"""Convert a dataset once into tiled GeoTIFFs: ``python -m sssi.data.prepare SRC DST``.

ISPRS tiles are shipped as row-striped TIFFs: a random 256 px training window then
reads 256 whole rows of 6000 px. Tiled files (256 px blocks) read only the blocks a
window touches, 2-3x faster per window on the benchmark
(``experiments/benchmarks/data_pipeline.py``). This command writes every TIFF under
``SRC`` to the same relative path under ``DST`` as a tiled GeoTIFF (georeferencing,
band descriptions and colour tables kept; optionally compressed, always losslessly, so
label colours survive), copies every other file as it is, and never writes into ``SRC``.

With ``--layout NAME`` (``potsdam``, ``vaihingen``, ...) the labels of that layout are
also stored as what they mean: one band of class indices with the palette as its
colour table (palette mode; QGIS and GDAL show the same colours). A training window
then reads a third of the label bytes and decodes 256 table entries instead of every
pixel (``sssi.data.palettes.Palette.decode_paletted``). A label with off-palette colours
keeps its colours (tiled), so the readers can still report them.

Each file goes to a temporary name first and is renamed when complete; ``DST/
prepare_manifest.json`` records every finished file with its source's size and
modification time, so a second run (after an interruption, or after new tiles arrived)
converts only what is missing or changed. Point ``data.root`` at ``DST`` afterwards.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
from pathlib import Path
from typing import Any

import rasterio
import rasterio.shutil
from rasterio.errors import RasterioError
from rasterio.windows import Window

from sssi.data.layouts import build_layout
from sssi.data.palettes import IGNORE_INDEX, Palette
from sssi.data.raster import HandleCache, describe, open_raster, read_label_window
from sssi.errors import ConfigError, DataError, SssiError, first_line
from sssi.utils.io import atomic_write_text

MANIFEST = "prepare_manifest.json"
COMPRESSIONS = ("none", "deflate", "lzw", "zstd")
TIFF_SUFFIXES = {".tif", ".tiff"}


def _stamp(path: Path) -> dict[str, Any]:
    st = path.stat()
    return {"size": st.st_size, "mtime_ns": st.st_mtime_ns}


def _tiled_copy(src: Path, dst: Path, block: int, compress: str) -> None:
    options: dict[str, Any] = {"driver": "GTiff", "tiled": True, "blockxsize": block,
                               "blockysize": block, "BIGTIFF": "IF_SAFER"}
    if compress != "none":
        options["compress"] = compress
        options["predictor"] = 2  # horizontal differencing: smaller images, same values
    try:
        with rasterio.open(src) as ds:
            if ds.dtypes[0] not in ("uint8", "uint16", "int16", "uint32", "int32"):
                options.pop("predictor", None)  # integer predictor only
        rasterio.shutil.copy(src, dst, **options)
    except RasterioError as exc:
        raise DataError(f"{src}: not a readable GeoTIFF ({str(exc).splitlines()[0]})") from exc


def _index_label_copy(src: Path, dst: Path, palette: Palette, block: int, compress: str
                      ) -> int:
    """Write the label ``src`` as palette-mode class indices (tiled); returns 0, or the
    number of off-palette pixels found (then nothing is written)."""
    info = describe(src)
    profile: dict[str, Any] = {
        "driver": "GTiff", "width": info.width, "height": info.height, "count": 1,
        "dtype": "uint8", "tiled": True, "blockxsize": block, "blockysize": block,
        "photometric": "palette", "BIGTIFF": "IF_SAFER"}
    if compress != "none":
        profile["compress"] = compress
    colours = {i: (*c, 255) for i, c in enumerate(palette.colors)}
    if palette.ignore_colors:  # so that ignored pixels decode as ignored again
        colours[IGNORE_INDEX] = (*palette.ignore_colors[0], 255)
    handles = HandleCache()  # the source stays open for all its rows of blocks
    try:
        with open_raster(src) as ds:
            profile.update(crs=ds.crs, transform=ds.transform)
        with rasterio.open(dst, "w", **profile) as out:
            out.write_colormap(1, colours)
            for row in range(0, info.height, block):
                window = Window(0, row, info.width, min(block, info.height - row))
                decoded = palette.decode(read_label_window(src, window, handles))
                if decoded.n_off_palette:
                    return decoded.n_off_palette
                out.write(decoded.index, 1, window=window)
    except RasterioError as exc:
        raise DataError(f"{src}: not a readable label ({first_line(exc)})") from exc
    finally:
        handles.close()
    return 0


def _label_palettes(src: Path, layout: str | None) -> dict[Path, Palette]:
    """The label files of ``layout`` under ``src`` (labels and evaluation labels)."""
    if layout is None:
        return {}
    found = build_layout(layout, src)
    palette = found.palette
    labels: dict[Path, Palette] = {}
    for tile in found.find_tiles().values():
        for path in (tile.label, tile.eval_label):
            if path is not None:
                labels[Path(path).resolve()] = palette
    return labels


def prepare(src: str | Path, dst: str | Path, block: int = 256, compress: str = "none",
            log=print, layout: str | None = None) -> dict[str, Any]:
    """Mirror ``src`` into ``dst`` with every TIFF tiled (and, given the dataset's
    ``layout``, its labels as palette-mode class indices); returns the manifest."""
    src, dst = Path(src).expanduser().resolve(), Path(dst).expanduser().resolve()
    if compress not in COMPRESSIONS:
        raise ConfigError(f"--compress={compress!r}: expected one of {', '.join(COMPRESSIONS)} "
                          "(lossless only: labels must keep their exact colours)")
    if block < 16 or block % 16:
        raise ConfigError(f"--block={block}: expected a multiple of 16 (e.g. 256)")
    if not src.is_dir():
        raise DataError(f"{src}: no such folder")
    if dst == src or src in dst.parents or dst in src.parents:
        raise ConfigError(f"{dst}: the output must be a folder outside {src} (and not above it)")
    dst.mkdir(parents=True, exist_ok=True)
    manifest_path = dst / MANIFEST
    manifest = json.loads(manifest_path.read_text()) if manifest_path.is_file() else {}
    files = manifest.setdefault("files", {})
    manifest.update({"source": str(src), "block": block, "compress": compress,
                     "layout": layout})
    labels = _label_palettes(src, layout)
    todo = sorted(p for p in src.rglob("*") if p.is_file())
    converted = skipped = 0
    for path in todo:
        rel = path.relative_to(src).as_posix()
        out = dst / rel
        stamp = _stamp(path)
        tiff = path.suffix.lower() in TIFF_SUFFIXES
        palette = labels.get(path.resolve()) if tiff else None
        options: list[Any] = [block, compress] + (["index"] if palette is not None else [])
        entry = files.get(rel)
        if entry and entry.get("source") == stamp and out.is_file() and \
                entry.get("options") == options:
            skipped += 1
            continue
        out.parent.mkdir(parents=True, exist_ok=True)
        tmp = out.with_name(f".{out.name}.partial")
        # a label of the layout: class indices (off: its off-palette pixels, 0 when none)
        off = _index_label_copy(path, tmp, palette, block, compress) \
            if palette is not None else None
        if off:
            log(f"{rel}: {off} off-palette pixels, kept as colours")
        if off == 0:
            done = "indexed"
        elif tiff:
            _tiled_copy(path, tmp, block, compress)
            done = "tiled"
        else:
            shutil.copy2(path, tmp)
            done = "copied"
        tmp.replace(out)
        files[rel] = {"source": stamp, "options": options, "tiled": tiff, "written": done}
        atomic_write_text(manifest_path, json.dumps(manifest, indent=1, sort_keys=True))
        converted += 1
        log(f"{done} {rel}")
    log(f"{dst}: {converted} files written, {skipped} already done")
    return manifest


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(prog="python -m sssi.data.prepare",
                                 description=__doc__.splitlines()[0])
    ap.add_argument("src", help="the dataset as shipped (e.g. the Potsdam folder)")
    ap.add_argument("dst", help="where the tiled copy goes (same layout)")
    ap.add_argument("--block", type=int, default=256, help="block side in pixels")
    ap.add_argument("--compress", default="none", choices=COMPRESSIONS,
                    help="lossless compression of the tiled files (default: none)")
    ap.add_argument("--layout", default=None,
                    help="the dataset's layout (potsdam, vaihingen, ...): store its labels "
                         "as palette-mode class indices (faster to read and decode)")
    args = ap.parse_args(argv)
    try:
        prepare(args.src, args.dst, args.block, args.compress, layout=args.layout)
    except SssiError as exc:
        print(f"error: {exc}", file=sys.stderr)
        sys.exit(1)


if __name__ == "__main__":
    main()
