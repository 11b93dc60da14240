"""``python -m sssi.data.prepare``: a tiled copy of a dataset, same layout, same pixels,
resumable, originals untouched."""

from __future__ import annotations

import json
import os

import numpy as np
import pytest
import rasterio

from sssi.data.prepare import MANIFEST, main, prepare
from sssi.errors import ConfigError


def test_prepare_tiles_every_tiff_keeps_pixels_and_resumes(synthetic_root, tmp_path, capsys):
    before = {p: p.stat().st_mtime_ns for p in synthetic_root.rglob("*") if p.is_file()}
    out = tmp_path / "tiled"
    manifest = prepare(synthetic_root, out, block=128, compress="deflate", log=lambda _: None)
    tiffs = [p for p in before if p.suffix == ".tif"]
    assert tiffs and len(manifest["files"]) == len(before)
    for src in tiffs:
        dst = out / src.relative_to(synthetic_root)
        with rasterio.open(src) as a, rasterio.open(dst) as b:
            assert b.profile["tiled"] and b.block_shapes[0] == (128, 128)
            assert b.profile["compress"] == "deflate"
            assert (a.crs, a.transform, a.count, a.dtypes) == (b.crs, b.transform, b.count,
                                                               b.dtypes)
            assert np.array_equal(a.read(), b.read())  # lossless, labels included
    others = [p for p in before if p.suffix != ".tif"]
    for src in others:
        assert (out / src.relative_to(synthetic_root)).read_bytes() == src.read_bytes()
    assert {p: p.stat().st_mtime_ns for p in before} == before  # the originals untouched
    assert not list(out.rglob("*.partial"))

    # a second run converts nothing; a changed source is converted again
    logged = []
    prepare(synthetic_root, out, block=128, compress="deflate", log=logged.append)
    assert logged == [f"{out.resolve()}: 0 files written, {len(before)} already done"]
    changed = tiffs[0]
    os.utime(changed, ns=(before[changed], before[changed] + 10**9))
    try:
        logged.clear()
        prepare(synthetic_root, out, block=128, compress="deflate", log=logged.append)
        assert logged[0] == f"tiled {changed.relative_to(synthetic_root).as_posix()}"
        assert logged[-1].endswith(f"1 files written, {len(before) - 1} already done")
    finally:
        os.utime(changed, ns=(before[changed], before[changed]))
    record = json.loads((out / MANIFEST).read_text())
    assert record["block"] == 128 and record["source"] == str(synthetic_root.resolve())


def test_prepare_refuses_bad_options_with_one_error(synthetic_root, tmp_path, capsys):
    with pytest.raises(ConfigError, match=r"outside"):
        prepare(synthetic_root, synthetic_root / "tiled")
    with pytest.raises(ConfigError, match=r"--block=100"):
        prepare(synthetic_root, tmp_path / "x", block=100)
    with pytest.raises(SystemExit) as exit_info:
        main([str(tmp_path / "missing"), str(tmp_path / "y")])
    assert exit_info.value.code == 1
    assert capsys.readouterr().err.startswith(f"error: {tmp_path / 'missing'}: no such folder")
