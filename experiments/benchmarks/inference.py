"""Mapping speed: end to end (``sssi.predict`` on a GeoTIFF) beside the network alone.

For each raster size and precision it writes a 3-band uint8 GeoTIFF and, in a fresh
process, runs ``sssi.predict``'s chunked sliding-window prediction to a label COG (end
to end: reading, normalising, the network, blending, writing), then times the same
network alone on batches of the same windows at the same precision and memory format
(``inference_mode``). Both are reported in megapixels of *map* per second: the
network's rate over windows is divided by the grid's overlap (window pixels predicted
per raster pixel, 1.78 for windows of 512 every 384). The share of time spent outside
the network is ``1 - end_to_end / network``. Peak resident memory (and GPU memory) is
reported next to the size the whole raster would take as one float32 tensor: memory
that stays flat while that grows is what lets a raster larger than memory be mapped.

``--reference DIR`` also runs the end-to-end prediction of another checkout of sssi
(e.g. ``git worktree add /tmp/before HEAD~3``) in the same run, for before/after
ratios on the same machine.

    python -m experiments.benchmarks.inference [--sizes 1000 3000 6000]
        [--precisions auto fp32 bf16] [--backbone resnet18] [--window 512] [--stride 384]
        [--chunk 2048] [--batch-size 4] [--device cpu|cuda] [--reference DIR]

The last line is ``infer_vs_forward R precision=P``: end-to-end MP/s over the
network-alone MP/s of map, for the largest size at the first precision.
"""

from __future__ import annotations

import argparse
import inspect
import json
import os
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

REPO = Path(__file__).resolve().parents[2]


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


def _model(backbone: str):
    from sssi.data.palettes import ISPRS
    from sssi.inference import LoadedModel
    from sssi.models import build_backbone
    from sssi.models.heads import Segmenter, build_head

    torch.manual_seed(0)
    encoder = build_backbone(backbone, in_channels=3)
    head = build_head("fcn", encoder.out_channels, encoder.reductions, 6)
    return LoadedModel(model=Segmenter(encoder, head).eval().requires_grad_(False),
                       mean=[128.0] * 3, std=[64.0] * 3, band_names=("R", "G", "B"),
                       class_names=ISPRS.classes, num_classes=6, palette_name="isprs",
                       path=Path("random-init"))


def _sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def network_alone(loaded, args: argparse.Namespace) -> dict:
    """Megapixels of window per second of the network on batches of windows, as the
    sliding window calls it (same precision and memory format; softmax included)."""
    from sssi.inference import resolve_precision

    dtype, why = resolve_precision(args.precision, torch.device(args.device))
    fn = loaded.predictor(dtype, channels_last=args.channels_last)
    batch = torch.randn(args.batch_size, 3, args.window, args.window, device=args.device)
    with torch.inference_mode():
        for _ in range(2):  # warm-up: oneDNN / cuDNN choose their kernels
            fn(batch).softmax(1)
        _sync(args.device)
        times = []
        deadline = time.perf_counter() + args.network_seconds
        while len(times) < 3 or time.perf_counter() < deadline:
            start = time.perf_counter()
            fn(batch).softmax(1)
            _sync(args.device)
            times.append(time.perf_counter() - start)
    seconds = float(np.median(times))
    return {"window_mp_s": args.batch_size * args.window ** 2 / 1e6 / seconds,
            "precision": "bf16" if dtype is not None else "fp32", "why": why}


def worker(args: argparse.Namespace) -> None:
    """One end-to-end prediction (then, for this checkout, the network alone); prints
    the figures as one JSON line (a fresh process per size and precision)."""
    from sssi.predict import predict_file

    loaded = _model(args.backbone)
    loaded.model.to(args.device)
    options = {"chunk": args.chunk, "window": args.window, "stride": args.stride,
               "batch_size": args.batch_size, "device": args.device}
    accepted = inspect.signature(predict_file).parameters
    if "precision" in accepted:  # a reference checkout may predate these options
        options.update(precision=args.precision, channels_last=args.channels_last)
    start = time.perf_counter()
    predict_file(loaded, args.input, args.output, **options)
    seconds = time.perf_counter() - start
    import sssi

    figures = {"sssi": str(Path(sssi.__file__).parent), "seconds": seconds,
               "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
               "gpu_peak_mb": (torch.cuda.max_memory_allocated() / 2**20
                               if args.device.startswith("cuda") else 0.0)}
    if "precision" in accepted:
        figures.update(network_alone(loaded, args))
    print(json.dumps(figures))


def overlap(size: int, window: int, stride: int) -> float:
    """Window pixels predicted per raster pixel (each grid window once)."""
    from sssi.utils.grid import grid_offsets

    n = len(grid_offsets(max(size, window), window, stride))
    return n * n * window * window / (size * size)


def run_worker(args: argparse.Namespace, src: Path, out: Path, precision: str,
               pythonpath: Path) -> dict:
    # this file run as a script, in the checkout's folder with only it on the path: the
    # sssi imported is that checkout's (``-m`` would put this repository first)
    cmd = [sys.executable, str(Path(__file__).resolve()), "--worker",
           "--input", str(src), "--output", str(out), "--backbone", args.backbone,
           "--window", str(args.window), "--stride", str(args.stride),
           "--chunk", str(args.chunk), "--batch-size", str(args.batch_size),
           "--device", args.device, "--precisions", precision,
           "--network-seconds", str(args.network_seconds)]
    if not args.channels_last:
        cmd.append("--no-channels-last")
    env = {**os.environ, "PYTHONPATH": str(pythonpath)}
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, cwd=pythonpath)
    if proc.returncode != 0:
        raise SystemExit(f"worker failed ({pythonpath}):\n{proc.stderr[-3000:]}")
    figures = json.loads(proc.stdout.strip().splitlines()[-1])
    if Path(figures["sssi"]).resolve() != (pythonpath / "sssi").resolve():
        raise SystemExit(f"worker imported {figures['sssi']}, not {pythonpath}'s sssi")
    return figures


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sizes", type=int, nargs="+", default=[1000, 3000, 6000])
    ap.add_argument("--precisions", nargs="+", default=["auto"],
                    choices=["auto", "fp32", "bf16"])
    ap.add_argument("--backbone", default="resnet18")
    ap.add_argument("--window", type=int, default=512)
    ap.add_argument("--stride", type=int, default=384)
    ap.add_argument("--chunk", type=int, default=2048)
    ap.add_argument("--batch-size", type=int, default=4)
    ap.add_argument("--no-channels-last", dest="channels_last", action="store_false")
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--reference", type=Path,
                    help="another sssi checkout, timed end to end beside this one")
    ap.add_argument("--network-seconds", type=float, default=10.0,
                    help="how long the network alone is timed (median batch)")
    ap.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--input", help=argparse.SUPPRESS)
    ap.add_argument("--output", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.worker:
        args.precision = args.precisions[0]
        worker(args)
        return
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, device "
          f"{args.device}; {args.backbone}, window {args.window}, stride {args.stride}, "
          f"chunk {args.chunk}, batch {args.batch_size}, channels_last {args.channels_last}")
    print(f"{'precision':>9} {'size px':>8} {'overlap':>7} {'e2e s':>7} {'e2e MP/s':>9} "
          f"{'net MP/s':>9} {'e2e/net':>7} {'outside':>7} {'ref MP/s':>9} {'new/ref':>7} "
          f"{'peak RSS MB':>11} {'GPU MB':>7} {'tensor MB':>9}")
    last = None
    with tempfile.TemporaryDirectory() as tmp:
        for size in args.sizes:
            src = Path(tmp) / f"in_{size}.tif"
            write_raster(src, size)
            mp = size * size / 1e6
            for precision in args.precisions:
                fig = run_worker(args, src, Path(tmp) / "out.tif", precision, REPO)
                e2e = mp / fig["seconds"]
                net = fig["window_mp_s"] / overlap(size, args.window, args.stride)
                ref = "–"
                ratio = "–"
                if args.reference is not None:
                    old = run_worker(args, src, Path(tmp) / "ref.tif", precision,
                                     args.reference.resolve())
                    ref = f"{mp / old['seconds']:.3f}"
                    ratio = f"{e2e / (mp / old['seconds']):.2f}"
                tensor_mb = (3 + 6) * size * size * 4 / 2**20
                print(f"{fig['precision']:>9} {size:>8} "
                      f"{overlap(size, args.window, args.stride):>7.2f} "
                      f"{fig['seconds']:>7.1f} {e2e:>9.3f} {net:>9.3f} {e2e / net:>7.2f} "
                      f"{1 - e2e / net:>7.0%} {ref:>9} {ratio:>7} {fig['peak_rss_mb']:>11.0f} "
                      f"{fig['gpu_peak_mb']:>7.0f} {tensor_mb:>9.0f}", flush=True)
                if last is None or (size == max(args.sizes) and precision == args.precisions[0]):
                    last = (e2e / net, fig["precision"], fig["why"])
            src.unlink()
    print(f"precision choice: {last[2]}")
    print(f"infer_vs_forward {last[0]:.2f} precision={last[1]}")


if __name__ == "__main__":
    main()
