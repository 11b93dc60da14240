"""Full-tile inference benchmark: megapixels/s and peak memory against raster size.

For each tile size it writes a 3-band uint8 GeoTIFF, then runs ``sssi.predict``'s
chunked sliding-window prediction (label COG out) in a fresh process, and reports
wall time, megapixels per second and the process's peak resident memory next to the
size the whole raster would take as one float32 (bands + class probabilities)
tensor. Peak memory that stays flat while that tensor grows is what lets a raster
larger than memory be mapped.

    python -m experiments.benchmarks.inference [--sizes 1000 3000 6000]
        [--backbone resnet18] [--window 512] [--stride 384] [--chunk 2048]
        [--device cpu|cuda]
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import rasterio
import torch
from rasterio.transform import from_origin


def write_raster(path: Path, size: int) -> None:
    """A tiled 3-band uint8 GeoTIFF with smooth random structure (written in strips)."""
    profile = {"driver": "GTiff", "width": size, "height": size, "count": 3, "dtype": "uint8",
               "crs": "EPSG:32633", "transform": from_origin(366000, 5808000, 0.05, 0.05),
               "tiled": True, "blockxsize": 256, "blockysize": 256}
    rng = np.random.default_rng(0)
    with rasterio.open(path, "w", **profile) as ds:
        for row in range(0, size, 1024):
            h = min(1024, size - row)
            ds.write(rng.integers(0, 256, (3, h, size), dtype=np.uint8),
                     window=rasterio.windows.Window(0, row, size, h))


def worker(args: argparse.Namespace) -> None:
    """Run one prediction and print its figures as JSON (a fresh process per size)."""
    from sssi.data.palettes import ISPRS
    from sssi.inference import LoadedModel
    from sssi.models import build_backbone
    from sssi.models.heads import Segmenter, build_head
    from sssi.predict import predict_file

    torch.manual_seed(0)
    encoder = build_backbone(args.backbone, in_channels=3)
    head = build_head("fcn", encoder.out_channels, encoder.reductions, 6)
    loaded = LoadedModel(model=Segmenter(encoder, head).eval().requires_grad_(False),
                         mean=[128.0] * 3, std=[64.0] * 3, band_names=("R", "G", "B"),
                         class_names=ISPRS.classes, num_classes=6, palette_name="isprs",
                         path=Path("random-init"))
    loaded.model.to(args.device)
    start = time.perf_counter()
    predict_file(loaded, args.input, args.output, chunk=args.chunk, window=args.window,
                 stride=args.stride, batch_size=args.batch_size, device=args.device)
    seconds = time.perf_counter() - start
    peak_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    gpu_mb = torch.cuda.max_memory_allocated() / 2**20 if args.device.startswith("cuda") else 0
    print(json.dumps({"seconds": seconds, "peak_rss_mb": peak_mb, "gpu_peak_mb": gpu_mb}))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sizes", type=int, nargs="+", default=[1000, 3000, 6000])
    ap.add_argument("--backbone", default="resnet18")
    ap.add_argument("--window", type=int, default=512)
    ap.add_argument("--stride", type=int, default=384)
    ap.add_argument("--chunk", type=int, default=2048)
    ap.add_argument("--batch-size", type=int, default=4)
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--input", help=argparse.SUPPRESS)
    ap.add_argument("--output", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.worker:
        worker(args)
        return
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, device "
          f"{args.device}; {args.backbone}, window {args.window}, stride {args.stride}, "
          f"chunk {args.chunk}")
    print(f"{'size px':>8} {'MP':>6} {'seconds':>8} {'MP/s':>7} {'peak RSS MB':>12} "
          f"{'GPU MB':>7} {'full tensor MB':>15} {'peak/tensor':>11}")
    with tempfile.TemporaryDirectory() as tmp:
        for size in args.sizes:
            src = Path(tmp) / f"in_{size}.tif"
            write_raster(src, size)
            cmd = [sys.executable, __file__, "--worker", "--input", str(src),
                   "--output", str(Path(tmp) / f"out_{size}.tif"), "--backbone", args.backbone,
                   "--window", str(args.window), "--stride", str(args.stride),
                   "--chunk", str(args.chunk), "--batch-size", str(args.batch_size),
                   "--device", args.device]
            out = subprocess.run(cmd, capture_output=True, text=True, check=True)
            fig = json.loads(out.stdout.strip().splitlines()[-1])
            mp = size * size / 1e6
            tensor_mb = (3 + 6) * size * size * 4 / 2**20
            print(f"{size:>8} {mp:>6.1f} {fig['seconds']:>8.1f} {mp / fig['seconds']:>7.3f} "
                  f"{fig['peak_rss_mb']:>12.0f} {fig['gpu_peak_mb']:>7.0f} {tensor_mb:>15.0f} "
                  f"{fig['peak_rss_mb'] / tensor_mb:>11.2f}", flush=True)
            src.unlink()


if __name__ == "__main__":
    main()
