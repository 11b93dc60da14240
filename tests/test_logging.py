"""Logging: offline W&B runs (flattened config, best-value summary, panels, checkpoint
artifact), the sweep group, TensorBoard, and the callbacks' image panels."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from hydra import compose, initialize_config_dir
from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode
from hydra.utils import instantiate
from omegaconf import OmegaConf, open_dict

from sssi.callbacks import WandbSummary, make_grid, make_prediction_grid
from sssi.data.palettes import colorize
from sssi.loggers import flatten, sweep_group
from sssi.train import CONFIG_DIR, run
from tests.helpers import TINY, compose_train, read_offline_run


def _compose(overrides: list[str], tmp_path: Path):
    return compose_train(overrides, tmp_path / "run", tmp_path / "data")


# fit (one epoch) and test, with a small validation set
TINY_LOG = [*TINY, "data.val_max_windows=4", "trainer.enable_progress_bar=false"]


@pytest.fixture
def wandb_env(tmp_path, monkeypatch):
    """W&B offline and silent, every file of it under tmp_path; WANDB_MODE unset (the
    default path) and restored afterwards (Lightning sets it when offline=True)."""
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.delenv("WANDB_MODE")
    for var in ("WANDB_DIR", "WANDB_DATA_DIR", "WANDB_CACHE_DIR", "WANDB_CONFIG_DIR",
                "WANDB_ARTIFACT_DIR"):
        monkeypatch.setenv(var, str(tmp_path / "wandb_home" / var.lower()))
    monkeypatch.setenv("WANDB_SILENT", "true")
    monkeypatch.setenv("WANDB_CONSOLE", "off")
    monkeypatch.setenv("WANDB_X_DISABLE_STATS", "true")
    monkeypatch.setenv("WANDB_DISABLE_CODE", "true")
    monkeypatch.setenv("WANDB_DISABLE_GIT", "true")
    yield
    import wandb

    wandb.finish()  # a failed test must not leave its run to the next
    wandb.teardown()


def test_offline_wandb_and_tensorboard_record_config_best_values_and_panels(tmp_path,
                                                                             wandb_env):
    """One tiny segmentation run (fit + test) with both loggers: logger=[wandb,tensorboard]."""
    import wandb
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    cfg = _compose([*TINY_LOG, "logger=[wandb,tensorboard]", "data.label_fraction=0.5",
                    "callbacks.wandb_summary.log_checkpoint=true"], tmp_path)
    assert cfg.logger.wandb.offline is True and cfg.logger.wandb.group == ""
    metrics = run(cfg)
    # what the end of `python -m sssi.train` does (atexit): finish the run, then wait
    # for W&B's service to write everything (finish() alone may return before that)
    wandb.finish()
    wandb.teardown()

    out = Path(cfg.paths.output_dir)
    (run_dir,) = (out / "wandb").glob("offline-run-*")
    rec = read_offline_run(run_dir)
    assert rec["complete"]
    assert rec["project"] == "sssi" and rec["job_type"] == "segment" and rec["group"] == ""

    # the config, flattened: one key per leaf
    config = rec["config"]
    assert config["data.label_fraction"] == 0.5
    assert config["task.optimizer._target_"] == cfg.task.optimizer._target_
    assert config["logger.wandb.project"] == "sssi"
    assert "data" not in config and "task" not in config

    # best values: max for scores, min for losses; the last value elsewhere
    summary = rec["summary"]
    for key in ("val/mIoU", "val/mF1", "val/OA", "val/mIoU_5", "val/IoU_building",
                "test/mIoU", "test/OA", "test/IoU_building"):
        assert set(summary.get(key, ())) == {"max"}, (key, sorted(summary))
        assert 0.0 <= summary[key]["max"] <= 1.0
    for key in ("train/loss", "val/loss", "test/loss"):
        assert set(summary.get(key, ())) == {"min"}, (key, sorted(summary))
    assert summary["test/mIoU"]["max"] == pytest.approx(metrics["test/mIoU"])
    assert summary["val/mIoU"]["max"] >= metrics["val/mIoU"] - 1e-6
    assert summary["trainer/global_step"] == 2  # plain value: no aggregate
    assert summary["val/predictions"]["_type"] == "images/separated"
    assert list((run_dir / "files" / "media" / "images" / "val").glob("predictions_*.png"))

    # the checkpoint artifact (offline: uploaded by `wandb sync`)
    (art,) = rec["artifacts"]
    assert art["type"] == "model" and art["name"] == f"model-{rec['id']}"
    assert set(art["aliases"]) >= {"best", "last"} and "last.ckpt" in art["files"]

    # the prediction panel on disk and in TensorBoard, with the scalars
    assert [p.name for p in (out / "images").glob("*.png")] == ["predictions_epoch000.png"]
    assert list((out / "tensorboard").glob("events.out.tfevents.*"))  # fit's and test's
    acc = EventAccumulator(str(out / "tensorboard"), size_guidance={"images": 0}).Reload()
    tags = acc.Tags()
    assert {"train/loss", "val/mIoU", "test/mIoU"} <= set(tags["scalars"])
    (img,) = acc.Images("val/predictions")
    assert img.width * 4 == img.height * 3  # 4 rows of image | label | prediction
    assert (out / "tensorboard" / "hparams.yaml").is_file()


def test_sweep_group_names_the_multirun_and_is_empty_in_a_single_run(tmp_path):
    def with_mode(mode: RunMode | None, sweep_dir: str) -> tuple[str, str]:
        with initialize_config_dir(config_dir=CONFIG_DIR, version_base="1.3"):
            cfg = compose("train", overrides=["+experiment=potsdam_finetune",
                                              f"hydra.sweep.dir={sweep_dir}"],
                          return_hydra_config=True)
        with open_dict(cfg):
            cfg.hydra.mode = mode
        HydraConfig.instance().set_config(cfg)
        return sweep_group(cfg.task_name), str(cfg.logger.wandb.group)

    previous = HydraConfig.instance().cfg
    try:
        sweep = str(tmp_path / "finetune" / "multiruns" / "2025-01-31_12-00-00")
        assert with_mode(RunMode.MULTIRUN, sweep) == ("finetune-2025-01-31_12-00-00",) * 2
        assert with_mode(RunMode.MULTIRUN, "sweeps/finetune-lr") == ("finetune-lr",) * 2
        assert with_mode(RunMode.RUN, sweep) == ("", "")
        HydraConfig.instance().cfg = None
        assert sweep_group("finetune") == ""
    finally:
        HydraConfig.instance().cfg = previous


def test_wandb_is_the_full_configs_logger_and_offline_unless_wandb_mode_says(tmp_path,
                                                                           monkeypatch):
    monkeypatch.delenv("WANDB_MODE", raising=False)
    for exp in ("potsdam_finetune", "potsdam_scratch", "potsdam_pretrain"):
        cfg = _compose([f"+experiment={exp}"], tmp_path)
        assert list(cfg.logger) == ["wandb"], exp
        lg = instantiate(cfg.logger.wandb)  # lazy: no W&B run starts here
        assert type(lg).__name__ == "WandbLogger" and lg._offline is True
        assert lg._wandb_init["job_type"] == cfg.task_name
    for mode, offline in (("online", False), ("disabled", False), ("offline", True),
                          ("dryrun", True)):
        monkeypatch.setenv("WANDB_MODE", mode)
        assert OmegaConf.to_container(cfg.logger, resolve=True)["wandb"]["offline"] is offline
    demo = _compose(["+experiment=demo_finetune"], tmp_path)
    assert list(demo.logger) == ["csv"]
    both = _compose(["logger=wandb_csv"], tmp_path)
    assert sorted(both.logger) == ["csv", "wandb"]


def test_the_game_sends_its_grids_to_tensorboard_and_no_prediction_panel(tmp_path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    cfg = _compose(["+experiment=demo_pretrain", "logger=tensorboard",
                    "data.synthetic.size=256", "data.synthetic.tiles=3",
                    "data.batch_size=4", "data.samples_per_epoch=4", "data.num_workers=0",
                    "data.val_max_windows=2", "trainer.max_epochs=1",
                    "trainer.log_every_n_steps=1", "task.image_every_n_steps=1",
                    "trainer.enable_progress_bar=false"], tmp_path)
    run(cfg)
    out = Path(cfg.paths.output_dir)
    (events,) = (out / "tensorboard").rglob("events.out.tfevents.*")
    tags = EventAccumulator(str(events.parent), size_guidance={"images": 0}).Reload().Tags()
    assert "game/grid" in tags["images"] and "val/predictions" not in tags["images"]
    assert "val/instructor_cells" in tags["images"]  # where the instructor erases
    assert "train/inpainter_loss" in tags["scalars"]
    assert "val/border_ratio" in tags["scalars"]
    pngs = [p.name for p in (out / "images").glob("*.png")]
    assert pngs and all(name.startswith(("game_step", "instructor_cells_epoch"))
                        for name in pngs)


# ------------------------------------------------------------------------- unit level
def test_prediction_grid_shows_image_label_and_prediction_in_palette_colours():
    colors = np.array([(255, 255, 255), (0, 0, 255), (0, 255, 0)], np.uint8)
    images = torch.rand(2, 4, 8, 8)
    labels = torch.zeros(2, 8, 8, dtype=torch.long)
    labels[0, 0, 0] = 255  # ignored: black
    labels[1] = 1
    preds = torch.full((2, 8, 8), 2)
    grid = make_prediction_grid(images, labels, preds, colors)
    assert grid.shape == (16, 24, 3) and grid.dtype == np.uint8
    assert tuple(grid[0, 8]) == (0, 0, 0) and tuple(grid[1, 8]) == (255, 255, 255)
    assert tuple(grid[9, 8]) == (0, 0, 255) and tuple(grid[9, 16]) == (0, 255, 0)
    # a class beyond the palette still gets a colour, not black
    assert tuple(colorize(np.array([[5]]), colors)[0, 0]) != (0, 0, 0)


def test_wandb_summary_patterns():
    cb = WandbSummary()
    assert cb.summary_of("val/mIoU") == cb.summary_of("val/mIoU_5") == "max"
    assert cb.summary_of("test/IoU_car") == cb.summary_of("val/OA") == "max"
    assert cb.summary_of("train/loss") == cb.summary_of("train/inpainter_loss") == "min"
    assert cb.summary_of("val/hole_error_random") == "min"
    assert cb.summary_of("trainer/global_step") is None and cb.summary_of("lr-SGD") is None
    custom = WandbSummary(maximize=["acc"], minimize=["*"])
    assert custom.summary_of("acc") == "max" and custom.summary_of("val/mIoU") == "min"
    with pytest.raises(ValueError, match="checkpoint_policy"):
        WandbSummary(checkpoint_policy="copy")


def test_flatten_gives_dotted_keys():
    assert flatten({"data": {"label_fraction": 0.1, "scale": [1, 2]}, "seed": 0, "e": {}}) == {
        "data.label_fraction": 0.1, "data.scale": [1, 2], "seed": 0, "e": {}}


def test_image_grid_layout():
    images = torch.randn(2, 4, 8, 8)
    masks = torch.zeros(2, 1, 8, 8)
    masks[:, :, :4] = 1
    grid = make_grid(images, masks, images.clone())
    assert grid.shape == (16, 40, 3) and grid.dtype == np.uint8
    # mask column: white in the holes, black elsewhere
    assert (grid[:4, 8:16] == 255).all() and (grid[4:8, 8:16] == 0).all()
    # the filled result equals the input when the restoration is perfect
    assert np.abs(grid[:, 32:40].astype(int) - grid[:, 0:8].astype(int)).max() <= 1


def test_a_run_stopped_at_set_up_ends_on_its_error_line_not_a_wandb_banner(
        tmp_path, synthetic_root, monkeypatch):
    """A W&B run opened before set-up found a missing test tile is closed quietly as
    failed: the error is the last line, with no colour codes after it."""
    from tests.helpers import run_module

    for var, value in {"WANDB_MODE": "offline", "WANDB_DIR": str(tmp_path / "wandb_home"),
                       "WANDB_X_DISABLE_STATS": "true", "WANDB_DISABLE_CODE": "true",
                       "WANDB_DISABLE_GIT": "true"}.items():
        monkeypatch.setenv(var, value)
    proc = run_module("sssi.train", [*TINY, f"data.root={synthetic_root}",
                                     "data.synthetic.tiles=4", "logger=wandb",
                                     "data.test_split=['9_99']",
                                     f"hydra.run.dir={tmp_path / 'run'}"], cwd=tmp_path)
    assert proc.returncode == 1
    last = proc.stderr.rstrip().splitlines()[-1]
    assert last.startswith("error: ") and "tiles ['9_99'] not found" in last
    assert "\x1b[" not in proc.stderr
