"""Writing files so that a crash never leaves a half-written one behind."""

from __future__ import annotations

import errno
import logging
import os
import re
import tempfile
from collections.abc import Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager, suppress
from pathlib import Path
from typing import Any, BinaryIO

import numpy as np

from sssi.errors import DataError, first_line

log = logging.getLogger(__name__)

#: the write failures a user can act on, as the one line that names them
_WRITE_ERRORS = {errno.ENOSPC: "no space left on device", errno.EDQUOT: "disk quota exceeded",
                 errno.EROFS: "read-only file system", errno.EACCES: "permission denied",
                 errno.EPERM: "permission denied", errno.EFBIG: "file too large"}


def file_mode() -> int:
    """Permissions of a new file under the process's umask (as ``open`` would give)."""
    mask = os.umask(0)
    os.umask(mask)
    return 0o666 & ~mask


def write_error(path: str | Path, exc: OSError) -> DataError | None:
    """``PATH: no space left on device`` (or read-only, ...) for a write failure a user
    can act on; None for other errors."""
    reason = _WRITE_ERRORS.get(exc.errno or -1)
    return DataError(f"{path}: {reason}") if reason else None


def remove_quietly(path: str | Path) -> None:
    """Remove a temporary file if it is there; a volume that refuses even that (read-only)
    must not hide the error that made the file a leftover."""
    with suppress(OSError):
        Path(path).unlink(missing_ok=True)


#: free space under which a failed write is put down to a full volume
FULL_BELOW_BYTES = 1 << 20


def volume_refusal(path: str | Path) -> str | None:
    """Why the volume of ``path``'s folder refuses writes, where a library's error (GDAL's
    ``TIFFReadDirectory: Failed ...``) does not say: ``read-only file system``, ``no space
    left on device`` (under :data:`FULL_BELOW_BYTES` free) or ``permission denied``;
    None when the volume looks writable (the failure is something else)."""
    folder = Path(path).parent
    while not folder.exists() and folder != folder.parent:
        folder = folder.parent
    try:
        stats = os.statvfs(folder)
    except OSError:
        return None
    if stats.f_flag & os.ST_RDONLY:
        return _WRITE_ERRORS[errno.EROFS]
    if stats.f_bavail * stats.f_frsize < FULL_BELOW_BYTES:
        return _WRITE_ERRORS[errno.ENOSPC]
    if not os.access(folder, os.W_OK):
        return _WRITE_ERRORS[errno.EACCES]
    return None


@contextmanager
def atomic_writer(path: str | Path) -> Iterator[BinaryIO]:
    """A binary file that appears at ``path`` only when the ``with`` block completes.

    It is written as a hidden temporary file in the same folder (so the rename cannot
    cross volumes), flushed to disk, then renamed over ``path``; on any failure the
    temporary file is removed and an existing ``path`` is left as it was. A full,
    read-only or forbidden target raises one :class:`~sssi.errors.DataError` naming
    ``path``. The file gets the permissions a plain ``open(path, "w")`` would give
    (``mkstemp`` alone makes it private to its owner)."""
    path = Path(path)
    tmp = None
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        # the writer's pid in the name: stale_temporaries tells a killed writer's file
        # from one a live process is still writing
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.{os.getpid()}-", suffix=".tmp",
                                   dir=path.parent)
        os.fchmod(fd, file_mode())
        with os.fdopen(fd, "wb") as fh:
            yield fh
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
        tmp = None
    except OSError as exc:
        err = write_error(path, exc)
        if err is None:
            raise
        raise err from exc
    finally:
        if tmp is not None:
            remove_quietly(tmp)


def torch_save(obj: Any, fh: BinaryIO) -> None:
    """``torch.save(obj, fh)``, where a write the file refused raises its own
    ``OSError`` (ENOSPC, EROFS, ...). torch's archive writer reports it as ``RuntimeError:
    [enforce fail at inline_container.cc] . unexpected pos``, with the disk's error only in
    the exception's context, where :func:`atomic_writer` and :func:`write_error` would not
    see it."""
    import torch  # here: the rest of this module writes without torch

    try:
        torch.save(obj, fh)
    except RuntimeError as exc:
        refused = exc.__context__
        while refused is not None and not isinstance(refused, OSError):
            refused = refused.__context__
        if refused is None:
            raise
        raise refused from exc


#: the writer's pid in a temporary's name: ``.NAME.PID-TAG.tmp`` (:func:`atomic_writer`)
#: or ``.NAME.PID-TAG.tmp.tif`` / ``.cog.tif`` (``sssi.predict``'s GeoTIFFs)
_TEMP_PID = re.compile(r"\.(\d+)-[^.]*\.(?:tmp|cog)(?:\.|$)")


def stale_temporaries(folder: str | Path, pattern: str = ".*.tmp") -> list[Path]:
    """Temporary files matching ``pattern`` in ``folder`` that a killed writer left: those
    whose name carries the pid of a process that is gone (a live one's are kept)."""
    folder = Path(folder)
    if not folder.is_dir():
        return []
    stale = []
    for tmp in sorted(folder.glob(pattern)):
        match = _TEMP_PID.search(tmp.name)
        if match and not process_alive(int(match[1])):
            stale.append(tmp)
    return stale


def remove_stale_temporaries(folder: str | Path, pattern: str = ".*.tmp") -> list[Path]:
    """Remove :func:`stale_temporaries`, each with a warning; returns what was removed."""
    removed = stale_temporaries(folder, pattern)
    for stale in removed:
        log.warning("removing %s, left half-written by a killed run", stale)
        stale.unlink(missing_ok=True)
    return removed


def write_failure(path: str | Path, exc: BaseException, doing: str,
                  shown: str | None = None) -> DataError:
    """One line for a failed write of ``path``: the errno's reason (:func:`write_error`),
    else the volume's (:func:`volume_refusal`: a library such as GDAL often does not
    say), else what ``doing`` failed with ``exc``'s first line. ``shown`` names the
    file in the last two (default: the path)."""
    known = write_error(path, exc) if isinstance(exc, OSError) else None
    if known is not None:
        return known
    reason = volume_refusal(path)
    shown = shown or str(path)
    return DataError(f"{shown}: {reason}" if reason else
                     f"{shown}: {doing} ({first_line(exc)})")


def process_alive(pid: int) -> bool:
    """Whether process ``pid`` exists (one of another user counts as alive)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def atomic_write_bytes(path: str | Path, data: bytes) -> Path:
    """Write ``data`` to ``path`` through :func:`atomic_writer`."""
    with atomic_writer(path) as fh:
        fh.write(data)
    return Path(path)


def atomic_write_text(path: str | Path, text: str) -> Path:
    """:func:`atomic_write_bytes` of ``text`` in UTF-8."""
    return atomic_write_bytes(path, text.encode("utf-8"))


def atomic_write_csv(path: str | Path, rows: Iterable[Mapping[str, Any]],
                     fieldnames: Sequence[str]) -> Path:
    """Rows of dicts as CSV (a header, then one line each; keys not in ``fieldnames``
    are left out), written through :func:`atomic_writer`."""
    import csv
    import io

    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=list(fieldnames), extrasaction="ignore",
                            lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)
    return atomic_write_text(path, buf.getvalue())


def write_png(path: Path, bgr: np.ndarray) -> None:
    """Encode a BGR (OpenCV order) uint8 image as PNG and write it atomically."""
    import cv2

    ok, buf = cv2.imencode(".png", bgr)
    if not ok:
        raise RuntimeError(f"{path}: PNG encoding failed")
    atomic_write_bytes(path, buf.tobytes())
