"""The pretext game as one module: who plays, on which holes, and what each player learns.

:class:`Game` owns the two players (the :class:`~sssi.game.inpainter.Inpainter` and, for
the game proper, the :class:`~sssi.game.instructor.Instructor`), the random holes of the
warm-up and of validation, the reconstruction loss, the per-position reward baseline
and the inpainter's folded copy that the instructor's steps run. Its methods are the
game's maths, tensors in and plain results out, so a step reads on one screen and is
testable without a Trainer:

- :meth:`Game.holes`: the holes of a phase (random in the warm-up, the instructor's in
  the inpainter's phase);
- :meth:`Game.inpainter_turn` / :meth:`Game.instructor_turn`: one player's loss, its
  logs, the pictures and what the reward baseline should learn (a :class:`Turn`);
- :meth:`Game.validation_errors`: the hole error on each kind of holes, and that of
  OpenCV's Telea inpainting on the same holes (the classical reference to beat).

Backward, optimizer steps, phases, DDP and logging are Lightning's work
(:class:`sssi.tasks.PretrainTask`); the one thing the game needs from there is the
sum over ranks of the baseline's update, which the task hands to
:meth:`Game.update_baseline`.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import torch
from torch import Tensor, nn

from sssi.errors import ConfigError
from sssi.game.inpainter import Inpainter
from sssi.game.instructor import Instructor
from sssi.game.loss import ReconstructionLoss
from sssi.game.masking import CellTally, cell_border_stats, mask_stats
from sssi.game.reference import telea_restore
from sssi.game.reward import PositionBaseline, cell_errors, raw_reward, relative_reward
from sssi.game.schedule import INPAINTER, INSTRUCTOR, WARMUP
from sssi.models.folding import FoldedCopy

#: The two players, in the order of their optimizers (and of the divergence watch).
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
        raise ConfigError(f"task.channels_last={value!r}: expected true, false or a "
                          f"list of players among {list(PLAYERS)}")
    return tuple(p for p in PLAYERS if p in names)


@dataclass
class Turn:
    """What one player's step gives the training loop."""

    #: the player's loss, to minimise
    loss: Tensor
    #: scalars to log, by their full metric name (``train/...``, ``mask/...``)
    logs: dict[str, Tensor] = field(default_factory=dict)
    #: the batch, its holes and the inpainter's restoration (for :meth:`visuals`)
    images: Tensor | None = None
    mask: Tensor | None = None
    restored: Tensor | None = None
    #: ``(2, h, w)``: the hole error summed per cell position and the holes counted
    #: there, for the reward baseline (None: nothing to learn from this step)
    baseline_sums: Tensor | None = None

    def visuals(self, n: int = 4) -> dict[str, Tensor]:
        """The first ``n`` images, holes and restorations, detached, for the image grid
        (made only when a picture is kept)."""
        assert self.images is not None and self.mask is not None and self.restored is not None
        return {"image": self.images[:n].detach(), "mask": self.mask[:n].detach(),
                "restored": self.restored[:n].detach().float()}


class ValidationTally:
    """An epoch of :meth:`Game.validation_errors`: the batch-weighted sums of the hole
    errors on random holes and Telea's on the same holes (their ratio says whether the
    inpainter beats the classical one), and the instructor's cells (:class:`CellTally`).
    Sums stay on the device until the epoch ends."""

    def __init__(self, device: torch.device | str = "cpu") -> None:
        self.errors = torch.zeros(3, device=device)  # random, telea, windows
        self.cells = CellTally()

    def add(self, errors: dict[str, Tensor], cells: Tensor | None, batch_size: int) -> None:
        self.errors += torch.stack([errors["random"].detach() * batch_size,
                                    errors["telea"].detach() * batch_size,
                                    errors["random"].new_tensor(float(batch_size))])
        if cells is not None:
            self.cells.add(cells)

    def ratio_to_telea(self, reduce: Callable[[Tensor], Tensor] = lambda t: t
                       ) -> Tensor | None:
        """The epoch's hole error over Telea's (below 1: the inpainter beats it); None
        without windows. ``reduce`` sums over processes (DDP ranks)."""
        sums = reduce(self.errors)
        return sums[0] / sums[1].clamp_min(1e-12) if sums[2] > 0 else None


class Game(nn.Module):
    """Inpainter against instructor (or, without an instructor, plain inpainting).

    Args:
        inpainter: the player that restores holes; its encoder is what the game is for.
        random_policy: the random holes (the baselines' only holes; the game's warm-up
            and validation holes).
        criterion: the inpainter's loss; its error map also scores validation and the
            instructor's reward.
        instructor: the player that chooses holes; None for the inpainting baselines.
        reward: ``raw`` (the paper: the inpainter's error under the instructor's soft
            mask) or ``relative`` (the error minus its moving average at that cell
            position, :class:`~sssi.game.reward.PositionBaseline`, so that the crop's
            edge, always hard, pays nothing).
        alpha_train: sharpness of the instructor's soft mask while it learns.
        kl_weight: weight of the instructor's KL term.
        baseline_momentum: weight of the old baseline in each update (``relative``).
        channels_last: the players that run in NHWC (:func:`channels_last_players`).
        fold_frozen: run the instructor's frozen inpainter with its batch norms folded
            into its convolutions (off for a compiled inpainter: the compiler fuses
            them itself).
        random_share: the share of each inpainter-phase batch that gets random holes
            instead of the instructor's (0, the paper: none). After the warm-up the
            paper's inpainter sees only the instructor's holes and forgets how to fill
            any others (its error on random holes rose 2x in the Dubai scaling study);
            a share keeps them in its diet.
    """

    def __init__(self, inpainter: Inpainter, random_policy: nn.Module,
                 criterion: ReconstructionLoss, instructor: Instructor | None = None, *,
                 reward: str = "raw", alpha_train: float = 1.0, kl_weight: float = 1e-6,
                 baseline_momentum: float = 0.9, channels_last: Sequence[str] = (),
                 fold_frozen: bool = True, random_share: float = 0.0) -> None:
        super().__init__()
        if not 0.0 <= float(random_share) <= 1.0:
            raise ConfigError(f"mask_policy.instructor.random_share={random_share!r}: "
                              "expected a share in [0, 1]")
        self.random_share = float(random_share)
        self.inpainter = inpainter
        self.instructor = instructor
        self.random_policy = random_policy
        self.criterion = criterion
        self.alpha_train = float(alpha_train)
        self.kl_weight = float(kl_weight)
        self.channels_last = tuple(channels_last)
        self.fold_frozen = fold_frozen
        # only then in the state dict, so checkpoints of raw runs keep their keys
        self.reward_baseline = PositionBaseline(baseline_momentum) \
            if instructor is not None and reward == "relative" else None
        # the inpainter with batch norm folded (see frozen_inpainter); not a module, so
        # it stays out of the state dict
        self._folded: FoldedCopy | None = None

    # ------------------------------------------------------------------ formats, sizes
    def input_multiple(self) -> int:
        """Window sides must be multiples of this: the encoders reduce by it, and the
        inpainter's decoder and the instructor's cells need whole steps."""
        multiple = self.inpainter.reduction
        if self.instructor is not None:
            multiple = math.lcm(multiple, self.instructor.cell_size)
        return multiple

    def apply_memory_format(self) -> None:
        """Put the players of ``channels_last`` in NHWC (their inputs follow, see
        :meth:`player_input`)."""
        for player in self.channels_last:
            network = getattr(self, player)
            if network is not None:  # the baselines have no instructor
                network.to(memory_format=torch.channels_last)

    def player_input(self, player: str, x: Tensor) -> Tensor:
        """``x`` in ``player``'s memory format: a convolution follows its input's format,
        so each player gets its own."""
        fmt = torch.channels_last if player in self.channels_last else torch.contiguous_format
        return x.contiguous(memory_format=fmt)

    # ------------------------------------------------------------------------ players
    def restore(self, masked: Tensor) -> Tensor:
        """The inpainter's restoration of ``masked`` images (holes filled with zeros)."""
        return self.inpainter(self.player_input(INPAINTER, masked))

    def frozen_inpainter(self) -> nn.Module:
        """The inpainter as the instructor's steps use it: in eval mode, not learning, with
        its batch norms folded into its convolutions (:class:`FoldedCopy`: the same
        outputs to float rounding, one pass over every activation less per forward).

        The copy is made once; when the inpainter's weights or statistics have changed
        since (it learned, a checkpoint was loaded) it is brought up to date in one pass
        over them, and made anew when the inpainter's tensors were replaced (moved to
        another device, dtype or memory format).
        """
        if not self.fold_frozen:
            self.inpainter.eval()
            return self.inpainter
        if self._folded is None or not self._folded.made_from(self.inpainter):
            self._folded = None  # let a stale copy go before the new one is made
            self._folded = FoldedCopy(self.inpainter)
        else:
            self._folded.refresh()
        return self._folded.module

    def instructor_cells(self, images: Tensor, generator: torch.Generator | None = None
                         ) -> Tensor:
        """The instructor's hard cell mask ``(B, 1, h, w)`` now (it is put in eval mode)."""
        assert self.instructor is not None
        self.instructor.eval()
        with torch.no_grad():
            # hard top-k cells: the paper's alpha = 100 sigmoid, binarised, is the same
            out = self.instructor(self.player_input(INSTRUCTOR, images), generator=generator)
            return self.instructor.hard_mask(out.scores)

    def instructor_masks(self, images: Tensor, generator: torch.Generator | None = None
                         ) -> Tensor:
        """Binary holes the instructor would make now (it is put in eval mode)."""
        assert self.instructor is not None
        cells = self.instructor_cells(images, generator)
        return self.instructor.upsample(cells, images.shape[-2:])

    def random_rows(self, batch_size: int) -> int:
        """How many of an inpainter-phase batch's images (the first ones; crops come in
        random order) get random holes: ``random_share`` of them, rounded."""
        return round(self.random_share * batch_size)

    def holes(self, phase: str, images: Tensor, generator: torch.Generator | None = None
              ) -> tuple[Tensor, Tensor | None]:
        """``(mask, cells)``: the holes the inpainter fills in ``phase`` (random in the
        warm-up; the instructor's in the inpainter's phase, with the cell mask behind
        them; ``cells`` is None for random holes). With a ``random_share``, the first
        :meth:`random_rows` images of the inpainter's phase get random holes, and their
        rows of ``cells`` are empty (no instructor holes there). The instructor's latent
        is drawn first, so a run without a share draws what it always did."""
        if phase == WARMUP:
            return self.random_policy(images, generator=generator), None
        if phase != INPAINTER or self.instructor is None:
            raise ValueError(f"the inpainter fills no holes in phase {phase!r}")
        cells = self.instructor_cells(images, generator)
        mask = self.instructor.upsample(cells, images.shape[-2:])
        n = self.random_rows(images.shape[0])
        if n:
            random = self.random_policy(images[:n], generator=generator).to(mask.dtype)
            mask = torch.cat([random, mask[n:]])
            cells = torch.cat([torch.zeros_like(cells[:n]), cells[n:]])
        return mask, cells

    # -------------------------------------------------------------------------- turns
    def inpainter_turn(self, images: Tensor, mask: Tensor, cells: Tensor | None = None
                       ) -> Turn:
        """Restore ``mask``'s holes: the inpainter's loss. ``cells``: the instructor's cell
        mask behind ``mask``, as :meth:`holes` gives it (None for random holes); then the
        hole error per position feeds the reward baseline, and the edge logs read the
        rows after the first :meth:`random_rows` (those hold the instructor's holes)."""
        self.inpainter.train()
        restored = self.restore(images * (1.0 - mask))
        loss, parts = self.criterion(restored, images, mask)
        chosen = None if cells is None else cells[self.random_rows(cells.shape[0]):]
        logs = {"train/inpainter_loss": loss,
                **{f"train/inpainter_{k}": v for k, v in parts.items()},
                **self._mask_logs(mask, chosen)}
        sums = None
        if cells is not None and self.reward_baseline is not None:
            with torch.no_grad():
                err = self.criterion.error_map(restored.detach(), images)
                sums = self.baseline_sums(cell_errors(err, cells.shape[-2:]), cells)
        return Turn(loss, logs, images, mask, restored, sums)

    def instructor_turn(self, images: Tensor, generator: torch.Generator | None = None
                        ) -> Turn:
        """Erase cells where the frozen inpainter fails most: the instructor's loss,
        ``1 - reward + kl_weight * KL``, where the reward is the inpainter's error under
        the soft mask (the instructor learns only through the mask)."""
        assert self.instructor is not None
        self.instructor.train()
        self.inpainter.eval()
        out = self.instructor(self.player_input(INSTRUCTOR, images), generator=generator)
        size = images.shape[-2:]
        soft_cells = self.instructor.soft_mask(out.scores, alpha=self.alpha_train)
        soft = self.instructor.upsample(soft_cells, size)
        hard_cells = self.instructor.hard_mask(out.scores.detach())
        hard = self.instructor.upsample(hard_cells, size)
        with torch.no_grad():  # the frozen inpainter needs no autograd graph
            restored = self.frozen_inpainter()(self.player_input(INPAINTER, images * (1.0 - hard)))
            err = self.criterion.error_map(restored, images)
        sums = None
        if self.reward_baseline is None:  # the paper: the raw error in the soft holes
            reward = hole_error = raw_reward(soft, err)
        else:  # per cell: the error minus what the inpainter gets wrong at that position
            cell_err = cell_errors(err, soft_cells.shape[-2:])
            reward, hole_error = self.relative_reward(soft_cells.float(), cell_err)
            sums = self.baseline_sums(cell_err, hard_cells)
        loss = 1.0 - reward + self.kl_weight * out.kl
        logs = {"train/instructor_loss": loss, "train/instructor_kl": out.kl,
                "train/hole_error": hole_error}
        if self.reward_baseline is not None:
            logs["train/instructor_reward"] = reward
        logs.update(self._mask_logs(hard, hard_cells))
        logs["mask/soft_entropy"] = mask_stats(soft.detach())["entropy"]
        return Turn(loss, logs, images, hard, restored, sums)

    # ------------------------------------------------------------------------- reward
    def relative_reward(self, soft_cells: Tensor, cell_err: Tensor) -> tuple[Tensor, Tensor]:
        """``(reward, hole_error)`` of soft cell masks ``(B, 1, h, w)`` over the per-cell
        errors ``cell_err``: the soft-mask-weighted mean of ``cell_err - baseline`` (0
        when every cell's error is its position's baseline) and of ``cell_err`` (the raw
        reward, for the logs) at the current baseline
        (:func:`sssi.game.reward.relative_reward`). Does not update the baseline."""
        assert self.reward_baseline is not None
        baseline = self.reward_baseline.value(tuple(cell_err.shape[-2:]), cell_err.device)
        return relative_reward(soft_cells, cell_err, baseline)

    @staticmethod
    def baseline_sums(cell_err: Tensor, hard_cells: Tensor) -> Tensor:
        """``(2, h, w)``: the hole error summed per cell position over the batch, and the
        number of holes there (what :meth:`update_baseline` folds in)."""
        holes = hard_cells.detach().float()
        return torch.stack([(cell_err.detach().float() * holes).sum(dim=(0, 1)),
                            holes.sum(dim=(0, 1))])

    @torch.no_grad()
    def update_baseline(self, sums: Tensor) -> None:
        """Fold ``sums`` (from :meth:`baseline_sums`, added over DDP ranks so that every
        rank keeps the same baseline) into the reward baseline."""
        assert self.reward_baseline is not None
        self.reward_baseline.update(sums[0], sums[1])

    # --------------------------------------------------------------------- validation
    @torch.no_grad()
    def validation_errors(self, images: Tensor, generator: torch.Generator | None = None
                          ) -> tuple[dict[str, Tensor], Tensor | None]:
        """``(errors, cells)``: the mean error in the holes by kind of holes: the
        inpainter's on ``random`` holes and, when there is an instructor, on the
        ``instructor``'s (the game works when it is the higher); and ``telea``, OpenCV's
        classical inpainting of the same random holes scored with the same error map
        (:mod:`sssi.game.reference`: an inpainter that does not beat it has not learned
        structure). ``cells``: the instructor's hard cells (None without one). The
        random holes are drawn first, then the instructor's latent."""
        random = self.random_policy(images, generator=generator)
        restored = {"random": (random, self.restore(images * (1.0 - random)))}
        cells = None
        if self.instructor is not None:
            cells = self.instructor_cells(images, generator)
            mask = self.instructor.upsample(cells, images.shape[-2:])
            restored["instructor"] = (mask, self.restore(images * (1.0 - mask)))
        restored["telea"] = (random, telea_restore(images, random))
        errors = {}
        for name, (mask, output) in restored.items():
            err = self.criterion.error_map(output, images)
            errors[name] = (err * mask).sum() / mask.sum().clamp_min(1)
        return errors, cells

    # ---------------------------------------------------------------------- internals
    @staticmethod
    def _mask_logs(mask: Tensor, cells: Tensor | None = None) -> dict[str, Tensor]:
        logs = {f"mask/{k}": v for k, v in mask_stats(mask.detach()).items()}
        if cells is not None and cells.shape[0]:  # the instructor's cells: the edge shortcut
            logs.update({f"mask/{k}": v for k, v in cell_border_stats(cells).items()})
        return logs

