"""Label schemes: how the values stored in a label raster map to class indices.

Two kinds of label files exist in remote sensing. ISPRS ships colour-coded RGB
rasters (one colour per class); LoveDA, OpenEarthMap and most converted datasets ship
single-band rasters of integer codes. :class:`Palette` covers both: every class has a
colour (used to encode and draw maps) and optionally a raw code (used to decode
single-band labels).

Pixels that match no class are never guessed into one. Colours listed in
``ignore_colors`` (e.g. the black eroded boundary of the ISPRS ``noBoundary`` labels)
are expected and map to the ignore index; anything else is *off-palette*: it maps to
the ignore index too, and is counted so that readers can report it.
"""

from __future__ import annotations

import colorsys
import functools
from dataclasses import dataclass, replace

import numpy as np

#: The class index of pixels that take no part in training or scoring. Losses, metrics
#: and readers take it from here (configs do not repeat it).
IGNORE_INDEX = 255
#: How ignored pixels are drawn.
IGNORE_COLOR = (0, 0, 0)


@dataclass(frozen=True)
class DecodeResult:
    """A decoded label window and the pixels that matched no class."""

    index: np.ndarray  # (H, W) uint8 class indices, IGNORE_INDEX where unknown
    n_ignored: int  # expected ignore pixels (e.g. eroded boundary)
    n_off_palette: int  # unexpected values, mapped to IGNORE_INDEX
    off_palette_values: tuple[int, ...] = ()  # up to a few distinct packed values seen


def _pack_rgb(rgb: np.ndarray) -> np.ndarray:
    """(3, H, W) or (H, W, 3) uint8 -> (H, W) int32 code r<<16 | g<<8 | b."""
    if rgb.shape[0] == 3:
        r, g, b = rgb[0], rgb[1], rgb[2]
    else:
        r, g, b = rgb[..., 0], rgb[..., 1], rgb[..., 2]
    code = r.astype(np.int32)  # one array, shifted and or-ed in place (a worker's hot path)
    code <<= 8
    code |= g
    code <<= 8
    code |= b
    return code


def unpack_rgb(code: int) -> tuple[int, int, int]:
    """Inverse of the packed colour code, for messages."""
    return (code >> 16) & 255, (code >> 8) & 255, code & 255


@dataclass(frozen=True)
class Palette:
    """Class names, display colours and (optionally) raw codes of a label scheme."""

    name: str
    classes: tuple[str, ...]
    colors: tuple[tuple[int, int, int], ...]
    codes: tuple[int, ...] | None = None  # raw single-band values, one per class
    ignore_colors: tuple[tuple[int, int, int], ...] = ()
    ignore_codes: tuple[int, ...] = ()
    ignore_index: int = IGNORE_INDEX

    def __post_init__(self) -> None:
        if len(self.classes) != len(self.colors):
            raise ValueError(f"palette {self.name}: {len(self.classes)} classes, "
                             f"{len(self.colors)} colours")
        if self.codes is not None and len(self.codes) != len(self.classes):
            raise ValueError(f"palette {self.name}: codes must match classes")
        if len(self.classes) >= self.ignore_index:
            raise ValueError(f"palette {self.name}: too many classes for ignore index")

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    def color_array(self) -> np.ndarray:
        """(num_classes, 3) uint8 colours, indexed by class."""
        return np.asarray(self.colors, dtype=np.uint8)

    # -- decoding -----------------------------------------------------------------------
    def decode(self, label: np.ndarray) -> DecodeResult:
        """Map a label window to class indices.

        ``label`` is either colour-coded, shape (3, H, W) as rasterio reads it or
        (H, W, 3), or single-band integer codes, shape (H, W) or (1, H, W).
        """
        if label.ndim == 3 and (label.shape[0] == 3 or label.shape[-1] == 3):
            bands = self._band_codes
            if bands is not None:
                return bands.decode(label, self.ignore_index)
            packed = _pack_rgb(label)
            table = self._colour_lookup()
        else:
            if label.ndim == 3:
                if label.shape[0] != 1:
                    raise ValueError(f"label must have 1 or 3 bands, got shape {label.shape}")
                label = label[0]
            if self.codes is None:
                raise ValueError(f"palette {self.name} decodes colour labels (3 bands); "
                                 f"got a single-band label")
            if label.dtype not in (np.uint8, np.uint16):
                label = _codes_to_uint16(label, self.codes, self.ignore_codes)
            packed = label
            table = _table(tuple(self.codes), tuple(self.ignore_codes), 1 << 16)
        return _lookup(packed, table, self.ignore_index)

    @functools.cached_property
    def _band_codes(self) -> _BandCodes | None:
        """Band-by-band colour tables (once per palette object; None: too many values)."""
        return _BandCodes.of(self)

    def _colour_lookup(self) -> np.ndarray:
        """The packed-colour -> class table (16 M entries, built once per palette)."""
        return _table(tuple(_code_of(c) for c in self.colors),
                      tuple(_code_of(c) for c in self.ignore_colors), 1 << 24)

    def decode_paletted(self, indices: np.ndarray, table: np.ndarray) -> DecodeResult:
        """Decode a palette-mode label: ``indices`` (H, W) into the file's colour
        ``table`` (256, 3). The same result as decoding ``table[indices]`` as colours,
        but the colour lookup runs over the table's 256 entries, not over every pixel
        (how ``python -m sssi.data.prepare --layout`` stores labels)."""
        codes, status = _entry_status(self, np.asarray(table, dtype=np.uint8).tobytes())
        import cv2

        indices = np.ascontiguousarray(indices, dtype=np.uint8)
        # a 256-entry gather: OpenCV's LUT is ~10x numpy's take, which widens the indices
        result = _classify(cv2.LUT(indices, status), indices, self.ignore_index)
        if result.off_palette_values:  # report colours, as for colour files
            values = tuple(int(v) for v in np.unique(codes[list(result.off_palette_values)]))
            result = replace(result, off_palette_values=values)
        return result

    # -- encoding -----------------------------------------------------------------------
    def colorize(self, index: np.ndarray) -> np.ndarray:
        """(H, W) class indices -> (H, W, 3) uint8 colours (see :func:`colorize`)."""
        return colorize(index, self.color_array())


def distinct_colors(n: int) -> tuple[tuple[int, int, int], ...]:
    """``n`` well separated colours (golden-ratio hues) for label schemes without any."""
    out = []
    for i in range(n):
        r, g, b = colorsys.hsv_to_rgb((i * 0.618034) % 1.0, 0.8, 0.95)
        out.append((round(r * 255), round(g * 255), round(b * 255)))
    return tuple(out)


@functools.lru_cache(maxsize=1)
def _generated_table() -> np.ndarray:
    return np.array(distinct_colors(256), dtype=np.uint8)


def colorize(index: np.ndarray, colors: np.ndarray | None = None) -> np.ndarray:
    """(H, W) class indices -> (H, W, 3) uint8 colours: the first ``len(colors)`` classes
    in ``colors``, any larger index (a prediction beyond the palette) in a distinct
    generated colour, the ignore index black. The one colouriser of label maps, used
    for label rasters, prediction PNGs and the logged image panels."""
    table = _generated_table().copy()
    if colors is not None:
        colors = np.asarray(colors, dtype=np.uint8).reshape(-1, 3)[:IGNORE_INDEX]
        table[: len(colors)] = colors
    table[IGNORE_INDEX] = IGNORE_COLOR
    return table[np.clip(np.asarray(index).astype(np.int64), 0, 255)]


def _code_of(color: tuple[int, int, int]) -> int:
    r, g, b = color
    return (int(r) << 16) | (int(g) << 8) | int(b)


_EXPECTED = 254  # table value of expected ignore codes (eroded boundary, no-data)
_UNKNOWN = 255  # table value of codes that match no class


@functools.lru_cache(maxsize=8)
def _table(keys: tuple[int, ...], ignore: tuple[int, ...], size: int) -> np.ndarray:
    """Lookup table code -> class index (254 expected ignore, 255 off-palette).

    A gather through a table is ~6x faster than a sorted search per pixel; the colour
    table takes 16 MB per process, built once.
    """
    table = np.full(size, _UNKNOWN, dtype=np.uint8)
    table[list(ignore)] = _EXPECTED
    table[list(keys)] = np.arange(len(keys), dtype=np.uint8)
    return table


@functools.lru_cache(maxsize=32)
def _entry_status(palette: Palette, table: bytes) -> tuple[np.ndarray, np.ndarray]:
    """``(codes, status)`` of a colour table's 256 entries: each entry's packed colour
    and its class (or expected ignore, or off-palette); once per file and palette."""
    entries = np.frombuffer(table, dtype=np.uint8).reshape(256, 3).T[:, None, :]
    codes = _pack_rgb(np.ascontiguousarray(entries))[0]
    status = np.take(palette._colour_lookup(), codes)
    return codes, status


class _BandCodes:
    """Colour decoding band by band, for palettes with few distinct values per band.

    Each band's value is looked up in a 256-entry table that gives its rank among the
    values the palette uses in that band (times the band's stride), one rank for "any
    other value"; the three ranks add up to one byte that a last 256-entry table maps
    to a class. Four byte lookups and two byte additions (OpenCV) replace packing every
    pixel into a 24-bit integer and gathering from a 16 MB table: ~2x faster on a
    worker's hot path. Exact: a pixel gets a class only if every band matches that
    class's colour; any other combination is off-palette, as in the 24-bit table.
    """

    def __init__(self, luts: tuple[np.ndarray, ...], final: np.ndarray) -> None:
        self.luts, self.final = luts, final

    @staticmethod
    def of(palette: Palette) -> _BandCodes | None:
        """The tables of ``palette``, or None when its ranks do not fit in one byte."""
        colours = [*palette.colors, *palette.ignore_colors]
        values = [sorted({c[band] for c in colours}) for band in range(3)]
        sizes = [len(v) + 1 for v in values]  # the last rank: a value no colour uses
        if sizes[0] * sizes[1] * sizes[2] > 256:
            return None
        strides = (sizes[1] * sizes[2], sizes[2], 1)
        luts = []
        for band in range(3):
            lut = np.full(256, (sizes[band] - 1) * strides[band], dtype=np.uint8)
            for rank, value in enumerate(values[band]):
                lut[value] = rank * strides[band]
            luts.append(lut)
        final = np.full(256, _UNKNOWN, dtype=np.uint8)
        for status, group in ((_EXPECTED, palette.ignore_colors), (None, palette.colors)):
            for k, colour in enumerate(group):
                key = sum(int(luts[band][colour[band]]) for band in range(3))
                final[key] = k if status is None else status
        return _BandCodes(tuple(luts), final)

    def decode(self, label: np.ndarray, ignore_index: int) -> DecodeResult:
        import cv2

        planes = label if label.shape[0] == 3 else label.transpose(2, 0, 1)
        planes = np.ascontiguousarray(planes, dtype=np.uint8)
        key = cv2.LUT(planes[0], self.luts[0])
        cv2.add(key, cv2.LUT(planes[1], self.luts[1]), dst=key)
        cv2.add(key, cv2.LUT(planes[2], self.luts[2]), dst=key)
        index = cv2.LUT(key, self.final, dst=key)
        return _classify(index, None, ignore_index, planes)


def _codes_to_uint16(label: np.ndarray, codes, ignore) -> np.ndarray:
    """Wide integer codes -> uint16 keeping known codes, other values -> an unused code."""
    known = [*codes, *ignore]
    if max(known) >= 65535:
        raise ValueError("label codes above 65534 are not supported")
    spare = 65535
    out = np.full(label.shape, spare, dtype=np.uint16)
    inside = (label >= 0) & (label < 65535)
    out[inside] = label[inside]
    return out


def _lookup(packed: np.ndarray, table: np.ndarray, ignore_index: int) -> DecodeResult:
    return _classify(np.take(table, packed), packed, ignore_index)  # 2x fancy indexing


def _classify(index: np.ndarray, packed: np.ndarray | None, ignore_index: int,
              colours: np.ndarray | None = None) -> DecodeResult:
    """Finish a table lookup: count expected and off-palette pixels, map both to ignore.

    ``packed`` are the looked-up values (for the off-palette examples), or None to pack
    them from the (3, H, W) ``colours`` only when some pixel is off-palette."""
    n_miss = int(np.count_nonzero(index >= _EXPECTED))
    if n_miss == 0:
        return DecodeResult(index, 0, 0)
    unknown = index == _UNKNOWN
    n_off = int(np.count_nonzero(unknown))
    values: tuple[int, ...] = ()
    if n_off:
        if packed is None:
            packed = _pack_rgb(colours)
        values = tuple(int(v) for v in np.unique(packed[unknown])[:8])
    index[index >= _EXPECTED] = ignore_index
    return DecodeResult(index, n_miss - n_off, n_off, values)


#: ISPRS 2D semantic labelling (Potsdam and Vaihingen). Black marks the eroded class
#: boundaries of the ``noBoundary`` labels and is ignored.
ISPRS = Palette(
    name="isprs",
    classes=("impervious_surfaces", "building", "low_vegetation", "tree", "car", "clutter"),
    colors=((255, 255, 255), (0, 0, 255), (0, 255, 255), (0, 255, 0), (255, 255, 0),
            (255, 0, 0)),
    ignore_colors=((0, 0, 0),),
)

#: LoveDA: single-band codes 1..7; 0 is no-data.
LOVEDA = Palette(
    name="loveda",
    classes=("background", "building", "road", "water", "barren", "forest", "agriculture"),
    colors=((255, 255, 255), (255, 0, 0), (255, 255, 0), (0, 0, 255), (159, 129, 183),
            (0, 255, 0), (255, 195, 128)),
    codes=(1, 2, 3, 4, 5, 6, 7),
    ignore_codes=(0,),
)

#: Dubai aerial imagery (Humans in the Loop / MBRSC): the colours the masks really use.
#: The archive's classes.json gives road as #1BB3F5; every mask paints it #6EC1E4.
#: Unlabeled (#9B9B9B) and black (no class) are ignored.
DUBAI = Palette(
    name="dubai",
    classes=("building", "land", "road", "vegetation", "water"),
    colors=((0x3C, 0x10, 0x98), (0x84, 0x29, 0xF6), (0x6E, 0xC1, 0xE4), (0xFE, 0xDD, 0x3A),
            (0xE2, 0xA9, 0x29)),
    ignore_colors=((0x9B, 0x9B, 0x9B), (0, 0, 0)),
)

PALETTES: dict[str, Palette] = {p.name: p for p in (ISPRS, LOVEDA, DUBAI)}


def get_palette(name: str, key: str = "palette") -> Palette:
    """Look a palette up by name; an unknown name is a :class:`ConfigError` naming the
    config ``key`` it came from and the known palettes."""
    try:
        return PALETTES[name]
    except (KeyError, TypeError):
        from sssi.errors import ConfigError

        raise ConfigError(f"{key}={name!r}: unknown palette; expected one of "
                          f"{sorted(PALETTES)}") from None
