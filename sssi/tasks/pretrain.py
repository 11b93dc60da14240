"""The pretext game as a LightningModule: an inpainter restores holes an instructor chose.

Two players, two optimizers, manual optimisation. Which player learns at a given
moment is a pure function of the epoch (or step) and the configured schedule, so a
resumed run lands in the same phase, and every random draw of a step (masks, the
instructor's latent sample) comes from a generator seeded by ``(seed, global_step)``:
a run resumed from a checkpoint continues bit for bit on the CPU.

Schedules (``schedule.mode``):
- ``phases`` (the paper): ``warmup_epochs`` of the inpainter on random masks, then
  ``rounds`` x [``instructor_epochs`` with the inpainter frozen, ``inpainter_epochs``
  on instructor masks]; after the last round the inpainter keeps training on
  instructor masks.
- ``alternate`` (ADIOS-style): after the warm-up, ``inpainter_steps`` inpainter steps
  then ``instructor_steps`` instructor steps, repeated.
When ``mask_policy`` is a plain policy (random blocks, random patches, centre hole)
there is no instructor and the module trains the inpainting baselines.

Gradient accumulation (``task.accumulate_grad_batches = k``; Lightning's
``trainer.accumulate_grad_batches`` is refused under manual optimisation): each loss
is divided by the micro-batches of its window, the optimizer steps on the last
micro-batch of every k (and on the last batch of an epoch), so ``global_step`` counts
optimizer steps and the phase, which depends on the epoch or ``global_step``, changes
only between steps. Micro-batch ``i`` of a step draws from a generator seeded by
``(seed, global_step, i)``.
"""

from __future__ import annotations

import functools
import logging
from collections.abc import Mapping
from contextlib import nullcontext
from dataclasses import dataclass
from typing import Any

import lightning as L
import torch
from hydra.utils import instantiate
from lightning.pytorch.strategies import ParallelStrategy
from lightning.pytorch.trainer.states import TrainerFn
from torch import Tensor

from sssi.config import to_plain
from sssi.errors import ConfigError, SssiError
from sssi.masking import mask_stats
from sssi.models.inpainter import Inpainter
from sssi.scaling import compile_in_place, compile_options, scale_learning_rates, scale_lr_options

log = logging.getLogger(__name__)

WARMUP, INSTRUCTOR, INPAINTER = "warmup", "instructor", "inpainter"
PHASES = (WARMUP, INSTRUCTOR, INPAINTER)


class TrainingDivergedError(SssiError):
    """A player's loss became NaN or infinite."""


@dataclass(frozen=True)
class Schedule:
    """Who plays when. See the module docstring."""

    mode: str = "phases"
    warmup_epochs: int = 100
    rounds: int = 10
    instructor_epochs: int = 30
    inpainter_epochs: int = 30
    inpainter_steps: int = 5
    instructor_steps: int = 1
    reset_optimizers_each_round: bool = True

    def __post_init__(self) -> None:
        if self.mode not in ("phases", "alternate"):
            raise SssiError(f"task.schedule.mode={self.mode!r}: expected 'phases' or 'alternate'")
        for key in ("instructor_epochs", "inpainter_epochs", "inpainter_steps",
                    "instructor_steps"):
            if getattr(self, key) < 1:
                raise SssiError(f"task.schedule.{key}={getattr(self, key)}: expected >= 1")

    def phase(self, epoch: int, step: int, steps_at_warmup_end: int | None = None) -> str:
        """The phase at ``epoch`` / global ``step``."""
        if epoch < self.warmup_epochs:
            return WARMUP
        if self.mode == "phases":
            e = epoch - self.warmup_epochs
            period = self.instructor_epochs + self.inpainter_epochs
            if e // period >= self.rounds:
                return INPAINTER
            return INSTRUCTOR if e % period < self.instructor_epochs else INPAINTER
        start = steps_at_warmup_end or 0
        cycle = self.inpainter_steps + self.instructor_steps
        return INPAINTER if (step - start) % cycle < self.inpainter_steps else INSTRUCTOR

    def round(self, epoch: int) -> int:
        """0 during the warm-up, then 1, 2, ... (phases mode)."""
        if epoch < self.warmup_epochs:
            return 0
        period = self.instructor_epochs + self.inpainter_epochs
        return 1 + (epoch - self.warmup_epochs) // period

    def round_starts(self, epoch: int) -> bool:
        """True on the first epoch of a round (where the paper re-creates optimizers)."""
        if self.mode != "phases" or epoch < self.warmup_epochs:
            return False
        period = self.instructor_epochs + self.inpainter_epochs
        e = epoch - self.warmup_epochs
        return e % period == 0 and e // period < self.rounds

    @property
    def total_epochs(self) -> int:
        return self.warmup_epochs + self.rounds * (self.instructor_epochs + self.inpainter_epochs)


def step_seed(seed: int, step: int, micro: int = 0) -> int:
    """Seed of the random draws of micro-batch ``micro`` of optimizer step ``step``.

    Micro-batch 0 keeps the historical ``seed * 1_000_003 + step``; the others mix all
    three numbers (splitmix64) so that no two micro-batches share masks.
    """
    base = seed * 1_000_003 + step
    if micro == 0:
        return base
    mask = (1 << 64) - 1
    z = (base * 0x9E3779B97F4A7C15 + micro * 0xBF58476D1CE4E5B9 + 0x94D049BB133111EB) & mask
    z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & mask
    z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & mask
    return (z ^ (z >> 31)) & ((1 << 63) - 1)


class PretrainTask(L.LightningModule):
    """Inpainter (encoder + decoder) against an instructor, or inpainting baselines.

    Logs per step: ``train/inpainter_loss`` (and its ``hole``/``context``/``ssim``
    parts), ``train/instructor_loss``, ``train/instructor_kl``, ``train/hole_error``,
    mask statistics (``mask/ratio``, ``mask/entropy``, ``mask/coverage``) and the phase
    index. Validation reports the hole error on random masks and, when there is an
    instructor, on instructor masks (``val/hole_error_random``,
    ``val/hole_error_instructor``): the game works when the latter is higher.
    """

    def __init__(
        self,
        backbone: Mapping,
        mask_policy: Mapping,
        loss: Mapping,
        inpainter_optimizer: Mapping,
        instructor_optimizer: Mapping | None = None,
        inpainter_scheduler: Mapping | None = None,
        instructor_scheduler: Mapping | None = None,
        warmup_policy: Mapping | None = None,
        instructor_backbone: Mapping | None = None,
        schedule: Mapping | None = None,
        in_channels: int = 3,
        decoder_channels: tuple[int, ...] = (512, 256, 128, 64, 32),
        output: str = "linear",
        instructor_alpha_train: float = 1.0,
        kl_weight: float = 1e-6,
        seed: int = 0,
        finite_check_every_n_steps: int = 1,
        image_every_n_steps: int = 0,
        channels_last: bool = False,
        accumulate_grad_batches: int = 1,
        compile: bool | Mapping = False,
        scale_lr: Mapping | None = None,
    ) -> None:
        super().__init__()
        self.automatic_optimization = False
        self.save_hyperparameters({k: to_plain(v) for k, v in locals().items()
                                   if k not in ("self", "__class__")})
        hp = self.hparams
        self.inpainter = Inpainter(instantiate(hp.backbone), in_channels,
                                   tuple(decoder_channels), output=output)
        policy = instantiate(hp.mask_policy)
        self.instructor = None
        if isinstance(policy, functools.partial):  # the instructor needs its encoder
            if instructor_backbone is None:
                raise SssiError("task.instructor_backbone is required when mask_policy is "
                                "the instructor")
            self.instructor = policy(encoder=instantiate(hp.instructor_backbone))
            self.random_policy = instantiate(hp.warmup_policy) if warmup_policy else None
            if self.random_policy is None:
                raise SssiError("task.warmup_policy is required when mask_policy is the "
                                "instructor (random masks for the warm-up and validation)")
            if instructor_optimizer is None:
                raise SssiError("task.instructor_optimizer is required with an instructor")
        else:
            self.random_policy = policy
        self.criterion = instantiate(hp.loss)
        self.schedule = Schedule(**(hp.schedule or {}))
        k = accumulate_grad_batches
        if isinstance(k, bool) or not isinstance(k, int) or k < 1:
            raise ConfigError(f"task.accumulate_grad_batches={k!r}: expected an integer >= 1")
        self.accumulate_grad_batches = k
        compile_options(compile)  # fail early on a bad task.compile
        scale_lr_options(scale_lr)  # and on a bad task.scale_lr
        self.register_buffer("_first_bad", torch.full((2,), -1, dtype=torch.long),
                             persistent=False)
        self._visuals: dict[str, Tensor] | None = None

    # ------------------------------------------------------------------------ schedule
    @property
    def phase(self) -> str:
        if self.instructor is None:
            return WARMUP  # baselines: random masks throughout
        warm_end = None
        if self.schedule.mode == "alternate":
            warm_end = self._warmup_end_step()
        return self.schedule.phase(self.current_epoch, self.global_step, warm_end)

    def _warmup_end_step(self) -> int:
        # steps per epoch are fixed for a run, so the step that ends the warm-up is known
        batches = self.trainer.num_training_batches if self._trainer is not None else 0
        if batches == float("inf"):
            return 0
        steps = -(-int(batches) // self.accumulate_grad_batches)  # optimizer steps per epoch
        return int(self.schedule.warmup_epochs * steps)

    def _micro_batch(self, batch_idx: int) -> tuple[int, int]:
        """``(index, size)`` of ``batch_idx``'s accumulation window: the optimizer steps
        after micro-batch ``size - 1``; an epoch's last window may be shorter."""
        k = self.accumulate_grad_batches
        if k == 1:
            return 0, 1
        micro = batch_idx % k
        batches = self.trainer.num_training_batches if self._trainer is not None else float("inf")
        if batches == float("inf"):
            return micro, k
        return micro, min(k, int(batches) - (batch_idx - micro))

    def _generator(self, device: torch.device, micro: int = 0) -> torch.Generator:
        g = torch.Generator(device=device)
        g.manual_seed(step_seed(int(self.hparams.seed), int(self.global_step), micro))
        return g

    def setup(self, stage: str) -> None:
        # Each step trains one player, so the other's parameters get no gradient. DDP
        # must be told, or it waits for those gradients forever; set it here so that
        # every DDP trainer config works with the game unchanged.
        kwargs = getattr(self.trainer.strategy, "_ddp_kwargs", None)
        if isinstance(kwargs, dict) and self.instructor is not None:
            kwargs.setdefault("find_unused_parameters", True)
        if stage == "fit":  # in place: state-dict keys stay those of the plain modules
            instructor_encoder = self.instructor.encoder if self.instructor is not None else None
            compile_in_place([self.inpainter, instructor_encoder], self.hparams.compile)

    def configure_callbacks(self):
        # The first hook that sees the trainer, before Lightning refuses its own
        # accumulation under manual optimisation with a message naming the Trainer.
        trainer = self.trainer
        if trainer.state.fn == TrainerFn.FITTING and trainer.accumulate_grad_batches != 1:
            raise ConfigError(
                f"trainer.accumulate_grad_batches={trainer.accumulate_grad_batches}: the game "
                "uses manual optimisation, which Lightning cannot accumulate; set "
                f"task.accumulate_grad_batches={trainer.accumulate_grad_batches} instead "
                "(and leave trainer.accumulate_grad_batches=1)")
        return []

    def on_fit_start(self) -> None:
        if self.hparams.channels_last:  # faster convolutions on tensor-core GPUs
            self.to(memory_format=torch.channels_last)

    def on_after_batch_transfer(self, batch: dict, dataloader_idx: int) -> dict:
        if self.hparams.channels_last and "image" in batch:
            batch["image"] = batch["image"].contiguous(memory_format=torch.channels_last)
        return batch

    # ------------------------------------------------------------------------ forward
    def forward(self, masked: Tensor) -> Tensor:
        """Restore ``masked`` images (holes filled with zeros)."""
        return self.inpainter(masked)

    def instructor_masks(self, images: Tensor, generator: torch.Generator | None = None
                         ) -> Tensor:
        """Binary holes the instructor would make now (it is put in eval mode)."""
        assert self.instructor is not None
        self.instructor.eval()
        with torch.no_grad():
            # hard top-k cells: the paper's alpha = 100 sigmoid, binarised, is the same
            return self.instructor.masks(images, hard=True, generator=generator)

    def _optimizers(self) -> list:
        opts = self.optimizers()
        return opts if isinstance(opts, list) else [opts]

    # ------------------------------------------------------------------------ training
    def training_step(self, batch: dict, batch_idx: int) -> None:
        images = batch["image"]
        phase = self.phase  # constant within an accumulation window (see the docstring)
        window = self._micro_batch(batch_idx)
        g = self._generator(images.device, window[0])
        if phase == INSTRUCTOR:
            self._instructor_step(images, g, window)
        else:
            if phase == WARMUP:
                mask = self.random_policy(images, generator=g)
            else:
                mask = self.instructor_masks(images, generator=g)
            self._inpainter_step(images, mask, window)
        self.log("train/phase", float(PHASES.index(phase)), on_step=True, on_epoch=False)
        every = int(self.hparams.finite_check_every_n_steps or 0)
        stepped = window[0] == window[1] - 1
        if every and stepped and (self.global_step % every == 0):
            self._raise_if_diverged()

    def _inpainter_step(self, images: Tensor, mask: Tensor,
                        window: tuple[int, int] = (0, 1)) -> None:
        opt = self._optimizers()[0]
        self.inpainter.train()
        restored = self.inpainter(images * (1.0 - mask))
        loss, parts = self.criterion(restored, images, mask)
        self._update(opt, loss, 0, window)
        bs = images.shape[0]
        self.log("train/inpainter_loss", loss, batch_size=bs)
        for k, v in parts.items():
            self.log(f"train/inpainter_{k}", v, batch_size=bs)
        self._log_mask(mask, bs)
        self._keep_visuals(images, mask, restored)

    def _instructor_step(self, images: Tensor, g: torch.Generator,
                         window: tuple[int, int] = (0, 1)) -> None:
        assert self.instructor is not None
        opt = self._optimizers()[1]
        self.instructor.train()
        self.inpainter.eval()
        out = self.instructor(images, generator=g)
        size = images.shape[-2:]
        soft = self.instructor.upsample(
            self.instructor.soft_mask(out.scores, alpha=self.hparams.instructor_alpha_train), size)
        hard = self.instructor.upsample(self.instructor.hard_mask(out.scores.detach()), size)
        with torch.no_grad():  # the frozen inpainter needs no autograd graph
            restored = self.inpainter(images * (1.0 - hard))
            err = self.criterion.error_map(restored, images)
        hole_error = (soft * err).sum() / soft.sum().clamp_min(1e-6)
        loss = 1.0 - hole_error + self.hparams.kl_weight * out.kl
        self._update(opt, loss, 1, window)
        bs = images.shape[0]
        self.log("train/instructor_loss", loss, batch_size=bs)
        self.log("train/instructor_kl", out.kl, batch_size=bs)
        self.log("train/hole_error", hole_error, batch_size=bs)
        self._log_mask(hard, bs)
        self.log("mask/soft_entropy", mask_stats(soft.detach())["entropy"], batch_size=bs)
        self._keep_visuals(images, hard, restored)

    def _update(self, opt, loss: Tensor, player: int, window: tuple[int, int] = (0, 1)
                ) -> None:
        """Backward of ``player``'s (0 inpainter, 1 instructor) ``loss`` for micro-batch
        ``window[0]`` of ``window[1]``; the optimizer steps after the last one. Gradients
        are averaged over the window and synchronised across DDP ranks only once."""
        micro, size = window
        last = micro == size - 1
        self._watch(loss, player)
        if micro == 0:
            opt.zero_grad(set_to_none=True)
        strategy = self.trainer.strategy
        no_sync = strategy.block_backward_sync() \
            if not last and isinstance(strategy, ParallelStrategy) else nullcontext()
        with no_sync:
            self.manual_backward(loss / size if size > 1 else loss)
        if last:
            opt.step()

    def _log_mask(self, mask: Tensor, bs: int) -> None:
        for k, v in mask_stats(mask.detach()).items():
            self.log(f"mask/{k}", v, batch_size=bs)

    def _keep_visuals(self, images: Tensor, mask: Tensor, restored: Tensor) -> None:
        every = int(self.hparams.image_every_n_steps or 0)
        if every and self.global_step % every == 0:
            n = min(4, images.shape[0])
            self._visuals = {"image": images[:n].detach(), "mask": mask[:n].detach(),
                             "restored": restored[:n].detach().float()}

    def pop_visuals(self) -> dict[str, Tensor] | None:
        """The images kept for the image-grid callback, once."""
        v, self._visuals = self._visuals, None
        return v

    # --------------------------------------------------------------------- divergence
    def _watch(self, loss: Tensor, player: int) -> None:
        """Remember the first step whose loss is not finite, without a host sync."""
        bad = ~torch.isfinite(loss.detach())
        unset = self._first_bad[player] < 0
        step = torch.tensor(self.global_step, device=self._first_bad.device)
        self._first_bad[player] = torch.where(bad & unset, step, self._first_bad[player])

    def _raise_if_diverged(self) -> None:
        first = self._first_bad.tolist()
        for player, step in zip(("inpainter", "instructor"), first, strict=True):
            if step >= 0:
                ckpt = getattr(self.trainer.checkpoint_callback, "last_model_path", "") or \
                    "none written yet"
                raise TrainingDivergedError(
                    f"the {player}'s loss is NaN or infinite at step {step} (epoch "
                    f"{self.current_epoch}, phase {self.phase}); stopped. The last good "
                    f"checkpoint is intact: {ckpt}")

    def on_train_epoch_end(self) -> None:
        # runs before ModelCheckpoint's epoch-end save: never checkpoint a diverged model
        self._raise_if_diverged()
        schedulers = self.lr_schedulers() or []
        for sch in schedulers if isinstance(schedulers, list) else [schedulers]:
            sch.step()

    def on_validation_start(self) -> None:
        self._raise_if_diverged()

    def on_train_epoch_start(self) -> None:
        if self.schedule.reset_optimizers_each_round and \
                self.schedule.round_starts(self.current_epoch):
            # the paper re-creates both optimizers each round: drop their moments
            for opt in self._optimizers():
                opt.optimizer.state.clear()
        log.debug("epoch %d: phase %s", self.current_epoch, self.phase)

    # ---------------------------------------------------------------------- validation
    def validation_step(self, batch: dict, batch_idx: int) -> None:
        images = batch["image"]
        g = torch.Generator(device=images.device)
        g.manual_seed(int(self.hparams.seed) + batch_idx)  # same masks every validation
        masks = {"random": self.random_policy(images, generator=g)}
        if self.instructor is not None:
            masks["instructor"] = self.instructor_masks(images, generator=g)
        for name, mask in masks.items():
            err = self.criterion.error_map(self.inpainter(images * (1.0 - mask)), images)
            self.log(f"val/hole_error_{name}", (err * mask).sum() / mask.sum().clamp_min(1),
                     batch_size=images.shape[0], sync_dist=True)

    # ------------------------------------------------------------------------ optimizers
    def configure_optimizers(self):
        hp = self.hparams
        opt_inp = instantiate(hp.inpainter_optimizer)(params=self.inpainter.parameters())
        optimizers = [opt_inp]
        if self.instructor is not None:
            optimizers.append(
                instantiate(hp.instructor_optimizer)(params=self.instructor.parameters()))
        # both players' rates follow the global batch (before the schedulers read them)
        scale_learning_rates(self.trainer, optimizers, hp.get("scale_lr"))
        schedulers = []
        if hp.inpainter_scheduler:
            schedulers.append(instantiate(hp.inpainter_scheduler)(optimizer=opt_inp))
        if self.instructor is not None and hp.instructor_scheduler:
            schedulers.append(instantiate(hp.instructor_scheduler)(optimizer=optimizers[1]))
        return optimizers, schedulers

    # ------------------------------------------------------------------------ checkpoints
    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        checkpoint["game"] = {
            "phase": self.phase, "epoch": self.current_epoch, "global_step": self.global_step,
            "round": self.schedule.round(self.current_epoch),
            "schedule": dict(self.hparams.schedule or {}),
            "has_instructor": self.instructor is not None,
        }

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        game = checkpoint.get("game")
        if game and dict(self.hparams.schedule or {}) != game.get("schedule"):
            log.warning("resuming with a different schedule than the checkpoint's: %s -> %s",
                        game.get("schedule"), dict(self.hparams.schedule or {}))
