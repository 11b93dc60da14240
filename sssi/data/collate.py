"""Collating windows into batches: one shared-memory block per batch from a worker.

A DataLoader worker hands its batches to the main process through shared memory, and
PyTorch gives every tensor of a batch a block of its own: a training batch (image,
label, augmentation parameters, window) is four blocks, each handed over as its own
file descriptor. On a small machine that hand-over costs about as much as reading the
windows (``experiments/benchmarks/data_pipeline.py``, row ``ship``).
:func:`collate_windows` stacks a batch's tensors into one block instead; the main
process receives a :class:`PackedBatch` and unpickles it straight into the usual dict
of tensors (views into that block), so nothing downstream sees the difference.

Allocating a fresh block per batch is the other half of the cost (the kernel hands
out and zeroes every page, ~5 ms for a batch of 16 windows of 256 px on a small VM).
So each worker keeps its blocks in a small pool (:class:`_Pool`) and reuses one only
when the main process has let go of it: the main process watches the storage of each
batch it unpacked (a weak reference) and, once no tensor uses it any more, marks the
block free on a board of flags the worker shares with it. A block whose batch is still
held anywhere is never reused; when every pooled block is held, the worker allocates a
fresh one.
"""

from __future__ import annotations

import os
import threading
from typing import Any

import numpy as np
import torch
from torch.multiprocessing.reductions import StorageWeakRef
from torch.utils.data import default_collate, get_worker_info

__all__ = ["PackedBatch", "collate_windows"]

_ALIGN = 64  # bytes: every tensor starts on a cache line (and any dtype's alignment)
POOL_SIZE = 16  # pooled blocks per worker (prefetched + held batches, with room to spare)
_FREE, _BUSY = 0, 1

#: Batches unpacked in this process: ``fresh`` blocks and ``recycled`` ones.
stats = {"fresh": 0, "recycled": 0}


class PackedBatch:
    """A collated batch as one ``uint8`` buffer plus where each tensor lies in it.

    Pickles as the buffer (one shared-memory block between processes) and the layout;
    unpickling rebuilds the plain batch dict (:func:`unpack`). ``board``/``slot``: the
    worker's pool flags and the block's place in them (None for an unpooled block).
    """

    def __init__(self, buffer: torch.Tensor, layout: list[tuple[str, Any]],
                 board: torch.Tensor | None = None, slot: int | None = None,
                 recycled: bool = False) -> None:
        self.buffer, self.layout = buffer, layout
        self.board, self.slot, self.recycled = board, slot, recycled

    def __reduce__(self):
        return unpack, (self.buffer, self.layout, self.board, self.slot, self.recycled)


def unpack(buffer: torch.Tensor, layout: list[tuple[str, Any]],
           board: torch.Tensor | None = None, slot: int | None = None,
           recycled: bool = False) -> dict[str, Any]:
    """The batch dict, in the samples' key order: tensors are views into ``buffer``.
    With a ``board``, the block is watched and handed back to its worker's pool once
    nothing in this process uses it."""
    out: dict[str, Any] = {}
    for key, spec in layout:
        if isinstance(spec, _Slot):
            out[key] = buffer[spec.offset:spec.offset + spec.nbytes].view(spec.dtype) \
                .view(spec.shape)
        else:
            out[key] = spec.value
    if board is not None and slot is not None:
        _watch(buffer, board, slot, recycled)
    return out


# ----------------------------------------------------------- main process: the watch
_watched: list[tuple[StorageWeakRef, np.ndarray, int]] = []
_watch_lock = threading.RLock()  # batches are unpacked by the main or the pin thread


def _watch(buffer: torch.Tensor, board: torch.Tensor, slot: int, recycled: bool) -> None:
    with _watch_lock:
        stats["recycled" if recycled else "fresh"] += 1
        release_unused()
        _watched.append((StorageWeakRef(buffer.untyped_storage()), board.numpy(), slot))


def release_unused() -> int:
    """Mark free, on their workers' boards, the blocks no tensor here uses any more
    (called as each batch arrives); returns how many are still in use."""
    with _watch_lock:
        keep = []
        for ref, flags, slot in _watched:
            if ref.expired():
                flags[slot] = _FREE
            else:
                keep.append((ref, flags, slot))
        _watched[:] = keep
        return len(keep)


# ----------------------------------------------------------------- worker: the pool
class _Pool:
    """A worker's shared blocks and the board of flags it shares with the main process."""

    def __init__(self, size: int = POOL_SIZE) -> None:
        self.pid = os.getpid()
        self.board = _shared_bytes(size)
        self.board.zero_()
        self.flags = self.board.numpy()
        self.blocks: list[torch.Tensor] = []

    def take(self, nbytes: int) -> tuple[torch.Tensor, int | None, bool]:
        """``(block, slot, recycled)``: a free pooled block of at least ``nbytes``, a
        new pooled one while the pool has room, else a fresh unpooled one (slot None)."""
        for slot, block in enumerate(self.blocks):
            if self.flags[slot] == _FREE and block.numel() >= nbytes:
                self.flags[slot] = _BUSY
                return block, slot, True
        block = _shared_bytes(nbytes)
        if len(self.blocks) < len(self.flags):
            self.blocks.append(block)
            self.flags[len(self.blocks) - 1] = _BUSY
            return block, len(self.blocks) - 1, False
        return block, None, False


_pool: _Pool | None = None


def _worker_pool() -> _Pool:
    global _pool
    if _pool is None or _pool.pid != os.getpid():  # never a pool inherited across fork
        _pool = _Pool()
    return _pool


def _shared_bytes(nbytes: int) -> torch.Tensor:
    """A ``uint8`` tensor of ``nbytes`` in shared memory (pickled as its block, no copy)."""
    storage = torch.UntypedStorage._new_shared(max(nbytes, 1))
    return torch.empty(0, dtype=torch.uint8).set_(storage)[:nbytes]


class _Slot:
    """Where one stacked tensor lies in the buffer."""

    __slots__ = ("dtype", "nbytes", "offset", "shape")

    def __init__(self, offset: int, nbytes: int, dtype: torch.dtype, shape: tuple[int, ...]):
        self.offset, self.nbytes, self.dtype, self.shape = offset, nbytes, dtype, shape

    def __reduce__(self):
        return _Slot, (self.offset, self.nbytes, self.dtype, self.shape)


class _Value:
    """A collated non-tensor entry (tile ids, ...), pickled by value."""

    __slots__ = ("value",)

    def __init__(self, value: Any) -> None:
        self.value = value

    def __reduce__(self):
        return _Value, (self.value,)


def collate_windows(samples: list[dict[str, Any]]) -> dict[str, Any] | PackedBatch:
    """Stack ``samples`` (dicts of equal-shaped tensors and other values) into one batch.

    In a DataLoader worker the result is a :class:`PackedBatch` whose tensors share one
    shared-memory block; in the main process, the batch dict itself. Entries that are
    not tensors are collated as PyTorch would (strings become lists).
    """
    first = samples[0]
    layout: list[tuple[str, Any]] = []
    offset = 0
    for key, value in first.items():
        if torch.is_tensor(value):
            shapes = {tuple(s[key].shape) for s in samples}
            if len(shapes) > 1:
                raise ValueError(f"collate: '{key}' has different shapes in one batch: "
                                 f"{sorted(shapes)}")
            shape = (len(samples), *value.shape)
            nbytes = value.element_size() * value.numel() * len(samples)
            layout.append((key, _Slot(offset, nbytes, value.dtype, shape)))
            offset += -(-nbytes // _ALIGN) * _ALIGN
        else:
            layout.append((key, _Value(default_collate([s[key] for s in samples]))))
    worker = get_worker_info() is not None
    pool = slot = None
    recycled = False
    if worker:  # a shared block: pickling hands it over as is
        pool = _worker_pool()
        block, slot, recycled = pool.take(offset)
        buffer = block[:offset]
    else:
        buffer = torch.empty(offset, dtype=torch.uint8)
    batch = unpack(buffer, layout)
    for key, spec in layout:
        if isinstance(spec, _Slot):
            torch.stack([s[key] for s in samples], out=batch[key])
    if pool is None:
        return batch
    return PackedBatch(buffer, layout, pool.board if slot is not None else None, slot, recycled)
