"""Config values that used to be taken silently: each is now refused with one line that
names the key, before anything runs."""

from __future__ import annotations

from pathlib import Path

import pytest

from sssi.cli import check_booleans
from sssi.errors import ConfigError, DataError
from tests.helpers import CONF, TINY, compose_train

EXPERIMENTS = sorted(p.stem for p in (CONF / "experiment").glob("*.yaml"))


@pytest.mark.parametrize(("overrides", "line"), [
    (["+experiment=demo_finetune", "task.freeze_encoder=maybe"],
     "task.freeze_encoder='maybe': expected true or false"),
    (["+experiment=demo_pretrain", "data.persistent_workers=1"],
     "data.persistent_workers=1: expected true or false"),
    (["+experiment=demo_finetune", "+callbacks.budgets._target_=sssi.callbacks.CropBudgets",
      "+callbacks.budgets.dirpath=x", "+callbacks.budgets.budgets=[512]",
      "+callbacks.budgets.stop=no"],
     "callbacks.budgets.stop='no': expected true or false"),
])
def test_a_boolean_key_refuses_anything_but_true_or_false(overrides, line):
    with pytest.raises(ConfigError) as err:
        check_booleans(compose_train(overrides))
    assert str(err.value) == line


@pytest.mark.parametrize("experiment", EXPERIMENTS)
def test_every_experiment_passes_the_boolean_check(experiment: str):
    check_booleans(compose_train([f"+experiment={experiment}"]))


def test_a_refused_boolean_ends_the_command_with_one_line(tmp_path: Path):
    from tests.helpers import run_module

    out = run_module("sssi.train", ["+experiment=demo_finetune", "task.freeze_encoder=maybe",
                                    f"hydra.run.dir={tmp_path / 'run'}"], cwd=tmp_path)
    assert out.returncode == 1
    assert out.stderr.strip().splitlines()[-1] == \
        "error: task.freeze_encoder='maybe': expected true or false"
    assert not (tmp_path / "run" / "checkpoints").exists()  # nothing ran


@pytest.mark.parametrize(("args", "error", "line"), [
    (["seed=abc"], ConfigError, "seed='abc': expected an integer"),
    # the test tiles are checked before training, not after it
    (["data.test_split=['7_003']"], DataError, "{data}/synthetic_potsdam_3x256: tiles ['7_003'] "
     "not found"),
])
def test_a_bad_value_stops_the_run_at_set_up_with_one_line(tmp_path: Path, args, error, line):
    from sssi.train import run

    cfg = compose_train([*TINY, *args], tmp_path / "run", tmp_path / "data")
    with pytest.raises(error) as err:
        run(cfg)
    assert str(err.value).startswith(line.format(data=tmp_path / "data"))
    assert not (tmp_path / "run" / "checkpoints").exists()  # nothing was trained


def test_a_random_hole_key_the_game_would_not_read_is_refused():
    """demo_pretrain gives the game 8 px blocks of its own: mask_policy.random.block_size
    (the key README documents) would be ignored there, so it is refused with the key to
    set; the ratio, which the game's holes interpolate, and the same value pass."""
    from sssi.game.config import check_overrides_apply

    overrides = ["+experiment=demo_pretrain", "mask_policy.random.block_size=4",
                 "mask_policy.random.ratio=0.5"]
    cfg = compose_train(overrides)
    with pytest.raises(ConfigError) as err:
        check_overrides_apply(cfg.mask_policy, overrides)
    assert str(err.value) == (
        "mask_policy.random.block_size=4 does not reach the game: this experiment gives it "
        "random holes of its own (mask_policy.instructor.random, block_size=8); set "
        "mask_policy.instructor.random.block_size=4")
    check_overrides_apply(cfg.mask_policy, overrides[::2])  # the ratio reaches the game
    same = ["+experiment=demo_pretrain", "mask_policy.random.block_size=8"]
    check_overrides_apply(compose_train(same).mask_policy, same)
    blocks = ["+experiment=demo_inpaint_blocks", "mask_policy.random.block_size=4"]
    check_overrides_apply(compose_train(blocks).mask_policy, blocks)  # the baseline's own


def test_one_tile_id_alone_is_a_split_and_a_bad_split_names_itself():
    from sssi.data.options import as_split

    assert as_split(7) == ["7"] and as_split("test") == "test" and as_split([6, "7_003"]) == [
        "6", "7_003"]
    with pytest.raises(ConfigError, match="data split True"):
        as_split(True)


def test_an_id_that_hydra_read_as_a_number_gets_a_quoting_hint(synthetic_root):
    from sssi.data.isprs import PotsdamLayout

    with pytest.raises(DataError) as err:
        PotsdamLayout(synthetic_root).tiles(["210"])
    assert str(err.value).endswith(
        "; Hydra reads 2_10 as the number 210: quote ids, e.g. \"data.test_split=['2_10']\"")
    with pytest.raises(DataError) as err:
        PotsdamLayout(synthetic_root).tiles(["9_99"])
    assert "Hydra reads" not in str(err.value)


def test_a_gpu_trainer_without_cuda_is_one_line(monkeypatch):
    import torch
    from hydra.utils import instantiate

    from sssi.train import trainer_overrides

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    cfg = compose_train([*TINY, "trainer=gpu"])
    with pytest.raises(ConfigError, match=r"^trainer.accelerator=gpu: .* here \(torch "):
        trainer_overrides(cfg, instantiate(cfg.task))


def test_a_slurm_sweep_off_the_cluster_is_one_line(monkeypatch, capsys):
    import shutil

    from omegaconf import OmegaConf

    from sssi.cli import LauncherCheck

    composed = compose_train(["hydra/launcher=slurm"], hydra_node=True)
    assert composed.hydra.callbacks.launcher._target_ == "sssi.cli.LauncherCheck"
    cfg = OmegaConf.create({"hydra": {"launcher": {
        "_target_": composed.hydra.launcher._target_}}})
    monkeypatch.setattr(shutil, "which", lambda name: "/usr/bin/srun")
    LauncherCheck().on_multirun_start(cfg)  # on a SLURM node: nothing to say
    monkeypatch.setattr(shutil, "which", lambda name: None)
    with pytest.raises(SystemExit) as stop:
        LauncherCheck().on_multirun_start(cfg)
    assert stop.value.code == 1
    assert capsys.readouterr().err.startswith("error: hydra/launcher=slurm: srun not found")



def test_a_slurm_sweep_without_the_launcher_plugin_is_one_line(monkeypatch, capsys):
    import importlib.util

    from sssi.cli import require_launcher_plugin

    require_launcher_plugin(["-m", "hydra/launcher=slurm"])  # installed here: nothing
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if "submitit" in
                        name else real(name, *a))
    require_launcher_plugin(["-m", "seed=0,1"])  # no SLURM asked: nothing
    with pytest.raises(SystemExit) as stop:
        require_launcher_plugin(["-m", "hydra/launcher=slurm", "seed=0,1"])
    assert stop.value.code == 1
    assert capsys.readouterr().err.strip() == (
        'error: hydra/launcher=slurm needs hydra-submitit-launcher: pip install "sssi[slurm]"')
