"""Data: layouts of datasets on disk, palettes, patch datasets and datamodules."""

from sssi.data.datamodules import PretextDataModule, SegmentationDataModule, TileDataModule
from sssi.data.layouts import Layout, Tile, build_layout
from sssi.data.palettes import IGNORE_INDEX, ISPRS, Palette, get_palette

__all__ = [
    "IGNORE_INDEX",
    "ISPRS",
    "Layout",
    "Palette",
    "PretextDataModule",
    "SegmentationDataModule",
    "Tile",
    "TileDataModule",
    "build_layout",
    "get_palette",
]
