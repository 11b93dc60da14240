"""What the entry points share: where the configs are, how errors end a run, and which
third-party messages are noise.

Errors caused by input a user can fix (:class:`~sssi.errors.SssiError`, also when
Hydra wrapped one while instantiating a config) end the run with one ``error:`` line
naming the file or key, and exit status 1; anything else is a bug and keeps its
traceback. Messages that libraries print on every run without telling the user
anything (:data:`NOISE`) are dropped; every other warning stays.
"""

from __future__ import annotations

import functools
import inspect
import logging
import re
import sys
import warnings
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, NoReturn, TypeVar

from hydra.errors import InstantiationException
from hydra.experimental.callback import Callback
from hydra.utils import get_object
from omegaconf import DictConfig, ListConfig
from omegaconf.errors import OmegaConfBaseException

from sssi.errors import ConfigError, SssiError

_PACKAGE = Path(__file__).resolve().parent
#: The Hydra configs: the package's own copy when sssi is installed from a wheel
#: (``sssi/conf``), the repository's top-level ``conf/`` in a checkout or an editable
#: install. Add a folder of your own with Hydra's ``--config-dir DIR`` (or
#: ``hydra.searchpath=[file://DIR]``): its groups and experiments join these.
CONFIG_DIR = str(next((d for d in (_PACKAGE / "conf", _PACKAGE.parent / "conf") if d.is_dir()),
                      _PACKAGE.parent / "conf"))

T = TypeVar("T")
log = logging.getLogger(__name__)

#: Start of messages printed on every run that tell the user nothing (regexes):
NOISE = (
    # torch deprecated LeafSpec; Lightning's own pytree helper still builds one
    r"`isinstance\(treespec, LeafSpec\)` is deprecated",
    # an advertisement for a cloud logger, printed by every Trainer
    r"💡 Tip: For seamless cloud logging",
)


class _DropNoise(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        return not any(re.match(pattern, message) for pattern in NOISE)


_NOISE_FILTER = _DropNoise()


def quiet_noise() -> None:
    """Drop :data:`NOISE` from warnings and from Lightning's rank-zero log (idempotent)."""
    for pattern in NOISE:
        warnings.filterwarnings("ignore", message=pattern)
    for name in ("lightning.pytorch.utilities.rank_zero", "lightning.fabric.utilities.rank_zero"):
        logger = logging.getLogger(name)
        if _NOISE_FILTER not in logger.filters:
            logger.addFilter(_NOISE_FILTER)
    log_lightning_once()


def log_lightning_once() -> None:
    """Lightning's package logger prints through a console handler of its own *and*
    passes every record up to the root logger, which under Hydra has its console and
    ``.log`` file: each of Lightning's lines appeared twice. Where the root logger has
    handlers, Lightning's own is removed (importing Lightning is what adds it)."""
    if not logging.getLogger().handlers:
        return
    import lightning

    own = getattr(lightning, "_console", None)
    if own is not None:
        logging.getLogger("lightning").removeHandler(own)


def user_error(exc: BaseException | None) -> SssiError | None:
    """The :class:`SssiError` behind ``exc``, also when Hydra wrapped it; or, when Hydra
    could not build a config node because its class refused a value (a ``ValueError``
    or ``TypeError`` raised by the constructor, e.g. ``trainer.precision=17``), a
    :class:`ConfigError` naming that node."""
    seen = set()
    first = exc
    while exc is not None and id(exc) not in seen:
        if isinstance(exc, SssiError):
            return exc
        seen.add(id(exc))
        exc = exc.__cause__ or exc.__context__
    return _refused_value(first)


def _refused_value(exc: BaseException | None) -> ConfigError | None:
    if not isinstance(exc, InstantiationException):
        return None
    cause = exc.__cause__
    if not isinstance(cause, ValueError | TypeError):
        return None
    node = re.search(r"full_key: (\S+)", str(exc))
    target = re.search(r"target '([^']+)'", str(exc))
    where = node[1] if node else "config"
    if target:
        where += f" ({target[1]})"
    message = " ".join(str(cause).split())
    return ConfigError(f"{where}: {message}")


def run_or_exit(run: Callable[[DictConfig], T], cfg: DictConfig) -> T:
    """``run(cfg)``; a user error becomes one ``error:`` line on stderr and exit 1."""
    quiet_noise()
    try:
        check_booleans(cfg)
        return run(cfg)
    except (SssiError, InstantiationException, OmegaConfBaseException) as exc:
        err = user_error(exc)
        if err is None:
            raise
        _finish_wandb_quietly()
        fail(str(err))


def compose_entry(config_name: str, overrides: list[str], output_dir: str | Path
                  ) -> DictConfig:
    """The configuration ``python -m sssi.<config_name> OVERRIDES`` runs with, composed in
    this process (notebooks, experiments, tests), its output going to ``output_dir``."""
    from hydra import compose, initialize_config_dir
    from hydra.core.hydra_config import HydraConfig
    from omegaconf import open_dict

    with initialize_config_dir(config_dir=CONFIG_DIR, version_base="1.3"):
        cfg = compose(config_name, overrides=overrides, return_hydra_config=True)
        HydraConfig.instance().set_config(cfg)
        with open_dict(cfg):
            del cfg["hydra"]
            cfg.paths.output_dir = str(output_dir)
    return cfg


def fail(message: str) -> NoReturn:
    """End the command with ``error: MESSAGE`` on stderr and exit status 1 (also where
    Hydra would turn an exception into a warning: its callbacks)."""
    print(f"error: {message}", file=sys.stderr)
    raise SystemExit(1)


def _finish_wandb_quietly() -> None:
    """Close a W&B run that a failed set-up left open, as failed and without its closing
    banner: otherwise wandb prints it at exit, after (and in raw colour codes below) the
    one error line."""
    wandb = sys.modules.get("wandb")
    if wandb is not None and getattr(wandb, "run", None) is not None:
        try:
            wandb.termsetup(wandb.Settings(silent=True), None)  # its banner comes at exit
            wandb.finish(exit_code=1)
        except Exception:  # closing a log must never hide the user's error
            log.debug("closing the W&B run failed", exc_info=True)


def other_shard(shard: str | None) -> bool:
    """Whether this job of a Hydra multirun belongs to another lane: ``shard="i/n"`` keeps
    the jobs whose number modulo ``n`` is ``i``, so ``n`` processes started with
    ``shard=0/n`` ... ``shard=n-1/n`` share one sweep (run.sh's ``LANES``); ``null``
    keeps every job. Outside a multirun the job number is 0."""
    if shard in (None, ""):
        return False
    match = re.fullmatch(r"\s*(\d+)\s*/\s*(\d+)\s*", str(shard))
    if match is None or not int(match[1]) < int(match[2]):
        raise ConfigError(f"shard={shard!r}: expected 'i/n' with 0 <= i < n (e.g. 0/2), "
                          "or null")
    from hydra.core.hydra_config import HydraConfig

    num = HydraConfig.get().job.num if HydraConfig.initialized() else 0
    return num % int(match[2]) != int(match[1])


def flag(cfg: DictConfig, key: str, default: bool = False) -> bool:
    """``cfg[key]`` as a boolean: true/false (absent: ``default``); anything else is one
    :class:`ConfigError` naming the key (``bool("maybe")`` would be true)."""
    value = cfg.get(key, default)
    if not isinstance(value, bool):
        raise ConfigError(f"{key}={value!r}: expected true or false")
    return value


def check_booleans(cfg: DictConfig) -> None:
    """Refuse a non-boolean value for a boolean argument of any ``_target_`` in ``cfg``
    (``task.freeze_encoder=maybe`` would otherwise be taken as true): one
    :class:`ConfigError` naming the key. An argument counts as boolean when its
    annotation is exactly ``bool``; a target that cannot be imported is left to Hydra."""
    for key, node in _target_nodes(cfg):
        try:
            params = inspect.signature(get_object(str(node["_target_"]))).parameters
        except Exception:  # Hydra reports an unknown target itself
            continue
        for name, param in params.items():
            if param.annotation not in (bool, "bool") or name not in node:
                continue
            try:
                value = node[name]
            except OmegaConfBaseException:
                continue  # an interpolation that fails is reported where it is used
            if not isinstance(value, bool):
                raise ConfigError(f"{key}.{name}={value!r}: expected true or false")


def _target_nodes(node: Any, key: str = "") -> Iterator[tuple[str, DictConfig]]:
    if isinstance(node, DictConfig):
        if "_target_" in node:
            yield key, node
        for k in node:
            try:
                child = node[k]
            except OmegaConfBaseException:
                continue
            yield from _target_nodes(child, f"{key}.{k}" if key else str(k))
    elif isinstance(node, ListConfig):
        for i, child in enumerate(node):
            yield from _target_nodes(child, f"{key}[{i}]")


class OutputFolderCheck(Callback):
    """Hydra callback: refuse a run or sweep folder on a read-only, full or forbidden
    volume before Hydra writes its own files there (``.hydra/``, the log), which would
    otherwise end in a traceback from inside Hydra. Nothing is created by the check."""

    def on_run_start(self, config: DictConfig, **kwargs: Any) -> None:
        self._check(config.hydra.run.dir, "hydra.run.dir")

    def on_multirun_start(self, config: DictConfig, **kwargs: Any) -> None:
        self._check(config.hydra.sweep.dir, "hydra.sweep.dir")

    @staticmethod
    def _check(folder: str, key: str) -> None:
        from sssi.utils.io import volume_refusal

        reason = volume_refusal(Path(folder) / "x")
        if reason is not None:
            fail(f"{folder} ({key}): {reason}")


def sweep_entry(main: Callable[..., T]) -> Callable[..., T]:
    """Wrap a ``@hydra.main`` entry point that runs sweeps: from the command line (no
    arguments), ``hydra/launcher=slurm`` without its plugin is one line naming the extra
    (Hydra would stop at composing the config, without saying what to install); a call
    with a config (tests) passes straight through."""

    @functools.wraps(main)
    def entry(*args: Any, **kwargs: Any) -> T:
        if not args and not kwargs:
            require_launcher_plugin(sys.argv[1:])
        return main(*args, **kwargs)

    return entry


def require_launcher_plugin(argv: list[str]) -> None:
    """Exit with one line when ``argv`` asks for the SLURM launcher and its plugin
    (``hydra-submitit-launcher``, the ``slurm`` extra) is not installed."""
    import importlib.util

    if not any(re.fullmatch(r"hydra/launcher=(slurm|submitit_slurm)", a) for a in argv):
        return
    try:
        found = importlib.util.find_spec("hydra_plugins.hydra_submitit_launcher") is not None
    except ModuleNotFoundError:
        found = False
    if not found:
        fail('hydra/launcher=slurm needs hydra-submitit-launcher: pip install "sssi[slurm]"')


class LauncherCheck(Callback):
    """Hydra callback: a sweep sent to SLURM (``hydra/launcher=slurm``) from a machine
    without ``srun`` would end in submitit's traceback; say it in one line instead."""

    def on_multirun_start(self, config: DictConfig, **kwargs: Any) -> None:
        import shutil

        target = str(config.hydra.launcher.get("_target_", ""))
        if "submitit" in target and "Slurm" in target and shutil.which("srun") is None:
            fail("hydra/launcher=slurm: srun not found, so this machine is not a SLURM node; "
                 "start the sweep on the cluster's login node, or leave out "
                 "hydra/launcher=slurm to run its jobs here")
