"""Convert a dataset once into tiled GeoTIFFs: ``python -m sssi.data.prepare SRC DST``.

ISPRS tiles are shipped as row-striped TIFFs: a random 256 px training window then
reads 256 whole rows of 6000 px. Tiled files (256 px blocks) read only the blocks a
window touches, 2-3x faster per window on the benchmark
(``experiments/benchmarks/data_pipeline.py``). This command writes every TIFF under
``SRC`` to the same relative path under ``DST`` as a tiled GeoTIFF (georeferencing,
band descriptions and colour tables kept; optionally compressed, always losslessly, so
label colours survive), copies every other file as it is, and never writes into ``SRC``.

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

from sssi.errors import ConfigError, DataError, SssiError
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


def prepare(src: str | Path, dst: str | Path, block: int = 256, compress: str = "none",
            log=print) -> dict[str, Any]:
    """Mirror ``src`` into ``dst`` with every TIFF tiled; returns the manifest."""
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
    manifest.update({"source": str(src), "block": block, "compress": compress})
    todo = sorted(p for p in src.rglob("*") if p.is_file())
    converted = skipped = 0
    for path in todo:
        rel = path.relative_to(src).as_posix()
        out = dst / rel
        stamp = _stamp(path)
        entry = files.get(rel)
        if entry and entry.get("source") == stamp and out.is_file() and \
                entry.get("options") == [block, compress]:
            skipped += 1
            continue
        out.parent.mkdir(parents=True, exist_ok=True)
        tmp = out.with_name(f".{out.name}.partial")
        tiff = path.suffix.lower() in TIFF_SUFFIXES
        if tiff:
            _tiled_copy(path, tmp, block, compress)
        else:
            shutil.copy2(path, tmp)
        tmp.replace(out)
        files[rel] = {"source": stamp, "options": [block, compress], "tiled": tiff}
        atomic_write_text(manifest_path, json.dumps(manifest, indent=1, sort_keys=True))
        converted += 1
        log(f"{'tiled' if tiff else 'copied'} {rel}")
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
    args = ap.parse_args(argv)
    try:
        prepare(args.src, args.dst, args.block, args.compress)
    except SssiError as exc:
        print(f"error: {exc}", file=sys.stderr)
        sys.exit(1)


if __name__ == "__main__":
    main()
