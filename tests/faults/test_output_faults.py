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
