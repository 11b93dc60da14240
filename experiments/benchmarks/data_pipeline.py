"""Data-pipeline benchmark: the training loader next to raw rasterio window reads.

Writes one 6000 x 6000 ISPRS-style tile (RGB image + colour label, uncompressed) three
ways: ``striped`` (GDAL's default row strips, as the originals are shipped), ``tiled``
(256 px blocks, what ``python -m sssi.data.prepare`` writes) and ``prepared`` (what
``python -m sssi.data.prepare --layout potsdam`` writes: tiled, the label as one band of
class indices with the palette as its colour table). For each layout and crop size,
every row runs two epochs of the training windows and times the second (the first
warms GDAL's block cache as a loader's first epoch does):

  raw       rasterio reads of exactly the windows the loader times (image + label,
            open handles kept, after an untimed pass over the warm-up epoch's): the
            ceiling
  dataset   the dataset's own ``__getitem__`` (read the image, slice the label from the
            training labels the datamodule decoded once at set-up, resize zoomed
            windows, draw augmentation parameters)
  loader N  the training DataLoader with N persistent workers, timed over its second
            epoch: each worker reads a whole batch straight into the shared block it
            hands over (``__getitems__``; pinned on a GPU)
  files N   the same loader reading and decoding every window's label from its file
            (``data.label_memory_mb=0``, what a run does when the decoded training
            labels exceed that budget)
  ship N    the same loader over ready-made samples of the same shapes (no reads): what
            handing batches from N workers to the main process costs, the loader's
            ceiling on this machine
  augment   the datamodule's per-batch step on the device (flips, rotations,
            normalisation; ``--device``), in patches/s

and prints patches/s with the ratio to the raw rate. The last two lines are summaries
a script can read: ``prepared_loader_vs_raw ...`` and, last, ``loader_vs_raw 128=R
256=R 512=R`` (tiled tile, ``--workers`` workers, image+label raw reads as the
denominator).

    python -m experiments.benchmarks.data_pipeline [--crops 128 256 512] [--patches 512]
        [--workers 2] [--device cpu|cuda] [--size 6000] [--layouts striped tiled prepared]
"""

from __future__ import annotations

import argparse
import tempfile
import time
import warnings
from dataclasses import replace
from pathlib import Path

import numpy as np
import rasterio
import rasterio.errors
import torch

from sssi.data import ISPRS, SegmentationDataModule, build_layout
from sssi.data.prepare import prepare

TILE = "2_10"
LAYOUTS = ("striped", "tiled", "prepared")  # in this order: prepared copies striped


def write_tile(root: Path, size: int, tiled: bool) -> None:
    """One Potsdam tile (image + colour label) of ``size`` px, striped or tiled."""
    paths = build_layout("potsdam", root).paths(TILE)
    rng = np.random.default_rng(0)
    coarse = rng.integers(0, 256, (3, size // 50 + 1, size // 50 + 1), dtype=np.uint8)
    image = np.repeat(np.repeat(coarse, 50, axis=1), 50, axis=2)[:, :size, :size]
    image = image + rng.integers(0, 16, image.shape, dtype=np.uint8)  # texture
    classes = rng.integers(0, 6, (size // 100 + 1, size // 100 + 1))
    index = np.repeat(np.repeat(classes, 100, axis=0), 100, axis=1)[:size, :size]
    label = np.asarray(ISPRS.colors, dtype=np.uint8)[index].transpose(2, 0, 1)
    layout = {"tiled": True, "blockxsize": 256, "blockysize": 256} if tiled else {}
    for path, data in ((paths["RGB"], image), (paths["label"], label)):
        path.parent.mkdir(parents=True, exist_ok=True)
        with rasterio.open(path, "w", driver="GTiff", width=size, height=size, count=3,
                           dtype="uint8", **layout) as dst:
            dst.write(data)


def time_raw(dm: SegmentationDataModule, n: int) -> float:
    """Image + label reads of the windows the loader times (epoch 1), after an untimed
    pass over the windows of its warm-up epoch (epoch 0), through one pair of open
    handles: the same reads in the same state of GDAL's block cache. (Timing a second
    pass over the same windows, as earlier versions did, measured a cache that no
    training run sees, and reading them cold made the figure swing 2x.)"""
    tile = dm.train_set.reader.tiles[0]
    with rasterio.open(tile.sources[0].path) as img, rasterio.open(tile.label) as lab:
        for epoch in (0, 1):
            windows = [dm.train_set.window(epoch * n + i)[1] for i in range(n)]
            start = time.perf_counter()
            for win in windows:
                img.read(window=win)
                lab.read(window=win)
            elapsed = time.perf_counter() - start
        return n / elapsed


def time_dataset(dm: SegmentationDataModule, n: int) -> float:
    """The dataset's samples of epoch 1 after those of epoch 0, as :func:`time_raw`."""
    ds = dm.train_set
    for i in range(n):
        ds[i]
    start = time.perf_counter()
    for i in range(n, 2 * n):
        ds[i]
    return n / (time.perf_counter() - start)


def time_loader(dm: SegmentationDataModule, workers: int, n: int) -> float:
    """Patches/s of the second epoch of persistent workers: the first one pays the
    workers' start-up and their first touches of memory inherited from the main
    process (GDAL's block cache after the band statistics), once per training run."""
    dm.loading = replace(dm.loading, num_workers=workers, persistent_workers=workers > 0)
    loader = dm.train_dataloader()
    for _ in loader:  # epoch 0: warm-up
        pass
    loader.sampler.set_epoch(1)  # new windows, as in training
    seen, start = 0, time.perf_counter()
    for batch in loader:
        seen += batch["image"].shape[0]
    return seen / (time.perf_counter() - start)


class Ready(torch.utils.data.Dataset):
    """Samples shaped like ``dataset``'s, made without reading anything."""

    def __init__(self, dataset) -> None:
        self.sample, self.length = dataset[0], len(dataset)

    def __len__(self) -> int:
        return self.length

    def __getitem__(self, i: int) -> dict:
        return {k: v.clone() if torch.is_tensor(v) else v for k, v in self.sample.items()}


def time_ship(dm: SegmentationDataModule, workers: int) -> float:
    """Patches/s of the training loader's transport alone (second epoch)."""
    real = dm.train_set
    dm.train_set = Ready(real)
    try:
        return time_loader(dm, workers, 0)
    finally:
        dm.train_set = real


def time_augment(dm: SegmentationDataModule, device: torch.device, rounds: int = 8) -> float:
    dm.loading = replace(dm.loading, num_workers=0)
    batch = next(iter(dm.train_dataloader()))
    moved = [{k: (v.to(device) if torch.is_tensor(v) else v) for k, v in batch.items()}
             for _ in range(rounds + 1)]
    dm.on_after_batch_transfer(moved[0], 0)  # warm-up (and the normaliser's tensors)
    if device.type == "cuda":
        torch.cuda.synchronize()
    start = time.perf_counter()
    for b in moved[1:]:
        dm.on_after_batch_transfer(b, 0)
    if device.type == "cuda":
        torch.cuda.synchronize()
    return rounds * batch["image"].shape[0] / (time.perf_counter() - start)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--size", type=int, default=6000)
    ap.add_argument("--crops", type=int, nargs="+", default=[128, 256, 512])
    ap.add_argument("--patches", type=int, default=1024)
    ap.add_argument("--batch-size", type=int, default=16)
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--layouts", nargs="+", default=list(LAYOUTS),
                    choices=LAYOUTS)
    args = ap.parse_args()
    warnings.filterwarnings("ignore", category=rasterio.errors.NotGeoreferencedWarning)
    device = torch.device(args.device)
    print(f"torch {torch.__version__}, rasterio {rasterio.__version__}, "
          f"{torch.get_num_threads()} threads, device {device}; one {args.size} px tile, "
          f"{args.patches} patches per row, batch {args.batch_size}")
    header = f"{'layout':<8} {'crop':>5} {'path':<12} {'patches/s':>10} {'x raw':>7} {'MB/s':>8}"
    print(header)
    print("-" * len(header))
    summary: dict[str, dict[int, float]] = {"tiled": {}, "prepared": {}}
    with tempfile.TemporaryDirectory() as tmp:
        for layout in (name for name in LAYOUTS if name in args.layouts):
            root = Path(tmp) / layout
            if layout == "prepared":  # prepared from the striped tile, as users would
                if "striped" not in args.layouts:
                    write_tile(Path(tmp) / "striped", args.size, tiled=False)
                prepare(Path(tmp) / "striped", root, layout="potsdam", log=lambda _: None)
            else:
                write_tile(root, args.size, tiled=layout == "tiled")
            for crop in args.crops:
                dm = SegmentationDataModule(
                    root=str(root), crop_size=crop, batch_size=args.batch_size,
                    num_workers=0, samples_per_epoch=args.patches, region_size=args.size,
                    train_split=[TILE], val_split=None, test_split=None)
                dm.setup("fit")
                mb = crop * crop * 6 / 1e6  # image + colour label bytes
                rates = {"raw": time_raw(dm, args.patches),
                         "dataset": time_dataset(dm, args.patches),
                         "loader 0": time_loader(dm, 0, args.patches)}
                if args.workers > 0:
                    rates[f"loader {args.workers}"] = time_loader(dm, args.workers, args.patches)
                    kept, dm.train_set.region_labels = dm.train_set.region_labels, None
                    rates[f"files {args.workers}"] = time_loader(dm, args.workers, args.patches)
                    dm.train_set.region_labels = kept
                    rates[f"ship {args.workers}"] = time_ship(dm, args.workers)
                rates["augment"] = time_augment(dm, device)
                raw = rates["raw"]
                for name, rate in rates.items():
                    print(f"{layout:<8} {crop:>5} {name:<12} {rate:>10.1f} {rate / raw:>7.2f} "
                          f"{rate * mb:>8.1f}")
                if layout in summary:
                    summary[layout][crop] = rates[f"loader {args.workers}" if args.workers
                                                  else "loader 0"] / raw
    for layout in ("prepared", "tiled"):
        if not summary[layout]:
            continue
        name = "loader_vs_raw" if layout == "tiled" else f"{layout}_loader_vs_raw"
        print(f"{name} " + " ".join(f"{c}={r:.2f}" for c, r in summary[layout].items()))


if __name__ == "__main__":
    main()
