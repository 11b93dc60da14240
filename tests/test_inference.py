"""Sliding-window inference, full-tile evaluation and GeoTIFF prediction."""

from __future__ import annotations

import json
import re
import subprocess
from pathlib import Path

import numpy as np
import pytest
import rasterio
import torch
from rasterio.windows import Window
from torch import nn

from sssi.data.palettes import ISPRS
from sssi.errors import ConfigError, DataError
from sssi.inference import (
    LoadedModel,
    load_segmenter,
    predict_chunks,
    predict_probabilities,
    predict_region,
    window_count,
)
from sssi.metrics import confusion_matrix, evaluation_metrics, markdown_table, scores
from sssi.predict import predict_file
from tests.helpers import real_sample, run_module

# one short real training run: 2 synthetic tiles of 256 px (one train, one test),
# a single step, no validation; ~20 s on 2 cores
TINY_FIT = [
    "data.synthetic.size=256", "data.synthetic.tiles=2", "data.crop_size=64",
    "data.batch_size=4", "data.samples_per_epoch=4", "data.num_workers=0",
    "data.region_size=128", "data.val_split=null", "trainer.max_epochs=1",
    "trainer.log_every_n_steps=1", "trainer.enable_progress_bar=false", "test=false",
    "callbacks.model_checkpoint.monitor=null",
]
RGB_BYTE = ("rasterio", "RGB.byte.tif")
ADELAIDE = ("openearthmap", "adelaide_2.tif")


def _cli(module: str, args: list[str], cwd: Path, timeout: int = 300
         ) -> subprocess.CompletedProcess:
    return run_module(module, args, cwd, timeout)


@pytest.fixture(scope="session")
def trained(tmp_path_factory) -> dict[str, Path]:
    """A real segmentation checkpoint and the synthetic data it was trained on."""
    base = tmp_path_factory.mktemp("inference_run")
    proc = _cli("sssi.train", [*TINY_FIT, f"paths.data_dir={base / 'data'}",
                               f"hydra.run.dir={base / 'run'}"], cwd=base)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return {"ckpt": base / "run" / "checkpoints" / "last.ckpt",
            "data": base / "data" / "synthetic_potsdam_2x256", "base": base}


def _crop(src_path: Path, dst_path: Path, win: Window) -> dict:
    """Write a georeferenced piece of ``src_path``; returns its profile."""
    from affine import Affine

    with rasterio.open(src_path) as src:
        profile = {**src.profile, "width": int(win.width), "height": int(win.height),
                   "transform": src.transform @ Affine.translation(win.col_off, win.row_off)}
        with rasterio.open(dst_path, "w", **profile) as dst:
            dst.write(src.read(window=win))
    return profile


def _pointwise(in_ch: int = 3, k: int = 5) -> nn.Module:
    torch.manual_seed(0)
    return nn.Conv2d(in_ch, k, 1).eval()


def _local(in_ch: int = 3, k: int = 5) -> nn.Module:
    """Not pointwise: 5x5 receptive field, zero padding at window borders."""
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(in_ch, 8, 3, padding=1), nn.ReLU(),
                         nn.Conv2d(8, k, 3, padding=1)).eval()


def _fake(model: nn.Module) -> LoadedModel:
    """A LoadedModel around a cheap network: for tests of the GeoTIFF plumbing."""
    return LoadedModel(model=model, mean=[100.0] * 3, std=[50.0] * 3,
                       band_names=("R", "G", "B"), class_names=ISPRS.classes,
                       num_classes=6, palette_name="isprs", path=Path("fake.ckpt"))


# ------------------------------------------------------------------- sliding window
@pytest.mark.parametrize("blend", ["gaussian", "uniform"])
@pytest.mark.parametrize("shape", [(150, 211), (40, 90), (1, 70)])
def test_blending_a_pointwise_model_equals_one_full_pass(blend, shape):
    model = _pointwise()
    image = torch.randn(3, *shape)
    with torch.no_grad():
        full = model(image[None])[0].softmax(0)
    probs = predict_probabilities(model, image, 5, window=64, stride=40, batch_size=3,
                                  blend=blend)
    assert probs.shape == (5, *shape) and probs.dtype == torch.float32
    torch.testing.assert_close(probs, full, atol=1e-5, rtol=0)
    torch.testing.assert_close(probs.sum(0), torch.ones(shape), atol=1e-5, rtol=0)


def test_flip_tta_averages_the_four_flips():
    model = _local()
    image = torch.randn(3, 48, 48)  # one window: the average is explicit
    with torch.no_grad():
        want = sum(model(image.flip(d)[None])[0].softmax(0).flip(d)
                   for d in ([], [-1], [-2], [-2, -1])) / 4
    got = predict_probabilities(model, image, 5, window=48, stride=48, flip_tta=True)
    torch.testing.assert_close(got, want, atol=1e-5, rtol=0)


def test_chunked_driver_equals_unchunked_and_tiles_the_raster_once():
    model = _local()
    raw = np.random.default_rng(0).integers(0, 255, (150, 203, 3), dtype=np.uint8)

    def normalize(a: np.ndarray) -> torch.Tensor:
        return torch.from_numpy(a.transpose(2, 0, 1).astype(np.float32) / 255)

    def read(win: Window) -> np.ndarray:
        return raw[win.row_off: win.row_off + win.height, win.col_off: win.col_off + win.width]

    whole = predict_probabilities(model, normalize(raw), 5, window=64, stride=48)
    for chunk in (41, 100, 1000):
        seen = np.zeros(raw.shape[:2], int)
        done: list[int] = []  # the progress callback's counts of windows
        for win, _ in predict_chunks(model, read, raw.shape[:2], 5, normalize, chunk=chunk,
                                     window=64, stride=48, batch_size=3,
                                     progress=done.append):
            seen[win.toslices()] += 1
        assert (seen == 1).all()
        # the progress bar's total is exactly what the driver predicts
        assert sum(done) == window_count(raw.shape[:2], chunk, 64, 48) and max(done) <= 3
        if chunk == 1000:  # one chunk: the plain grid, 3 x 4 windows of 64 px every 48
            assert sum(done) == 3 * 4  # rows 0, 48, 86; columns 0, 48, 96, 139
        got = predict_region(model, read, raw.shape[:2], 5, normalize, chunk=chunk,
                             window=64, stride=48)
        torch.testing.assert_close(got, whole, atol=1e-5, rtol=0)


def test_bad_grid_is_a_config_error():
    with pytest.raises(ConfigError, match="stride"):
        predict_probabilities(_pointwise(), torch.zeros(3, 8, 8), 5, window=8, stride=9)
    with pytest.raises(ConfigError, match="blend"):
        predict_probabilities(_pointwise(), torch.zeros(3, 8, 8), 5, window=8, stride=8,
                              blend="x")


# ------------------------------------------------------------------------- metrics
def test_metrics_match_a_hand_computed_confusion_matrix():
    names = ("a", "b", "absent", "clutter")
    cm = np.array([[5, 1, 0, 0], [2, 3, 0, 1], [0, 0, 0, 0], [1, 0, 0, 2]])
    m = evaluation_metrics(cm, names)
    a, b, c = m["per_class"]["a"], m["per_class"]["b"], m["per_class"]["clutter"]
    assert a["IoU"] == pytest.approx(5 / 9) and a["F1"] == pytest.approx(10 / 14)
    assert a["precision"] == pytest.approx(5 / 8) and a["recall"] == pytest.approx(5 / 6)
    assert b["IoU"] == pytest.approx(3 / 7) and b["F1"] == pytest.approx(6 / 10)
    assert c["IoU"] == pytest.approx(2 / 4) and c["recall"] == pytest.approx(2 / 3)
    assert np.isnan(m["per_class"]["absent"]["IoU"])  # no pixels, never predicted
    assert m["mIoU"] == pytest.approx((5 / 9 + 3 / 7 + 2 / 4) / 3)
    assert m["mF1"] == pytest.approx((10 / 14 + 6 / 10 + 4 / 6) / 3)
    assert m["OA"] == pytest.approx(10 / 15)
    # without clutter: its ground-truth pixels leave; predicting clutter stays a miss
    assert m["per_class_3"]["a"]["IoU"] == pytest.approx(5 / 8)  # fp 2, fn 1
    assert m["per_class_3"]["b"]["IoU"] == pytest.approx(3 / 7)  # fp 1, fn 3
    assert m["mIoU_3"] == pytest.approx((5 / 8 + 3 / 7) / 2)
    assert m["mF1_3"] == pytest.approx((10 / 13 + 6 / 10) / 2)
    assert m["OA_3"] == pytest.approx(8 / 12)
    assert "| a | 55.56 | 71.43 |" in markdown_table(m)


def test_confusion_matrix_skips_the_ignore_index():
    label = np.array([[0, 1, 255], [2, 2, 1]], np.uint8)
    pred = np.array([[0, 2, 1], [2, 0, 1]], np.uint8)
    cm = confusion_matrix(label, pred, 3)
    assert cm.sum() == 5 and cm[0, 0] == 1 and cm[1, 2] == 1 and cm[2, 0] == 1
    assert scores(np.zeros((2, 2), int), ["x", "y"])["pixels"] == 0


# -------------------------------------------------------------------------- loading
def test_load_segmenter_reads_model_normalisation_and_classes(trained, tmp_path):
    loaded = load_segmenter(trained["ckpt"])
    assert loaded.band_names == ("R", "G", "B") and loaded.num_classes == 6
    assert loaded.class_names == ISPRS.classes and loaded.palette_name == "isprs"
    assert len(loaded.mean) == 3 and all(s > 0 for s in loaded.std)
    assert not loaded.model.training
    with torch.no_grad():
        assert loaded.model(torch.zeros(1, 3, 64, 64)).shape == (1, 6, 64, 64)
    with pytest.raises(DataError, match="checkpoint not found"):
        load_segmenter(tmp_path / "missing.ckpt")
    junk = tmp_path / "junk.ckpt"
    junk.write_bytes(trained["ckpt"].read_bytes()[:5000])  # truncated
    with pytest.raises(DataError, match=re.escape("junk.ckpt")):
        load_segmenter(junk)
    pretext = tmp_path / "pretext.ckpt"
    torch.save({"hyper_parameters": {"lr": 0.1}, "sssi_data": {},
                "state_dict": {"inpainter.encoder.conv1.weight": torch.zeros(1)}}, pretext)
    with pytest.raises(ConfigError, match=re.escape("pretext.ckpt: a pretext")):
        load_segmenter(pretext)


# ------------------------------------------------------------------------ evaluate
@pytest.mark.slow
def test_evaluate_writes_metrics_table_and_figures(trained, tmp_path):
    import os
    import sys

    out = tmp_path / "eval"
    # one stream, as a terminal shows it: the log (stdout) and the bar (stderr) together
    proc = subprocess.run(
        [sys.executable, "-m", "sssi.evaluate", f"ckpt={trained['ckpt']}",
         f"data.root={trained['data']}", "window=128", "stride=96", f"hydra.run.dir={out}"],
        cwd=tmp_path, env={**os.environ, "PYTHONUNBUFFERED": "1"}, stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout[-3000:]
    metrics = json.loads((out / "metrics.json").read_text())
    for key in ("mIoU", "mF1", "OA", "mIoU_5", "mF1_5", "OA_5"):
        assert 0.0 <= metrics[key] <= 1.0, key
    assert set(metrics["per_class"]) == set(ISPRS.classes)
    for cls in metrics["per_class"].values():
        for key in ("IoU", "F1", "precision", "recall"):
            assert cls[key] is None or 0.0 <= cls[key] <= 1.0
    assert "clutter" not in metrics["per_class_5"]
    assert sum(map(sum, metrics["confusion"])) == metrics["pixels"] > 0
    assert [t["tile"] for t in metrics["tiles"]] == ["2_13"]  # the test split
    table = (out / "metrics.md").read_text()
    assert "| building |" in table and table.splitlines()[0] in proc.stdout
    import cv2

    assert cv2.imread(str(out / "confusion.png")) is not None
    assert "evaluate: 100%" in proc.stdout and "window/s" in proc.stdout  # the bar
    # the per-tile line is written above the bar (which tqdm redraws with \r), never
    # glued to the end of it
    pieces = [p for p in re.split(r"[\r\n]", proc.stdout) if "tile 2_13 (1/1" in p]
    assert pieces and all(p.startswith("[") for p in pieces), pieces
    pred = cv2.imread(str(out / "predictions" / "2_13.png"))
    assert pred.shape == (256, 256, 3)
    palette_bgr = {tuple(c[::-1]) for c in ISPRS.colors}
    assert {tuple(p) for p in np.unique(pred.reshape(-1, 3), axis=0)} <= palette_bgr


def test_evaluate_refuses_data_with_other_bands(trained, tmp_path):
    from hydra import compose, initialize_config_dir
    from omegaconf import open_dict

    from sssi.evaluate import run
    from sssi.train import CONFIG_DIR

    with initialize_config_dir(config_dir=CONFIG_DIR, version_base="1.3"):
        cfg = compose("evaluate", overrides=[f"ckpt={trained['ckpt']}", "data.modality=IRRG",
                                             f"data.root={trained['data']}"])
    with open_dict(cfg):
        cfg.paths.output_dir = str(tmp_path / "eval")
    with pytest.raises(ConfigError) as err:
        run(cfg)
    message = str(err.value)
    assert "\n" not in message and "IR,R,G" in message and "R,G,B" in message
    assert str(trained["ckpt"]) in message


# ------------------------------------------------------------------------- predict
@pytest.mark.parametrize("sample", [RGB_BYTE, ADELAIDE], ids=["landsat", "openearthmap"])
def test_predict_keeps_georeferencing_and_writes_a_cog(sample, tmp_path):
    src_path = real_sample(*sample)
    out = tmp_path / "labels.tif"
    predict_file(_fake(_pointwise(k=6)), src_path, out, window=256, stride=192, chunk=300)
    with rasterio.open(src_path) as src, rasterio.open(out) as dst:
        assert (dst.width, dst.height, dst.count) == (src.width, src.height, 1)
        assert dst.crs == src.crs and dst.transform == src.transform
        assert dst.dtypes[0] == "uint8" and dst.nodata == 255
        assert dst.profile["tiled"] and dst.overviews(1)
        assert dst.tags(ns="IMAGE_STRUCTURE").get("LAYOUT") == "COG"
        assert dst.colormap(1)[1] == (*ISPRS.colors[1], 255)
        labels = dst.read(1)
        if src.nodata is not None:  # Landsat: the no-data collar stays no-data
            valid = src.read_masks().any(0)
            assert not valid.all() and ((labels == 255) == ~valid).all()
        assert labels[labels != 255].max() < 6
    assert sorted(p.name for p in tmp_path.iterdir()) == ["labels.tif"]  # no temporaries


def test_outputs_past_4_gb_become_bigtiff_and_small_ones_stay_classic_tiff(tmp_path):
    """The probabilities of a 33,000 px square map with one class in float32 (4.4 GB
    uncompressed) need 64-bit offsets; GDAL decides from the options sssi.predict
    writes with (overviews and the empty blocks, left out here to keep the test short,
    do not change it)."""
    from sssi.predict import COG_OPTIONS, GTIFF_OPTIONS, CogWriter

    magic = {}
    for name, side in (("small", 1024), ("huge", 33_000)):
        out = tmp_path / f"{name}.tif"
        writer = CogWriter(out, {**GTIFF_OPTIONS, "width": side, "height": side, "count": 1,
                                 "dtype": "float32", "nodata": float("nan")})
        writer.write(np.ones((1, 512, 512), np.float32), Window(0, 0, 512, 512))
        writer.finish(**COG_OPTIONS, overview_resampling="AVERAGE", OVERVIEWS="NONE",
                      SPARSE_OK=True)
        writer.commit()
        magic[name] = out.read_bytes()[:4]
        with rasterio.open(out) as ds:
            assert ds.shape == (side, side) and ds.read(1, window=Window(0, 0, 2, 2)).min() == 1
    assert magic == {"small": b"II*\x00", "huge": b"II+\x00"}  # classic TIFF 42, BigTIFF 43
    assert sorted(p.name for p in tmp_path.iterdir()) == ["huge.tif", "small.tif"]


def test_the_map_is_a_valid_cog_with_a_qgis_legend_and_a_stac_item(tmp_path):
    import xml.etree.ElementTree as ET

    import pystac
    from omegaconf import OmegaConf
    from rio_cogeo.cogeo import cog_validate

    from sssi.predict import describe_outputs
    from sssi.stac import write_collection

    loaded = _fake(_pointwise(k=6))
    outs = []
    for name, win in (("west", Window(0, 0, 300, 200)), ("east", Window(300, 0, 300, 200))):
        piece = tmp_path / "in" / f"{name}.tif"
        piece.parent.mkdir(exist_ok=True)
        _crop(real_sample(*ADELAIDE), piece, win)
        out = tmp_path / "maps" / f"{name}.tif"
        predict_file(loaded, piece, out, window=128, stride=96)
        cfg = OmegaConf.create({"input": str(piece), "probabilities": None, "legend": True,
                                "stac": True, "stac_collection": True})
        describe_outputs(out, loaded, cfg)
        outs.append(out)
    valid, errors, _ = cog_validate(str(outs[0]))  # rio-cogeo: GDAL's COG rules
    assert valid and not errors
    palette = ET.parse(outs[0].with_suffix(".qml")).getroot().find(".//colorPalette")
    entries = [(e.get("value"), e.get("label"), e.get("color")) for e in palette]
    assert entries == [(str(i), name, "#{:02x}{:02x}{:02x}".format(*ISPRS.colors[i]))
                       for i, name in enumerate(ISPRS.classes)]

    item = pystac.Item.from_file(str(outs[0].with_suffix(".json")))
    assert item.id == "west" and item.assets["labels"].href == "./west.tif"
    assert item.assets["style"].href == "./west.qml"
    classes = item.assets["labels"].extra_fields["classification:classes"]
    assert [c["name"] for c in classes] == [*ISPRS.classes, "no_data"]
    assert classes[-1] == {"value": 255, "name": "no_data", "nodata": True}
    assert item.assets["labels"].extra_fields["raster:bands"][0]["nodata"] == 255
    with rasterio.open(outs[0]) as ds:
        assert item.properties["proj:shape"] == [ds.height, ds.width] == [200, 300]
        assert item.properties["proj:code"] == f"EPSG:{ds.crs.to_epsg()}"
        assert item.properties["proj:transform"] == list(ds.transform)[:6]
    west, south, east, north = item.bbox  # Adelaide, in WGS 84
    assert 138 < west < east < 139.5 and -35.5 < south < north < -34
    assert sorted(e.split("/")[3] for e in item.stac_extensions) == [
        "classification", "projection", "raster"]  # https://stac-extensions.github.io/NAME/

    collection = pystac.Collection.from_file(str(tmp_path / "maps" / "collection.json"))
    assert [link.href for link in collection.links if link.rel == "item"] == [
        "./east.json", "./west.json"]
    box = collection.extent.spatial.bboxes[0]
    assert box[0] == pytest.approx(west) and box[2] > east  # both maps
    assert write_collection(tmp_path / "maps").name == "collection.json"  # rewritten
    assert sorted(q.name for q in (tmp_path / "maps").iterdir()) == [
        "collection.json", "east.json", "east.qml", "east.tif", "west.json", "west.qml",
        "west.tif"]  # no temporaries


def test_chunked_prediction_equals_one_chunk(tmp_path):
    src_path = tmp_path / "corner.tif"  # has both no-data collar and image
    _crop(real_sample(*RGB_BYTE), src_path, Window(0, 0, 230, 190))
    loaded = _fake(_local(k=6))
    outs = []
    for chunk in (70, 4096):
        out = tmp_path / f"c{chunk}.tif"
        predict_file(loaded, src_path, out, window=64, stride=48, chunk=chunk, batch_size=16,
                     probabilities=tmp_path / f"p{chunk}.tif", probabilities_dtype="float32")
        with rasterio.open(out) as a, rasterio.open(tmp_path / f"p{chunk}.tif") as p:
            outs.append((a.read(1), p.read()))
            assert p.count == 6 and p.descriptions[1] == "building"
    assert (outs[0][0] == 255).any() and (outs[0][0] < 6).any()
    assert (outs[0][0] == outs[1][0]).all()
    np.testing.assert_allclose(outs[0][1], outs[1][1], atol=1e-5)  # NaN where no data


def test_corrupt_input_is_one_line_and_keeps_the_existing_output(tmp_path):
    data = real_sample(*ADELAIDE).read_bytes()
    bad = tmp_path / "truncated.tif"
    bad.write_bytes(data[: len(data) // 2])
    out = tmp_path / "out.tif"
    out.write_bytes(b"previous result")
    with pytest.raises(DataError) as err:
        predict_file(_fake(_pointwise(k=6)), bad, out, window=128, stride=96)
    assert str(bad) in str(err.value) and "\n" not in str(err.value)
    assert out.read_bytes() == b"previous result"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out.tif", "truncated.tif"]


def test_bands_select_and_reorder_input_bands(tmp_path):
    src_path = real_sample(*RGB_BYTE)
    loaded = _fake(_pointwise(k=6))
    with pytest.raises(ConfigError, match=re.escape("bands=[1, 2]")):
        predict_file(loaded, src_path, tmp_path / "o.tif", bands=[1, 2])
    with pytest.raises(ConfigError, match=re.escape("has bands 1..3 only")):
        predict_file(loaded, src_path, tmp_path / "o.tif", bands=[1, 2, 4])
    predict_file(loaded, src_path, tmp_path / "o.tif", bands=[3, 2, 1], window=256,
                 stride=256)
    assert (tmp_path / "o.tif").is_file()


@pytest.mark.slow
def test_predict_cli_with_a_real_checkpoint(trained, tmp_path):
    crop = tmp_path / "crop.tif"  # a georeferenced 160 x 200 piece keeps the run short
    profile = _crop(real_sample(*ADELAIDE), crop, Window(300, 400, 200, 160))
    out, probs = tmp_path / "out" / "labels.tif", tmp_path / "out" / "probs.tif"
    proc = _cli("sssi.predict", [f"ckpt={trained['ckpt']}", f"input={crop}", f"output={out}",
                                 f"probabilities={probs}", "window=128", "stride=96",
                                 "progress=false", f"paths.log_dir={tmp_path / 'logs'}"],
                cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    with rasterio.open(out) as dst, rasterio.open(probs) as p:
        assert (dst.width, dst.height) == (200, 160)
        assert dst.transform == profile["transform"] and dst.crs == profile["crs"]
        assert p.count == 6 and p.dtypes[0] == "uint8"
        assert (np.abs(p.read().astype(int).sum(0) - 255) <= 6).all()
    assert (tmp_path / "logs" / "predict").is_dir()  # Hydra's files: not beside the output
    assert "crop.tif: 100%" not in proc.stderr  # progress=false: no bar
    assert sorted(q.name for q in out.parent.iterdir()) == [
        "labels.json", "labels.qml", "labels.tif", "probs.tif"]
    item = json.loads((out.parent / "labels.json").read_text())
    assert item["assets"]["probabilities"]["href"] == "./probs.tif"


@pytest.mark.slow
def test_predict_cli_band_mismatch_is_one_line_naming_the_file(trained, tmp_path):
    src_path = real_sample(*RGB_BYTE)
    one = tmp_path / "one_band.tif"
    with rasterio.open(src_path) as src, \
            rasterio.open(one, "w", **{**src.profile, "count": 1}) as dst:
        dst.write(src.read(1), 1)
    proc = _cli("sssi.predict", [f"ckpt={trained['ckpt']}", f"input={one}",
                                 f"output={tmp_path / 'o.tif'}",
                                 f"paths.log_dir={tmp_path / 'logs'}"], cwd=tmp_path)
    assert proc.returncode == 1
    errors = [line for line in proc.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and str(one) in errors[0] and "R,G,B" in errors[0]
    assert "1 bands" in errors[0] and "Traceback" not in proc.stderr
    assert not (tmp_path / "o.tif").exists()


# ------------------------------------------------------------- precision and layout
def _compose_evaluate(overrides: list[str], out: Path):
    from sssi.evaluate import compose_config

    return compose_config(overrides, out)


#: bf16 against fp32 on the trained tiny checkpoint: the share of pixels whose label
#: may change, and the largest mIoU difference (points of 1) allowed
BF16_LABEL_AGREEMENT = 0.98
BF16_MIOU_TOLERANCE = 0.02


def test_bf16_labels_and_metrics_agree_with_fp32_on_a_trained_checkpoint(trained, tmp_path):
    import cv2

    from sssi.evaluate import run as evaluate

    metrics, maps = {}, {}
    for precision in ("fp32", "bf16"):
        out = tmp_path / precision
        cfg = _compose_evaluate([f"ckpt={trained['ckpt']}", f"data.root={trained['data']}",
                                 "window=128", "stride=96", f"precision={precision}",
                                 "progress=false"], out)
        metrics[precision] = evaluate(cfg)
        maps[precision] = cv2.imread(str(out / "predictions" / "2_13.png"))
        assert metrics[precision]["settings"]["precision"] == precision
    agree = (maps["fp32"] == maps["bf16"]).all(-1).mean()
    assert agree >= BF16_LABEL_AGREEMENT, agree
    assert abs(metrics["fp32"]["mIoU"] - metrics["bf16"]["mIoU"]) <= BF16_MIOU_TOLERANCE
    assert metrics["fp32"]["confusion"] != metrics["bf16"]["confusion"] or agree == 1.0


def test_channels_last_and_input_scale_give_the_same_probabilities(trained):
    loaded = load_segmenter(trained["ckpt"])
    image = torch.randn(2, 3, 96, 80)
    plain = loaded.predictor()(image)
    assert plain.dtype == torch.float32 and plain.shape == (2, 6, 96, 80)
    fast = loaded.predictor(channels_last=True)(image)
    assert loaded.model.encoder.conv1.weight.is_contiguous(memory_format=torch.channels_last)
    torch.testing.assert_close(fast, plain, atol=1e-4, rtol=1e-4)
    half = loaded.predictor(torch.bfloat16, channels_last=True)(image)
    assert half.dtype == torch.float32 and (half - plain).abs().max() < 0.5


def test_precision_auto_follows_the_hardware(monkeypatch):
    from sssi import scaling
    from sssi.inference import resolve_precision

    cpu = torch.device("cpu")
    monkeypatch.setattr(scaling, "cpu_has_bf16_units", lambda cpuinfo=None: True)
    assert resolve_precision("auto", cpu) == (torch.bfloat16,
                                              "auto: CPU with bf16 matrix units (AMX)")
    monkeypatch.setattr(scaling, "cpu_has_bf16_units", lambda cpuinfo=None: False)
    dtype, why = resolve_precision("auto", cpu)
    assert dtype is None and "without bf16 matrix units" in why
    assert resolve_precision("fp32", cpu)[0] is None
    assert resolve_precision("bf16", cpu)[0] is torch.bfloat16
    with pytest.raises(ConfigError, match=re.escape("precision='fp16': expected one of")):
        resolve_precision("fp16", cpu)


def test_predict_keeps_memory_flat_in_raster_height_and_equals_one_chunk(tmp_path,
                                                                        monkeypatch):
    """What chunked prediction keeps for later cores (the overlap strip) does not grow
    with the raster's height; the maps equal one chunk's, with reading and writing in
    their threads."""
    from sssi import inference

    loaded = _fake(_local(k=6))
    kept_bytes: list[int] = []
    settle = inference._settle

    def watch(*args):
        out = settle(*args)
        kept_bytes.append(sum(s.numel() * 4 for pieces in args[-1].values()
                              for *_, s in pieces))
        return out

    monkeypatch.setattr(inference, "_settle", watch)
    peaks = {}
    for height in (300, 600):
        src_path = tmp_path / f"h{height}.tif"
        _crop(real_sample(*RGB_BYTE), src_path, Window(100, 100, 700, height))
        outs = {}
        for chunk in (4096, 96):
            kept_bytes.clear()
            out = tmp_path / f"h{height}_c{chunk}.tif"
            predict_file(loaded, src_path, out, window=64, stride=48, chunk=chunk,
                         batch_size=8, precision="fp32")
            with rasterio.open(out) as dst:
                outs[chunk] = dst.read(1)
        assert (outs[96] == outs[4096]).all()
        peaks[height] = max(kept_bytes)
    assert peaks[600] <= peaks[300]
    # the strip (window - stride = 16 px across 700 px, K + 1 = 7 floats), twice at most
    assert 0 < peaks[300] <= 2 * 7 * 4 * 16 * 700


def test_evaluate_onto_a_full_disk_is_one_line_naming_the_file(trained, tmp_path, monkeypatch):
    """(issue 30) evaluate writes every file atomically: a full disk is one line that
    names the file it was writing, and nothing half-written is left."""
    import errno
    import os

    from sssi.evaluate import run as evaluate

    out = tmp_path / "eval"
    cfg = _compose_evaluate([f"ckpt={trained['ckpt']}", f"data.root={trained['data']}",
                             "window=128", "stride=96", "precision=fp32", "progress=false"],
                            out)

    def full(fd):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(os, "fsync", full)
    with pytest.raises(DataError) as err:
        evaluate(cfg)
    assert str(err.value) == f"{out / 'predictions' / '2_13.png'}: no space left on device"
    assert [p.name for p in out.rglob("*") if p.is_file()] == []


def test_the_maps_normaliser_equals_the_training_batches_exactly():
    """LoadedModel.normalize runs in numpy (in the reading thread) with the arithmetic of
    training's BatchNormalizer: the values are equal, not merely close."""
    from sssi.data.augment import BatchNormalizer

    raw = np.random.default_rng(0).integers(0, 256, (50, 60, 3), dtype=np.uint8)
    loaded = _fake(_pointwise())
    loaded.mean, loaded.std = [113.6, 113.96, 114.4], [53.1, 47.7, 60.3]
    want = BatchNormalizer(loaded.mean, loaded.std)(
        torch.from_numpy(np.ascontiguousarray(raw.transpose(2, 0, 1))))
    got = loaded.normalize(raw)
    assert got.dtype == torch.float32 and torch.equal(got, want)
