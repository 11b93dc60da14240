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
