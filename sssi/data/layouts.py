"""Dataset layouts: which files make up each tile, resolved and checked before reading.

A *layout* turns a dataset root into :class:`Tile` records (image band sources,
labels, evaluation labels) and knows the dataset's standard split and palette. Readers
and datasets only ever see tiles, so a new on-disk layout is one registered class.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

from sssi.data.palettes import ISPRS, Palette, get_palette
from sssi.data.raster import RasterInfo, check_readable
from sssi.errors import ConfigError, DataError
from sssi.utils.registry import register_into

LAYOUTS: dict[str, type[Layout]] = {}


def register_layout(name: str) -> Callable[[type[Layout]], type[Layout]]:
    """Class decorator: make a layout buildable by name from config (``data.dataset``),
    as :func:`sssi.models.register` does for backbones. A name is registered once."""
    return register_into(LAYOUTS, "layout", name)


def list_layouts() -> list[str]:
    """Names that :func:`build_layout` accepts, sorted (importing :mod:`sssi.data`
    registers the built-in ones)."""
    return sorted(LAYOUTS)


def build_layout(dataset: str, root: str | Path, **options) -> Layout:
    """Build the layout registered as ``dataset`` over ``root``."""
    if dataset not in LAYOUTS:
        raise ConfigError(f"data.dataset={dataset!r}: unknown dataset; known: {list_layouts()}")
    return LAYOUTS[dataset](root, **options)


@dataclass(frozen=True)
class BandSource:
    """Some bands (1-based indexes) of one raster file."""

    path: Path
    bands: tuple[int, ...]
    names: tuple[str, ...]


@dataclass(frozen=True)
class Tile:
    """One scene: its image bands, stacked in order, and its labels when it has them.

    ``label`` is the full colour-coded label used for training; ``eval_label`` the one
    to score against (the eroded ``noBoundary`` label where the dataset has it).
    """

    id: str
    sources: tuple[BandSource, ...]
    label: Path | None = None
    eval_label: Path | None = None

    @property
    def band_names(self) -> tuple[str, ...]:
        return tuple(n for s in self.sources for n in s.names)

    @property
    def num_bands(self) -> int:
        return len(self.band_names)

    @property
    def image_path(self) -> Path:
        """The main image file: the one predictions are georeferenced from."""
        return self.sources[0].path


class Layout:
    """Base class of on-disk dataset layouts: lists tiles of a split and validates them.

    Subclasses implement :meth:`find_tiles`. Everything is resolved to file paths up
    front so that a missing file is reported at set-up with its name, not by a worker.
    """

    name = "layout"
    palette: Palette = ISPRS
    val_tiles: tuple[str, ...] = ()  # held out of the training tiles for model selection
    test_tiles: tuple[str, ...] = ()
    label_bands = 3

    def __init__(self, root: str | Path) -> None:
        self.root = Path(root).expanduser()

    # to implement ---------------------------------------------------------------------
    def find_tiles(self) -> dict[str, Tile]:
        raise NotImplementedError

    @property
    def band_names(self) -> tuple[str, ...]:
        raise NotImplementedError

    # shared ---------------------------------------------------------------------------
    @property
    def num_bands(self) -> int:
        return len(self.band_names)

    def _require_dir(self, sub: str, what: str) -> Path:
        if not self.root.is_dir():
            raise DataError(f"{self.root}: dataset root not found (expected the {self.name} "
                            f"folder holding {sub}/)")
        folder = self.root / sub
        if not folder.is_dir():
            raise DataError(f"{folder}: folder not found (expected {what})")
        return folder

    def expand(self, key: str, found: dict[str, Tile]) -> list[str] | None:
        """Tile ids that one entry of a split list stands for, beyond a plain tile id
        (a layout whose scenes come in groups, such as Dubai's numbered tiles of images,
        maps a group name to its images here); None when ``key`` is no such name."""
        return None

    def tiles(self, split: str | Sequence[str] = "all", labels: bool = False) -> list[Tile]:
        """Tiles of ``split`` ('train', 'val', 'test', 'all' or a list of ids and of those
        names), sorted by id.

        The standard split lists name all tiles of the full dataset; a copy that holds
        only some of them (a subset, or the synthetic stand-in) uses those it has, and
        an empty selection is an error. With ``labels=True`` every selected tile must
        have a label file. Tiles outside the validation and test lists belong to 'train'
        (extra unlabelled imagery is pretext data); 'val' is held out of the training
        tiles, so model selection never sees a test tile.
        """
        found = self.find_tiles()
        if isinstance(split, str):
            if split == "all":
                ids = sorted(found)
            elif split == "train":
                ids = sorted(t for t in found
                             if t not in self.test_tiles and t not in self.val_tiles)
            elif split == "val":
                ids = sorted(t for t in found if t in self.val_tiles)
            elif split == "test":
                ids = sorted(t for t in found if t in self.test_tiles)
            else:
                raise ConfigError(f"data split {split!r}: expected 'train', 'val', 'test', "
                                  "'all' or a list of tile ids")
        else:
            ids, missing = [], []
            for key in (str(k) for k in split):
                # a list may join named splits (the pretext pool: [train, val]) and ids
                group = [t.id for t in self.tiles(key)] if key in _SPLIT_NAMES else \
                    self.expand(key, found)
                if group is None and key not in found:
                    missing.append(key)
                for t in group if group is not None else [key]:
                    if t not in ids:
                        ids.append(t)
            if missing:
                raise DataError(f"{self.root}: tiles {missing} not found "
                                f"(found {sorted(found)[:10]}{'...' if len(found) > 10 else ''})"
                                + _quoting_hint(missing, found))
        if not ids:
            raise DataError(f"{self.root}: no {self.name} tiles for split {split!r} "
                            f"(found {len(found)} tiles in all)")
        tiles = [found[t] for t in ids]
        if labels:
            unlabelled = [t.id for t in tiles if t.label is None]
            if unlabelled:
                raise DataError(f"{self.root}: no label file for tiles {unlabelled} "
                                f"(split {split!r} needs labels)")
        return tiles

    def validate(self, tiles: Sequence[Tile]) -> dict[str, tuple[int, int]]:
        """Check every file of ``tiles``: readable to its end, band counts, equal sizes.

        Returns ``{tile_id: (height, width)}``.
        """
        sizes: dict[str, tuple[int, int]] = {}
        for tile in tiles:
            ref = None
            for src in tile.sources:
                info = check_readable(src.path)
                if info.count < max(src.bands):
                    raise DataError(
                        f"{src.path}: has {info.count} bands, expected at least {max(src.bands)} "
                        f"({','.join(src.names)} at bands {list(src.bands)})")
                ref = _same_size(ref, info, tile)
            for lab in (tile.label, tile.eval_label):
                if lab is None:
                    continue
                info = check_readable(lab)
                colour_ok = self.label_bands == 3 and (info.count == 4 or info.paletted)
                if info.count != self.label_bands and not colour_ok:
                    raise DataError(f"{lab}: label has {info.count} bands, expected "
                                    f"{self.label_bands}")
                ref = _same_size(ref, info, tile)
            assert ref is not None
            sizes[tile.id] = (ref.height, ref.width)
        return sizes


def _same_size(ref: RasterInfo | None, info: RasterInfo, tile: Tile) -> RasterInfo:
    if ref is not None and (ref.width, ref.height) != (info.width, info.height):
        raise DataError(f"{info.path}: size {info.width}x{info.height} differs from "
                        f"{ref.path.name} ({ref.width}x{ref.height}) of tile {tile.id}")
    return ref or info


@register_layout("folder")
class FolderLayout(Layout):
    """Paired image/label folders (``img_dir/NAME.ext`` + ``ann_dir/NAME.ext``).

    The layout of converted datasets (mmsegmentation-style crops, LoveDA, OpenEarthMap).
    Tiles are matched by file stem; the label scheme is a named palette, colour-coded
    (3-band labels) or raw codes (1-band). Files are listed sorted; the last
    ``test_count`` form the test split unless ``test_ids`` names them.
    """

    name = "folder"

    def __init__(self, root: str | Path, images: str = "img_dir", labels: str | None = "ann_dir",
                 palette: str = "isprs", bands: Sequence[str] = ("R", "G", "B"),
                 test_ids: Sequence[str] = (), modality: str | None = None,
                 ndsm: bool = False) -> None:
        super().__init__(root)
        if ndsm:
            raise ConfigError("data.ndsm=true: the folder layout has no DSM; stack it into the "
                              "image files instead")
        self.images = images
        self.labels = labels
        self.palette = get_palette(palette, key="data.layout_options.palette")
        self.label_bands = 1 if self.palette.codes is not None else 3
        self._bands = tuple(bands)
        self.test_tiles = tuple(str(t) for t in test_ids)

    @property
    def band_names(self) -> tuple[str, ...]:
        return self._bands

    def find_tiles(self) -> dict[str, Tile]:
        folder = self._require_dir(self.images, "one image file per tile")
        label_dir = self.root / self.labels if self.labels else None
        labels = {}
        if label_dir is not None and label_dir.is_dir():
            labels = {p.stem: p for p in sorted(label_dir.iterdir()) if p.is_file()}
        tiles = {}
        band_idx = tuple(range(1, len(self._bands) + 1))
        for path in sorted(folder.iterdir()):
            if not path.is_file() or path.suffix.lower() not in RASTER_SUFFIXES:
                continue
            label = labels.get(path.stem)
            tiles[path.stem] = Tile(path.stem, (BandSource(path, band_idx, self._bands),),
                                    label, label)
        if not tiles:
            raise DataError(f"{folder}: no image files ({', '.join(sorted(RASTER_SUFFIXES))})")
        return tiles


_SPLIT_NAMES = ("train", "val", "test", "all")
RASTER_SUFFIXES = {".tif", ".tiff", ".png", ".jpg", ".jpeg", ".jp2"}


def _quoting_hint(missing: Sequence[str], found: Iterable[str]) -> str:
    """Where a missing id is a found one without its underscores (Hydra reads ``7_003``
    as the number 7003, as Python does), how to quote it; else nothing."""
    bare = {t.replace("_", ""): t for t in found if "_" in t}
    meant = [bare[m] for m in missing if m in bare]
    if not meant:
        return ""
    quoted = ",".join(f"'{t}'" for t in meant)
    return (f"; Hydra reads {meant[0]} as the number {meant[0].replace('_', '')}: quote "
            f"ids, e.g. \"data.test_split=[{quoted}]\"")

