"""What the entry points share: known third-party noise is dropped, other warnings stay."""

from __future__ import annotations

import logging
import re
import warnings

from sssi.cli import quiet_noise


def test_known_noise_is_dropped_and_other_warnings_stay(caplog):
    with warnings.catch_warnings(record=True) as seen:
        warnings.simplefilter("always")
        quiet_noise()
        warnings.warn("`isinstance(treespec, LeafSpec)` is deprecated, use `isinstance("
                      "treespec, TreeSpec) and treespec.is_leaf()` instead.", FutureWarning,
                      stacklevel=2)
        warnings.warn("You have overridden `on_after_batch_transfer` in `LightningModule` "
                      "but have passed in a `LightningDataModule`.", UserWarning, stacklevel=2)
        warnings.warn("The dataloader does not have many workers", UserWarning, stacklevel=2)
    # the hook warning tells the user something again: sssi's tasks leave the batch
    # hook to the datamodule (it augments on the device), so only a user's own one fires it
    assert [str(w.message).split(" in `")[0] for w in seen] == [
        "You have overridden `on_after_batch_transfer`",
        "The dataloader does not have many workers"]
    from lightning import LightningModule

    from sssi.tasks import PretrainTask, SegmentTask

    for task in (PretrainTask, SegmentTask):
        assert task.on_after_batch_transfer is LightningModule.on_after_batch_transfer

    log = logging.getLogger("lightning.pytorch.utilities.rank_zero")
    with caplog.at_level(logging.INFO, logger=log.name):
        log.info("💡 Tip: For seamless cloud logging and experiment tracking, try litlogger")
        log.info("GPU available: False, used: False")
    assert [r.getMessage() for r in caplog.records] == ["GPU available: False, used: False"]
    quiet_noise()  # idempotent: one filter, however often the entry points call it
    assert len(log.filters) == 1


def test_shards_split_a_multirun_round_robin_and_bad_values_name_the_key():
    import pytest
    from hydra.core.hydra_config import HydraConfig
    from omegaconf import read_write

    from sssi.cli import other_shard
    from sssi.errors import ConfigError
    from tests.helpers import compose_train

    cfg = compose_train([], hydra_node=True)
    kept = {}
    for num in range(5):
        with read_write(cfg.hydra.job):
            cfg.hydra.job.num = num
        HydraConfig.instance().set_config(cfg)
        kept[num] = [i for i in range(2) if not other_shard(f"{i}/2")]
        assert not other_shard(None) and not other_shard("0/1")
    assert kept == {0: [0], 1: [1], 2: [0], 3: [1], 4: [0]}  # each job in exactly one lane
    for bad in ("2/2", "1", "a/b", "-1/2"):
        with pytest.raises(ConfigError, match=r"shard="):
            other_shard(bad)


def test_a_value_the_constructor_refuses_becomes_one_error_naming_the_node():
    import pytest
    from hydra.errors import InstantiationException
    from hydra.utils import instantiate
    from omegaconf import OmegaConf

    from sssi.cli import user_error
    from sssi.errors import ConfigError

    cfg = OmegaConf.create({"trainer": {"_target_": "lightning.pytorch.Trainer",
                                        "precision": 17, "logger": False}})
    with pytest.raises(InstantiationException) as info:
        instantiate(cfg.trainer)
    err = user_error(info.value)
    assert isinstance(err, ConfigError)
    assert re.match(r"trainer \(lightning\.[\w.]*Trainer\): Precision 17 is invalid", str(err))
    assert "\n" not in str(err)
    # an error that is not about a value stays a traceback (None: re-raised)
    assert user_error(RuntimeError("a bug")) is None
