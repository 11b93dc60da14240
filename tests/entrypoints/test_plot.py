"""Training curves as a picture (``python -m sssi.plot RUN``)."""

from __future__ import annotations

import pytest

from sssi.errors import DataError
from sssi.plot import main, panel_of, plot_run, read_curves

CSV = """epoch,lr-SGD,mask/border_ratio,step,train/inpainter_loss,train/instructor_kl,\
train/phase,val/hole_error_random,val/IoU_car
0,0.01,,7,0.9,,0,,
0,,1.5,15,0.7,120.0,1,,
0,,,15,,,,0.4,0.2
1,0.001,2.0,23,nan,3000.0,2,,
"""


def test_curves_are_grouped_into_panels_and_drawn(tmp_path):
    run = tmp_path / "run"
    (run / "csv").mkdir(parents=True)
    (run / "csv" / "metrics.csv").write_text(CSV)
    curves = read_curves(run / "csv" / "metrics.csv")
    assert curves["train/inpainter_loss"] == [(7.0, 0.9), (15.0, 0.7)]  # nan dropped
    assert curves["val/hole_error_random"] == [(15.0, 0.4)]
    assert panel_of("train/inpainter_loss") == "loss"
    assert panel_of("val/hole_error_random") == "hole error"
    assert panel_of("mask/border_ratio") == "masks"
    assert panel_of("train/instructor_kl").startswith("instructor KL")
    assert panel_of("val/IoU_car") is None  # per-class scores are left out
    out = plot_run(run)
    assert out == run / "curves.png"
    png = out.read_bytes()
    assert png[:8] == b"\x89PNG\r\n\x1a\n" and len(png) > 20_000


def test_a_run_without_curves_is_one_error_line(tmp_path, capsys):
    with pytest.raises(DataError, match=r"metrics\.csv"):
        plot_run(tmp_path)
    assert main([str(tmp_path / "missing")]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error:") and "missing" in err[0]
