"""Who plays when in the pretext game, and the seeds of its random draws: pure arithmetic.

No Lightning and no tensors here: :class:`sssi.tasks.pretrain.PretrainTask` asks these
functions, with the epoch, the global step and the number of batches of an epoch, for
its phase, the accumulation window of a batch and the seed of a step's draws. Being
pure functions of those numbers is what makes a resumed run land in the same phase
and draw the same masks.

Schedules (``task.schedule.mode``):
- ``phases`` (the paper): ``warmup_epochs`` of the inpainter on random masks, then
  ``rounds`` x [``instructor_epochs`` with the inpainter frozen, ``inpainter_epochs``
  on instructor masks]; after the last round the inpainter keeps training on
  instructor masks.
- ``alternate`` (ADIOS-style): after the warm-up, ``inpainter_steps`` inpainter steps
  then ``instructor_steps`` instructor steps, repeated.

The phase after the warm-up is named after the player that learns in it, so
``INSTRUCTOR`` and ``INPAINTER`` are also the two players' names.
"""

from __future__ import annotations

from dataclasses import dataclass

from sssi.errors import SssiError

WARMUP, INSTRUCTOR, INPAINTER = "warmup", "instructor", "inpainter"
PHASES = (WARMUP, INSTRUCTOR, INPAINTER)


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
        for key in ("warmup_epochs", "rounds"):
            if getattr(self, key) < 0:
                raise SssiError(f"task.schedule.{key}={getattr(self, key)}: expected >= 0")

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


def warmup_end_step(warmup_epochs: int, batches_per_epoch: float, k: int = 1) -> int:
    """The global step that ends the warm-up: ``warmup_epochs`` epochs of optimizer
    steps, an epoch being ``batches_per_epoch`` batches in windows of ``k`` (the last
    window of an epoch may be shorter, and still steps). Steps per epoch are fixed for
    a run, so this is known from the start; 0 for an endless epoch (``inf`` batches)."""
    if batches_per_epoch == float("inf"):
        return 0
    steps = -(-int(batches_per_epoch) // k)  # optimizer steps per epoch
    return int(warmup_epochs * steps)


def accumulation_window(batch_idx: int, k: int = 1,
                        batches_per_epoch: float = float("inf")) -> tuple[int, int]:
    """``(index, size)`` of batch ``batch_idx``'s accumulation window of ``k`` micro-
    batches: the optimizer steps after micro-batch ``size - 1``; an epoch's last window
    may be shorter (``batches_per_epoch`` is not a multiple of ``k``)."""
    if k == 1:
        return 0, 1
    micro = batch_idx % k
    if batches_per_epoch == float("inf"):
        return micro, k
    return micro, min(k, int(batches_per_epoch) - (batch_idx - micro))


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
