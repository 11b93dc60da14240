"""How much bf16 changes a map: the same checkpoint evaluated in fp32 and in bf16.

Runs ``sssi.evaluate`` twice on the same tiles (``precision=fp32``, then ``bf16``),
with predictions saved, and prints the share of pixels whose label agrees, per tile
and over all, the two mIoUs and their difference, and each run's seconds. On a CPU
without bf16 matrix units bf16 is emulated and slow, but the labels are the same as
where it is fast: the agreement measured here holds there.

    python -m experiments.benchmarks.precision_agreement --ckpt RUN/checkpoints/last.ckpt \\
        --data dubai --data-root DIR --split 6 [--window 2112 --stride 2048 --chunk 4224]

Tune on the validation split (Dubai tile 6), not the test tile.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import cv2


def evaluate(args: argparse.Namespace, precision: str, out: Path) -> tuple[dict, float]:
    from sssi.evaluate import compose_config, run

    overrides = [f"ckpt={args.ckpt}", f"data={args.data}", f"data.root={args.data_root}",
                 f"split=[{args.split}]", f"window={args.window}", f"stride={args.stride}",
                 f"chunk={args.chunk}", f"precision={precision}", "progress=false",
                 *args.overrides]
    cfg = compose_config(overrides, out)
    start = time.perf_counter()
    metrics = run(cfg)
    return metrics, time.perf_counter() - start


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--ckpt", required=True)
    ap.add_argument("--data", default="dubai")
    ap.add_argument("--data-root", required=True)
    ap.add_argument("--split", default="6", help="tile ids or a split name (validation!)")
    ap.add_argument("--window", type=int, default=2112)
    ap.add_argument("--stride", type=int, default=2048)
    ap.add_argument("--chunk", type=int, default=4224)
    ap.add_argument("overrides", nargs="*", help="more evaluate overrides (data.input_scale=...)")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        runs = {}
        for precision in ("fp32", "bf16"):
            metrics, seconds = evaluate(args, precision, Path(tmp) / precision)
            runs[precision] = (metrics, seconds)
        same = total = 0
        print(f"{'tile':>8} {'pixels':>10} {'agreement':>9}")
        for png in sorted((Path(tmp) / "fp32" / "predictions").glob("*.png")):
            a = cv2.imread(str(png))
            b = cv2.imread(str(Path(tmp) / "bf16" / "predictions" / png.name))
            agree = (a == b).all(-1)
            same, total = same + int(agree.sum()), total + agree.size
            print(f"{png.stem:>8} {agree.size:>10} {agree.mean():>9.4%}")
    (m32, s32), (m16, s16) = runs["fp32"], runs["bf16"]
    print(f"fp32 mIoU {m32['mIoU']:.4f} in {s32:.1f} s; bf16 mIoU {m16['mIoU']:.4f} in "
          f"{s16:.1f} s; difference {100 * (m16['mIoU'] - m32['mIoU']):+.2f} points")
    gaps = ", ".join(f"{c} {100 * ((m16['per_class'][c]['IoU'] or 0) - (s['IoU'] or 0)):+.2f}"
                     for c, s in m32["per_class"].items())
    print(f"label agreement {same / total:.4%} of {total} px; OA fp32 {m32['OA']:.4f} "
          f"bf16 {m16['OA']:.4f}; IoU difference per class (points): {gaps}")


if __name__ == "__main__":
    main()
