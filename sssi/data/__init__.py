"""Data: layouts of datasets on disk, palettes, patch datasets and datamodules.

Layouts are built by name through one registry (as backbones are, see
:mod:`sssi.models`): a module defines a :class:`Layout` subclass under
``@register_layout("name")``, and importing this package registers the built-in ones
(ISPRS Potsdam and Vaihingen, Dubai)::

    from sssi.data import build_layout
    layout = build_layout("dubai", "/data/dubai")

The datamodules import Lightning (seconds); they load on first use so that light
commands such as ``python -m sssi.data.synthetic`` start fast.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from sssi.data import dubai as _dubai  # noqa: F401  (registers the Dubai layout)
from sssi.data import isprs as _isprs  # noqa: F401  (registers the ISPRS layouts)
from sssi.data.layouts import Layout, Tile, build_layout, list_layouts, register_layout
from sssi.data.palettes import IGNORE_INDEX, ISPRS, Palette, get_palette

if TYPE_CHECKING:
    from sssi.data.datamodules import PretextDataModule, SegmentationDataModule, TileDataModule

_LAZY = {"PretextDataModule", "SegmentationDataModule", "TileDataModule"}

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
    "list_layouts",
    "register_layout",
]


def __getattr__(name: str):
    if name in _LAZY:
        from sssi.data import datamodules

        return getattr(datamodules, name)
    raise AttributeError(f"module 'sssi.data' has no attribute {name!r}")
