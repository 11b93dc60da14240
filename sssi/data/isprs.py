"""The ISPRS 2D semantic labelling benchmarks as they lie on disk (Potsdam, Vaihingen)."""

from __future__ import annotations

from pathlib import Path

from sssi.data.layouts import BandSource, Layout, Tile, register_layout
from sssi.data.palettes import ISPRS
from sssi.errors import ConfigError, DataError

#: The common Potsdam split (24 labelled training tiles, 14 test tiles), ids ``{row}_{col}``
#: unpadded as in the ortho file names (the DSM files pad them: ``dsm_potsdam_06_07``).
POTSDAM_TRAIN_TILES: tuple[str, ...] = (
    "2_10", "2_11", "2_12", "3_10", "3_11", "3_12", "4_10", "4_11", "4_12", "5_10", "5_11",
    "5_12", "6_7", "6_8", "6_9", "6_10", "6_11", "6_12", "7_7", "7_8", "7_9", "7_10",
    "7_11", "7_12",
)
POTSDAM_TEST_TILES: tuple[str, ...] = (
    "2_13", "2_14", "3_13", "3_14", "4_13", "4_14", "4_15", "5_13", "5_14", "5_15", "6_13",
    "6_14", "6_15", "7_13",
)

#: Held out of the 24 training tiles for validation and model selection (sssi's choice:
#: the benchmark defines no validation split, and selecting on test tiles is not allowed).
POTSDAM_VAL_TILES: tuple[str, ...] = ("2_11", "7_12")

#: The common Vaihingen split (16 training areas, 17 test areas).
VAIHINGEN_TRAIN_TILES: tuple[str, ...] = tuple(
    str(n) for n in (1, 3, 5, 7, 11, 13, 15, 17, 21, 23, 26, 28, 30, 32, 34, 37)
)
VAIHINGEN_TEST_TILES: tuple[str, ...] = tuple(
    str(n) for n in (2, 4, 6, 8, 10, 12, 14, 16, 20, 22, 24, 27, 29, 31, 33, 35, 38)
)

# --------------------------------------------------------------------------------------
# Layouts: where each tile's bands and labels are, checked before anything is read.
# --------------------------------------------------------------------------------------

#: Held out of the 16 Vaihingen training areas for validation (sssi's choice).
VAIHINGEN_VAL_TILES: tuple[str, ...] = ("3", "30")

#: Potsdam image products: folder, file suffix and band names.
POTSDAM_MODALITIES: dict[str, tuple[str, str, tuple[str, ...]]] = {
    "RGB": ("2_Ortho_RGB", "RGB", ("R", "G", "B")),
    "IRRG": ("3_Ortho_IRRG", "IRRG", ("IR", "R", "G")),
    "RGBIR": ("4_Ortho_RGBIR", "RGBIR", ("R", "G", "B", "IR")),
}


def _potsdam_id(stem: str, prefix: str, suffix: str) -> str | None:
    if not (stem.startswith(prefix) and stem.endswith(suffix)):
        return None
    core = stem[len(prefix): len(stem) - len(suffix)]
    parts = core.split("_")
    if len(parts) != 2 or not all(p.isdigit() for p in parts):
        return None
    return f"{int(parts[0])}_{int(parts[1])}"


#: World files and metadata that lie next to ISPRS rasters but are not rasters.
_SIDECARS = (".tfw", ".jgw", ".xml", ".aux")


def _with_any_extension(path: Path) -> Path | None:
    """``path`` if it is a file, else a sibling with the same stem and another raster
    extension (ISPRS ships the normalised DSMs as ``.jpg``), else None."""
    if path.is_file():
        return path
    for other in sorted(path.parent.glob(f"{path.stem}.*")):
        if other.stem == path.stem and other.suffix.lower() not in _SIDECARS \
                and other.is_file():
            return other
    return None


@register_layout("potsdam")
class PotsdamLayout(Layout):
    """ISPRS Potsdam: ``2_Ortho_RGB/top_potsdam_{r}_{c}_RGB.tif`` and siblings.

    ``modality`` picks the image product (RGB, IRRG or RGBIR); ``ndsm`` appends the
    normalised DSM of ``1_DSM_normalisation/`` as one more band.
    """

    name = "potsdam"
    palette = ISPRS
    val_tiles = POTSDAM_VAL_TILES
    test_tiles = POTSDAM_TEST_TILES

    def __init__(self, root: str | Path, modality: str = "RGB", ndsm: bool = False) -> None:
        super().__init__(root)
        modality = modality.upper()
        if modality not in POTSDAM_MODALITIES:
            raise ConfigError(f"data.modality={modality!r}: expected one of "
                              f"{sorted(POTSDAM_MODALITIES)} for Potsdam")
        self.modality = modality
        self.ndsm = bool(ndsm)

    @property
    def band_names(self) -> tuple[str, ...]:
        names = POTSDAM_MODALITIES[self.modality][2]
        return (*names, "nDSM") if self.ndsm else names

    def paths(self, tile_id: str) -> dict[str, Path]:
        """Where each product of tile ``tile_id`` ('{r}_{c}') lies: the one place that
        spells the Potsdam file names (the reader and the synthetic generator use it)."""
        r, c = (int(p) for p in tile_id.split("_"))
        out = {product: self.root / folder / f"top_potsdam_{tile_id}_{suffix}.tif"
               for product, (folder, suffix, _) in POTSDAM_MODALITIES.items()}
        out["nDSM"] = (self.root / "1_DSM_normalisation"
                       / f"dsm_potsdam_{r:02d}_{c:02d}_normalized_lastools.tif")
        out["label"] = self.root / "5_Labels_all" / f"top_potsdam_{tile_id}_label.tif"
        out["label_noBoundary"] = (self.root / "5_Labels_all_noBoundary"
                                   / f"top_potsdam_{tile_id}_label_noBoundary.tif")
        return out

    def find_tiles(self) -> dict[str, Tile]:
        folder_name, suffix, names = POTSDAM_MODALITIES[self.modality]
        folder = self._require_dir(folder_name, f"top_potsdam_{{r}}_{{c}}_{suffix}.tif")
        images = {}
        for path in folder.glob(f"top_potsdam_*_{suffix}.tif"):
            tid = _potsdam_id(path.stem, "top_potsdam_", f"_{suffix}")
            if tid is not None:
                images[tid] = path
        if not images:
            raise DataError(f"{folder}: no files named top_potsdam_{{r}}_{{c}}_{suffix}.tif")
        tiles = {}
        for tid, path in images.items():
            files = self.paths(tid)
            sources = [BandSource(path, tuple(range(1, len(names) + 1)), names)]
            if self.ndsm:
                dsm = _with_any_extension(files["nDSM"])
                if dsm is None:
                    raise DataError(
                        f"{files['nDSM'].parent}: no nDSM for tile {tid} (expected "
                        f"{files['nDSM'].name} or .jpg)")
                sources.append(BandSource(dsm, (1,), ("nDSM",)))
            label = files["label"] if files["label"].is_file() else None
            eval_label = files["label_noBoundary"]
            tiles[tid] = Tile(tid, tuple(sources), label,
                              eval_label if eval_label.is_file() else label)
        return tiles


@register_layout("vaihingen")
class VaihingenLayout(Layout):
    """ISPRS Vaihingen: IRRG ``top/top_mosaic_09cm_area{N}.tif``, optional DSM band."""

    name = "vaihingen"
    palette = ISPRS
    val_tiles = VAIHINGEN_VAL_TILES
    test_tiles = VAIHINGEN_TEST_TILES

    def __init__(self, root: str | Path, modality: str = "IRRG", ndsm: bool = False) -> None:
        super().__init__(root)
        if modality.upper() != "IRRG":
            raise ConfigError(f"data.modality={modality!r}: Vaihingen has only IRRG imagery")
        self.modality = "IRRG"
        self.ndsm = bool(ndsm)

    @property
    def band_names(self) -> tuple[str, ...]:
        return ("IR", "R", "G", "DSM") if self.ndsm else ("IR", "R", "G")

    def find_tiles(self) -> dict[str, Tile]:
        folder = self._require_dir("top", "top_mosaic_09cm_area{N}.tif")
        tiles = {}
        for path in sorted(folder.glob("top_mosaic_09cm_area*.tif")):
            tid = path.stem.removeprefix("top_mosaic_09cm_area")
            if not tid.isdigit():
                continue
            sources = [BandSource(path, (1, 2, 3), ("IR", "R", "G"))]
            if self.ndsm:
                dsm = self.root / "dsm" / f"dsm_09cm_matching_area{tid}.tif"
                if not dsm.is_file():
                    raise DataError(f"{dsm}: DSM for tile {tid} not found")
                sources.append(BandSource(dsm, (1,), ("DSM",)))
            label = self.root / "gts_for_participants" / path.name
            eroded = self.root / "gts_eroded" / f"{path.stem}_noBoundary.tif"
            label_path = label if label.is_file() else None
            tiles[tid] = Tile(tid, tuple(sources), label_path,
                              eroded if eroded.is_file() else label_path)
        if not tiles:
            raise DataError(f"{folder}: no files named top_mosaic_09cm_area{{N}}.tif")
        return tiles
