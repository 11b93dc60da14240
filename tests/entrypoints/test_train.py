"""The entry point and the real configs: composition, end-to-end runs, user errors."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import pytest
from hydra.errors import InstantiationException
from hydra.utils import instantiate
from omegaconf import open_dict

from sssi.errors import ConfigError
from sssi.train import CONFIG_DIR
from tests.helpers import TINY, compose_train, run_module

CONF = Path(CONFIG_DIR)

def _compose(overrides: list[str], tmp_path: Path):
    return compose_train(overrides, tmp_path / "run", tmp_path / "data")


def _options(group: str) -> list[str]:
    """Every option of a config group, nested ones as ``sub/name``."""
    return sorted(p.relative_to(CONF / group).with_suffix("").as_posix()
                  for p in (CONF / group).rglob("*.yaml"))


@pytest.mark.parametrize("data", _options("data"))
@pytest.mark.parametrize("trainer", _options("trainer"))
def test_every_data_and_trainer_config_composes(data, trainer, tmp_path):
    cfg = _compose([f"data={data}", f"trainer={trainer}"], tmp_path)
    dm = instantiate(cfg.data)
    assert dm.in_channels == cfg.backbone.in_channels == dm.layout.num_bands
    assert cfg.data.num_classes == dm.num_classes == (5 if data == "dubai" else 6)
    assert cfg.trainer._target_ == "lightning.Trainer"


@pytest.mark.parametrize("backbone", _options("backbone"))
def test_every_backbone_builds_a_task(backbone, tmp_path):
    cfg = _compose([f"backbone={backbone}", "data.modality=RGBIR", "data.ndsm=true"], tmp_path)
    assert cfg.data.in_channels == 5
    task = instantiate(cfg.task)
    import torch

    with torch.no_grad():
        out = task.eval()(torch.zeros(1, 5, 64, 64))
    assert out.shape == (1, 6, 64, 64)


def _run(args: list[str], cwd: Path, timeout: int = 600) -> subprocess.CompletedProcess:
    return run_module("sssi.train", args, cwd, timeout)


@pytest.mark.slow
def test_main_job_runs_end_to_end_on_generated_synthetic_data(tmp_path):
    out = tmp_path / "out"
    proc = _run([*TINY, f"paths.data_dir={tmp_path / 'data'}", f"hydra.run.dir={out}"],
                cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    # +debug=tiny's 3 tiles of 256 px: a folder of their own beside the default dataset
    assert (tmp_path / "data" / "synthetic_potsdam_3x256" / "SYNTHETIC.json").is_file()
    assert (out / "checkpoints" / "last.ckpt").is_file()
    assert (out / ".hydra" / "config.yaml").is_file()
    metrics = json.loads((out / "metrics.json").read_text())
    for key in ("test/mIoU", "test/mF1", "test/OA", "test/IoU_building", "val/mIoU"):
        assert 0.0 <= metrics[key] <= 1.0
    assert (out / "label_split.json").is_file() and (out / "norm_stats.json").is_file()
    assert (out / "csv" / "metrics.csv").is_file()
    # Lightning's lines once (its own console handler and Hydra's both printed them)
    assert proc.stderr.count("GPU available: False") + proc.stdout.count(
        "GPU available: False") == 1


def test_config_typo_is_a_clear_hydra_error(tmp_path):
    proc = _run(["data.roott=/x"], cwd=tmp_path, timeout=120)
    assert proc.returncode != 0
    assert "roott" in proc.stderr
    assert "Traceback" not in proc.stderr


def test_the_entry_point_imports_lightning_and_torch_only_when_a_run_starts():
    """Hydra reports a config typo before ``main`` runs; importing Lightning takes
    seconds, so ``sssi.train`` must not import it (nor torch) at module level."""
    code = ("import sys, sssi.train; "
            "print(sorted(m for m in ('torch', 'lightning') if m in sys.modules))")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          timeout=120, check=True)
    assert proc.stdout.strip() == "[]"


def test_missing_data_root_is_one_line_naming_the_path(tmp_path):
    missing = tmp_path / "no_such_potsdam"
    proc = _run(["data=potsdam", f"data.root={missing}", f"hydra.run.dir={tmp_path / 'o'}"],
                cwd=tmp_path, timeout=120)
    assert proc.returncode == 1
    errors = [line for line in proc.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and str(missing) in errors[0]
    assert "Traceback" not in proc.stderr


def test_bad_value_names_the_key(tmp_path):
    proc = _run([*TINY, "data.label_fraction=1.5", f"paths.data_dir={tmp_path / 'data'}",
                 f"hydra.run.dir={tmp_path / 'o'}"], cwd=tmp_path, timeout=300)
    assert proc.returncode == 1
    assert "error: data.label_fraction=1.5" in proc.stderr


@pytest.mark.parametrize(("override", "match"), [
    ("data.crop_size=0", r"data\.crop_size=0: expected an integer >= 1"),
    ("data.batch_size=0", r"data\.batch_size=0: expected an integer >= 1"),
    ("data.num_workers=-1", r"data\.num_workers=-1: expected an integer >= 0"),
    ("data.samples_per_epoch=0", r"data\.samples_per_epoch=0: expected a positive"),
    ("data.scale=[2.0,1.0]", r"data\.scale=\[2\.0, 1\.0\]: expected \[low, high\]"),
    ("data.mean=[1,2,3]", r"data\.mean is set but data\.std is not"),
    ("data.std=[1,2,3]", r"data\.std is set but data\.mean is not"),
    ("data.std=[0,1,1]", r"data\.mean is set but|data\.std=\[0, 1, 1\]: every band"),
    ("data.augment.noise=-1", r"data\.augment\.noise=-1: expected a probability"),
    ("++data.augment.hflipp=true", r"data\.augment has unknown keys \['hflipp'\]"),
])
def test_bad_data_values_fail_at_construction_naming_the_key(override, match, tmp_path):
    overrides = [override] + (["data.mean=[1,1,1]"] if override == "data.std=[0,1,1]" else [])
    cfg = _compose(overrides, tmp_path)
    with pytest.raises((ConfigError, InstantiationException), match=match):
        instantiate(cfg.data)


@pytest.mark.parametrize(("overrides", "match"), [
    (["task.optimizer.lr=-1"], r"task\.optimizer: Invalid learning rate: -1"),
    (["+experiment=demo_pretrain", "mask_policy.instructor.optimizer.lr=-1"],
     r"mask_policy\.instructor\.optimizer: Invalid learning rate"),
    (["+experiment=demo_pretrain", "++task.inpainter_scheduler.gama=0.1"],
     r"task\.inpainter_scheduler: .*gama"),
])
def test_optimizer_values_torch_refuses_name_the_key(overrides, match, tmp_path):
    task = instantiate(_compose(overrides, tmp_path).task)
    with pytest.raises(ConfigError, match=match):
        task.configure_optimizers()


@pytest.mark.parametrize(("override", "match"), [
    ("task.loss.kind=l3", r"task\.loss\.kind='l3': expected 'l1' or 'l2'"),
    ("task.output=sigmoid", r"output='sigmoid' \(task\.output\)"),
    ("task.loss.hole_weight=-1", r"task\.loss\.hole_weight=-1\.0: expected a weight >= 0"),
    ("task.loss.clamp=0", r"task\.loss\.clamp=0\.0: expected a positive error bound"),
])
def test_bad_pretext_task_values_name_the_key(override, match, tmp_path):
    from sssi.cli import user_error

    cfg = _compose(["+experiment=demo_pretrain", override], tmp_path)
    with pytest.raises((ConfigError, InstantiationException)) as info:
        instantiate(cfg.task)
    assert re.search(match, str(user_error(info.value)))  # what the command line prints


def test_a_missing_resume_checkpoint_is_one_error_before_anything_runs(tmp_path):
    from sssi.errors import DataError
    from sssi.train import run

    missing = tmp_path / "gone.ckpt"
    cfg = _compose([f"ckpt_path={missing}"], tmp_path)
    with pytest.raises(DataError, match=rf"ckpt_path={missing}: file not found"):
        run(cfg)
    assert not (tmp_path / "run" / "metrics.json").exists()


def test_folder_config_reads_the_real_loveda_samples(tmp_path):
    from tests.helpers import real_sample

    root = real_sample("loveda")
    cfg = _compose(["data=folder", f"data.root={root}", "data.layout_options.palette=loveda",
                    "data.num_classes=7", "data.num_workers=0", "data.samples_per_epoch=4",
                    "data.batch_size=2"], tmp_path)
    dm = instantiate(cfg.data)
    dm.setup("fit")
    batch = next(iter(dm.train_dataloader()))
    assert batch["image"].shape == (2, 3, 256, 256)
    labels = set(batch["label"].unique().tolist())
    assert labels <= set(range(7)) | {255} and len(labels - {255}) >= 1
    assert json.loads((tmp_path / "run" / "label_split.json").read_text())["regions_total"] == 8


@pytest.mark.parametrize("experiment", _options("experiment"))
def test_every_experiment_composes_and_instantiates(experiment, tmp_path):
    from omegaconf import OmegaConf

    from sssi.train import build_datamodule, instantiate_group

    cfg = _compose([f"+experiment={experiment}"], tmp_path)
    if cfg.get("study"):  # study jobs start from stage 1's folders under study.dir
        assert str(cfg.study.dir) in str(cfg.task.get("init") or cfg.study.dir)
    OmegaConf.to_container(cfg, resolve=True)  # every interpolation resolves
    dm = build_datamodule(cfg)  # the task's datamodule
    if cfg.task.get("require_init"):
        from hydra.errors import InstantiationException

        with pytest.raises(InstantiationException, match=r"task.init is required"):
            instantiate(cfg.task)
        cfg.task.init = str(tmp_path / "pretext.ckpt")  # loaded only when fitting starts
    task = instantiate(cfg.task)
    assert cfg.trainer.max_epochs > 0
    # loggers and callbacks as configured; the trainer on this machine's CPU
    with open_dict(cfg):
        cfg.trainer.update(accelerator="cpu", devices=1, num_nodes=1, strategy="auto",
                           precision="32-true", sync_batchnorm=False)
    loggers = instantiate_group(cfg.get("logger"))
    trainer = instantiate(cfg.trainer, callbacks=instantiate_group(cfg.get("callbacks")),
                          logger=loggers or False)
    assert trainer.checkpoint_callback is not None
    assert trainer.checkpoint_callback.save_last
    if experiment.startswith("potsdam"):  # the full configs log to W&B (offline)
        assert [type(lg).__name__ for lg in loggers] == ["WandbLogger"]
    if "pretrain" in experiment or "inpaint" in experiment:
        assert type(dm).__name__ == "PretextDataModule"
        assert (task.game.instructor is not None) == ("inpaint" not in experiment)
        assert cfg.task.schedule.warmup_epochs >= 1
    if experiment == "potsdam_pretrain":  # the paper's settings (He et al. 2022)
        assert cfg.data.crop_size == 128 and cfg.data.batch_size == 128
        assert cfg.backbone.name == "drn_a_50" and task.game.inpainter.encoder.reductions[-1] == 8
        assert task.game.instructor.encoder.reductions[-1] == 16
        assert cfg.mask_policy.random.ratio == 0.25 == cfg.mask_policy.instructor.network.ratio
        assert cfg.mask_policy.instructor.network.latent_dim == 100
        sch = cfg.task.schedule
        assert cfg.trainer.max_epochs == sch.warmup_epochs + sch.rounds * (
            sch.instructor_epochs + sch.inpainter_epochs) == 700


def test_a_window_the_game_cannot_take_is_one_line_at_set_up(tmp_path):
    proc = _run(["+experiment=demo_pretrain", *TINY, "data.crop_size=72",
                 f"paths.data_dir={tmp_path / 'data'}", f"hydra.run.dir={tmp_path / 'o'}"],
                cwd=tmp_path, timeout=300)
    assert proc.returncode == 1
    errors = [line for line in proc.stderr.splitlines() if line.startswith("error:")]
    assert errors == ["error: data.crop_size=72: the game's networks need window sides that "
                      "are multiples of 32; use 64 or 96"], proc.stderr[-2000:]
    assert "Traceback" not in proc.stderr


@pytest.mark.slow
def test_task_pretrain_alone_runs_the_game_to_the_end(tmp_path):
    """``task=pretrain`` brings its datamodule, run family and no test stage: the README's
    one override trains the game and exits 0 (it ended in Lightning's "no test_step"
    traceback when the task named its datamodule and the run kept ``test: true``)."""
    out = tmp_path / "out"
    proc = _run(["task=pretrain", *TINY, f"paths.data_dir={tmp_path / 'data'}",
                 f"hydra.run.dir={out}"], cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "Traceback" not in proc.stderr
    config = (out / ".hydra" / "config.yaml").read_text()
    assert "task_name: pretrain" in config and "_target_: sssi.data.PretextDataModule" in config
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["val/hole_error_random"] > 0 and not any(k.startswith("test/") for k in metrics)
    assert (out / "checkpoints" / "last.ckpt").is_file()


def test_task_pretrain_alone_says_the_game_and_named_groups_win(tmp_path):
    game = _compose(["task=pretrain"], tmp_path)
    assert game.task._target_ == "sssi.tasks.PretrainTask"
    assert game.mask_policy.instructor.enabled  # the instructor comes with the task
    assert game.callbacks.model_checkpoint.monitor is None  # no mIoU in a pretext run
    blocks = _compose(["task=pretrain", "mask_policy=random_blocks"], tmp_path)
    assert not blocks.mask_policy.instructor.enabled  # a named mask policy wins
    assert blocks.callbacks.model_checkpoint.monitor is None
    assert (game.task_name, game.test, game.data._target_) == \
        ("pretrain", False, "sssi.data.PretextDataModule")  # the config picks the datamodule
    segment = _compose([], tmp_path)  # segmentation keeps its own groups
    assert segment.callbacks.model_checkpoint.monitor == "val/mIoU"
    assert (segment.task_name, segment.test, segment.data._target_) == \
        ("segment", True, "sssi.data.SegmentationDataModule")
    assert not segment.mask_policy.instructor.enabled
