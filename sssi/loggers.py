"""What sssi sends to W&B and TensorBoard beyond Lightning's defaults.

- :func:`log_config` logs the resolved run config to every logger; W&B gets it
  flattened to dotted keys (``data.label_fraction``), one column per key in its runs
  table and sweep panels.
- :func:`sweep_group` (the ``${sssi.sweep_group:}`` resolver) names the W&B group
  of the jobs of one Hydra multirun; :func:`wandb_offline` (``${sssi.wandb_offline:}``)
  keeps W&B offline unless ``WANDB_MODE`` says otherwise.
- :func:`read_offline_run` reads back what an offline W&B run recorded (config,
  summary, artifacts): offline runs keep everything in their binary ``run-*.wandb``
  file until ``wandb sync`` uploads it.

``wandb`` is imported only where a W&B logger is in use (the GPU image has none).
"""

from __future__ import annotations

import json
import logging
import os
import struct
import zlib
from collections.abc import Iterable, Iterator, Mapping
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


# ------------------------------------------------------------------ offline run files
_HEADER = b":W&B"
_BLOCK = 32768  # LevelDB log format, as wandb writes it
_RECORD_HEADER = 7


def _records(path: Path) -> Iterator[Any]:
    """The protobuf records of a ``run-*.wandb`` file."""
    from wandb.proto import wandb_internal_pb2 as pb

    data = path.read_bytes()
    if data[:4] != _HEADER:
        raise ValueError(f"{path}: not a W&B run file")
    pos, parts = 7, []
    while pos + _RECORD_HEADER <= len(data):
        left = _BLOCK - pos % _BLOCK
        if left < _RECORD_HEADER:  # block trailer padding
            pos += left
            continue
        crc, length, kind = struct.unpack("<IHB", data[pos : pos + _RECORD_HEADER])
        if kind == 0 and length == 0:
            pos += left  # zero padding to the end of the block
            continue
        chunk = data[pos + _RECORD_HEADER : pos + _RECORD_HEADER + length]
        if len(chunk) < length:  # a run still writing: stop at its last whole record
            break
        if kind not in (1, 2, 3, 4) or zlib.crc32(chunk, zlib.crc32(bytes([kind]))) != crc:
            raise ValueError(f"{path}: corrupt record at byte {pos}")
        pos += _RECORD_HEADER + length
        if kind in (1, 2):  # full, first
            parts = [chunk]
        else:  # middle, last
            parts.append(chunk)
        if kind in (1, 4):
            record = pb.Record()
            record.ParseFromString(b"".join(parts))
            yield record


def _apply(target: dict, items) -> None:
    for item in items:
        keys = list(item.nested_key) or [item.key]
        node = target
        for k in keys[:-1]:
            node = node.setdefault(k, {})
        node[keys[-1]] = json.loads(item.value_json)


def read_offline_run(run_dir: str | Path) -> dict[str, Any]:
    """What an offline W&B run folder (``.../wandb/offline-run-*``) recorded:
    ``{"id", "project", "group", "job_type", "config", "summary", "artifacts",
    "complete"}``; ``complete``: the run's exit record is there (a run still going, or
    one whose process died, lacks it).

    ``summary`` holds the final values; a metric with a summary aggregation (see
    :class:`sssi.callbacks.WandbSummary`) is a dict such as ``{"max": 0.71}``.
    ``artifacts`` lists ``{"name", "type", "aliases", "files"}``.
    """
    run_dir = Path(run_dir)
    files = sorted(run_dir.glob("run-*.wandb"))
    if not files:
        raise FileNotFoundError(f"{run_dir}: no run-*.wandb file")
    out: dict[str, Any] = {"config": {}, "summary": {}, "artifacts": [], "complete": False}
    for record in _records(files[0]):
        kind = record.WhichOneof("record_type")
        if kind == "run":
            r = record.run
            out.update(id=r.run_id, project=r.project, group=r.run_group, job_type=r.job_type)
            _apply(out["config"], r.config.update)
            _apply(out["summary"], r.summary.update)
        elif kind == "config":
            _apply(out["config"], record.config.update)
        elif kind == "summary":
            _apply(out["summary"], record.summary.update)
            for item in record.summary.remove:
                out["summary"].pop(item.key, None)
        elif kind == "artifact":
            a = record.artifact
            out["artifacts"].append({"name": a.name, "type": a.type, "aliases": list(a.aliases),
                                     "files": [e.path for e in a.manifest.contents]})
        elif kind == "exit":
            out["complete"] = True
    out["config"].pop("_wandb", None)
    return out
