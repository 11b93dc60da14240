"""Outputs that used to be written wrong without a word."""

from __future__ import annotations

import pytest

from sssi.errors import ConfigError
from sssi.predict import predict_file


@pytest.mark.parametrize(("key", "name"), [("output", "map.png"), ("probabilities", "p.jpg")])
def test_a_prediction_named_as_another_format_is_refused_before_anything_is_read(
        tmp_path, key, name):
    names = {"output": "map.tif", "probabilities": "p.tif", key: name}
    with pytest.raises(ConfigError) as err:
        predict_file(None, tmp_path / "missing.tif", tmp_path / names["output"],
                     probabilities=tmp_path / names["probabilities"])
    assert str(err.value) == (f"{key}={tmp_path / name}: predictions are written as GeoTIFF; "
                              "give a name ending in .tif or .tiff")
    assert list(tmp_path.iterdir()) == []


def _run_folder(path, config: str, metrics: dict | None = None):
    import json

    (path / ".hydra").mkdir(parents=True)
    (path / ".hydra" / "config.yaml").write_text(config)
    if metrics is not None:
        (path / "metrics.json").write_text(json.dumps(metrics))
    return path


def test_an_evaluation_is_listed_at_its_models_label_fraction_not_the_data_default(tmp_path):
    from sssi.aggregate import read_run

    train = _run_folder(tmp_path / "train", "task_name: segment\nseed: 2\n"
                        "study: {method: blocks}\ndata: {label_fraction: 0.1}\n")
    evaluation = _run_folder(
        tmp_path / "eval", f"task_name: evaluate\nseed: 0\nckpt: {train}/checkpoints/last.ckpt\n"
        "data: {label_fraction: 1.0}\n", {"test/mIoU": 0.5})
    run = read_run(evaluation)
    assert (run.method, run.fraction, run.seed) == ("blocks", 0.1, 2)
    orphan = _run_folder(tmp_path / "orphan", "task_name: evaluate\nseed: 0\n"
                         "ckpt: /gone/checkpoints/last.ckpt\ndata: {label_fraction: 1.0}\n",
                         {"test/mIoU": 0.5})
    run = read_run(orphan)
    assert run.fraction != run.fraction and run.seed == "?"  # unknown (NaN), never 100 %


def test_predict_removes_what_a_killed_run_left_but_not_a_live_runs_files(tmp_path):
    import os
    import subprocess
    import sys

    from sssi.predict import remove_stale_temporaries

    gone = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"],
                          capture_output=True, text=True, check=True).stdout.strip()
    out = tmp_path / "map.tif"
    dead = [tmp_path / f".map.tif.{gone}-abcd1234.tmp.tif",
            tmp_path / f".map.tif.{gone}-abcd1234.cog.tif"]
    live = tmp_path / f".map.tif.{os.getpid()}-ffff0000.tmp.tif"
    other = tmp_path / f".other.tif.{gone}-abcd1234.tmp.tif"
    for p in (*dead, live, other):
        p.write_bytes(b"")  # kill -9 mid-write leaves empty files
    assert remove_stale_temporaries(out) == sorted(dead)
    assert sorted(tmp_path.iterdir()) == sorted([live, other])


# ------------------------------------------------------------ full and read-only disks
def _statvfs(free_bytes: int, read_only: bool = False):
    """A stand-in for ``os.statvfs``: 4 KiB blocks, ``free_bytes`` available."""
    import os

    def fake(path):
        blocks = free_bytes // 4096
        flag = os.ST_RDONLY if read_only else 0
        return os.statvfs_result((4096, 4096, 10**6, blocks, blocks, 1000, 1000, 1000,
                                  flag, 255))

    return fake


@pytest.mark.parametrize(("free", "read_only", "reason"), [
    (0, False, "no space left on device"), (10**9, True, "read-only file system"),
    (10**9, False, None)])
def test_a_volume_says_why_it_refuses_writes(tmp_path, monkeypatch, free, read_only, reason):
    import os

    from sssi.utils.io import volume_refusal

    monkeypatch.setattr(os, "statvfs", _statvfs(free, read_only))
    assert volume_refusal(tmp_path / "not" / "yet" / "made.tif") == reason
    assert not (tmp_path / "not").exists()


def _predict_setup(tmp_path):
    from rasterio.windows import Window

    from tests.helpers import real_sample
    from tests.test_inference import _crop, _fake, _pointwise

    src = tmp_path / "in.tif"
    _crop(real_sample("rasterio", "RGB.byte.tif"), src, Window(0, 0, 120, 100))
    out = tmp_path / "out" / "map.tif"
    out.parent.mkdir()
    out.write_bytes(b"the map of yesterday")
    return _fake(_pointwise(k=6)), src, out


def test_predict_onto_a_full_disk_is_one_line_and_keeps_the_old_map(tmp_path, monkeypatch):
    """GDAL's own message for a full disk (a TIFF directory it cannot read back) points
    the wrong way; the volume's state gives the reason, temporaries are removed."""
    import os

    import rasterio.shutil
    from rasterio._err import CPLE_AppDefinedError

    from sssi.errors import DataError

    loaded, src, out = _predict_setup(tmp_path)

    def full(*args, **kwargs):
        monkeypatch.setattr(os, "statvfs", _statvfs(0))
        raise CPLE_AppDefinedError(1, 1, "TIFFReadDirectory:Failed to read directory")

    monkeypatch.setattr(rasterio.shutil, "copy", full)
    with pytest.raises(DataError) as err:
        predict_file(loaded, src, out, window=64, stride=48, precision="fp32")
    assert str(err.value) == f"{out}: no space left on device"
    assert out.read_bytes() == b"the map of yesterday"
    assert sorted(p.name for p in out.parent.iterdir()) == ["map.tif"]


def test_predict_onto_a_read_only_folder_is_one_line(tmp_path, monkeypatch):
    import errno

    import rasterio

    from sssi.errors import DataError

    loaded, src, out = _predict_setup(tmp_path)
    real_open = rasterio.open

    def refuse(path, mode="r", **kwargs):
        if mode == "w":
            raise OSError(errno.EROFS, "Read-only file system")
        return real_open(path, mode, **kwargs)

    monkeypatch.setattr(rasterio, "open", refuse)
    with pytest.raises(DataError) as err:
        predict_file(loaded, src, out, window=64, stride=48, precision="fp32")
    assert str(err.value) == f"{out}: read-only file system"
    assert out.read_bytes() == b"the map of yesterday"


def test_export_onto_a_full_disk_is_one_line_and_keeps_the_old_file(tmp_path, monkeypatch):
    import errno

    import torch

    from sssi.errors import DataError
    from sssi.export import export_encoder
    from tests.helpers import legacy_checkpoint

    ckpt = legacy_checkpoint("segment", tmp_path / "segment.ckpt")
    out = tmp_path / "encoder.pth"
    out.write_bytes(b"yesterday's encoder")

    def full(obj, f, *args, **kwargs):
        f.write(b"half")  # the temporary file's handle
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(torch, "save", full)
    with pytest.raises(DataError) as err:
        export_encoder(ckpt, out)
    assert str(err.value) == f"{out}: no space left on device"
    assert out.read_bytes() == b"yesterday's encoder"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["encoder.pth", "segment.ckpt"]


def test_a_run_folder_on_a_read_only_volume_stops_before_hydra_writes(tmp_path, monkeypatch,
                                                                       capsys):
    import os

    from omegaconf import OmegaConf

    from sssi.cli import OutputFolderCheck
    from tests.helpers import compose_train

    composed = compose_train([], hydra_node=True)
    assert composed.hydra.callbacks.output_folder._target_ == "sssi.cli.OutputFolderCheck"
    cfg = OmegaConf.create({"hydra": {"run": {"dir": str(tmp_path / "run")},
                                      "sweep": {"dir": str(tmp_path / "sweep")}}})
    OutputFolderCheck().on_run_start(cfg)  # a writable volume: nothing happens
    monkeypatch.setattr(os, "statvfs", _statvfs(10**9, read_only=True))
    with pytest.raises(SystemExit) as stop:
        OutputFolderCheck().on_multirun_start(cfg)
    assert stop.value.code == 1
    assert capsys.readouterr().err.strip() == (
        f"error: {tmp_path / 'sweep'} (hydra.sweep.dir): read-only file system")
    assert sorted(tmp_path.iterdir()) == []
