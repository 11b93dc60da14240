"""Scaling a run across devices: global batch size, learning-rate rule, compilation.

Pure functions and one value, :class:`BatchPlan`, that ``sssi.train`` works out once
per run (from the datamodule's batch keys, the trainer's world size and the task's
accumulation) and hands to both the datamodule and the task, so neither reads the
other through the trainer. The rule:

    global batch = per-device batch x world size (devices x nodes) x accumulation

where accumulation is ``trainer.accumulate_grad_batches`` for automatic optimisation
(segmentation) and ``task.accumulate_grad_batches`` for the game (manual
optimisation, which Lightning's own accumulation does not support); each task says
which through ``BaseTask.micro_batches_per_step``.

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
import weakref
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
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


@dataclass(frozen=True)
class BatchPlan:
    """How many samples one optimizer step sees, and how they are split."""

    per_device: int
    world_size: int = 1
    accumulation: int = 1

    @property
    def global_batch(self) -> int:
        return global_batch_size(self.per_device, self.world_size, self.accumulation)

    def describe(self) -> str:
        return (f"global batch {self.global_batch} = {self.per_device} per device x "
                f"{self.world_size} devices x {self.accumulation} accumulation")


def plan_batches(batch_size: int, global_batch: int | None = None, world_size: int = 1,
                 accumulation: int = 1) -> BatchPlan:
    """The run's :class:`BatchPlan`: ``data.batch_size`` per device, or, when
    ``data.global_batch_size`` is set, the per-device batch that gives it (a
    :class:`ConfigError` naming the key when world size x accumulation does not divide it)."""
    per_device = batch_size if global_batch is None else \
        per_device_batch_size(global_batch, world_size, accumulation)
    return BatchPlan(int(per_device), int(world_size), int(accumulation))


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


def scale_learning_rates(plan: BatchPlan | None, optimizers: Iterable[torch.optim.Optimizer],
                         options: Mapping | None, announce: bool = True) -> float:
    """Multiply every param group's ``lr`` of ``optimizers`` by the ``task.scale_lr``
    factor at ``plan``'s global batch (call before creating the schedulers, which then
    start from the scaled rates); log the numbers once when ``announce``. Returns the
    factor (1.0 when disabled)."""
    opts = scale_lr_options(options)
    if opts is None:
        return 1.0
    if plan is None:
        raise ConfigError("task.scale_lr.enabled=true needs the run's batch plan: train with "
                          "sssi.train, or set task.batch_plan = sssi.scaling.plan_batches(...) "
                          "before fitting")
    factor = lr_scale_factor(plan.global_batch, opts["base_batch_size"], opts["rule"])
    lrs = []
    for opt in optimizers:
        for group in opt.param_groups:
            group["lr"] = group["lr"] * factor
            lrs.append(group["lr"])
    if announce:
        log.info("scale_lr: %s; learning rates x %.4g (%s rule, base batch %d) -> %s",
                 plan.describe(), factor, opts["rule"], opts["base_batch_size"],
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
        if module is not None and not is_compiled(module):
            module.compile(**opts)
            _COMPILED.add(module)
    return True


#: the modules :func:`compile_in_place` compiled (weakly held: a module that is gone
#: leaves the set by itself)
_COMPILED: weakref.WeakSet[nn.Module] = weakref.WeakSet()


def is_compiled(module: nn.Module) -> bool:
    """Whether :func:`compile_in_place` compiled ``module`` (torch keeps no public mark)."""
    return module in _COMPILED


# ------------------------------------------------------------------------ precision
#: ``/proc/cpuinfo`` flags of bf16 matrix units (Intel AMX), where bf16 autocast runs
#: convolutions 2-3x faster than fp32 (``experiments/benchmarks/RESULTS.md``)
BF16_CPU_FLAGS = ("amx_bf16",)


def cpu_flags(cpuinfo: str | None = None) -> set[str]:
    """The ``flags`` of the first processor in ``/proc/cpuinfo`` (``cpuinfo``: its text,
    for tests); empty where the file does not exist (not Linux)."""
    if cpuinfo is None:
        try:
            with open("/proc/cpuinfo", encoding="utf-8", errors="replace") as fh:
                cpuinfo = fh.read()
        except OSError:
            return set()
    for line in cpuinfo.splitlines():
        key, _, value = line.partition(":")
        if key.strip() == "flags":
            return set(value.split())
    return set()


def cpu_has_bf16_units(cpuinfo: str | None = None) -> bool:
    """Whether this CPU has bf16 matrix units: one of :data:`BF16_CPU_FLAGS` among its
    :func:`cpu_flags`. False where they cannot be read: fp32 is the safe choice."""
    return any(flag in cpu_flags(cpuinfo) for flag in BF16_CPU_FLAGS)


def auto_precision(accelerator: str, cuda_bf16: bool | None = None,
                   cpuinfo: str | None = None) -> tuple[str, str]:
    """``trainer.precision=auto``: ``(precision, why)``. ``bf16-mixed`` on a GPU that
    supports bf16 and on a CPU with bf16 matrix units, ``32-true`` elsewhere (a CPU
    without them runs bf16 slower than fp32). ``accelerator``: the trainer's
    (``auto`` means the GPU when there is one)."""
    if accelerator in ("gpu", "cuda") or (accelerator == "auto" and torch.cuda.is_available()):
        if cuda_bf16 is None:
            cuda_bf16 = torch.cuda.is_available() and torch.cuda.is_bf16_supported()
        return ("bf16-mixed", "GPU with bf16") if cuda_bf16 else \
            ("32-true", "GPU without bf16 support")
    if cpu_has_bf16_units(cpuinfo):
        return "bf16-mixed", "CPU with bf16 matrix units (AMX)"
    return "32-true", "CPU without bf16 matrix units (no amx_bf16 flag)"
