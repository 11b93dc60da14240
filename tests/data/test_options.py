"""The datamodule's option blocks: flat config keys sorted by concern, each value checked
where its block is made, with the ``data.`` key named."""

from __future__ import annotations

import pytest

from sssi.data import PretextDataModule, SegmentationDataModule
from sssi.data.options import LabelSelection, Loading, Windows
from sssi.errors import ConfigError


def test_flat_keys_land_in_their_blocks(tmp_path):
    dm = SegmentationDataModule(root=str(tmp_path), crop_size=64, scale=[0.5, 2.0],
                                input_scale=0.5, val_window=128, batch_size=4,
                                num_workers=0, label_fraction=0.1, region_size=128,
                                augment={"hflip": True})
    assert dm.windows == Windows(64, (0.5, 2.0), 0.5, None, 128, 64)
    assert dm.windows.zoom == (0.25, 1.0)  # the zoom range in file pixels
    assert (dm.loading.batch_size, dm.loading.eval_batch, dm.loading.num_workers) == (4, 4, 0)
    assert dm.labels == LabelSelection(0.1, 128, 0, 2048.0)
    assert dm.augment.active
    # the game's datamodule takes the same config (one data config serves both tasks)
    assert PretextDataModule(root=str(tmp_path), label_fraction=0.1).labels.label_fraction \
        == 0.1


def test_a_global_batch_replaces_the_per_device_batch_and_the_eval_batch_follows(tmp_path):
    dm = SegmentationDataModule(root=str(tmp_path), batch_size=8, global_batch_size=32)
    plan = dm.plan_batches(world_size=2, accumulation=2)
    assert plan.per_device == 8 and dm.loading.eval_batch == 8
    fixed = SegmentationDataModule(root=str(tmp_path), batch_size=8, eval_batch_size=2,
                                   global_batch_size=16)
    fixed.plan_batches(world_size=4, accumulation=1)
    assert (fixed.loading.batch_size, fixed.loading.eval_batch) == (4, 2)


@pytest.mark.parametrize(("block", "kwargs", "match"), [
    (Windows, {"crop_size": 0}, r"data\.crop_size=0: expected an integer >= 1"),
    (Windows, {"crop_size": 64, "val_window": 2.5}, r"data\.val_window=2\.5"),
    (Windows, {"samples_per_epoch": 0}, r"data\.samples_per_epoch=0: expected a positive"),
    (Windows, {"scale": [2.0, 1.0]}, r"data\.scale=\[2\.0, 1\.0\]: expected \[low, high\]"),
    (Windows, {"input_scale": 5}, r"data\.input_scale=5: expected a factor in \(0, 4\]"),
    (Loading, {"batch_size": "abc"}, r"data\.batch_size='abc': expected an integer >= 1"),
    (Loading, {"num_workers": -1}, r"data\.num_workers=-1: expected an integer >= 0"),
    (Loading, {"eval_batch_size": 0}, r"data\.eval_batch_size=0"),
    (LabelSelection, {"label_memory_mb": -1}, r"data\.label_memory_mb=-1: expected MiB"),
    (LabelSelection, {"region_size": 0}, r"data\.region_size=0"),
    (LabelSelection, {"label_regions": "r.json", "label_pool": 0.5},
     r"data\.label_pool=0\.5: expected a number >= 1"),
    (LabelSelection, {"label_pool": 2}, r"data\.label_pool=2 draws within a ranking's first "
                                        r"regions: give data\.label_regions=FILE"),
    (LabelSelection, {"label_regions": 3}, r"data\.label_regions=3: expected the path"),
])
def test_a_bad_value_names_its_key(block, kwargs, match):
    with pytest.raises(ConfigError, match=match):
        block(**kwargs)


def test_the_datamodule_reports_bad_augmentation_and_statistics_keys(tmp_path):
    with pytest.raises(ConfigError, match=r"data\.augment has unknown keys \['flop'\]"):
        SegmentationDataModule(root=str(tmp_path), augment={"flop": True})
    with pytest.raises(ConfigError, match=r"data\.augment\.noise=2"):
        SegmentationDataModule(root=str(tmp_path), augment={"noise": 2})
    with pytest.raises(ConfigError, match=r"data\.mean is set but data\.std is not"):
        SegmentationDataModule(root=str(tmp_path), mean=[1, 2, 3])
