"""The synthetic Potsdam generator: layout, georeferencing, labels, determinism, caching."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
from pathlib import Path

import cv2
import numpy as np
import pytest
import rasterio

from sssi.data.isprs import POTSDAM_TEST_TILES, POTSDAM_TRAIN_TILES
from sssi.data.palettes import ISPRS
from sssi.data.synthetic import MARKER, ensure_synthetic, generate, main, tile_ids
from sssi.errors import ConfigError, DataError

IMPERVIOUS, BUILDING, LOW_VEG, TREE, CAR, CLUTTER = range(6)


def files_of(root: Path, tid: str) -> dict[str, Path]:
    """The Potsdam names, spelled out here so the test pins the contract."""
    r, c = tid.split("_")
    return {
        "RGB": root / "2_Ortho_RGB" / f"top_potsdam_{tid}_RGB.tif",
        "IRRG": root / "3_Ortho_IRRG" / f"top_potsdam_{tid}_IRRG.tif",
        "RGBIR": root / "4_Ortho_RGBIR" / f"top_potsdam_{tid}_RGBIR.tif",
        "nDSM": root / "1_DSM_normalisation"
        / f"dsm_potsdam_{int(r):02d}_{int(c):02d}_normalized_lastools.tif",
        "label": root / "5_Labels_all" / f"top_potsdam_{tid}_label.tif",
        "noBoundary": root / "5_Labels_all_noBoundary" / f"top_potsdam_{tid}_label_noBoundary.tif",
    }


def read(path: Path) -> np.ndarray:
    with rasterio.open(path) as src:
        return src.read()


def classes(label: np.ndarray) -> np.ndarray:
    res = ISPRS.decode(label)
    return res.index


@pytest.fixture(scope="module")
def small(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return generate(tmp_path_factory.mktemp("small") / "ds", tiles=3, size=256, seed=0)


@pytest.fixture(scope="module")
def full(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Two tiles at the default size: enough city for every class to appear."""
    return generate(tmp_path_factory.mktemp("full") / "ds", tiles=2, size=1024, seed=0)


def all_arrays(root: Path) -> list[np.ndarray]:
    meta = json.loads((root / MARKER).read_text())
    return [read(p) for tid in meta["tile_ids"] for p in files_of(root, tid).values()]


# -- tile ids ---------------------------------------------------------------------------

@pytest.mark.parametrize(("n", "n_train", "n_test"),
                         [(1, 1, 0), (2, 1, 1), (3, 2, 1), (6, 4, 2), (10, 7, 3), (38, 24, 14)])
def test_tile_ids_follow_the_potsdam_split(n: int, n_train: int, n_test: int) -> None:
    ids = tile_ids(n)
    assert len(ids) == len(set(ids)) == n
    assert ids[:n_train] == list(POTSDAM_TRAIN_TILES[:n_train])
    assert ids[n_train:] == list(POTSDAM_TEST_TILES[:n_test])


@pytest.mark.parametrize("n", [0, -1, 39])
def test_tile_ids_rejects_impossible_counts(n: int) -> None:
    with pytest.raises(ConfigError, match="tiles"):
        tile_ids(n)


# -- layout and georeferencing ------------------------------------------------------------

def test_layout_has_every_potsdam_product(small: Path) -> None:
    meta = json.loads((small / MARKER).read_text())
    assert meta["tile_ids"] == ["2_10", "2_11", "2_13"]
    assert meta["train_tiles"] == ["2_10", "2_11"] and meta["test_tiles"] == ["2_13"]
    assert (meta["tiles"], meta["size"], meta["seed"], meta["off_palette"]) == (3, 256, 0, 0.0)
    assert "synthetic" in (small / "README.txt").read_text().lower()
    for tid in meta["tile_ids"]:
        for path in files_of(small, tid).values():
            assert path.is_file(), path
    assert (small / "1_DSM_normalisation" / "dsm_potsdam_02_13_normalized_lastools.tif").is_file()


def test_geotiffs_are_georeferenced_tiled_uint8(small: Path) -> None:
    bands = {"RGB": 3, "IRRG": 3, "RGBIR": 4, "nDSM": 1, "label": 3, "noBoundary": 3}
    origins = set()
    for tid in ("2_10", "2_11", "2_13"):
        refs = set()
        for kind, path in files_of(small, tid).items():
            with rasterio.open(path) as src:
                assert src.count == bands[kind], path
                assert src.dtypes == ("uint8",) * bands[kind]
                assert (src.width, src.height) == (256, 256)
                assert src.crs is not None and src.crs.to_epsg() == 32633
                assert src.transform.a == pytest.approx(0.05)
                assert src.transform.e == pytest.approx(-0.05)
                assert src.block_shapes == [(256, 256)] * bands[kind]
                assert src.compression is None
                refs.add((src.crs.to_string(), tuple(src.transform)))
        assert len(refs) == 1, f"modalities of {tid} disagree on georeferencing"
        origins.add(refs.pop()[1])
        x0, y0 = next(iter(origins))[2], next(iter(origins))[5]
        assert 300_000 < x0 < 450_000 and 5_750_000 < y0 < 5_850_000  # around Potsdam
    assert len(origins) == 3, "each tile needs its own place on the map"


def test_image_products_are_views_of_one_acquisition(small: Path) -> None:
    for tid in ("2_10", "2_13"):
        f = files_of(small, tid)
        rgb, irrg, rgbir = read(f["RGB"]), read(f["IRRG"]), read(f["RGBIR"])
        np.testing.assert_array_equal(rgb, rgbir[:3])
        np.testing.assert_array_equal(irrg[0], rgbir[3])
        np.testing.assert_array_equal(irrg[1:], rgbir[:2])
        assert rgbir.std() > 10  # a scene, not a flat colour


# -- labels -------------------------------------------------------------------------------

def test_labels_use_only_palette_colours(small: Path) -> None:
    for tid in ("2_10", "2_11", "2_13"):
        f = files_of(small, tid)
        res = ISPRS.decode(read(f["label"]))
        assert res.n_off_palette == 0 and res.n_ignored == 0
        res_nb = ISPRS.decode(read(f["noBoundary"]))
        assert res_nb.n_off_palette == 0 and res_nb.n_ignored > 0


def test_no_boundary_erodes_class_boundaries_only(full: Path) -> None:
    f = files_of(full, "2_10")
    label, nb = read(f["label"]), read(f["noBoundary"])
    cls = classes(label)
    black = ~nb.any(axis=0)
    # Every pixel whose 4-neighbour has another class is erased...
    edge = np.zeros_like(black)
    edge[:, 1:] |= cls[:, 1:] != cls[:, :-1]
    edge[:, :-1] |= cls[:, 1:] != cls[:, :-1]
    edge[1:] |= cls[1:] != cls[:-1]
    edge[:-1] |= cls[1:] != cls[:-1]
    assert edge.any() and black[edge].all()
    # ...the band is a few pixels wide, never far from a boundary...
    near = cv2.dilate(cls, np.ones((9, 9), np.uint8)) != cv2.erode(cls, np.ones((9, 9), np.uint8))
    assert not (black & ~near).any()
    assert 0.01 < black.mean() < 0.3
    assert black.sum() > 2 * edge.sum()
    # ...and everything else is the full label.
    np.testing.assert_array_equal(nb[:, ~black], label[:, ~black])


def test_off_palette_fraction_and_placement(tmp_path: Path) -> None:
    clean = generate(tmp_path / "clean", tiles=1, size=256, seed=4)
    dirty = generate(tmp_path / "dirty", tiles=1, size=256, seed=4, off_palette=0.05)
    fc, fd = files_of(clean, "2_10"), files_of(dirty, "2_10")
    np.testing.assert_array_equal(read(fc["RGBIR"]), read(fd["RGBIR"]))  # same scene
    label_c, label_d = read(fc["label"]), read(fd["label"])
    res = ISPRS.decode(label_d)
    assert res.n_ignored == 0
    assert res.n_off_palette / label_d[0].size == pytest.approx(0.05, abs=0.01)
    changed = (label_c != label_d).any(axis=0)
    assert changed.sum() == res.n_off_palette  # every changed pixel is off-palette
    nb_c, nb_d = read(fc["noBoundary"]), read(fd["noBoundary"])
    black_c, black_d = ~nb_c.any(axis=0), ~nb_d.any(axis=0)
    np.testing.assert_array_equal(black_c, black_d)  # eroded band untouched
    nb_changed = (nb_c != nb_d).any(axis=0)
    np.testing.assert_array_equal(nb_changed, changed & ~black_c)
    np.testing.assert_array_equal(nb_d[:, nb_changed], label_d[:, nb_changed])
    assert ISPRS.decode(nb_d).n_off_palette == nb_changed.sum() > 0


# -- scene content -----------------------------------------------------------------------

def test_every_class_present_in_plausible_shares(full: Path) -> None:
    cls = np.stack([classes(read(files_of(full, t)["label"])) for t in ("2_10", "2_13")])
    share = np.bincount(cls.ravel(), minlength=7)[:6] / cls.size
    assert (share > 0).all(), share
    assert 0.15 < share[IMPERVIOUS] < 0.45
    assert 0.10 < share[BUILDING] < 0.40
    assert 0.08 < share[LOW_VEG] < 0.45
    assert 0.05 < share[TREE] < 0.30
    assert 0.005 < share[CAR] < 0.06
    assert 0.002 < share[CLUTTER] < 0.12


def test_cars_sit_on_impervious_ground(full: Path) -> None:
    n_cars = 0
    for tid in ("2_10", "2_13"):
        cls = classes(read(files_of(full, tid)["label"]))
        n, comp = cv2.connectedComponents((cls == CAR).astype(np.uint8), connectivity=8)
        ring_kernel = np.ones((7, 7), np.uint8)
        for k in range(1, n):
            blob = (comp == k).astype(np.uint8)
            ring = (cv2.dilate(blob, ring_kernel) > 0) & (blob == 0) & (cls != CAR)
            assert (cls[ring] == IMPERVIOUS).mean() > 0.2, f"car {k} of {tid} is off-road"
        n_cars += n - 1
    assert n_cars > 10


def test_near_infrared_and_heights_are_physical(full: Path) -> None:
    f = files_of(full, "2_10")
    cls = classes(read(f["label"]))
    ir = read(f["RGBIR"])[3].astype(float)
    height = read(f["nDSM"])[0] * 0.1  # metres
    with rasterio.open(f["nDSM"]) as src:
        assert src.scales[0] == pytest.approx(0.1)
    with rasterio.open(f["RGBIR"]) as src:  # 1024 px: four by four 256 px blocks
        assert src.profile["tiled"] and src.block_shapes == [(256, 256)] * 4

    def mean(a: np.ndarray, c: int) -> float:
        return float(a[cls == c].mean())

    assert min(mean(ir, LOW_VEG), mean(ir, TREE)) > max(mean(ir, IMPERVIOUS),
                                                        mean(ir, BUILDING)) + 25
    assert mean(height, BUILDING) > 5
    assert 2 < mean(height, TREE) < mean(height, BUILDING) + 5
    assert 0.5 < float(np.median(height[cls == CAR])) < 2.5
    assert float(np.median(height[cls == IMPERVIOUS])) < 0.3
    assert float(np.median(height[cls == LOW_VEG])) < 0.3


def test_shadows_darken_the_image_but_not_the_label(full: Path) -> None:
    """Ground right next to buildings on the side away from the sun is darker."""
    f = files_of(full, "2_10")
    cls = classes(read(f["label"]))
    lum = read(f["RGB"]).astype(float).mean(axis=0)
    ground = cls == IMPERVIOUS
    dark = ground & (lum < np.percentile(lum[ground], 15))
    assert dark.any() and (cls[dark] == IMPERVIOUS).all()
    assert lum[ground].std() > 15  # lit and shaded asphalt, paving and markings


# -- determinism --------------------------------------------------------------------------

def test_same_seed_same_bytes_other_seed_other_scene(small: Path, tmp_path: Path) -> None:
    again = generate(tmp_path / "again", tiles=3, size=256, seed=0)
    for a, b in zip(all_arrays(small), all_arrays(again), strict=True):
        assert a.tobytes() == b.tobytes()
    other = generate(tmp_path / "other", tiles=3, size=256, seed=1)
    assert all(a.tobytes() != b.tobytes()
               for a, b in zip(all_arrays(small)[:3], all_arrays(other)[:3], strict=True))


def test_generate_rejects_bad_parameters(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="size"):
        generate(tmp_path / "a", tiles=1, size=8)
    with pytest.raises(ConfigError, match="off_palette"):
        generate(tmp_path / "b", tiles=1, size=64, off_palette=1.5)
    (tmp_path / "file").write_text("x")
    with pytest.raises(DataError, match="file"):
        generate(tmp_path / "file", tiles=1, size=64)


# -- caching ------------------------------------------------------------------------------

def test_ensure_synthetic_regenerates_only_when_asked(tmp_path: Path) -> None:
    root = tmp_path / "data" / "synthetic"
    assert ensure_synthetic(root, tiles=1, size=64, seed=0) == root.absolute()
    marker = root / MARKER
    rgb = files_of(root, "2_10")["RGB"]
    stamp = (marker.stat().st_mtime_ns, rgb.stat().st_mtime_ns, rgb.stat().st_ino)
    before = read(rgb)
    ensure_synthetic(root, tiles=1, size=64, seed=0)
    assert (marker.stat().st_mtime_ns, rgb.stat().st_mtime_ns, rgb.stat().st_ino) == stamp
    with pytest.raises(DataError) as err:  # other parameters: never replaced unasked
        ensure_synthetic(root, tiles=2, size=64, seed=1)
    assert str(err.value) == (
        f"{root.absolute()}: holds the synthetic dataset of 1 tiles of 64 px, seed 0, not "
        "the 2 tiles of 64 px, seed 1 this run asks for; use it as it is with "
        "data.synthetic.tiles=1 data.synthetic.seed=0, or replace it with "
        "data.synthetic.regenerate=true")
    assert (marker.stat().st_mtime_ns, rgb.stat().st_mtime_ns, rgb.stat().st_ino) == stamp
    ensure_synthetic(root, tiles=2, size=64, seed=1, regenerate=True)
    meta = json.loads(marker.read_text())
    assert (meta["tiles"], meta["seed"]) == (2, 1)
    assert read(rgb).tobytes() != before.tobytes()
    assert files_of(root, "2_13")["label"].is_file()
    leftovers = [p.name for p in root.parent.iterdir() if p.name.startswith(".synthetic.")
                 and not p.name.endswith(".lock")]
    assert leftovers == []


def test_ensure_synthetic_never_replaces_foreign_data(tmp_path: Path) -> None:
    root = tmp_path / "real"
    (root / "2_Ortho_RGB").mkdir(parents=True)
    (root / "2_Ortho_RGB" / "top_potsdam_2_10_RGB.tif").write_bytes(b"precious")
    with pytest.raises(DataError, match=MARKER):
        ensure_synthetic(root, tiles=1, size=64)
    assert (root / "2_Ortho_RGB" / "top_potsdam_2_10_RGB.tif").read_bytes() == b"precious"


def test_ensure_synthetic_concurrent_callers_share_one_dataset(tmp_path: Path) -> None:
    root = tmp_path / "shared"
    results: list[Path] = []
    errors: list[BaseException] = []

    def call() -> None:
        try:
            results.append(ensure_synthetic(root, tiles=1, size=64, seed=2))
        except BaseException as e:  # surfaced below
            errors.append(e)

    threads = [threading.Thread(target=call) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors and results == [root.absolute()] * 4
    assert json.loads((root / MARKER).read_text())["seed"] == 2
    assert ISPRS.decode(read(files_of(root, "2_10")["label"])).n_off_palette == 0
    assert sorted(p.name for p in tmp_path.iterdir() if not p.name.endswith(".lock")) == [
        "shared"]


# -- command line -------------------------------------------------------------------------

@pytest.mark.slow  # the subprocess pays for importing the sssi.data package
def test_cli_writes_a_dataset(tmp_path: Path) -> None:
    out = tmp_path / "cli"
    proc = subprocess.run(
        [sys.executable, "-m", "sssi.data.synthetic", "--out", str(out), "--tiles", "2",
         "--size", "64", "--seed", "5", "--off-palette", "0.01"],
        capture_output=True, text=True, timeout=120, env={**os.environ, "PYTHONWARNINGS": "ignore"})
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.strip().splitlines()
    assert len(lines) == 3
    assert "2_10" in lines[0] and "2_13" in lines[1]
    assert str(out) in lines[-1]
    meta = json.loads((out / MARKER).read_text())
    assert (meta["tiles"], meta["size"], meta["seed"], meta["off_palette"]) == (2, 64, 5, 0.01)
    assert all(p.is_file() for p in files_of(out, "2_13").values())


def test_cli_reports_bad_input_in_one_line(tmp_path: Path,
                                           capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["--out", str(tmp_path / "x"), "--tiles", "0"]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "tiles=0" in err[0]


def test_each_synthetic_size_has_a_folder_of_its_own():
    """Switching sizes (+debug=tiny and back) never touches the other size's dataset."""
    from sssi.config import synthetic_dir
    from tests.helpers import TINY, compose_train

    assert synthetic_dir("d", 6, 1024, 0) == "d/synthetic_potsdam"
    assert synthetic_dir("d", 3, 256, 0) == "d/synthetic_potsdam_3x256"
    assert synthetic_dir("d", 3, 256, 2) == "d/synthetic_potsdam_3x256_seed2"
    default = compose_train([], data_dir=Path("/data"))
    tiny = compose_train(TINY, data_dir=Path("/data"))
    assert default.data.root == "/data/synthetic_potsdam"
    assert tiny.data.root == "/data/synthetic_potsdam_3x256"
    assert default.data.synthetic.regenerate is False
