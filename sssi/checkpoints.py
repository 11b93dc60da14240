"""Initialising a segmenter's encoder from earlier work.

Three sources, told apart by what the file holds:
- a pretext checkpoint of the game (``PretrainTask``): the inpainter's encoder;
- a segmentation checkpoint (``SegmentTask``): its encoder (e.g. to continue on
  another dataset);
- a torchvision-style state dict (ImageNet weights from a local file, or an encoder
  written by ``python -m sssi.export``, also as ``.safetensors``).
Keys are matched exactly through the backbone registry's loader: a missing,
unexpected or mis-shaped key is an error naming the file and the keys, never ignored.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from torch import nn

from sssi.errors import ConfigError, DataError, first_line
from sssi.models import load_backbone_state, load_backbone_weights

log = logging.getLogger(__name__)

#: state-dict prefixes of the encoder inside each task's checkpoint (the game's before
#: sssi.game too: ``inpainter.encoder.``)
ENCODER_PREFIXES = {"game.inpainter.encoder.": "pretext", "inpainter.encoder.": "pretext",
                    "model.encoder.": "segmentation"}

# ------------------------------------------------------------------- the alias table
#: Names that moved, old -> new: ``_target_`` values saved in checkpoints' hyper-
#: parameters and run configs, and state-dict prefixes. Applied when a checkpoint is
#: loaded (:func:`upgrade_targets`, :func:`upgrade_state_dict`), so files written before
#: a move keep loading. Add a line here when you move a class a config can name.
LEGACY_TARGETS = {
    "sssi.masking.RandomBlocks": "sssi.game.masking.RandomBlocks",
    "sssi.masking.RandomPatches": "sssi.game.masking.RandomPatches",
    "sssi.masking.CenterHole": "sssi.game.masking.CenterHole",
    "sssi.losses.ReconstructionLoss": "sssi.game.loss.ReconstructionLoss",
    "sssi.models.instructor.Instructor": "sssi.game.instructor.Instructor",
    "sssi.models.inpainter.Inpainter": "sssi.game.inpainter.Inpainter",
}
#: the pretext task's players sat at the top of its state dict before sssi.game
LEGACY_STATE_PREFIXES = {"inpainter.": "game.inpainter.", "instructor.": "game.instructor.",
                         "reward_baseline.": "game.reward_baseline."}


def upgrade_targets(value: Any) -> Any:
    """``value`` (plain hyperparameters or a config) with every moved ``_target_``
    renamed (:data:`LEGACY_TARGETS`); anything else is returned as it is."""
    if isinstance(value, Mapping):
        out = {k: upgrade_targets(v) for k, v in value.items()}
        target = out.get("_target_")
        if isinstance(target, str) and target in LEGACY_TARGETS:
            out["_target_"] = LEGACY_TARGETS[target]
        return out
    if isinstance(value, list | tuple):
        return type(value)(upgrade_targets(v) for v in value)
    return value


def upgrade_state_dict(state: Mapping[str, Any]) -> dict[str, Any]:
    """A pretext state dict with the keys of today (:data:`LEGACY_STATE_PREFIXES`)."""
    out = {}
    for key, value in state.items():
        old = next((p for p in LEGACY_STATE_PREFIXES if key.startswith(p)), None)
        out[LEGACY_STATE_PREFIXES[old] + key[len(old):] if old else key] = value
    return out


def find_encoder(state: Mapping[str, Any]) -> tuple[str, str] | None:
    """``(prefix, kind)`` of the encoder's keys in a task's state dict, or None."""
    return next(((prefix, kind) for prefix, kind in ENCODER_PREFIXES.items()
                 if any(k.startswith(prefix) for k in state)), None)

#: where every task's checkpoint keeps its datamodule's state (bands, normalisation,
#: dataset; see ``BaseTask.on_save_checkpoint``), whichever datamodule it trained on
DATA_KEY = "sssi_data"
#: where checkpoints written before that keep it: Lightning's key, the class's name
LEGACY_DATA_KEYS = ("SegmentationDataModule", "PretextDataModule")


def checkpoint_kind(ckpt: object) -> str | None:
    """``pretext`` or ``segmentation`` (from where the encoder's weights are), or None."""
    state = ckpt.get("state_dict") if isinstance(ckpt, dict) else None
    found = find_encoder(state) if isinstance(state, dict) else None
    return found[1] if found else None


def data_state(ckpt: object) -> dict | None:
    """The datamodule state a checkpoint was saved with (``mean``, ``std``,
    ``band_names``, ...), from old and new checkpoints alike; None when it has none."""
    if not isinstance(ckpt, dict):
        return None
    return next((ckpt[key] for key in (DATA_KEY, *LEGACY_DATA_KEYS)
                 if isinstance(ckpt.get(key), dict)), None)


def read_lightning_file(path: Path, prefix: str, expected: str) -> object:
    """Load a checkpoint file safely (tensors and plain containers only, never pickled
    code); a missing, non-zip or unreadable file is a :class:`DataError` that starts
    with ``prefix`` (e.g. ``"ckpt=PATH"``) and says what was ``expected``."""
    import zipfile

    if not path.is_file():
        raise DataError(f"{prefix}: checkpoint not found")
    if not zipfile.is_zipfile(path):
        raise DataError(f"{prefix}: not a PyTorch checkpoint (expected {expected})")
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # truncated archives, unpickling and weights_only errors
        raise DataError(f"{prefix}: not a readable checkpoint ({type(exc).__name__}: "
                        f"{first_line(exc).split('. ')[0]})") from exc


def init_encoder(encoder: nn.Module, path: str | Path) -> str:
    """Load ``path`` into ``encoder``; return the kind of source it was."""
    return load_encoder(encoder, path)[0]


def load_encoder(encoder: nn.Module, path: str | Path) -> tuple[str, dict | None]:
    """Load ``path`` into ``encoder``; return the kind of source it was and, for a
    Lightning checkpoint, the data state it was saved with (None otherwise), so a
    caller that needs both reads the file once."""
    path = Path(path).expanduser()
    if not path.is_file():
        raise ConfigError(f"task.init={path}: file not found")
    if path.suffix.lower() == ".safetensors":  # an exported encoder (sssi.export)
        load_backbone_weights(encoder, path)
        log.info("encoder initialised from the state dict %s", path)
        return "state_dict", None
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # corrupt file, not a torch file
        raise ConfigError(f"task.init={path}: cannot read ({type(err).__name__}: "
                          f"{first_line(err)})") from err
    if isinstance(obj, dict) and isinstance(obj.get("state_dict"), dict):
        state = obj["state_dict"]
        found = find_encoder(state)
        if found:
            prefix, kind = found
            sub = {k[len(prefix):]: v for k, v in state.items() if k.startswith(prefix)}
            load_backbone_state(encoder, sub, f"{path} ({kind} checkpoint)")
            log.info("encoder initialised from the %s checkpoint %s (%d tensors)", kind,
                     path, len(sub))
            return kind, data_state(obj)
        raise ConfigError(f"task.init={path}: a Lightning checkpoint without an encoder "
                          f"(no keys under {', '.join(ENCODER_PREFIXES)})")
    load_backbone_weights(encoder, path)
    log.info("encoder initialised from the state dict %s", path)
    return "state_dict", None


def _no_weight_files(value: Any) -> Any:
    """Hyperparameters with every backbone's ``weights`` file dropped: a checkpoint holds
    the trained weights, so an ImageNet file named at training time (maybe long gone)
    must not be read again."""
    if isinstance(value, Mapping):
        out = {k: _no_weight_files(v) for k, v in value.items()}
        if "_target_" in out and "weights" in out:
            out["weights"] = None
        return out
    if isinstance(value, list | tuple):
        return type(value)(_no_weight_files(v) for v in value)
    return value


def load_pretext(path: str | Path, map_location: str | torch.device = "cpu",
                 key: str = "checkpoint") -> tuple[nn.Module, dict]:
    """The game of a pretext checkpoint (``PretrainTask``: inpainter, instructor or None,
    random holes, loss), in eval mode without gradients, and the datamodule state it was
    trained with (band statistics and names, ``input_scale``).

    A missing or unreadable file is a :class:`DataError`, a checkpoint of another kind a
    :class:`ConfigError`; both name ``key`` and the file."""
    path = Path(path).expanduser()
    ckpt = read_lightning_file(path, f"{key}={path}", "a Lightning .ckpt file of a pretext "
                               "run")
    hp = ckpt.get("hyper_parameters") if isinstance(ckpt, dict) else None
    data = data_state(ckpt)
    if checkpoint_kind(ckpt) != "pretext" or not isinstance(hp, dict) or \
            "mask_policy" not in hp or data is None:
        what = "a segmentation checkpoint" if checkpoint_kind(ckpt) == "segmentation" \
            else "not a checkpoint of a pretext run"
        raise ConfigError(f"{key}={path}: {what}; expected the .ckpt of a pretext run "
                          "(+experiment=..._pretrain or ..._inpaint_*)")
    from sssi.tasks.pretrain import PretrainTask

    hp = _no_weight_files(upgrade_targets(hp))
    task = PretrainTask.load_from_checkpoint(
        path, map_location=map_location, backbone=hp["backbone"], mask_policy=hp["mask_policy"])
    game = task.game.eval().requires_grad_(False)
    return game, dict(data)
