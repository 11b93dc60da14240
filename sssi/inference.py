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

if TYPE_CHECKING:
    from rasterio.windows import Window

    from sssi.data.palettes import Palette

__all__ = [
    "BLENDS",
    "LoadedModel",
    "blend_weights",
    "load_segmenter",
    "predict_chunks",
    "predict_probabilities",
    "predict_region",
    "resolve_device",
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

    def predictor(self) -> ModelFn:
        """The model as the sliding window calls it: windows at the input's resolution in,
        logits at that resolution out. A model trained on resampled imagery sees each
        window resampled by ``input_scale`` and its logits resized back (bilinear)."""
        scale = self.input_scale
        if scale == 1.0:
            return self.model

        def run(x: Tensor) -> Tensor:
            size = x.shape[-2:]
            small = (max(1, round(size[0] * scale)), max(1, round(size[1] * scale)))
            mode = "area" if scale < 1 else "bilinear"
            logits = self.model(F.interpolate(x, size=small, mode=mode))
            return F.interpolate(logits, size=size, mode="bilinear", align_corners=False)

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
        with the training run's statistics (the training batches' own normaliser)."""
        from sssi.data.augment import BatchNormalizer

        image = torch.from_numpy(np.ascontiguousarray(raw.transpose(2, 0, 1)))
        return BatchNormalizer(self.mean, self.std)(image)


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
def _chunk_grid(size: tuple[int, int], chunk: int, window: int, stride: int
                ) -> Iterator[tuple[tuple[int, int, list[int]], tuple[int, int, list[int]]]]:
    """Per chunk core, row-major: ``(r0, r1, window rows)`` and ``(c0, c1, window
    cols)``: the core's extent and the offsets of the global grid's windows touching it."""
    height, width = size
    grid_r = grid_offsets(max(height, window), window, stride)
    grid_c = grid_offsets(max(width, window), window, stride)
    for r0 in range(0, height, chunk):
        r1 = min(r0 + chunk, height)
        rows = [s for s in grid_r if s < r1 and s + window > r0]
        for c0 in range(0, width, chunk):
            c1 = min(c0 + chunk, width)
            yield (r0, r1, rows), (c0, c1, [s for s in grid_c if s < c1 and s + window > c0])


def progress_bar(total: int, desc: str, enabled: bool = True) -> Any:
    """A tqdm bar over ``total`` windows with rate and ETA on stderr (``update(n)``);
    a silent one when not ``enabled`` (``progress=false``)."""
    from tqdm.auto import tqdm

    return tqdm(total=total, desc=desc, unit="window", disable=not enabled,
                dynamic_ncols=True, mininterval=0.5)


def window_count(size: tuple[int, int], chunk: int = 2048, window: int = 512,
                 stride: int = 384) -> int:
    """How many windows :func:`predict_chunks` predicts for a raster of ``size`` (a
    window touching several chunk cores counts once per core)."""
    return sum(len(rows) * len(cols)
               for (_, _, rows), (_, _, cols) in _chunk_grid(size, chunk, window, stride))


def predict_chunks(model_fn: ModelFn, read: Callable[[Window], np.ndarray],
                   size: tuple[int, int], num_classes: int,
                   normalize: Callable[[np.ndarray], Tensor], chunk: int = 2048,
                   window: int = 512, stride: int = 384, batch_size: int = 4,
                   blend: str = "gaussian", flip_tta: bool = False,
                   device: str | torch.device | None = None,
                   progress: Callable[[int], object] | None = None
                   ) -> Iterator[tuple[Window, Tensor]]:
    """Probabilities of a (height, width) raster, one ``chunk`` x ``chunk`` core at a time.

    Yields ``(core_window, probs)`` with ``probs`` (K, h, w) float32 on the CPU, cores in
    row-major order tiling the raster. For each core, every window of the raster's
    global grid that touches it is predicted, so the halo read around a core is what
    those windows need (under ``window`` px a side; it replaces a fixed ``window -
    stride`` halo) and the values equal one unchunked :func:`predict_probabilities`
    pass, whatever ``chunk`` is. ``read(window)`` returns the raw
    (h, w, C) pixels of a rasterio ``Window``; ``normalize`` turns them into a
    (C, h, w) float tensor. Peak memory is about (chunk + 2 window)^2 x (K + C) floats.
    ``progress(n)`` is told every batch of ``n`` windows predicted (a progress bar over
    :func:`window_count` windows).
    """
    from rasterio.windows import Window

    _check_grid(window, stride, batch_size)
    if chunk < 1:
        raise ConfigError(f"chunk={chunk}: must be at least 1 px")
    height, width = size
    dev = torch.device(device) if device is not None else torch.device("cpu")
    weight = blend_weights(window, blend)
    for (r0, r1, rows), (c0, c1, cols) in _chunk_grid(size, chunk, window, stride):
        top, left = rows[0], cols[0]
        bottom, right = rows[-1] + window, cols[-1] + window  # may pass a small edge
        raw = read(Window(left, top, min(right, width) - left, min(bottom, height) - top))
        image = _pad_to(normalize(raw), bottom - top, right - left)
        acc, wsum = _accumulate(model_fn, image, [s - top for s in rows],
                                [s - left for s in cols], window, weight, num_classes,
                                batch_size, flip_tta, dev, progress)
        core = (slice(r0 - top, r1 - top), slice(c0 - left, c1 - left))
        probs = acc[:, core[0], core[1]] / wsum[core[0], core[1]]
        yield Window(c0, r0, c1 - c0, r1 - r0), probs.cpu()


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
