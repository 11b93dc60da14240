"""Drawing of one synthetic scene: materials, colours, texture and the canvas class.

The canvas holds class, height, material and colour rasters in the street grid's own
(axis-aligned) frame; ``city`` lays out what is drawn on it and turns it into a tile.
"""

from __future__ import annotations

import math

import cv2
import numpy as np

#: Objects are drawn at ~10 px per metre (half the nominal scale) so that a 1024 px
#: tile holds a street grid rather than a single roof.
PX_PER_M = 10.0

IMPERVIOUS, BUILDING, LOW_VEG, TREE, CAR, CLUTTER = range(6)

# Materials drive the image texture only (the label comes from the class raster).
(M_ASPHALT, M_PAVING, M_COBBLE, M_MARKING, M_LAWN, M_FIELD, M_TREE, M_ROOF, M_FLATROOF,
 M_CAR, M_SOIL, M_CONTAINER) = range(12)
#: Relative amplitude of fine (1 px) and medium (3 px) luminance texture per material.
TEX_FINE = np.array([0.06, 0.04, 0.09, 0.02, 0.06, 0.07, 0.10, 0.04, 0.05, 0.02, 0.09, 0.03],
                     np.float32)
TEX_MED = np.array([0.04, 0.03, 0.05, 0.01, 0.09, 0.07, 0.22, 0.03, 0.05, 0.0, 0.10, 0.02],
                    np.float32)
VEGETATION = np.zeros(12, bool)
VEGETATION[[M_LAWN, M_FIELD, M_TREE]] = True

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
# Scene drawing: a canvas in the street grid's own frame (axis-aligned streets)
# --------------------------------------------------------------------------------------

class Canvas:
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



# --------------------------------------------------------------------------------------
# Raster helpers: noise, smooth fields, cast shadows
# --------------------------------------------------------------------------------------

def noise(rng: np.random.Generator, shape: tuple[int, int], sigma: float) -> np.ndarray:
    """Gaussian noise low-passed at ``sigma`` px and rescaled to unit variance."""
    n = rng.standard_normal(shape, dtype=np.float32)
    if sigma > 0:
        n = cv2.GaussianBlur(n, (0, 0), sigma, borderType=cv2.BORDER_REFLECT)
        n *= 2.0 * math.sqrt(math.pi) * sigma  # std of blurred white noise is 1/(2 sqrt(pi) s)
    return n


def smooth_field(rng: np.random.Generator, size: int, cells: int) -> np.ndarray:
    """A smooth random field (unit-ish amplitude) varying over ``size / cells`` px."""
    coarse = rng.standard_normal((cells + 1, cells + 1)).astype(np.float32)
    return cv2.resize(coarse, (size, size), interpolation=cv2.INTER_CUBIC)


def shadow(hgt: np.ndarray, sun: tuple[float, float], elevation: float) -> np.ndarray:
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

