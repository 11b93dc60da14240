"""Backbone registry: build an encoder by name, optionally from a torchvision-style file.

Every encoder in sssi is built through :func:`build_backbone`, so a config names a
backbone with one string and a new backbone is one ``@register("name")`` function.
Loading weights from a file lives here, not in the model classes: models stay tensors
in, tensors out and know nothing of files.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any, TypeVar

import torch
from torch import Tensor, nn

from sssi.errors import ConfigError
from sssi.utils.registry import register_into

log = logging.getLogger(__name__)

#: How many keys an error message lists before it says "and N more".
_MAX_KEYS_SHOWN = 8


class Encoder(nn.Module):
    """The interface every backbone implements.

    ``forward(x)`` returns a list of feature maps ordered shallow to deep;
    ``out_channels[i]`` and ``reductions[i]`` (input size / feature size) describe the
    i-th one, so decoders and heads can be built without running the network.
    """

    #: Channels of each returned feature map, shallow to deep.
    out_channels: list[int]
    #: Spatial reduction of each returned feature map relative to the input.
    reductions: list[int]
    #: Number of input bands the encoder was built for.
    in_channels: int
    #: State-dict key of the first convolution, whose input channels are the bands. A
    #: pretrained 3-band weight for this key is adapted to ``in_channels`` on load.
    stem_conv_key: str | None = None
    #: Prefixes of pretrained keys that belong to a classification head the encoder
    #: does not have (e.g. torchvision's ``fc.``); they are dropped on load.
    pretrained_head_prefixes: tuple[str, ...] = ()

    def forward(self, x: Tensor) -> list[Tensor]:  # pragma: no cover - interface only
        raise NotImplementedError


BuilderT = TypeVar("BuilderT", bound=Callable[..., nn.Module])

_REGISTRY: dict[str, Callable[..., nn.Module]] = {}


def register(name: str) -> Callable[[BuilderT], BuilderT]:
    """Register a builder ``fn(in_channels=..., **options) -> Encoder`` under ``name``.

    A name may be registered once: a second, different builder under the same name is a
    programming error (two backbones would silently shadow each other in configs).
    """
    return register_into(_REGISTRY, "backbone", name)


def list_backbones() -> list[str]:
    """Names that :func:`build_backbone` accepts, sorted."""
    return sorted(_REGISTRY)


def build_backbone(
    name: str,
    in_channels: int = 3,
    weights: str | os.PathLike[str] | None = None,
    **kwargs: Any,
) -> Encoder:
    """Build the backbone registered as ``name`` for ``in_channels`` input bands.

    ``weights`` is a torchvision-style ImageNet state dict file (e.g. the file behind
    ``torchvision.models.resnet50``'s weights); ``kwargs`` go to the builder (for the
    ResNets: ``output_stride``, ``dilated``, ``stem_pool``, ``zero_init_residual``).
    Bad names, options or files raise :class:`ConfigError` naming what is wrong.
    """
    builder = _REGISTRY.get(name)
    if builder is None:
        known = ", ".join(list_backbones())
        raise ConfigError(f"unknown backbone {name!r}; known backbones: {known}")
    try:
        model = builder(in_channels=in_channels, **kwargs)
    except TypeError as err:
        # A misspelt option from a config (``backbone.outputstride=16``) lands here; a
        # TypeError from inside the model is a bug and is re-raised as is.
        if "keyword argument" not in str(err):
            raise
        raise ConfigError(f"backbone {name!r}: {err}") from err
    _check_encoder(name, model)
    if weights is not None:
        load_backbone_weights(model, weights, name=name)
    return model  # type: ignore[return-value]


def _check_encoder(name: str, model: nn.Module) -> None:
    """Fail at build time, not deep inside a decoder, when a builder breaks the contract."""
    channels = getattr(model, "out_channels", None)
    reductions = getattr(model, "reductions", None)
    if (
        not isinstance(model, nn.Module)
        or not isinstance(channels, list)
        or not isinstance(reductions, list)
        or len(channels) != len(reductions)
    ):
        raise TypeError(
            f"backbone {name!r} must build an nn.Module with list attributes out_channels "
            f"and reductions of equal length (see sssi.models.Encoder)"
        )


def adapt_input_conv(weight: Tensor, in_channels: int) -> Tensor:
    """Turn a 3-band (RGB) first-conv weight ``(O, 3, k, k)`` into ``(O, in_channels, k, k)``.

    The first ``min(in_channels, 3)`` bands reuse the pretrained filters; each extra band
    (NIR, nDSM, ...) gets the mean RGB filter, a neutral guess that responds to edges and
    texture like the visible bands do. Everything is then scaled by ``3 / in_channels``:
    with inputs normalised per band, the conv output is a sum over bands, so without the
    rescale a 5-band input would push ~5/3 times larger activations into ``bn1``, whose
    pretrained running statistics were measured on 3 bands.
    """
    if weight.ndim != 4 or weight.shape[1] != 3:
        raise ValueError(f"expected a (O, 3, k, k) conv weight, got shape {tuple(weight.shape)}")
    if in_channels < 1:
        raise ValueError(f"in_channels must be >= 1, got {in_channels}")
    out = weight.new_empty((weight.shape[0], in_channels, *weight.shape[2:]))
    keep = min(in_channels, 3)
    out[:, :keep] = weight[:, :keep]
    if in_channels > 3:
        out[:, 3:] = weight.mean(dim=1, keepdim=True)
    return out * (3.0 / in_channels)


def _key_list(keys: list[str]) -> str:
    shown = ", ".join(keys[:_MAX_KEYS_SHOWN])
    more = len(keys) - _MAX_KEYS_SHOWN
    return f"{shown} (and {more} more)" if more > 0 else shown


def _read_state_dict(path: Path) -> dict[str, Tensor]:
    if not path.is_file():
        raise ConfigError(f"backbone weights file not found: {path}")
    if path.suffix.lower() == ".safetensors":
        return _read_safetensors(path)
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # unpickling, zip and weights_only errors alike
        first_line = str(err).strip().splitlines()[0] if str(err).strip() else ""
        raise ConfigError(
            f"cannot read backbone weights {path}: {type(err).__name__}: {first_line}"
        ) from err
    if not isinstance(obj, Mapping) or not all(isinstance(v, Tensor) for v in obj.values()):
        hint = ""
        if isinstance(obj, Mapping) and "state_dict" in obj:
            hint = " (this looks like a training checkpoint, not a backbone state dict)"
        raise ConfigError(
            f"backbone weights {path} are not a state dict of parameter name -> tensor{hint}"
        )
    return dict(obj)


def _read_safetensors(path: Path) -> dict[str, Tensor]:
    """A ``.safetensors`` state dict (``python -m sssi.export format=safetensors``)."""
    try:
        from safetensors.torch import load_file
    except ImportError as err:
        raise ConfigError(
            f"backbone weights {path} are a safetensors file: pip install safetensors"
        ) from err
    try:
        return dict(load_file(str(path), device="cpu"))
    except Exception as err:  # a damaged header or truncated data
        first_line = str(err).strip().splitlines()[0] if str(err).strip() else ""
        raise ConfigError(
            f"cannot read backbone weights {path}: {type(err).__name__}: {first_line}"
        ) from err


def load_backbone_weights(
    model: nn.Module, path: str | os.PathLike[str], *, name: str | None = None
) -> None:
    """Load a torchvision-style state dict file into ``model`` with strict key matching.

    The file is a ``torch.save`` of ``{name: tensor}`` (``.pth``, ``.pt``) or, by its
    suffix, a ``.safetensors`` file (needs the ``safetensors`` package).

    Only three differences are tolerated, each logged: classifier keys listed in
    ``model.pretrained_head_prefixes`` are dropped; a 3-band ``model.stem_conv_key`` is
    adapted to the model's band count (:func:`adapt_input_conv`); and BatchNorm
    ``num_batches_tracked`` counters, which old torchvision files lack, keep the model's
    value (they are step counters, not weights). Any other missing, unexpected or
    mis-shaped key raises :class:`ConfigError` naming the file and the keys.
    """
    if not str(path).strip():
        raise ConfigError("backbone weights path is empty; use null for no weights")
    path = Path(path).expanduser()
    load_backbone_state(model, _read_state_dict(path), str(path), name=name)


def load_backbone_state(
    model: nn.Module, state: Mapping[str, Tensor], source: str, *, name: str | None = None
) -> None:
    """Load an encoder state dict (from a file or a checkpoint) into ``model``.

    The matching rules of :func:`load_backbone_weights`; ``source`` names where the
    tensors came from in log lines and errors.
    """
    path = source
    what = f"backbone {name!r}" if name else type(model).__name__
    state = dict(state)
    own = model.state_dict()

    head_prefixes = tuple(getattr(model, "pretrained_head_prefixes", ()))
    head_keys = [k for k in state if head_prefixes and k.startswith(head_prefixes)]
    if head_keys:
        log.info("%s: dropping classifier keys from %s: %s", what, path, _key_list(head_keys))
        for key in head_keys:
            del state[key]

    stem_key = getattr(model, "stem_conv_key", None)
    if stem_key in state and stem_key in own:
        src, dst = state[stem_key], own[stem_key]
        if (
            src.ndim == 4
            and src.shape[1] == 3
            and src.shape != dst.shape
            and (src.shape[0] == dst.shape[0] and src.shape[2:] == dst.shape[2:])
        ):
            log.info(
                "%s: adapting %s from 3 to %d input bands (%s)",
                what,
                stem_key,
                dst.shape[1],
                path,
            )
            state[stem_key] = adapt_input_conv(src, dst.shape[1])

    missing = [k for k in own if k not in state]
    counters = [k for k in missing if k.endswith("num_batches_tracked")]
    if counters:
        log.info("%s: %s has no num_batches_tracked; keeping the model's", what, path)
        for key in counters:
            state[key] = own[key]
        missing = [k for k in missing if k not in counters]
    unexpected = [k for k in state if k not in own]
    wrong_shape = [
        f"{k}: file {tuple(state[k].shape)}, model {tuple(own[k].shape)}"
        for k in own
        if k in state and state[k].shape != own[k].shape
    ]
    problems = []
    if missing:
        problems.append(f"missing keys: {_key_list(missing)}")
    if unexpected:
        problems.append(f"unexpected keys: {_key_list(unexpected)}")
    if wrong_shape:
        problems.append(f"wrong shapes: {_key_list(wrong_shape)}")
    if problems:
        in_ch = getattr(model, "in_channels", None)
        bands = f" with {in_ch} input bands" if in_ch is not None else ""
        raise ConfigError(
            f"backbone weights {path} do not fit {what}{bands}: {'; '.join(problems)}"
        )
    model.load_state_dict(state, strict=True)
    log.debug("%s: loaded %d tensors from %s", what, len(state), path)
