"""A label map's legend in a form GIS tools show: a QGIS style file (``.qml``) beside the
GeoTIFF. QGIS applies ``NAME.qml`` by itself when it opens ``NAME.tif``, so the classes
appear by name and colour in the layer panel (the GeoTIFF's own colour table has the
colours but no names)."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from xml.sax.saxutils import quoteattr

from sssi.utils.io import atomic_write_text


def qml_style(class_names: Sequence[str], colors: Sequence[Sequence[int]]) -> str:
    """A QGIS paletted-raster style: value ``i`` is ``class_names[i]`` in ``colors[i]``
    (RGB 0-255). Other values, such as the GeoTIFF's no-data value, are not drawn."""
    entries = "\n".join(
        f'        <paletteEntry value="{value}" color="#{r:02x}{g:02x}{b:02x}" alpha="255" '
        f"label={quoteattr(str(name))}/>"
        for value, (name, (r, g, b)) in enumerate(zip(class_names, colors, strict=True)))
    return ("<!DOCTYPE qgis PUBLIC 'http://mrcc.com/qgis.dtd' 'SYSTEM'>\n"
            '<qgis version="3.28" styleCategories="Symbology">\n'
            "  <pipe>\n"
            '    <rasterrenderer type="paletted" band="1" opacity="1" alphaBand="-1" '
            'nodataColor="">\n'
            "      <colorPalette>\n"
            f"{entries}\n"
            "      </colorPalette>\n"
            "    </rasterrenderer>\n"
            "  </pipe>\n"
            "</qgis>\n")


def write_qml(raster: str | Path, class_names: Sequence[str],
              colors: Sequence[Sequence[int]]) -> Path:
    """Write the style of ``raster`` beside it (same name, ``.qml``; atomically)."""
    return atomic_write_text(Path(raster).with_suffix(".qml"), qml_style(class_names, colors))
