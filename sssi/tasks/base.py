"""What every sssi task shares (after torchgeo's ``BaseTask``): hyperparameters, hooks
that build the models, losses and metrics, compilation, learning-rate scaling and the
hand-off of pictures to the image callbacks.

A task's configs (backbone, loss, optimizer, ...) arrive as plain mappings
(``_recursive_: false``) and are instantiated by the task, so that a checkpoint's
hyperparameters fully describe it and ``Task.load_from_checkpoint(path)`` rebuilds it
without Hydra's composition.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any, ClassVar

import lightning as L
import torch
from hydra.errors import InstantiationException
from hydra.utils import instantiate
from torch import nn
from torch.nn.parallel import DistributedDataParallel

from sssi.checkpoints import DATA_KEY, upgrade_targets
from sssi.errors import ConfigError
from sssi.scaling import (
    BatchPlan,
    compile_in_place,
    compile_options,
    scale_learning_rates,
    scale_lr_options,
)


class BaseTask(L.LightningModule):
    """A LightningModule built from plain hyperparameters.

    ``__init__(hparams)`` saves ``hparams`` (plain Python values, the subclass's
    ``__init__`` arguments), checks ``compile`` and ``scale_lr``, then calls
    :meth:`configure_models`, :meth:`configure_losses` and :meth:`configure_metrics`.

    - ``monitor`` / ``mode``: the validation metric that says how well the task does
      and whether higher (``max``) or lower (``min``) is better; ``sssi.train`` returns
      it to Hydra's sweepers and the W&B summary keeps its best value.
    - ``find_unused_parameters``: whether DDP must look for parameters that get no
      gradient in a step; ``sssi.train`` then picks the Lightning strategy that does.
    - :meth:`compiled_modules`: what ``task.compile`` compiles, in place, when fitting.
    - :meth:`micro_batches_per_step`: the accumulation that makes one optimizer step;
      ``sssi.train`` puts it into the run's :class:`~sssi.scaling.BatchPlan` and sets
      ``batch_plan``, which :meth:`scale_learning_rates` (``task.scale_lr``) reads.
    - :meth:`keep_visuals` / :meth:`pop_visuals`: pictures for the image callbacks, by
      kind (``sssi.callbacks``); popping a kind the task never keeps gives None.
    """

    monitor: ClassVar[str | None] = None
    mode: ClassVar[str] = "min"
    find_unused_parameters: bool = False

    def __init__(self, hparams: Mapping[str, Any]) -> None:
        super().__init__()
        # a checkpoint written before a class moved names its old place
        self.save_hyperparameters(upgrade_targets(dict(hparams)))
        compile_options(self.hparams.get("compile"))  # fail early on a bad task.compile
        scale_lr_options(self.hparams.get("scale_lr"))  # and on a bad task.scale_lr
        self._visuals: dict[str, Any] = {}
        self.batch_plan: BatchPlan | None = None  # set by sssi.train before fitting
        self.configure_models()
        self.configure_losses()
        self.configure_metrics()

    # ------------------------------------------------------------------------ hooks
    def configure_models(self) -> None:
        """Build the networks from ``self.hparams``."""
        raise NotImplementedError

    def configure_losses(self) -> None:
        """Build the losses from ``self.hparams`` (none by default)."""

    def configure_metrics(self) -> None:
        """Build the metrics (none by default)."""

    def compiled_modules(self) -> Iterable[nn.Module | None]:
        """The modules ``task.compile`` compiles (None entries are skipped)."""
        return ()

    # ---------------------------------------------------------------------- shared
    def setup(self, stage: str) -> None:
        if stage == "fit":  # in place: state-dict keys stay those of the plain modules
            compile_in_place(self.compiled_modules(), self.hparams.get("compile"))

    def on_fit_start(self) -> None:
        # After the strategy wrapped the module: a task whose steps leave parameters
        # without a gradient needs DDP to find them (sssi.train picks that variant; a
        # strategy given by hand may not).
        model = self.trainer.strategy.model
        if self.find_unused_parameters and isinstance(model, DistributedDataParallel) and \
                not model.find_unused_parameters:
            raise ConfigError(
                f"trainer.strategy: {type(self).__name__} leaves some parameters without a "
                "gradient in a step, so DDP must find unused parameters; use trainer."
                "strategy=ddp_find_unused_parameters_true (or a DDPStrategy with "
                "find_unused_parameters: true)")

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        """Keep the datamodule's state (bands, normalisation) under one key that does not
        depend on the datamodule's class (``sssi.checkpoints.data_state`` reads it)."""
        datamodule = getattr(self._trainer, "datamodule", None) if self._trainer else None
        if datamodule is not None:
            checkpoint[DATA_KEY] = datamodule.state_dict()

    def input_multiple(self) -> int:
        """Window sides the networks need to be multiples of (1: any); ``sssi.train``
        checks the datamodule's windows against it before fitting."""
        return 1

    def micro_batches_per_step(self, trainer_accumulation: int) -> int:
        """Batches per optimizer step: Lightning's ``trainer.accumulate_grad_batches``
        under automatic optimisation (a task that steps by hand overrides this)."""
        return int(trainer_accumulation)

    def scale_learning_rates(self, optimizers: Iterable[torch.optim.Optimizer]) -> float:
        """Multiply the optimizers' rates as ``task.scale_lr`` says at ``batch_plan``'s
        global batch (call before creating the schedulers, which then start from the
        scaled rates); the factor."""
        trainer = self._trainer
        announce = trainer is None or getattr(trainer, "is_global_zero", True)
        return scale_learning_rates(self.batch_plan, optimizers, self.hparams.get("scale_lr"),
                                    announce=announce)

    @staticmethod
    def build_optimizer(config: Mapping, params: Any, key: str) -> torch.optim.Optimizer:
        """``config`` (a partial ``torch.optim`` config) over ``params``; a value the
        optimizer refuses (a negative rate, an unknown argument) is a
        :class:`~sssi.errors.ConfigError` naming ``key``."""
        return _built(key, lambda: instantiate(config)(params=params))

    @staticmethod
    def build_scheduler(config: Mapping, optimizer: torch.optim.Optimizer, key: str) -> Any:
        """``config`` (a partial ``torch.optim.lr_scheduler`` config) over ``optimizer``,
        with the errors of :meth:`build_optimizer`."""
        return _built(key, lambda: instantiate(config)(optimizer=optimizer))

    def optimizer_list(self) -> list:
        """Lightning's optimizers as a list, also when there is one (manual optimisation)."""
        opts = self.optimizers()
        return opts if isinstance(opts, list) else [opts]

    def step_schedulers(self) -> None:
        """Step every learning-rate scheduler once (manual optimisation, per epoch)."""
        schedulers = self.lr_schedulers() or []
        for sch in schedulers if isinstance(schedulers, list) else [schedulers]:
            sch.step()

    def sum_over_ranks(self, value: torch.Tensor) -> torch.Tensor:
        """``value`` summed over DDP ranks (itself on one process)."""
        if self._trainer is not None and self.trainer.world_size > 1:
            return self.trainer.strategy.reduce(value, reduce_op="sum")
        return value

    def keep_visuals(self, kind: str, value: Any) -> None:
        """Keep ``value`` for the image callback of ``kind`` (replacing an older one)."""
        self._visuals[kind] = value

    def pop_visuals(self, kind: str) -> Any:
        """What was kept for ``kind``, once; None when nothing was."""
        return self._visuals.pop(kind, None)


def _built(key: str, build: Any) -> Any:
    try:
        return build()
    except (ValueError, TypeError, InstantiationException) as exc:
        raise ConfigError(f"{key}: {exc}") from exc
