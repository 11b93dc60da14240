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


def test_prepare_with_a_layout_stores_labels_as_class_indices(synthetic_root, tmp_path):
    from sssi.data import build_layout
    from sssi.data.datasets import TileReader

    out = tmp_path / "indexed"
    logged: list[str] = []
    prepare(synthetic_root, out, block=128, layout="potsdam", log=logged.append)
    src_layout, dst_layout = build_layout("potsdam", synthetic_root), build_layout("potsdam", out)
    src_tiles = src_layout.tiles("all", labels=True)
    dst_tiles = dst_layout.tiles("all", labels=True)
    assert [t.id for t in src_tiles] == [t.id for t in dst_tiles]
    dst_layout.validate(dst_tiles)  # one-band palette labels pass as colour labels
    src_reader = TileReader(src_tiles, src_layout.palette)
    dst_reader = TileReader(dst_tiles, dst_layout.palette)
    for t, tile in enumerate(dst_tiles):
        with rasterio.open(tile.label) as ds, rasterio.open(src_tiles[t].label) as orig:
            assert ds.count == 1 and ds.dtypes[0] == "uint8" and ds.profile["tiled"]
            assert ds.colormap(1)[0][:3] == src_layout.palette.colors[0]
            assert (ds.crs, ds.transform) == (orig.crs, orig.transform)
            window = rasterio.windows.Window(3, 5, ds.width - 3, ds.height - 5)
        got, want = dst_reader.decode_label(t, window), src_reader.decode_label(t, window)
        assert np.array_equal(got.index, want.index)
        assert (got.n_ignored, got.n_off_palette) == (want.n_ignored, want.n_off_palette)
    assert any(line.startswith("indexed ") for line in logged)
    with rasterio.open(dst_tiles[0].image_path) as ds:  # images: tiled, as they were
        assert ds.count == 3 and ds.profile["tiled"]
    # a second run finds everything done
    logged.clear()
    prepare(synthetic_root, out, block=128, layout="potsdam", log=logged.append)
    assert ": 0 files written" in logged[-1]


def test_prepare_keeps_the_colours_of_a_label_with_off_palette_pixels(potsdam_copy, tmp_path):
    from sssi.data import build_layout

    label = build_layout("potsdam", potsdam_copy).tiles("all", labels=True)[0].label
    with rasterio.open(label, "r+") as ds:
        ds.write(np.full((3, 1, 1), 77, dtype=np.uint8), window=((0, 1), (0, 1)))
    logged: list[str] = []
    prepare(potsdam_copy, tmp_path / "out", layout="potsdam", log=logged.append)
    rel = label.relative_to(potsdam_copy).as_posix()
    assert f"{rel}: 1 off-palette pixels, kept as colours" in logged
    with rasterio.open(tmp_path / "out" / rel) as ds, rasterio.open(label) as orig:
        assert ds.count == 3 and np.array_equal(ds.read(), orig.read())
