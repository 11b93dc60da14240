"""Synthetic Potsdam: a small procedural aerial dataset in the ISPRS Potsdam layout.

Why it exists: the real benchmark cannot be downloaded here, yet the readers, the
datamodules and every entry point must run end to end, in tests and in the demo. This
package draws small "cities" (a connected street grid, houses and apartment blocks with
pitched roofs and cast shadows, lawns, trees, parked cars, containers and bare soil)
and writes them exactly where and how ISPRS ships Potsdam, so the real readers work
on them unchanged. Scenes have real spatial structure because the pretext task
(inpainting) learns precisely that structure; a noise image would teach it nothing.

Everything is vectorised numpy/OpenCV and deterministic by seed: the default (6 tiles
of 1024 px) takes a few seconds.

    python -m sssi.data.synthetic --out DIR [--tiles N] [--size PX] [--seed S]

Modules: ``canvas`` (materials, colours, the drawing canvas, raster helpers), ``city``
(street grid and land use, rendering of one tile), ``writer`` (GeoTIFFs, ``generate``,
``ensure_synthetic``), ``command`` (the command line).
"""

from __future__ import annotations

from sssi.data.synthetic.command import main
from sssi.data.synthetic.writer import MARKER, ensure_synthetic, generate, tile_ids

__all__ = ["MARKER", "ensure_synthetic", "generate", "main", "tile_ids"]
