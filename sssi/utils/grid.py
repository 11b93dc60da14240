"""Window grids over rasters (pure Python: used by data readers and tensor code alike)."""

from __future__ import annotations


def grid_offsets(length: int, window: int, stride: int) -> list[int]:
    """Window start offsets covering ``[0, length)``; the last window is snapped to the end.

    A length up to the window yields one offset (0); callers pad that window.
    """
    if length <= window:
        return [0]
    offsets = list(range(0, length - window + 1, stride))
    if offsets[-1] != length - window:
        offsets.append(length - window)
    return offsets
