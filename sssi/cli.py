"""What the three entry points share: where the configs are and how errors end a run.

Errors caused by input a user can fix (:class:`~sssi.errors.SssiError`, also when
Hydra wrapped one while instantiating a config) end the run with one ``error:`` line
naming the file or key, and exit status 1; anything else is a bug and keeps its
traceback.
"""

from __future__ import annotations

import sys
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

from hydra.errors import InstantiationException
from omegaconf import DictConfig
from omegaconf.errors import OmegaConfBaseException

from sssi.errors import SssiError

CONFIG_DIR = str(Path(__file__).resolve().parent.parent / "conf")

T = TypeVar("T")


def user_error(exc: BaseException | None) -> SssiError | None:
    """The :class:`SssiError` behind ``exc``, also when Hydra wrapped it."""
    seen = set()
    while exc is not None and id(exc) not in seen:
        if isinstance(exc, SssiError):
            return exc
        seen.add(id(exc))
        exc = exc.__cause__ or exc.__context__
    return None


def run_or_exit(run: Callable[[DictConfig], T], cfg: DictConfig) -> T:
    """``run(cfg)``; a user error becomes one ``error:`` line on stderr and exit 1."""
    try:
        return run(cfg)
    except (SssiError, InstantiationException, OmegaConfBaseException) as exc:
        err = user_error(exc)
        if err is None:
            raise
        print(f"error: {err}", file=sys.stderr)
        sys.exit(1)

