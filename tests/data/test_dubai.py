"""The Dubai layout on the real shared files: groups of overlapping images split by
group, palette-mode masks, the archive's wrong ``classes.json``, images without
georeferencing, images of every size, and labelled regions that never overlap."""

from __future__ import annotations

import itertools
import json
import logging
import warnings

import numpy as np
import pytest
import rasterio
from rasterio.windows import Window

from sssi.data import SegmentationDataModule
from sssi.data.datasets import RandomWindowDataset, Region, TileReader
from sssi.data.layouts import build_layout
from sssi.data.palettes import DUBAI, IGNORE_INDEX
from sssi.data.raster import describe, read_label_window
from sssi.data.splits import partition_regions, select_label_regions
from sssi.errors import DataError
from tests.helpers import real_sample

ARCHIVE = "Semantic segmentation dataset"


@pytest.fixture(scope="module")
def root():
    return real_sample("dubai")


def test_groups_split_by_tile_number_and_root_may_be_either_folder(root):
    layout = build_layout("dubai", root)
    train = layout.tiles([1, 2, 3, 4, 5], labels=True)
    assert len(train) == 45 and {t.id.split("_")[0] for t in train} == {"1", "2", "3", "4", "5"}
    assert [t.id for t in layout.tiles("val")] == [f"6_{k:03d}" for k in range(1, 10)]
    assert [t.id for t in layout.tiles("test")] == [f"7_{k:03d}" for k in range(1, 10)]
    assert {t.id for t in layout.tiles("train")} == {t.id for t in layout.tiles(range(1, 6))}
    # "Tile 7", "tile7" and 7 name the same group; single images can be named too
    assert layout.tiles(["Tile 7"]) == layout.tiles(["tile7"]) == layout.tiles([7])
    assert [t.id for t in layout.tiles(["2_003", "3"])][:2] == ["2_003", "3_001"]
    inner = build_layout("dubai", root / ARCHIVE)
    assert [t.id for t in inner.tiles([2])] == [t.id for t in layout.tiles([2])]
    tile = layout.tiles(["4_002"])[0]
    assert tile.image_path.name == "image_part_002.jpg" and tile.label.name == "image_part_002.png"
    with pytest.raises(DataError, match="Tile 9"):
        layout.tiles([9])


def test_palette_mode_masks_read_as_rgb_and_decode_on_the_masks_palette(root):
    layout = build_layout("dubai", root)
    tiles = layout.tiles([2, 4], labels=True)
    paletted = [t for t in tiles if describe(t.label).paletted]
    assert paletted, "tiles 2 and 4 of the archive hold palette-mode masks"
    sizes = layout.validate(tiles)  # 1-band palette labels pass as colour labels
    reader = TileReader(tiles, DUBAI)
    seen = set()
    for t, tile in enumerate(tiles):
        h, w = sizes[tile.id]
        raw = read_label_window(tile.label, Window(0, 0, w, h))
        assert raw.shape == (3, h, w)
        decoded = reader.decode_label(t, Window(0, 0, w, h))
        assert decoded.n_off_palette == 0, tile.label
        # palette-mode files decode through their table's entries: same as the colours
        assert np.array_equal(decoded.index, DUBAI.decode(raw).index)
        seen |= set(np.unique(decoded.index).tolist())
    assert seen - {IGNORE_INDEX} == set(range(5))  # road included: #6EC1E4 is decoded


def test_classes_json_disagreement_is_said_once_naming_the_file(root, caplog, monkeypatch):
    import sssi.data.dubai as dubai

    monkeypatch.setattr(dubai, "_warned", set())
    with caplog.at_level(logging.WARNING, logger="sssi.data.dubai"):
        for _ in range(3):
            build_layout("dubai", root).tiles("train")
    said = [r.getMessage() for r in caplog.records if "disagrees" in r.getMessage()]
    assert len(said) == 1
    assert "classes.json" in said[0] and "#1bb3f5" in said[0] and "#6ec1e4" in said[0]
    assert dict(zip(DUBAI.classes, DUBAI.colors, strict=True))["road"] == (0x6E, 0xC1, 0xE4)


def test_ungeoreferenced_images_read_without_warnings(root):
    tile = build_layout("dubai", root).tiles(["2_001"])[0]
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # NotGeoreferencedWarning would raise here
        info = describe(tile.image_path)
        image = TileReader([tile], DUBAI).image(0, Window(0, 0, 64, 32))
    assert (info.width, info.height, info.count) == (509, 544, 3)
    assert image.shape == (32, 64, 3) and image.dtype == np.uint8
    with rasterio.open(tile.image_path) as ds:
        assert ds.crs is None


def test_label_regions_tile_every_image_without_overlap():
    sizes = [(544, 509), (644, 797), (2061, 1817), (100, 90)]
    regions = partition_regions(sizes, 256)
    for t, (h, w) in enumerate(sizes):
        count = np.zeros((h, w), np.int32)
        for r in (r for r in regions if r.tile == t):
            count[r.row:r.row + r.height, r.col:r.col + r.width] += 1
            assert min(r.height, r.width) > 0.6 * 256 or (h, w) == (100, 90)
        assert (count == 1).all()  # every pixel in exactly one region
    assert [(r.height, r.width) for r in regions if r.tile == 3] == [(100, 90)]
    # a 512 px side with 500 px regions is one region, not four shifted copies
    assert len(partition_regions([(512, 512)], 500)) == 1
    total = sum(h * w for h, w in sizes)
    previous: set[Region] = set()
    for f in (0.01, 0.05, 0.1, 0.25, 1.0):
        picked, n = select_label_regions(sizes, 256, f, seed=3)
        share = sum(r.height * r.width for r in picked) / total
        assert f <= share + 1e-9 and (share - f) * total <= max(r.height * r.width
                                                                for r in picked)
        assert previous <= set(picked)  # nested
        previous = set(picked)
    assert n == len(regions)


def test_windows_from_images_smaller_than_the_crop_come_out_at_crop_size(root):
    tile = build_layout("dubai", root).tiles(["2_001"])[0]
    ds = RandomWindowDataset(TileReader([tile], DUBAI), [Region(0, 0, 0, 544, 509)],
                             crop_size=600, length=3, with_labels=True)
    for i in range(3):
        sample = ds[i]
        assert sample["image"].shape == (3, 600, 600) and sample["label"].shape == (600, 600)
        assert sample["window"].tolist() == [0, 0, 544, 509]


def test_datamodule_records_the_realised_pixel_fraction(root, tmp_path):
    dm = SegmentationDataModule(
        dataset="dubai", root=str(root), num_classes=5, in_channels=3, crop_size=64,
        batch_size=4, num_workers=0, samples_per_epoch=8, region_size=256,
        label_fraction=0.05, train_split=[2, 3], val_split=[6], test_split=["7_001"],
        val_window=256, val_max_windows=4, output_dir=str(tmp_path))
    dm.setup("fit")
    split = json.loads((tmp_path / "label_split.json").read_text())
    assert split["label_fraction"] == 0.05
    assert 0.05 <= split["pixel_fraction"] < 0.05 + 1.0 / split["regions_total"] * 2
    assert {r["tile"].split("_")[0] for r in split["regions"]} <= {"2", "3"}
    boxes = [(r["tile"], r["row"], r["col"], r["height"], r["width"]) for r in split["regions"]]
    for a, b in itertools.combinations(boxes, 2):  # no two regions share a pixel
        if a[0] == b[0]:
            assert (a[1] + a[3] <= b[1] or b[1] + b[3] <= a[1] or
                    a[2] + a[4] <= b[2] or b[2] + b[4] <= a[2])
    batch = next(iter(dm.train_dataloader()))
    assert batch["image"].shape == (4, 3, 64, 64)
    assert set(batch["label"].unique().tolist()) <= {*range(5), IGNORE_INDEX}
    assert {t.id[0] for t in dm.val_set.reader.tiles} == {"6"}
    dm.setup("test")
    assert {t.id for t in dm.test_set.reader.tiles} == {"7_001"}


def test_input_scale_sees_more_ground_per_window_and_predicts_at_full_resolution(root,
                                                                                tmp_path):
    import torch

    from sssi.inference import LoadedModel

    dm = SegmentationDataModule(
        dataset="dubai", root=str(root), num_classes=5, in_channels=3, crop_size=64,
        batch_size=2, num_workers=0, samples_per_epoch=4, region_size=256, input_scale=0.5,
        train_split=[2], val_split=[3], test_split=None, val_window=64, val_max_windows=4,
        output_dir=str(tmp_path))
    dm.setup("fit")
    sample = dm.train_set[0]
    assert sample["image"].shape == (3, 64, 64)
    assert sample["window"].tolist()[2:] == [128, 128]  # 128 px of ground at 64 px
    assert dm.val_set[0]["window"].tolist()[2:] == [128, 128]
    assert dm.val_set[0]["image"].shape == (3, 64, 64)
    assert dm.state_dict()["input_scale"] == 0.5

    seen = []

    def model(x):
        seen.append(tuple(x.shape[-2:]))
        return x[:, :2]

    loaded = LoadedModel(model=model, mean=[0.0] * 3, std=[1.0] * 3, band_names=("R", "G", "B"),
                         class_names=("a", "b"), num_classes=2, palette_name=None,
                         path=tmp_path, input_scale=0.5)
    out = loaded.predictor()(torch.ones(1, 3, 64, 48))
    assert seen == [(32, 24)] and out.shape == (1, 2, 64, 48)
