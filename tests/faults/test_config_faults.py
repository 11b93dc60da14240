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
    (["data.test_split=['7_003']"], DataError, "{data}/synthetic_potsdam: tiles ['7_003'] "
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
