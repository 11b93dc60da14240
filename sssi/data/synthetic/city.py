"""A synthetic city on a canvas, and the rendering of one tile from it.

``_City`` lays out a connected street grid and fills its blocks (houses, apartment
blocks, parks, commercial lots, yards); ``render_tile`` draws one, rotates it into the
tile and adds texture, illumination, shadows, the nDSM and the colour labels.
"""

from __future__ import annotations

import itertools
import math

import cv2
import numpy as np

from sssi.data.palettes import ISPRS
from sssi.data.synthetic.canvas import (
    ASPHALT,
    BUILDING,
    COBBLE,
    FIELD,
    FLAT_ROOF_COLORS,
    IMPERVIOUS,
    LAWN,
    LOW_VEG,
    M_ASPHALT,
    M_COBBLE,
    M_FIELD,
    M_LAWN,
    M_MARKING,
    M_PAVING,
    MARKING,
    PAVING,
    ROOF_COLORS,
    TEX_FINE,
    TEX_MED,
    TREE_GREEN,
    VEGETATION,
    Canvas,
    Color,
    noise,
    shadow,
    smooth_field,
)

NDSM_SCALE_M = 0.1  # one nDSM grey level = 10 cm, so 0..25.5 m fit in uint8
BOUNDARY_RADIUS = 2  # noBoundary labels: pixels this close to another class turn black


class _City:
    """Lays out streets, blocks and their contents on a canvas, then draws them."""

    REGION_MARGIN = 600  # streets are laid out beyond the canvas so blocks are whole

    def __init__(self, cv: Canvas) -> None:
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


def render_tile(tid: str, size: int, seed: int, sun_az: float, sun_el: float,
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
    canvas = Canvas(side, rng, sun_c)
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
    tex = 1.0 + TEX_FINE[mat] * noise(rng, (size, size), 0.8) \
        + TEX_MED[mat] * noise(rng, (size, size), 2.5)
    img *= tex[..., None]
    veg = VEGETATION[mat]
    drift = smooth_field(rng, size, max(2, size // 96)) * veg
    img[..., 0] += 10 * drift
    img[..., 1] += 6 * drift
    img[..., 3] += 12 * drift
    # Illumination varies slowly across the tile (haze, vignetting of the mosaic).
    img *= (1.0 + 0.05 * smooth_field(rng, size, 3))[..., None]
    # Cast shadows darken the image only, bluish in the visible, strongly in the NIR.
    sh = shadow(hgt, sun_t, sun_el)[..., None]
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

