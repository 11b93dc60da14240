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

Handing a shared block over costs a round trip too: the main process asks the worker's
resource-sharer thread for the block's file descriptor, and that thread waits for the
worker's busy main thread (~1 ms per descriptor on a 2-core VM, two per batch). So a
pooled block, and the worker's board, cross once: the main process keeps them mapped
(keyed by worker pid and slot) and later batches name their slot. Each batch still gets
a storage of its own over that memory, whose lifetime the watch follows.

The sssi datasets go one step further: they read a whole batch (``__getitems__``)
straight into a :class:`BatchRoom`, the batch's memory in the pooled block, and hand
over a :class:`WindowBatch` that :func:`collate_windows` passes through.
"""

from __future__ import annotations

import math
import os
import threading
from collections.abc import Sequence
from typing import Any, NamedTuple

import numpy as np
import torch
from torch.multiprocessing.reductions import StorageWeakRef
from torch.utils.data import default_collate, get_worker_info

__all__ = ["BatchRoom", "PackedBatch", "TensorSpec", "WindowBatch", "collate_windows"]

_ALIGN = 64  # bytes: every tensor starts on a cache line (and any dtype's alignment)
POOL_SIZE = 16  # pooled blocks per worker (prefetched + held batches, with room to spare)
_FREE, _BUSY = 0, 1

#: Batches unpacked in this process: ``fresh`` blocks and ``recycled`` ones; ``mapped``:
#: pooled blocks that crossed from a worker (once each).
stats = {"fresh": 0, "recycled": 0, "mapped": 0}


class PackedBatch:
    """A collated batch as one ``uint8`` buffer plus where each tensor lies in it.

    Unpickling rebuilds the plain batch dict. An unpooled buffer pickles as its block
    (:func:`unpack`); a pooled one as the worker's pid, its slot and its size, with the
    block and the worker's board only the first time they cross (:func:`unpack_pooled`).
    """

    def __init__(self, buffer: torch.Tensor, layout: list[tuple[str, Any]],
                 pool: _Pool | None = None, slot: int | None = None,
                 recycled: bool = False) -> None:
        self.buffer, self.layout, self.slot, self.recycled = buffer, layout, slot, recycled
        self.pid = self.block = self.board = None
        if pool is not None and slot is not None:
            self.pid = pool.pid
            self.block = pool.blocks[slot] if slot not in pool.shipped else None
            self.board = pool.board if not pool.shipped else None
            pool.shipped.add(slot)  # each batch is pickled once, for the main process

    def __reduce__(self):
        if self.pid is None:
            return unpack, (self.buffer, self.layout)
        return unpack_pooled, (self.pid, self.slot, self.buffer.numel(), self.layout,
                               self.block, self.board, self.recycled)


def unpack(buffer: torch.Tensor, layout: list[tuple[str, Any]],
           board: np.ndarray | None = None, slot: int | None = None,
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


# ------------------------------------------ main process: mapped blocks and the watch
_watched: list[tuple[StorageWeakRef, np.ndarray, int]] = []
_watch_lock = threading.RLock()  # batches are unpacked by the main or the pin thread
_blocks: dict[tuple[int, int], np.ndarray] = {}  # (worker pid, slot) -> its pooled block
_boards: dict[int, np.ndarray] = {}  # worker pid -> its board of flags


def unpack_pooled(pid: int, slot: int, nbytes: int, layout: list[tuple[str, Any]],
                  block: torch.Tensor | None, board: torch.Tensor | None,
                  recycled: bool) -> dict[str, Any]:
    """A batch in slot ``slot`` of worker ``pid``'s pool (see :func:`unpack`). ``block``
    and ``board`` come with the first batch of that slot and of that worker: they are
    kept mapped here, and each batch views the block through a storage of its own (the
    watch follows that one, not the block)."""
    with _watch_lock:
        if board is not None:  # a worker's first batch: forget the blocks of gone ones
            _forget_gone_workers()
            _boards[pid] = board.numpy()
        if block is not None:
            _blocks[(pid, slot)] = block.numpy()
            stats["mapped"] += 1
        try:
            memory, flags = _blocks[(pid, slot)], _boards[pid]
        except KeyError:
            raise RuntimeError(f"collate: batch in slot {slot} of worker {pid} arrived "
                               "before its shared block; batches of a worker must be "
                               "unpickled in the process that receives its first") from None
    return unpack(torch.from_numpy(memory[:nbytes]), layout, flags, slot, recycled)


def _forget_gone_workers() -> None:
    """Drop the mapped blocks of workers that have exited (batches still held keep
    their memory alive through their own references)."""
    for pid in [p for p in _boards if not _alive(p)]:
        del _boards[pid]
        for key in [k for k in _blocks if k[0] == pid]:
            del _blocks[key]


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except (ProcessLookupError, PermissionError):  # gone, or the pid is someone else's now
        return False
    return True


def _watch(buffer: torch.Tensor, board: np.ndarray, slot: int, recycled: bool) -> None:
    with _watch_lock:
        stats["recycled" if recycled else "fresh"] += 1
        release_unused()
        _watched.append((StorageWeakRef(buffer.untyped_storage()), board, slot))


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
        self.shipped: set[int] = set()  # slots whose block the main process has mapped

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


class TensorSpec(NamedTuple):
    """A batch tensor to make room for: its dtype and its (batch-first) shape."""

    dtype: torch.dtype
    shape: tuple[int, ...]


class BatchRoom:
    """The memory of one batch, allocated where the batch will travel from.

    ``entries`` are ``(key, TensorSpec)`` for tensors and ``(key, value)`` for anything
    else (tile ids), in the batch's key order. :attr:`batch` is the batch dict whose
    tensors are views into one buffer, to be written in place; :meth:`finish` returns
    what a collate function returns: in a DataLoader worker a :class:`PackedBatch`
    over a pooled shared block, in the main process the dict itself. Datasets that
    read a whole batch (``__getitems__``) write their windows straight into it.
    """

    def __init__(self, entries: list[tuple[str, Any]]) -> None:
        layout: list[tuple[str, Any]] = []
        offset = 0
        for key, spec in entries:
            if isinstance(spec, TensorSpec):
                nbytes = spec.dtype.itemsize * math.prod(spec.shape)
                layout.append((key, _Slot(offset, nbytes, spec.dtype, tuple(spec.shape))))
                offset += -(-nbytes // _ALIGN) * _ALIGN
            else:
                layout.append((key, _Value(spec)))
        self.layout = layout
        self.pool: _Pool | None = None
        self.slot: int | None = None
        self.recycled = False
        if get_worker_info() is not None:  # a shared block: pickling hands it over as is
            self.pool = _worker_pool()
            block, self.slot, self.recycled = self.pool.take(offset)
            self.buffer = block[:offset]
        else:
            self.buffer = torch.empty(offset, dtype=torch.uint8)
        self.batch = unpack(self.buffer, layout)

    def finish(self) -> dict[str, Any] | PackedBatch:
        if self.pool is None:
            return self.batch
        return PackedBatch(self.buffer, self.layout, self.pool, self.slot, self.recycled)

    def abandon(self) -> None:
        """Give a pooled block back unused (the batch failed half-way)."""
        if self.pool is not None and self.slot is not None:
            self.pool.flags[self.slot] = _FREE


class WindowBatch(Sequence):
    """A batch a dataset read in one go (``__getitems__``) into a :class:`BatchRoom`.

    :func:`collate_windows` takes the batch as it is; any other collate function sees
    a sequence of per-sample dicts (rows of the batch), so a DataLoader built with
    PyTorch's default collation still gets the same batches. A pooled block that no
    collate function took goes back to its pool when this object goes.
    """

    def __init__(self, room: BatchRoom, size: int) -> None:
        self.room, self.size, self.taken = room, size, False

    def __len__(self) -> int:
        return self.size

    def __getitem__(self, i: int) -> dict[str, Any]:  # type: ignore[override]
        if not 0 <= i < self.size:
            raise IndexError(i)
        return {key: value[i] for key, value in self.room.batch.items()}

    def take(self) -> dict[str, Any] | PackedBatch:
        self.taken = True
        return self.room.finish()

    def __del__(self) -> None:
        if not self.taken:
            self.room.abandon()


def collate_windows(samples: list[dict[str, Any]] | WindowBatch
                    ) -> dict[str, Any] | PackedBatch:
    """Stack ``samples`` (dicts of equal-shaped tensors and other values) into one batch.

    In a DataLoader worker the result is a :class:`PackedBatch` whose tensors share one
    shared-memory block; in the main process, the batch dict itself. Entries that are
    not tensors are collated as PyTorch would (strings become lists). A batch that a
    dataset's ``__getitems__`` already built (:class:`WindowBatch`) passes through.
    """
    if isinstance(samples, WindowBatch):
        return samples.take()
    first = samples[0]
    entries: list[tuple[str, Any]] = []
    for key, value in first.items():
        if torch.is_tensor(value):
            shapes = {tuple(s[key].shape) for s in samples}
            if len(shapes) > 1:
                raise ValueError(different_shapes(key, shapes))
            entries.append((key, TensorSpec(value.dtype, (len(samples), *value.shape))))
        else:
            entries.append((key, default_collate([s[key] for s in samples])))
    room = BatchRoom(entries)
    for key, spec in room.layout:
        if isinstance(spec, _Slot):
            torch.stack([s[key] for s in samples], out=room.batch[key])
    return room.finish()


def different_shapes(key: str, shapes) -> str:
    """The error of a batch whose ``key`` tensors differ in shape."""
    return f"collate: '{key}' has different shapes in one batch: {sorted(shapes)}"
