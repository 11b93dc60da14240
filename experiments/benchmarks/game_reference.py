"""The authors' training step as a yardstick, run in the same process as sssi's.

``authors_steps(path, ...)`` loads ``../shared/tools/authors_step.py`` (the authors' two
steps rebuilt in plain PyTorch), sets up their players, optimizers and batch as their
script's ``main`` does, and returns one step of each kind. :class:`Interleaved` runs one
of them after each of sssi's steps, timed on its own and left out of sssi's loop time:
the two alternate step by step, so both see the same machine (a shared VM's speed drifts
by more than the differences measured).
"""

from __future__ import annotations

import importlib.util
from collections.abc import Callable

import lightning as L
import torch

from experiments.benchmarks.common import LoopTimer, median_seconds


def authors_steps(path: str, batch: int, size: int) -> dict[str, Callable[[], object]]:
    """The authors' step of each kind from their script at ``path``, loaded here, with
    their players, optimizers and batch set up as the script's ``main`` does."""
    spec = importlib.util.spec_from_file_location("authors_step", path)
    if spec is None or spec.loader is None:
        raise SystemExit(f"--reference {path}: not a Python file")
    a = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(a)
    torch.manual_seed(7)
    net, coach = a.drn_a_50(), a.resnet18_coach_vae(drop_ratio=0.75)
    net_opt = torch.optim.SGD(net.parameters(), lr=0.1, momentum=0.9, weight_decay=5e-4)
    coach_opt = torch.optim.Adam(coach.parameters(), lr=1e-5)
    inputs, targets, _ = a.make_batch(batch, size, torch.Generator().manual_seed(7))
    a.calibrate_bn(coach, inputs, alpha=1)  # eval-mode players with data statistics
    with torch.no_grad():
        coach.eval()
        masks, _, _ = coach(inputs, alpha=100)
    a.calibrate_bn(net, inputs * masks)
    return {
        "inpainter_random": lambda: a.inpainter_step(net, coach, net_opt, inputs, targets,
                                                     False),
        "inpainter": lambda: a.inpainter_step(net, coach, net_opt, inputs, targets, True),
        "instructor": lambda: a.instructor_step(net, coach, coach_opt, inputs, targets),
    }


class Interleaved(L.Callback):
    """After each of sssi's steps, one of the authors' (``step``), timed on its own (with
    ``timer``'s clock) and left out of ``timer``'s; those between two timed steps of
    sssi's are kept."""

    def __init__(self, step: Callable[[], object], timer: LoopTimer) -> None:
        self.step, self.timer = step, timer
        self.durations: list[float] = []

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        timer = self.timer
        if timer.last is not None and batch_idx >= timer.last:
            return  # nothing of sssi's is timed after this
        t0 = timer.clock()
        self.step()
        seconds = timer.clock() - t0
        timer.exclude(seconds)
        if batch_idx >= timer.skip - 1:
            self.durations.append(seconds)  # between two timed steps of sssi's

    @property
    def seconds_per_step(self) -> float:
        return median_seconds(self.durations)
