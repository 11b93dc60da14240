"""Scaling a run across devices: global batch size, learning-rate rule, compilation.

Shared by the tasks and the datamodules (pure functions plus small helpers that read
a Lightning trainer). The rule:

    global batch = per-device batch x world size (devices x nodes) x accumulation

where accumulation is ``trainer.accumulate_grad_batches`` for automatic optimisation
(segmentation) and ``task.accumulate_grad_batches`` for the game (manual
optimisation, which Lightning's own accumulation does not support).

- ``data.global_batch_size`` (optional) fixes the global batch: the per-device batch
  becomes ``global / (world size x accumulation)``, which must divide exactly.
- ``task.scale_lr`` (optional) multiplies every optimizer's learning rate by
  ``global batch / base_batch_size`` (``rule: linear``, Goyal et al. 2017) or its
  square root (``rule: sqrt``), where ``base_batch_size`` is the global batch the
  configured learning rates were tuned for.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Iterable, Mapping
from typing import Any

import torch
from torch import nn

from sssi.errors import ConfigError

log = logging.getLogger(__name__)

RULES = ("linear", "sqrt")


# --------------------------------------------------------------------------- batch size
def global_batch_size(per_device: int, world_size: int = 1, accumulation: int = 1) -> int:
    """Samples per optimizer step over all devices."""
    return int(per_device) * int(world_size) * int(accumulation)


def per_device_batch_size(global_batch: int, world_size: int = 1, accumulation: int = 1,
                          key: str = "data.global_batch_size") -> int:
    """The per-device batch that gives ``global_batch`` samples per optimizer step.

    Raises :class:`ConfigError` naming ``key`` unless ``world_size x accumulation``
    divides ``global_batch``.
    """
    if isinstance(global_batch, bool) or not isinstance(global_batch, int) or global_batch < 1:
        raise ConfigError(f"{key}={global_batch!r}: expected a positive integer or null")
    parts = int(world_size) * int(accumulation)
    if global_batch % parts:
        raise ConfigError(
            f"{key}={global_batch} is not divisible by world size {world_size} x accumulation "
            f"{accumulation} = {parts}: use a multiple of {parts}")
    return global_batch // parts


# ------------------------------------------------------------------------ learning rate
def lr_scale_factor(global_batch: int, base_batch_size: int, rule: str = "linear") -> float:
    """Multiplier of the configured learning rates at ``global_batch``."""
    if isinstance(base_batch_size, bool) or not isinstance(base_batch_size, int) or \
            base_batch_size < 1:
        raise ConfigError(f"task.scale_lr.base_batch_size={base_batch_size!r}: expected a "
                          "positive integer (the global batch the learning rates were tuned for)")
    if rule not in RULES:
        raise ConfigError(f"task.scale_lr.rule={rule!r}: expected one of {', '.join(RULES)}")
    ratio = global_batch / base_batch_size
    return ratio if rule == "linear" else math.sqrt(ratio)


def scale_lr_options(options: Mapping | None) -> dict[str, Any] | None:
    """``task.scale_lr`` checked; None when disabled."""
    if not options:
        return None
    opts = dict(options)
    unknown = set(opts) - {"enabled", "base_batch_size", "rule"}
    if unknown:
        raise ConfigError(f"task.scale_lr has unknown keys {sorted(unknown)}: expected "
                          "enabled, base_batch_size, rule")
    if not opts.get("enabled", False):
        return None
    lr_scale_factor(1, opts.get("base_batch_size"), opts.get("rule", "linear"))  # validate
    return {"base_batch_size": opts["base_batch_size"], "rule": opts.get("rule", "linear")}


def accumulation(trainer) -> int:
    """Micro-batches per optimizer step: the task's own count under manual
    optimisation (the game), else the trainer's ``accumulate_grad_batches``."""
    module = getattr(trainer, "lightning_module", None)
    if module is not None and not module.automatic_optimization:
        return int(getattr(module, "accumulate_grad_batches", 1))
    value = getattr(trainer, "accumulate_grad_batches", 1)
    return int(value) if isinstance(value, int) else 1


def trainer_global_batch(trainer) -> tuple[int, int, int, int]:
    """``(global, per_device, world_size, accumulation)`` of a trainer's fit."""
    dm = getattr(trainer, "datamodule", None)
    per_device = getattr(dm, "batch_size", None)
    if not isinstance(per_device, int):
        raise ConfigError("task.scale_lr.enabled=true needs the per-device batch size: train "
                          "with a datamodule that has `batch_size` (data.batch_size)")
    world, acc = int(trainer.world_size), accumulation(trainer)
    return global_batch_size(per_device, world, acc), per_device, world, acc


def scale_learning_rates(trainer, optimizers: Iterable[torch.optim.Optimizer],
                         options: Mapping | None) -> float:
    """Multiply every param group's ``lr`` of ``optimizers`` by the ``task.scale_lr``
    factor (call before creating the schedulers, which then start from the scaled
    rates); log the numbers once. Returns the factor (1.0 when disabled)."""
    opts = scale_lr_options(options)
    if opts is None:
        return 1.0
    total, per_device, world, acc = trainer_global_batch(trainer)
    factor = lr_scale_factor(total, opts["base_batch_size"], opts["rule"])
    lrs = []
    for opt in optimizers:
        for group in opt.param_groups:
            group["lr"] = group["lr"] * factor
            lrs.append(group["lr"])
    if getattr(trainer, "is_global_zero", True):
        log.info("scale_lr: global batch %d = %d per device x %d devices x %d accumulation; "
                 "learning rates x %.4g (%s rule, base batch %d) -> %s", total, per_device,
                 world, acc, factor, opts["rule"], opts["base_batch_size"],
                 ", ".join(f"{lr:.4g}" for lr in lrs))
    return factor


# ---------------------------------------------------------------------------- compile
def compile_options(value: bool | Mapping | None, key: str = "task.compile"
                    ) -> dict[str, Any] | None:
    """``task.compile`` as ``torch.compile`` keyword arguments; None when off.

    ``false``/``null``: off; ``true``: defaults (inductor); a mapping: the keyword
    arguments themselves, e.g. ``{mode: max-autotune, backend: inductor}``.
    """
    if value is None or value is False:
        return None
    if value is True:
        return {}
    if isinstance(value, Mapping):
        opts = dict(value)
        allowed = {"fullgraph", "dynamic", "backend", "mode", "options", "disable"}
        unknown = set(opts) - allowed
        if unknown:
            raise ConfigError(f"{key} has unknown keys {sorted(unknown)}: expected "
                              f"torch.compile arguments ({', '.join(sorted(allowed))})")
        if opts.pop("disable", False):
            return None
        if "options" in opts and opts["options"] is not None:
            opts["options"] = dict(opts["options"])
        return opts
    raise ConfigError(f"{key}={value!r}: expected true, false or a mapping of torch.compile "
                      "arguments such as {mode: max-autotune}")


def compile_in_place(modules: Iterable[nn.Module | None], value: bool | Mapping | None,
                     key: str = "task.compile") -> bool:
    """``nn.Module.compile`` each module (in place: parameter names and state-dict keys
    stay unchanged, so checkpoints load with compilation on or off). Idempotent."""
    opts = compile_options(value, key)
    if opts is None:
        return False
    for module in modules:
        if module is not None and getattr(module, "_compiled_call_impl", None) is None:
            module.compile(**opts)
    return True
