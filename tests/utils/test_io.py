"""Files sssi writes appear whole (temporary name, then rename) with ordinary
permissions."""

from __future__ import annotations

import os
import stat

import pytest

from sssi.errors import DataError
from sssi.utils.io import atomic_write_bytes, atomic_write_text


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
