"""Training curves of a run as one PNG: ``python -m sssi.plot RUN [--out FILE]``.

Reads ``RUN/csv/metrics.csv`` (Lightning's CSV logger, which every sssi run writes with
``logger=csv``, the default, or ``wandb_csv``) and draws one panel per family of
curves against the optimizer step: losses (``train/*loss*``, ``val/loss``), the
instructor's KL term (log scale: it can grow by orders of magnitude), scores
(``val/mIoU``, ``val/mF1``, ``val/OA``), the game's hole errors (``*hole_error*``),
its mask statistics (``mask/*``, ``val/border_*``), learning rates (``lr-*``) and the
game's phase. Families without values are left out. Writes ``RUN/curves.png`` by
default (a temporary name first, then renamed).
"""

from __future__ import annotations

import argparse
import csv
import io
import math
import sys
from collections.abc import Sequence
from fnmatch import fnmatch
from pathlib import Path

from sssi.errors import DataError, SssiError
from sssi.utils.io import atomic_write_bytes

#: Panel title -> fnmatch patterns of the metric names it draws (first match wins).
PANELS: tuple[tuple[str, tuple[str, ...]], ...] = (
    ("hole error", ("*hole_error*",)),
    ("instructor KL (its latent against the prior)", ("train/instructor_kl",)),
    ("loss", ("train/*loss", "train/*loss_*", "val/loss", "train/ce", "train/ssim",
              "train/dice", "train/iou", "train/inpainter_*", "train/instructor_reward")),
    ("validation score", ("val/mIoU", "val/mF1", "val/OA", "val/mIoU_5")),
    ("masks", ("mask/*", "val/border_*", "val/inner_freq")),
    ("learning rate", ("lr-*",)),
    ("phase (0 warm-up, 1 instructor, 2 inpainter)", ("train/phase",)),
)


def read_curves(path: Path) -> dict[str, list[tuple[float, float]]]:
    """``{metric: [(step, value), ...]}`` from a Lightning ``metrics.csv``."""
    if not path.is_file():
        raise DataError(f"{path}: no metrics file (runs write it with logger=csv)")
    curves: dict[str, list[tuple[float, float]]] = {}
    with path.open(newline="") as fh:
        reader = csv.DictReader(fh)
        if reader.fieldnames is None or "step" not in reader.fieldnames:
            raise DataError(f"{path}: not a Lightning metrics.csv (no 'step' column)")
        for row in reader:
            try:
                step = float(row["step"])
            except (TypeError, ValueError):
                continue
            for key, value in row.items():
                if key in ("step", "epoch") or value in (None, ""):
                    continue
                try:
                    number = float(value)
                except ValueError:
                    continue
                if math.isfinite(number):
                    curves.setdefault(key, []).append((step, number))
    return curves


def panel_of(name: str) -> str | None:
    """The panel that draws metric ``name`` (per-class scores are left out)."""
    for title, patterns in PANELS:
        if any(fnmatch(name, p) for p in patterns):
            return title
    return None


def plot_curves(curves: dict[str, list[tuple[float, float]]], title: str) -> bytes:
    """PNG bytes: one panel per family of curves that has values."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    grouped: dict[str, list[str]] = {}
    for name in sorted(curves):
        panel = panel_of(name)
        if panel is not None:
            grouped.setdefault(panel, []).append(name)
    panels = [t for t, _ in PANELS if t in grouped]
    if not panels:
        raise DataError(f"{title}: no curves to draw (no loss, score or mask columns)")
    cols = 2 if len(panels) > 1 else 1
    rows = math.ceil(len(panels) / cols)
    fig, axes = plt.subplots(rows, cols, figsize=(6.4 * cols, 3.4 * rows), dpi=110,
                             squeeze=False)
    for ax, panel in zip(axes.flat, panels, strict=False):
        for name in grouped[panel]:
            points = sorted(curves[name])
            marker = "o" if len(points) < 30 else None
            ax.plot([p[0] for p in points], [p[1] for p in points], marker=marker,
                    markersize=3, linewidth=1.2, label=name)
        if panel == "learning rate" or panel.startswith("instructor KL"):
            ax.set_yscale("log")
        ax.set_title(panel, fontsize=10)
        ax.set_xlabel("step")
        ax.grid(True, alpha=0.3)
        ax.legend(fontsize=7)
    for ax in list(axes.flat)[len(panels):]:
        ax.axis("off")
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    plt.close(fig)
    return buf.getvalue()


def plot_run(run: Path, out: Path | None = None) -> Path:
    """Draw the curves of run folder ``run`` into ``out`` (default ``run/curves.png``)."""
    run = Path(run)
    if not run.is_dir():
        raise DataError(f"{run}: run folder not found")
    curves = read_curves(run / "csv" / "metrics.csv")
    out = Path(out) if out is not None else run / "curves.png"
    return atomic_write_bytes(out, plot_curves(curves, str(run)))


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m sssi.plot",
                                     description="Draw the training curves of an sssi run.")
    parser.add_argument("run", type=Path, help="run folder (holding csv/metrics.csv)")
    parser.add_argument("--out", type=Path, default=None,
                        help="PNG to write (default: RUN/curves.png)")
    args = parser.parse_args(argv)
    try:
        path = plot_run(args.run, args.out)
    except SssiError as err:
        print(f"error: {err}", file=sys.stderr)
        return 1
    print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
