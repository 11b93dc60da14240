"""Semantic segmentation as a LightningModule: encoder from the registry, a head, losses
and ISPRS metrics.

Configs (backbone, loss, optimizer, scheduler) arrive as plain mappings and are
instantiated here (see :mod:`sssi.tasks.base`), so a checkpoint's hyperparameters fully
describe the model and ``SegmentTask.load_from_checkpoint(path)`` rebuilds it.
"""

from __future__ import annotations

import math
from collections.abc import Mapping

from hydra.utils import instantiate
from torch import Tensor
from torchmetrics.classification import MulticlassConfusionMatrix

from sssi.checkpoints import init_encoder
from sssi.config import to_plain
from sssi.data.palettes import IGNORE_INDEX
from sssi.errors import ConfigError
from sssi.metrics import evaluation_metrics
from sssi.models.heads import Segmenter, build_head
from sssi.tasks.base import BaseTask


class SegmentTask(BaseTask):
    """Fine-tune (or train from scratch) a segmenter on labelled windows.

    ``init`` starts the encoder from a pretext checkpoint of the game, a segmentation
    checkpoint or a torchvision-style state dict (see :mod:`sssi.checkpoints`);
    ``backbone.weights`` is the other way to give ImageNet weights. ``freeze_encoder``
    trains the head alone (with ``head.name=linear``: the linear probe that measures
    what pretraining learned); the frozen encoder stays in eval mode, so its BatchNorm
    statistics are those it was pretrained with, unless ``encoder_bn_stats=update``
    lets them follow the labelled images (the weights stay frozen; a pretext encoder
    saw images with holes, whose statistics differ). ``pretrained_lr_scale`` multiplies
    the learning rate of an encoder that starts from pretrained weights (``init`` or
    ``backbone.weights``): it should keep what it learned while the fresh head catches
    up. An encoder from scratch always trains at the optimizer's rate, so a study can
    give every method one config.

    Logs ``train/loss`` (and each loss term), ``val/mIoU``, ``val/mF1``, ``val/OA``
    and per-class IoU; the same under ``test/`` for the test split.
    """

    monitor = "val/mIoU"
    mode = "max"

    def __init__(self, backbone: Mapping, loss: Mapping, num_classes: int,
                 optimizer: Mapping, scheduler: Mapping | None = None,
                 head: Mapping | None = None, freeze_encoder: bool = False,
                 init: str | None = None, require_init: bool = False,
                 class_names: list[str] | None = None, compile: bool | Mapping = False,
                 scale_lr: Mapping | None = None, pretrained_lr_scale: float = 1.0,
                 encoder_bn_stats: str = "frozen") -> None:
        if encoder_bn_stats not in ("frozen", "update"):
            raise ConfigError(f"task.encoder_bn_stats={encoder_bn_stats!r}: expected frozen "
                              "(a frozen encoder keeps its BatchNorm statistics) or update")
        if not float(pretrained_lr_scale) > 0:
            raise ConfigError(f"task.pretrained_lr_scale={pretrained_lr_scale!r}: expected a "
                              "positive factor (task.freeze_encoder=true freezes the encoder)")
        if require_init and not init:
            raise ConfigError("task.init is required by this experiment: give the encoder's "
                              "starting weights, task.init=PATH (a pretext checkpoint or a "
                              "torchvision-style state dict)")
        super().__init__({
            "backbone": to_plain(backbone), "loss": to_plain(loss), "num_classes": num_classes,
            "optimizer": to_plain(optimizer), "scheduler": to_plain(scheduler),
            "head": to_plain(head) or {"name": "fcn"}, "freeze_encoder": freeze_encoder,
            "init": str(init) if init else None, "require_init": require_init,
            "class_names": [str(c) for c in class_names] if class_names else None,
            "compile": to_plain(compile), "scale_lr": to_plain(scale_lr),
            "pretrained_lr_scale": float(pretrained_lr_scale),
            "encoder_bn_stats": encoder_bn_stats,
        })
        self._initialised = False
        self.init_source = "scratch"
        self.class_names = self.hparams.class_names or [f"class_{i}" for i in range(num_classes)]

    def configure_models(self) -> None:
        encoder = instantiate(self.hparams.backbone)
        head_options = dict(self.hparams.head)
        head_name = head_options.pop("name", "fcn")
        self.model = Segmenter(encoder, build_head(head_name, encoder.out_channels,
                                                   encoder.reductions, self.hparams.num_classes,
                                                   **head_options))
        if self.hparams.freeze_encoder:
            self.model.encoder.requires_grad_(False)

    def configure_losses(self) -> None:
        self.criterion = instantiate(self.hparams.loss)

    def configure_metrics(self) -> None:
        # one confusion matrix per stage (synchronised across DDP ranks by torchmetrics);
        # every score derives from it through sssi.metrics, as in sssi.evaluate
        n = self.hparams.num_classes
        self.val_confusion = MulticlassConfusionMatrix(n, ignore_index=IGNORE_INDEX)
        self.test_confusion = MulticlassConfusionMatrix(n, ignore_index=IGNORE_INDEX)

    def compiled_modules(self) -> list:
        return [self.model]

    def setup(self, stage: str) -> None:
        # The encoder's starting weights load when fitting begins, before Lightning
        # restores a resumed checkpoint (which then wins), and never when a finished
        # checkpoint is loaded for evaluation (the init file may be long gone by then).
        if stage == "fit" and self.hparams.init and not self._initialised:
            self.init_source = init_encoder(self.model.encoder, self.hparams.init)
            self._initialised = True
        super().setup(stage)  # compiles the segmenter when fitting
        # class names come from the data's palette unless the checkpoint already has them
        dm = getattr(self.trainer, "datamodule", None)
        layout = getattr(dm, "layout", None)
        if self.hparams.class_names is None and layout is not None:
            names = [str(c) for c in layout.palette.classes]
            if len(names) == self.hparams.num_classes:
                self.hparams.class_names = names
                self.class_names = names

    def on_train_batch_start(self, batch: dict, batch_idx: int) -> None:
        # A frozen encoder keeps its BatchNorm statistics. Set before every batch: Lightning
        # restores each submodule's own mode after validation, undoing a one-off eval().
        if self.hparams.freeze_encoder and self.model.encoder.training and \
                self.hparams.get("encoder_bn_stats", "frozen") == "frozen":
            self.model.encoder.eval()

    def forward(self, images: Tensor) -> Tensor:
        return self.model(images)

    def training_step(self, batch: dict, batch_idx: int) -> Tensor:
        logits = self(batch["image"])
        loss, parts = self.criterion(logits, batch["label"])
        bs = batch["image"].shape[0]
        self.log("train/loss", loss, prog_bar=True, batch_size=bs)
        for name, value in parts.items():
            self.log(f"train/{name}", value, batch_size=bs)
        return loss

    def _eval_step(self, batch: dict, confusion: MulticlassConfusionMatrix, prefix: str) -> Tensor:
        logits = self(batch["image"])
        loss, _ = self.criterion(logits, batch["label"])
        self.log(f"{prefix}/loss", loss, batch_size=batch["image"].shape[0], sync_dist=True)
        predictions = logits.argmax(1)
        confusion.update(predictions, batch["label"])
        return predictions

    def validation_step(self, batch: dict, batch_idx: int) -> None:
        predictions = self._eval_step(batch, self.val_confusion, "val")
        if batch_idx == 0:  # the prediction panel (sssi.callbacks.PredictionGrid): a few
            n = min(4, predictions.shape[0])  # windows, the same ones every epoch
            self.keep_visuals("predictions", {"image": batch["image"][:n].detach(),
                                              "label": batch["label"][:n].detach(),
                                              "prediction": predictions[:n].detach()})

    def test_step(self, batch: dict, batch_idx: int) -> None:
        self._eval_step(batch, self.test_confusion, "test")

    def _log_metrics(self, confusion: MulticlassConfusionMatrix, prefix: str) -> None:
        """mIoU, mF1, OA and per-class IoU/F1 over all classes, and over the five
        ISPRS classes without clutter (``mIoU_5`` ...) where the palette has clutter.
        Classes absent from both truth and prediction are left out of the means."""
        cm = confusion.compute().cpu().numpy()
        confusion.reset()
        metrics = evaluation_metrics(cm, self.class_names)
        self.log(f"{prefix}/mIoU", _finite(metrics["mIoU"]), prog_bar=True)
        out = {f"{prefix}/{k}": _finite(v) for k, v in metrics.items()
               if isinstance(v, float) and k != "mIoU"}
        for name, s in metrics["per_class"].items():
            out[f"{prefix}/IoU_{name}"] = _finite(s["IoU"])
            out[f"{prefix}/F1_{name}"] = _finite(s["F1"])
        self.log_dict(out)

    def on_validation_epoch_end(self) -> None:
        self._log_metrics(self.val_confusion, "val")

    def on_test_epoch_end(self) -> None:
        self._log_metrics(self.test_confusion, "test")

    def configure_optimizers(self):
        pretrained = bool(self.hparams.init or (self.hparams.backbone or {}).get("weights"))
        scale = float(self.hparams.get("pretrained_lr_scale", 1.0)) if pretrained else 1.0
        encoder = {id(p) for p in self.model.encoder.parameters()}
        params = [p for p in self.parameters() if p.requires_grad]
        groups = [{"params": [p for p in params if id(p) not in encoder]},
                  {"params": [p for p in params if id(p) in encoder]}]
        groups = [g for g in groups if g["params"]]
        optimizer = self.build_optimizer(self.hparams.optimizer, groups, "task.optimizer")
        if scale != 1.0 and len(groups) == 2:
            optimizer.param_groups[1]["lr"] *= scale
        self.scale_learning_rates([optimizer])
        if not self.hparams.scheduler:
            return optimizer
        scheduler = self.build_scheduler(self.hparams.scheduler, optimizer, "task.scheduler")
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler,
                                                         "interval": "epoch"}}


def _finite(value: float) -> float:
    """Undefined scores (a class absent from truth and prediction) log as 0.0."""
    return 0.0 if value is None or math.isnan(value) else float(value)
