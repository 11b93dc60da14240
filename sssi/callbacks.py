"""Lightning callbacks of sssi (everything else uses Lightning's own)."""

from __future__ import annotations

import logging
import signal
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

import lightning as L
import numpy as np
import torch
from torch import Tensor

from sssi.data.palettes import colorize
from sssi.game.masking import cell_border_stats
from sssi.utils.io import write_png

log = logging.getLogger(__name__)


class RunInterruptedError(Exception):
    """A fit ended by a signal: ``signum`` and the resumable checkpoint it left (None
    when nothing newer than the last epoch's checkpoint could be saved)."""

    def __init__(self, signum: int, checkpoint: Path | None) -> None:
        self.signum, self.checkpoint = int(signum), checkpoint
        where = f"saved {checkpoint}" if checkpoint else "no checkpoint saved"
        super().__init__(f"interrupted by {signal.Signals(signum).name}: {where}")


class Preemption(L.Callback):
    """SIGTERM (what SLURM and most schedulers send to preempt) and SIGINT (Ctrl-C) end
    a fit without losing work: the current optimizer step finishes (every micro-batch of
    its accumulation window; at an epoch's end, the epoch and the next one's first
    step), ``last.ckpt`` is saved beside the model checkpoint's
    others, and the fit raises :class:`RunInterruptedError`, which ``sssi.train`` turns
    into exit status 128 + the signal's number and one line saying how to resume. A
    second Ctrl-C stops at once.

    Under SLURM with Lightning's auto-requeue (``SLURMEnvironment``), its requeue signal
    (SIGUSR1 by default, ``#SBATCH --signal=SIGUSR1@90``) is deferred the same way:
    Lightning's own handler (``hpc_ckpt_N.ckpt``, then ``scontrol requeue``) runs at the
    end of the current optimizer step, where a checkpoint resumes exactly, and the
    SIGTERM with which SLURM then ends the job stops the fit as above.

    From the start of training a signal only sets a flag, so a validation in progress
    completes (and its epoch's checkpoints are written) before the stop. Before that
    (set-up, the sanity check) Lightning's own handling stops the run, and the exit
    status is still 128 + N. Under DDP the ranks agree on the stop at each optimizer
    step before any of them saves.
    """

    def __init__(self) -> None:
        self.signum: int | None = None
        self._previous: dict[int, Any] = {}
        self._requeue: tuple[int, Any] | None = None  # a requeue signal not yet handled

    def setup(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        self.signum = None

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        # replaces Lightning's SIGTERM handler for the training (Lightning's would stop
        # inside an accumulation window or a validation); Lightning puts back, at its
        # teardown, what it found before its own set-up
        self._requeue = None
        if threading.current_thread() is threading.main_thread():
            for signum in (signal.SIGTERM, signal.SIGINT):
                self._previous[signum] = signal.signal(signum, self._on_signal)
            requeue = _requeue_signal(trainer)
            if requeue is not None and callable(signal.getsignal(requeue)):
                self._previous[requeue] = signal.signal(requeue, self._on_requeue)

    def on_train_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._restore()

    def _restore(self) -> None:
        """Give the signals back to whoever had them (also after an exception)."""
        if threading.current_thread() is threading.main_thread():
            for signum, handler in self._previous.items():
                signal.signal(signum, handler)
        self._previous = {}

    def _on_signal(self, signum: int, frame: Any) -> None:
        if signum == signal.SIGINT and self.signum == signal.SIGINT:
            raise KeyboardInterrupt  # the second Ctrl-C: stop now
        self.signum = self.signum or signum
        log.warning("%s: stopping with a checkpoint after this optimizer step%s",
                    signal.Signals(signum).name,
                    " (Ctrl-C again to stop at once)" if signum == signal.SIGINT else "")

    def _on_requeue(self, signum: int, frame: Any) -> None:
        self._requeue = (signum, frame)
        log.warning("%s: SLURM requeue after this optimizer step", signal.Signals(signum).name)

    def on_train_batch_end(self, trainer: L.Trainer, pl_module: L.LightningModule,
                           outputs: Any, batch: Any, batch_idx: int) -> None:
        if not _at_step_end(trainer, pl_module, batch_idx):
            return  # accumulated gradients are not in a checkpoint: finish the step
        if self._requeue is not None:  # Lightning's handler: hpc checkpoint, requeue
            signum, frame = self._requeue
            self._requeue = None
            self._previous[signum](signum, frame)
        signum = self.signum or (signal.SIGTERM if trainer.received_sigterm else None)
        if trainer.world_size > 1:  # every rank stops at the same step, or none does
            if not trainer.strategy.reduce_boolean_decision(signum is not None, all=False):
                return
            signum = signum or signal.SIGTERM
        if signum is None:
            return
        self.signum = int(signum)
        path = last_checkpoint_path(trainer)
        if path is not None:
            trainer.save_checkpoint(path)
        raise RunInterruptedError(self.signum, path)

    def on_exception(self, trainer: L.Trainer, pl_module: L.LightningModule,
                     exception: BaseException) -> None:
        from lightning.pytorch.utilities.exceptions import SIGTERMException

        self._restore()
        if isinstance(exception, SIGTERMException):
            self.signum = signal.SIGTERM
        elif isinstance(exception, KeyboardInterrupt):
            self.signum = signal.SIGINT


def _at_step_end(trainer: L.Trainer, pl_module: L.LightningModule, batch_idx: int) -> bool:
    """Whether batch ``batch_idx`` ended an optimizer step (its accumulation window)
    before the epoch's last batch. A checkpoint taken there resumes exactly; at the
    last batch the epoch's own end (validation, schedulers, its checkpoints) must run
    first, so the stop waits for the next epoch's first step."""
    per_step = getattr(pl_module, "micro_batches_per_step", int)(
        trainer.accumulate_grad_batches)
    return (batch_idx + 1) % max(int(per_step), 1) == 0 and \
        batch_idx + 1 < trainer.num_training_batches


def _requeue_signal(trainer: L.Trainer) -> int | None:
    """The requeue signal of a SLURM environment with auto-requeue (None otherwise)."""
    from lightning.pytorch.plugins.environments import SLURMEnvironment

    env = getattr(trainer._accelerator_connector, "cluster_environment", None)
    if isinstance(env, SLURMEnvironment) and env.auto_requeue and env.requeue_signal:
        return int(env.requeue_signal)
    return None


def last_checkpoint_path(trainer: L.Trainer) -> Path | None:
    """``last.ckpt`` in the model checkpoint's folder (None without one)."""
    callback = trainer.checkpoint_callback
    dirpath = getattr(callback, "dirpath", None)
    return Path(dirpath) / "last.ckpt" if dirpath else None


class ImageGrid(L.Callback):
    """Saves image grids of the game: input | mask | masked input | restoration | result.

    The task keeps a few images (kind ``game``: ``image``, ``mask``, ``restored``) every
    ``task.image_every_n_steps`` steps (:meth:`sssi.tasks.base.BaseTask.keep_visuals`);
    this callback writes them as PNG under ``dirpath`` (temporary name, then rename) and
    hands them to loggers that show images (W&B, TensorBoard). *result* is the input with the holes
    filled by the restoration. Images are shown with a per-band min-max stretch of
    the input, so standardised data looks natural.

    After each validation (not the sanity check) it also writes
    ``instructor_cells_epochNNN.png``: the mean instructor mask per cell position over
    the validation set (kind ``instructor_cells``: an ``(h, w)`` tensor) as a heat map,
    one ``cell_px`` square per cell, colour scaled so the average frequency (the erased
    ratio) is the middle of the ramp (see :func:`heat_map`). A bright outer ring is the
    edge shortcut; its ``border_ratio`` is in the loggers' caption and ``val/border_ratio``.
    """

    def __init__(self, dirpath: str, bands: tuple[int, int, int] = (0, 1, 2),
                 cell_px: int = 32) -> None:
        self.dirpath = Path(dirpath)
        self.bands = tuple(bands)
        self.cell_px = int(cell_px)

    def on_train_batch_end(self, trainer: L.Trainer, pl_module: L.LightningModule,
                           outputs, batch, batch_idx: int) -> None:
        visuals = pop_visuals(pl_module, "game")
        if visuals is None or not trainer.is_global_zero:
            return
        grid = make_grid(visuals["image"], visuals["mask"], visuals["restored"], self.bands)
        step = trainer.global_step
        self.dirpath.mkdir(parents=True, exist_ok=True)
        path = self.dirpath / f"game_step{step:07d}.png"
        write_png(path, grid[:, :, ::-1])
        log_image(trainer, "game/grid", grid, step)

    def on_validation_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        # after the task's on_validation_epoch_end, which gathers the frequencies
        frequency = pop_visuals(pl_module, "instructor_cells")  # popped on every rank
        if frequency is None or not trainer.is_global_zero or trainer.sanity_checking:
            return
        ratio = float(cell_border_stats(frequency)["border_ratio"])
        image = heat_map(frequency.float().cpu().numpy(), self.cell_px)
        step, epoch = trainer.global_step, trainer.current_epoch
        write_png(self.dirpath / f"instructor_cells_epoch{epoch:03d}.png",
                  np.ascontiguousarray(image[:, :, ::-1]))
        log_image(trainer, "val/instructor_cells", image, step,
                  f"instructor erase frequency per cell, epoch {epoch}, border_ratio {ratio:.2f}")


def pop_visuals(module: L.LightningModule, kind: str):
    """What ``module`` kept for the callback of ``kind`` (see
    :meth:`sssi.tasks.base.BaseTask.pop_visuals`); None for modules that keep nothing."""
    pop = getattr(module, "pop_visuals", None)
    return pop(kind) if pop is not None else None


def log_image(trainer: L.Trainer, key: str, image: np.ndarray, step: int,
              caption: str | None = None) -> None:
    """Send an (H, W, 3) uint8 picture to every logger that shows images: W&B (with the
    caption) and TensorBoard; other loggers are skipped."""
    for lg in trainer.loggers:
        if hasattr(lg, "log_image"):  # W&B
            lg.log_image(key=key, images=[image], step=step,
                         **({"caption": [caption]} if caption else {}))
        elif hasattr(getattr(lg, "experiment", None), "add_image"):  # TensorBoard
            lg.experiment.add_image(key, image, step, dataformats="HWC")


#: Viridis at 0, 1/4, 1/2, 3/4 and 1 (RGB), interpolated linearly by :func:`heat_map`.
RAMP = np.array([(68, 1, 84), (59, 82, 139), (33, 145, 140), (94, 201, 98), (253, 231, 37)],
                dtype=np.float64)


def heat_map(values: np.ndarray, cell_px: int = 32, vmax: float | None = None) -> np.ndarray:
    """A ``(h, w)`` grid of values >= 0 as a uint8 RGB ``(h * cell_px, w * cell_px, 3)``
    picture, each value a ``cell_px`` square on a viridis-like ramp from 0 to ``vmax``.

    ``vmax`` defaults to twice the mean (capped at 1 for frequencies): an unbiased
    policy is uniformly mid-ramp, cells erased twice as often as average saturate, and
    the scale stays fixed through a run (the mean is the erased ratio).
    """
    v = np.asarray(values, dtype=np.float64)
    if v.ndim != 2:
        raise ValueError(f"expected a (h, w) grid, got shape {v.shape}")
    if vmax is None:
        vmax = min(1.0, 2.0 * float(v.mean())) if v.max() <= 1.0 else 2.0 * float(v.mean())
    t = np.clip(v / max(vmax, 1e-12), 0.0, 1.0)
    anchors = np.linspace(0.0, 1.0, len(RAMP))
    rgb = np.stack([np.interp(t, anchors, RAMP[:, c]) for c in range(3)], axis=-1)
    rgb = rgb.round().astype(np.uint8)
    return rgb.repeat(cell_px, axis=0).repeat(cell_px, axis=1)


def band_stretch(images: Tensor, bands: tuple[int, ...] = (0, 1, 2)
                 ) -> Callable[[Tensor], Tensor]:
    """A display function for (N, C, H, W) tensors like ``images``: picks three
    ``bands`` (repeating the last when there are fewer) and maps each band's min..max
    over ``images`` to 0..1, so that a restoration is shown on its input's scale."""
    idx = [b for b in bands if b < images.shape[1]] or [0]
    while len(idx) < 3:
        idx.append(idx[-1])
    img = images[:, idx].float().cpu()
    lo = img.amin(dim=(0, 2, 3), keepdim=True)
    hi = img.amax(dim=(0, 2, 3), keepdim=True)

    def show(x: Tensor) -> Tensor:
        return ((x[:, idx].float().cpu() - lo) / (hi - lo).clamp_min(1e-6)).clamp(0, 1)

    return show


def make_grid(images: Tensor, masks: Tensor, restored: Tensor,
              bands: tuple[int, ...] = (0, 1, 2)) -> np.ndarray:
    """Rows of [input, mask, masked input, restoration, input with holes filled] as one
    uint8 (H, W, 3) array."""
    stretch = band_stretch(images, bands)
    img, rec = stretch(images), stretch(restored)
    m = masks.float().cpu()

    rows = []
    for i in range(img.shape[0]):
        a, hole, r = img[i : i + 1], m[i : i + 1], rec[i : i + 1]
        tiles = [a, hole.expand_as(a), a * (1 - hole), r, a * (1 - hole) + r * hole]
        rows.append(torch.cat(tiles, dim=3))
    grid = torch.cat(rows, dim=2)[0].permute(1, 2, 0)
    return (grid.numpy() * 255).round().astype(np.uint8)


# ------------------------------------------------------------------------ W&B summary
DEFAULT_MAXIMIZE = ("val/mIoU", "val/mF1", "val/OA", "val/*IoU*", "val/*F1*", "val/OA*",
                    "test/mIoU", "test/mF1", "test/OA", "test/*IoU*", "test/*F1*", "test/OA*")
DEFAULT_MINIMIZE = ("train/loss", "val/loss", "test/loss", "train/*loss", "val/hole_error_*")


class CropBudgets(L.Callback):
    """Checkpoints at pretraining budgets counted in crops the inpainter trained on.

    Pretext methods are compared at matched inpainter crops, not epochs: the game spends
    some steps on the instructor. After the optimizer step that takes
    ``pl_module.inpainter_crops`` (:class:`sssi.tasks.PretrainTask`) to or past a budget,
    ``dirpath/crops_NNNNNNN.ckpt`` is written (the budget, zero-padded), once per budget
    (a resumed run skips the files it already has). With ``stop=true`` training ends
    after the largest budget, so one restartable run makes a whole budget curve; make
    the budgets multiples of an epoch's crops, so that the run stops at an epoch's end
    and a later run with a larger budget (``ckpt_path=last``) continues it exactly
    (Lightning counts a stopped epoch as finished).
    """

    def __init__(self, dirpath: str | Path, budgets: list[int], stop: bool = True) -> None:
        if not budgets or any(isinstance(b, bool) or int(b) != b or b < 1 for b in budgets):
            raise ValueError(f"callbacks.crop_budgets.budgets={budgets!r}: expected a list "
                             "of positive crop counts")
        self.dirpath = Path(dirpath)
        self.budgets = sorted({int(b) for b in budgets})
        self.stop = bool(stop)

    def path(self, budget: int) -> Path:
        return self.dirpath / f"crops_{budget:07d}.ckpt"

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx: int) -> None:
        crops = int(getattr(pl_module, "inpainter_crops", 0))
        for budget in self.budgets:
            if crops >= budget and not self.path(budget).is_file():
                partial = self.path(budget).with_suffix(".ckpt.partial")
                trainer.save_checkpoint(partial)  # complete files only under the name
                if trainer.is_global_zero:
                    partial.replace(self.path(budget))
                    log.info("budget of %d inpainter crops reached (%d): %s", budget, crops,
                             self.path(budget))
        if self.stop and crops >= self.budgets[-1]:
            trainer.should_stop = True


class WandbSummary(L.Callback):
    """Best values in the W&B run summary, and the checkpoint as a W&B artifact.

    Does nothing without a W&B logger, so it sits in the default callbacks. Metric
    names matching a ``maximize`` pattern keep their maximum in the summary
    (``{"max": 0.71}``), those matching ``minimize`` their minimum. Patterns are
    exact names or :mod:`fnmatch` globs (``*`` anywhere). W&B's ``define_metric``
    accepts only trailing-``*`` globs and ignores ``summary=`` for them (wandb 0.31),
    so globs are expanded here: each logged name that matches is defined on first
    sight (W&B's aggregate still covers values logged before; an epoch-end metric's
    summary is set to ``{"max": value}`` at once), and at the start of testing the
    ``test/`` twins of the validation names seen are defined before they are
    logged. A name matching both lists is maximised.

    ``log_checkpoint``: at the end of fitting, log the best and last checkpoints
    as one artifact ``model-<run id>`` of type ``model`` (aliases ``best``,
    ``last``), offline too (``wandb sync`` uploads it). ``checkpoint_policy``:
    ``mutable`` copies the files into W&B's staging folder (safe if the run folder
    changes before syncing), ``immutable`` references them in place (no copy).
    """

    def __init__(self, maximize: list[str] | tuple[str, ...] = DEFAULT_MAXIMIZE,
                 minimize: list[str] | tuple[str, ...] = DEFAULT_MINIMIZE,
                 log_checkpoint: bool = False, checkpoint_policy: str = "mutable") -> None:
        if checkpoint_policy not in ("mutable", "immutable"):
            raise ValueError(f"checkpoint_policy={checkpoint_policy!r}: "
                             "expected mutable or immutable")
        self.maximize = [str(p) for p in maximize or ()]
        self.minimize = [str(p) for p in minimize or ()]
        self.log_checkpoint = bool(log_checkpoint)
        self.checkpoint_policy = checkpoint_policy
        self._defined: set[str] = set()
        self._seen: set[str] = set()
        self._train_scanned = False

    def summary_of(self, name: str) -> str | None:
        """``"max"``, ``"min"`` or None (no aggregate) for a metric name."""
        from fnmatch import fnmatchcase

        if any(fnmatchcase(name, p) for p in self.maximize):
            return "max"
        if any(fnmatchcase(name, p) for p in self.minimize):
            return "min"
        return None

    def _define(self, trainer: L.Trainer, names, logged: bool = False) -> None:
        """define_metric for new matching names. ``logged``: their current values are
        in the W&B history already (epoch-end metrics), so the summary gets the
        aggregate's first value now; W&B's own aggregate takes over from the next row
        on (and covers the earlier rows), a metric logged once keeps this one."""
        from sssi.loggers import wandb_runs

        new = [n for n in names if n not in self._defined and self.summary_of(n)]
        if not new:
            return
        for run in wandb_runs(trainer.loggers):
            for name in new:
                op = self.summary_of(name)
                # keep Lightning's x-axis (it defines "*" against trainer/global_step)
                run.define_metric(name, summary=op, step_metric="trainer/global_step")
                value = trainer.callback_metrics.get(name) if logged else None
                if value is not None and getattr(value, "numel", lambda: 1)() == 1:
                    run.summary[name] = {op: float(value)}
        self._defined.update(new)

    def _scan(self, trainer: L.Trainer, logged: bool = False) -> None:
        names = set(trainer.callback_metrics) - self._seen
        if names:
            self._seen |= names
            self._define(trainer, sorted(names), logged)

    def _active(self, trainer: L.Trainer) -> bool:
        from sssi.loggers import is_wandb

        return trainer.is_global_zero and any(is_wandb(lg) for lg in trainer.loggers)

    def on_fit_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        # the task's own measure of success (BaseTask.monitor / mode) is always summarised
        monitor = getattr(pl_module, "monitor", None)
        if monitor and not self.summary_of(monitor):
            mode = getattr(pl_module, "mode", "min")
            (self.maximize if mode == "max" else self.minimize).append(monitor)
        if self._active(trainer):
            exact = [p for p in self.maximize + self.minimize if not any(c in p for c in "*?[")]
            self._define(trainer, exact)

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx: int) -> None:
        # the first batch shows the step metrics' names; later ones at epoch ends
        if not self._train_scanned and self._active(trainer):
            self._train_scanned = True
            self._scan(trainer)

    def on_train_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if self._active(trainer):
            self._scan(trainer)

    def on_validation_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if self._active(trainer) and not trainer.sanity_checking:
            self._scan(trainer, logged=True)

    def on_test_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if self._active(trainer):
            exact = [p for p in self.maximize + self.minimize
                     if p.startswith("test/") and not any(c in p for c in "*?[")]
            twins = ["test/" + n[4:] for n in self._seen if n.startswith("val/")]
            self._define(trainer, exact + sorted(twins))

    def on_test_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if self._active(trainer):
            self._scan(trainer, logged=True)

    def on_fit_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if self.log_checkpoint and self._active(trainer):
            self._log_checkpoint(trainer)

    def _log_checkpoint(self, trainer: L.Trainer) -> None:
        import wandb

        from sssi.loggers import wandb_runs

        files: dict[str, list[str]] = {}  # path -> aliases
        metadata: dict[str, object] = {"epoch": trainer.current_epoch,
                                       "global_step": trainer.global_step}
        for cb in trainer.checkpoint_callbacks:
            best, last = getattr(cb, "best_model_path", ""), getattr(cb, "last_model_path", "")
            if best:
                files.setdefault(best, []).append("best")
                score = getattr(cb, "best_model_score", None)
                if score is not None:
                    metadata["monitor"] = cb.monitor
                    metadata["best_score"] = float(score)
            if last:
                files.setdefault(last, []).append("last")
        files = {p: a for p, a in files.items() if Path(p).is_file()}
        if not files:
            log.warning("log_checkpoint: no checkpoint file to log")
            return
        for run in wandb_runs(trainer.loggers):
            art = wandb.Artifact(f"model-{run.id}", type="model", metadata=metadata)
            for path, aliases in files.items():
                name = "last.ckpt" if aliases == ["last"] else Path(path).name
                art.add_file(path, name=name, policy=self.checkpoint_policy)
            aliases = sorted({a for al in files.values() for a in al})
            run.log_artifact(art, aliases=aliases)
            log.info("checkpoint artifact model-%s: %s", run.id, ", ".join(files))


# -------------------------------------------------------------------- prediction grid
class PredictionGrid(L.Callback):
    """After each validation epoch, a PNG of image | label | prediction for a few
    validation windows (labels in the palette's colours, ignored pixels black),
    under ``dirpath`` and in the W&B / TensorBoard loggers (key ``val/predictions``).

    Reads what the task keeps as kind ``predictions`` (SegmentTask: ``image``, ``label``,
    ``prediction`` of its first validation batch); a no-op for tasks that keep none
    (the game). Skipped during
    Lightning's sanity check; ``every_n_epochs`` thins it out.
    """

    def __init__(self, dirpath: str, bands: tuple[int, int, int] = (0, 1, 2),
                 every_n_epochs: int = 1) -> None:
        self.dirpath = Path(dirpath)
        self.bands = tuple(bands)
        self.every_n_epochs = max(1, int(every_n_epochs))

    def on_validation_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        visuals = pop_visuals(pl_module, "predictions")
        if visuals is None or not trainer.is_global_zero or trainer.sanity_checking:
            return
        if trainer.current_epoch % self.every_n_epochs:
            return
        grid = make_prediction_grid(visuals["image"], visuals["label"], visuals["prediction"],
                                    palette_colors(trainer), self.bands)
        step, epoch = trainer.global_step, trainer.current_epoch
        self.dirpath.mkdir(parents=True, exist_ok=True)
        write_png(self.dirpath / f"predictions_epoch{epoch:03d}.png",
                  np.ascontiguousarray(grid[:, :, ::-1]))
        log_image(trainer, "val/predictions", grid, step,
                  f"image | label | prediction, epoch {epoch}")


def palette_colors(trainer: L.Trainer) -> np.ndarray | None:
    """(num_classes, 3) uint8 colours of the datamodule's palette; None (generated
    colours) when the datamodule has no layout."""
    layout = getattr(getattr(trainer, "datamodule", None), "layout", None)
    palette = getattr(layout, "palette", None)
    return None if palette is None else palette.color_array()


def make_prediction_grid(images: Tensor, labels: Tensor, predictions: Tensor,
                         colors: np.ndarray | None,
                         bands: tuple[int, ...] = (0, 1, 2)) -> np.ndarray:
    """Rows of [image, label, prediction] as one uint8 (H, W, 3) RGB array; the image
    is shown with a per-band min-max stretch over the batch."""
    img = band_stretch(images, bands)(images)
    img = (img.permute(0, 2, 3, 1).numpy() * 255).round().astype(np.uint8)
    rows = [np.concatenate([img[i], colorize(labels[i].cpu(), colors),
                            colorize(predictions[i].cpu(), colors)], axis=1)
            for i in range(img.shape[0])]
    return np.concatenate(rows, axis=0)
