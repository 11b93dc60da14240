"""LightningDataModules: unlabelled pretext images and labelled segmentation patches.

Both modules read a dataset through a :mod:`layout <sssi.data.layouts>` (Potsdam,
Vaihingen, a folder of crops), validate every file at set-up, compute per-band
normalisation statistics from the data unless the config gives them, and serve
windows of the tiles. Their ``state_dict`` holds the statistics and band names, so a
checkpoint knows how its inputs were normalised (prediction needs that).
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Mapping, Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any

import lightning as L
import torch
from lightning.pytorch.utilities import rank_zero_only
from rasterio.windows import Window
from torch.utils.data import DataLoader

from sssi.data.augment import Augment, BatchNormalizer, augment_batch, value_range
from sssi.data.collate import collate_windows
from sssi.data.datasets import (
    EpochSampler,
    GridWindowDataset,
    RandomWindowDataset,
    Region,
    TileReader,
    grid_regions,
)
from sssi.data.layouts import Layout, Tile, build_layout
from sssi.data.options import LabelSelection, Loading, Windows, as_split
from sssi.data.palettes import IGNORE_INDEX, unpack_rgb
from sssi.data.ranking import Ranking
from sssi.data.raster import describe
from sssi.data.splits import partition_regions, select_label_regions, write_split
from sssi.data.stats import band_stats
from sssi.data.workers import init_worker
from sssi.errors import ConfigError
from sssi.scaling import BatchPlan, plan_batches
from sssi.utils.io import atomic_write_text

log = logging.getLogger(__name__)


class TileDataModule(L.LightningDataModule):
    """What both tasks share: layout, validation, statistics, loaders.

    Takes the flat keys of ``conf/data/*.yaml`` and sorts them into one block per concern
    (:mod:`sssi.data.options`, where each key is documented): :attr:`windows`
    (:class:`~sssi.data.options.Windows`), :attr:`loading`
    (:class:`~sssi.data.options.Loading`), :attr:`labels`
    (:class:`~sssi.data.options.LabelSelection`, segmentation only) and :attr:`augment`
    (:class:`~sssi.data.augment.Augment`). The rest says which data:

        dataset, root, modality, ndsm, layout_options: the layout (``data.root`` is the
            folder holding ``2_Ortho_RGB/`` etc. for Potsdam).
        in_channels, num_classes: expected band and class counts; checked against the
            layout so that a model config and a data config can't silently disagree.
        train_split, val_split, test_split: split names or lists of tile ids.
        mean, std: per-band statistics in raw units; computed from the training tiles
            when omitted.
        validate_files: open every file at set-up (a corrupt one is named at once).
        output_dir: where ``norm_stats.json``, ``label_split.json`` and
            ``label_audit.json`` go (the run folder).
        synthetic: parameters of the embedded synthetic dataset, generated into
            ``root`` on first use when set.
        seed: seed of the training windows and their augmentation (the run's ``seed``).
    """

    def __init__(
        self,
        dataset: str = "potsdam",
        root: str = "data/potsdam",
        modality: str = "RGB",
        ndsm: bool = False,
        in_channels: int | None = None,
        num_classes: int | None = None,
        layout_options: dict | None = None,
        crop_size: int = 256,
        scale: Sequence[float] | None = None,
        input_scale: float = 1.0,
        batch_size: int = 8,
        eval_batch_size: int | None = None,
        global_batch_size: int | None = None,
        num_workers: int | str = 2,
        prefetch_factor: int = 4,
        pin_memory: bool = True,
        persistent_workers: bool = True,
        samples_per_epoch: int | None = None,
        augment: dict | None = None,
        train_split: str | Sequence[str] = "train",
        val_split: str | Sequence[str] | None = "test",
        test_split: str | Sequence[str] | None = "test",
        val_window: int | None = None,
        val_max_windows: int | None = 64,
        mean: Sequence[float] | None = None,
        std: Sequence[float] | None = None,
        validate_files: bool = True,
        output_dir: str | None = None,
        synthetic: dict | None = None,
        # Segmentation-only keys; accepted by every module so that one data config
        # serves both tasks (ignored where meaningless).
        label_fraction: float = 1.0,
        region_size: int = 600,
        split_seed: int = 0,
        label_memory_mb: float = 2048,
        label_regions: str | None = None,
        label_pool: float = 1.0,
        seed: int = 0,
    ) -> None:
        super().__init__()
        self.dataset = dataset
        self.root = Path(root).expanduser()
        self.modality = modality
        self.ndsm = ndsm
        self.in_channels = in_channels
        self.expected_classes = num_classes
        self.layout_options = dict(layout_options or {})
        self.windows = Windows(crop_size, tuple(scale) if scale else None, input_scale,
                               samples_per_epoch, val_window, val_max_windows)
        if num_workers == "auto":
            num_workers = auto_workers()
        self.loading = Loading(batch_size, eval_batch_size, global_batch_size, num_workers,
                               prefetch_factor, pin_memory, persistent_workers)
        self.labels = LabelSelection(label_fraction, region_size, split_seed, label_memory_mb,
                                     label_regions, label_pool)
        self.augment = _augment_options(augment)
        self.train_split = as_split(train_split)
        self.val_split = as_split(val_split)
        self.test_split = as_split(test_split)
        self.mean = list(mean) if mean is not None else None
        self.std = list(std) if std is not None else None
        self._check_statistics()
        self.validate_files = validate_files
        self.output_dir = Path(output_dir) if output_dir else None
        self.synthetic = dict(synthetic) if synthetic else None
        self.seed = int(seed)
        self._normalizer: BatchNormalizer | None = None
        self._layout: Layout | None = None
        self.train_set: torch.utils.data.Dataset | None = None
        self.val_set: torch.utils.data.Dataset | None = None
        self.test_set: torch.utils.data.Dataset | None = None

    def _check_statistics(self) -> None:
        """Given band statistics must come in pairs and be usable (named keys)."""
        if (self.mean is None) != (self.std is None):
            given, missing = ("mean", "std") if self.std is None else ("std", "mean")
            raise ConfigError(f"data.{given} is set but data.{missing} is not: give both "
                              "(per band, raw units) or neither (computed from the training "
                              "tiles)")
        if self.std is not None and any(float(v) <= 0 for v in self.std):
            raise ConfigError(f"data.std={self.std}: every band's std must be positive")

    def plan_batches(self, world_size: int = 1, accumulation: int = 1) -> BatchPlan:
        """The run's batch plan, applied: ``data.batch_size`` per device, or the per-device
        batch that ``data.global_batch_size`` gives over ``world_size`` devices and
        ``accumulation`` micro-batches (a clear error when they do not divide it).
        ``sssi.train`` calls this once and hands the plan to the task."""
        loading = self.loading
        plan = plan_batches(loading.batch_size, loading.global_batch_size, world_size,
                            accumulation)
        if plan.per_device != loading.batch_size:
            log.info("data.global_batch_size=%d over %d devices x %d accumulation: %d windows "
                     "per device batch", loading.global_batch_size, world_size, accumulation,
                     plan.per_device)
        self.loading = replace(loading, batch_size=plan.per_device)  # eval batch follows
        return plan

    # ---------------------------------------------------------------------------- layout
    @property
    def layout(self) -> Layout:
        if self._layout is None:
            layout = build_layout(self.dataset, self.root, modality=self.modality,
                                  ndsm=self.ndsm, **self.layout_options)
            if self.in_channels is not None and int(self.in_channels) != layout.num_bands:
                raise ConfigError(
                    f"data.in_channels={self.in_channels} but {self.dataset} with "
                    f"modality={self.modality} ndsm={self.ndsm} gives {layout.num_bands} bands "
                    f"({','.join(layout.band_names)})")
            if self.expected_classes is not None and \
                    int(self.expected_classes) != layout.palette.num_classes:
                raise ConfigError(
                    f"data.num_classes={self.expected_classes} but the {layout.palette.name} "
                    f"palette of {self.dataset} has {layout.palette.num_classes} classes")
            self._layout = layout
        return self._layout

    @property
    def num_classes(self) -> int:
        return self.layout.palette.num_classes

    @property
    def band_names(self) -> tuple[str, ...]:
        return self.layout.band_names

    def prepare_data(self) -> None:
        """Generate the embedded synthetic dataset on first use (rank 0 only)."""
        if self.synthetic is None:
            return
        if self.root.is_dir() and any(self.root.iterdir()) and \
                not (self.root / "SYNTHETIC.json").is_file():
            log.info("%s exists and is not synthetic data; using it as is", self.root)
            return
        from sssi.data.synthetic import ensure_synthetic

        ensure_synthetic(self.root, **self.synthetic)

    def scan(self, split, labels: bool = False) -> tuple[list[Tile], list[tuple[int, int]]]:
        """The tiles of ``split`` (a name, ids, or None for ``train_split``), checked
        (``validate_files``), and their ``(height, width)``: what a tool that reads the
        data without training (``sssi.select``) starts from."""
        return self._tiles(self.train_split if split is None else as_split(split), labels)

    def use_statistics(self, tiles: Sequence[Tile], mean: Sequence[float] | None = None,
                       std: Sequence[float] | None = None) -> None:
        """Standardise with ``mean``/``std`` (a checkpoint's) when given, else with the
        configured statistics or those of ``tiles`` (recorded in ``norm_stats.json``)."""
        if mean is not None and std is not None:
            self.mean, self.std, self._normalizer = list(mean), list(std), None
        self._ensure_stats(tiles)

    def region_loader(self, tiles: Sequence[Tile], regions: Sequence[Region], side: int,
                      labels: bool = False, batch_size: int | None = None) -> DataLoader:
        """Batches of whole ``regions`` of ``tiles`` in order, each resized to ``side``
        px (raw values; :meth:`batch_normalizer` standardises them)."""
        dataset = GridWindowDataset(TileReader(tiles, self.layout.palette), regions,
                                    with_labels=labels, out_size=side)
        return self._loader(dataset, batch_size or self.loading.eval_batch, False)

    def _tiles(self, split, labels: bool) -> tuple[list[Tile], list[tuple[int, int]]]:
        tiles = self.layout.tiles(split, labels=labels)
        if self.validate_files:
            sizes = self.layout.validate(tiles)
            return tiles, [sizes[t.id] for t in tiles]
        return tiles, [(i.height, i.width) for i in (describe(t.image_path) for t in tiles)]

    def _ensure_stats(self, tiles: Sequence[Tile]) -> None:
        n = self.layout.num_bands
        if self.mean is None or self.std is None:
            self.mean, self.std = band_stats(tiles)
            self._normalizer = None
            log.info("band statistics from %d tiles: mean=%s std=%s", len(tiles),
                     [round(m, 2) for m in self.mean], [round(s, 2) for s in self.std])
        if len(self.mean) != n or len(self.std) != n:
            raise ConfigError(f"data.mean/data.std have {len(self.mean)}/{len(self.std)} values; "
                              f"the data has {n} bands ({','.join(self.layout.band_names)})")
        self._write("norm_stats.json", json.dumps(
            {"bands": list(self.layout.band_names), "mean": self.mean, "std": self.std},
            indent=1))

    @rank_zero_only
    def _write(self, name: str, text: str) -> None:
        if self.output_dir is not None:
            atomic_write_text(self.output_dir / name, text)

    def on_after_batch_transfer(self, batch: Any, dataloader_idx: int) -> Any:
        """On the batch's device: each training window's augmentation (drawn by its
        worker, :mod:`sssi.data.augment`), then per-band standardisation of every
        batch; labels become int64 class indices."""
        if not isinstance(batch, dict) or "image" not in batch:
            return batch
        image, label = batch["image"], batch.get("label")
        params = batch.pop("augment", None)
        if params is not None:
            image, label = augment_batch(image, label, params, value_range(image.dtype))
        batch["image"] = self.batch_normalizer()(image)
        if label is not None:
            batch["label"] = label.long()
        return batch

    def batch_normalizer(self) -> BatchNormalizer:
        """Standardisation with the run's band statistics (computed or configured)."""
        if self.mean is None or self.std is None:
            raise ConfigError("the band statistics are unknown: set up the datamodule "
                              "(or give data.mean and data.std) before using its batches")
        if self._normalizer is None:  # reset where the statistics are computed or restored
            self._normalizer = BatchNormalizer(self.mean, self.std)
        return self._normalizer

    def _augment(self) -> Augment | None:
        return self.augment if self.augment.active else None

    def _epoch_length(self, regions: Sequence[Region]) -> int:
        if self.windows.samples_per_epoch:
            return int(self.windows.samples_per_epoch)
        area = sum(r.height * r.width for r in regions)
        w = self.windows
        return max(self.loading.batch_size, round(area * w.input_scale**2 / w.crop_size**2))

    def _eval_regions(self, sizes, max_windows: int | None) -> list[Region]:
        # windows of this much ground, resized to val_window
        ground = max(1, round(self.windows.val_window / self.windows.input_scale))
        regions = grid_regions(sizes, ground, ground)
        if max_windows and len(regions) > max_windows:
            step = len(regions) / max_windows  # evenly spread, deterministic
            regions = [regions[int(i * step)] for i in range(max_windows)]
        return regions

    # ----------------------------------------------------------------------- state dict
    def state_dict(self) -> dict[str, Any]:
        return {"mean": self.mean, "std": self.std, "band_names": list(self.band_names),
                "dataset": self.dataset, "num_classes": self.num_classes,
                "input_scale": self.windows.input_scale}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.mean = state_dict.get("mean", self.mean)
        self.std = state_dict.get("std", self.std)
        self._normalizer = None

    # ----------------------------------------------------------------------- loaders
    def _loader(self, dataset, batch_size: int, drop_last: bool, sampler=None) -> DataLoader:
        workers = self.loading.num_workers
        # samples are bytes, so pinned batches go to the GPU without a staging copy; a
        # worker hands each batch over as one shared block (collate_windows); persistent
        # workers keep their open file handles between epochs
        return DataLoader(
            dataset,
            batch_size=batch_size,
            sampler=sampler,
            collate_fn=collate_windows,
            num_workers=workers,
            worker_init_fn=init_worker,
            pin_memory=self.loading.pin_memory and torch.cuda.is_available(),
            persistent_workers=self.loading.persistent_workers and workers > 0,
            prefetch_factor=self.loading.prefetch_factor if workers > 0 else None,
            drop_last=drop_last,
        )

    def train_dataloader(self) -> DataLoader:
        assert self.train_set is not None, "call setup('fit') first"
        sampler = EpochSampler(self.train_set)
        batch = self.loading.batch_size
        epoch, done = resume_position(self.trainer)
        sampler.set_epoch(epoch)
        sampler.skip_once(done * batch)
        return self._loader(self.train_set, batch, len(sampler) >= batch, sampler)

    def val_dataloader(self) -> DataLoader | list:
        if self.val_set is None:
            return []
        return self._loader(self.val_set, self.loading.eval_batch, False)

    def test_dataloader(self) -> DataLoader | list:
        if self.test_set is None:
            return []
        return self._loader(self.test_set, self.loading.eval_batch, False)

    def _stats_for_evaluation(self) -> None:
        """Evaluating without fitting: the training tiles' band statistics, unless given
        (a checkpoint's, restored by Lightning after setup, replace them)."""
        if self.mean is None or self.std is None:
            self._ensure_stats(self.layout.tiles(self.train_split))

    def _validation_set(self, labels: bool) -> GridWindowDataset | None:
        """The grid of ``val_window`` windows over ``val_split`` (at most
        ``val_max_windows``), with or without labels; None without a validation split."""
        if self.val_split is None:
            return None
        tiles, sizes = self._tiles(self.val_split, labels=labels)
        return GridWindowDataset(TileReader(tiles, self.layout.palette),
                                 self._eval_regions(sizes, self.windows.val_max_windows),
                                 with_labels=labels, out_size=self.windows.val_window)


class PretextDataModule(TileDataModule):
    """Unlabelled images for the inpainting game: every image tile of ``train_split``.

    Labels are never read, so tiles without labels (extra imagery) are welcome.
    Validation windows (images only) come from ``val_split`` to monitor restoration.
    """

    def setup(self, stage: str | None = None) -> None:
        if stage in (None, "fit") and self.train_set is None:
            tiles, sizes = self._tiles(self.train_split, labels=False)
            self._ensure_stats(tiles)
            regions = [Region(i, 0, 0, h, w) for i, (h, w) in enumerate(sizes)]
            reader = TileReader(tiles, self.layout.palette)
            self.train_set = RandomWindowDataset(
                reader, regions, self.windows.crop_size, self._epoch_length(regions),
                with_labels=False, augment=self._augment(), scale=self.windows.zoom,
                seed=self.seed)
            log.info("pretext: %d tiles, %d windows of %d px per epoch", len(tiles),
                     len(self.train_set), self.windows.crop_size)
            self.val_set = self._validation_set(labels=False)
        if stage == "validate" and self.val_set is None:  # trainer.validate on a checkpoint
            self._stats_for_evaluation()
            self.val_set = self._validation_set(labels=False)


class SegmentationDataModule(TileDataModule):
    """Labelled patches: a seeded ``label_fraction`` of the training regions.

    Training windows are drawn inside the selected ``region_size`` crops; validation
    uses a grid over ``val_split`` (full labels), testing a grid over ``test_split``
    with the evaluation labels (eroded ``noBoundary`` where the dataset has them).
    Off-palette label pixels become the ignore index and are counted in
    ``label_audit.json``.
    """

    #: set by ``sssi.train`` when the run tests after fitting: ``setup("fit")`` then
    #: checks the test tiles too, so a missing or corrupt one stops the run before
    #: training rather than after it
    will_test: bool = False
    _test_tiles: tuple[list[Tile], list[tuple[int, int]]] | None = None

    def setup(self, stage: str | None = None) -> None:
        if stage in (None, "fit") and self.train_set is None:
            tiles, sizes = self._tiles(self.train_split, labels=True)
            self._ensure_stats(tiles)
            chosen = self.labels
            order, ranking = None, None
            if chosen.label_regions is not None:  # a selector's ranking (sssi.select)
                ranking = Ranking.read(chosen.label_regions)
                order = ranking.order([t.id for t in tiles],
                                      partition_regions(sizes, chosen.region_size),
                                      chosen.region_size)
                log.info("labelled regions ranked by %s (%s, %d of them on these tiles)",
                         ranking.selector, chosen.label_regions, len(order))
            regions, total = select_label_regions(
                sizes, chosen.region_size, chosen.label_fraction, chosen.split_seed,
                order=order, pool=chosen.label_pool,
                source=f"data.label_regions={chosen.label_regions}")
            total_pixels = sum(h * w for h, w in sizes)
            if self.output_dir is not None and rank_zero_only.rank == 0:
                provenance = None if ranking is None else \
                    {**ranking.provenance(), "label_pool": chosen.label_pool}
                write_split(self.output_dir / "label_split.json", regions, tiles,
                            fraction=self.labels.label_fraction, seed=self.labels.split_seed,
                            region_size=self.labels.region_size, total=total,
                            total_pixels=total_pixels, ranking=provenance)
            reader = TileReader(tiles, self.layout.palette)
            kept = self._audit(reader, regions)
            self.train_set = RandomWindowDataset(
                reader, regions, self.windows.crop_size, self._epoch_length(regions),
                with_labels=True, augment=self._augment(), scale=self.windows.zoom,
                seed=self.seed, region_labels=kept)
            share = sum(r.height * r.width for r in regions) / total_pixels
            log.info("segmentation: %d of %d labelled regions of ~%d px (%.3g of the pixels; "
                     "requested %.3g) from %d tiles, %d windows per epoch", len(regions), total,
                     self.labels.region_size, share, self.labels.label_fraction, len(tiles),
                     len(self.train_set))
            self.val_set = self._validation_set(labels=True)
            if self.will_test and self.test_split is not None:  # missing or corrupt: now
                self._test_tiles = self._tiles(self.test_split, labels=True)
        if stage == "validate" and self.val_set is None:  # trainer.validate on a checkpoint
            self._stats_for_evaluation()
            self.val_set = self._validation_set(labels=True)
        if stage in (None, "test") and self.test_set is None and self.test_split is not None:
            # checked at fit's set-up already when the run tests (each file read once)
            ttiles, tsizes = self._test_tiles or self._tiles(self.test_split, labels=True)
            self._stats_for_evaluation()
            self.test_set = GridWindowDataset(
                TileReader(ttiles, self.layout.palette, use_eval_labels=True),
                self._eval_regions(tsizes, None), with_labels=True,
                out_size=self.windows.val_window)

    def _audit(self, reader: TileReader, regions: Sequence[Region]) -> list | None:
        """Count ignore and off-palette pixels of the labels a run will train on.

        Returns the decoded label of every region when they fit in ``label_memory_mb``
        (training windows then slice them), else None. They are decoded here anyway,
        and made before the workers fork, so the workers share one copy."""
        per_tile: dict[str, dict[str, int]] = {}
        colour = self.layout.label_bands == 3
        nbytes = sum(r.height * r.width for r in regions)
        keep = 0 < nbytes <= self.labels.label_memory_mb * 2**20
        kept = []
        for r in regions:
            tile = reader.tiles[r.tile]
            result = reader.decode_label(r.tile, Window(r.col, r.row, r.width, r.height))
            if keep:
                kept.append(result.index)
            entry = per_tile.setdefault(tile.id, {"file": str(tile.label), "pixels": 0,
                                                  "ignored": 0, "off_palette": 0, "values": []})
            entry["pixels"] += r.height * r.width
            entry["ignored"] += result.n_ignored
            entry["off_palette"] += result.n_off_palette
            for v in result.off_palette_values:
                shown = list(unpack_rgb(v)) if colour else v
                if shown not in entry["values"] and len(entry["values"]) < 8:
                    entry["values"].append(shown)
        off = sum(e["off_palette"] for e in per_tile.values())
        px = sum(e["pixels"] for e in per_tile.values())
        for e in per_tile.values():
            if e["off_palette"]:
                log.warning("%s: %d off-palette label pixels (%.4f %%), e.g. %s; "
                            "mapped to ignore index %d", e["file"],
                            e["off_palette"], 100 * e["off_palette"] / e["pixels"],
                            e["values"][:3], IGNORE_INDEX)
        self.label_audit = {"pixels": px, "off_palette": off, "tiles": per_tile}
        self._write("label_audit.json", json.dumps(self.label_audit, indent=1))
        reader.close()  # the audit's handles and GDAL's cache of their blocks: not forked
        if keep:
            log.info("training labels kept in memory: %.1f MiB", nbytes / 2**20)
        else:
            log.info("training labels (%.1f MiB decoded) are read per window: over "
                     "data.label_memory_mb=%g", nbytes / 2**20, self.labels.label_memory_mb)
        return kept if keep else None


def auto_workers() -> int:
    """``data.num_workers=auto``: one worker per core this process may use, leaving one
    for the training loop, at most 8 (2 on a 2-core machine, 8 on 16 cores). With
    several GPU processes on one machine give an explicit count (cores / GPUs - 1)."""
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else \
        (os.cpu_count() or 1)
    return max(1, min(8, cores - 1 if cores > 2 else cores))



def _augment_options(options: Mapping | None) -> Augment:
    """``data.augment`` as an :class:`Augment`; unknown keys and probabilities outside
    [0, 1] are errors naming the key."""
    options = dict(options or {})
    unknown = sorted(set(options) - set(Augment.keys()))
    if unknown:
        raise ConfigError(f"data.augment has unknown keys {unknown}: expected "
                          f"{', '.join(Augment.keys())}")
    for key in ("brightness_contrast", "noise"):
        value = options.get(key, 0.0)
        if not 0.0 <= float(value) <= 1.0:
            raise ConfigError(f"data.augment.{key}={value}: expected a probability in [0, 1]")
    return Augment(**options)


def resume_position(trainer: L.Trainer | None) -> tuple[int, int]:
    """``(epoch, batches already trained in it)`` where a fit starts or resumes.

    Lightning creates the training loader's iterator before it tells the sampler the
    epoch, and a loader with workers draws its first indices at that moment: a run
    resumed at epoch 5 would replay epoch 0's windows (and, resumed inside an epoch,
    the epoch's first batches again). So the loader is built already at the epoch, and
    past the batches that the checkpoint's loop progress says were trained; a fresh
    fit gives (0, 0)."""
    if trainer is None:
        return 0, 0
    fit = trainer.fit_loop
    epochs = fit.epoch_progress.current
    inside = epochs.started > epochs.processed  # saved inside an epoch (a preemption)
    done = fit.epoch_loop.batch_progress.current.processed if inside else 0
    return int(epochs.processed), int(done)
