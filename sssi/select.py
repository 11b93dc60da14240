"""Where to label: rank the candidate regions of unlabelled imagery (``sssi-select``).

The candidates are the regions training draws labelled pixels from: each tile of the
split cut into non-overlapping regions of about ``data.region_size`` px
(:func:`sssi.data.splits.partition_regions`). A selector (``selector=NAME``,
:mod:`sssi.selection.selectors`) scores them from their pixels (each region read whole
and resized to one window of ``select.window`` px, at the data's zoom by default) and
orders them, label first. The run folder gets:

- ``regions.json``: the ranking, which training reads with
  ``data.label_regions=FILE`` in place of the seeded permutation
  (:mod:`sssi.data.ranking`): ``data.label_fraction`` then keeps its first regions;
- ``regions.geojson``: the regions with rank, score and ``chosen`` (taken by
  ``select.fraction`` of the pixels), where the imagery is georeferenced (QGIS);
- ``regions.png``: the tiles with the chosen regions outlined.

    python -m sssi.select +experiment=dubai_finetune data.root=DIR \\
        selector=instructor select.checkpoint=PRETEXT.ckpt select.fraction=0.05
    python -m sssi.train +experiment=dubai_finetune data.root=DIR task.init=PRETEXT.ckpt \\
        data.label_regions=RUN/regions.json data.label_fraction=0.05

It reads the training configuration (``conf/select.yaml`` includes ``train.yaml``), so
the dataset, split, region size, zoom and backbone are those of fine-tuning.
"""

from __future__ import annotations

import logging
import math
from pathlib import Path
from typing import Any

import hydra
import lightning as L
import numpy as np
import torch
from hydra.errors import InstantiationException
from omegaconf import DictConfig

from sssi.cli import CONFIG_DIR, run_or_exit, user_error
from sssi.config import to_plain
from sssi.data.ranking import RankedRegion, Ranking
from sssi.data.splits import partition_regions, prefix_holding
from sssi.errors import ConfigError
from sssi.inference import resolve_device, resolve_precision
from sssi.selection.ordering import kmeans, normalise, round_robin
from sssi.selection.outputs import contact_sheet, geojson_text, regions_geojson
from sssi.selection.selectors import FeatureEncoder, Selector
from sssi.utils.io import atomic_write_text, write_png

log = logging.getLogger(__name__)


def feature_encoder(cfg: DictConfig, source: str | None) -> tuple[FeatureEncoder, dict | None]:
    """The encoder whose pooled features the feature selectors and ``select.clusters``
    use: ``cfg.backbone`` initialised from ``source`` (a pretext or segmentation
    checkpoint, or an encoder file; None: the backbone's own weights, random unless
    ``backbone.weights`` names a file), and the data state of a checkpoint source."""
    from sssi.checkpoints import load_encoder

    encoder = hydra.utils.instantiate(cfg.backbone)
    state = load_encoder(encoder, source)[1] if source else None
    return FeatureEncoder(encoder), state


def window_side(requested: int | None, region_size: int, input_scale: float,
                multiple: int) -> int:
    """The side regions are resized to: ``requested``, or a region at the data's zoom;
    rounded to the nearest multiple of ``multiple`` (at least one)."""
    side = requested or max(1, round(region_size * input_scale))
    if requested is not None and (isinstance(requested, bool) or int(requested) < 1):
        raise ConfigError(f"select.window={requested!r}: expected a side in pixels or null")
    return max(multiple, multiple * round(int(side) / multiple))


def _check_bands(state: dict | None, band_names: tuple[str, ...], what: str) -> None:
    if state and state.get("band_names") and tuple(state["band_names"]) != tuple(band_names):
        raise ConfigError(f"{what}: trained on bands {','.join(state['band_names'])}, but the "
                          f"data has {','.join(band_names)}")


def score_regions(selector: Selector, features: FeatureEncoder | None, loader: Any,
                  normalizer: Any, device: torch.device, dtype: torch.dtype | None,
                  count: int) -> tuple[np.ndarray, np.ndarray | None]:
    """Every region's score, and its pooled features when ``features`` is given, in the
    loader's order (the partition's)."""
    scores = np.full(count, np.nan)
    pooled: list[np.ndarray] = []
    offset = 0
    for batch in loader:
        images = normalizer(batch["image"].to(device))
        index = torch.arange(offset, offset + images.shape[0])
        with torch.no_grad(), torch.autocast(device.type, dtype=dtype or torch.float32,
                                             enabled=dtype is not None):
            scores[offset:offset + len(index)] = selector.score(images, index).float().numpy()
            if features is not None:
                pooled.append(features(images).cpu().numpy())
        offset += len(index)
    return scores, (np.concatenate(pooled) if pooled else None)


def build_selector(cfg: DictConfig) -> tuple[Selector, int, float]:
    """The selector of ``cfg.selector`` and the checked ``select.clusters`` and
    ``select.fraction``."""
    options = cfg.select
    try:
        selector: Selector = hydra.utils.instantiate(cfg.selector)
    except InstantiationException as exc:  # the selector's own words, not Hydra's wrapper
        raise (user_error(exc) or exc) from None
    if not isinstance(selector, Selector):
        raise ConfigError(f"selector._target_={cfg.selector.get('_target_')}: not a selector "
                          "(sssi.selection.selectors)")
    clusters = int(options.clusters or 0)
    if clusters < 0:
        raise ConfigError(f"select.clusters={clusters}: expected 0 (off) or a number of clusters")
    if clusters and selector.needs_features:
        raise ConfigError(f"select.clusters={clusters}: selector={selector.name} spreads over "
                          "the feature space by itself; use select.clusters with a scoring "
                          "selector (instructor, inpainter_error, texture, random)")
    if options.get("batchnorm", "reestimate") not in ("reestimate", "pretrained"):
        raise ConfigError(f"select.batchnorm={options.batchnorm!r}: expected reestimate (on "
                          "whole regions) or pretrained (the checkpoint's statistics)")
    fraction = float(options.fraction)
    if not 0 < fraction <= 1:
        raise ConfigError(f"select.fraction={fraction}: expected a fraction of the pixels in "
                          "(0, 1]")
    return selector, clusters, fraction


def run(cfg: DictConfig) -> dict[str, Any]:
    """Rank the candidate regions with ``cfg.selector``; write the run folder's files."""
    options = cfg.select
    seed = int(options.get("seed", cfg.seed))
    L.seed_everything(seed, workers=True)
    selector, clusters, fraction = build_selector(cfg)
    datamodule = hydra.utils.instantiate(cfg.data)
    datamodule.prepare_data()
    tiles, sizes = datamodule.scan(options.get("split"), labels=False)
    region_size = int(cfg.data.region_size)
    regions = partition_regions(sizes, region_size)
    areas = np.array([r.height * r.width for r in regions], dtype=np.float64)

    encoder, feature_state = None, None
    if selector.needs_features or clusters:
        encoder, feature_state = feature_encoder(cfg, options.get("features"))
    _check_bands(selector.data_state, datamodule.band_names, "select.checkpoint")
    _check_bands(feature_state, datamodule.band_names, "select.features")
    state = selector.data_state or feature_state or {}
    datamodule.use_statistics(tiles, state.get("mean"), state.get("std"))
    zoom = float(cfg.data.input_scale)
    if state.get("input_scale") not in (None, zoom):
        log.warning("the checkpoint was trained at data.input_scale=%s; regions are read at "
                    "%s", state["input_scale"], zoom)

    scores = features = None
    side = 0
    if selector.reads_images or encoder is not None:
        multiple = math.lcm(selector.input_multiple(),
                            encoder.input_multiple() if encoder is not None else 1)
        side = window_side(options.get("window"), region_size, zoom, multiple)
        scores, features = _score(cfg, selector, encoder, datamodule, tiles, regions, side)
    order, labels = selector.order(
        scores if scores is not None else np.zeros(len(regions)), features,
        max(1, round(fraction * len(regions))))
    if clusters:  # the selector's order, taken in turns across the feature clusters
        assert features is not None
        labels = kmeans(normalise(features), clusters, seed)
        rank_score = np.empty(len(order))
        rank_score[order] = -np.arange(len(order), dtype=np.float64)
        order = round_robin(labels, rank_score)
    chosen = set(int(i) for i in order[:prefix_holding(order, areas, fraction * areas.sum())])

    written = write_outputs(cfg, Path(cfg.paths.output_dir), selector, tiles, sizes, regions,
                            order, scores, labels, chosen, side)
    share = areas[list(chosen)].sum() / areas.sum()
    log.info("%d regions ranked; select.fraction=%g takes the first %d (%.3g of the "
             "pixels): %s", len(order), fraction, len(chosen), share,
             ", ".join(str(p) for p in written.values()))
    log.info("train on them: python -m sssi.train ... data.label_regions=%s "
             "data.label_fraction=%g", written["ranking"], fraction)
    return {"selector": selector.name, "regions": len(order), "chosen": len(chosen),
            "pixel_fraction": float(share), "window": side, **{k: str(v) for k, v in
                                                                written.items()}}


def _score(cfg: DictConfig, selector: Selector, encoder: FeatureEncoder | None,
           datamodule: Any, tiles: list, regions: list, side: int
           ) -> tuple[np.ndarray, np.ndarray | None]:
    """Every region read, standardised and scored (and its features pooled) on the
    configured device and precision."""
    options = cfg.select
    device = resolve_device(options.get("device"))
    dtype, why = resolve_precision(options.get("precision"), device)
    log.info("%s: %d regions of ~%d px on %d tiles, read as %d px windows on %s in %s (%s)",
             selector.name, len(regions), int(cfg.data.region_size), len(tiles), side, device,
             "bf16" if dtype else "fp32", why)
    selector.to(device)
    if encoder is not None:
        encoder.to(device)
        if options.get("batchnorm", "reestimate") == "reestimate":
            _reestimate(encoder, datamodule, tiles, regions, side, device,
                        int(options.get("batchnorm_images", 256)))
    loader = datamodule.region_loader(tiles, regions, side, batch_size=int(options.batch_size))
    return score_regions(selector, encoder, loader, datamodule.batch_normalizer(), device,
                         dtype, len(regions))


def _reestimate(encoder: FeatureEncoder, datamodule: Any, tiles: list, regions: list,
                side: int, device: torch.device, count: int) -> None:
    """Batch-norm statistics of the feature encoder from whole regions, evenly spread."""
    from sssi.models.batchnorm import reestimate_batchnorm

    step = max(1, len(regions) / max(1, count))
    sample = [regions[int(i * step)] for i in range(min(count, len(regions)))]
    normalizer = datamodule.batch_normalizer()
    loader = datamodule.region_loader(tiles, sample, side)
    reestimate_batchnorm(encoder.encoder,
                         (normalizer(b["image"].to(device)) for b in loader))


def write_outputs(cfg: DictConfig, out_dir: Path, selector: Selector, tiles: list,
                  sizes: list, regions: list, order: np.ndarray, scores: np.ndarray | None,
                  labels: np.ndarray | None, chosen: set[int], side: int) -> dict[str, Path]:
    """The ranking, the GeoJSON (georeferenced tiles only) and the picture."""
    options = cfg.select
    out_dir.mkdir(parents=True, exist_ok=True)
    ranked = []
    for i in order:
        r = regions[int(i)]
        score = None if scores is None or not np.isfinite(scores[i]) else float(scores[i])
        ranked.append(RankedRegion(tiles[r.tile].id, r.row, r.col, r.height, r.width, score,
                                   None if labels is None else int(labels[i])))
    info = {"dataset": str(cfg.data.dataset), "root": str(cfg.data.root),
            "split": [t.id for t in tiles], "checkpoint": getattr(selector, "checkpoint", None),
            "features": options.get("features") if selector.needs_features or
            options.clusters else None,
            "fraction": float(options.fraction), "clusters": int(options.clusters or 0),
            "window": side, "input_scale": float(cfg.data.input_scale),
            "selector_config": to_plain(cfg.selector)}
    ranking = Ranking(ranked, int(cfg.data.region_size), selector.name, info)
    written = {"ranking": ranking.write(out_dir / "regions.json")}
    collection, missing = regions_geojson(tiles, regions, order, scores, chosen, labels)
    if collection is not None:
        written["geojson"] = atomic_write_text(out_dir / "regions.geojson",
                                               geojson_text(collection))
        if missing:
            log.info("regions.geojson: %d tiles are not georeferenced and left out", missing)
    else:
        log.info("no tile is georeferenced: no regions.geojson")
    if options.get("picture", True):
        mix = f" + {int(options.clusters)} clusters" if options.clusters else ""
        title = (f"{selector.name}{mix}: the first {len(chosen)} regions, "
                 f"{100 * float(options.fraction):g} % of the pixels")
        path = out_dir / "regions.png"
        write_png(path, contact_sheet(tiles, sizes, regions, chosen, title=title))
        written["picture"] = path
    return written


@hydra.main(version_base="1.3", config_path=CONFIG_DIR, config_name="select")
def main(cfg: DictConfig) -> None:
    run_or_exit(run, cfg)


if __name__ == "__main__":
    main()
