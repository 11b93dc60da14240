"""Synthetic Potsdam: a small procedural aerial dataset in the ISPRS Potsdam layout.

Why it exists: the real benchmark cannot be downloaded here, yet the readers, the
datamodules and every entry point must run end to end, in tests and in the demo. This
module draws small "cities" (a connected street grid, houses and apartment blocks with
pitched roofs and cast shadows, lawns, trees, parked cars, containers and bare soil)
and writes them exactly where and how ISPRS ships Potsdam, so the real readers work
on them unchanged. Scenes have real spatial structure because the pretext task
(inpainting) learns precisely that structure; a noise image would teach it nothing.

Everything is vectorised numpy/OpenCV and deterministic by seed: the default (6 tiles
of 1024 px) takes a few seconds.

    python -m sssi.data.synthetic --out DIR [--tiles N] [--size PX] [--seed S]
"""

from __future__ import annotations

import argparse
import contextlib
import itertools
import json
import logging
import math
import os
import shutil
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import cv2
import numpy as np

from sssi.data.isprs import POTSDAM_TEST_TILES, POTSDAM_TRAIN_TILES
from sssi.data.palettes import ISPRS
from sssi.errors import ConfigError, DataError, SssiError

log = logging.getLogger(__name__)

__all__ = ["MARKER", "ensure_synthetic", "generate", "main", "tile_ids", "tile_paths"]

#: Written last in the dataset root; holds the generation parameters.
MARKER = "SYNTHETIC.json"
#: Bump when the generator's output changes, so cached datasets are regenerated.
FORMAT_VERSION = 1

CRS = "EPSG:32633"  # UTM zone 33N, where Potsdam lies
GSD_M = 0.05  # nominal pixel size written to the geotransform, as for real Potsdam
ORIGIN_X, ORIGIN_Y = 366_000.0, 5_808_000.0
TILE_STRIDE_M = 300.0  # real Potsdam tiles are 6000 px x 5 cm = 300 m apart
NDSM_SCALE_M = 0.1  # one nDSM grey level = 10 cm, so 0..25.5 m fit in uint8
#: Objects are drawn at ~10 px per metre (half the nominal scale) so that a 1024 px
#: tile holds a street grid rather than a single roof.
PX_PER_M = 10.0
BOUNDARY_RADIUS = 2  # noBoundary labels: pixels this close to another class turn black
BLOCK = 256  # GeoTIFF tile size

IMPERVIOUS, BUILDING, LOW_VEG, TREE, CAR, CLUTTER = range(6)

# Materials drive the image texture only (the label comes from the class raster).
(M_ASPHALT, M_PAVING, M_COBBLE, M_MARKING, M_LAWN, M_FIELD, M_TREE, M_ROOF, M_FLATROOF,
 M_CAR, M_SOIL, M_CONTAINER) = range(12)
#: Relative amplitude of fine (1 px) and medium (3 px) luminance texture per material.
_TEX_FINE = np.array([0.06, 0.04, 0.09, 0.02, 0.06, 0.07, 0.10, 0.04, 0.05, 0.02, 0.09, 0.03],
                     np.float32)
_TEX_MED = np.array([0.04, 0.03, 0.05, 0.01, 0.09, 0.07, 0.22, 0.03, 0.05, 0.0, 0.10, 0.02],
                    np.float32)
_VEGETATION = np.zeros(12, bool)
_VEGETATION[[M_LAWN, M_FIELD, M_TREE]] = True

Color = tuple[float, float, float, float]  # R, G, B, near infrared (0..255)
ASPHALT: Color = (98, 99, 102, 78)
PAVING: Color = (168, 163, 156, 120)
COBBLE: Color = (140, 133, 124, 108)
MARKING: Color = (232, 232, 228, 170)
LAWN: Color = (98, 124, 66, 196)
FIELD: Color = (150, 146, 92, 165)
TREE_GREEN: Color = (58, 86, 46, 228)
SOIL: Color = (146, 118, 88, 135)
ROOF_COLORS: tuple[Color, ...] = (
    (182, 92, 66, 112), (166, 80, 60, 104), (196, 112, 80, 118),  # red clay tiles
    (118, 116, 118, 84), (84, 82, 86, 62), (140, 104, 92, 96),  # grey, slate, brown
)
FLAT_ROOF_COLORS: tuple[Color, ...] = ((150, 148, 142, 104), (124, 124, 126, 88),
                                       (170, 168, 160, 114))
CAR_COLORS: tuple[Color, ...] = (
    (214, 214, 212, 150), (172, 174, 178, 128), (38, 38, 42, 34), (160, 34, 32, 120),
    (42, 58, 118, 50), (72, 74, 78, 58), (44, 82, 54, 62), (190, 180, 150, 135),
)
CONTAINER_COLORS: tuple[Color, ...] = ((46, 74, 140, 70), (52, 112, 64, 80),
                                       (198, 112, 44, 120), (120, 122, 124, 90))


# --------------------------------------------------------------------------------------
# Tile ids and file names
# --------------------------------------------------------------------------------------

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


def tile_paths(root: str | Path, tid: str) -> dict[str, Path]:
    """Where each product of tile ``tid`` ('{r}_{c}') lies in the Potsdam layout."""
    root = Path(root)
    r, c = tid.split("_")
    return {
        "RGB": root / "2_Ortho_RGB" / f"top_potsdam_{tid}_RGB.tif",
        "IRRG": root / "3_Ortho_IRRG" / f"top_potsdam_{tid}_IRRG.tif",
        "RGBIR": root / "4_Ortho_RGBIR" / f"top_potsdam_{tid}_RGBIR.tif",
        "nDSM": root / "1_DSM_normalisation"
        / f"dsm_potsdam_{int(r):02d}_{int(c):02d}_normalized_lastools.tif",
        "label": root / "5_Labels_all" / f"top_potsdam_{tid}_label.tif",
        "label_noBoundary": root / "5_Labels_all_noBoundary"
        / f"top_potsdam_{tid}_label_noBoundary.tif",
    }


# --------------------------------------------------------------------------------------
# Scene drawing: a canvas in the street grid's own frame (axis-aligned streets)
# --------------------------------------------------------------------------------------

class _Canvas:
    """Class, height, material and colour rasters drawn with painter's order.

    The street grid is axis-aligned here (u = column, v = row); the whole canvas is
    rotated into the tile afterwards, which keeps every drawing primitive a slice.
    """

    def __init__(self, side: int, rng: np.random.Generator, sun: tuple[float, float]) -> None:
        self.S = side
        self.rng = rng
        self.sun = sun  # horizontal unit vector towards the sun, canvas frame
        self.cls = np.full((side, side), LOW_VEG, np.uint8)
        self.mat = np.full((side, side), M_LAWN, np.uint8)
        self.hgt = np.zeros((side, side), np.float32)
        self.img = np.empty((side, side, 4), np.float32)
        self.img[:] = LAWN

    # primitives ------------------------------------------------------------------------
    def box(self, u0: float, v0: float, u1: float, v1: float) -> tuple[int, int, int, int] | None:
        """Integer (r0, r1, c0, c1) of a rectangle clipped to the canvas, None if empty."""
        c0, c1 = max(round(u0), 0), min(round(u1), self.S)
        r0, r1 = max(round(v0), 0), min(round(v1), self.S)
        if c1 <= c0 or r1 <= r0:
            return None
        return r0, r1, c0, c1

    def rect(self, u0: float, v0: float, u1: float, v1: float, cls: int | None, color: Color,
             mat: int, height: float | None = 0.0) -> None:
        """Fill a rectangle; ``cls=None`` paints the image only (markings)."""
        b = self.box(u0, v0, u1, v1)
        if b is None:
            return
        sl = np.s_[b[0]:b[1], b[2]:b[3]]
        self.img[sl] = color
        self.mat[sl] = mat
        if cls is not None:
            self.cls[sl] = cls
        if height is not None:
            self.hgt[sl] = height

    def shade(self, u0: float, v0: float, u1: float, v1: float, factor: float,
              step: tuple[int, int] = (1, 1)) -> None:
        """Multiply the image in a rectangle (every ``step`` row/column): texture lines."""
        b = self.box(u0, v0, u1, v1)
        if b is not None:
            self.img[b[0]:b[1]:step[0], b[2]:b[3]:step[1]] *= factor

    def local(self, u0: float, v0: float, u1: float, v1: float
              ) -> tuple[tuple[slice, slice], np.ndarray, np.ndarray] | None:
        """Slice of a rectangle plus pixel-centre coordinates relative to its corner."""
        b = self.box(u0, v0, u1, v1)
        if b is None:
            return None
        a = (np.arange(b[2], b[3], dtype=np.float32) + 0.5 - u0)[None, :]
        d = (np.arange(b[0], b[1], dtype=np.float32) + 0.5 - v0)[:, None]
        return np.s_[b[0]:b[1], b[2]:b[3]], a, d

    # objects ---------------------------------------------------------------------------
    def roof(self, u0: float, v0: float, u1: float, v1: float, kind: str, color: Color,
             eave: float) -> None:
        """A building: gabled, hipped or flat roof with face shading, tiles and height."""
        loc = self.local(u0, v0, u1, v1)
        if loc is None:
            return
        sl, a, d = loc
        L, W = u1 - u0, v1 - v0
        rng = self.rng
        da = np.minimum(a, L - a)  # distance to the left/right walls
        dd = np.minimum(d, W - d)  # distance to the top/bottom walls
        zeros = np.zeros_like(da + dd)
        # Outward horizontal normal of the face each pixel belongs to.
        if kind == "flat":
            dist, nx, ny = np.minimum(da, dd) + zeros, zeros, zeros
        elif kind == "gable":  # ridge along u
            dist = dd + zeros
            nx, ny = zeros, np.where(d < W / 2, -1.0, 1.0) + zeros
        elif kind == "gable_v":  # ridge along v
            dist = da + zeros
            nx, ny = np.where(a < L / 2, -1.0, 1.0) + zeros, zeros
        else:  # hip: the nearest wall decides the face
            near_side = da < dd
            dist = np.minimum(da, dd) + zeros
            nx = np.where(near_side, np.where(a < L / 2, -1.0, 1.0), 0.0) + zeros
            ny = np.where(near_side, 0.0, np.where(d < W / 2, -1.0, 1.0)) + zeros
        out = np.empty((*dist.shape, 4), np.float32)
        out[:] = color
        if kind == "flat":
            height = eave + zeros
            f = 1.0 + 0.12 * (dist < 3)  # parapet
        else:
            pitch = math.radians(rng.uniform(30, 45))
            height = eave + np.minimum(dist, 60) * math.tan(pitch) / PX_PER_M
            elev = math.radians(45)
            sun3 = (math.cos(elev) * self.sun[0], math.cos(elev) * self.sun[1], math.sin(elev))
            lam = (nx * math.sin(pitch) * sun3[0] + ny * math.sin(pitch) * sun3[1]
                   + math.cos(pitch) * sun3[2]) / sun3[2]
            f = np.clip(lam, 0.45, 1.35)
            if color[0] > color[2] + 40:  # clay tiles: rows parallel to the eave
                f = f * (1.0 - 0.13 * ((dist % 5.0) < 1.3))
            f = f * (1.0 - 0.25 * (dist < 1.5))  # eave line
        out *= f[..., None]
        self.img[sl] = out
        self.hgt[sl] = height
        self.cls[sl] = BUILDING
        self.mat[sl] = M_FLATROOF if kind == "flat" else M_ROOF
        self._roof_details(u0, v0, u1, v1, kind, eave)

    def _roof_details(self, u0: float, v0: float, u1: float, v1: float, kind: str,
                      eave: float) -> None:
        """Skylights, chimneys and air-conditioning boxes: texture that stays building."""
        rng = self.rng
        L, W = u1 - u0, v1 - v0
        if kind == "flat":
            for _ in range(rng.integers(0, 2 + int(L * W / 6000))):
                w, h = rng.uniform(6, 16), rng.uniform(6, 14)
                if L - w - 12 < 6 or W - h - 12 < 6:
                    break
                pu, pv = u0 + rng.uniform(6, L - w - 6), v0 + rng.uniform(6, W - h - 6)
                g = rng.uniform(165, 205)
                self.rect(pu, pv, pu + w, pv + h, BUILDING, (g, g, g - 4, g * 0.7), M_FLATROOF,
                          eave + rng.uniform(0.8, 2.0))
            return
        for _ in range(rng.integers(0, 4)):
            w, h = rng.uniform(6, 10), rng.uniform(7, 12)
            if L - w - 16 < 8 or W - h - 16 < 8:
                break
            pu, pv = u0 + rng.uniform(8, L - w - 8), v0 + rng.uniform(8, W - h - 8)
            self.rect(pu, pv, pu + w, pv + h, BUILDING, (60, 68, 82, 50), M_FLATROOF, None)
        if rng.random() < 0.5 and L > 30 and W > 30:
            pu, pv = u0 + rng.uniform(10, L - 16), v0 + rng.uniform(10, W - 16)
            b = self.box(pu, pv, pu + 6, pv + 6)
            if b is not None:
                top = float(self.hgt[b[0]:b[1], b[2]:b[3]].max()) + 1.0
                self.rect(pu, pv, pu + 6, pv + 6, BUILDING, (120, 92, 84, 90), M_FLATROOF, top)

    def tree(self, cu: float, cv: float, r: float, top: float, color: Color) -> None:
        """A round crown of a few lobes, lit from the sun's side, domed in height."""
        rng = self.rng
        lobes = [(0.0, 0.0, r)]
        for _ in range(rng.integers(0, 4)):
            ang = rng.uniform(0, 2 * math.pi)
            off = rng.uniform(0.3, 0.55) * r
            lobes.append((off * math.cos(ang), off * math.sin(ang), r * rng.uniform(0.5, 0.75)))
        ext = 1.6 * r
        loc = self.local(cu - ext, cv - ext, cu + ext, cv + ext)
        if loc is None:
            return
        sl, a, d = loc
        du, dv = a - ext, d - ext
        z = np.zeros(np.broadcast_shapes(du.shape, dv.shape), np.float32)
        for lu, lv, lr in lobes:  # dome height of the union of lobes
            q = 1.0 - ((du - lu) ** 2 + (dv - lv) ** 2) / (lr * lr)
            z = np.maximum(z, np.sqrt(np.clip(q, 0, None)) * (lr / r) ** 0.5)
        inside = z > 0
        if not inside.any():
            return
        lit = 0.72 + 0.42 * (du * self.sun[0] + dv * self.sun[1]) / r
        f = np.clip(lit, 0.4, 1.25) * (0.65 + 0.35 * z)
        px = np.asarray(color, np.float32) * f[..., None]
        self.img[sl][inside] = px[inside]
        self.cls[sl][inside] = TREE
        self.mat[sl][inside] = M_TREE
        h = top * (0.55 + 0.45 * z)
        self.hgt[sl][inside] = np.maximum(self.hgt[sl][inside], h[inside])

    def car(self, cu: float, cv: float, along_u: bool, heading: int) -> None:
        """A car centred at (cu, cv), its long axis along u or v, windows towards ``heading``."""
        rng = self.rng
        length, width = rng.uniform(40, 48), rng.uniform(17, 20)
        lu, lv = (length, width) if along_u else (width, length)
        u0, v0 = cu - lu / 2, cv - lv / 2
        loc = self.local(u0, v0, u0 + lu, v0 + lv)
        if loc is None:
            return
        sl, a, d = loc
        a, d = np.broadcast_arrays(a, d)
        t = a / length if along_u else d / length  # 0..1 along the car
        s = d / width if along_u else a / width  # 0..1 across
        if heading < 0:
            t = 1.0 - t
        corner = (np.minimum(t, 1 - t) * length < 3) & (np.minimum(s, 1 - s) * width < 3)
        body = ~corner
        color = CAR_COLORS[rng.integers(len(CAR_COLORS))]
        px = np.empty((*t.shape, 4), np.float32)
        px[:] = color
        glass = ((t > 0.22) & (t < 0.36) | (t > 0.74) & (t < 0.84)) & (np.abs(s - 0.5) < 0.4)
        roof = (t >= 0.36) & (t <= 0.74) & (np.abs(s - 0.5) < 0.4)
        px[glass] = (40, 46, 54, 30)
        px[roof] *= 1.08
        edge = (np.minimum(s, 1 - s) < 0.12)[..., None]
        px = np.where(edge, px * 0.8, px)
        self.img[sl][body] = px[body]
        self.cls[sl][body] = CAR
        self.mat[sl][body] = M_CAR
        self.hgt[sl][body] = np.where(roof | glass, 1.5, 1.1)[body]

    def container(self, u0: float, v0: float, u1: float, v1: float) -> None:
        """A ribbed skip or shipping container: clutter with ~2.5 m height."""
        color = CONTAINER_COLORS[self.rng.integers(len(CONTAINER_COLORS))]
        self.rect(u0, v0, u1, v1, CLUTTER, color, M_CONTAINER, self.rng.uniform(1.8, 2.8))
        if u1 - u0 > v1 - v0:
            self.shade(u0, v0, u1, v1, 0.82, (1, 4))
        else:
            self.shade(u0, v0, u1, v1, 0.82, (4, 1))
        self.shade(u0, v0, u1, v0 + 1.5, 1.15)

    def soil(self, u0: float, v0: float, u1: float, v1: float, round_: bool = False) -> None:
        """Bare soil, sand or rubble: clutter at ground level."""
        c = SOIL
        j = self.rng.uniform(0.88, 1.1)
        color: Color = (c[0] * j, c[1] * j, c[2] * j, c[3] * j)
        if not round_:
            self.rect(u0, v0, u1, v1, CLUTTER, color, M_SOIL, 0.0)
            return
        loc = self.local(u0, v0, u1, v1)
        if loc is None:
            return
        sl, a, d = loc
        ru, rv = (u1 - u0) / 2, (v1 - v0) / 2
        m = ((a - ru) / ru) ** 2 + ((d - rv) / rv) ** 2 < 1
        self.img[sl][m] = color
        self.cls[sl][m] = CLUTTER
        self.mat[sl][m] = M_SOIL
        self.hgt[sl][m] = 0.0


class _City:
    """Lays out streets, blocks and their contents on a canvas, then draws them."""

    REGION_MARGIN = 600  # streets are laid out beyond the canvas so blocks are whole

    def __init__(self, cv: _Canvas) -> None:
        self.cv = cv
        self.rng = cv.rng
        self.trees: list[tuple[float, float, float, float, Color]] = []

    # layout ----------------------------------------------------------------------------
    def _lines(self) -> list[list[float]]:
        """Centre lines and widths of parallel streets, 360..560 px apart."""
        rng = self.rng
        lo, hi = -self.REGION_MARGIN, self.cv.S + self.REGION_MARGIN
        out: list[list[float]] = []
        x = lo + rng.uniform(0, 250)
        while x < hi:
            main = rng.random() < 0.3
            out.append([x, rng.uniform(76, 98) if main else rng.uniform(44, 60)])
            x += rng.uniform(380, 580)
        return out

    def build(self) -> None:
        rng, S = self.rng, self.cv.S
        lo, hi = -self.REGION_MARGIN, S + self.REGION_MARGIN
        hs = self._lines()  # horizontal streets (y, width): full length
        vs = self._lines()  # vertical streets (x, width): some end at a T-junction
        spans: list[tuple[float, float]] = []
        main = int(np.argmax([w for _, w in vs]))
        ys = [lo, *(y for y, _ in hs), hi]
        for i in range(len(vs)):
            if i == main or rng.random() > 0.3 or len(hs) < 2:
                spans.append((lo, hi))
                continue
            a = int(rng.integers(0, len(ys) - 2))
            b = int(rng.integers(a + 1, len(ys) - 1)) + 1
            if a == 0 and b == len(ys) - 1:
                b -= 1
            spans.append((ys[a], ys[b]))

        # Blocks: in each band between two horizontal streets, the rectangles between
        # the vertical streets present in that band.
        bands = [(lo, 0.0), *((y, w) for y, w in hs), (hi, 0.0)]
        blocks = []
        for (ya, wa), (yb, wb) in itertools.pairwise(bands):
            present = [(x, w) for (x, w), (s0, s1) in zip(vs, spans, strict=True)
                       if s0 <= ya + 1 and s1 >= yb - 1]
            cols = [(lo, 0.0), *present, (hi, 0.0)]
            for (xa, wxa), (xb, wxb) in itertools.pairwise(cols):
                blk = (xa + wxa / 2, ya + wa / 2, xb - wxb / 2, yb - wb / 2)
                if blk[2] - blk[0] > 60 and blk[3] - blk[1] > 60 and self._visible(blk):
                    blocks.append(blk)

        for x, w in hs:
            self.cv.rect(lo, x - w / 2, hi, x + w / 2, IMPERVIOUS, ASPHALT, M_ASPHALT)
        for (x, w), (s0, s1) in zip(vs, spans, strict=True):
            self.cv.rect(x - w / 2, s0, x + w / 2, s1, IMPERVIOUS, ASPHALT, M_ASPHALT)
        for blk in blocks:
            self._block(blk)
        # Street furniture on the asphalt, then cars, then every crown on top.
        for (x, w), (s0, s1) in zip(vs, spans, strict=True):
            cross = [(y, wy) for y, wy in hs if s0 - 1 <= y <= s1 + 1]
            self._street(x, w, s0, s1, cross, vertical=True)
        for y, w in hs:
            cross = [(x, wx) for (x, wx), (s0, s1) in zip(vs, spans, strict=True)
                     if s0 - 1 <= y <= s1 + 1]
            self._street(y, w, lo, hi, cross, vertical=False)
        for t in self.trees:
            self.cv.tree(*t)

    def _visible(self, box: tuple[float, float, float, float]) -> bool:
        return box[2] > 0 and box[3] > 0 and box[0] < self.cv.S and box[1] < self.cv.S

    # streets ---------------------------------------------------------------------------
    def _street(self, c: float, w: float, s0: float, s1: float,
                cross: list[tuple[float, float]], vertical: bool) -> None:
        """Centre line dashes, zebra crossings and parked/driving cars of one street."""
        rng, cv = self.rng, self.cv

        def mark(t0: float, t1: float, o0: float, o1: float) -> None:
            """White paint (image only) from t0 to t1 along, o0 to o1 across the street."""
            if vertical:
                cv.rect(c + o0, t0, c + o1, t1, None, MARKING, M_MARKING, None)
            else:
                cv.rect(t0, c + o0, t1, c + o1, None, MARKING, M_MARKING, None)

        segs = []
        start = s0
        for p, pw in sorted(cross):
            if p - pw / 2 - start > 30:
                segs.append((start, p - pw / 2))
            start = max(start, p + pw / 2)
        if s1 - start > 30:
            segs.append((start, s1))
        for t0, t1 in segs:
            if t1 < -100 or t0 > cv.S + 100:
                continue
            if w >= 70:  # dashed centre line
                for t in np.arange(t0 + 20, t1 - 30, 48.0):
                    mark(t, t + 24, -1.5, 1.5)
            for end, sign in ((t0, 1), (t1, -1)):
                if rng.random() < 0.25:  # zebra crossing next to the junction
                    z0 = end + sign * 6
                    for o in np.arange(-w / 2 + 5, w / 2 - 8, 10.0):
                        mark(min(z0, z0 + sign * 30), max(z0, z0 + sign * 30), o, o + 5)
            free = []
            for side in (-1, 1):  # cars parked along the kerb
                if rng.random() < 0.55:
                    free.append(side)
                    continue
                off = side * (w / 2 - 13)
                t = t0 + rng.uniform(6, 40)
                while t < t1 - 50:
                    if rng.random() < 0.65:
                        self._car_at(c, off, t + 24, vertical, int(rng.choice([-1, 1])))
                    t += 48 + (rng.uniform(2, 20) if rng.random() < 0.8
                               else rng.uniform(60, 180))
            for side in free:  # a car driving in a lane without parked cars
                if rng.random() < 0.4:
                    t = rng.uniform(t0 + 30, max(t0 + 31, t1 - 30))
                    self._car_at(c, side * max(w / 4, 12.0), t, vertical, side)

    def _car_at(self, c: float, off: float, t: float, vertical: bool, heading: int) -> None:
        if vertical:
            self.cv.car(c + off, t, along_u=False, heading=heading)
        else:
            self.cv.car(t, c + off, along_u=True, heading=heading)

    # blocks ----------------------------------------------------------------------------
    def _block(self, blk: tuple[float, float, float, float]) -> None:
        """Sidewalk ring, then one kind of land use inside."""
        rng, cv = self.rng, self.cv
        u0, v0, u1, v1 = blk
        sw = rng.uniform(10, 18)
        cv.rect(u0, v0, u1, v1, IMPERVIOUS, PAVING, M_PAVING)
        cv.shade(u0, v0, u1, v1, 0.9, (12, 1))
        cv.shade(u0, v0, u1, v1, 0.9, (1, 12))
        for e in ((u0, v0, u1, v0 + 2), (u0, v1 - 2, u1, v1), (u0, v0, u0 + 2, v1),
                  (u1 - 2, v0, u1, v1)):
            cv.shade(*e, 1.18)  # kerb stones
        lot = (u0 + sw, v0 + sw, u1 - sw, v1 - sw)
        j = rng.uniform(0.9, 1.1)
        lawn: Color = (LAWN[0] * j, LAWN[1] * rng.uniform(0.95, 1.06), LAWN[2] * j, LAWN[3])
        cv.rect(*lot, LOW_VEG, lawn, M_LAWN, 0.0)
        # Street trees on the sidewalk along some sides.
        for side in range(4):
            if rng.random() < 0.6:
                self._tree_row(blk, sw, side)
        kind = rng.choice(["houses", "apartments", "park", "commercial", "yard"],
                          p=[0.36, 0.31, 0.08, 0.13, 0.12])
        lw, lh = lot[2] - lot[0], lot[3] - lot[1]
        if min(lw, lh) < 120:
            kind = "park"
        getattr(self, f"_{kind}")(lot)

    def _tree_row(self, blk: tuple[float, float, float, float], sw: float, side: int) -> None:
        rng = self.rng
        u0, v0, u1, v1 = blk
        r0 = rng.uniform(14, 22)
        step = rng.uniform(2.4, 3.6) * r0
        if side < 2:
            v = v0 + sw / 2 if side == 0 else v1 - sw / 2
            ts = np.arange(u0 + rng.uniform(20, 40), u1 - 20, step)
            pts = [(t, v) for t in ts]
        else:
            u = u0 + sw / 2 if side == 2 else u1 - sw / 2
            ts = np.arange(v0 + rng.uniform(20, 40), v1 - 20, step)
            pts = [(u, t) for t in ts]
        for pu, pv in pts:
            self._add_tree(pu, pv, r0 * rng.uniform(0.85, 1.15))

    def _add_tree(self, u: float, v: float, r: float) -> None:
        j = self.rng.uniform(0.85, 1.15)
        g = TREE_GREEN
        color: Color = (g[0] * j * self.rng.uniform(0.9, 1.1), g[1] * j, g[2] * j, g[3] * j)
        self.trees.append((u, v, r, self.rng.uniform(4, 8) * (r / 25) ** 0.5 + 2, color))

    def _scatter_trees(self, lot: tuple[float, float, float, float], n: int,
                       rmin: float = 14, rmax: float = 30, clusters: int = 0) -> None:
        """Trees at free spots of a lot (not on roofs), optionally in clusters."""
        rng, cv = self.rng, self.cv
        u0, v0, u1, v1 = lot
        centres = [(rng.uniform(u0, u1), rng.uniform(v0, v1)) for _ in range(clusters)]
        for _ in range(n):
            for _try in range(6):
                if centres:
                    cu, cv_ = centres[rng.integers(len(centres))]
                    u, v = cu + rng.normal(0, 45), cv_ + rng.normal(0, 45)
                else:
                    u, v = rng.uniform(u0, u1), rng.uniform(v0, v1)
                r = rng.uniform(rmin, rmax)
                if not (u0 + r * 0.5 < u < u1 - r * 0.5 and v0 + r * 0.5 < v < v1 - r * 0.5):
                    continue
                pts = [(u, v), (u + 0.7 * r, v), (u - 0.7 * r, v), (u, v + 0.7 * r),
                       (u, v - 0.7 * r)]
                if any(0 <= int(pv) < cv.S and 0 <= int(pu) < cv.S
                       and cv.cls[int(pv), int(pu)] == BUILDING for pu, pv in pts):
                    continue
                self._add_tree(u, v, r)
                break

    def _roof_kind(self) -> tuple[str, Color]:
        rng = self.rng
        kind = str(rng.choice(["gable", "gable_v", "hip", "flat"], p=[0.4, 0.15, 0.3, 0.15]))
        if kind == "flat":
            return kind, FLAT_ROOF_COLORS[rng.integers(len(FLAT_ROOF_COLORS))]
        return kind, ROOF_COLORS[int(rng.choice(6, p=[0.25, 0.2, 0.15, 0.17, 0.13, 0.1]))]

    def _houses(self, lot: tuple[float, float, float, float]) -> None:
        """Detached houses along the streets, driveways, gardens with trees and beds."""
        rng, cv = self.rng, self.cv
        u0, v0, u1, v1 = lot
        depth_max = min(115.0, 0.42 * min(u1 - u0, v1 - v0))
        placed: list[tuple[float, float, float, float]] = []
        drives: list[tuple[float, float, float, float]] = []
        for side in (0, 1, 2, 3):
            horizontal = side < 2
            t_lo, t_hi = (u0, u1) if horizontal else (v0, v1)
            t = t_lo + rng.uniform(4, 30)
            while True:
                a, dep = rng.uniform(80, 140), rng.uniform(66, max(67.0, depth_max))
                back = rng.uniform(6, 26)
                if t + a > t_hi - 4:
                    break
                if horizontal:
                    e0 = v0 + back if side == 0 else v1 - back - dep
                    house = (t, e0, t + a, e0 + dep)
                else:
                    e0 = u0 + back if side == 2 else u1 - back - dep
                    house = (e0, t, e0 + dep, t + a)
                gap = rng.uniform(14, 46)
                if not any(_overlap(house, p, 14) for p in placed) and \
                        not any(_overlap(house, p, 0) for p in drives):
                    kind, color = self._roof_kind()
                    if kind == "gable" or kind == "gable_v":
                        kind = "gable" if horizontal else "gable_v"
                    cv.roof(*house, kind, color, rng.uniform(5, 9))
                    placed.append(house)
                    if gap > 32 and rng.random() < 0.6:
                        drives.append(self._driveway(lot, side, t + a + 4, min(gap - 8, 28),
                                                     back + dep * 0.8))
                t += a + gap
        area = (u1 - u0) * (v1 - v0)
        self._beds(lot, int(rng.integers(1, 5)))
        if rng.random() < 0.5:  # a garden shed
            for _ in range(4):
                w, h = rng.uniform(18, 30), rng.uniform(16, 26)
                pu, pv = rng.uniform(u0, u1 - w), rng.uniform(v0, v1 - h)
                if not any(_overlap((pu, pv, pu + w, pv + h), p, 10) for p in placed):
                    cv.roof(pu, pv, pu + w, pv + h, "flat", FLAT_ROOF_COLORS[1], 2.5)
                    break
        self._scatter_trees(lot, int(area / 4500 * rng.uniform(0.7, 1.3)), 12, 30,
                            clusters=int(rng.integers(0, 3)))

    def _driveway(self, lot: tuple[float, float, float, float], side: int, t: float,
                  width: float, length: float) -> tuple[float, float, float, float]:
        """A cobbled driveway from the street to beside a house, sometimes with a car."""
        rng, cv = self.rng, self.cv
        u0, v0, u1, v1 = lot
        if side < 2:
            e0, e1 = (v0, v0 + length) if side == 0 else (v1 - length, v1)
            box = (t, e0, t + width, e1)
        else:
            e0, e1 = (u0, u0 + length) if side == 2 else (u1 - length, u1)
            box = (e0, t, e1, t + width)
        cv.rect(*box, IMPERVIOUS, COBBLE, M_COBBLE)
        if rng.random() < 0.5 and length > 52 and width >= 22:
            cu, cvv = (box[0] + box[2]) / 2, (box[1] + box[3]) / 2
            cv.car(cu, cvv, along_u=side >= 2, heading=int(rng.choice([-1, 1])))
        return box

    def _beds(self, lot: tuple[float, float, float, float], n: int) -> None:
        """Small clutter patches: vegetable beds, compost, sandpits."""
        rng = self.rng
        u0, v0, u1, v1 = lot
        for _ in range(n):
            w, h = rng.uniform(18, 45), rng.uniform(14, 35)
            if u1 - u0 <= w or v1 - v0 <= h:
                continue
            pu, pv = rng.uniform(u0, u1 - w), rng.uniform(v0, v1 - h)
            b = self.cv.box(pu, pv, pu + w, pv + h)
            if b is None or (self.cv.cls[b[0]:b[1], b[2]:b[3]] == BUILDING).any():
                continue
            self.cv.soil(pu, pv, pu + w, pv + h, round_=bool(rng.random() < 0.5))

    def _apartments(self, lot: tuple[float, float, float, float]) -> None:
        """A perimeter block with a courtyard, or parallel slabs with parking between."""
        rng, cv = self.rng, self.cv
        u0, v0, u1, v1 = lot
        lw, lh = u1 - u0, v1 - v0
        kind, color = self._roof_kind()
        eave = rng.uniform(8, 13)
        d = rng.uniform(62, 90)
        if min(lw, lh) > 2 * d + 90 and rng.random() < 0.5:
            s = rng.uniform(0, 10)
            a0, b0, a1, b1 = u0 + s, v0 + s, u1 - s, v1 - s
            k1 = "flat" if kind == "flat" else "gable"
            k2 = "flat" if kind == "flat" else "gable_v"
            cv.roof(a0, b0, a1, b0 + d, k1, color, eave)
            cv.roof(a0, b1 - d, a1, b1, k1, color, eave)
            cv.roof(a0, b0 + d, a0 + d, b1 - d, k2, color, eave)
            cv.roof(a1 - d, b0 + d, a1, b1 - d, k2, color, eave)
            inner = (a0 + d + 6, b0 + d + 6, a1 - d - 6, b1 - d - 6)
            iw, ih = inner[2] - inner[0], inner[3] - inner[1]
            cv.rect(inner[0] + iw * 0.3, inner[1], inner[0] + iw * 0.3 + 14, inner[3],
                    IMPERVIOUS, PAVING, M_PAVING)
            if rng.random() < 0.6:
                cv.rect(inner[0], inner[1] + ih * 0.6, inner[2], inner[1] + ih * 0.6 + 30,
                        IMPERVIOUS, COBBLE, M_COBBLE)
            for _ in range(int(rng.integers(1, 4))):
                bu, bv = inner[0] + rng.uniform(0, max(1.0, iw - 30)), inner[1] + 2
                cv.container(bu, bv, bu + 14, bv + 12)
            self._beds(inner, int(rng.integers(0, 2)))
            self._scatter_trees(inner, int(iw * ih / 8000) + 1, 14, 32)
            return
        along_u = lw >= lh
        short = lh if along_u else lw
        gap = rng.uniform(70, 110)
        n = max(1, int((short + gap - 20) // (d + gap)))
        spare = short - n * d - (n - 1) * gap
        pos = (u0 if not along_u else v0) + spare / 2
        k = "flat" if kind == "flat" else ("gable" if along_u else "gable_v")
        e = rng.uniform(12, 30)
        for i in range(n):
            if along_u:
                cv.roof(u0 + e, pos, u1 - e, pos + d, k, color, eave)
            else:
                cv.roof(pos, v0 + e, pos + d, v1 - e, k, color, eave)
            if i < n - 1 and rng.random() < 0.6:  # parking strip in front of the slab
                p0 = pos + d + 8
                if along_u:
                    self._parking(u0 + e, p0, u1 - e, p0 + 52, along_u=True)
                else:
                    self._parking(p0, v0 + e, p0 + 52, v1 - e, along_u=False)
            pos += d + gap
        self._beds(lot, int(rng.integers(0, 3)))
        for _ in range(int(rng.integers(0, 3))):
            pu, pv = rng.uniform(u0, u1 - 16), rng.uniform(v0, v1 - 12)
            b = cv.box(pu, pv, pu + 16, pv + 12)
            if b is not None and not (cv.cls[b[0]:b[1], b[2]:b[3]] == BUILDING).any():
                cv.container(pu, pv, pu + 16, pv + 12)
        self._scatter_trees(lot, int(lw * lh / 6000 * rng.uniform(0.6, 1.2)), 14, 34,
                            clusters=int(rng.integers(0, 3)))

    def _parking(self, u0: float, v0: float, u1: float, v1: float, along_u: bool,
                 fill: float | None = None) -> None:
        """One row of perpendicular bays, with white bay lines and parked cars."""
        rng, cv = self.rng, self.cv
        cv.rect(u0, v0, u1, v1, IMPERVIOUS, ASPHALT, M_ASPHALT)
        fill = rng.uniform(0.3, 0.75) if fill is None else fill
        t_lo, t_hi = (u0, u1) if along_u else (v0, v1)
        for t in np.arange(t_lo + 2, t_hi - 24, 26.0):
            if along_u:
                cv.rect(t, v0, t + 2, v1 - 4, None, MARKING, M_MARKING, None)
                if rng.random() < fill:
                    cv.car(t + 14, (v0 + v1) / 2, along_u=False, heading=1)
            else:
                cv.rect(u0, t, u1 - 4, t + 2, None, MARKING, M_MARKING, None)
                if rng.random() < fill:
                    cv.car((u0 + u1) / 2, t + 14, along_u=True, heading=1)

    def _commercial(self, lot: tuple[float, float, float, float]) -> None:
        """A large flat-roofed hall and its car park, edged with lawn and trees."""
        rng, cv = self.rng, self.cv
        u0, v0, u1, v1 = lot
        along_u = (u1 - u0) >= (v1 - v0)
        m = rng.uniform(8, 16)
        frac = rng.uniform(0.45, 0.62)
        color = FLAT_ROOF_COLORS[rng.integers(len(FLAT_ROOF_COLORS))]
        if along_u:
            cut = u0 + (u1 - u0) * frac
            cv.roof(u0 + m, v0 + m, cut, v1 - m, "flat", color, rng.uniform(6, 12))
            lot_box = (cut + 14, v0 + m, u1 - m, v1 - m)
        else:
            cut = v0 + (v1 - v0) * frac
            cv.roof(u0 + m, v0 + m, u1 - m, cut, "flat", color, rng.uniform(6, 12))
            lot_box = (u0 + m, cut + 14, u1 - m, v1 - m)
        a0, b0, a1, b1 = lot_box
        cv.rect(a0, b0, a1, b1, IMPERVIOUS, ASPHALT, M_ASPHALT)
        # Rows of bays across the car park: bay row, aisle, bay row, ...
        if along_u:
            v = b0 + 4
            while v + 50 <= b1:
                self._parking(a0 + 4, v, a1 - 4, v + 50, along_u=True)
                v += 50 + (60 if int((v - b0) // 50) % 2 == 0 else 8)
        else:
            u = a0 + 4
            while u + 50 <= a1:
                self._parking(u, b0 + 4, u + 50, b1 - 4, along_u=False)
                u += 50 + (60 if int((u - a0) // 50) % 2 == 0 else 8)
        if rng.random() < 0.7:
            for _ in range(int(rng.integers(2, 6))):
                w, h = (rng.uniform(40, 60), rng.uniform(18, 24))
                pu, pv = rng.uniform(u0, max(u0 + 1, u1 - w)), v0 + rng.uniform(0, 8)
                b = cv.box(pu, pv, pu + w, pv + h)
                if b is not None and not (cv.cls[b[0]:b[1], b[2]:b[3]] == BUILDING).any():
                    cv.container(pu, pv, pu + w, pv + h)
        self._scatter_trees((u0, v0, u1, v1), int(rng.integers(2, 8)), 14, 26)

    def _park(self, lot: tuple[float, float, float, float]) -> None:
        """Mown lawn with paths, a round plaza, a sandpit and clusters of trees."""
        rng, cv = self.rng, self.cv
        u0, v0, u1, v1 = lot
        lw, lh = u1 - u0, v1 - v0
        for v in np.arange(v0, v1, 36.0):  # mowing stripes
            cv.shade(u0, v, u1, min(v + 18, v1), 1.06)
        pu = u0 + lw * rng.uniform(0.3, 0.7)
        pv = v0 + lh * rng.uniform(0.3, 0.7)
        pw = rng.uniform(10, 16)
        if rng.random() < 0.8:
            cv.rect(pu - pw / 2, v0, pu + pw / 2, v1, IMPERVIOUS, PAVING, M_PAVING)
        if rng.random() < 0.6:
            cv.rect(u0, pv - pw / 2, u1, pv + pw / 2, IMPERVIOUS, PAVING, M_PAVING)
        r = min(rng.uniform(26, 48), lw / 3, lh / 3)
        loc = cv.local(pu - r, pv - r, pu + r, pv + r)
        if loc is not None and r > 8:
            sl, a, d = loc
            m = (a - r) ** 2 + (d - r) ** 2 < r * r
            cv.img[sl][m] = COBBLE
            cv.cls[sl][m] = IMPERVIOUS
            cv.mat[sl][m] = M_COBBLE
        if rng.random() < 0.6 and min(lw, lh) > 120:
            w, h = rng.uniform(30, 60), rng.uniform(30, 50)
            su, sv = rng.uniform(u0, u1 - w), rng.uniform(v0, v1 - h)
            cv.soil(su, sv, su + w, sv + h, round_=bool(rng.random() < 0.5))
        self._scatter_trees(lot, int(lw * lh / 3500 * rng.uniform(0.6, 1.2)), 16, 40,
                            clusters=int(rng.integers(1, 4)))

    def _yard(self, lot: tuple[float, float, float, float]) -> None:
        """A builder's yard or allotment: bare soil, containers, a site hut, a field."""
        rng, cv = self.rng, self.cv
        u0, v0, u1, v1 = lot
        lw, lh = u1 - u0, v1 - v0
        along_u = lw >= lh
        frac = rng.uniform(0.35, 0.6)
        if along_u:
            soil = (u0 + 6, v0 + 6, u0 + lw * frac, v1 - 6)
            field = (u0 + lw * frac + 10, v0, u1, v1)
        else:
            soil = (u0 + 6, v0 + 6, u1 - 6, v0 + lh * frac)
            field = (u0, v0 + lh * frac + 10, u1, v1)
        cv.rect(*field, LOW_VEG, FIELD, M_FIELD, 0.0)
        if along_u:
            cv.shade(*field, 0.9, (1, 7))
        else:
            cv.shade(*field, 0.9, (7, 1))
        cv.soil(*soil)
        a0, b0, a1, b1 = soil
        for _ in range(int(rng.integers(3, 8))):
            w, h = (rng.uniform(40, 64), rng.uniform(16, 24))
            if rng.random() < 0.5:
                w, h = h, w
            if a1 - a0 <= w + 4 or b1 - b0 <= h + 4:
                continue
            pu, pv = rng.uniform(a0 + 2, a1 - w - 2), rng.uniform(b0 + 2, b1 - h - 2)
            cv.container(pu, pv, pu + w, pv + h)
        if rng.random() < 0.6 and a1 - a0 > 80 and b1 - b0 > 60:
            pu, pv = rng.uniform(a0, a1 - 60), rng.uniform(b0, b1 - 40)
            cv.roof(pu, pv, pu + 56, pv + 36, "flat", FLAT_ROOF_COLORS[1], 3.0)
        self._scatter_trees(field, int(rng.integers(0, 4)), 14, 30)


def _overlap(a: tuple[float, float, float, float], b: tuple[float, float, float, float],
             margin: float) -> bool:
    return not (a[2] + margin <= b[0] or b[2] + margin <= a[0]
                or a[3] + margin <= b[1] or b[3] + margin <= a[1])


# --------------------------------------------------------------------------------------
# From canvas to tile: rotation, texture, illumination, shadows, labels
# --------------------------------------------------------------------------------------

def _noise(rng: np.random.Generator, shape: tuple[int, int], sigma: float) -> np.ndarray:
    """Gaussian noise low-passed at ``sigma`` px and rescaled to unit variance."""
    n = rng.standard_normal(shape, dtype=np.float32)
    if sigma > 0:
        n = cv2.GaussianBlur(n, (0, 0), sigma, borderType=cv2.BORDER_REFLECT)
        n *= 2.0 * math.sqrt(math.pi) * sigma  # std of blurred white noise is 1/(2 sqrt(pi) s)
    return n


def _smooth_field(rng: np.random.Generator, size: int, cells: int) -> np.ndarray:
    """A smooth random field (unit-ish amplitude) varying over ``size / cells`` px."""
    coarse = rng.standard_normal((cells + 1, cells + 1)).astype(np.float32)
    return cv2.resize(coarse, (size, size), interpolation=cv2.INTER_CUBIC)


def _shadow(hgt: np.ndarray, sun: tuple[float, float], elevation: float) -> np.ndarray:
    """Fraction in shadow (0..1) of each pixel, cast from the height map.

    The horizon (highest sun-ray obstruction) is swept on a 4x coarser max-pooled grid,
    then compared with the full-resolution heights, so walls stay crisp and the far
    edge of a shadow is softened a little like a penumbra.
    """
    f = 4
    H, W = hgt.shape
    Hp, Wp = -(-H // f) * f, -(-W // f) * f
    padded = np.zeros((Hp, Wp), np.float32)
    padded[:H, :W] = hgt
    coarse = padded.reshape(Hp // f, f, Wp // f, f).max(axis=(1, 3))
    drop = f * math.tan(elevation) / PX_PER_M  # metres the ray rises per coarse pixel
    steps = math.ceil(float(coarse.max()) / drop) if coarse.max() > 0 else 0
    horizon = np.zeros_like(coarse)
    h, w = coarse.shape
    for k in range(1, steps + 1):
        dx, dy = round(k * sun[0]), round(k * sun[1])
        if abs(dx) >= w or abs(dy) >= h:
            break
        # horizon[y, x] = max(coarse[y + dy, x + dx] - k * drop)
        src = coarse[max(dy, 0):h + min(dy, 0), max(dx, 0):w + min(dx, 0)] - k * drop
        dst = horizon[max(-dy, 0):h + min(-dy, 0), max(-dx, 0):w + min(-dx, 0)]
        np.maximum(dst, src, out=dst)
    up = cv2.resize(horizon, (Wp, Hp), interpolation=cv2.INTER_LINEAR)[:H, :W]
    shade = np.clip((up - hgt - 0.2) / 0.6, 0, 1).astype(np.float32)
    return cv2.GaussianBlur(shade, (0, 0), 1.0)


def _boundary_band(cls: np.ndarray, radius: int) -> np.ndarray:
    """Pixels within ``radius`` of a pixel of another class (ISPRS eroded boundaries)."""
    k = cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (2 * radius + 1, 2 * radius + 1))
    return cv2.dilate(cls, k) != cv2.erode(cls, k)


def _off_palette(colors: np.ndarray, cls: np.ndarray, frac: float,
                 rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """Mask of pixels to recolour and their new, slightly-off colours.

    A pixel next to another class gets the blend of both colours (as anti-aliasing
    would), any other pixel a one-level nudge of its own colour; neither is a palette
    colour nor black, so readers must report them.
    """
    pick = rng.random(cls.shape) < frac
    neighbour = np.roll(colors, 2, axis=1)
    blend = ((colors.astype(np.uint16) + neighbour) // 2).astype(np.uint8)
    nudge = colors.copy()
    ch = rng.integers(0, 3, size=cls.shape)
    rows, cols = np.nonzero(pick)
    nudge[rows, cols, ch[rows, cols]] ^= 1
    differs = np.roll(cls, 2, axis=1) != cls
    out = np.where(differs[..., None], blend, nudge)
    return pick, out


def _render_tile(tid: str, size: int, seed: int, sun_az: float, sun_el: float,
                 off_palette: float) -> dict[str, np.ndarray]:
    """All rasters of one tile: 'RGBIR' (H, W, 4), 'ndsm' (H, W), colour labels 'label'
    and 'label_nb' (H, W, 3), and the class indices 'cls' (H, W)."""
    r, c = (int(p) for p in tid.split("_"))
    rng = np.random.default_rng([seed, r, c, 1])
    theta = 0.0 if rng.random() < 0.35 else rng.uniform(-0.7, 0.7)
    cos_t, sin_t = math.cos(theta), math.sin(theta)
    side = size if theta == 0.0 else math.ceil(size * (abs(cos_t) + abs(sin_t))) + 6
    # Vector towards the sun in tile pixels (x right, y down; azimuth clockwise from N).
    sun_t = (math.sin(sun_az), -math.cos(sun_az))
    # canvas = centre_s + R(theta) (tile - centre_t), so directions turn by R(theta).
    sun_c = (cos_t * sun_t[0] - sin_t * sun_t[1], sin_t * sun_t[0] + cos_t * sun_t[1])
    canvas = _Canvas(side, rng, sun_c)
    _City(canvas).build()

    cls, mat, img, hgt = canvas.cls, canvas.mat, canvas.img, canvas.hgt
    if theta != 0.0:
        cs, ct = (side - 1) / 2, (size - 1) / 2
        M = np.array([[cos_t, -sin_t, cs - (cos_t * ct - sin_t * ct)],
                      [sin_t, cos_t, cs - (sin_t * ct + cos_t * ct)]], np.float64)
        flags_n = cv2.INTER_NEAREST | cv2.WARP_INVERSE_MAP
        flags_l = cv2.INTER_LINEAR | cv2.WARP_INVERSE_MAP
        cls = cv2.warpAffine(cls, M, (size, size), flags=flags_n)
        mat = cv2.warpAffine(mat, M, (size, size), flags=flags_n)
        img = cv2.warpAffine(img, M, (size, size), flags=flags_l)
        hgt = cv2.warpAffine(hgt, M, (size, size), flags=flags_l)

    # Texture: luminance noise at two scales, scaled per material; hue drift in plants.
    tex = 1.0 + _TEX_FINE[mat] * _noise(rng, (size, size), 0.8) \
        + _TEX_MED[mat] * _noise(rng, (size, size), 2.5)
    img *= tex[..., None]
    veg = _VEGETATION[mat]
    drift = _smooth_field(rng, size, max(2, size // 96)) * veg
    img[..., 0] += 10 * drift
    img[..., 1] += 6 * drift
    img[..., 3] += 12 * drift
    # Illumination varies slowly across the tile (haze, vignetting of the mosaic).
    img *= (1.0 + 0.05 * _smooth_field(rng, size, 3))[..., None]
    # Cast shadows darken the image only, bluish in the visible, strongly in the NIR.
    sh = _shadow(hgt, sun_t, sun_el)[..., None]
    img *= 1.0 - sh * np.array([0.58, 0.56, 0.48, 0.62], np.float32)
    img = cv2.GaussianBlur(img, (0, 0), 0.6)
    img += rng.standard_normal(img.shape, dtype=np.float32) * 2.0
    image = np.clip(img + 0.5, 0, 255).astype(np.uint8)

    ndsm_m = cv2.GaussianBlur(hgt, (0, 0), 1.2)
    ndsm_m += np.abs(rng.standard_normal(ndsm_m.shape, dtype=np.float32)) * 0.04
    ndsm = np.clip(np.round(ndsm_m / NDSM_SCALE_M), 0, 255).astype(np.uint8)

    label = ISPRS.colorize(cls)
    label_nb = label.copy()
    label_nb[_boundary_band(cls, BOUNDARY_RADIUS)] = 0
    if off_palette > 0:
        pick, off = _off_palette(label, cls, off_palette, np.random.default_rng([seed, r, c, 2]))
        label[pick] = off[pick]
        keep = pick & label_nb.any(axis=-1)
        label_nb[keep] = off[keep]
    return {"RGBIR": image, "ndsm": ndsm, "label": label, "label_nb": label_nb, "cls": cls}


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
    paths = tile_paths(root, tid)
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
        rasters = _render_tile(tid, size, seed, sun_az, sun_el, off_palette)
        _write_tile(root, tid, rasters, size)
        if log_fn is not None:
            split = "train" if tid in POTSDAM_TRAIN_TILES else "test"
            log_fn(f"wrote tile {tid} ({split}, {size}x{size} px): "
                   f"{tile_paths(root, tid)['RGB'].name} and 5 siblings")
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


def ensure_synthetic(root: str | Path, tiles: int = 6, size: int = 1024, seed: int = 0) -> Path:
    """Make sure ``root`` holds the synthetic dataset with these parameters.

    Generates only when ``root/SYNTHETIC.json`` is missing or differs. Safe when many
    processes call it at once (multirun jobs, DDP ranks): each generates into its own
    hidden sibling folder and renames it into place; whoever loses the race discards
    its copy. ``root`` never holds a half-written dataset. A non-empty ``root`` without
    a marker is not ours and is never overwritten.
    """
    root = Path(root).expanduser().absolute()
    want = _params(tiles, size, seed, 0.0)
    if _marker_matches(root, want):
        return root
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


# --------------------------------------------------------------------------------------
# Command line
# --------------------------------------------------------------------------------------

def main(argv: list[str] | None = None) -> int:
    """``python -m sssi.data.synthetic --out DIR [--tiles N] [--size PX] [--seed S]``."""
    p = argparse.ArgumentParser(
        prog="python -m sssi.data.synthetic",
        description="Write a procedural aerial dataset in the ISPRS Potsdam layout.")
    p.add_argument("--out", required=True, help="dataset root to write (data.root)")
    p.add_argument("--tiles", type=int, default=6, help="number of tiles (default 6)")
    p.add_argument("--size", type=int, default=1024, help="tile side in pixels (default 1024)")
    p.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
    p.add_argument("--off-palette", type=float, default=0.0, metavar="FRACTION",
                   help="fraction of label pixels given near-palette colours (default 0)")
    args = p.parse_args(argv)
    t0 = time.perf_counter()
    try:
        root = generate(args.out, tiles=args.tiles, size=args.size, seed=args.seed,
                        off_palette=args.off_palette, log_fn=lambda s: print(s, flush=True))
    except (SssiError, OSError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    print(f"synthetic Potsdam dataset ({args.tiles} tiles) written to {root} in "
          f"{time.perf_counter() - t0:.1f} s; use data.root={root}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
