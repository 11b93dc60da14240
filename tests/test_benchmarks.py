"""The benchmarks time what they say: the game benchmark builds the paper's players from
the real configs and each timed kind is the step it names; the data benchmark's
transport row ships samples shaped like the dataset's."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import pytest
import torch

BENCH = Path(__file__).resolve().parents[1] / "experiments" / "benchmarks"


def _load(name: str):
    if str(BENCH) not in sys.path:
        sys.path.insert(0, str(BENCH))  # game_step imports data_pipeline by name
    spec = importlib.util.spec_from_file_location(f"bench_{name}", BENCH / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def game_step():
    return _load("game_step")


def test_game_benchmark_builds_the_papers_players(game_step):
    cfg = game_step.game_config(128, 8, [])
    task = game_step.build_task(cfg, "instructor", False, False)
    assert task.hparams.backbone["name"] == "drn_a_50"
    assert task.inpainter.output == "tanh"
    settings = task.instructor_settings
    assert settings["backbone"]["name"] == "resnet18" and not settings["backbone"]["stem_pool"]
    assert settings["network"]["ratio"] == 0.25
    assert task.instructor.cell_size == 16


@pytest.mark.parametrize(("choice", "players"), [("off", ()), ("on", ("inpainter", "instructor")),
                                                 ("instructor", ("instructor",)),
                                                 ("inpainter", ("inpainter",))])
def test_memory_format_choices_name_the_players(game_step, choice, players):
    cfg = game_step.game_config(128, 8, [])
    task = game_step.build_task(cfg, "instructor", game_step.MEMORY_FORMATS[choice], False)
    assert task.channels_last == players


@pytest.mark.parametrize(("kind", "phase"), [("inpainter_random", "warmup"),
                                             ("inpainter", "inpainter"),
                                             ("instructor", "instructor")])
def test_each_timed_kind_is_the_step_it_names(game_step, kind, phase):
    from sssi.tasks.schedule import Schedule, warmup_end_step

    cfg = game_step.kind_config(game_step.game_config(128, 8, []), kind)
    s = Schedule(**cfg.task.schedule)  # as PretrainTask builds it
    warm_end = warmup_end_step(s.warmup_epochs, 1, 1)
    assert s.phase(0, 0, warm_end) in ("warmup", "inpainter")  # step 0: the inpainter
    assert {s.phase(0, step, warm_end) for step in range(1, 20)} == {phase}


def test_ship_row_samples_match_the_dataset(tmp_path):
    bench = _load("data_pipeline")
    from sssi.data import SegmentationDataModule

    bench.write_tile(tmp_path, 300, tiled=True)
    dm = SegmentationDataModule(root=str(tmp_path), crop_size=64, batch_size=4, num_workers=0,
                                samples_per_epoch=8, region_size=300, train_split=[bench.TILE],
                                val_split=None, test_split=None)
    dm.setup("fit")
    real, ready = dm.train_set[3], bench.Ready(dm.train_set)[5]
    assert list(real) == list(ready)
    for key, value in real.items():
        if torch.is_tensor(value):
            assert ready[key].shape == value.shape and ready[key].dtype == value.dtype
    assert bench.time_ship(dm, 0) > 0 and dm.train_set is not None
    assert not isinstance(dm.train_set, bench.Ready)  # the real dataset is put back
