"""Files sssi writes appear whole (temporary name, then rename) with ordinary
permissions."""

from __future__ import annotations

import errno
import io
import os
import stat
from pathlib import Path

import pytest
import torch

from sssi.errors import DataError
from sssi.utils.io import atomic_write_bytes, atomic_write_text, atomic_writer, torch_save
from tests.helpers import FillingFile


def test_atomic_writes_replace_whole_files_with_the_umask_permissions(tmp_path):
    old = os.umask(0o022)
    try:
        path = atomic_write_text(tmp_path / "sub" / "table.md", "v1 ü\n")
        assert path.read_text(encoding="utf-8") == "v1 ü\n"
        assert stat.S_IMODE(path.stat().st_mode) == 0o644  # not mkstemp's private 0600
        atomic_write_bytes(path, b"v2")
        assert path.read_bytes() == b"v2"
        assert sorted(p.name for p in path.parent.iterdir()) == ["table.md"]  # no leftovers
    finally:
        os.umask(old)


def test_a_failed_write_keeps_the_old_file_and_leaves_no_temporary(tmp_path, monkeypatch):
    path = atomic_write_text(tmp_path / "metrics.json", "old")

    def disk_full(fd: int) -> None:
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(os, "fsync", disk_full)
    with pytest.raises(DataError) as err:  # one line naming the file
        atomic_write_text(path, "new")
    assert str(err.value) == f"{path}: no space left on device"
    assert path.read_text() == "old"
    assert [p.name for p in tmp_path.iterdir()] == ["metrics.json"]


def test_torch_save_names_the_disk_that_refused_it_not_the_archive_position(tmp_path):
    """torch's archive writer turns a full disk into ``unexpected pos``; the real reason
    comes out, and through atomic_writer as the one line naming the file."""
    state = {"w": torch.arange(100_000, dtype=torch.float32)}
    with pytest.raises(RuntimeError, match="unexpected pos"):  # what torch alone says
        torch.save(state, FillingFile(io.BytesIO(), 1000, errno.ENOSPC))
    with pytest.raises(OSError) as err:
        torch_save(state, FillingFile(io.BytesIO(), 1000, errno.ENOSPC))
    assert err.value.errno == errno.ENOSPC
    target = atomic_write_text(tmp_path / "last.ckpt", "the previous checkpoint")
    for code, reason in ((errno.ENOSPC, "no space left on device"),
                         (errno.EROFS, "read-only file system")):
        with pytest.raises(DataError) as err, atomic_writer(target) as fh:
            torch_save(state, FillingFile(fh, 5000, code))
        assert str(err.value) == f"{target}: {reason}"
    assert target.read_text() == "the previous checkpoint"
    assert [p.name for p in tmp_path.iterdir()] == ["last.ckpt"]  # no temporary left


def test_torch_save_passes_other_errors_through_and_writes_what_torch_writes(tmp_path):
    with pytest.raises(AttributeError), atomic_writer(tmp_path / "x.pt") as fh:
        torch_save(lambda: None, fh)  # not picklable: torch's error, not a disk's
    buf = io.BytesIO()
    torch_save({"w": torch.ones(3)}, buf)
    assert torch.equal(torch.load(io.BytesIO(buf.getvalue()))["w"], torch.ones(3))


@pytest.mark.skipif(not Path("/dev/full").exists(), reason="needs Linux's /dev/full")
def test_torch_save_on_a_device_that_is_always_full():
    with open("/dev/full", "wb", buffering=0) as fh, pytest.raises(OSError) as err:
        torch_save({"w": torch.zeros(10_000)}, fh)
    assert err.value.errno == errno.ENOSPC
