"""Writing the synthetic dataset: GeoTIFFs in the Potsdam layout, README and marker.

``generate`` renders and writes every tile where ISPRS ships Potsdam (file names come
from ``PotsdamLayout.paths``); ``ensure_synthetic`` installs a dataset once, safely
when many processes ask for it at the same time.
"""

from __future__ import annotations

import contextlib
import json
import logging
import math
import os
import shutil
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np

from sssi.data.isprs import POTSDAM_TEST_TILES, POTSDAM_TRAIN_TILES, PotsdamLayout
from sssi.data.synthetic.canvas import PX_PER_M
from sssi.data.synthetic.city import BOUNDARY_RADIUS, NDSM_SCALE_M, render_tile
from sssi.errors import ConfigError, DataError

log = logging.getLogger(__name__)

#: Written last in the dataset root; holds the generation parameters.
MARKER = "SYNTHETIC.json"
#: Bump when the generator's output changes, so cached datasets are regenerated.
FORMAT_VERSION = 1

CRS = "EPSG:32633"  # UTM zone 33N, where Potsdam lies
GSD_M = 0.05  # nominal pixel size written to the geotransform, as for real Potsdam
ORIGIN_X, ORIGIN_Y = 366_000.0, 5_808_000.0
TILE_STRIDE_M = 300.0  # real Potsdam tiles are 6000 px x 5 cm = 300 m apart
BLOCK = 256  # GeoTIFF tile size


def tile_ids(n: int) -> list[str]:
    """Ids of ``n`` synthetic tiles: about 2/3 Potsdam training ids, the rest test ids.

    Real Potsdam ids are used so the standard train/test split applies unchanged; with
    n >= 2 at least one tile is a test tile.
    """
    n_max = len(POTSDAM_TRAIN_TILES) + len(POTSDAM_TEST_TILES)
    if not 1 <= n <= n_max:
        raise ConfigError(f"tiles={n}: expected 1..{n_max} (the Potsdam tile ids)")
    n_test = max(1, n - math.ceil(2 * n / 3)) if n >= 2 else 0
    n_train = min(n - n_test, len(POTSDAM_TRAIN_TILES))
    n_test = n - n_train
    return [*POTSDAM_TRAIN_TILES[:n_train], *POTSDAM_TEST_TILES[:n_test]]


# --------------------------------------------------------------------------------------
# Writing
# --------------------------------------------------------------------------------------

def _write_tif(path: Path, bands: np.ndarray, transform: object, names: tuple[str, ...],
               **extra: object) -> None:
    """Write (H, W, C) or (H, W) uint8 as an uncompressed, 256 px tiled GeoTIFF."""
    import rasterio

    arr = bands[None] if bands.ndim == 2 else np.moveaxis(bands, -1, 0)
    count, h, w = arr.shape
    profile: dict[str, object] = {
        "driver": "GTiff", "width": w, "height": h, "count": count, "dtype": "uint8",
        "crs": CRS, "transform": transform,
    }
    if h >= BLOCK and w >= BLOCK:
        profile.update(tiled=True, blockxsize=BLOCK, blockysize=BLOCK)
    if count == 3 and names[0] == "R":
        profile["photometric"] = "RGB"
    path.parent.mkdir(parents=True, exist_ok=True)
    with rasterio.open(path, "w", **profile) as dst:
        dst.write(np.ascontiguousarray(arr))
        dst.descriptions = names
        for key, value in extra.items():
            setattr(dst, key, value)


def _write_tile(root: Path, tid: str, rasters: dict[str, np.ndarray], size: int) -> None:
    from rasterio.transform import Affine

    r, c = (int(p) for p in tid.split("_"))
    stride = max(TILE_STRIDE_M, size * GSD_M)
    x0 = ORIGIN_X + (c - 10) * stride
    y0 = ORIGIN_Y - (r - 2) * stride
    transform = Affine(GSD_M, 0.0, x0, 0.0, -GSD_M, y0)
    paths = PotsdamLayout(root).paths(tid)
    rgbir = rasters["RGBIR"]
    _write_tif(paths["RGB"], rgbir[..., :3], transform, ("R", "G", "B"))
    _write_tif(paths["IRRG"], rgbir[..., [3, 0, 1]], transform, ("IR", "R", "G"))
    _write_tif(paths["RGBIR"], rgbir, transform, ("R", "G", "B", "IR"))
    _write_tif(paths["nDSM"], rasters["ndsm"], transform, ("nDSM",),
               scales=(NDSM_SCALE_M,), units=("metre",))
    _write_tif(paths["label"], rasters["label"], transform, ("R", "G", "B"))
    _write_tif(paths["label_noBoundary"], rasters["label_nb"], transform, ("R", "G", "B"))


def _params(tiles: int, size: int, seed: int, off_palette: float) -> dict[str, object]:
    return {"generator": "sssi.data.synthetic", "format_version": FORMAT_VERSION,
            "tiles": int(tiles), "size": int(size), "seed": int(seed),
            "off_palette": float(off_palette)}


_README = """\
SYNTHETIC DATA - not ISPRS Potsdam.

Procedural aerial scenes written by sssi.data.synthetic in the ISPRS Potsdam layout so
that the Potsdam readers work on them unchanged. Generated with:

    python -m sssi.data.synthetic --out DIR --tiles {tiles} --size {size} --seed {seed}{extra}

Tiles ({tiles}, {size}x{size} px): train {train}; test {test}.
Products per tile: 2_Ortho_RGB (R,G,B), 3_Ortho_IRRG (IR,R,G), 4_Ortho_RGBIR (R,G,B,IR),
1_DSM_normalisation (nDSM, 1 grey level = {scale} m above ground), 5_Labels_all (ISPRS
colour code), 5_Labels_all_noBoundary (class boundaries eroded to black, radius {rad} px).
GeoTIFFs: uint8, uncompressed, {block} px tiles, {crs}, nominal {gsd} m pixels. Objects are
drawn at about {ppm:g} px per metre so that a small tile holds a whole street grid.
Deterministic: the same parameters give the same bytes. SYNTHETIC.json holds the
parameters and is written last.
"""


def generate(out: str | Path, tiles: int = 6, size: int = 1024, seed: int = 0,
             off_palette: float = 0.0, *, log_fn: Callable[[str], None] | None = None) -> Path:
    """Write a synthetic Potsdam dataset to ``out`` and return its root.

    ``off_palette`` is the fraction of label pixels recoloured to near-palette colours
    (to exercise the readers' reporting); 0 gives clean labels. ``log_fn`` receives one
    line per tile written.
    """
    root = Path(out).expanduser()
    size = int(size) if isinstance(size, np.integer) else size
    if isinstance(size, bool) or not isinstance(size, (int, np.integer)) or size < 32:
        raise ConfigError(f"size={size!r}: expected an integer of at least 32 px")
    if not 0.0 <= off_palette < 1.0:
        raise ConfigError(f"off_palette={off_palette!r}: expected a fraction in [0, 1)")
    ids = tile_ids(tiles)
    if root.exists() and not root.is_dir():
        raise DataError(f"{root}: exists and is not a folder")
    root.mkdir(parents=True, exist_ok=True)
    (root / MARKER).unlink(missing_ok=True)  # stale until the new data is complete
    ds_rng = np.random.default_rng([seed, 0])
    sun_az = math.radians(ds_rng.uniform(120, 240))  # one flight: one sun for all tiles
    sun_el = math.radians(ds_rng.uniform(50, 62))
    n_train = sum(t in POTSDAM_TRAIN_TILES for t in ids)
    for tid in ids:
        rasters = render_tile(tid, size, seed, sun_az, sun_el, off_palette)
        _write_tile(root, tid, rasters, size)
        if log_fn is not None:
            split = "train" if tid in POTSDAM_TRAIN_TILES else "test"
            log_fn(f"wrote tile {tid} ({split}, {size}x{size} px): "
                   f"{PotsdamLayout(root).paths(tid)['RGB'].name} and 5 siblings")
    extra = f" --off-palette {off_palette:g}" if off_palette else ""
    (root / "README.txt").write_text(_README.format(
        tiles=tiles, size=size, seed=seed, extra=extra, train=", ".join(ids[:n_train]),
        test=", ".join(ids[n_train:]) or "none", scale=NDSM_SCALE_M, rad=BOUNDARY_RADIUS,
        block=BLOCK, crs=CRS, gsd=GSD_M, ppm=PX_PER_M))
    marker = {**_params(tiles, size, seed, off_palette), "tile_ids": ids,
              "train_tiles": ids[:n_train], "test_tiles": ids[n_train:], "crs": CRS,
              "gsd_m": GSD_M, "ndsm_scale_m": NDSM_SCALE_M}
    tmp = root / f".{MARKER}.tmp"
    tmp.write_text(json.dumps(marker, indent=2) + "\n")
    os.replace(tmp, root / MARKER)
    return root


def _marker_matches(root: Path, want: dict[str, object]) -> bool:
    try:
        have = json.loads((root / MARKER).read_text())
    except (OSError, ValueError):
        return False
    return isinstance(have, dict) and all(have.get(k) == v for k, v in want.items())


def _refuse_other_parameters(root: Path, want: dict[str, object]) -> None:
    """One line: which parameters of the dataset at ``root`` differ from ``want``, the
    overrides that use it as it is, and the one that replaces it."""
    try:
        have = json.loads((root / MARKER).read_text())
    except (OSError, ValueError):
        have = {}
    keys = [k for k in ("tiles", "size", "seed") if have.get(k) != want[k]]
    if have.get("format_version") != want["format_version"] or \
            not all(isinstance(have.get(k), int) for k in ("tiles", "size", "seed")):
        raise DataError(f"{root}: {MARKER} is from another sssi version or damaged; replace "
                        "the dataset with data.synthetic.regenerate=true")
    if not keys:  # made by hand with --off-palette: no config key reproduces it
        raise DataError(f"{root}: holds synthetic data with off-palette labels "
                        f"(off_palette={have.get('off_palette')}); use another data.root, "
                        "or replace it with data.synthetic.regenerate=true")

    def describe(p: dict) -> str:
        return f"{p['tiles']} tiles of {p['size']} px, seed {p['seed']}"

    reuse = " ".join(f"data.synthetic.{k}={have[k]}" for k in keys)
    raise DataError(f"{root}: holds the synthetic dataset of {describe(have)}, not the "
                    f"{describe(want)} this run asks for; use it as it is with {reuse}, or "
                    "replace it with data.synthetic.regenerate=true")


@contextlib.contextmanager
def _install_lock(root: Path) -> Iterator[None]:
    """Serialise the short check-and-rename step between processes (POSIX only)."""
    try:
        import fcntl
    except ImportError:  # pragma: no cover - Windows: rely on rename atomicity alone
        yield
        return
    lock = root.parent / f".{root.name}.lock"
    with open(lock, "a") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


def ensure_synthetic(root: str | Path, tiles: int = 6, size: int = 1024, seed: int = 0,
                     regenerate: bool = False) -> Path:
    """Make sure ``root`` holds the synthetic dataset with these parameters.

    Generates when ``root/SYNTHETIC.json`` is missing. Where it holds other parameters,
    a :class:`DataError` says which differ and how to use the dataset as it is, unless
    ``regenerate`` (``data.synthetic.regenerate=true``) asks to replace it. Safe when many
    processes call it at once (multirun jobs, DDP ranks): each generates into its own
    hidden sibling folder and renames it into place; whoever loses the race discards
    its copy. ``root`` never holds a half-written dataset. A non-empty ``root`` without
    a marker is not ours and is never overwritten.
    """
    root = Path(root).expanduser().absolute()
    want = _params(tiles, size, seed, 0.0)
    if _marker_matches(root, want):
        return root
    if not isinstance(regenerate, bool):
        raise ConfigError(f"data.synthetic.regenerate={regenerate!r}: expected true or false")
    if (root / MARKER).is_file() and not regenerate:
        _refuse_other_parameters(root, want)
    if root.exists() and not root.is_dir():
        raise DataError(f"{root}: exists and is not a folder (wanted the synthetic dataset)")
    if root.is_dir() and any(root.iterdir()) and not (root / MARKER).exists():
        raise DataError(f"{root}: folder is not empty and has no {MARKER}; refusing to "
                        f"replace it with synthetic data (choose another data.root)")
    root.parent.mkdir(parents=True, exist_ok=True)
    tag = f"{os.getpid()}-{uuid.uuid4().hex[:8]}"
    tmp = root.parent / f".{root.name}.tmp-{tag}"
    old = root.parent / f".{root.name}.old-{tag}"
    log.info("generating synthetic dataset (%d tiles of %d px, seed %d) at %s",
             tiles, size, seed, root)
    try:
        generate(tmp, tiles=tiles, size=size, seed=seed)
        with _install_lock(root):
            if _marker_matches(root, want):
                return root  # another process won the race: use theirs
            if root.exists():  # different parameters (checked above): move aside
                if any(root.iterdir()) and not (root / MARKER).exists():
                    raise DataError(f"{root}: folder is not empty and has no {MARKER}")
                os.replace(root, old)
            os.replace(tmp, root)
    finally:
        for leftover in (tmp, old):
            if leftover.exists():
                shutil.rmtree(leftover, ignore_errors=True)
    return root

