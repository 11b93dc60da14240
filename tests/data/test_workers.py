"""init_worker: DataLoader workers keep freed memory instead of mapping fresh pages."""

from __future__ import annotations

import ctypes
import subprocess
import sys
import textwrap

import pytest

from sssi.data import SegmentationDataModule
from sssi.data.workers import init_worker


def _has_mallinfo2() -> bool:
    if not sys.platform.startswith("linux"):
        return False
    try:
        ctypes.CDLL("libc.so.6").mallinfo2  # noqa: B018 (glibc >= 2.33)
    except (OSError, AttributeError):
        return False
    return True


# Counts the blocks glibc serves with mmap while a 4 MB array is alive, before and
# after the worker set-up: by default such a block is mapped (and unmapped when freed).
_PROBE = textwrap.dedent("""
    import ctypes, sys
    import numpy as np
    from sssi.data.workers import init_worker

    class Info(ctypes.Structure):
        _fields_ = [(n, ctypes.c_size_t) for n in ("arena", "ordblks", "smblks", "hblks",
                    "hblkhd", "usmblks", "fsmblks", "uordblks", "fordblks", "keepcost")]

    libc = ctypes.CDLL("libc.so.6")
    libc.mallinfo2.restype = Info

    def mapped_while_alive() -> int:
        before = libc.mallinfo2().hblks
        block = np.ones(4 << 20, dtype=np.uint8)
        mapped = libc.mallinfo2().hblks - before
        del block
        return mapped

    default = mapped_while_alive()
    init_worker(0)
    print(default, mapped_while_alive())
""")


@pytest.mark.skipif(not _has_mallinfo2(), reason="needs glibc's malloc (Linux)")
def test_worker_set_up_keeps_large_blocks_on_the_heap():
    out = subprocess.run([sys.executable, "-c", _PROBE], capture_output=True, text=True,
                         check=True).stdout.split()
    assert out == ["1", "0"]  # mapped by default, served from the heap after init_worker


def test_every_loader_sets_its_workers_up(synthetic_root):
    dm = SegmentationDataModule(root=str(synthetic_root), crop_size=32, batch_size=2,
                                num_workers=1, samples_per_epoch=4)
    dm.setup("fit")
    loaders = [dm.train_dataloader(), dm.val_dataloader()]
    assert all(loader.worker_init_fn is init_worker for loader in loaders)
    batch = next(iter(loaders[0]))  # a real worker starts with it
    assert batch["image"].shape == (2, 3, 32, 32)
