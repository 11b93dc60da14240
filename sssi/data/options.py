"""The datamodules' settings, one block per concern, each documented where it is defined.

The data config (``conf/data/*.yaml``) keeps its flat keys (``data.crop_size``,
``data.label_fraction``, ...: the commands users type name them), and
:class:`~sssi.data.datamodules.TileDataModule` sorts them into these blocks:

- :class:`Windows`: what a window is (size, zoom, resampling) and how many there are;
- :class:`Loading`: batches and the DataLoader's workers;
- :class:`LabelSelection`: which labelled pixels a segmentation run trains on (the
  pretext datamodule reads no labels and ignores it);
- the augmentation: :class:`sssi.data.augment.Augment`.

Each block checks its values when it is made, so a bad value ends the run at
construction with one line naming its ``data.`` key.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from sssi.errors import ConfigError


def _positive(key: str, value: object, minimum: int = 1) -> int:
    if isinstance(value, bool) or not isinstance(value, int | float) or int(value) != value \
            or value < minimum:
        raise ConfigError(f"data.{key}={value!r}: expected an integer >= {minimum}")
    return int(value)


def _positive_or_none(key: str, value: object) -> int | None:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int | float) or int(value) != value \
            or value < 1:
        raise ConfigError(f"data.{key}={value!r}: expected a positive integer or null")
    return int(value)


@dataclass(frozen=True)
class Windows:
    """The windows the networks see.

    Attributes:
        crop_size: side of a training window in pixels, as the network sees it (after
            ``input_scale``).
        scale: ``[low, high]`` zoom range of training windows (each draws a factor
            log-uniformly), or None for no zoom.
        input_scale: resampling of the imagery before the network sees it (0.5: half
            the pixels per side, e.g. 0.5 m imagery seen at 1 m): windows cover
            ``1 / input_scale`` times more ground at the same size in pixels. Saved in
            checkpoints; evaluation and prediction resample alike and score and write
            at the input's full resolution.
        samples_per_epoch: random training windows per epoch (None: cover the training
            area once).
        val_window: side of the validation (and test) grid windows (None: ``crop_size``).
        val_max_windows: at most this many validation windows, evenly spread (None: all).
    """

    crop_size: int = 256
    scale: tuple[float, float] | None = None
    input_scale: float = 1.0
    samples_per_epoch: int | None = None
    val_window: int | None = None
    val_max_windows: int | None = 64

    def __post_init__(self) -> None:
        set_ = object.__setattr__  # frozen: normalise once, here
        set_(self, "crop_size", _positive("crop_size", self.crop_size))
        set_(self, "val_window", _positive("val_window", self.val_window or self.crop_size))
        set_(self, "samples_per_epoch",
             _positive_or_none("samples_per_epoch", self.samples_per_epoch))
        set_(self, "val_max_windows", _positive_or_none("val_max_windows",
                                                        self.val_max_windows))
        if not 0 < float(self.input_scale) <= 4:
            raise ConfigError(f"data.input_scale={self.input_scale!r}: expected a factor in "
                              "(0, 4] (0.5 = half the pixels per side)")
        set_(self, "input_scale", float(self.input_scale))
        if self.scale:
            lo_hi = [float(v) for v in self.scale]
            if len(lo_hi) != 2 or not 0 < lo_hi[0] <= lo_hi[1]:
                raise ConfigError(f"data.scale={list(self.scale)}: expected [low, high] zoom "
                                  "factors with 0 < low <= high (e.g. [0.75, 1.5]), or null")
            set_(self, "scale", (lo_hi[0], lo_hi[1]))
        else:
            set_(self, "scale", None)

    @property
    def zoom(self) -> tuple[float, float] | None:
        """The zoom range of training windows in file pixels: ``scale`` times
        ``input_scale`` (None: windows are read at the file's resolution)."""
        if self.scale is None:
            return None if self.input_scale == 1 else (self.input_scale, self.input_scale)
        return (self.scale[0] * self.input_scale, self.scale[1] * self.input_scale)


@dataclass(frozen=True)
class Loading:
    """Batches and the DataLoader.

    Attributes:
        batch_size: training windows per batch on each device (per process).
        eval_batch_size: validation and test windows per batch (None: ``batch_size``,
            following it when a global batch changes it).
        global_batch_size: when set, samples per optimizer step over all devices; the
            per-device batch becomes ``global_batch_size / (world size x accumulation)``
            when ``sssi.train`` plans the run (:mod:`sssi.scaling`).
        num_workers: DataLoader worker processes (``auto``: one per core this process
            may use, leaving one for the training loop, at most 8).
        prefetch_factor: batches each worker prepares ahead.
        pin_memory: page-locked batches (with a GPU), copied without a staging copy.
        persistent_workers: keep the workers (and their open files) between epochs.
    """

    batch_size: int = 8
    eval_batch_size: int | None = None
    global_batch_size: int | None = None
    num_workers: int = 2
    prefetch_factor: int = 4
    pin_memory: bool = True
    persistent_workers: bool = True

    def __post_init__(self) -> None:
        set_ = object.__setattr__
        for key, minimum in (("batch_size", 1), ("num_workers", 0), ("prefetch_factor", 1)):
            set_(self, key, _positive(key, getattr(self, key), minimum))
        if self.eval_batch_size is not None:
            set_(self, "eval_batch_size", _positive("eval_batch_size", self.eval_batch_size))
        set_(self, "pin_memory", bool(self.pin_memory))
        set_(self, "persistent_workers", bool(self.persistent_workers))

    @property
    def eval_batch(self) -> int:
        """Windows per validation or test batch."""
        return self.eval_batch_size or self.batch_size


@dataclass(frozen=True)
class LabelSelection:
    """Which labelled pixels a segmentation run trains on.

    Attributes:
        label_fraction: fraction of the labelled pixels, chosen as whole non-overlapping
            regions, nested and seeded (the realised fraction goes to
            ``label_split.json``).
        region_size: side of those regions in pixels of the files.
        split_seed: seed of the choice of regions (the study pairs methods by it).
        label_memory_mb: the decoded training labels (one byte per labelled pixel) are
            kept in memory when they fit in this many MiB, so that training windows
            slice them instead of reading and decoding the label file per sample; 0
            reads every window's label from its file.
        label_regions: a ranking of the regions (``regions.json`` of ``python -m
            sssi.select``) that orders them in place of the seeded permutation; None:
            the seeded permutation.
        label_pool: with ``label_regions``, ``split_seed`` draws the regions within the
            ranking's first ``label_pool`` times the budget (1: the ranking's first).
    """

    label_fraction: float = 1.0
    region_size: int = 600
    split_seed: int = 0
    label_memory_mb: float = 2048
    label_regions: str | None = None
    label_pool: float = 1.0

    def __post_init__(self) -> None:
        set_ = object.__setattr__
        set_(self, "label_fraction", float(self.label_fraction))
        set_(self, "region_size", _positive("region_size", self.region_size))
        set_(self, "split_seed", int(self.split_seed))
        memory = float(self.label_memory_mb or 0)
        if memory < 0:
            raise ConfigError(f"data.label_memory_mb={memory:g}: expected MiB >= 0 (0 reads "
                              "every training window's label from its file)")
        set_(self, "label_memory_mb", memory)
        if self.label_regions is not None and not isinstance(self.label_regions, str | bytes) \
                and not hasattr(self.label_regions, "__fspath__"):
            raise ConfigError(f"data.label_regions={self.label_regions!r}: expected the path "
                              "of a regions.json (python -m sssi.select) or null")
        pool = self.label_pool
        if isinstance(pool, bool) or not isinstance(pool, int | float) or not pool >= 1:
            raise ConfigError(f"data.label_pool={pool!r}: expected a number >= 1 (1: the "
                              "ranking's first regions; 2: drawn within twice the budget)")
        if pool != 1 and self.label_regions is None:
            raise ConfigError(f"data.label_pool={pool!r} draws within a ranking's first "
                              "regions: give data.label_regions=FILE too (python -m "
                              "sssi.select), or leave data.label_pool=1")
        set_(self, "label_pool", float(pool))


def as_split(split: str | int | Sequence | None) -> str | list[str] | None:
    """A split config value as the layouts take it: a name, a list of ids, or None; one
    id given alone (``data.test_split=7``: Dubai's tile 7) is a list of one."""
    if split is None or isinstance(split, str):
        return split
    if isinstance(split, int) and not isinstance(split, bool):
        return [str(split)]
    if isinstance(split, bool) or not isinstance(split, Sequence):
        raise ConfigError(f"data split {split!r}: expected a split name, a tile id or a list "
                          "of them")
    return [str(s) for s in split]
