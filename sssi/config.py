"""OmegaConf resolvers used by ``conf/``: derived values stay out of users' way."""

from __future__ import annotations

from omegaconf import OmegaConf


def _num_bands(dataset: str, modality: str, ndsm: bool) -> int:
    """Band count of a dataset configuration, computed without touching the disk."""
    from sssi.data.layouts import build_layout

    return build_layout(dataset, ".", modality=modality, ndsm=ndsm).num_bands


def register_resolvers() -> None:
    """Register ``${sssi.*:...}`` resolvers (idempotent)."""
    if not OmegaConf.has_resolver("sssi.num_bands"):
        OmegaConf.register_new_resolver("sssi.num_bands", _num_bands)


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
