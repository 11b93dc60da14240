"""Collating windows into batches: one shared-memory block per batch from a worker.

A DataLoader worker hands its batches to the main process through shared memory, and
PyTorch gives every tensor of a batch a block of its own: a training batch (image,
label, augmentation parameters, window) is four blocks, each handed over as its own
file descriptor. On a small machine that hand-over costs about as much as reading the
windows (``experiments/benchmarks/data_pipeline.py``, row ``ship``).
:func:`collate_windows` stacks a batch's tensors into one block instead; the main
process receives a :class:`PackedBatch` and unpickles it straight into the usual dict
of tensors (views into that block), so nothing downstream sees the difference.
"""

from __future__ import annotations

from typing import Any

import torch
from torch.utils.data import default_collate, get_worker_info

__all__ = ["PackedBatch", "collate_windows"]

_ALIGN = 64  # bytes: every tensor starts on a cache line (and any dtype's alignment)


class PackedBatch:
    """A collated batch as one ``uint8`` buffer plus where each tensor lies in it.

    Pickles as the buffer (one shared-memory block between processes) and the layout;
    unpickling rebuilds the plain batch dict (:func:`unpack`).
    """

    def __init__(self, buffer: torch.Tensor, layout: list[tuple[str, Any]]) -> None:
        self.buffer = buffer
        self.layout = layout

    def __reduce__(self):
        return unpack, (self.buffer, self.layout)

    def unpack(self) -> dict[str, Any]:
        return unpack(self.buffer, self.layout)


def unpack(buffer: torch.Tensor, layout: list[tuple[str, Any]]) -> dict[str, Any]:
    """The batch dict, in the samples' key order: tensors are views into ``buffer``."""
    out: dict[str, Any] = {}
    for key, spec in layout:
        if isinstance(spec, _Slot):
            out[key] = buffer[spec.offset:spec.offset + spec.nbytes].view(spec.dtype) \
                .view(spec.shape)
        else:
            out[key] = spec.value
    return out


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
            shape = (len(samples), *value.shape)
            nbytes = value.element_size() * value.numel() * len(samples)
            layout.append((key, _Slot(offset, nbytes, value.dtype, shape)))
            offset += -(-nbytes // _ALIGN) * _ALIGN
        else:
            layout.append((key, _Value(default_collate([s[key] for s in samples]))))
    worker = get_worker_info() is not None
    if worker:  # allocated in shared memory, so pickling it hands over the block as is
        buffer = torch.empty(0, dtype=torch.uint8).set_(
            torch.UntypedStorage._new_shared(max(offset, 1)))[:offset]
    else:
        buffer = torch.empty(offset, dtype=torch.uint8)
    batch = unpack(buffer, layout)
    for key, spec in layout:
        if isinstance(spec, _Slot):
            shapes = {tuple(s[key].shape) for s in samples}
            if len(shapes) > 1:
                raise ValueError(f"collate: '{key}' has different shapes in one batch: "
                                 f"{sorted(shapes)}")
            torch.stack([s[key] for s in samples], out=batch[key])
    return PackedBatch(buffer, layout) if worker else batch
