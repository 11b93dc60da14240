"""The pretext game under Lightning: phases, accumulation, optimizer steps, logs, checkpoints.

The game itself (players, holes, losses, reward) is :class:`sssi.game.Game`, tensors in
and results out; this module does what Lightning needs done around it. Which player
learns is a pure function of the epoch (or step) and ``task.schedule``, and every draw
of a step comes from a generator seeded by ``(seed, global_step, micro-batch)``, so a
resumed run continues bit for bit. With ``task.accumulate_grad_batches = k`` (Lightning's
own is refused under manual optimisation) each loss is divided by k and the player's
optimizer steps on the last micro-batch of every k, so ``global_step`` counts optimizer
steps and the phase changes only between them; DDP synchronises once per step.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from contextlib import nullcontext
from typing import Any

import torch
from hydra.utils import instantiate
from lightning.pytorch.strategies import ParallelStrategy
from torch import Tensor

from sssi.checkpoints import upgrade_state_dict
from sssi.config import to_plain
from sssi.errors import ConfigError
from sssi.game import Game, Turn
from sssi.game.config import check_mask_policy
from sssi.game.game import PLAYERS, ValidationTally, channels_last_players
from sssi.game.inpainter import Inpainter
from sssi.game.instructor import Instructor
from sssi.game.schedule import (
    INPAINTER,
    INSTRUCTOR,
    PHASES,
    WARMUP,
    Schedule,
    accumulation_window,
    step_seed,
    warmup_end_step,
)
from sssi.scaling import compile_options
from sssi.tasks.base import BaseTask
from sssi.tasks.divergence import DivergenceWatch, TrainingDivergedError

__all__ = ["PretrainTask", "TrainingDivergedError"]

log = logging.getLogger(__name__)


class PretrainTask(BaseTask):
    """Inpainter against an instructor, or the inpainting baselines (no instructor).

    Logs each step's :class:`~sssi.game.Turn` (losses and their parts, the instructor's
    KL and hole error, ``mask/*`` statistics) and the phase; validation logs the hole
    error on random holes, Telea's on the same holes and the ratio of the two
    (``val/hole_error_vs_telea``), on the instructor's holes (the game works when it is
    the higher) and the instructor's erase frequency per cell (``val/border_ratio``; the picture
    goes to the image callback). ``mask_policy`` (``conf/mask_policy/*.yaml``) holds
    the random holes and every instructor setting (off for the baselines).
    """

    monitor = "val/hole_error_random"
    mode = "min"

    def __init__(
        self,
        backbone: Mapping,
        mask_policy: Mapping,
        loss: Mapping,
        inpainter_optimizer: Mapping,
        inpainter_scheduler: Mapping | None = None,
        schedule: Mapping | None = None,
        in_channels: int = 3,
        decoder_channels: tuple[int, ...] = (512, 256, 128, 64, 32),
        output: str = "linear",
        seed: int = 0,
        finite_check_every_n_steps: int = 1,
        image_every_n_steps: int = 0,
        channels_last: bool | Sequence[str] = False,
        accumulate_grad_batches: int = 1,
        compile: bool | Mapping = False,
        scale_lr: Mapping | None = None,
    ) -> None:
        hparams = {k: to_plain(v) for k, v in locals().items() if k not in ("self", "__class__")}
        hparams["mask_policy"] = check_mask_policy(mask_policy)
        k = accumulate_grad_batches
        if isinstance(k, bool) or not isinstance(k, int) or k < 1:
            raise ConfigError(f"task.accumulate_grad_batches={k!r}: expected an integer >= 1")
        super().__init__(hparams)  # builds the game (configure_models)
        self.automatic_optimization = False
        self.accumulate_grad_batches = k
        self.schedule = Schedule(**(self.hparams.schedule or {}))
        self.divergence = DivergenceWatch(PLAYERS)
        self._val = ValidationTally()
        #: crops the inpainter trained on, over all ranks: the budget that compares
        #: pretext methods (the game's instructor steps do not count)
        self.inpainter_crops = 0

    @property
    def instructor_settings(self) -> dict[str, Any] | None:
        """``mask_policy.instructor`` (every key filled in); None for the baselines."""
        return self.hparams.mask_policy["instructor"]

    def configure_models(self) -> None:
        """The game: the inpainter, the instructor (None for the baselines), the random
        holes of the warm-up and validation, the loss and the reward's baseline."""
        hp, settings = self.hparams, self.instructor_settings
        inpainter = Inpainter(instantiate(hp.backbone), hp.in_channels,
                              tuple(hp.decoder_channels), output=hp.output)
        options: dict[str, Any] = {"channels_last": channels_last_players(hp.channels_last),
                                   "fold_frozen": compile_options(hp.compile) is None}
        instructor, random = None, hp.mask_policy["random"]
        if settings is not None:
            instructor = Instructor(instantiate(settings["backbone"]), **settings["network"])
            random = settings["random"] or random  # the game's own holes, if given
            options.update(reward=settings["reward"], alpha_train=settings["alpha_train"],
                           kl_weight=settings["kl_weight"],
                           baseline_momentum=settings["reward_baseline_momentum"],
                           random_share=settings["random_share"])
        self.game = Game(inpainter, instantiate(random), instantiate(hp.loss), instructor,
                         **options)

    def compiled_modules(self) -> list:
        instructor = self.game.instructor
        return [self.game.inpainter, instructor.encoder if instructor is not None else None]

    @property
    def find_unused_parameters(self) -> bool:
        """Each step trains one player: under DDP the other's parameters get no gradient
        (``sssi.train`` picks the DDP variant that finds them; :meth:`on_fit_start`
        refuses a DDP model without it)."""
        return self.game.instructor is not None

    def input_multiple(self) -> int:
        """The encoders' reduction and the instructor's cell (:meth:`Game.input_multiple`)."""
        return self.game.input_multiple()

    def forward(self, masked: Tensor) -> Tensor:
        """Restore ``masked`` images (holes filled with zeros)."""
        return self.game.restore(masked)

    # --------------------------------------------------------------- schedule and phase
    @property
    def phase(self) -> str:
        """``warmup``, ``instructor`` or ``inpainter``: who learns now (and on which holes)."""
        if self.game.instructor is None:
            return WARMUP  # baselines: random masks throughout
        warm_end = None
        if self.schedule.mode == "alternate":
            warm_end = warmup_end_step(self.schedule.warmup_epochs, self._batches_per_epoch(),
                                       self.accumulate_grad_batches)
        return self.schedule.phase(self.current_epoch, self.global_step, warm_end)

    def _batches_per_epoch(self) -> float:
        return self.trainer.num_training_batches if self._trainer is not None else float("inf")

    def on_train_epoch_start(self) -> None:
        if self.schedule.reset_optimizers_each_round and \
                self.schedule.round_starts(self.current_epoch):
            # the paper re-creates both optimizers each round: drop their moments
            for opt in self.optimizer_list():
                opt.optimizer.state.clear()
        log.debug("epoch %d: phase %s", self.current_epoch, self.phase)

    def micro_batches_per_step(self, trainer_accumulation: int) -> int:
        """``task.accumulate_grad_batches``: the game steps by hand, so Lightning's own
        accumulation must stay 1 (an error naming both keys otherwise)."""
        if trainer_accumulation != 1:
            raise ConfigError(f"trainer.accumulate_grad_batches={trainer_accumulation}: the "
                              "game steps by hand, which Lightning cannot accumulate; set "
                              f"task.accumulate_grad_batches={trainer_accumulation} instead")
        return self.accumulate_grad_batches

    def on_fit_start(self) -> None:
        super().on_fit_start()  # DDP must find the parameters of the player sitting out
        self.game.apply_memory_format()

    # --------------------------------------------------------------------- training step
    def training_step(self, batch: dict, batch_idx: int) -> None:
        images = batch["image"]  # augmented and normalised on this device
        phase = self.phase  # constant within an accumulation window (see the docstring)
        micro, size = accumulation_window(batch_idx, self.accumulate_grad_batches,
                                          self._batches_per_epoch())
        g = torch.Generator(device=images.device)
        g.manual_seed(step_seed(int(self.hparams.seed), int(self.global_step), micro))
        if phase == INSTRUCTOR:
            player, turn = INSTRUCTOR, self.game.instructor_turn(images, g)
        else:  # the inpainter, on random holes (warm-up) or the instructor's
            player, turn = INPAINTER, self.game.inpainter_turn(images, *self.game.holes(
                phase, images, g))
        if turn.baseline_sums is not None:  # summed over ranks: one baseline everywhere
            self.game.update_baseline(self.sum_over_ranks(turn.baseline_sums))
        self._backward_and_step(player, turn.loss, micro, size)
        if player == INPAINTER:
            self.inpainter_crops += images.shape[0] * self.trainer.world_size
        self._log_turn(turn, images.shape[0])
        self.log("train/phase", float(PHASES.index(phase)), on_step=True, on_epoch=False)
        every = int(self.hparams.finite_check_every_n_steps or 0)
        if every and micro == size - 1 and self.global_step % every == 0:
            self._raise_if_diverged()

    def _backward_and_step(self, player: str, loss: Tensor, micro: int, size: int) -> None:
        """Backward of ``player``'s ``loss`` for micro-batch ``micro`` of ``size``; the
        player's optimizer steps after the last one. Gradients are averaged over the
        window and synchronised across DDP ranks only then."""
        opt = self.optimizer_list()[PLAYERS.index(player)]
        last = micro == size - 1
        self.divergence.watch(loss, player, self.global_step)
        if micro == 0:
            opt.zero_grad(set_to_none=True)
        strategy = self.trainer.strategy
        no_sync = strategy.block_backward_sync() \
            if not last and isinstance(strategy, ParallelStrategy) else nullcontext()
        with no_sync:
            self.manual_backward(loss / size if size > 1 else loss)
        if last:
            opt.step()

    def _log_turn(self, turn: Turn, batch_size: int) -> None:
        for name, value in turn.logs.items():
            self.log(name, value, batch_size=batch_size)
        every = int(self.hparams.image_every_n_steps or 0)
        if every and self.global_step % every == 0:  # for callbacks.ImageGrid
            self.keep_visuals("game", turn.visuals())

    def _raise_if_diverged(self) -> None:
        ckpt = getattr(self.trainer.checkpoint_callback, "last_model_path", "")
        self.divergence.raise_if_diverged(f"epoch {self.current_epoch}, phase {self.phase}",
                                          ckpt or "none written yet")

    def on_train_epoch_end(self) -> None:
        # runs before ModelCheckpoint's epoch-end save: never checkpoint a diverged model
        self._raise_if_diverged()
        self.step_schedulers()

    def on_validation_start(self) -> None:
        self._raise_if_diverged()

    # ------------------------------------------------------------------------ validation
    def on_validation_epoch_start(self) -> None:
        self._val = ValidationTally(self.device)
        self.pop_visuals("instructor_cells")  # a stale picture is not this epoch's

    def validation_step(self, batch: dict, batch_idx: int) -> None:
        images = batch["image"]  # augmented and normalised on this device
        g = torch.Generator(device=images.device)
        g.manual_seed(int(self.hparams.seed) + batch_idx)  # same holes every validation
        errors, cells = self.game.validation_errors(images, g)
        for name, value in errors.items():
            self.log(f"val/hole_error_{name}", value, batch_size=images.shape[0],
                     sync_dist=True)
        self._val.add(errors, cells, images.shape[0])

    def on_validation_epoch_end(self) -> None:
        """``val/hole_error_vs_telea`` (below 1: it beats the classical inpainter); the
        instructor's erase frequency per cell over the validation set (all ranks):
        logged as border statistics, kept for the image callback."""
        ratio = self._val.ratio_to_telea(self.sum_over_ranks)
        if ratio is not None:
            self.log("val/hole_error_vs_telea", ratio)
        if self._val.cells.count is None:
            return
        frequency, stats = self._val.cells.frequency(self.sum_over_ranks)
        self.keep_visuals("instructor_cells", frequency)
        for k, v in stats.items():
            self.log(f"val/{k}", v, sync_dist=True)  # equal on all ranks already

    # ------------------------------------------------------------------------ optimizers
    def configure_optimizers(self):
        """One optimizer per player, in the order of :data:`~sssi.game.game.PLAYERS`."""
        hp, settings = self.hparams, self.instructor_settings
        opt_inp = self.build_optimizer(hp.inpainter_optimizer, self.game.inpainter.parameters(),
                                       "task.inpainter_optimizer")
        optimizers = [opt_inp]
        if settings is not None:
            optimizers.append(self.build_optimizer(settings["optimizer"],
                                                   self.game.instructor.parameters(),
                                                   "mask_policy.instructor.optimizer"))
        # both players' rates follow the global batch (before the schedulers read them)
        self.scale_learning_rates(optimizers)
        schedulers = []
        if hp.inpainter_scheduler:
            schedulers.append(self.build_scheduler(hp.inpainter_scheduler, opt_inp,
                                                   "task.inpainter_scheduler"))
        if settings is not None and settings["scheduler"]:
            schedulers.append(self.build_scheduler(settings["scheduler"], optimizers[1],
                                                   "mask_policy.instructor.scheduler"))
        return optimizers, schedulers

    # ----------------------------------------------------------------------- checkpoints
    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        super().on_save_checkpoint(checkpoint)
        checkpoint["game"] = {
            "phase": self.phase, "epoch": self.current_epoch, "global_step": self.global_step,
            "round": self.schedule.round(self.current_epoch),
            "schedule": dict(self.hparams.schedule or {}),
            "has_instructor": self.game.instructor is not None,
            "inpainter_crops": self.inpainter_crops,
        }

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        # checkpoints from before sssi.game keep the players at the top level
        checkpoint["state_dict"] = upgrade_state_dict(checkpoint.get("state_dict", {}))
        game = checkpoint.get("game")
        self.inpainter_crops = int((game or {}).get("inpainter_crops", 0))
        if game and dict(self.hparams.schedule or {}) != game.get("schedule"):
            log.warning("resuming with a different schedule than the checkpoint's: %s -> %s",
                        game.get("schedule"), dict(self.hparams.schedule or {}))
