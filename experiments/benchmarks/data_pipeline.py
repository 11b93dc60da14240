"""Data-pipeline benchmark: training-loader patches/s next to raw rasterio window reads.

For each crop size it draws one fixed list of training windows, then times
  raw     rasterio reads of exactly those windows (image + label, open handles kept),
  sample  the dataset's own ``__getitem__`` (read, decode palette, augment, normalise),
  loader  the training DataLoader (batches, collate) with 0 and N workers,
and prints patches/s for each with the ratio to the raw read rate. A ratio near 1 for
``sample`` means the pipeline costs little beyond the disk reads; loader rates above
the raw rate show what workers buy.

    python experiments/benchmarks/data_pipeline.py [--tile-size 2048] [--tiles 4]
        [--crops 256 512] [--patches 256] [--workers 2] [--root DIR]

``--root`` benchmarks an existing Potsdam-layout folder (e.g. the real ISPRS data)
instead of generating synthetic tiles.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import rasterio
import torch
from rasterio.windows import Window

from sssi.data import SegmentationDataModule
from sssi.data.synthetic import generate


def _windows(dm: SegmentationDataModule, n: int) -> list[tuple[int, Window]]:
    """The windows the training set draws for its first ``n`` samples."""
    return [dm.train_set.window(i)[:2] for i in range(n)]


def time_raw(dm: SegmentationDataModule, windows: list[tuple[int, Window]]) -> float:
    tiles = dm.train_set.reader.tiles
    handles = {}
    for t in tiles:
        handles[t.sources[0].path] = rasterio.open(t.sources[0].path)
        handles[t.label] = rasterio.open(t.label)
    start = time.perf_counter()
    for t, win in windows:
        handles[tiles[t].sources[0].path].read(window=win)
        handles[tiles[t].label].read(window=win)
    elapsed = time.perf_counter() - start
    for h in handles.values():
        h.close()
    return len(windows) / elapsed


def time_samples(dm: SegmentationDataModule, n: int) -> float:
    ds = dm.train_set
    ds[0]  # open handles outside the timed part, as the raw reader does
    start = time.perf_counter()
    for i in range(n):
        ds[i]
    return n / (time.perf_counter() - start)


def time_loader(dm: SegmentationDataModule, workers: int, n: int) -> float:
    dm.num_workers = workers
    dm.persistent_workers = False
    loader = dm.train_dataloader()
    it = iter(loader)
    next(it)  # worker start-up is not throughput
    seen = 0
    start = time.perf_counter()
    for batch in it:
        seen += batch["image"].shape[0]
        if seen >= n:
            break
    return seen / (time.perf_counter() - start)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--root", type=Path, default=None)
    ap.add_argument("--tile-size", type=int, default=2048)
    ap.add_argument("--tiles", type=int, default=4)
    ap.add_argument("--crops", type=int, nargs="+", default=[256, 512])
    ap.add_argument("--patches", type=int, default=256)
    ap.add_argument("--batch-size", type=int, default=16)
    ap.add_argument("--workers", type=int, default=2)
    args = ap.parse_args()

    with tempfile.TemporaryDirectory() as tmp:
        root = args.root
        if root is None:
            t0 = time.perf_counter()
            root = generate(Path(tmp) / "potsdam", tiles=args.tiles, size=args.tile_size, seed=0)
            print(f"generated {args.tiles} synthetic tiles of {args.tile_size} px in "
                  f"{time.perf_counter() - t0:.1f} s")
        print(f"torch {torch.__version__}, rasterio {rasterio.__version__}, "
              f"{torch.get_num_threads()} threads")
        header = f"{'crop':>5} {'path':<22} {'patches/s':>10} {'x raw':>7} {'MB/s':>8}"
        print(header)
        print("-" * len(header))
        for crop in args.crops:
            dm = SegmentationDataModule(root=str(root), crop_size=crop,
                                        batch_size=args.batch_size, num_workers=0,
                                        samples_per_epoch=args.patches, region_size=600)
            dm.setup("fit")
            windows = _windows(dm, args.patches)
            mb = crop * crop * (dm.layout.num_bands + 3) / 1e6  # image + colour label bytes
            rates = {"raw rasterio read": time_raw(dm, windows),
                     "dataset __getitem__": time_samples(dm, args.patches),
                     "DataLoader 0 workers": time_loader(dm, 0, args.patches)}
            if args.workers > 0:
                rates[f"DataLoader {args.workers} workers"] = time_loader(dm, args.workers,
                                                                          args.patches)
            raw = rates["raw rasterio read"]
            for name, rate in rates.items():
                print(f"{crop:>5} {name:<22} {rate:>10.1f} {rate / raw:>7.2f} {rate * mb:>8.1f}")


if __name__ == "__main__":
    main()
