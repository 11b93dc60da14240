"""Full-tile evaluation of a segmentation checkpoint: ``python -m sssi.evaluate ckpt=PATH``.

Training-time test metrics are computed on fixed windows; the benchmark protocol scores
whole tiles. Here every tile of a split is predicted with the chunked sliding window
of :mod:`sssi.inference` and compared with its evaluation label (the eroded
``noBoundary`` label where the dataset has one; ignore pixels excluded). One confusion
matrix over all tiles gives per-class IoU, F1, precision and recall, and mIoU, mF1, OA.

ISPRS papers also report the five classes without clutter. Convention used here (the
common one): pixels whose *ground truth* is clutter are excluded; a prediction of
clutter on a pixel of another class still counts as a miss of that class. Those
numbers carry the suffix ``_5`` (``mIoU_5``, ``mF1_5``, ``OA_5``, ``per_class_5``).

Classes that neither occur nor are predicted have undefined scores: ``null`` in
``metrics.json``, left out of the means. Writes ``metrics.json``, ``metrics.md``
(also printed), ``confusion.png`` and, with ``save_predictions``, colour PNGs under
``predictions/``; every file goes to a temporary name first.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import cv2
import hydra
import numpy as np
from omegaconf import DictConfig, ListConfig, OmegaConf
from tqdm.contrib.logging import logging_redirect_tqdm

import sssi.config  # noqa: F401  (registers the ${sssi.*} resolvers)
from sssi.cli import CONFIG_DIR, compose_entry, flag, other_shard, run_or_exit, sweep_entry
from sssi.errors import ConfigError
from sssi.inference import (
    BLENDS,
    LoadedModel,
    fast_predictor,
    load_segmenter,
    predict_chunks,
    progress_bar,
    resolve_device,
    window_count,
)
from sssi.metrics import (
    confusion_matrix,
    evaluation_metrics,
    jsonable,
    markdown_table,
    safe_ratio,
    scores,
)
from sssi.utils.io import atomic_write_text, write_png

log = logging.getLogger("sssi.evaluate")

IGNORE_INDEX = 255


# ------------------------------------------------------------------------------ reports
def confusion_image(cm: np.ndarray, class_names: Sequence[str], cell: int = 72) -> np.ndarray:
    """A row-normalised confusion-matrix heat map with labels, (H, W, 3) BGR uint8.

    Drawn with OpenCV (no matplotlib here): rows are ground truth, columns prediction,
    each cell shows the share of its row in % and the colour encodes it.
    """
    k = len(class_names)
    cm = np.asarray(cm, dtype=np.float64)
    norm = safe_ratio(cm, np.repeat(cm.sum(1, keepdims=True), k, axis=1))
    font, scale, thick = cv2.FONT_HERSHEY_SIMPLEX, 0.45, 1
    label_w = max(cv2.getTextSize(n, font, scale, thick)[0][0] for n in class_names) + 16
    top, left = label_w + 28, label_w + 28
    h, w = top + k * cell + 12, left + k * cell + 12
    img = np.full((h, w, 3), 255, np.uint8)
    heat = np.nan_to_num(norm, nan=0.0)
    colours = cv2.applyColorMap(np.round(heat * 255).astype(np.uint8), cv2.COLORMAP_VIRIDIS)
    for i in range(k):
        for j in range(k):
            y, x = top + i * cell, left + j * cell
            fill = (225, 225, 225) if np.isnan(norm[i, j]) else colours[i, j].tolist()
            cv2.rectangle(img, (x, y), (x + cell - 1, y + cell - 1), fill, -1)
            text = "-" if np.isnan(norm[i, j]) else f"{100 * norm[i, j]:.1f}"
            (tw, th), _ = cv2.getTextSize(text, font, scale, thick)
            ink = (0, 0, 0) if heat[i, j] > 0.6 or np.isnan(norm[i, j]) else (255, 255, 255)
            cv2.putText(img, text, (x + (cell - tw) // 2, y + (cell + th) // 2), font, scale,
                        ink, thick, cv2.LINE_AA)
    for i, name in enumerate(class_names):  # row labels
        (tw, th), _ = cv2.getTextSize(name, font, scale, thick)
        cv2.putText(img, name, (left - tw - 8, top + i * cell + (cell + th) // 2), font,
                    scale, (0, 0, 0), thick, cv2.LINE_AA)
    # column labels: drawn horizontally on a strip, then rotated to read bottom-up
    strip = np.full((cell * k, label_w, 3), 255, np.uint8)
    for j, name in enumerate(class_names):
        (tw, th), _ = cv2.getTextSize(name, font, scale, thick)
        cv2.putText(strip, name, (8, j * cell + (cell + th) // 2), font, scale, (0, 0, 0),
                    thick, cv2.LINE_AA)
    img[top - 8 - label_w: top - 8, left: left + k * cell] = np.rot90(strip)
    cv2.putText(img, "truth \\ prediction (% of row)", (8, 18), font, scale, (0, 0, 0),
                thick, cv2.LINE_AA)
    return img


# ------------------------------------------------------------------------------ run
def require(cfg: DictConfig, *keys: str) -> None:
    """Mandatory keys (``???``) left unset -> one-line :class:`ConfigError`."""
    for key in keys:
        if OmegaConf.is_missing(cfg, key):
            raise ConfigError(f"{key}: missing; give it on the command line as {key}=...")


def check_compatible(loaded: LoadedModel, band_names: Sequence[str], classes: Sequence[str],
                     where: str) -> None:
    """The data must have the checkpoint's bands, in order, and its classes."""
    if tuple(band_names) != tuple(loaded.band_names):
        raise ConfigError(f"{where} has bands {','.join(band_names)} but checkpoint "
                          f"{loaded.path} was trained on {','.join(loaded.band_names)}")
    generic = all(n == f"class_{i}" for i, n in enumerate(loaded.class_names))
    if len(classes) != loaded.num_classes or (not generic and
                                               tuple(classes) != loaded.class_names):
        raise ConfigError(f"{where} has classes {','.join(classes)} but checkpoint "
                          f"{loaded.path} predicts {','.join(loaded.class_names)}")


def run(cfg: DictConfig) -> dict[str, Any]:
    """Evaluate ``cfg.ckpt`` on every tile of ``cfg.split``; write and return the metrics."""
    if other_shard(cfg.get("shard")):
        return {}
    require(cfg, "ckpt")
    if cfg.blend not in BLENDS:
        raise ConfigError(f"blend={cfg.blend!r}: expected one of {list(BLENDS)}")
    output_dir = Path(cfg.paths.output_dir)
    device = resolve_device(cfg.device)
    loaded = load_segmenter(cfg.ckpt, map_location=device)

    from sssi.data.datasets import TileReader

    dm = hydra.utils.instantiate(cfg.data)
    if getattr(dm, "synthetic", None) and not (dm.root.is_dir() and any(dm.root.iterdir())):
        dm.prepare_data()  # the demo: generate the synthetic data; never touch existing data
    layout = dm.layout
    check_compatible(loaded, layout.band_names, layout.palette.classes,
                     f"data {dm.dataset} at {dm.root}")
    split = list(cfg.split) if isinstance(cfg.split, ListConfig) else cfg.split or "test"
    tiles = layout.tiles(split, labels=True)
    sizes = layout.validate(tiles)
    reader = TileReader(tiles, layout.palette, use_eval_labels=True)
    palette = layout.palette
    k = loaded.num_classes
    total = np.zeros((k, k), dtype=np.int64)
    per_tile: list[dict[str, Any]] = []
    start = time.perf_counter()
    channels_last, flip_tta = flag(cfg, "channels_last", True), flag(cfg, "flip_tta")
    model_fn, precision = fast_predictor(loaded, cfg.get("precision", "auto"), channels_last,
                                         device)
    bar = progress_bar(sum(window_count(sizes[tile.id], int(cfg.chunk), int(cfg.window),
                                        int(cfg.stride)) for tile in tiles),
                       "evaluate", flag(cfg, "progress", True))
    # the per-tile lines go through the bar (tqdm.write), not into the middle of it
    with logging_redirect_tqdm():
        for t, tile in enumerate(tiles):
            t0 = time.perf_counter()
            h, w = sizes[tile.id]
            cm = np.zeros((k, k), dtype=np.int64)
            pred_tile = np.zeros((h, w), np.uint8) if cfg.save_predictions else None
            for win, probs in predict_chunks(
                    model_fn, lambda window, t=t: reader.image(t, window), (h, w), k,
                    loaded.normalize, chunk=int(cfg.chunk), window=int(cfg.window),
                    stride=int(cfg.stride), batch_size=int(cfg.batch_size), blend=cfg.blend,
                    flip_tta=flip_tta, device=device, progress=bar.update):
                pred = probs.argmax(0).numpy().astype(np.uint8)
                cm += confusion_matrix(reader.label(t, win), pred, k)
                if pred_tile is not None:
                    r, c = int(win.row_off), int(win.col_off)
                    pred_tile[r: r + pred.shape[0], c: c + pred.shape[1]] = pred
            total += cm
            tile_scores = scores(cm, loaded.class_names)
            seconds = time.perf_counter() - t0
            per_tile.append({"tile": tile.id, "label": str(tile.eval_label),
                             "pixels": tile_scores["pixels"], "mIoU": tile_scores["mIoU"],
                             "OA": tile_scores["OA"], "seconds": round(seconds, 3)})
            log.info("tile %s (%d/%d, %dx%d): OA %.4f mIoU %.4f in %.1f s", tile.id, t + 1,
                     len(tiles), w, h, tile_scores["OA"], tile_scores["mIoU"], seconds)
            if pred_tile is not None:
                write_png(output_dir / "predictions" / f"{tile.id}.png",
                          palette.colorize(pred_tile)[:, :, ::-1])
        bar.close()
    reader.close()
    if reader.off_palette:
        log.warning("%d off-palette label pixels were ignored", reader.off_palette)

    metrics = evaluation_metrics(total, loaded.class_names)
    metrics.update({
        "confusion": total.tolist(), "class_names": list(loaded.class_names),
        "tiles": per_tile, "off_palette_pixels": int(reader.off_palette),
        "seconds": round(time.perf_counter() - start, 3),
        "settings": {"ckpt": str(loaded.path), "dataset": dm.dataset, "root": str(dm.root),
                     "split": split, "window": int(cfg.window), "stride": int(cfg.stride),
                     "blend": cfg.blend, "flip_tta": flip_tta, "device": str(device),
                     "precision": precision, "channels_last": channels_last},
    })
    atomic_write_text(output_dir / "metrics.json",
                      json.dumps(jsonable(metrics), indent=1, allow_nan=False))
    table = markdown_table(metrics)
    atomic_write_text(output_dir / "metrics.md", table)
    write_png(output_dir / "confusion.png", confusion_image(total, loaded.class_names))
    print(table)
    log.info("run folder: %s", output_dir)
    return metrics


def compose_config(overrides: list[str], output_dir: str | Path) -> DictConfig:
    """The configuration ``python -m sssi.evaluate OVERRIDES`` runs with, composed in this
    process (notebooks, benchmarks, tests), its output going to ``output_dir``."""
    return compose_entry("evaluate", overrides, output_dir)


@sweep_entry
@hydra.main(version_base="1.3", config_path=CONFIG_DIR, config_name="evaluate")
def main(cfg: DictConfig) -> float | None:
    metrics = run_or_exit(run, cfg)
    return metrics.get("mIoU")


if __name__ == "__main__":
    main()
