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
