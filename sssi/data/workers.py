"""What every DataLoader worker does once when it starts (:func:`init_worker`).

A worker's hot path allocates a few arrays per window (the rasterio read, the decoded
label, OpenCV's outputs), each a few hundred kB. glibc's malloc serves blocks that
large with ``mmap`` and gives them back to the kernel when freed, so every window
pays for fresh pages again (the kernel zeroes each one): on a small VM that doubled a
512 px sample's cost (``experiments/benchmarks/data_pipeline.py``). A worker keeps
its freed memory instead: its working set is a few batches, and it is the same from
one window to the next.
"""

from __future__ import annotations

import ctypes
import sys

_M_TRIM_THRESHOLD = -1  # mallopt parameters (glibc's malloc.h)
_M_MMAP_THRESHOLD = -3
#: Blocks up to this size come from the heap (glibc's own upper limit on 64-bit).
MMAP_THRESHOLD = 32 << 20
#: Free memory at the heap's top kept for reuse before it is handed back.
TRIM_THRESHOLD = 256 << 20


def keep_freed_memory() -> bool:
    """Ask glibc's malloc to reuse freed blocks instead of returning them to the kernel
    (``mallopt``). True if it took effect; False off glibc (macOS, musl), where the
    allocator behaves otherwise and nothing is changed."""
    if not sys.platform.startswith("linux"):
        return False
    try:
        mallopt = ctypes.CDLL("libc.so.6").mallopt
    except (OSError, AttributeError):
        return False
    mallopt.argtypes = (ctypes.c_int, ctypes.c_int)
    return bool(mallopt(_M_MMAP_THRESHOLD, MMAP_THRESHOLD)) and \
        bool(mallopt(_M_TRIM_THRESHOLD, TRIM_THRESHOLD))


def init_worker(worker_id: int) -> None:
    """``worker_init_fn`` of every sssi loader: keep freed memory.

    (OpenCV's thread count is left alone: a forked worker that calls
    ``cv2.setNumThreads`` after the parent used OpenCV's pool can deadlock on the
    pool's lock, and the per-window calls are too small for OpenCV to split anyway.)"""
    del worker_id
    keep_freed_memory()
