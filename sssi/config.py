"""OmegaConf resolvers used by ``conf/``: derived values stay out of users' way."""

from __future__ import annotations

from omegaconf import OmegaConf


def _num_bands(dataset: str, modality: str, ndsm: bool) -> int:
    """Band count of a dataset configuration, computed without touching the disk."""
    from sssi.data.layouts import build_layout

    return build_layout(dataset, ".", modality=modality, ndsm=ndsm).num_bands


PRETEXT_CHECKPOINT = "checkpoints/last.ckpt"


def study_init(method: str, pretrain_dir: str, imagenet_weights: str | None) -> str | None:
    """``task.init`` of a label-efficiency job: where ``study.method`` starts the encoder.

    ``scratch`` -> None; ``imagenet`` -> the weights file; any other name is a pretext
    run of the study's stage 1, ``<pretrain_dir>/<method>/checkpoints/last.ckpt``.
    """
    from sssi.errors import ConfigError

    method = str(method)
    if method == "scratch":
        return None
    if method == "imagenet":
        if not imagenet_weights:
            raise ConfigError("study.method=imagenet needs study.imagenet_weights=PATH (a "
                              "torchvision-style ResNet state dict file)")
        return str(imagenet_weights)
    if not method or "/" in method:
        raise ConfigError(f"study.method={method!r}: expected scratch, imagenet or the name "
                          f"of a pretext run folder under {pretrain_dir}")
    return f"{pretrain_dir}/{method}/{PRETEXT_CHECKPOINT}"


def _sweep_group(prefix: str | None = None) -> str:
    """W&B group of a run: the sweep's name in a multirun, "" otherwise."""
    from sssi.loggers import sweep_group

    return sweep_group(prefix)


def _wandb_offline() -> bool:
    """Default of ``logger.wandb.offline``: true unless ``WANDB_MODE`` is set otherwise."""
    from sssi.loggers import wandb_offline

    return wandb_offline()


def synthetic_dir(data_dir: str, tiles: int, size: int, seed: int) -> str:
    """``data.root`` of the embedded synthetic dataset: ``DATA_DIR/synthetic_potsdam`` for
    the default parameters (6 tiles of 1024 px, seed 0), a folder of its own for any
    other (``synthetic_potsdam_3x256``, ``..._seed1``), so that switching sizes (e.g.
    ``+debug=tiny``) never replaces a dataset that is already there."""
    if (int(tiles), int(size), int(seed)) == (6, 1024, 0):
        return f"{data_dir}/synthetic_potsdam"
    return f"{data_dir}/synthetic_potsdam_{int(tiles)}x{int(size)}" + \
        (f"_seed{int(seed)}" if int(seed) else "")


def register_resolvers() -> None:
    """Register ``${sssi.*:...}`` resolvers (idempotent)."""
    if not OmegaConf.has_resolver("sssi.num_bands"):
        OmegaConf.register_new_resolver("sssi.num_bands", _num_bands)
    # not cached: both depend on the run (Hydra mode, environment), not on arguments
    if not OmegaConf.has_resolver("sssi.sweep_group"):
        OmegaConf.register_new_resolver("sssi.sweep_group", _sweep_group)
    if not OmegaConf.has_resolver("sssi.wandb_offline"):
        OmegaConf.register_new_resolver("sssi.wandb_offline", _wandb_offline)
    if not OmegaConf.has_resolver("sssi.synthetic_dir"):
        OmegaConf.register_new_resolver("sssi.synthetic_dir", synthetic_dir)
    if not OmegaConf.has_resolver("sssi.study_init"):
        OmegaConf.register_new_resolver("sssi.study_init", study_init)


register_resolvers()


def to_plain(value):
    """OmegaConf containers (and mappings/sequences holding them) -> plain Python.

    Checkpoints must hold only plain types: ``torch.load(weights_only=True)``, which
    Lightning uses, refuses OmegaConf objects.
    """
    from collections.abc import Mapping

    from omegaconf import DictConfig, ListConfig

    if isinstance(value, (DictConfig, ListConfig)):
        return OmegaConf.to_container(value, resolve=True)
    if isinstance(value, Mapping):
        return {k: to_plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return type(value)(to_plain(v) for v in value)
    return value
