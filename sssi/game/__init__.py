"""The pretext game's wing: everything the instructor / inpainter game is made of.

Read it in this order:

- :mod:`sssi.game.masking`: the random hole policies (``(images) -> masks``, 1 = hole)
  and the statistics of masks;
- :mod:`sssi.game.inpainter` and :mod:`sssi.game.instructor`: the two players;
- :mod:`sssi.game.loss`: the inpainter's reconstruction loss and error map;
- :mod:`sssi.game.reward`: what the instructor maximises (raw or position-relative);
- :mod:`sssi.game.schedule`: who plays when, and the seeds of each step's draws;
- :mod:`sssi.game.config`: the ``mask_policy`` settings, checked;
- :mod:`sssi.game.game`: :class:`Game`, the players, holes, loss and reward in one
  module whose methods return plain results.

Everything here is tensors in, tensors out: no Lightning, Hydra or files
(:class:`sssi.tasks.PretrainTask` runs the game under Lightning). Generic networks the
game uses (the backbone registry, batch-norm folding, the transposed-convolution path)
live in :mod:`sssi.models`.
"""

from sssi.game.game import PLAYERS, Game, Turn
from sssi.game.inpainter import Inpainter
from sssi.game.instructor import Instructor, InstructorOutput
from sssi.game.loss import ReconstructionLoss
from sssi.game.masking import CenterHole, MaskPolicy, RandomBlocks, RandomPatches
from sssi.game.reward import PositionBaseline
from sssi.game.schedule import Schedule

__all__ = [
    "PLAYERS",
    "CenterHole",
    "Game",
    "Inpainter",
    "Instructor",
    "InstructorOutput",
    "MaskPolicy",
    "PositionBaseline",
    "RandomBlocks",
    "RandomPatches",
    "ReconstructionLoss",
    "Schedule",
    "Turn",
]
