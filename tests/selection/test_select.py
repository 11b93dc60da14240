"""Choosing the regions to label (issue 32): the orders on toy features, the ranking file
and how training honours it, each selector on the synthetic tiles, and the command end
to end (select -> train)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from sssi.cli import compose_entry
from sssi.data.ranking import RankedRegion, Ranking
from sssi.data.splits import partition_regions, select_label_regions
from sssi.errors import ConfigError
from sssi.select import run as select_run
from sssi.select import window_side
from sssi.selection import TextureSelector
from sssi.selection.ordering import (
    by_score,
    k_center_greedy,
    kmeans,
    round_robin,
    typical_order,
    typicality,
)
from sssi.train import run as train_run
from tests.helpers import TINY, compose_train, run_module

SIZES = [(300, 300), (300, 600)]  # regions of 100 px: 9 + 18


def _blobs(seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Three well-separated blobs of 30, 20 and 10 points in 4-D."""
    rng = np.random.default_rng(seed)
    centres = np.array([[0, 0, 0, 10], [10, 0, 0, 0], [0, 10, 0, 0]], dtype=float)
    labels = np.repeat([0, 1, 2], [30, 20, 10])
    return centres[labels] + rng.normal(0, 0.3, (60, 4)), labels


# ------------------------------------------------------------------------- orders


def test_score_order_is_descending_and_stable():
    assert by_score(np.array([0.1, 0.5, 0.5, -1.0])).tolist() == [1, 2, 0, 3]


def test_k_center_greedy_covers_every_blob_before_repeating_one():
    x, labels = _blobs()
    order = k_center_greedy(x, picks=3)
    assert sorted(order.tolist()) == list(range(60))
    assert set(labels[order[:3]]) == {0, 1, 2}  # one per blob first
    # after the picks, the farthest from them come first
    dist = np.min(((x[:, None] - x[order[:3]][None]) ** 2).sum(-1), axis=1)
    assert np.all(np.diff(dist[order[3:]]) <= 1e-12)


def test_kmeans_finds_separated_blobs_and_typicality_prefers_the_core():
    x, labels = _blobs()
    found = kmeans(x, 3, seed=1)
    # the same partition up to the names of the clusters
    assert len({(a, b) for a, b in zip(labels, found, strict=True)}) == 3
    line = np.array([[0.0], [0.1], [0.2], [0.3], [5.0]])
    typical = typicality(line, neighbours=2)
    assert typical.argmax() in (1, 2) and typical.argmin() == 4


def test_typical_order_takes_one_per_cluster_largest_first():
    x, labels = _blobs()
    order, found, typical = typical_order(x, clusters=3, neighbours=5, seed=0)
    assert [int(labels[i]) for i in order[:3]] == [0, 1, 2]  # sizes 30, 20, 10
    for i in order[:3]:  # each the densest of its cluster
        members = found == found[i]
        assert typical[i] == typical[members].max()


def test_round_robin_lets_clusters_take_turns():
    labels = np.array([0, 0, 0, 1, 1, 2])
    scores = np.array([1.0, 3.0, 2.0, 9.0, 8.0, 0.0])
    assert round_robin(labels, scores).tolist() == [1, 3, 5, 2, 4, 0]


# -------------------------------------------------------------- ranking + training


def _ranking(order: list[int], size: int = 100, tiles=("a", "b")) -> Ranking:
    regions = partition_regions(SIZES, size)
    return Ranking([RankedRegion(tiles[regions[i].tile], regions[i].row, regions[i].col,
                                 regions[i].height, regions[i].width, float(-k))
                    for k, i in enumerate(order)], size, "test")


def test_a_ranking_replaces_the_seeded_permutation_and_pool_spreads_it(tmp_path):
    regions = partition_regions(SIZES, 100)
    order = list(range(26, -1, -1))  # the last regions first
    ranking = _ranking(order)
    path = ranking.write(tmp_path / "regions.json")
    back = Ranking.read(path)
    assert back.selector == "test" and back.digest and len(back.regions) == 27
    idx = back.order(["a", "b"], regions, 100)
    assert idx.tolist() == order
    chosen, total = select_label_regions(SIZES, 100, 0.1, seed=0, order=idx)
    # 10 % of 27 equal regions: the first 3 of the ranking (2.7 rounded up)
    assert total == 27 and {regions.index(r) for r in chosen} == set(order[:3])
    # the seed does not matter without a pool; with one it draws within 2x the budget
    same, _ = select_label_regions(SIZES, 100, 0.1, seed=5, order=idx)
    assert same == chosen
    draws = [{regions.index(r) for r in select_label_regions(SIZES, 100, 0.1, seed=s,
                                                             order=idx, pool=2)[0]}
             for s in range(8)]
    assert all(len(d) == 3 and d <= set(order[:6]) for d in draws)
    assert len({frozenset(d) for d in draws}) > 1
    # without a ranking: today's seeded permutation, unchanged
    perm = np.random.default_rng(3).permutation(27)
    seeded, _ = select_label_regions(SIZES, 100, 0.1, seed=3)
    assert {regions.index(r) for r in seeded} == set(perm[:3].tolist())


def test_a_hand_written_ranking_needs_only_the_format_and_the_rectangles(tmp_path):
    path = tmp_path / "mine.json"
    path.write_text(json.dumps({"format": "sssi-label-regions/1", "regions": [
        {"tile": "b", "row": 200, "col": 500, "height": 100, "width": 100},
        {"tile": "a", "row": 0, "col": 0, "height": 100, "width": 100}]}))
    ranking = Ranking.read(path)
    assert ranking.selector == "?" and ranking.region_size == 0
    regions = partition_regions(SIZES, 100)
    order = ranking.order(["a", "b"], regions, 100)
    assert [(regions[i].tile, regions[i].row, regions[i].col) for i in order] == [
        (1, 200, 500), (0, 0, 0)]


def test_a_short_ranking_refuses_a_larger_fraction():
    regions = partition_regions(SIZES, 100)
    idx = _ranking([0, 1]).order(["a", "b"], regions, 100)
    with pytest.raises(ConfigError, match=r"hold 0.07407 of the pixels; "
                                          r"data.label_fraction=0.5 needs more"):
        select_label_regions(SIZES, 100, 0.5, 0, order=idx)


@pytest.mark.parametrize("content,match", [
    (None, r"label_regions=.*nothing.json: file not found"),
    (b"{not json", r"label_regions=.*nothing.json: not a JSON file"),
    (b'{"regions": []}', r"nothing.json: not a ranking of regions"),
])
def test_bad_ranking_files_are_one_line_naming_the_file(tmp_path, content, match):
    path = tmp_path / "nothing.json"
    if content is not None:
        path.write_bytes(content)
    with pytest.raises(ConfigError, match=match):
        Ranking.read(path)


def test_rankings_that_do_not_fit_the_run_are_refused(tmp_path):
    regions = partition_regions(SIZES, 100)
    with pytest.raises(ConfigError, match=r"~100 px, but data.region_size=150"):
        _ranking([0]).order(["a", "b"], partition_regions(SIZES, 150), 150)
    moved = _ranking([0])
    moved.regions[0] = RankedRegion("a", 1, 0, 100, 100)
    with pytest.raises(ConfigError, match=r"region 0 \(tile a, row 1, col 0.*not one of"):
        moved.order(["a", "b"], regions, 100)
    with pytest.raises(ConfigError, match="ranked twice"):
        _ranking([4, 4]).order(["a", "b"], regions, 100)
    with pytest.raises(ConfigError, match="none of its regions is on this run's"):
        _ranking([0], tiles=("x", "y")).order(["a", "b"], regions, 100)
    # regions of tiles the run does not train on are passed over
    assert _ranking([20, 0]).order(["a", "z"], regions[:9], 100).tolist() == [0]


def test_window_side_is_the_region_at_the_datas_zoom_in_whole_multiples():
    assert window_side(None, 256, 0.5, 32) == 128
    assert window_side(None, 600, 1.0, 32) == 608
    assert window_side(100, 600, 1.0, 16) == 96
    with pytest.raises(ConfigError, match=r"select\.window"):
        window_side(-3, 600, 1.0, 16)


# ----------------------------------------------------------------------- selectors


def test_texture_scores_busy_images_above_flat_ones():
    flat = torch.zeros(1, 3, 32, 32)
    busy = torch.randn(1, 3, 32, 32)
    scores = TextureSelector().score(torch.cat([flat, busy]), torch.arange(2))
    assert scores[1] > scores[0] == 0


def _select(root: Path, out: Path, *overrides: str) -> dict:
    cfg = compose_entry("select", [*TINY, f"data.root={root}", "data.synthetic.tiles=4",
                                   "data.num_workers=0", *overrides], out)
    return select_run(cfg)


@pytest.mark.parametrize("name", ["random", "texture", "instructor", "inpainter_error",
                                  "diversity", "typical"])
def test_every_selector_ranks_every_region_of_the_synthetic_tiles(
        name, synthetic_root, pretext_ckpt, tmp_path):
    result = _select(synthetic_root, tmp_path, f"selector={name}",
                     f"select.checkpoint={pretext_ckpt}", "select.fraction=0.25")
    ranking = Ranking.read(tmp_path / "regions.json")
    keys = [r.key for r in ranking.regions]
    assert len(keys) == len(set(keys)) == 8 == result["regions"]  # 2 tiles x 4 regions
    assert ranking.selector == name and ranking.region_size == 128
    assert result["chosen"] == 2 and result["pixel_fraction"] == pytest.approx(0.25)
    scores = [r.score for r in ranking.regions]
    if name in ("texture", "instructor", "inpainter_error"):
        assert all(np.isfinite(scores)) and scores == sorted(scores, reverse=True)
        assert len(set(scores)) > 1
    if name == "typical":
        clusters = [r.cluster for r in ranking.regions]
        assert len(set(clusters[:2])) == 2  # the budget's 2 regions: one per cluster
    # the GeoJSON (the synthetic tiles are georeferenced, EPSG:32633): lon/lat polygons
    geo = json.loads((tmp_path / "regions.geojson").read_text())
    assert len(geo["features"]) == 8
    assert sum(f["properties"]["chosen"] for f in geo["features"]) == 2
    lon, lat = geo["features"][0]["geometry"]["coordinates"][0][0]
    assert 10 < lon < 20 and 50 < lat < 55  # UTM 33N near 52 deg N
    assert (tmp_path / "regions.png").stat().st_size > 1000
    # the same command again gives the same ranking
    again = tmp_path / "again"
    _select(synthetic_root, again, f"selector={name}", f"select.checkpoint={pretext_ckpt}",
            "select.fraction=0.25", "select.picture=false")
    assert [r.key for r in Ranking.read(again / "regions.json").regions] == keys
    assert not (again / "regions.png").exists()


def test_random_selector_is_the_split_training_draws_without_a_ranking(synthetic_root,
                                                                      tmp_path):
    # random is also the default: no selector beat it on the Dubai study
    _select(synthetic_root, tmp_path, "data.split_seed=7")
    ranking = Ranking.read(tmp_path / "regions.json")
    assert ranking.selector == "random"
    tiles = ranking.info["split"]  # the training tiles, in the layout's order
    sizes = [(256, 256)] * len(tiles)
    idx = ranking.order(tiles, partition_regions(sizes, 128), 128)
    assert len(idx) == 4 * len(tiles) == 8
    for fraction in (0.25, 0.5):
        mine, _ = select_label_regions(sizes, 128, fraction, 0, order=idx)
        seeded, _ = select_label_regions(sizes, 128, fraction, 7)
        assert mine == seeded


def test_clusters_mix_a_score_with_diversity(synthetic_root, pretext_ckpt, tmp_path):
    _select(synthetic_root, tmp_path, "selector=texture", f"select.features={pretext_ckpt}",
            "select.clusters=3")
    ranking = Ranking.read(tmp_path / "regions.json")
    clusters = [r.cluster for r in ranking.regions]
    assert len(set(clusters)) == 3 and len(set(clusters[:3])) == 3
    with pytest.raises(ConfigError, match=r"select\.clusters=3: selector=typical spreads"):
        _select(synthetic_root, tmp_path / "x", "selector=typical", "select.clusters=3")


def test_selector_inputs_that_cannot_work_are_one_line(synthetic_root, pretext_ckpt,
                                                      tmp_path):
    with pytest.raises(ConfigError, match=r"select.checkpoint=null: selector=instructor "
                                          "needs the .ckpt of a pretext run"):
        _select(synthetic_root, tmp_path / "a", "selector=instructor")
    blocks = tmp_path / "blocks.ckpt"  # the game's checkpoint without its instructor
    ckpt = torch.load(pretext_ckpt, weights_only=True)
    ckpt["hyper_parameters"]["mask_policy"]["instructor"] = None
    ckpt["state_dict"] = {k: v for k, v in ckpt["state_dict"].items()
                          if not k.startswith("game.instructor.")}
    torch.save(ckpt, blocks)
    with pytest.raises(ConfigError, match=r"has no instructor.*selector=inpainter_error"):
        _select(synthetic_root, tmp_path / "b", "selector=instructor",
                f"select.checkpoint={blocks}")
    other = tmp_path / "irrg.ckpt"  # a game trained on other bands
    ckpt = torch.load(pretext_ckpt, weights_only=True)
    ckpt["sssi_data"]["band_names"] = ["IR", "R", "G"]
    torch.save(ckpt, other)
    with pytest.raises(ConfigError, match=r"select.checkpoint: trained on bands IR,R,G, but "
                                          r"the data has R,G,B"):
        _select(synthetic_root, tmp_path / "d", "selector=inpainter_error",
                f"select.checkpoint={other}")
    with pytest.raises(ConfigError, match=r"select.fraction=1.5"):
        _select(synthetic_root, tmp_path / "c", "select.fraction=1.5")


def test_select_then_train_on_the_chosen_regions(synthetic_root, tmp_path):
    """The round trip a user makes: sssi-select, then training with
    data.label_regions; label_split.json records the ranking and holds its regions."""
    sel = tmp_path / "sel"
    proc = run_module("sssi.select", [*TINY, f"data.root={synthetic_root}",
                                      "data.synthetic.tiles=4", "data.num_workers=0",
                                      "selector=texture", "select.fraction=0.5",
                                      f"hydra.run.dir={sel}"], cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "data.label_regions=" in proc.stderr + proc.stdout
    ranking = Ranking.read(sel / "regions.json")
    train = tmp_path / "train"
    common = [*TINY, f"data.root={synthetic_root}", "data.synthetic.tiles=4",
              f"data.label_regions={sel / 'regions.json'}",
              "test=false", "trainer.enable_progress_bar=false"]
    train_run(compose_train([*common, "data.label_fraction=0.25"], train))
    split = json.loads((train / "label_split.json").read_text())
    assert split["label_regions"]["selector"] == "texture"
    assert split["label_regions"]["sha256"] == ranking.digest
    taken = {(r["tile"], r["row"], r["col"]) for r in split["regions"]}
    assert taken == {(r.tile, r.row, r.col) for r in ranking.regions[:2]}
    assert (train / "checkpoints" / "last.ckpt").is_file()
    # a segmentation checkpoint where a pretext one is needed: one line, nothing written
    proc = run_module("sssi.select", [*TINY, f"data.root={synthetic_root}",
                                      "data.synthetic.tiles=4", "selector=instructor",
                                      f"select.checkpoint={train / 'checkpoints/last.ckpt'}",
                                      f"hydra.run.dir={tmp_path / 'wrong'}"], cwd=tmp_path)
    last = proc.stderr.strip().splitlines()[-1]
    assert proc.returncode == 1 and last.startswith("error: select.checkpoint=")
    assert "a segmentation checkpoint; expected the .ckpt of a pretext run" in last
    assert not (tmp_path / "wrong" / "regions.json").exists()
    # a ranking made for another region size is refused before training
    with pytest.raises(ConfigError, match=r"data.label_regions=.*region_size=64"):
        train_run(compose_train([*common, "data.region_size=64"], tmp_path / "bad"))
    assert not (tmp_path / "bad" / "checkpoints").exists()


def test_select_works_on_a_plain_geotiff_folder(synthetic_root, tmp_path):
    """The folder layout (any GeoTIFFs): select reads images only, no labels needed."""
    images = tmp_path / "img_dir"
    images.mkdir()
    for tif in sorted((synthetic_root / "2_Ortho_RGB").glob("*.tif"))[:2]:
        shutil.copy(tif, images / tif.name)
    out = tmp_path / "out"
    cfg = compose_entry("select", ["data=folder", f"data.root={tmp_path}",
                                   "data.num_workers=0", "data.region_size=128",
                                   "selector=texture", "select.split=null"], out)
    result = select_run(cfg)
    assert result["regions"] == 8
    assert len(json.loads((out / "regions.geojson").read_text())["features"]) == 8
