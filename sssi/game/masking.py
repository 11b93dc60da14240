"""Mask policies: which pixels of an image the inpainter has to restore.

A policy maps a batch of images ``(B, C, H, W)`` to masks ``(B, 1, H, W)``, float32 in
[0, 1] with **1 = erased (hole)** and 0 = visible, on the images' device. Masks are made
where the images already are (the GPU in training), never in dataloader workers, so the
policy can later be swapped for the instructor network without touching the data.

Every random draw comes from the ``generator`` argument when one is given (else torch's
global RNG), so a training task can make the masks a pure function of (seed, step) and
resume exactly. The generator may live on the CPU while the images are on the GPU: the
draws are made on the generator's device and moved, which also makes a CPU generator
give the same masks on every device.
"""

from __future__ import annotations

import functools
import logging
import math
import numbers
from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from sssi.errors import ConfigError

log = logging.getLogger(__name__)

__all__ = [
    "CellTally",
    "CenterHole",
    "MaskPolicy",
    "RandomBlocks",
    "RandomPatches",
    "border_cell_grid",
    "cell_border_stats",
    "check_ratio",
    "check_size",
    "count_holes",
    "mask_stats",
    "sample_normal",
    "sample_randint",
    "sample_uniform",
]

#: Side of the coarse grid :func:`mask_stats` uses to measure how spread the holes are.
COVERAGE_GRID = 4


# --------------------------------------------------------------------------- validation


def check_ratio(value: object, name: str = "mask_policy.random.ratio") -> float:
    """Return ``value`` as a float in (0, 1) or raise :class:`ConfigError` naming ``name``.

    0 would erase nothing and 1 everything; both leave the inpainter nothing to learn.
    """
    if (
        isinstance(value, bool)
        or not isinstance(value, numbers.Real)
        or not 0.0 < float(value) < 1.0
    ):
        raise ConfigError(
            f"{name}={value!r}: expected the erased fraction of pixels, a number strictly "
            f"between 0 and 1"
        )
    return float(value)


def check_size(value: object, name: str) -> int:
    """Return ``value`` as a positive int or raise :class:`ConfigError` naming ``name``."""
    if (
        isinstance(value, bool)
        or not isinstance(value, numbers.Real)
        or not float(value).is_integer()
        or value < 1
    ):
        raise ConfigError(f"{name}={value!r}: expected a positive integer number of pixels")
    return int(value)


def count_holes(ratio: float, n: int) -> int:
    """How many of ``n`` cells a policy erases for ``ratio``: round half up, in [1, n - 1].

    Half-up (not Python's banker's rounding) so the count grows monotonically with
    ``ratio``; clamped so a mask always has at least one hole and one visible cell
    (a single cell, ``n == 1``, is erased).
    """
    k = math.floor(ratio * n + 0.5)
    return max(1, min(k, n - 1)) if n > 1 else 1


def _geometry(images: Tensor) -> tuple[int, int, int]:
    if images.ndim != 4:
        raise ValueError(f"expected images of shape (B, C, H, W), got {tuple(images.shape)}")
    batch, _, height, width = images.shape
    return batch, height, width


# ------------------------------------------------------------------------------ random


def _draw_device(device: torch.device, generator: torch.Generator | None) -> torch.device:
    # torch requires a generator and its draws to share a device.
    return generator.device if generator is not None else device


def sample_uniform(
    shape: tuple[int, ...], device: torch.device, generator: torch.Generator | None = None
) -> Tensor:
    """U[0, 1) float32 draws from ``generator`` (or the global RNG), returned on ``device``."""
    out = torch.rand(shape, generator=generator, device=_draw_device(device, generator))
    return out.to(device)


def sample_normal(
    shape: tuple[int, ...], device: torch.device, generator: torch.Generator | None = None
) -> Tensor:
    """N(0, 1) float32 draws from ``generator`` (or the global RNG), returned on ``device``."""
    out = torch.randn(shape, generator=generator, device=_draw_device(device, generator))
    return out.to(device)


def sample_randint(
    high: int,
    shape: tuple[int, ...],
    device: torch.device,
    generator: torch.Generator | None = None,
) -> Tensor:
    """Integers in [0, high) from ``generator`` (or the global RNG), returned on ``device``."""
    out = torch.randint(high, shape, generator=generator, device=_draw_device(device, generator))
    return out.to(device)


# ---------------------------------------------------------------------------- policies


class MaskPolicy(nn.Module):
    """Base class: ``policy(images, generator=None) -> masks`` with 1 = erased.

    Subclasses set ``ratio`` (the fraction of pixels they erase) and implement
    :meth:`forward`. A policy has no parameters; being an ``nn.Module`` lets configs and
    tasks treat it like the instructor network, which is one.
    """

    ratio: float

    def forward(  # pragma: no cover - interface only
        self, images: Tensor, generator: torch.Generator | None = None
    ) -> Tensor:
        """Masks ``(B, 1, H, W)``, float32 in [0, 1], 1 = hole, on ``images.device``."""
        raise NotImplementedError

    def extra_repr(self) -> str:
        return f"ratio={self.ratio}"


class RandomBlocks(MaskPolicy):
    """Square blocks at random positions until ``ratio`` of each image is erased.

    The random-block masks of Pathak et al. and Singh et al.; the paper's warm-up (16
    blocks of 16x16 on 128x128 crops, 25 %). Blocks lie fully inside the image at any
    pixel position (not grid-aligned) and may overlap. They are added one at a time, and
    each image stops at the first block that brings its erased fraction to ``ratio`` or
    above: the result overshoots the target by less than one block's area and is never
    below it. A block larger than the image is clipped to it.

    Vectorised over the batch: for every pixel the index of the first block covering it
    is tracked, so each image's stopping block follows from a cumulative count. Blocks
    are drawn in chunks sized from the expected count; checking whether a chunk sufficed
    costs one host sync per call (a second chunk is rarely needed).
    """

    def __init__(self, ratio: float = 0.25, block_size: int = 16) -> None:
        super().__init__()
        self.ratio = check_ratio(ratio)
        self.block_size = check_size(block_size, "mask_policy.random.block_size")

    def extra_repr(self) -> str:
        return f"ratio={self.ratio}, block_size={self.block_size}"

    def forward(self, images: Tensor, generator: torch.Generator | None = None) -> Tensor:
        batch, height, width = _geometry(images)
        device = images.device
        bh, bw = min(self.block_size, height), min(self.block_size, width)
        need = max(1, math.ceil(self.ratio * height * width - 1e-6))
        chunk = _block_chunk(height, width, bh, bw, need)

        rows = torch.arange(height, device=device)
        cols = torch.arange(width, device=device)
        unset = torch.iinfo(torch.int64).max
        # first[b, p]: index of the first block that covers pixel p of image b.
        first = torch.full((batch, height * width), unset, dtype=torch.int64, device=device)
        placed = 0
        while True:
            tops = sample_randint(height - bh + 1, (chunk, batch, 1), device, generator)
            lefts = sample_randint(width - bw + 1, (chunk, batch, 1), device, generator)
            in_rows = (rows >= tops) & (rows < tops + bh)  # (chunk, B, H)
            in_cols = (cols >= lefts) & (cols < lefts + bw)  # (chunk, B, W)
            for n in range(chunk):
                block = (in_rows[n, :, :, None] & in_cols[n, :, None, :]).view(batch, -1)
                first = torch.where(block & (first == unset), placed + n, first)
            placed += chunk
            # Pixels first covered by each block; the last bucket collects uncovered ones.
            counts = torch.zeros(batch, placed + 1, dtype=torch.int64, device=device)
            counts.scatter_add_(1, first.clamp(max=placed), torch.ones_like(first))
            covered = counts[:, :placed].cumsum(dim=1)  # erased pixels after blocks 0..n
            if bool((covered[:, -1] >= need).all()):
                break
        stop = (covered < need).sum(dim=1, keepdim=True)  # first block reaching the target
        masks = (first <= stop).to(torch.float32)
        return masks.view(batch, 1, height, width)


@functools.lru_cache(maxsize=64)
def _block_chunk(height: int, width: int, bh: int, bw: int, need: int) -> int:
    """Blocks to draw per chunk: ~1.3x the expected count to reach ``need`` pixels.

    Exact expectation for uniform top-left positions: pixel (i, j) is covered by one block
    with probability p_i * q_j, so after n blocks E[covered] = sum 1 - (1 - p_i q_j)^n.
    Border pixels are covered less often than the interior, which this accounts for.
    """

    def cover_probability(size: int, block: int) -> Tensor:
        positions = size - block + 1
        idx = torch.arange(size, dtype=torch.float64)
        lo = torch.clamp(idx - block + 1, min=0)
        hi = torch.clamp(idx, max=positions - 1)
        return (hi - lo + 1) / positions

    p = cover_probability(height, bh)[:, None] * cover_probability(width, bw)[None, :]
    miss = torch.log1p(-p.clamp(max=1 - 1e-12))

    def expected(n: int) -> float:
        return float((1 - torch.exp(n * miss)).sum())

    lo, hi = 1, 1
    while expected(hi) < need and hi < 1 << 20:
        lo, hi = hi, hi * 2
    while lo < hi:
        mid = (lo + hi) // 2
        lo, hi = (mid + 1, hi) if expected(mid) < need else (lo, mid)
    return max(1, math.ceil(1.3 * lo) + 2)


class RandomPatches(MaskPolicy):
    """A random ``ratio`` of the cells of a ``patch_size`` grid, as in MAE/SimMIM.

    Exactly ``count_holes(ratio, n_cells)`` cells per image are erased (the top-k of
    uniform noise), so the erased pixel fraction equals ``ratio`` up to rounding of the
    cell count when H and W are multiples of ``patch_size``. Otherwise the grid is
    anchored at the top-left and the last row/column of cells is partial (cropped at the
    image border); it is still drawn like any cell, so the pixel fraction is close to,
    but not exactly, ``ratio``.
    """

    def __init__(self, ratio: float = 0.25, patch_size: int = 16) -> None:
        super().__init__()
        self.ratio = check_ratio(ratio)
        self.patch_size = check_size(patch_size, "mask_policy.random.patch_size")

    def extra_repr(self) -> str:
        return f"ratio={self.ratio}, patch_size={self.patch_size}"

    def forward(self, images: Tensor, generator: torch.Generator | None = None) -> Tensor:
        batch, height, width = _geometry(images)
        size = self.patch_size
        grid_h, grid_w = math.ceil(height / size), math.ceil(width / size)
        n_cells = grid_h * grid_w
        k = count_holes(self.ratio, n_cells)
        noise = sample_uniform((batch, n_cells), images.device, generator)
        cells = torch.zeros(batch, n_cells, device=images.device)
        cells.scatter_(1, noise.topk(k, dim=1).indices, 1.0)
        cells = cells.view(batch, 1, grid_h, grid_w)
        masks = cells.repeat_interleave(size, dim=2).repeat_interleave(size, dim=3)
        return masks[:, :, :height, :width].contiguous()


class CenterHole(MaskPolicy):
    """One centred rectangle with the image's aspect and area ``ratio`` (Pathak et al.).

    Deterministic (``generator`` is ignored). The hole is ``round(H * sqrt(ratio))`` rows
    high and as many columns wide as bring its area closest to ``ratio * H * W``; the
    area is exact whenever that product is (e.g. 25 % of an even-sized image).
    """

    def __init__(self, ratio: float = 0.25) -> None:
        super().__init__()
        self.ratio = check_ratio(ratio)

    def forward(self, images: Tensor, generator: torch.Generator | None = None) -> Tensor:
        batch, height, width = _geometry(images)
        hole_h = min(height, max(1, round(height * math.sqrt(self.ratio))))
        hole_w = min(width, max(1, round(self.ratio * height * width / hole_h)))
        top, left = (height - hole_h) // 2, (width - hole_w) // 2
        masks = torch.zeros(batch, 1, height, width, device=images.device)
        masks[:, :, top : top + hole_h, left : left + hole_w] = 1.0
        return masks


# ----------------------------------------------------------------------------- logging


@torch.no_grad()
def mask_stats(masks: Tensor) -> dict[str, Tensor]:
    """Scalar statistics of a batch of masks ``(B, 1, H, W)`` for logging.

    - ``ratio``: mean erased fraction (should match the policy's ``ratio``);
    - ``ratio_std``: its standard deviation across images (0 for exact policies);
    - ``entropy``: mean binary entropy of the mask values in nats: 0 for hard masks,
      ln 2 ~ 0.69 for all-0.5 masks; tracks how soft the instructor's masks are;
    - ``coverage``: fraction of the cells of a coarse 4x4 grid that hold a hole
      (a value >= 0.5), averaged over images; it drops when an instructor collapses all
      its holes into one region.

    Values are detached float32 scalars on the masks' device (no host sync here).
    """
    if masks.ndim != 4:
        raise ValueError(f"expected masks of shape (B, 1, H, W), got {tuple(masks.shape)}")
    m = masks.detach().float()
    per_image = m.mean(dim=(1, 2, 3))
    entropy = torch.special.entr(m) + torch.special.entr(1.0 - m)
    holes = (m >= 0.5).float()
    cells = F.adaptive_max_pool2d(holes, COVERAGE_GRID)
    return {
        "ratio": per_image.mean(),
        "ratio_std": per_image.std(correction=0),
        "entropy": entropy.mean(),
        "coverage": cells.mean(),
    }


def border_cell_grid(
    height: int, width: int, border: int = 1, device: torch.device | str | None = None
) -> Tensor:
    """Bool ``(height, width)`` grid, True for the cells within ``border`` of the edge.

    The crop's edge is where an inpainter has the least context; this ring is what
    :func:`cell_border_stats` watches and ``Instructor(border_cells=...)`` excludes.
    ``border=0`` marks no cell.
    """
    rows = torch.arange(height, device=device)
    cols = torch.arange(width, device=device)
    inner_rows = (rows >= border) & (rows < height - border)
    inner_cols = (cols >= border) & (cols < width - border)
    return ~(inner_rows[:, None] & inner_cols[None, :])


#: Added to both frequencies of :func:`cell_border_stats` so the ratio stays finite.
BORDER_RATIO_EPS = 1e-6


@torch.no_grad()
def cell_border_stats(cells: Tensor, cell_size: int = 1, border: int = 1) -> dict[str, Tensor]:
    """How much more often the outer ring of the cell grid is erased than the inside.

    An instructor can learn that the crop's edge, where the inpainter has the least
    context, is hard to restore: a positional shortcut, not a content choice. This
    measures it.

    ``cells``: hard cell masks ``(B, 1, h, w)`` (1 = erased), or a ``(h, w)`` grid of
    erase frequencies (any leading dimensions are averaged over). With ``cell_size > 1``
    the input is a pixel mask, average-pooled to cells of that many pixels first (a
    partial last row/column of cells is allowed). ``border``: width of the ring in
    cells.

    - ``border_freq``: mean erased fraction of the ring's cells;
    - ``inner_freq``: the same for the other cells;
    - ``border_ratio``: ``(border_freq + eps) / (inner_freq + eps)``, eps = 1e-6: 1.0 =
      no positional bias, large when holes sit on the edge, finite even if the inner
      cells are never erased (a mask without holes gives 1.0). A grid without inner
      cells (a side of at most ``2 * border`` cells) has no contrast to measure:
      ``inner_freq = border_freq`` and the ratio is 1.0.

    Detached float32 scalars on the input's device (no host sync).
    """
    if cells.ndim < 2:
        raise ValueError(f"expected cell masks (..., h, w), got {tuple(cells.shape)}")
    c = cells.detach().float()
    if cell_size > 1:
        c = c.reshape(-1, 1, *c.shape[-2:])
        c = F.avg_pool2d(c, cell_size, ceil_mode=True)
    height, width = c.shape[-2:]
    freq = c.reshape(-1, height, width).mean(dim=0)
    ring = border_cell_grid(height, width, border, device=freq.device)
    n_ring = int(height * width - max(height - 2 * border, 0) * max(width - 2 * border, 0))
    border_freq = (freq * ring).sum() / max(n_ring, 1)
    if n_ring == height * width:
        inner_freq = border_freq
    else:
        inner_freq = (freq * ~ring).sum() / (height * width - n_ring)
    ratio = (border_freq + BORDER_RATIO_EPS) / (inner_freq + BORDER_RATIO_EPS)
    return {"border_freq": border_freq, "inner_freq": inner_freq, "border_ratio": ratio}


class CellTally:
    """The hard cells of many batches summed per position: the instructor's erase
    frequency per cell over a validation set. Batches whose grid differs from the first
    one's (windows of another size) are left out with a warning: positions of two grids
    cannot be compared."""

    def __init__(self) -> None:
        self.sums: Tensor | None = None  # (h, w)
        self.count: Tensor | None = None  # images, a scalar on the same device

    def add(self, cells: Tensor) -> None:
        """Add a batch of hard cell masks ``(B, 1, h, w)`` (on their device: no sync)."""
        total = cells.detach().float().sum(dim=(0, 1))
        if self.sums is None:
            self.sums = total
            self.count = torch.tensor(float(cells.shape[0]), device=total.device)
        elif self.sums.shape == total.shape:
            self.sums += total
            self.count += cells.shape[0]
        else:
            log.warning("validation: instructor grid %s differs from %s; batch left out of "
                        "the cell frequencies", tuple(total.shape), tuple(self.sums.shape))

    def frequency(self, reduce: Callable[[Tensor], Tensor] = lambda t: t
                  ) -> tuple[Tensor, dict[str, Tensor]]:
        """``(frequency, stats)``: the mean hard mask per cell ``(h, w)`` and its
        :func:`cell_border_stats`. ``reduce`` sums a tensor over processes (DDP ranks),
        so each rank's share of the windows counts."""
        assert self.sums is not None and self.count is not None, "no cells were added"
        stacked = reduce(torch.cat([self.sums.flatten(), self.count.view(1)]))
        frequency = (stacked[:-1] / stacked[-1].clamp_min(1)).view(self.sums.shape)
        return frequency, cell_border_stats(frequency)
