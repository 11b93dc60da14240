"""A frozen-encoder probe fitted to convergence: what an encoder's features already know.

The SGD probe of ``+experiment=dubai_probe`` trains a linear head for a fixed number of
steps with the encoder's pretext BatchNorm statistics, so a flat curve can mean an
unfinished fit or statistics from images with holes. This probe removes both doubts:

1. the encoder's BatchNorm running statistics are re-estimated (a cumulative average,
   no gradient) on clean, unmasked crops of the fine-tuning data, then frozen;
2. features of the chosen layers (``layer3``, ``layer4``: ResNet stages) are sampled at
   labelled pixels of those crops (bilinear at each pixel centre);
3. a multinomial logistic regression on the standardised features is fitted by
   L-BFGS with a small L2 penalty until the gradient vanishes (the loss is convex, so
   this is the optimum, not a stopping point);
4. on the validation windows the layer's logits are upsampled to the labels (as a
   linear head on that layer would be) and scored like ``val/mIoU`` of training;
   with ``probe.test=true`` also on the test split's windows (the reported table).

    python -m sssi.probe +experiment=dubai_finetune data.root=DIR task.init=CKPT
    python -m sssi.probe +experiment=dubai_finetune data.root=DIR task.init=null seed=1

It reads the training command's config (``conf/probe.yaml`` includes ``train.yaml``), so
the labelled regions (``data.label_fraction``, ``data.split_seed``), the band
statistics and the backbone are those of fine-tuning; ``task.init=null`` probes random
weights drawn with ``seed``. Scores go to ``RUN/probe.json``.
"""

from __future__ import annotations

import json
import logging
import re
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import hydra
import lightning as L
import numpy as np
import torch
import torch.nn.functional as F
from omegaconf import DictConfig
from torch import Tensor, nn

from sssi.checkpoints import init_encoder
from sssi.cli import CONFIG_DIR, run_or_exit
from sssi.data.palettes import IGNORE_INDEX
from sssi.errors import ConfigError
from sssi.inference import resolve_precision
from sssi.metrics import confusion_matrix, evaluation_metrics
from sssi.models.batchnorm import reestimate_batchnorm
from sssi.utils.io import atomic_write_text

log = logging.getLogger(__name__)


def layer_index(name: str | int, depth: int) -> int:
    """Index into an encoder's feature list: ``layerN`` (ResNet stage N, the stem being
    0) or an integer (negative counts from the deepest)."""
    if isinstance(name, int) and not isinstance(name, bool):
        index = name
    else:
        match = re.fullmatch(r"layer([0-9]+)", str(name))
        if not match:
            raise ConfigError(f"probe.layers: {name!r}: expected layerN or an index")
        index = int(match.group(1))
    if not -depth <= index < depth:
        raise ConfigError(f"probe.layers: {name!r} is outside the encoder's {depth} "
                          "feature maps")
    return index % depth


def sample_labelled(features: Sequence[Tensor], label: Tensor, per_crop: int,
                    generator: torch.Generator) -> tuple[list[Tensor], Tensor, Tensor]:
    """Up to ``per_crop`` labelled pixels per crop: each feature map bilinearly sampled at
    those pixels' centres (``[N, C]`` per map), their classes (``[N]``) and the index of
    the crop in the batch each came from (``[N]``)."""
    b, h, w = label.shape
    xs: list[list[Tensor]] = [[] for _ in features]
    ys, crops = [], []
    for i in range(b):
        valid = torch.nonzero(label[i] != IGNORE_INDEX)
        if valid.numel() == 0:
            continue
        pick = valid[torch.randperm(len(valid), generator=generator)[:per_crop]]
        rows, cols = pick[:, 0].float(), pick[:, 1].float()
        # pixel centres in grid_sample's [-1, 1] coordinates (align_corners=False)
        grid = torch.stack([(2 * cols + 1) / w - 1, (2 * rows + 1) / h - 1], dim=-1)
        grid = grid.view(1, 1, -1, 2)
        for j, f in enumerate(features):
            sampled = F.grid_sample(f[i : i + 1].float(), grid, mode="bilinear",
                                    align_corners=False)
            xs[j].append(sampled[0, :, 0].T)
        ys.append(label[i][pick[:, 0], pick[:, 1]])
        crops.append(torch.full((len(pick),), i, dtype=torch.long))
    if not ys:
        raise ConfigError("probe: the training crops hold no labelled pixel")
    return [torch.cat(x) for x in xs], torch.cat(ys), torch.cat(crops)


@dataclass
class LinearProbe:
    """``logits = ((x - mean) / std) @ weight.T + bias`` on one layer's features."""

    mean: Tensor
    std: Tensor
    weight: Tensor
    bias: Tensor
    loss: float
    iterations: int
    grad_norm: float
    weight_decay: float

    def predict(self, x: Tensor) -> Tensor:
        """Logits ``[N, K]`` of sampled features ``[N, C]``."""
        return ((x.float() - self.mean) / self.std) @ self.weight.T + self.bias

    def logits(self, feature: Tensor) -> Tensor:
        """Per-pixel logits ``[B, K, h, w]`` of a feature map ``[B, C, h, w]``."""
        return self.predict(feature.movedim(1, -1)).movedim(-1, 1)


def fit_logistic(x: Tensor, y: Tensor, num_classes: int, weight_decay: float = 1e-3,
                 max_iter: int = 500) -> LinearProbe:
    """Multinomial logistic regression by L-BFGS: mean cross-entropy plus
    ``weight_decay / 2 * |W|^2``, on standardised features. Convex, so L-BFGS reaches the
    optimum; ``grad_norm`` says how closely."""
    x = x.float()
    mean = x.mean(0)
    std = x.std(0).clamp_min(1e-6)
    z = (x - mean) / std
    weight = torch.zeros(num_classes, x.shape[1], requires_grad=True)
    bias = torch.zeros(num_classes, requires_grad=True)
    optimizer = torch.optim.LBFGS([weight, bias], lr=1.0, max_iter=max_iter,
                                  tolerance_grad=1e-6, tolerance_change=1e-10,
                                  history_size=20, line_search_fn="strong_wolfe")

    def objective() -> Tensor:
        optimizer.zero_grad()
        loss = F.cross_entropy(z @ weight.T + bias, y) + 0.5 * weight_decay * weight.pow(2).sum()
        loss.backward()
        return loss

    optimizer.step(objective)
    loss = float(objective().detach())
    grad = torch.cat([weight.grad.flatten(), bias.grad.flatten()]).norm().item()
    iterations = int(optimizer.state[weight].get("n_iter", 0))
    return LinearProbe(mean, std, weight.detach(), bias.detach(), loss, iterations, grad,
                       weight_decay)


def choose_weight_decay(x: Tensor, y: Tensor, groups: Tensor, num_classes: int,
                        candidates: Sequence[float], max_iter: int = 500,
                        held_out: int = 5) -> tuple[float, dict[float, float]]:
    """The L2 penalty with the lowest held-out cross-entropy, every ``held_out``-th crop
    (``groups``: each pixel's crop) held out: the labelled data chooses it, not the
    validation tile. Returns the choice and each candidate's held-out loss."""
    out = groups % held_out == held_out - 1
    if len(candidates) == 1 or out.all() or not out.any():
        return float(candidates[0]), {}
    scores = {}
    for wd in candidates:
        probe = fit_logistic(x[~out], y[~out], num_classes, float(wd), max_iter)
        scores[float(wd)] = float(F.cross_entropy(probe.predict(x[out]), y[out]))
    return min(scores, key=scores.get), scores


@torch.no_grad()
def score_probes(encoder: Callable[[Tensor], list[Tensor]], probes: dict[str, LinearProbe],
                 layers: dict[str, int], batches: Iterable[dict], num_classes: int
                 ) -> tuple[dict[str, np.ndarray], dict[str, list[float]]]:
    """Each probe's confusion matrix and summed cross-entropy [sum, pixels] over
    ``batches``: its layer's logits upsampled to the labels, as a linear head on that
    layer would be."""
    k = num_classes
    confusion = {n: np.zeros((k, k), dtype=np.int64) for n in probes}
    losses = {n: [0.0, 0] for n in probes}
    for batch in batches:
        feats = encoder(batch["image"])
        label = batch["label"]
        valid = label != IGNORE_INDEX
        for n, i in layers.items():
            logits = F.interpolate(probes[n].logits(feats[i]), size=label.shape[-2:],
                                   mode="bilinear", align_corners=False)
            losses[n][0] += float(F.cross_entropy(logits, label, ignore_index=IGNORE_INDEX,
                                                  reduction="sum"))
            losses[n][1] += int(valid.sum())
            confusion[n] += confusion_matrix(label.numpy(), logits.argmax(1).numpy(), k)
    return confusion, losses


def _autocast(encoder: nn.Module, dtype: torch.dtype | None):
    """``encoder`` as a function whose forward runs under ``dtype`` autocast (None:
    as it is) and returns float32 feature maps."""
    if dtype is None:
        return encoder

    def run(x: Tensor) -> list[Tensor]:
        with torch.autocast(x.device.type, dtype=dtype):
            return [f.float() for f in encoder(x)]

    return run


def _images(loader: Iterable[dict], datamodule: Any) -> Iterable[dict]:
    """The loader's batches, augmented and standardised as training sees them."""
    for batch in loader:
        yield datamodule.on_after_batch_transfer(batch, 0)


def run(cfg: DictConfig) -> dict[str, Any]:
    """Fit and score the probe of ``cfg.probe`` on ``cfg.task.init``'s encoder."""
    options = cfg.probe
    out_dir = Path(cfg.paths.output_dir)
    L.seed_everything(int(cfg.seed), workers=True)
    datamodule = hydra.utils.instantiate(cfg.data, samples_per_epoch=int(options.crops))
    datamodule.prepare_data()
    datamodule.setup("fit")
    encoder = hydra.utils.instantiate(cfg.backbone)
    init = cfg.task.get("init")
    source = init_encoder(encoder, init) if init else "random"
    depth = len(encoder.out_channels)
    names = [str(n) for n in options.layers]
    indices = [layer_index(n, depth) for n in names]
    bn_images = 0
    if options.batchnorm == "reestimate":
        bn_images = reestimate_batchnorm(
            encoder, (b["image"] for b in _images(datamodule.train_dataloader(), datamodule)))
    elif options.batchnorm != "pretrained":
        raise ConfigError(f"probe.batchnorm={options.batchnorm!r}: expected reestimate or "
                          "pretrained")
    encoder.eval()
    dtype, why = resolve_precision(options.get("precision", "auto"), torch.device("cpu"))
    log.info("probe features in %s (%s)", "bf16" if dtype else "fp32", why)
    encoder = _autocast(encoder, dtype)
    generator = torch.Generator().manual_seed(int(cfg.seed))
    xs: list[list[Tensor]] = [[] for _ in names]
    ys, groups, offset = [], [], 0
    with torch.no_grad():
        for batch in _images(datamodule.train_dataloader(), datamodule):
            feats = encoder(batch["image"])
            x, y, crop = sample_labelled([feats[i] for i in indices], batch["label"],
                                         int(options.pixels_per_crop), generator)
            for j, part in enumerate(x):
                xs[j].append(part)
            ys.append(y)
            groups.append(crop + offset)
            offset += batch["label"].shape[0]
    y, group = torch.cat(ys), torch.cat(groups)
    k = int(datamodule.num_classes)
    decays = options.weight_decay
    decays = [float(d) for d in (decays if isinstance(decays, Sequence) and
                                 not isinstance(decays, str) else [decays])]
    probes, held_out = {}, {}
    for n, parts in zip(names, xs, strict=True):
        x = torch.cat(parts)
        wd, held_out[n] = choose_weight_decay(x, y, group, k, decays, int(options.max_iter))
        probes[n] = fit_logistic(x, y, k, wd, int(options.max_iter))
    confusion, losses = score_probes(encoder, probes, dict(zip(names, indices, strict=True)),
                                     _images(datamodule.val_dataloader(), datamodule), k)
    class_names = [str(c) for c in datamodule.layout.palette.classes]
    result: dict[str, Any] = {
        "init": str(init) if init else None, "init_source": source, "seed": int(cfg.seed),
        "label_fraction": float(cfg.data.label_fraction),
        "split_seed": int(cfg.data.split_seed), "batchnorm": str(options.batchnorm),
        "batchnorm_images": bn_images, "train_pixels": len(y), "layers": {}}
    for n in names:
        metrics = evaluation_metrics(confusion[n], class_names)
        p = probes[n]
        result["layers"][n] = {
            "mIoU": metrics["mIoU"], "OA": metrics["OA"],
            "val_loss": losses[n][0] / max(losses[n][1], 1), "train_loss": p.loss,
            "iterations": p.iterations, "grad_norm": p.grad_norm,
            "weight_decay": p.weight_decay, "held_out_loss": held_out[n],
            "per_class_IoU": {c: s["IoU"] for c, s in metrics["per_class"].items()}}
        log.info("probe %s: val mIoU %.4f (weight decay %g; train loss %.4f after %d L-BFGS "
                 "iterations, |grad| %.2g)", n, metrics["mIoU"], p.weight_decay, p.loss,
                 p.iterations, p.grad_norm)
    if options.get("test", False):
        if datamodule.test_split is None:
            raise ConfigError("probe.test=true: data.test_split is null")
        datamodule.setup("test")
        tested, _ = score_probes(encoder, probes, dict(zip(names, indices, strict=True)),
                                 _images(datamodule.test_dataloader(), datamodule), k)
        for n in names:
            metrics = evaluation_metrics(tested[n], class_names)
            result["layers"][n]["test"] = {
                "mIoU": metrics["mIoU"], "OA": metrics["OA"],
                "per_class_IoU": {c: s["IoU"] for c, s in metrics["per_class"].items()}}
            log.info("probe %s: test mIoU %.4f", n, metrics["mIoU"])
    out_dir.mkdir(parents=True, exist_ok=True)
    atomic_write_text(out_dir / "probe.json",
                      json.dumps(result, indent=1, default=float, allow_nan=True))
    return result


@hydra.main(version_base="1.3", config_path=CONFIG_DIR, config_name="probe")
def main(cfg: DictConfig) -> None:
    run_or_exit(run, cfg)


if __name__ == "__main__":
    main()
