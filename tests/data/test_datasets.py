"""The data layer against files in the real ISPRS layout and the real sample imagery."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
import rasterio
import torch
from rasterio.windows import Window

from sssi.data import ISPRS, PretextDataModule, SegmentationDataModule, build_layout
from sssi.data.augment import PARAMS, Augment
from sssi.data.datasets import (
    GridWindowDataset,
    RandomWindowDataset,
    Region,
    TileReader,
    grid_regions,
)
from sssi.data.palettes import DUBAI, IGNORE_INDEX, LOVEDA, _lookup, _pack_rgb
from sssi.data.splits import select_label_regions
from sssi.data.stats import band_stats
from sssi.errors import ConfigError, DataError
from sssi.utils.grid import grid_offsets
from tests.helpers import real_sample

# ------------------------------------------------------------------------------ palettes


def test_palette_decodes_colours_boundary_and_off_palette():
    label = np.zeros((3, 2, 4), dtype=np.uint8)
    for i, colour in enumerate(ISPRS.colors[:4]):
        label[:, 0, i] = colour
    label[:, 1, 0] = (0, 0, 0)  # eroded boundary: expected, ignored
    label[:, 1, 1] = (254, 255, 255)  # off-palette
    label[:, 1, 2] = ISPRS.colors[5]
    label[:, 1, 3] = (0, 128, 255)  # off-palette
    out = ISPRS.decode(label)
    assert out.index.tolist() == [[0, 1, 2, 3], [IGNORE_INDEX, IGNORE_INDEX, 5, IGNORE_INDEX]]
    assert out.n_ignored == 1
    assert out.n_off_palette == 2
    assert len(out.off_palette_values) == 2
    # channels-last input decodes the same
    assert np.array_equal(ISPRS.decode(label.transpose(1, 2, 0)).index, out.index)


@pytest.mark.parametrize("palette", [ISPRS, LOVEDA], ids=lambda p: p.name)
def test_band_by_band_decoding_equals_the_24_bit_table(palette):
    """The fast per-band path gives the classes, counts and off-palette colours of the
    packed 24-bit table, also for colours whose bands each occur in the palette but
    never together (e.g. (255, 0, 255) for ISPRS)."""
    rng = np.random.default_rng(3)
    known = np.array([*palette.colors, *palette.ignore_colors], dtype=np.uint8)
    mixed = np.stack([rng.choice(known[:, band], 64) for band in range(3)], axis=1)
    noise = rng.integers(0, 256, (64, 3)).astype(np.uint8)
    colours = np.concatenate([known, mixed, noise])
    label = colours[rng.integers(0, len(colours), (48, 40))].transpose(2, 0, 1)
    assert palette._band_codes is not None  # few values per band: the fast path is taken
    got = palette.decode(label)
    want = _lookup(_pack_rgb(label), palette._colour_lookup(), palette.ignore_index)
    assert np.array_equal(got.index, want.index)
    assert (got.n_ignored, got.n_off_palette) == (want.n_ignored, want.n_off_palette)
    assert got.n_off_palette > 0 and got.off_palette_values == want.off_palette_values
    assert set(np.unique(got.index)) == {*range(len(palette.classes)), palette.ignore_index}
    clean = known[rng.integers(0, len(palette.colors), (16, 16))].transpose(2, 0, 1)
    assert palette.decode(clean).n_off_palette == 0


def test_palettes_with_many_values_per_band_fall_back_to_the_24_bit_table():
    assert DUBAI._band_codes is None  # 8 x 8 x 8 ranks do not fit in a byte
    label = np.array(DUBAI.colors, dtype=np.uint8).T[:, None, :]  # (3, 1, 5)
    assert DUBAI.decode(label).index.tolist() == [[0, 1, 2, 3, 4]]


def test_paletted_labels_decode_like_their_colours():
    rng = np.random.default_rng(0)
    table = rng.integers(0, 256, (256, 3)).astype(np.uint8)  # mostly off-palette entries
    table[:6] = ISPRS.colors
    table[7] = (0, 0, 0)  # the eroded boundary: expected, ignored
    table[9] = ISPRS.colors[2]  # a class may sit at any entry
    indices = rng.choice([0, 1, 2, 3, 4, 5, 7, 9, 20, 200], size=(40, 50)).astype(np.uint8)
    want = ISPRS.decode(table[indices].transpose(2, 0, 1))
    got = ISPRS.decode_paletted(indices, table)
    assert np.array_equal(got.index, want.index)
    assert (got.n_ignored, got.n_off_palette) == (want.n_ignored, want.n_off_palette) != (0, 0)
    assert set(got.off_palette_values) == set(want.off_palette_values)  # colours, not entries


def test_palette_colorize_round_trip():
    index = np.array([[0, 1, 2], [3, 4, 5]], dtype=np.uint8)
    assert np.array_equal(ISPRS.decode(ISPRS.colorize(index)).index, index)


def test_real_potsdam_colour_label_matches_index_label():
    """The real colour-coded noBoundary crop decodes to the official index conversion."""
    with rasterio.open(real_sample("potsdam", "label_rgb", "2_10_0_0_512_512.png")) as ds:
        rgb = ds.read()
    with rasterio.open(real_sample("potsdam", "ann_dir", "2_10_0_0_512_512.png")) as ds:
        ann = ds.read(1)
    out = ISPRS.decode(rgb)
    expected = np.where(ann == 0, IGNORE_INDEX, ann.astype(np.int32) - 1)
    assert np.array_equal(out.index, expected)
    assert out.n_off_palette == 0
    assert out.n_ignored == int((ann == 0).sum()) > 0


def test_real_loveda_codes_decode_with_a_second_scheme():
    with rasterio.open(real_sample("loveda", "ann_dir", "1.png")) as ds:
        codes = ds.read(1)
    out = LOVEDA.decode(codes)
    valid = codes > 0
    assert np.array_equal(out.index[valid], codes[valid] - 1)
    assert np.all(out.index[~valid] == IGNORE_INDEX)
    assert out.n_off_palette == 0
    with pytest.raises(ValueError, match="colour labels"):
        ISPRS.decode(codes)


def test_folder_layout_reads_real_potsdam_crop():
    root = real_sample("potsdam")
    layout = build_layout("folder", root, labels="label_rgb")
    tiles = layout.tiles("all", labels=True)
    assert [t.id for t in tiles] == ["2_10_0_0_512_512"]
    sizes = layout.validate(tiles)
    assert sizes["2_10_0_0_512_512"] == (512, 512)
    mean, std = band_stats(tiles)
    assert len(mean) == len(std) == 3 and min(std) > 0
    reader = TileReader(tiles, layout.palette)
    ds = GridWindowDataset(reader, grid_regions([sizes[tiles[0].id]], 256, 256))
    assert len(ds) == 4
    sample = ds[3]  # raw bytes: the datamodule normalises whole batches on their device
    assert sample["image"].shape == (3, 256, 256) and sample["image"].dtype == torch.uint8
    assert sample["label"].shape == (256, 256) and sample["label"].dtype == torch.uint8
    assert "augment" not in sample  # grid windows are never augmented
    assert sample["window"].tolist() == [256, 256, 256, 256]
    assert set(sample["label"].unique().tolist()) <= {0, 1, 2, 3, 4, 5, IGNORE_INDEX}


# ------------------------------------------------------------------------------ layouts


def test_potsdam_layout_split_and_labels(synthetic_root):
    layout = build_layout("potsdam", synthetic_root)
    train = layout.tiles("train", labels=True)
    val = layout.tiles("val", labels=True)
    test = layout.tiles("test", labels=True)
    # validation tiles are held out of the training tiles, never taken from the test ones
    assert [t.id for t in train] == ["2_10", "2_12"]
    assert [t.id for t in val] == ["2_11"]
    assert [t.id for t in test] == ["2_13"]
    t = test[0]
    assert t.label.name == "top_potsdam_2_13_label.tif"
    assert t.eval_label.name == "top_potsdam_2_13_label_noBoundary.tif"
    assert layout.tiles(["2_11"])[0].id == "2_11"
    with pytest.raises(DataError, match="9_9"):
        layout.tiles(["9_9"])


def test_rgbir_with_ndsm_stacks_five_bands_in_order(synthetic_root):
    layout = build_layout("potsdam", synthetic_root, modality="RGBIR", ndsm=True)
    assert layout.band_names == ("R", "G", "B", "IR", "nDSM")
    tile = layout.tiles(["2_10"])[0]
    reader = TileReader([tile], layout.palette)
    window = Window(10, 20, 64, 32)
    image = reader.image(0, window)
    assert image.shape == (32, 64, 5)
    with rasterio.open(tile.sources[0].path) as ds:
        assert np.array_equal(image[..., :4].transpose(2, 0, 1), ds.read(window=window))
    with rasterio.open(tile.sources[1].path) as ds:
        assert tile.sources[1].path.name == "dsm_potsdam_02_10_normalized_lastools.tif"
        assert np.array_equal(image[..., 4], ds.read(1, window=window))


def test_irrg_modality_reads_the_irrg_product(synthetic_root):
    layout = build_layout("potsdam", synthetic_root, modality="irrg")
    tile = layout.tiles(["2_10"])[0]
    assert tile.image_path.parent.name == "3_Ortho_IRRG"
    assert layout.band_names == ("IR", "R", "G")


def test_eval_labels_are_the_eroded_ones(synthetic_root):
    layout = build_layout("potsdam", synthetic_root)
    tiles = layout.tiles("test", labels=True)
    window = Window(0, 0, 256, 256)
    full = TileReader(tiles, ISPRS).label(0, window)
    eroded = TileReader(tiles, ISPRS, use_eval_labels=True).label(0, window)
    assert not np.any(full == IGNORE_INDEX)
    boundary = eroded == IGNORE_INDEX
    assert 0 < boundary.mean() < 0.5
    assert np.array_equal(full[~boundary], eroded[~boundary])


def test_vaihingen_layout(synthetic_root, tmp_path):
    root = tmp_path / "vaihingen"
    for sub in ("top", "gts_for_participants", "gts_eroded", "dsm"):
        (root / sub).mkdir(parents=True)
    src = build_layout("potsdam", synthetic_root, modality="IRRG", ndsm=True).tiles("all")
    for area, tile in zip((1, 2), src, strict=False):
        name = f"top_mosaic_09cm_area{area}.tif"
        shutil.copy(tile.sources[0].path, root / "top" / name)
        shutil.copy(tile.label, root / "gts_for_participants" / name)
        shutil.copy(tile.eval_label, root / "gts_eroded" / name.replace(".tif", "_noBoundary.tif"))
        shutil.copy(tile.sources[1].path, root / "dsm" / f"dsm_09cm_matching_area{area}.tif")
    layout = build_layout("vaihingen", root, ndsm=True)
    assert [t.id for t in layout.tiles("train", labels=True)] == ["1"]
    (test_tile,) = layout.tiles("test", labels=True)
    assert test_tile.id == "2" and test_tile.eval_label.name.endswith("_noBoundary.tif")
    assert layout.num_bands == 4
    layout.validate(layout.tiles("all"))


# ------------------------------------------------------------------------ bad input


def test_missing_root_and_folder_name_the_path(tmp_path):
    with pytest.raises(DataError, match=str(tmp_path / "nowhere")):
        build_layout("potsdam", tmp_path / "nowhere").tiles()
    (tmp_path / "empty").mkdir()
    with pytest.raises(DataError, match="2_Ortho_RGB"):
        build_layout("potsdam", tmp_path / "empty").tiles()


def test_palette_typo_is_one_config_error_naming_the_key_and_the_choices(tmp_path):
    with pytest.raises(ConfigError) as err:
        build_layout("folder", tmp_path, palette="isprss")
    message = str(err.value)
    assert "\n" not in message and "data.layout_options.palette='isprss'" in message
    assert "'dubai'" in message and "'isprs'" in message and "'loveda'" in message


def test_truncated_geotiff_is_reported_with_its_name(potsdam_copy):
    path = potsdam_copy / "2_Ortho_RGB" / "top_potsdam_2_12_RGB.tif"
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    layout = build_layout("potsdam", potsdam_copy)
    with pytest.raises(DataError, match=r"top_potsdam_2_12_RGB.tif") as err:
        layout.validate(layout.tiles("train"))
    assert "truncated or corrupt" in str(err.value) or "not a readable raster" in str(err.value)


def test_corrupt_file_is_reported_with_its_name(potsdam_copy):
    path = potsdam_copy / "5_Labels_all" / "top_potsdam_2_10_label.tif"
    path.write_bytes(b"this is not a tiff" * 100)
    layout = build_layout("potsdam", potsdam_copy)
    with pytest.raises(DataError, match=r"top_potsdam_2_10_label.tif"):
        layout.validate(layout.tiles("train", labels=True))


def _rewrite(path, array):
    with rasterio.open(path) as ds:
        profile = ds.profile
    profile.update(count=array.shape[0], height=array.shape[1], width=array.shape[2])
    with rasterio.open(path, "w", **profile) as ds:
        ds.write(array)


def test_wrong_band_count_names_file_and_expectation(potsdam_copy):
    path = potsdam_copy / "4_Ortho_RGBIR" / "top_potsdam_2_10_RGBIR.tif"
    _rewrite(path, np.zeros((3, 256, 256), np.uint8))
    layout = build_layout("potsdam", potsdam_copy, modality="RGBIR")
    with pytest.raises(DataError, match=r"top_potsdam_2_10_RGBIR.tif: has 3 bands, expected"):
        layout.validate(layout.tiles("train"))


def test_image_label_size_mismatch(potsdam_copy):
    path = potsdam_copy / "5_Labels_all" / "top_potsdam_2_12_label.tif"
    _rewrite(path, np.full((3, 200, 256), 255, np.uint8))
    layout = build_layout("potsdam", potsdam_copy)
    with pytest.raises(DataError, match=r"top_potsdam_2_12_label.tif: size 256x200 differs"):
        layout.validate(layout.tiles("train", labels=True))


def test_missing_label_and_missing_ndsm(potsdam_copy):
    (potsdam_copy / "5_Labels_all" / "top_potsdam_2_12_label.tif").unlink()
    layout = build_layout("potsdam", potsdam_copy)
    layout.tiles("train")  # images alone are fine (pretext data)
    with pytest.raises(DataError, match=r"no label file for tiles \['2_12'\]"):
        layout.tiles("train", labels=True)
    (potsdam_copy / "1_DSM_normalisation" / "dsm_potsdam_02_12_normalized_lastools.tif").unlink()
    with pytest.raises(DataError, match="dsm_potsdam_02_12_normalized_lastools"):
        build_layout("potsdam", potsdam_copy, ndsm=True).tiles()


def test_ndsm_as_shipped_jpg_is_found_and_world_files_are_not(potsdam_copy):
    folder = potsdam_copy / "1_DSM_normalisation"
    tif = folder / "dsm_potsdam_02_10_normalized_lastools.tif"
    (folder / "dsm_potsdam_02_10_normalized_lastools.jgw").write_text("0.05\n")
    tif.rename(tif.with_suffix(".jpg"))  # ISPRS ships the nDSMs as JPEG
    layout = build_layout("potsdam", potsdam_copy, ndsm=True)
    assert layout.paths("2_10")["nDSM"] == tif
    tiles = {t.id: t for t in layout.tiles("all")}
    assert tiles["2_10"].sources[1].path == tif.with_suffix(".jpg")
    assert tiles["2_11"].sources[1].path.suffix == ".tif"


def test_bad_modality_and_band_count_config(synthetic_root):
    with pytest.raises(ConfigError, match=r"data.modality"):
        build_layout("potsdam", synthetic_root, modality="RGBN")
    with pytest.raises(ConfigError, match=r"data.dataset"):
        build_layout("potsdamm", synthetic_root)
    dm = SegmentationDataModule(root=str(synthetic_root), modality="RGBIR", in_channels=3)
    with pytest.raises(ConfigError, match=r"data.in_channels=3 .* 4 bands"):
        dm.setup("fit")


# --------------------------------------------------------------------- windows, splits


def test_grid_offsets_cover_and_snap():
    assert grid_offsets(1000, 256, 256) == [0, 256, 512, 744]
    assert grid_offsets(200, 256, 256) == [0]
    regions = grid_regions([(600, 1000), (256, 256)], 256, 128)
    covered = np.zeros((600, 1000), bool)
    for r in regions:
        if r.tile == 0:
            covered[r.row:r.row + r.height, r.col:r.col + r.width] = True
    assert covered.all()
    assert sum(r.tile == 1 for r in regions) == 1


def test_label_fractions_are_reproducible_nested_and_sized():
    sizes = [(6000, 6000)] * 24
    full, total = select_label_regions(sizes, 600, 1.0, seed=0)
    assert total == len(full) == 2400
    picks = {f: select_label_regions(sizes, 600, f, seed=0)[0] for f in (0.01, 0.05, 0.1, 0.25)}
    assert [len(picks[f]) for f in (0.01, 0.05, 0.1, 0.25)] == [24, 120, 240, 600]
    assert set(picks[0.01]) < set(picks[0.05]) < set(picks[0.1]) < set(picks[0.25])
    assert picks[0.1] == select_label_regions(sizes, 600, 0.1, seed=0)[0]
    assert picks[0.1] != select_label_regions(sizes, 600, 0.1, seed=1)[0]
    assert len(select_label_regions([(100, 100)], 600, 0.01, seed=0)[0]) == 1
    with pytest.raises(ConfigError, match="label_fraction"):
        select_label_regions(sizes, 600, 0.0, seed=0)


def test_random_windows_stay_inside_their_region(synthetic_root):
    layout = build_layout("potsdam", synthetic_root)
    tiles = layout.tiles("train", labels=True)
    region = Region(1, 64, 32, 100, 120)
    ds = RandomWindowDataset(TileReader(tiles, ISPRS), [region], crop_size=64, length=20,
                             with_labels=True, scale=(0.8, 1.25))
    for i in range(20):
        s = ds[i]
        row, col, h, w = s["window"].tolist()
        assert s["tile"] == "2_12"
        assert s["image"].shape == (3, 64, 64) and s["label"].shape == (64, 64)
        assert row >= 64 and row + h <= 164 and col >= 32 and col + w <= 152
        assert 51 <= h <= 80


def test_band_stats_match_numpy(synthetic_root):
    layout = build_layout("potsdam", synthetic_root, modality="RGBIR", ndsm=True)
    tiles = layout.tiles("train")
    mean, std = band_stats(tiles)
    stack = []
    for t in tiles:
        parts = []
        for s in t.sources:
            with rasterio.open(s.path) as ds:
                parts.append(ds.read(list(s.bands)).astype(np.float64))
        stack.append(np.concatenate(parts).reshape(5, -1))
    allpx = np.concatenate(stack, axis=1)
    np.testing.assert_allclose(mean, allpx.mean(1), rtol=1e-6)
    np.testing.assert_allclose(std, allpx.std(1), rtol=1e-5)


# ----------------------------------------------------------------------- datamodules


def _dm(cls, root, tmp_path, **kw):
    args = {"root": str(root), "crop_size": 64, "batch_size": 4, "num_workers": 0,
            "samples_per_epoch": 8, "region_size": 128, "output_dir": str(tmp_path / "run")}
    args.update(kw)
    return cls(**args)


def test_segmentation_datamodule_batches_split_file_and_stats(synthetic_root, tmp_path):
    dm = _dm(SegmentationDataModule, synthetic_root, tmp_path, label_fraction=0.25,
             modality="RGBIR", ndsm=True, in_channels=5, num_workers=2)
    dm.setup("fit")
    raw = next(iter(dm.train_dataloader()))  # workers deliver bytes and parameters
    assert raw["image"].dtype == raw["label"].dtype == torch.uint8
    assert raw["augment"].shape == (4, len(PARAMS))
    batch = dm.on_after_batch_transfer(raw, 0)  # what the task sees, on its device
    assert batch["image"].shape == (4, 5, 64, 64) and batch["image"].dtype == torch.float32
    assert batch["label"].shape == (4, 64, 64) and batch["label"].dtype == torch.int64
    assert "augment" not in batch
    assert len(batch["tile"]) == 4
    split = json.loads((tmp_path / "run" / "label_split.json").read_text())
    # two training tiles (2_11 is the validation tile) of 4 regions each; 25 % of pixels
    assert split["regions_total"] == 8 and split["regions_selected"] == 2
    assert split["pixel_fraction"] == 0.25
    assert {r["tile"] for r in split["regions"]} <= {"2_10", "2_12"}
    stats = json.loads((tmp_path / "run" / "norm_stats.json").read_text())
    assert stats["bands"] == ["R", "G", "B", "IR", "nDSM"] and len(stats["mean"]) == 5
    vbatch = next(iter(dm.val_dataloader()))
    assert vbatch["image"].shape[1:] == (5, 64, 64)
    dm.setup("test")
    assert len(dm.test_set) == 16  # 256 px test tile, 64 px windows
    # normalised images have roughly zero mean, unit std
    images = torch.cat([dm.on_after_batch_transfer(b, 0)["image"].flatten(1)
                        for b in dm.train_dataloader()], dim=1)
    assert images.mean().abs() < 0.6 and 0.4 < images.std() < 2.0
    assert dm.state_dict()["band_names"] == ["R", "G", "B", "IR", "nDSM"]
    # restored statistics (a resumed run, a checkpoint) replace the batches' normaliser
    assert dm.batch_normalizer().mean == stats["mean"]
    dm.load_state_dict({"mean": [1.0] * 5, "std": [2.0] * 5})
    assert (dm.batch_normalizer().mean, dm.batch_normalizer().std) == ([1.0] * 5, [2.0] * 5)


def test_off_palette_pixels_are_ignored_counted_and_reported(tmp_path):
    from sssi.data.synthetic import generate

    root = generate(tmp_path / "noisy", tiles=3, size=256, seed=1, off_palette=0.01)
    dm = _dm(SegmentationDataModule, root, tmp_path)
    dm.setup("fit")
    audit = json.loads((tmp_path / "run" / "label_audit.json").read_text())
    assert audit["pixels"] == 256 * 256  # the one training tile (2_11 validates)
    assert 0.005 < audit["off_palette"] / audit["pixels"] < 0.02
    assert any(t["values"] for t in audit["tiles"].values())
    sample = dm.train_set[0]
    assert (sample["label"] == IGNORE_INDEX).any()
    assert set(sample["label"].unique().tolist()) <= {0, 1, 2, 3, 4, 5, IGNORE_INDEX}


def test_pretext_datamodule_needs_no_labels(potsdam_copy, tmp_path):
    for p in (potsdam_copy / "5_Labels_all").iterdir():
        p.unlink()
    dm = _dm(PretextDataModule, potsdam_copy, tmp_path)
    dm.setup("fit")
    batch = dm.on_after_batch_transfer(next(iter(dm.train_dataloader())), 0)
    assert set(batch) == {"image", "tile", "window"}
    assert batch["image"].shape == (4, 3, 64, 64)
    assert {t.id for t in dm.train_set.reader.tiles} == {"2_10", "2_12"}


@pytest.mark.parametrize("name", [("rasterio", "RGB.byte.tif"),
                                  ("openearthmap", "adelaide_2.tif")])
def test_real_geotiffs_read_window_by_window(name):
    path = real_sample(*name)
    layout = build_layout("folder", path.parent, images=".", labels=None)
    (tile,) = [t for t in layout.tiles("all") if t.image_path.name == name[1]]
    (h, w) = layout.validate([tile])[tile.id]
    reader = TileReader([tile], ISPRS)
    with rasterio.open(path) as ds:
        assert (h, w) == (ds.height, ds.width)
        for region in grid_regions([(h, w)], 300, 300):
            window = Window(region.col, region.row, region.width, region.height)
            got = reader.image(0, window)
            assert np.array_equal(got.transpose(2, 0, 1), ds.read(window=window))
    mean, std = band_stats([tile])
    assert len(mean) == 3 and all(0 < m < 255 for m in mean) and all(s > 1 for s in std)


def test_training_windows_are_reproducible_new_each_epoch_and_split_over_ranks(synthetic_root):
    from sssi.data.datasets import EpochSampler

    tiles = build_layout("potsdam", synthetic_root).tiles("train", labels=True)
    regions = [Region(i, 0, 0, 256, 256) for i in range(len(tiles))]

    def make(seed):
        return RandomWindowDataset(TileReader(tiles, ISPRS), regions, 64, 6,
                                   with_labels=True, augment=Augment(), seed=seed)

    a, b = make(0), make(0)
    for i in (0, 5, 17):
        sa, sb = a[i], b[i]  # same seed and index: same window and same augmentation
        assert torch.equal(sa["image"], sb["image"]) and torch.equal(sa["label"], sb["label"])
        assert torch.equal(sa["augment"], sb["augment"])
    assert not torch.equal(a[0]["window"], make(1)[0]["window"]) or \
        not torch.equal(a[0]["image"], make(1)[0]["image"])
    sampler = EpochSampler(a, num_replicas=1, rank=0)
    first = list(sampler)
    sampler.set_epoch(1)
    assert first == list(range(6)) and list(sampler) == list(range(6, 12))
    ranks = [list(EpochSampler(a, num_replicas=2, rank=r)) for r in (0, 1)]
    assert ranks == [[0, 2, 4], [1, 3, 5]]


def test_colour_labels_with_an_alpha_band_read_as_rgb(tmp_path):
    from sssi.data.raster import read_label_window

    rgb = np.asarray(ISPRS.colors, dtype=np.uint8)[np.arange(12).reshape(3, 4) % 6]
    rgba = np.concatenate([rgb.transpose(2, 0, 1), np.full((1, 3, 4), 255, np.uint8)])
    path = tmp_path / "label.tif"
    with rasterio.open(path, "w", driver="GTiff", width=4, height=3, count=4,
                       dtype="uint8") as dst:
        dst.write(rgba)
    raw = read_label_window(path, Window(0, 0, 4, 3))
    assert np.array_equal(raw, rgba[:3])
    assert ISPRS.decode(raw).index.tolist() == (np.arange(12).reshape(3, 4) % 6).tolist()


def test_training_labels_kept_in_memory_equal_the_files_and_respect_the_budget(tmp_path,
                                                                               caplog):
    """The audit's decoded labels serve the training windows (zoomed ones too, and with
    off-palette pixels ignored) exactly as reading and decoding each window would; over
    ``label_memory_mb`` every window reads its label from the file."""
    from sssi.data.synthetic import generate

    root = generate(tmp_path / "noisy", tiles=3, size=256, seed=1, off_palette=0.01)
    kw = {"scale": [0.7, 1.4], "label_fraction": 0.5, "region_size": 96}
    kept = _dm(SegmentationDataModule, root, tmp_path, **kw)
    kept.setup("fit")
    read = _dm(SegmentationDataModule, root, tmp_path, label_memory_mb=0, **kw)
    with caplog.at_level("INFO", logger="sssi.data.datamodules"):
        read.setup("fit")
    assert read.train_set.region_labels is None
    assert "over data.label_memory_mb=0" in caplog.text
    labels = kept.train_set.region_labels
    assert labels is not None and len(labels) == len(kept.train_set.regions) > 1
    assert sum(a.nbytes for a in labels) == kept.label_audit["pixels"]
    sizes = set()
    for i in range(40):
        a, b = kept.train_set[i], read.train_set[i]
        assert a.keys() == b.keys()
        for key in ("image", "label", "window", "augment"):
            assert torch.equal(a[key], b[key]), (i, key)
        sizes.add(int(a["window"][2]))
        assert a["label"].data_ptr() != labels[0].ctypes.data  # a copy, not the cache
    assert len(sizes) > 3  # zoomed windows of several sizes were compared
    assert any((kept.train_set[i]["label"] == IGNORE_INDEX).any() for i in range(40))
    with pytest.raises(ConfigError, match=r"data\.label_memory_mb=-1"):
        _dm(SegmentationDataModule, root, tmp_path, label_memory_mb=-1)


@pytest.mark.parametrize("workers", [0, 2])
def test_batches_read_in_one_go_equal_the_collated_samples(synthetic_root, tmp_path, workers):
    """``__getitems__`` reads a batch straight into its memory; the batches equal
    collating ``dataset[i]`` one by one: zoomed windows, labels kept or read from the
    files, a tile stacked from two files of different dtypes, grid windows. A loader
    with PyTorch's default collation gets the same batches."""
    from torch.utils.data import DataLoader, default_collate

    from sssi.data.collate import collate_windows

    cases = {"kept": {}, "read": {"label_memory_mb": 0},
             "stacked": {"modality": "RGBIR", "ndsm": True, "in_channels": 5}}
    for name, kw in cases.items():
        dm = _dm(SegmentationDataModule, synthetic_root, tmp_path / name, num_workers=workers,
                 scale=[0.8, 1.25], samples_per_epoch=12, **kw)
        dm.setup("fit")
        dm.setup("test")
        for ds, loader in ((dm.train_set, dm.train_dataloader()),
                           (dm.test_set, dm.test_dataloader())):
            batches = list(loader)
            assert len(batches) >= 3 and isinstance(batches[0], dict)
            indices = list(loader.batch_sampler)
            for batch, idx in zip(batches, indices, strict=True):
                ref = collate_windows([ds[i] for i in idx])
                assert list(batch) == list(ref), name
                for key, value in ref.items():
                    if torch.is_tensor(value):
                        assert batch[key].dtype == value.dtype, (name, key)
                        assert torch.equal(batch[key], value), (name, key)
                    else:
                        assert batch[key] == value, (name, key)
            plain = DataLoader(ds, batch_sampler=loader.batch_sampler, num_workers=workers)
            for batch, ref in zip(plain, batches, strict=True):
                assert torch.equal(batch["image"], ref["image"]) and \
                    torch.equal(batch["label"], ref["label"]) and batch["tile"] == ref["tile"]
            assert default_collate(list(ds.__getitems__(indices[0])))["window"].equal(
                batches[0]["window"])
    assert dm.train_set.reader.tiles[0].sources[1].path.suffix  # two files per tile


def test_zoomed_windows_of_five_bands_resize():
    """OpenCV resizes at most four channels at once: RGBIR + nDSM goes in groups."""
    from sssi.data.datasets import _resize

    rng = np.random.default_rng(0)
    image = rng.random((40, 40, 5)).astype(np.float32)
    label = rng.integers(0, 6, (40, 40), dtype=np.uint8)
    for size in (32, 48):
        out, lab = _resize(image, label, size)
        assert out.shape == (size, size, 5) and lab.shape == (size, size)
        four, _ = _resize(np.ascontiguousarray(image[:, :, :4]), None, size)
        one, _ = _resize(np.ascontiguousarray(image[:, :, 4:]), None, size)
        assert np.array_equal(out[:, :, :4], four) and np.array_equal(out[:, :, 4], one[:, :, 0])
