"""The pretext game as a LightningModule: an inpainter restores holes an instructor chose.

Two players, ``"inpainter"`` and ``"instructor"`` (:data:`PLAYERS`), two optimizers,
manual optimisation. Which player learns at a given moment is a pure function of the
epoch (or step) and the configured schedule (:mod:`sssi.tasks.schedule`), so a resumed
run lands in the same phase, and every random draw of a step (masks, the instructor's
latent sample) comes from a generator seeded by ``(seed, global_step)``: a run resumed
from a checkpoint continues bit for bit on the CPU. Without an instructor (random
blocks, random patches, a centre hole) the module trains the inpainting baselines.

Gradient accumulation (``task.accumulate_grad_batches = k``; Lightning's
``trainer.accumulate_grad_batches`` is refused under manual optimisation): each loss
is divided by the micro-batches of its window, the optimizer steps on the last
micro-batch of every k (and on the last batch of an epoch), so ``global_step`` counts
optimizer steps and the phase, which depends on the epoch or ``global_step``, changes
only between steps. Micro-batch ``i`` of a step draws from a generator seeded by
``(seed, global_step, i)``. Gradients are synchronised across DDP ranks once per step.

Positional shortcut: the crop's edge, where the inpainter has the least context, is
always hard to restore, so an instructor rewarded with the raw error learns to erase
edge cells. ``mask/border_ratio`` and ``val/border_ratio`` (edge vs inner erase
frequency, 1 = unbiased) and ``images/instructor_cells_epochNNN.png`` (the mean
instructor mask per cell) show it; ``mask_policy.instructor.network.border_cells`` and
``mask_policy.instructor.reward=relative`` (reward = error minus a per-position
baseline, :class:`PositionBaseline`) remove it.

Configuration: the task's own keys (inpainter, schedule, ...) and ``mask_policy``, the
holes and the instructor as one node (``conf/mask_policy/*.yaml``, checked by
:func:`check_mask_policy`): ``random``, the random holes (the baselines' only holes,
the game's in the warm-up and validation), and ``instructor``, every setting of the
instructor, off (``null`` or ``enabled: false``) for the baselines.

The file reads top to bottom: construction, schedule and phase, the training step,
the two players' steps, the reward, divergence, validation, optimizers, checkpoint
metadata. Beside it: the schedule and seed mixing (:mod:`sssi.tasks.schedule`), the
reward's maths (:mod:`sssi.tasks.reward`) and the config checks
(:mod:`sssi.tasks.game_config`).
"""

from __future__ import annotations

import logging
import math
from collections.abc import Mapping, Sequence
from contextlib import nullcontext
from typing import Any

import torch
from hydra.utils import instantiate
from lightning.pytorch.strategies import ParallelStrategy
from lightning.pytorch.trainer.states import TrainerFn
from torch import Tensor, nn
from torch.nn.parallel import DistributedDataParallel

from sssi.config import to_plain
from sssi.errors import ConfigError, SssiError
from sssi.masking import cell_border_stats, mask_stats
from sssi.models.folding import FoldedCopy
from sssi.models.inpainter import Inpainter
from sssi.models.instructor import Instructor
from sssi.tasks.base import BaseTask
from sssi.tasks.game_config import check_mask_policy, check_window_sides
from sssi.tasks.reward import PositionBaseline, cell_errors, raw_reward, relative_reward
from sssi.tasks.schedule import (
    INPAINTER,
    INSTRUCTOR,
    PHASES,
    WARMUP,
    Schedule,
    accumulation_window,
    step_seed,
    warmup_end_step,
)

log = logging.getLogger(__name__)

#: The two players, in the order of their optimizers (and of the NaN watch).
PLAYERS = (INPAINTER, INSTRUCTOR)


def channels_last_players(value: bool | Sequence[str] | None) -> tuple[str, ...]:
    """The players of ``task.channels_last``: ``true`` (both), ``false`` (neither) or a
    list of player names. On a tensor-core GPU both players gain from NHWC; on a CPU it
    can speed one network and slow the other (``make bench-game`` compares)."""
    if value is None or value is False:
        return ()
    if value is True:
        return PLAYERS
    names = [value] if isinstance(value, str) else value
    if not isinstance(names, Sequence) or any(n not in PLAYERS for n in names):
        raise ConfigError(f"task.channels_last={to_plain(value)!r}: expected true, false or a "
                          f"list of players among {list(PLAYERS)}")
    return tuple(p for p in PLAYERS if p in names)


class TrainingDivergedError(SssiError):
    """A player's loss became NaN or infinite."""


class PretrainTask(BaseTask):
    """Inpainter (encoder + decoder) against an instructor, or inpainting baselines.

    Logs per step: ``train/inpainter_loss`` (and its ``hole``/``context``/``ssim``
    parts), ``train/instructor_loss``, ``train/instructor_kl``, ``train/hole_error``,
    mask statistics (``mask/ratio``, ``mask/entropy``, ``mask/coverage``) and the phase
    index; with an instructor's masks also ``mask/border_freq``, ``mask/inner_freq``
    and ``mask/border_ratio`` (edge vs inner erase frequency of its cells, 1 = no
    positional bias). Validation reports the hole error on random masks and, when there
    is an instructor, on instructor masks (``val/hole_error_random``,
    ``val/hole_error_instructor``): the game works when the latter is higher; and
    ``val/border_ratio`` (with ``val/border_freq``, ``val/inner_freq``) of the mean
    instructor mask per cell over the whole validation set, which it keeps for the
    image callback (visuals kind ``instructor_cells``).

    ``mask_policy.instructor.reward``: ``raw`` (the paper) weights the soft mask with the
    inpainter's error; ``relative`` with the error minus :class:`PositionBaseline`
    (``reward_baseline_momentum``), updated from every instructor mask the inpainter
    fills after the warm-up.
    """

    datamodule = "sssi.data.PretextDataModule"

    # ---------------------------------------------------------------------- construction
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
        self.channels_last = channels_last_players(channels_last)
        super().__init__(hparams)  # builds the players, the loss and the reward baseline
        self.automatic_optimization = False
        self.accumulate_grad_batches = k
        self.schedule = Schedule(**(self.hparams.schedule or {}))
        # the first step whose loss was not finite, per player (-1: none yet)
        self.register_buffer("_first_bad", torch.full((len(PLAYERS),), -1, dtype=torch.long),
                             persistent=False)
        self._val_cells: list[Tensor] | None = None  # [sum of hard cells (h, w), count]
        # the inpainter with batch norm folded (see frozen_inpainter); not a module, so
        # it stays out of the state dict
        self._folded: FoldedCopy | None = None

    @property
    def instructor_settings(self) -> dict[str, Any] | None:
        """``mask_policy.instructor`` (every key filled in); None for the baselines."""
        return self.hparams.mask_policy["instructor"]

    def configure_models(self) -> None:
        """The inpainter; the instructor (None for the baselines) and the random holes
        of the warm-up and validation (the baselines' only holes)."""
        hp = self.hparams
        self.inpainter = Inpainter(instantiate(hp.backbone), hp.in_channels,
                                   tuple(hp.decoder_channels), output=hp.output)
        settings = self.instructor_settings
        self.instructor = None
        if settings is not None:
            self.instructor = Instructor(instantiate(settings["backbone"]), **settings["network"])
        own = settings["random"] if settings is not None else None  # the game's own holes
        self.random_policy = instantiate(own or hp.mask_policy["random"])

    def configure_losses(self) -> None:
        """The inpainter's reconstruction loss; the relative reward's per-position
        baseline (only then in the state dict, so checkpoints of raw runs keep their keys)."""
        self.criterion = instantiate(self.hparams.loss)
        settings = self.instructor_settings
        self.reward_baseline = None
        if settings is not None and settings["reward"] == "relative":
            self.reward_baseline = PositionBaseline(settings["reward_baseline_momentum"])

    def compiled_modules(self) -> list:
        return [self.inpainter, self.instructor.encoder if self.instructor is not None else None]

    @property
    def find_unused_parameters(self) -> bool:
        """Each step trains one player: under DDP the other's parameters get no gradient,
        and DDP must be told (``sssi.train`` then picks ``ddp_find_unused_parameters_true``
        for ``ddp``, and so on; :meth:`on_fit_start` refuses a DDP model without it)."""
        return self.instructor is not None

    # --------------------------------------------------------------- schedule and phase
    @property
    def phase(self) -> str:
        """``warmup``, ``instructor`` or ``inpainter``: who learns now (and on which holes)."""
        if self.instructor is None:
            return WARMUP  # baselines: random masks throughout
        warm_end = None
        if self.schedule.mode == "alternate":
            warm_end = warmup_end_step(self.schedule.warmup_epochs, self._batches_per_epoch(),
                                       self.accumulate_grad_batches)
        return self.schedule.phase(self.current_epoch, self.global_step, warm_end)

    def _batches_per_epoch(self) -> float:
        return self.trainer.num_training_batches if self._trainer is not None else float("inf")

    def _generator(self, device: torch.device, micro: int = 0) -> torch.Generator:
        g = torch.Generator(device=device)
        g.manual_seed(step_seed(int(self.hparams.seed), int(self.global_step), micro))
        return g

    def on_train_epoch_start(self) -> None:
        if self.schedule.reset_optimizers_each_round and \
                self.schedule.round_starts(self.current_epoch):
            # the paper re-creates both optimizers each round: drop their moments
            for opt in self._optimizers():
                opt.optimizer.state.clear()
        log.debug("epoch %d: phase %s", self.current_epoch, self.phase)

    def input_multiple(self) -> int:
        """Window sides must be multiples of this: the encoders reduce by it, and the
        inpainter's decoder and the instructor's cells need whole steps."""
        multiple = self.inpainter.reduction
        if self.instructor is not None:
            multiple = math.lcm(multiple, self.instructor.cell_size)
        return multiple

    def configure_callbacks(self):
        # The first hook that sees the trainer: settings that would fail in the first
        # step (window sizes) or that Lightning would refuse with a message naming the
        # Trainer (its own accumulation under manual optimisation) end the run here.
        trainer = self.trainer
        check_window_sides(trainer.datamodule, self.input_multiple())
        if trainer.state.fn == TrainerFn.FITTING:
            self.micro_batches_per_step(trainer.accumulate_grad_batches)
        return []

    def micro_batches_per_step(self, trainer_accumulation: int) -> int:
        """``task.accumulate_grad_batches``: the game steps by hand, so Lightning's own
        accumulation must stay 1 (an error naming both keys otherwise)."""
        if trainer_accumulation != 1:
            raise ConfigError(
                f"trainer.accumulate_grad_batches={trainer_accumulation}: the game "
                "uses manual optimisation, which Lightning cannot accumulate; set "
                f"task.accumulate_grad_batches={trainer_accumulation} instead "
                "(and leave trainer.accumulate_grad_batches=1)")
        return self.accumulate_grad_batches

    def on_fit_start(self) -> None:
        # After the strategy wrapped the module: DDP must find the unused parameters of
        # the player that sits a step out (sssi.train picks that strategy by itself).
        model = self.trainer.strategy.model
        if self.find_unused_parameters and isinstance(model, DistributedDataParallel) and \
                not model.find_unused_parameters:
            raise ConfigError(
                "trainer.strategy: the game trains one player per step, so DDP must find "
                "unused parameters; use trainer.strategy=ddp_find_unused_parameters_true "
                "(or a DDPStrategy with find_unused_parameters: true)")
        self.apply_memory_format()

    def apply_memory_format(self) -> None:
        """Put the players of ``task.channels_last`` in NHWC (their inputs follow, see
        :meth:`_input`)."""
        for player in self.channels_last:
            network = getattr(self, player)
            if network is not None:  # the baselines have no instructor
                network.to(memory_format=torch.channels_last)

    def _input(self, player: str, x: Tensor) -> Tensor:
        """``x`` in ``player``'s memory format (``task.channels_last``): a convolution
        follows its input's format, so each player gets its own."""
        fmt = torch.channels_last if player in self.channels_last else torch.contiguous_format
        return x.contiguous(memory_format=fmt)

    # --------------------------------------------------------------------------- forward
    def forward(self, masked: Tensor) -> Tensor:
        """Restore ``masked`` images (holes filled with zeros)."""
        return self.inpainter(self._input(INPAINTER, masked))

    def frozen_inpainter(self) -> nn.Module:
        """The inpainter as the instructor's steps use it: in eval mode, not learning, with
        its batch norms folded into its convolutions (:class:`FoldedCopy`: the same
        outputs to float rounding, one pass over every activation less per forward).

        The copy is made once; when the inpainter's weights or statistics have changed
        since (it learned, a checkpoint was loaded) it is brought up to date in one pass
        over them, and made anew when the inpainter's tensors were replaced (moved to
        another device, dtype or memory format). A compiled inpainter is used as it is:
        the compiler fuses batch norm itself.
        """
        if getattr(self.inpainter, "_compiled_call_impl", None) is not None:
            self.inpainter.eval()
            return self.inpainter
        if self._folded is None or not self._folded.made_from(self.inpainter):
            self._folded = None  # let a stale copy go before the new one is made
            self._folded = FoldedCopy(self.inpainter)
        else:
            self._folded.refresh()
        return self._folded.module

    def instructor_masks(self, images: Tensor, generator: torch.Generator | None = None
                         ) -> Tensor:
        """Binary holes the instructor would make now (it is put in eval mode)."""
        assert self.instructor is not None
        cells = self.instructor_cells(images, generator)
        return self.instructor.upsample(cells, images.shape[-2:])

    def instructor_cells(self, images: Tensor, generator: torch.Generator | None = None
                         ) -> Tensor:
        """The instructor's hard cell mask ``(B, 1, h, w)`` now (it is put in eval mode)."""
        assert self.instructor is not None
        self.instructor.eval()
        with torch.no_grad():
            # hard top-k cells: the paper's alpha = 100 sigmoid, binarised, is the same
            out = self.instructor(self._input(INSTRUCTOR, images), generator=generator)
            return self.instructor.hard_mask(out.scores)

    # --------------------------------------------------------------------- training step
    def training_step(self, batch: dict, batch_idx: int) -> None:
        images = batch["image"]  # augmented and normalised on this device
        phase = self.phase  # constant within an accumulation window (see the docstring)
        window = accumulation_window(batch_idx, self.accumulate_grad_batches,
                                     self._batches_per_epoch())
        g = self._generator(images.device, window[0])
        if phase == INSTRUCTOR:
            self._instructor_step(images, g, window)
        elif phase == WARMUP:
            self._inpainter_step(images, self.random_policy(images, generator=g), window)
        else:  # the inpainter on the instructor's holes
            cells = self.instructor_cells(images, generator=g)
            mask = self.instructor.upsample(cells, images.shape[-2:])
            self._inpainter_step(images, mask, window, cells)
        self.log("train/phase", float(PHASES.index(phase)), on_step=True, on_epoch=False)
        every = int(self.hparams.finite_check_every_n_steps or 0)
        stepped = window[0] == window[1] - 1
        if every and stepped and (self.global_step % every == 0):
            self._raise_if_diverged()

    # ------------------------------------------------------------------ the two players
    def _inpainter_step(self, images: Tensor, mask: Tensor,
                        window: tuple[int, int] = (0, 1), cells: Tensor | None = None) -> None:
        """Restore ``mask``'s holes and learn from the error. ``cells``: the instructor's
        cell mask behind ``mask`` (None for random masks)."""
        self.inpainter.train()
        restored = self(images * (1.0 - mask))
        loss, parts = self.criterion(restored, images, mask)
        self._update(INPAINTER, loss, window)
        bs = images.shape[0]
        self.log("train/inpainter_loss", loss, batch_size=bs)
        for k, v in parts.items():
            self.log(f"train/inpainter_{k}", v, batch_size=bs)
        self._log_mask(mask, bs, cells)
        if cells is not None and self.reward_baseline is not None:
            with torch.no_grad():
                err = self.criterion.error_map(restored.detach(), images)
            self._update_baseline(cell_errors(err, cells.shape[-2:]), cells)
        self._keep_game_visuals(images, mask, restored)

    def _instructor_step(self, images: Tensor, g: torch.Generator,
                         window: tuple[int, int] = (0, 1)) -> None:
        """Erase cells where the frozen inpainter fails most: maximise its error under the
        soft mask (the instructor learns only through the mask), plus a small KL term."""
        assert self.instructor is not None
        self.instructor.train()
        self.inpainter.eval()
        out = self.instructor(self._input(INSTRUCTOR, images), generator=g)
        size = images.shape[-2:]
        settings = self.instructor_settings
        soft_cells = self.instructor.soft_mask(out.scores, alpha=settings["alpha_train"])
        soft = self.instructor.upsample(soft_cells, size)
        hard_cells = self.instructor.hard_mask(out.scores.detach())
        hard = self.instructor.upsample(hard_cells, size)
        with torch.no_grad():  # the frozen inpainter needs no autograd graph
            restored = self.frozen_inpainter()(self._input(INPAINTER, images * (1.0 - hard)))
            err = self.criterion.error_map(restored, images)
        reward, hole_error = self._reward(soft, soft_cells, hard_cells, err)
        loss = 1.0 - reward + settings["kl_weight"] * out.kl
        self._update(INSTRUCTOR, loss, window)
        bs = images.shape[0]
        self.log("train/instructor_loss", loss, batch_size=bs)
        self.log("train/instructor_kl", out.kl, batch_size=bs)
        self.log("train/hole_error", hole_error, batch_size=bs)
        if self.reward_baseline is not None:
            self.log("train/instructor_reward", reward, batch_size=bs)
        self._log_mask(hard, bs, hard_cells)
        self.log("mask/soft_entropy", mask_stats(soft.detach())["entropy"], batch_size=bs)
        self._keep_game_visuals(images, hard, restored)

    def _update(self, player: str, loss: Tensor, window: tuple[int, int] = (0, 1)) -> None:
        """Backward of ``player``'s ``loss`` for micro-batch ``window[0]`` of ``window[1]``;
        the player's optimizer steps after the last one. Gradients are averaged over the
        window and synchronised across DDP ranks only once."""
        opt = self._optimizer(player)
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

    def _optimizers(self) -> list:
        opts = self.optimizers()
        return opts if isinstance(opts, list) else [opts]

    def _optimizer(self, player: str):
        """The optimizer of ``player`` (see :meth:`configure_optimizers`)."""
        return self._optimizers()[PLAYERS.index(player)]

    # ------------------------------------------------------------------------ the reward
    def _reward(self, soft: Tensor, soft_cells: Tensor, hard_cells: Tensor, err: Tensor
                ) -> tuple[Tensor, Tensor]:
        """``(reward, hole_error)`` of the instructor's soft mask over the inpainter's
        per-pixel error ``err``."""
        if self.reward_baseline is None:  # the paper: the raw error in the soft holes
            hole_error = raw_reward(soft, err)
            return hole_error, hole_error
        # per cell: the error minus what the inpainter gets wrong at that position
        cell_err = cell_errors(err, soft_cells.shape[-2:])
        reward, hole_error = self.relative_reward(soft_cells.float(), cell_err)
        self._update_baseline(cell_err, hard_cells)  # after use: no batch sees itself
        return reward, hole_error

    def relative_reward(self, soft_cells: Tensor, cell_err: Tensor) -> tuple[Tensor, Tensor]:
        """``(reward, hole_error)`` of soft cell masks ``(B, 1, h, w)`` over the per-cell
        errors ``cell_err``: the soft-mask-weighted mean of ``cell_err - baseline`` (0
        when every cell's error is its position's baseline) and of ``cell_err`` (the raw
        reward, for the logs) at this run's baseline (:func:`sssi.tasks.reward.relative_reward`).
        Does not update the baseline."""
        assert self.reward_baseline is not None
        baseline = self.reward_baseline.value(tuple(cell_err.shape[-2:]), cell_err.device)
        return relative_reward(soft_cells, cell_err, baseline)

    @torch.no_grad()
    def _update_baseline(self, cell_err: Tensor, hard_cells: Tensor) -> None:
        """Fold the batch's hole error per cell position into the reward baseline; the
        sums are added over DDP ranks first so every rank keeps the same baseline."""
        assert self.reward_baseline is not None
        holes = hard_cells.float()
        stacked = torch.stack([(cell_err.float() * holes).sum(dim=(0, 1)),
                               holes.sum(dim=(0, 1))])
        if self._trainer is not None and self.trainer.world_size > 1:
            stacked = self.trainer.strategy.reduce(stacked, reduce_op="sum")
        self.reward_baseline.update(stacked[0], stacked[1])

    # ------------------------------------------------------------------ logs and visuals
    def _log_mask(self, mask: Tensor, bs: int, cells: Tensor | None = None) -> None:
        for k, v in mask_stats(mask.detach()).items():
            self.log(f"mask/{k}", v, batch_size=bs)
        if cells is not None:  # the instructor's cells: watch for the edge shortcut
            for k, v in cell_border_stats(cells).items():
                self.log(f"mask/{k}", v, batch_size=bs)

    def _keep_game_visuals(self, images: Tensor, mask: Tensor, restored: Tensor) -> None:
        """A few images for the image grid (``callbacks.image_grid``) every
        ``task.image_every_n_steps`` steps."""
        every = int(self.hparams.image_every_n_steps or 0)
        if every and self.global_step % every == 0:
            n = min(4, images.shape[0])
            self.keep_visuals("game", {"image": images[:n].detach(), "mask": mask[:n].detach(),
                                       "restored": restored[:n].detach().float()})

    # ------------------------------------------------------------------------ divergence
    def _watch(self, loss: Tensor, player: str) -> None:
        """Remember the first step whose loss is not finite, without a host sync."""
        i = PLAYERS.index(player)
        bad = ~torch.isfinite(loss.detach())
        unset = self._first_bad[i] < 0
        step = torch.tensor(self.global_step, device=self._first_bad.device)
        self._first_bad[i] = torch.where(bad & unset, step, self._first_bad[i])

    def _raise_if_diverged(self) -> None:
        first = self._first_bad.tolist()
        for player, step in zip(PLAYERS, first, strict=True):
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

    # ------------------------------------------------------------------------ validation
    def on_validation_epoch_start(self) -> None:
        self._val_cells = None
        self.pop_visuals("instructor_cells")  # a stale picture is not this epoch's

    def validation_step(self, batch: dict, batch_idx: int) -> None:
        images = batch["image"]  # augmented and normalised on this device
        g = torch.Generator(device=images.device)
        g.manual_seed(int(self.hparams.seed) + batch_idx)  # same masks every validation
        masks = {"random": self.random_policy(images, generator=g)}
        if self.instructor is not None:
            cells = self.instructor_cells(images, generator=g)
            masks["instructor"] = self.instructor.upsample(cells, images.shape[-2:])
            self._accumulate_cells(cells)
        for name, mask in masks.items():
            err = self.criterion.error_map(self(images * (1.0 - mask)), images)
            self.log(f"val/hole_error_{name}", (err * mask).sum() / mask.sum().clamp_min(1),
                     batch_size=images.shape[0], sync_dist=True)

    def _accumulate_cells(self, cells: Tensor) -> None:
        """Sum the hard cells per position over the validation set (on the device)."""
        total = cells.float().sum(dim=(0, 1))
        if self._val_cells is None:
            self._val_cells = [total, torch.tensor(float(cells.shape[0]), device=total.device)]
        elif self._val_cells[0].shape == total.shape:
            self._val_cells[0] += total
            self._val_cells[1] += cells.shape[0]
        else:  # windows of another size: another grid, not comparable position by position
            log.warning("validation: instructor grid %s differs from %s; batch left out of "
                        "the cell frequencies", tuple(total.shape),
                        tuple(self._val_cells[0].shape))

    def on_validation_epoch_end(self) -> None:
        """The mean hard instructor mask per cell ``(h, w)`` (the erase frequency of each
        position) over the validation set: logged as border statistics and kept for the
        image callback (visuals kind ``instructor_cells``)."""
        if self._val_cells is None:
            return
        stacked = torch.cat([self._val_cells[0].flatten(), self._val_cells[1].view(1)])
        if self.trainer.world_size > 1:  # every rank validated its share of the windows
            stacked = self.trainer.strategy.reduce(stacked, reduce_op="sum")
        grid = self._val_cells[0].shape
        frequency = (stacked[:-1] / stacked[-1].clamp_min(1)).view(grid)
        self._val_cells = None
        self.keep_visuals("instructor_cells", frequency)
        for k, v in cell_border_stats(frequency).items():
            self.log(f"val/{k}", v, sync_dist=True)  # equal on all ranks already

    # ------------------------------------------------------------------------ optimizers
    def configure_optimizers(self):
        """One optimizer per player, in the order of :data:`PLAYERS`."""
        hp, settings = self.hparams, self.instructor_settings
        opt_inp = self.build_optimizer(hp.inpainter_optimizer, self.inpainter.parameters(),
                                       "task.inpainter_optimizer")
        optimizers = [opt_inp]
        if settings is not None:
            optimizers.append(self.build_optimizer(settings["optimizer"],
                                                   self.instructor.parameters(),
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
            "has_instructor": self.instructor is not None,
        }

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        game = checkpoint.get("game")
        if game and dict(self.hparams.schedule or {}) != game.get("schedule"):
            log.warning("resuming with a different schedule than the checkpoint's: %s -> %s",
                        game.get("schedule"), dict(self.hparams.schedule or {}))
