"""The game's settings checked at construction and set-up, so that a bad key ends the
run with one line naming it instead of a traceback in the first step."""

from __future__ import annotations

import inspect
from collections.abc import Iterable, Mapping
from typing import Any

from sssi.config import to_plain
from sssi.errors import ConfigError
from sssi.game.instructor import Instructor
from sssi.game.reward import REWARDS

#: ``mask_policy.instructor``: the keys that may be left out, with their values
INSTRUCTOR_DEFAULTS = {"enabled": True, "scheduler": None, "alpha_train": 1.0, "kl_weight": 1e-6,
                       "reward": "raw", "reward_baseline_momentum": 0.9, "random": None,
                       "random_share": 0.0}
#: ... and those that must be given
INSTRUCTOR_REQUIRED = ("network", "backbone", "optimizer")


def check_mask_policy(mask_policy: Mapping) -> dict[str, Any]:
    """``task.mask_policy`` (a ``conf/mask_policy/*.yaml`` node) as plain values, checked:
    ``{"random": <policy config>, "instructor": <settings> | None}``. ``instructor`` is
    None for the baselines (given as ``null`` or ``enabled: false``); otherwise it holds
    every key of ``conf/mask_policy/instructor.yaml``, defaults filled in. A bad key is
    a :class:`ConfigError` naming it."""
    mp = to_plain(mask_policy)
    if not isinstance(mp, Mapping) or "random" not in mp:
        raise ConfigError(f"mask_policy={mp!r}: expected {{random: <mask policy>, instructor: "
                          "<settings, or null>}} (the layout of conf/mask_policy/*.yaml)")
    unknown = sorted(set(mp) - {"random", "instructor"})
    if unknown:
        raise ConfigError(f"mask_policy has unknown keys {unknown}: expected random, instructor")
    _check_policy(mp["random"], "mask_policy.random")
    settings = mp.get("instructor")
    if settings is not None and not isinstance(settings, Mapping):
        raise ConfigError(f"mask_policy.instructor={settings!r}: expected the instructor's "
                          "settings (conf/mask_policy/instructor.yaml), or null for none")
    if settings is None or not settings.get("enabled", True):
        return {"random": dict(mp["random"]), "instructor": None}
    key = "mask_policy.instructor"
    unknown = sorted(set(settings) - set(INSTRUCTOR_DEFAULTS) - set(INSTRUCTOR_REQUIRED))
    if unknown:
        raise ConfigError(f"{key} has unknown keys {unknown}: expected "
                          f"{', '.join([*INSTRUCTOR_REQUIRED, *INSTRUCTOR_DEFAULTS])}")
    for name in INSTRUCTOR_REQUIRED:
        if not isinstance(settings.get(name), Mapping):
            raise ConfigError(f"{key}.{name}={settings.get(name)!r}: required (see "
                              "conf/mask_policy/instructor.yaml)")
    settings = {"enabled": True, **settings,
                **{k: v for k, v in INSTRUCTOR_DEFAULTS.items() if k not in settings}}
    if settings["reward"] not in REWARDS:
        raise ConfigError(f"{key}.reward={settings['reward']!r}: expected raw (the "
                          "inpainter's error) or relative (minus its per-position moving "
                          "average)")
    share = settings["random_share"]
    if isinstance(share, bool) or not isinstance(share, int | float) or not 0 <= share <= 1:
        raise ConfigError(f"{key}.random_share={share!r}: expected a share in [0, 1] of "
                          "each inpainter batch given random holes (0: the paper)")
    allowed = [p for p in inspect.signature(Instructor).parameters if p != "encoder"]
    unknown = sorted(set(settings["network"]) - set(allowed))
    if unknown:
        raise ConfigError(f"{key}.network has unknown keys {unknown}: expected arguments of "
                          f"sssi.game.instructor.Instructor ({', '.join(allowed)})")
    if settings["random"] is not None:
        _check_policy(settings["random"], f"{key}.random")
    return {"random": dict(mp["random"]), "instructor": settings}


def check_overrides_apply(mask_policy: Mapping, overrides: Iterable[str]) -> None:
    """Refuse a command-line ``mask_policy.random.KEY=VALUE`` that the game would not use.

    An experiment may give the game random holes of its own
    (``mask_policy.instructor.random``, e.g. 8 px blocks in ``demo_pretrain``); its
    warm-up and validation then never read ``mask_policy.random``, except where its own
    keys interpolate them (the ratio). A value given for such a key that did not reach the
    game's holes is a :class:`ConfigError` naming the key to set instead."""
    mp = to_plain(mask_policy)
    settings = mp.get("instructor") if isinstance(mp, Mapping) else None
    if not isinstance(settings, Mapping) or not settings.get("enabled", True):
        return
    own = settings.get("random")
    if not isinstance(own, Mapping):
        return
    for item in overrides:
        key, _, _ = item.lstrip("+~").partition("=")
        if not key.startswith("mask_policy.random."):
            continue
        name = key.removeprefix("mask_policy.random.")
        given = mp["random"].get(name)
        if own.get(name) != given:
            raise ConfigError(
                f"{key}={given!r} does not reach the game: this experiment gives it random "
                f"holes of its own (mask_policy.instructor.random, {name}={own.get(name)!r}); "
                f"set mask_policy.instructor.random.{name}={given!r}")


def _check_policy(policy: Any, key: str) -> None:
    if not isinstance(policy, Mapping) or "_target_" not in policy:
        raise ConfigError(f"{key}={policy!r}: expected a mask policy config with a _target_ "
                          "(e.g. sssi.game.masking.RandomBlocks)")


def check_window_sides(datamodule: object, multiple: int) -> None:
    """One error naming the key when the datamodule's training or validation windows
    (``data.crop_size``, ``data.val_window``: its ``windows`` block, or the object's own
    attributes) are not multiples of ``multiple``."""
    windows = getattr(datamodule, "windows", datamodule)
    for key in ("crop_size", "val_window"):
        size = getattr(windows, key, None)
        if size is None or int(size) % multiple == 0:
            continue
        lower = int(size) // multiple * multiple
        choices = " or ".join(str(v) for v in (lower, lower + multiple) if v > 0)
        raise ConfigError(f"data.{key}={size}: the game's networks need window sides that "
                          f"are multiples of {multiple}; use {choices}")
