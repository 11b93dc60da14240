"""Inference with a trained segmenter over rasters of any size.

Three layers, each usable alone:

- :func:`load_segmenter` rebuilds the model of a ``SegmentTask`` checkpoint together
  with what prediction needs besides weights: the per-band normalisation and band
  order the model was trained with (saved by the datamodule) and its class names.
- :func:`predict_probabilities` is pure tensors in, tensors out: overlapping windows
  over one image region, blended with a per-pixel weight map, so window borders
  (where the network lacks context) count less than window centres.
- :func:`predict_chunks` drives it over a raster larger than memory, reading chunk by
  chunk through a ``read(window)`` callable. Chunks use the *global* window grid (every
  window that touches a chunk is read with its halo), so the result is the same as
  one unchunked pass, whatever the chunk size.

Nothing here opens a file except :func:`load_segmenter`; rasterio is imported only for
its ``Window`` type, lazily, so the tensor code runs where rasterio is not installed.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from sssi.errors import ConfigError, first_line
from sssi.utils.grid import grid_offsets

log = logging.getLogger(__name__)

if TYPE_CHECKING:
    from rasterio.windows import Window

    from sssi.data.palettes import Palette

__all__ = [
    "BLENDS",
    "PRECISIONS",
    "LoadedModel",
    "blend_weights",
    "chunk_spans",
    "fast_predictor",
    "load_segmenter",
    "predict_chunks",
    "predict_probabilities",
    "predict_region",
    "resolve_device",
    "resolve_precision",
]

BLENDS = ("gaussian", "uniform")

ModelFn = Callable[[Tensor], Tensor]


# ------------------------------------------------------------------------------ loading
@dataclass
class LoadedModel:
    """A segmenter in eval mode and what its inputs and outputs mean."""

    model: nn.Module
    mean: list[float]
    std: list[float]
    band_names: tuple[str, ...]
    class_names: tuple[str, ...]
    num_classes: int
    palette_name: str | None
    path: Path
    input_scale: float = 1.0  # the resampling the model was trained with (data.input_scale)

    def predictor(self, precision: torch.dtype | None = None, channels_last: bool = False
                  ) -> ModelFn:
        """The model as the sliding window calls it: windows at the input's resolution in,
        float32 logits at that resolution out. A model trained on resampled imagery sees
        each window resampled by ``input_scale`` and its logits resized back (bilinear).
        ``precision``: an autocast dtype (``torch.bfloat16``; None: float32);
        ``channels_last``: the model and its inputs in NHWC memory format, which oneDNN's
        and cuDNN's convolutions run fastest (the model is converted in place)."""
        scale, model = self.input_scale, self.model
        if channels_last:
            model.to(memory_format=torch.channels_last)

        def run(x: Tensor) -> Tensor:
            size = x.shape[-2:]
            if scale != 1.0:
                small = (max(1, round(size[0] * scale)), max(1, round(size[1] * scale)))
                x = F.interpolate(x, size=small, mode="area" if scale < 1 else "bilinear")
            if channels_last:
                x = x.contiguous(memory_format=torch.channels_last)
            with torch.autocast(x.device.type, dtype=precision or torch.float32,
                                enabled=precision is not None):
                logits = model(x)
            logits = logits.float()
            if scale != 1.0:
                logits = F.interpolate(logits, size=size, mode="bilinear", align_corners=False)
            return logits.contiguous()

        return run

    @property
    def palette(self) -> Palette:
        """The label scheme to colour predictions with (generated colours if unknown)."""
        from sssi.data.palettes import PALETTES, Palette, distinct_colors

        if self.palette_name in PALETTES:
            return PALETTES[self.palette_name]
        return Palette(name=self.palette_name or "checkpoint", classes=self.class_names,
                       colors=distinct_colors(self.num_classes))

    def normalize(self, raw: np.ndarray) -> Tensor:
        """(H, W, C) raw pixel values -> (C, H, W) float32 tensor, standardised per band
        with the training run's statistics: ``(x - mean) * (1 / std)`` in float32, the
        training batches' own arithmetic (``BatchNormalizer``), so the values are equal.
        In numpy, on purpose: it runs in the reading thread, where torch's parallel
        kernels would compete with the network's threads for the same cores."""
        mean = np.asarray(self.mean, dtype=np.float32)
        inv = np.float32(1.0) / np.asarray(self.std, dtype=np.float32)
        image = (raw.astype(np.float32) - mean) * inv
        return torch.from_numpy(np.ascontiguousarray(image.transpose(2, 0, 1)))


def load_segmenter(ckpt_path: str | Path, map_location: str | torch.device = "cpu"
                   ) -> LoadedModel:
    """Rebuild the segmenter of a ``SegmentTask`` Lightning checkpoint, in eval mode.

    Raises :class:`DataError` for a missing or unreadable file and :class:`ConfigError`
    for a checkpoint of another kind (a pretext run, a plain state dict), naming it.
    """
    path = Path(ckpt_path).expanduser()
    from sssi.checkpoints import checkpoint_kind, data_state, read_lightning_file

    ckpt = read_lightning_file(path, str(path), "a Lightning .ckpt file of a segmentation "
                               "run")
    hp = ckpt.get("hyper_parameters") if isinstance(ckpt, dict) else None
    data = data_state(ckpt)
    if not isinstance(hp, dict) or "num_classes" not in hp or "backbone" not in hp \
            or data is None:
        kind = "a pretext (inpainting) checkpoint; fine-tune it first" \
            if checkpoint_kind(ckpt) == "pretext" else \
            "not a checkpoint of a segmentation run (python -m sssi.train)"
        raise ConfigError(f"{path}: {kind}")
    if not data.get("mean") or not data.get("std") or not data.get("band_names"):
        raise ConfigError(f"{path}: checkpoint has no normalisation statistics or band "
                          "names")

    from sssi.tasks.segment import SegmentTask

    # the weights come from the checkpoint: never reload an ImageNet file (maybe long gone)
    backbone = {**hp["backbone"], "weights": None}
    task = SegmentTask.load_from_checkpoint(path, map_location=map_location, backbone=backbone)
    model = task.model.eval().requires_grad_(False)
    num_classes = int(hp["num_classes"])
    class_names = tuple(hp.get("class_names") or [f"class_{i}" for i in range(num_classes)])
    return LoadedModel(
        model=model, mean=[float(m) for m in data["mean"]],
        std=[float(s) for s in data["std"]], band_names=tuple(data["band_names"]),
        class_names=class_names, num_classes=num_classes,
        palette_name=_palette_name(class_names, data.get("dataset")), path=path,
        input_scale=float(data.get("input_scale", 1.0)))


def _palette_name(class_names: Sequence[str], dataset: str | None) -> str | None:
    """The known palette whose classes are the checkpoint's (names are what matter)."""
    from sssi.data.palettes import PALETTES

    for name, palette in PALETTES.items():
        if tuple(palette.classes) == tuple(class_names):
            return name
    return dataset if dataset in PALETTES else None


def resolve_device(name: str | None) -> torch.device:
    """``auto`` (or None) -> the first CUDA device when there is one, else the CPU."""
    if name in (None, "", "auto"):
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except RuntimeError as exc:
        raise ConfigError(f"device={name!r}: {first_line(exc)}") from exc
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError(f"device={name!r}: CUDA is not available here (use device=cpu)")
    return device


PRECISIONS = ("auto", "fp32", "bf16")


def resolve_precision(name: str | None, device: torch.device) -> tuple[torch.dtype | None, str]:
    """``precision=auto|fp32|bf16`` -> (autocast dtype or None for float32, why).

    ``auto`` picks bf16 on a GPU that supports it and on a CPU with bf16 matrix units
    (AMX: about 2.4x the fp32 network there, issue 31), float32 elsewhere: a CPU
    without them runs bf16 slower than float32."""
    from sssi.scaling import auto_precision

    if name in (None, "", "auto"):
        chosen, why = auto_precision("gpu" if device.type == "cuda" else "cpu")
        return (torch.bfloat16 if chosen.startswith("bf16") else None), f"auto: {why}"
    if name == "fp32":
        return None, "asked for"
    if name == "bf16":
        if device.type == "cuda" and not torch.cuda.is_bf16_supported():
            raise ConfigError(f"precision=bf16: {torch.cuda.get_device_name(device)} does "
                              "not support bf16 (use precision=fp32)")
        return torch.bfloat16, "asked for"
    raise ConfigError(f"precision={name!r}: expected one of {list(PRECISIONS)}")


def fast_predictor(loaded: LoadedModel, precision: str | None, channels_last: bool,
                   device: torch.device, label: str = "") -> tuple[ModelFn, str]:
    """``loaded``'s predictor at ``precision`` (:func:`resolve_precision`) and memory
    format, the choice logged once (prefixed with ``label``: a file's name); returns it
    and the precision's name (``bf16`` or ``fp32``) for the run's records."""
    dtype, why = resolve_precision(precision, device)
    name = "bf16" if dtype is not None else "fp32"
    log.info("%sprecision %s (%s)%s", f"{label}: " if label else "", name, why,
             ", channels_last" if channels_last else "")
    return loaded.predictor(dtype, channels_last), name


# ------------------------------------------------------------------- sliding window
def blend_weights(window: int, blend: str = "gaussian", sigma_scale: float = 0.25
                  ) -> Tensor:
    """(window, window) float32 per-pixel weights of one window's prediction.

    ``gaussian``: centred, sigma = ``sigma_scale * window``, floored at 1e-3 of the
    peak so no pixel is ever weightless; ``uniform``: all ones (plain averaging).
    """
    if blend == "uniform":
        return torch.ones(window, window)
    if blend != "gaussian":
        raise ConfigError(f"blend={blend!r}: expected one of {list(BLENDS)}")
    x = torch.arange(window, dtype=torch.float64) - (window - 1) / 2
    g = torch.exp(-(x**2) / (2 * (sigma_scale * window) ** 2))
    w = torch.outer(g, g)
    return (w / w.max()).clamp_min(1e-3).float()


def _check_grid(window: int, stride: int, batch_size: int) -> None:
    if window < 1 or not 1 <= stride <= window:
        raise ConfigError(f"window={window} stride={stride}: need 1 <= stride <= window")
    if batch_size < 1:
        raise ConfigError(f"batch_size={batch_size}: must be at least 1")


def _pad_to(image: Tensor, height: int, width: int) -> Tensor:
    """Pad bottom/right to at least (height, width) by reflection (edge copy when the
    image is too small to reflect)."""
    while image.shape[-2] < height or image.shape[-1] < width:
        h, w = image.shape[-2:]
        ph = min(height - h, h - 1) if h < height else 0
        pw = min(width - w, w - 1) if w < width else 0
        if ph == 0 and pw == 0:  # a 1-px side cannot be reflected
            return F.pad(image[None], (0, max(0, width - w), 0, max(0, height - h)),
                         mode="replicate")[0]
        image = F.pad(image[None], (0, pw, 0, ph), mode="reflect")[0]
    return image


@torch.inference_mode()
def _softmax_tta(model_fn: ModelFn, batch: Tensor, flip_tta: bool) -> Tensor:
    """Class probabilities of a batch, averaged over the flip group when asked."""
    if not flip_tta:
        return model_fn(batch).float().softmax(1)
    out = None
    for dims in ((), (-1,), (-2,), (-2, -1)):  # identity, h-flip, v-flip, both
        x = batch.flip(dims) if dims else batch
        p = model_fn(x).float().softmax(1)
        p = p.flip(dims) if dims else p
        out = p if out is None else out + p
    assert out is not None
    return out / 4


def _accumulate(model_fn: ModelFn, image: Tensor, rows: Sequence[int], cols: Sequence[int],
                window: int, weight: Tensor, num_classes: int, batch_size: int,
                flip_tta: bool, device: torch.device,
                progress: Callable[[int], object] | None = None) -> tuple[Tensor, Tensor]:
    """Weighted sums of window probabilities over ``image`` (C, H, W) and of weights;
    ``progress(n)`` is told each batch of ``n`` windows done."""
    _, h, w = image.shape
    acc = torch.zeros(num_classes, h, w, dtype=torch.float32, device=device)
    wsum = torch.zeros(h, w, dtype=torch.float32, device=device)
    weight = weight.to(device)
    spots = [(r, c) for r in rows for c in cols]
    for i in range(0, len(spots), batch_size):
        part = spots[i: i + batch_size]
        batch = torch.stack([image[:, r: r + window, c: c + window] for r, c in part])
        probs = _softmax_tta(model_fn, batch.to(device, torch.float32), flip_tta)
        if probs.shape[1] != num_classes or probs.shape[-2:] != batch.shape[-2:]:
            raise ConfigError(f"model output {tuple(probs.shape)} does not match "
                              f"{num_classes} classes x {window}x{window} windows")
        for p, (r, c) in zip(probs, part, strict=True):
            acc[:, r: r + window, c: c + window] += p * weight
            wsum[r: r + window, c: c + window] += weight
        if progress is not None:
            progress(len(part))
    return acc, wsum


def predict_probabilities(model_fn: ModelFn, image: Tensor, num_classes: int,
                          window: int = 512, stride: int = 384, batch_size: int = 4,
                          blend: str = "gaussian", flip_tta: bool = False,
                          device: str | torch.device | None = None) -> Tensor:
    """(K, H, W) float32 class probabilities of a normalised (C, H, W) image.

    Windows of ``window`` px every ``stride`` px (the last snapped to the edge) cover
    every pixel; an image smaller than the window is padded by reflection. Each
    window's softmax is weighted by :func:`blend_weights` and the weighted average is
    returned, on the device of ``image``. ``model_fn`` maps (B, C, h, w) to logits
    (B, K, h, w); ``device`` is where it runs (default: the image's device).
    """
    _check_grid(window, stride, batch_size)
    if image.ndim != 3:
        raise ValueError(f"image must be (C, H, W), got shape {tuple(image.shape)}")
    dev = torch.device(device) if device is not None else image.device
    _, h, w = image.shape
    padded = _pad_to(image, window, window)
    hp, wp = padded.shape[-2:]
    acc, wsum = _accumulate(model_fn, padded, grid_offsets(hp, window, stride),
                            grid_offsets(wp, window, stride), window,
                            blend_weights(window, blend), num_classes, batch_size, flip_tta,
                            dev)
    return (acc[:, :h, :w] / wsum[:h, :w]).to(image.device)


# ------------------------------------------------------------------- chunked driver
def chunk_spans(length: int, chunk: int, window: int, stride: int
                ) -> list[tuple[int, int, list[int]]]:
    """One axis cut into chunk cores of whole strides: ``(start, stop, offsets)`` per
    core, where ``offsets`` are the global grid's windows that *start* in it (about
    ``chunk // stride`` of them, at least one). The cores tile ``[0, length)``; each
    window belongs to one core, so it is predicted once whatever ``chunk`` is, and a
    core's windows reach at most ``window - stride`` px into the next core."""
    grid = grid_offsets(max(length, window), window, stride)
    per = max(1, chunk // stride)
    groups = [grid[i: i + per] for i in range(0, len(grid), per)]
    if len(groups) > 1 and len(groups[-1]) == 1 and grid[-1] - grid[-2] < stride:
        # the edge-snapped last window alone would make the previous chunk's windows
        # reach far into its core (and the kept strip taller): it joins that chunk
        last = groups.pop()
        groups[-1] = groups[-1] + last
    starts = [g[0] for g in groups] + [length]
    return [(starts[k], starts[k + 1], g) for k, g in enumerate(groups)]


def progress_bar(total: int, desc: str, enabled: bool = True) -> Any:
    """A tqdm bar over ``total`` windows with rate and ETA on stderr (``update(n)``);
    a silent one when not ``enabled`` (``progress=false``)."""
    from tqdm.auto import tqdm

    return tqdm(total=total, desc=desc, unit="window", disable=not enabled,
                dynamic_ncols=True, mininterval=0.5)


def window_count(size: tuple[int, int], chunk: int = 2048, window: int = 512,
                 stride: int = 384) -> int:
    """How many windows :func:`predict_chunks` predicts for a raster of ``size``: each
    window of the global grid once (``chunk`` does not change it)."""
    height, width = size
    return (len(grid_offsets(max(height, window), window, stride))
            * len(grid_offsets(max(width, window), window, stride)))


def predict_chunks(model_fn: ModelFn, read: Callable[[Window], np.ndarray],
                   size: tuple[int, int], num_classes: int,
                   normalize: Callable[[np.ndarray], Tensor], chunk: int = 2048,
                   window: int = 512, stride: int = 384, batch_size: int = 4,
                   blend: str = "gaussian", flip_tta: bool = False,
                   device: str | torch.device | None = None,
                   progress: Callable[[int], object] | None = None,
                   read_ahead_chunks: int = 1) -> Iterator[tuple[Window, Tensor]]:
    """Probabilities of a (height, width) raster, one chunk core at a time.

    Yields ``(core_window, probs)`` with ``probs`` (K, h, w) float32 on the CPU, cores in
    row-major order tiling the raster (:func:`chunk_spans`: ``chunk`` rounded down to
    whole strides). Every window of the raster's global grid is predicted exactly once,
    by the chunk its top-left corner lies in; the part of its blended probabilities
    that falls in later cores (at most ``window - stride`` px past a regular core) is
    kept until they are predicted, so the values equal one unchunked
    :func:`predict_probabilities` pass. ``read(window)`` returns the raw (h, w, C) pixels
    of a rasterio ``Window``; ``normalize`` turns them into a (C, h, w) float tensor;
    both run in a thread ``read_ahead_chunks`` chunks ahead of the network (0: inline).
    Peak memory is about (chunk + window)^2 x (K + C) floats, plus the kept overlap: a
    strip ``window - stride`` px high across the raster's width, x (K + 1) floats.
    ``progress(n)`` is told every batch of ``n`` windows predicted (a progress bar over
    :func:`window_count` windows).
    """
    from rasterio.windows import Window

    from sssi.utils.background import read_ahead

    _check_grid(window, stride, batch_size)
    if chunk < 1:
        raise ConfigError(f"chunk={chunk}: must be at least 1 px")
    height, width = size
    dev = torch.device(device) if device is not None else torch.device("cpu")
    weight = blend_weights(window, blend)
    rows = chunk_spans(height, chunk, window, stride)
    cols = chunk_spans(width, chunk, window, stride)
    order = [(i, j) for i in range(len(rows)) for j in range(len(cols))]

    def load(i: int, j: int) -> Tensor:
        (top, _, row_offsets), (left, _, col_offsets) = rows[i], cols[j]
        bottom, right = row_offsets[-1] + window, col_offsets[-1] + window  # may pass an edge
        raw = read(Window(left, top, min(right, width) - left, min(bottom, height) - top))
        return _pad_to(normalize(raw), bottom - top, right - left)

    images: Iterator[Tensor] = (load(i, j) for i, j in order)
    if read_ahead_chunks > 0:
        images = read_ahead(images, read_ahead_chunks)
    # later cores' shares of windows already predicted: core -> [(row, col, (K+1, h, w))]
    kept: dict[tuple[int, int], list[tuple[int, int, Tensor]]] = {}
    for (i, j), image in zip(order, images, strict=True):
        (top, r1, row_offsets), (left, c1, col_offsets) = rows[i], cols[j]
        with torch.inference_mode():  # not around the yield: the caller's code is its own
            acc, wsum = _accumulate(model_fn, image, [s - top for s in row_offsets],
                                    [s - left for s in col_offsets], window, weight,
                                    num_classes, batch_size, flip_tta, dev, progress)
            probs = _settle(acc, wsum, (i, j), (top, left), (r1, c1), rows, cols, kept)
        yield Window(left, top, c1 - left, r1 - top), probs.cpu()


def _settle(acc: Tensor, wsum: Tensor, at: tuple[int, int], origin: tuple[int, int],
            stop: tuple[int, int], rows: list, cols: list,
            kept: dict[tuple[int, int], list[tuple[int, int, Tensor]]]) -> Tensor:
    """Finish chunk ``at`` (its sums ``acc``, ``wsum`` start at raster pixel ``origin``):
    add the shares earlier chunks kept for its core, keep the shares of later cores
    that its windows reach, and return its core's probabilities (core ends at ``stop``)."""
    i, j = at
    top, left = origin
    for r, c, share in kept.pop(at, []):
        h, w = share.shape[-2:]
        acc[:, r - top: r - top + h, c - left: c - left + w] += share[:-1]
        wsum[r - top: r - top + h, c - left: c - left + w] += share[-1]
    bottom, right = top + acc.shape[1], left + acc.shape[2]
    for a in range(i, len(rows)):
        r_lo, r_hi = rows[a][0], min(rows[a][1], bottom)
        if r_lo >= r_hi:
            break
        for b in range(j, len(cols)):
            c_lo, c_hi = cols[b][0], min(cols[b][1], right)
            if c_lo >= c_hi:
                break
            if (a, b) == at:
                continue
            part = (slice(r_lo - top, r_hi - top), slice(c_lo - left, c_hi - left))
            kept.setdefault((a, b), []).append(
                (r_lo, c_lo, torch.cat([acc[:, part[0], part[1]], wsum[None, part[0], part[1]]])))
    core = (slice(0, stop[0] - top), slice(0, stop[1] - left))
    return acc[:, core[0], core[1]] / wsum[core[0], core[1]]


def predict_region(model_fn: ModelFn, read: Callable[[Window], np.ndarray],
                   size: tuple[int, int], num_classes: int,
                   normalize: Callable[[np.ndarray], Tensor], **kwargs: Any) -> Tensor:
    """All of :func:`predict_chunks` assembled into one (K, H, W) tensor (small rasters)."""
    height, width = size
    out = torch.empty(num_classes, height, width)
    for win, probs in predict_chunks(model_fn, read, size, num_classes, normalize, **kwargs):
        r, c = int(win.row_off), int(win.col_off)
        out[:, r: r + probs.shape[1], c: c + probs.shape[2]] = probs
    return out
