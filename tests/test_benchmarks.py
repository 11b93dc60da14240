"""The benchmarks time what they say: the game benchmark builds the paper's players from
the real configs and each timed kind is the step it names; the data benchmark's
transport row ships samples shaped like the dataset's."""

from __future__ import annotations

import importlib
from pathlib import Path

import pytest
import torch

REPO = Path(__file__).resolve().parents[1]


def _load(name: str):
    """A benchmark module, imported as the package it is (``experiments.benchmarks``)."""
    return importlib.import_module(f"experiments.benchmarks.{name}")


@pytest.fixture(scope="module")
def game_step():
    return _load("game_step")


def test_game_benchmark_builds_the_papers_players(game_step):
    cfg = game_step.game_config(128, 8, [])
    task = game_step.build_task(cfg, "instructor", False, False)
    assert task.hparams.backbone["name"] == "drn_a_50"
    assert task.game.inpainter.output == "tanh"
    settings = task.instructor_settings
    assert settings["backbone"]["name"] == "resnet18" and not settings["backbone"]["stem_pool"]
    assert settings["network"]["ratio"] == 0.25
    assert task.game.instructor.cell_size == 16


@pytest.mark.parametrize(("choice", "players"), [("off", ()), ("on", ("inpainter", "instructor")),
                                                 ("instructor", ("instructor",)),
                                                 ("inpainter", ("inpainter",))])
def test_memory_format_choices_name_the_players(game_step, choice, players):
    cfg = game_step.game_config(128, 8, [])
    task = game_step.build_task(cfg, "instructor", game_step.MEMORY_FORMATS[choice], False)
    assert task.game.channels_last == players


@pytest.mark.parametrize(("kind", "phase"), [("inpainter_random", "warmup"),
                                             ("inpainter", "inpainter"),
                                             ("instructor", "instructor")])
def test_each_timed_kind_is_the_step_it_names(game_step, kind, phase):
    from sssi.game.schedule import Schedule, warmup_end_step

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


def test_profile_split_groups_convolutions_batch_norm_and_the_rest():
    split = _load("game_profile").split_self_time
    shares = split([("aten::convolution_backward", 6.0), ("aten::mm", 2.0),
                    ("aten::native_batch_norm", 1.0), ("aten::relu_", 0.5), ("aten::add_", 0.5)])
    assert shares == pytest.approx({"conv": 0.8, "batch_norm": 0.1, "other": 0.1})


def test_the_authors_steps_interleave_and_are_left_out_of_sssis_time(game_step):
    """Warm-up steps before and the profiled step after the timed ones are left out; the
    authors' step run after each of sssi's is timed on its own, not as sssi's."""
    clock = {"now": 0.0}
    sssi_steps = [1.0, 1.0, 2.0, 2.0, 50.0]  # batches 0-4: warm-up, 2 timed, profiled
    authors_steps = iter([10.0, 20.0, 30.0, 40.0, 99.0])

    def authors_step() -> None:
        clock["now"] += next(authors_steps)

    timer = _load("common").LoopTimer(skip=2, last=3, clock=lambda: clock["now"])
    authors = _load("game_reference").Interleaved(authors_step, timer)
    for batch_idx, seconds in enumerate(sssi_steps):
        clock["now"] += seconds
        timer.on_train_batch_end(None, None, None, None, batch_idx)
        authors.on_train_batch_end(None, None, None, None, batch_idx)
    assert timer.durations == [2.0, 2.0]
    assert authors.durations == [20.0, 30.0]  # after batches 1 and 2, before 2 and 3
    assert timer.seconds_per_step == 2.0 and authors.seconds_per_step == 25.0


def test_a_profiled_step_splits_its_time(game_step):
    from types import SimpleNamespace

    cfg = game_step.game_config(32, 2, ["backbone=resnet18"])
    args = SimpleNamespace(device="cpu", batch=2, size=32, warmup=0, steps=1, profile=True)
    got = game_step.time_kind(cfg, "instructor", args, "32-true", False, False)
    shares = got["shares"]
    assert got["rate"] > 0 and set(shares) == {"conv", "batch_norm", "other"}
    assert sum(shares.values()) == pytest.approx(1.0) and shares["conv"] > 0.2


def test_the_frozen_forward_benchmark_compares_equal_outputs():
    bench = _load("frozen_forward")
    r = bench.compare(batch=1, size=32, fmt=torch.channels_last, precision="32-true",
                      device=torch.device("cpu"), repeats=1)
    assert r["eval"] > 0 and r["folded"] > 0 and r["fold"] > 0
    assert r["diff"] < 1e-4  # the folded copy restores what the network does


def test_the_authors_steps_run_between_sssis(game_step):
    """The authors' script (beside the checkout, never copied in) loads in process and
    its step of a kind runs after each of sssi's, with its own rate."""
    from types import SimpleNamespace

    script = REPO.parent / "shared" / "tools" / "authors_step.py"
    if not script.exists():
        pytest.skip(f"the authors' step script is not beside the checkout: {script}")
    steps = _load("game_reference").authors_steps(str(script), batch=2, size=32)
    assert set(steps) == set(game_step.KINDS)
    cfg = game_step.game_config(32, 2, ["backbone=resnet18"])
    args = SimpleNamespace(device="cpu", batch=2, size=32, warmup=0, steps=2, profile=False)
    got = game_step.time_kind(cfg, "instructor", args, "32-true", False, False,
                              steps["instructor"])
    assert got["rate"] > 0 and got["authors_rate"] > 0


def test_the_shared_timers_and_cpu_flags():
    common = _load("common")
    calls = []
    assert common.best_of(lambda: calls.append(1), repeats=3) >= 0 and len(calls) == 4
    assert common.median_seconds([3.0, 1.0, 2.0]) == 2.0
    assert common.median_seconds([]) != common.median_seconds([])  # NaN when nothing timed
    info = "processor : 0\nflags : fpu avx2 avx512f amx_bf16 amx_tile\n"
    assert common.cpu_flags(info) == "avx2 avx512f amx_bf16 amx_tile"
    assert common.cpu_flags("flags : fpu sse2\n").startswith("none of ")


def test_the_mapping_benchmark_compares_end_to_end_with_the_network_and_a_reference(
        tmp_path):
    """A tiny run, with this checkout as its own reference: every row has both rates,
    and the last line reads infer_vs_forward R precision=P."""
    import subprocess
    import sys

    bench = _load("inference")
    assert bench.overlap(1000, 512, 384) == pytest.approx(3 * 3 * 512**2 / 1000**2)
    proc = subprocess.run(
        [sys.executable, "-m", "experiments.benchmarks.inference", "--sizes", "160",
         "--window", "64", "--stride", "48", "--chunk", "96", "--backbone", "resnet18",
         "--precisions", "fp32", "--network-seconds", "0", "--device", "cpu",
         "--reference", str(REPO)], capture_output=True, text=True, cwd=REPO, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    lines = proc.stdout.strip().splitlines()
    row = lines[2].split()
    assert row[:2] == ["fp32", "160"] and len(row) == 13
    assert float(row[4]) > 0 and float(row[5]) > 0 and float(row[8]) > 0  # e2e, net, ref
    last = lines[-1].split()
    assert last[0] == "infer_vs_forward" and float(last[1]) > 0
    assert last[2] == "precision=fp32"
