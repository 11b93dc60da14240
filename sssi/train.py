"""Training entry point: ``python -m sssi.train [+experiment=NAME] [key=value ...]``.

Composes ``conf/train.yaml``, builds the datamodule (the one the task needs), the task,
the loggers, callbacks and the Trainer from their ``_target_`` configs, fits, then
tests. Errors caused by input a user can fix (a missing tile, a corrupt GeoTIFF, a bad
value) end the run with one line naming the file or key and exit status 1.

Lightning and torch are imported when a run starts, not with this module: importing
Lightning alone takes seconds (~7 s on a 2-core VM), and a config typo, which Hydra
reports before :func:`main` runs, should not wait for it.
"""

from __future__ import annotations

import json
import logging
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

import hydra
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig, OmegaConf

import sssi.config  # noqa: F401  (registers the ${sssi.*} resolvers)
from sssi.cli import CONFIG_DIR, other_shard, run_or_exit, sweep_entry
from sssi.errors import ConfigError, DataError
from sssi.loggers import finish, log_config
from sssi.utils.io import atomic_write_text

if TYPE_CHECKING:
    import lightning as L

    from sssi.scaling import BatchPlan

log = logging.getLogger("sssi.train")


def instantiate_group(cfg: DictConfig | None) -> list[Any]:
    """Instantiate every entry of a group like ``callbacks`` or ``logger`` (a dict of
    ``_target_`` configs); empty or null entries are skipped."""
    if not cfg:
        return []
    return [hydra.utils.instantiate(c) for c in cfg.values() if c and "_target_" in c]


def run(cfg: DictConfig) -> dict[str, float]:
    """Fit and/or test as ``cfg`` says; return the final metrics."""
    import lightning as L

    if other_shard(cfg.get("shard")):
        return {}
    output_dir = Path(cfg.paths.output_dir)
    done = output_dir / "metrics.json"
    if cfg.get("skip_if_done") and done.is_file():
        log.info("skipped: %s exists (skip_if_done=true)", done)
        return json.loads(done.read_text())
    ckpt = cfg.get("ckpt_path")
    if ckpt not in (None, "last") and not Path(str(ckpt)).expanduser().is_file():
        raise DataError(f"ckpt_path={ckpt}: file not found (a checkpoint file, `last` for this "
                        "run folder's last.ckpt, or null)")
    seed = cfg.get("seed")
    if isinstance(seed, bool) or not isinstance(seed, int):
        raise ConfigError(f"seed={seed!r}: expected an integer")
    L.seed_everything(seed, workers=True)
    if cfg.get("mask_policy") is not None and HydraConfig.initialized():
        from sssi.game.config import check_overrides_apply

        check_overrides_apply(cfg.mask_policy, HydraConfig.get().overrides.task)

    datamodule = build_datamodule(cfg)
    task: L.LightningModule = hydra.utils.instantiate(cfg.task)
    trainer: L.Trainer = hydra.utils.instantiate(
        cfg.trainer, callbacks=instantiate_group(cfg.get("callbacks")),
        logger=instantiate_group(cfg.get("logger")) or False, **trainer_overrides(cfg, task))
    task.batch_plan = connect(datamodule, task, trainer)
    if cfg.get("test", False) and cfg.get("train", True) and hasattr(datamodule, "will_test"):
        datamodule.will_test = True  # the test tiles are checked at set-up, not after fitting
    log_config(trainer.loggers, cfg)

    metrics: dict[str, float] = {}
    if cfg.get("train", True):
        try:
            trainer.fit(task, datamodule=datamodule, ckpt_path=_resume_from(trainer, cfg))
        except BaseException as stop:
            interrupted = _interruption(trainer, stop)
            if interrupted is stop:
                raise
            raise interrupted from None
        metrics.update(_floats(trainer.callback_metrics))
    if cfg.get("test", False) and cfg.data.get("test_split") is not None:
        ckpt = _best_checkpoint(trainer) if cfg.get("train", True) else cfg.get("ckpt_path")
        results = trainer.test(task, datamodule=datamodule, ckpt_path=ckpt)
        for r in results:
            metrics.update(_floats(r))
    if trainer.is_global_zero:
        atomic_write_text(output_dir / "metrics.json", json.dumps(metrics, indent=1,
                                                                    sort_keys=True))
        log.info("run folder: %s", output_dir)
    finish(trainer.loggers)  # close this job's W&B run (the next job of a sweep opens its own)
    return metrics


def build_datamodule(cfg: DictConfig) -> L.LightningDataModule:
    """``cfg.data`` as configured: its ``_target_`` is the datamodule the task needs
    (the data config's segmentation datamodule; ``task=pretrain`` chooses the pretext
    one)."""
    return hydra.utils.instantiate(cfg.data)


def connect(datamodule: L.LightningDataModule, task: L.LightningModule,
            trainer: L.Trainer) -> BatchPlan | None:
    """Where the task meets its datamodule, before anything is read: the datamodule's
    windows must suit the task's networks (:meth:`BaseTask.input_multiple`), and the
    run's :class:`~sssi.scaling.BatchPlan` is worked out once from the datamodule's
    batch keys, the trainer's world size and the task's accumulation, and applied to
    the datamodule (its per-device batch). Returns the plan; None for a datamodule
    without ``plan_batches`` (a user's own)."""
    from sssi.game.config import check_window_sides

    multiple = getattr(task, "input_multiple", lambda: 1)()
    if multiple > 1:
        check_window_sides(datamodule, multiple)
    if not hasattr(datamodule, "plan_batches"):
        return None
    per_step = getattr(task, "micro_batches_per_step", int)
    accumulation = per_step(trainer.accumulate_grad_batches)
    return datamodule.plan_batches(trainer.world_size, accumulation)


def strategy_for(task: L.LightningModule, strategy: Any) -> Any:
    """``trainer.strategy`` as ``task`` needs it: a task whose steps leave parameters
    without a gradient (``task.find_unused_parameters``: the game trains one player per
    step) gets Lightning's DDP variant that finds them (``ddp`` ->
    ``ddp_find_unused_parameters_true``, ``ddp_spawn`` -> ``ddp_spawn_find_...``).
    Other strategies, and strategy objects, are returned as they are."""
    from lightning.pytorch.strategies import StrategyRegistry

    if getattr(task, "find_unused_parameters", False) and isinstance(strategy, str):
        name = f"{strategy}_find_unused_parameters_true"
        if name in StrategyRegistry:
            return name
    return strategy


def trainer_overrides(cfg: DictConfig, task: L.LightningModule) -> dict[str, Any]:
    """Trainer arguments that sssi decides: the strategy the task needs (see
    :func:`strategy_for`), ``trainer.precision=auto`` resolved for this machine
    (:func:`sssi.scaling.auto_precision`, the choice logged), and checkpoints written
    atomically (:class:`~sssi.checkpoint_io.AtomicCheckpointIO`, unless
    ``trainer.plugins`` brings a checkpoint writer of its own)."""
    import torch
    from lightning.fabric.plugins.io.checkpoint_io import CheckpointIO

    from sssi.checkpoint_io import AtomicCheckpointIO
    from sssi.scaling import auto_precision

    out: dict[str, Any] = {}
    accelerator = str(cfg.trainer.get("accelerator", "auto"))
    if accelerator in ("gpu", "cuda") and not torch.cuda.is_available():
        why = "torch is built without CUDA" if torch.version.cuda is None else \
            "no CUDA GPU is visible"
        raise ConfigError(f"trainer.accelerator={accelerator}: {why} here (torch "
                          f"{torch.__version__}); use trainer=cpu, or trainer.accelerator=auto")
    plugins = [hydra.utils.instantiate(p) if OmegaConf.is_dict(p) and "_target_" in p else p
               for p in cfg.trainer.get("plugins") or []]  # names (strings) pass as they are
    if not any(isinstance(p, CheckpointIO) for p in plugins):
        plugins.append(AtomicCheckpointIO())
    out["plugins"] = plugins
    strategy = cfg.trainer.get("strategy")
    wanted = strategy_for(task, strategy)
    if wanted != strategy:
        log.info("trainer.strategy=%s -> %s (%s trains one player per step)", strategy,
                 wanted, type(task).__name__)
        out["strategy"] = wanted
    if str(cfg.trainer.get("precision")) == "auto":
        precision, why = auto_precision(str(cfg.trainer.get("accelerator", "auto")))
        log.info("trainer.precision=auto -> %s (%s)", precision, why)
        out["precision"] = precision
    return out


def _interruption(trainer: L.Trainer, stop: BaseException) -> BaseException:
    """What a fit that ended with ``stop`` raises: a signal the :class:`Preemption`
    callback saw (SIGTERM or SIGINT, whichever part of the fit it hit, including
    Lightning's own exits for them) becomes :class:`RunInterruptedError`; anything else is
    ``stop`` itself."""
    from sssi.callbacks import Preemption, RunInterruptedError, last_checkpoint_path

    if isinstance(stop, RunInterruptedError):
        return stop
    signums = [cb.signum for cb in trainer.callbacks
               if isinstance(cb, Preemption) and cb.signum is not None]
    if not signums:
        return stop
    last = last_checkpoint_path(trainer)
    return RunInterruptedError(signums[0], last if last is not None and last.is_file() else None)


def _resume_from(trainer: L.Trainer, cfg: DictConfig) -> str | None:
    """``ckpt_path``; ``last`` is the newest of this run's ``last.ckpt`` and the
    ``hpc_ckpt_N.ckpt`` that Lightning's SLURM requeue leaves in the run folder (a
    restarted job of a sweep with fixed folders, a requeued SLURM job), else a fresh
    start."""
    from sssi.callbacks import last_checkpoint_path

    ckpt = cfg.get("ckpt_path")
    if ckpt != "last":
        return _readable(ckpt) if ckpt is not None else None
    found = [p for p in (last_checkpoint_path(trainer),
                         *Path(trainer.default_root_dir).glob("hpc_ckpt_*.ckpt"))
             if p is not None and p.is_file()]
    if not found:
        return None
    newest = max(found, key=lambda p: p.stat().st_mtime_ns)
    log.info("resuming from %s", newest)
    return _readable(str(newest))


def _readable(ckpt: str) -> str:
    """``ckpt`` if it is a whole checkpoint archive; a truncated one (a copy cut short, a
    file from before checkpoints were written atomically) is one line saying what to do."""
    import zipfile

    if not zipfile.is_zipfile(ckpt):
        folder = Path(ckpt).parent
        raise DataError(f"ckpt_path={ckpt}: truncated or not a checkpoint; resume from an "
                        f"earlier one in {folder} (ckpt_path=PATH), or start afresh "
                        "(ckpt_path=null)")
    return ckpt


def _best_checkpoint(trainer: L.Trainer) -> str | None:
    cb = trainer.checkpoint_callback
    if cb is None:
        return None
    best = getattr(cb, "best_model_path", "")
    if best:
        return best
    last = getattr(cb, "last_model_path", "")
    return last or None


def _floats(metrics: dict) -> dict[str, float]:
    out = {}
    for k, v in metrics.items():
        try:
            out[k] = float(v)
        except (TypeError, ValueError):
            continue
    return out


@sweep_entry
@hydra.main(version_base="1.3", config_path=CONFIG_DIR, config_name="train")
def main(cfg: DictConfig) -> float | None:
    from sssi.callbacks import RunInterruptedError

    try:
        metrics = run_or_exit(run, cfg)
    except RunInterruptedError as stop:  # preempted or Ctrl-C: not a success, and resumable
        print(f"{stop}; resume with the same command and {resume_hint(cfg)}",
              file=sys.stderr)
        sys.exit(128 + stop.signum)
    return objective(cfg, metrics)


def resume_hint(cfg: DictConfig) -> str:
    """The overrides that resume this run in its own folder."""
    return f"hydra.run.dir={cfg.paths.output_dir} ckpt_path=last"


def objective(cfg: DictConfig, metrics: dict[str, float]) -> float | None:
    """The value for Hydra sweepers that optimise one: the task's ``monitor``
    (``val/mIoU`` for segmentation, ``val/hole_error_random`` for the game; its ``mode``
    says which way is better), from the test split when the run was tested."""
    monitor = getattr(hydra.utils.get_class(cfg.task._target_), "monitor", None)
    if not monitor:
        return None
    return metrics.get(monitor.replace("val/", "test/", 1), metrics.get(monitor))


if __name__ == "__main__":
    main()
