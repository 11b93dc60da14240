"""Writing Lightning checkpoints so that no failure leaves a truncated one.

Lightning's own writer stages a checkpoint in the system's temporary folder and moves
it into place; when the run folder is on another volume the move is a copy, and a copy
that hits a full disk leaves a truncated file under the final name. Here every
checkpoint (last, periodic, best, the crop budgets') is written beside its final name
and renamed when complete (:func:`sssi.utils.io.atomic_writer`); a full or read-only
target is one error naming the file, and the previous checkpoint stays intact.

A disk that fills during ``torch.save`` is named as such too
(:func:`sssi.utils.io.torch_save`).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from lightning.fabric.plugins.io.torch_io import TorchCheckpointIO

from sssi.utils.io import atomic_writer, remove_stale_temporaries, torch_save


class AtomicCheckpointIO(TorchCheckpointIO):
    """:class:`TorchCheckpointIO` whose writes are atomic on the checkpoint's own volume
    (``sssi.train`` gives it to every Trainer without a checkpoint plugin of its own).
    Hidden temporaries that a killed run left in a checkpoint folder are removed, with
    a warning, at the first write there."""

    def __init__(self) -> None:
        super().__init__()
        self._swept: set[Path] = set()

    def save_checkpoint(self, checkpoint: dict[str, Any], path: Any,
                        storage_options: Any | None = None) -> None:
        if storage_options is not None:
            raise TypeError("AtomicCheckpointIO.save_checkpoint takes no storage_options")
        path = Path(path)
        if path.parent not in self._swept:
            self._swept.add(path.parent)
            remove_stale_temporaries(path.parent)  # a process killed mid-write
        with atomic_writer(path) as fh:
            torch_save(checkpoint, fh)
