"""Segmentation scores from a confusion matrix: the one implementation used by training
(validation/test metrics) and by ``sssi.evaluate`` (full-tile evaluation).

The ISPRS literature reports two protocols: all six classes (the paper's code) and
the five classes without clutter (ground-truth clutter pixels ignored); both come
from the same matrix.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np

#: Class left out by the ISPRS five-class protocol (ground-truth pixels ignored).
PROTOCOL_EXCLUDED = ("clutter",)


def confusion_matrix(label: np.ndarray, pred: np.ndarray, num_classes: int) -> np.ndarray:
    """(K, K) int64 counts, rows = ground truth, columns = prediction; labels outside
    ``0..K-1`` (the ignore index) are skipped."""
    label = label.reshape(-1)
    pred = pred.reshape(-1)
    valid = label < num_classes
    idx = label[valid].astype(np.int64) * num_classes + pred[valid].astype(np.int64)
    return np.bincount(idx, minlength=num_classes**2).reshape(num_classes, num_classes)


def safe_ratio(num: np.ndarray, den: np.ndarray) -> np.ndarray:
    """num / den where den > 0, NaN elsewhere."""
    out = np.full(num.shape, np.nan)
    np.divide(num, den, out=out, where=den > 0)
    return out


def scores(cm: np.ndarray, class_names: Sequence[str], exclude_gt: Sequence[int] = ()
           ) -> dict[str, Any]:
    """IoU, F1, precision, recall per class and their means, plus OA, from ``cm``.

    Rows of ``exclude_gt`` (ground-truth classes) are dropped and those classes are not
    scored; predictions *of* them on other pixels stay errors (misses of the true
    class). Undefined values are NaN: a class with no pixels and no predictions (all
    scores), precision of a class never predicted (0 when it has pixels), recall of a
    class with no pixels. Means are over the classes whose IoU is defined.
    """
    cm = np.asarray(cm, dtype=np.float64)
    k = cm.shape[0]
    keep = np.array([i for i in range(k) if i not in set(exclude_gt)], dtype=int)
    rows = cm[keep]  # ground truth of the scored classes, all predictions
    tp = rows[np.arange(len(keep)), keep]
    support = rows.sum(1)
    predicted = rows[:, keep].sum(0)
    fp = predicted - tp
    fn = support - tp
    iou = safe_ratio(tp, tp + fp + fn)
    f1 = safe_ratio(2 * tp, 2 * tp + fp + fn)
    precision = safe_ratio(tp, predicted)
    precision[(predicted == 0) & (support > 0)] = 0.0
    recall = safe_ratio(tp, support)
    total = rows.sum()
    per_class = {
        class_names[c]: {"IoU": iou[j], "F1": f1[j], "precision": precision[j],
                         "recall": recall[j], "pixels": int(support[j]),
                         "predicted": int(predicted[j])}
        for j, c in enumerate(keep)}
    defined = ~np.isnan(iou)
    return {
        "mIoU": float(iou[defined].mean()) if defined.any() else math.nan,
        "mF1": float(f1[defined].mean()) if defined.any() else math.nan,
        "OA": float(tp.sum() / total) if total else math.nan,
        "per_class": per_class,
        "pixels": int(total),
    }


def evaluation_metrics(cm: np.ndarray, class_names: Sequence[str]) -> dict[str, Any]:
    """All-class scores, and the ``_5`` protocol scores when a clutter class exists."""
    out = scores(cm, class_names)
    excluded = [i for i, n in enumerate(class_names) if n in PROTOCOL_EXCLUDED]
    if excluded:
        proto = scores(cm, class_names, exclude_gt=excluded)
        n = len(class_names) - len(excluded)
        out.update({f"mIoU_{n}": proto["mIoU"], f"mF1_{n}": proto["mF1"],
                    f"OA_{n}": proto["OA"], f"per_class_{n}": proto["per_class"],
                    f"pixels_{n}": proto["pixels"]})
    return out


def jsonable(value: Any) -> Any:
    """NaN -> None (JSON has no NaN), numpy scalars -> Python, recursively."""
    if isinstance(value, dict):
        return {k: jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [jsonable(v) for v in value]
    if isinstance(value, (float, np.floating)):
        return None if math.isnan(value) else float(value)
    if isinstance(value, np.integer):
        return int(value)
    return value


def _pct(value: float | None) -> str:
    return "–" if value is None or math.isnan(value) else f"{100 * value:.2f}"


def markdown_table(metrics: dict[str, Any]) -> str:
    """Per-class scores and the summary rows as a markdown table (values in %)."""
    suffix = next((k[len("per_class"):] for k in metrics if k.startswith("per_class_")), "")
    proto = metrics.get(f"per_class{suffix}", {}) if suffix else {}
    head = "| class | IoU | F1 | precision | recall | pixels |"
    if suffix:
        head += f" IoU{suffix} | F1{suffix} |"
    lines = [head, "|" + "---|" * (head.count("|") - 1)]
    for name, s in metrics["per_class"].items():
        row = (f"| {name} | {_pct(s['IoU'])} | {_pct(s['F1'])} | {_pct(s['precision'])} | "
               f"{_pct(s['recall'])} | {s['pixels']} |")
        if suffix:
            p = proto.get(name)
            row += f" {_pct(p['IoU']) if p else '–'} | {_pct(p['F1']) if p else '–'} |"
        lines.append(row)
    lines.append("")
    lines.append("| summary | mIoU | mF1 | OA |")
    lines.append("|---|---|---|---|")
    lines.append(f"| all classes | {_pct(metrics['mIoU'])} | {_pct(metrics['mF1'])} | "
                 f"{_pct(metrics['OA'])} |")
    if suffix:
        lines.append(f"| without {'/'.join(PROTOCOL_EXCLUDED)} ({suffix[1:]} classes) | "
                     f"{_pct(metrics[f'mIoU{suffix}'])} | {_pct(metrics[f'mF1{suffix}'])} | "
                     f"{_pct(metrics[f'OA{suffix}'])} |")
    return "\n".join(lines) + "\n"
