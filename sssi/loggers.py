"""What sssi sends to W&B and TensorBoard beyond Lightning's defaults.

- :func:`log_config` logs the resolved run config to every logger; W&B gets it
  flattened to dotted keys (``data.label_fraction``), one column per key in its runs
  table and sweep panels.
- :func:`sweep_group` (the ``${sssi.sweep_group:}`` resolver) names the W&B group
  of the jobs of one Hydra multirun; :func:`wandb_offline` (``${sssi.wandb_offline:}``)
  keeps W&B offline unless ``WANDB_MODE`` says otherwise.

``wandb`` is imported only where a W&B logger is in use (the GPU image has none).
"""

from __future__ import annotations

import logging
import os
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf

log = logging.getLogger(__name__)

# W&B run ids created by sssi's runs in this process: a multirun's jobs share the
# process, and Lightning's WandbLogger reuses a run still open instead of starting one.
_OWN_RUNS: set[str] = set()


def is_wandb(logger: Any) -> bool:
    """Whether ``logger`` is Lightning's W&B logger (without importing wandb)."""
    return type(logger).__name__ == "WandbLogger" and hasattr(logger, "log_image")


def wandb_runs(loggers: Iterable[Any]) -> list[Any]:
    """The W&B runs of ``loggers`` (created on first use); empty off rank zero."""
    runs = []
    for lg in loggers:
        if is_wandb(lg):
            run = lg.experiment
            if run is not None and hasattr(run, "define_metric"):
                runs.append(run)
    return runs


def flatten(config: Mapping, prefix: str = "", sep: str = ".") -> dict[str, Any]:
    """``{"data": {"label_fraction": 0.1}}`` -> ``{"data.label_fraction": 0.1}``.

    Lists stay values; an empty mapping stays an (empty) value so no key vanishes.
    """
    out: dict[str, Any] = {}
    for key, value in config.items():
        name = f"{prefix}{sep}{key}" if prefix else str(key)
        if isinstance(value, Mapping) and value:
            out.update(flatten(value, name, sep))
        else:
            out[name] = value
    return out


def log_config(loggers: Iterable[Any], cfg: DictConfig) -> None:
    """Log the resolved ``cfg`` to each logger: flattened to dotted keys for W&B,
    Lightning's default handling (nested dict) for the others."""
    params = OmegaConf.to_container(cfg, resolve=True)
    for lg in loggers:
        if is_wandb(lg):
            _finish_stale_run(lg)
            lg.log_hyperparams(flatten(params))
            run = getattr(lg, "_experiment", None)
            if run is not None and getattr(run, "id", None):
                _OWN_RUNS.add(run.id)
        else:
            lg.log_hyperparams(params)


def _finish_stale_run(logger: Any) -> None:
    """Finish the W&B run an earlier job of this process left open (Hydra's basic
    launcher runs a multirun's jobs one after another in one process); runs that
    sssi did not start are left alone."""
    if getattr(logger, "_experiment", None) is not None:
        return
    import wandb

    if wandb.run is not None and wandb.run.id in _OWN_RUNS:
        wandb.run.finish()


def finish(loggers: Iterable[Any]) -> None:
    """Finish the W&B runs of ``loggers`` (writes the summary; offline runs are then
    ready for ``wandb sync``). Other loggers flush on their own."""
    for lg in loggers:
        if is_wandb(lg) and getattr(lg, "_experiment", None) is not None:
            lg._experiment.finish()
            lg._experiment = None


# ------------------------------------------------------------------------ resolvers
def sweep_group(prefix: str | None = None) -> str:
    """W&B group of a run: in a Hydra multirun ``<prefix>-<sweep folder name>``
    (``finetune-2025-01-31_12-00-00``), the same for every job of the sweep; ""
    (no group) in a single run or outside a Hydra app."""
    try:
        from hydra.core.hydra_config import HydraConfig
        from hydra.types import RunMode

        if not HydraConfig.initialized():
            return ""
        hydra_cfg = HydraConfig.get()
        if hydra_cfg.mode != RunMode.MULTIRUN:
            return ""
        name = Path(str(hydra_cfg.sweep.dir)).name
    except Exception:  # a group name is never worth failing a run
        return ""
    prefix = str(prefix or "").strip()
    if prefix and not name.startswith(prefix):
        name = f"{prefix}-{name}"
    return name


def wandb_offline() -> bool:
    """``logger.wandb.offline``'s default: true unless ``WANDB_MODE`` asks for another
    mode (online, disabled); Lightning's ``offline=True`` overrides ``WANDB_MODE``."""
    return os.environ.get("WANDB_MODE", "offline").strip().lower() in ("offline", "dryrun")
