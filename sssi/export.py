"""The encoder as the product of pretraining: ``python -m sssi.export ckpt=PATH output=FILE``.

Two kinds of output, chosen with ``format``:

- **the encoder** (``state_dict``, default, or ``safetensors``) of a pretext
  (``PretrainTask``, keys ``game.inpainter.encoder.*``) or segmentation (``SegmentTask``,
  keys ``model.encoder.*``) checkpoint: a plain state dict whose keys are torchvision's
  ResNet keys (``conv1.weight``, ``layer1.0.bn1.running_mean`` ...; exactly
  ``torchvision.models.resnetXX().state_dict()`` without ``fc.*``, BatchNorm
  ``num_batches_tracked`` counters included as torchvision writes them). It loads with
  ``backbone.weights=FILE`` here and, for 3 bands, with ``load_state_dict(...,
  strict=False)`` (only ``fc`` missing) into torchvision's ResNet (the dilations of a
  DRN-A-50 are recorded, not stored: they change no parameter shape).
- **the whole segmenter** (``torch_export``, a ``.pt2`` of :func:`torch.export.save`, or
  ``onnx``) of a segmentation checkpoint, for deployment: one input ``image`` (B, C, H,
  W) float32, already normalised, with dynamic batch, height and width (multiples of
  the encoder's largest reduction), one output ``logits`` (B, K, H, W).

Beside the output, ``NAME.json`` (its full name plus ``.json``) records what the file
needs to be used right: architecture, output stride and dilation per block, bands in
order, the normalisation ``(raw - mean) / std`` per band (kept outside any graph), classes for a
segmenter, where it came from (checkpoint, kind, the run's ``.hydra/config.yaml`` when
the checkpoint sits in ``RUN/checkpoints/``, the git commit when one was recorded) and
the output's sha256. Every file is written under a temporary name beside its target and
renamed when complete. Checkpoints are read with ``torch.load(weights_only=True)``:
pickled code is never executed.
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import logging
import os
import re
import uuid
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import hydra
import torch
from omegaconf import DictConfig, ListConfig, OmegaConf
from torch import Tensor, nn

import sssi
from sssi.checkpoints import (
    ENCODER_PREFIXES,
    checkpoint_kind,
    data_state,
    find_encoder,
    read_lightning_file,
)
from sssi.cli import CONFIG_DIR, run_or_exit
from sssi.errors import ConfigError, DataError, first_line
from sssi.models import build_backbone, load_backbone_state
from sssi.utils.io import (
    atomic_write_text,
    file_mode,
    remove_quietly,
    torch_save,
    write_failure,
)

log = logging.getLogger("sssi.export")

ENCODER_FORMATS = ("state_dict", "safetensors")
SEGMENTER_FORMATS = ("torch_export", "onnx")
FORMATS = ENCODER_FORMATS + SEGMENTER_FORMATS

#: the torchvision model whose state-dict keys each sssi backbone has
TORCHVISION_MODELS = {"resnet18": "resnet18", "resnet34": "resnet34", "resnet50": "resnet50",
                      "resnet101": "resnet101", "drn_a_50": "resnet50"}

_BN = r"(weight|bias|running_mean|running_var|num_batches_tracked)"
#: every key of a torchvision ResNet's state dict except the ``fc`` classifier
TORCHVISION_RESNET_KEY = re.compile(
    rf"^(conv1\.weight|bn1\.{_BN}|layer[1-4]\.\d+\.(conv[1-3]\.weight|bn[1-3]\.{_BN}"
    rf"|downsample\.0\.weight|downsample\.1\.{_BN}))$")

#: the largest side a whole-segmenter export accepts (its dynamic dims need a bound)
MAX_SIDE = 32768
NORMALISATION = "x = (raw - mean) / std per band, bands in the order listed"


# ------------------------------------------------------------------------ checkpoints
def read_checkpoint(path: str | Path) -> tuple[Path, dict[str, Any], str]:
    """``(path, checkpoint, kind)`` of a Lightning checkpoint of sssi, ``kind`` being
    ``pretext`` or ``segmentation``. Missing, unreadable or foreign files raise an error
    naming the file."""
    path = Path(path).expanduser()
    ckpt = read_lightning_file(path, f"ckpt={path}", "the Lightning .ckpt of a pretext "
                               "or segmentation run")
    state = ckpt.get("state_dict") if isinstance(ckpt, dict) else None
    if not isinstance(state, dict):
        raise ConfigError(f"ckpt={path}: not a Lightning checkpoint (no 'state_dict'); a "
                          "plain state dict is already an encoder file")
    kind = checkpoint_kind(ckpt)
    if kind is None:
        raise ConfigError(f"ckpt={path}: a Lightning checkpoint without an encoder (no keys "
                          f"under {', '.join(ENCODER_PREFIXES)})")
    hp = ckpt.get("hyper_parameters")
    if not isinstance(hp, dict) or not isinstance(hp.get("backbone"), dict) \
            or not hp["backbone"].get("name"):
        raise ConfigError(f"ckpt={path}: checkpoint has no hyper_parameters.backbone.name "
                          "(which backbone to rebuild)")
    return path, ckpt, kind


def backbone_options(hp_backbone: Mapping[str, Any]) -> dict[str, Any]:
    """The backbone config of a checkpoint as :func:`build_backbone` keywords (without
    Hydra's ``_target_`` and without ``weights``: the weights are the checkpoint's)."""
    return {k: v for k, v in hp_backbone.items() if not k.startswith("_") and k != "weights"}


def torchvision_state_dict(state: Mapping[str, Tensor], source: str = "encoder"
                           ) -> dict[str, Tensor]:
    """An sssi ResNet encoder's state dict under torchvision's key names.

    sssi's ResNets are written with torchvision's module names, so the mapping is the
    identity; it is checked all the same, key by key, against torchvision's ResNet
    naming (a renamed module would otherwise export silently). Tensors are detached,
    contiguous CPU copies (a view would drag its whole storage into the file).
    """
    bad = [k for k in state if not TORCHVISION_RESNET_KEY.match(k)]
    if bad:
        shown = ", ".join(bad[:8]) + (f" (and {len(bad) - 8} more)" if len(bad) > 8 else "")
        raise ConfigError(f"{source}: keys that are not torchvision ResNet keys: {shown}")
    return {k: v.detach().to("cpu").contiguous().clone() for k, v in state.items()}


def block_dilations(encoder: nn.Module) -> dict[str, list[int]]:
    """Dilation of the 3x3 conv(s) of every block, per stage (``layer1`` ... ``layer4``)."""
    out: dict[str, list[int]] = {}
    for name in ("layer1", "layer2", "layer3", "layer4"):
        stage = getattr(encoder, name, None)
        if stage is None:
            continue
        out[name] = [max((m.dilation[0] for m in block.modules()
                          if isinstance(m, nn.Conv2d) and m.kernel_size == (3, 3)), default=1)
                     for block in stage]
    return out


def torchvision_equivalent(name: str, encoder: nn.Module,
                           dilation: Mapping[str, list[int]]) -> dict[str, Any] | None:
    """Which torchvision constructor has the same keys, and whether it also rebuilds
    the same network (same bands, stem and dilations) or only loads the weights."""
    model = TORCHVISION_MODELS.get(name)
    if model is None:
        return None
    # torchvision's replace_stride_with_dilation: layer2..4 whose stride became
    # dilation, i.e. whose reduction is that of the stage before
    red = list(getattr(encoder, "reductions", []))
    replace = [len(red) == 5 and red[i] == red[i - 1] for i in (2, 3, 4)]
    # what torchvision builds with those flags: the first block of a dilated stage keeps
    # the previous stage's dilation, the others double it; BasicBlock refuses dilation
    expected, d = {"layer1": [1] * len(dilation.get("layer1", []))}, 1
    for stage, flag in zip(("layer2", "layer3", "layer4"), replace, strict=True):
        previous = d
        d = d * 2 if flag else d
        n = len(dilation.get(stage, []))
        expected[stage] = [previous] + [d] * (n - 1) if n else []
    basic = name in ("resnet18", "resnet34")
    exact = (getattr(encoder, "in_channels", 3) == 3
             and isinstance(getattr(encoder, "maxpool", None), nn.MaxPool2d)
             and dict(dilation) == expected and not (basic and any(replace)))
    return {"model": model, "replace_stride_with_dilation": replace, "same_network": exact,
            "keys": "torchvision state_dict() without fc.weight and fc.bias; BatchNorm "
                    "num_batches_tracked counters included"}


def run_provenance(path: Path, ckpt: Mapping[str, Any]) -> dict[str, Any]:
    """The run a checkpoint belongs to: its folder and Hydra config when the checkpoint
    sits in ``RUN/checkpoints/`` next to ``RUN/.hydra/config.yaml``, and a git commit
    when the checkpoint or the run config records one (``git_commit`` or ``commit``)."""
    run_dir = path.resolve().parent.parent
    config_file = run_dir / ".hydra" / "config.yaml"
    config = None
    if config_file.is_file():
        try:
            config = OmegaConf.to_container(OmegaConf.load(config_file), resolve=False)
        except Exception as exc:  # a damaged config is no reason to refuse the export
            log.warning("%s: unreadable run config, not recorded (%s)", config_file,
                        first_line(exc))
    hp = ckpt.get("hyper_parameters") or {}
    commit = None
    for holder in (ckpt, ckpt.get("sssi") or {}, hp, config or {}):
        if isinstance(holder, Mapping):
            commit = holder.get("git_commit") or holder.get("commit")
            if commit:
                break
    return {"run_dir": str(run_dir) if config is not None else None,
            "config": config, "commit": str(commit) if commit else None}


def _source(path: Path, ckpt: Mapping[str, Any], kind: str) -> dict[str, Any]:
    return {"checkpoint": str(path.resolve()), "kind": kind, "epoch": ckpt.get("epoch"),
            "global_step": ckpt.get("global_step"), **run_provenance(path, ckpt)}


def _bands(ckpt: Mapping[str, Any], kind: str, path: Path) -> dict[str, Any]:
    data = data_state(ckpt)
    if not isinstance(data, dict) or not data.get("band_names") or not data.get("mean") \
            or not data.get("std"):
        log.warning("%s: the %s checkpoint records no band names or normalisation; "
                    "recorded as null", path, kind)
        data = {}
    return {"bands": list(data["band_names"]) if data.get("band_names") else None,
            "mean": [float(m) for m in data["mean"]] if data.get("mean") else None,
            "std": [float(s) for s in data["std"]] if data.get("std") else None,
            "normalisation": NORMALISATION,
            "input_scale": float(data.get("input_scale", 1.0))}


def _encoder_description(name: str, options: Mapping[str, Any], encoder: nn.Module
                         ) -> dict[str, Any]:
    dilation = block_dilations(encoder)
    return {
        "architecture": name,
        "backbone": dict(options),
        "in_channels": int(encoder.in_channels),
        "output_stride": int(getattr(encoder, "output_stride", max(encoder.reductions))),
        "stem_pool": not isinstance(getattr(encoder, "maxpool", None), nn.Identity),
        "dilation": dilation,
        "out_channels": list(encoder.out_channels),
        "reductions": list(encoder.reductions),
        "torchvision": torchvision_equivalent(name, encoder, dilation),
    }


def encoder_state(ckpt: str | Path) -> tuple[dict[str, Tensor], dict[str, Any]]:
    """The encoder of a pretext or segmentation checkpoint: ``(state_dict, info)``.

    ``state_dict`` has torchvision's ResNet keys (see :func:`torchvision_state_dict`)
    and was verified by loading it, strictly, into the backbone rebuilt from the
    checkpoint's config. ``info`` is what ``encoder.pth.json`` records (without the file's
    name and hash).
    """
    path, ck, kind = read_checkpoint(ckpt)
    prefix, _ = find_encoder(ck["state_dict"])
    sub = {k[len(prefix):]: v for k, v in ck["state_dict"].items() if k.startswith(prefix)}
    options = backbone_options(ck["hyper_parameters"]["backbone"])
    name = str(options.pop("name"))
    if "conv1.weight" in sub:  # the bands the weights were trained on decide
        options["in_channels"] = int(sub["conv1.weight"].shape[1])
    encoder = build_backbone(name, **options)
    load_backbone_state(encoder, sub, f"ckpt={path} ({kind} checkpoint)", name=name)
    state = torchvision_state_dict(encoder.state_dict(), f"ckpt={path}")
    info = {**_encoder_description(name, options, encoder),
            **_bands(ck, kind, path),
            "tensors": len(state),
            "source": _source(path, ck, kind)}
    if info["bands"] is not None and len(info["bands"]) != info["in_channels"]:
        raise ConfigError(f"ckpt={path}: {len(info['bands'])} band names "
                          f"({','.join(info['bands'])}) but the encoder takes "
                          f"{info['in_channels']} bands")
    return state, info


# ------------------------------------------------------------------------------ writing
def _check_output(output: str | Path, ckpt: str | Path) -> Path:
    out = Path(output).expanduser()
    if not str(output).strip() or out.name in ("", ".", ".."):
        raise ConfigError(f"output={output!r}: expected a file name")
    if out.suffix.lower() == ".json":
        raise ConfigError(f"output={out}: .json is the name of the description written "
                          "beside the output; choose another suffix")
    src = Path(ckpt).expanduser()
    if out.exists() and src.exists() and out.samefile(src):
        raise ConfigError(f"output={out}: would overwrite the checkpoint")
    if out.is_dir():
        raise ConfigError(f"output={out}: is a folder; give a file name")
    return out


def description_path(output: str | Path) -> Path:
    """Where the description of ``output`` goes: its full name plus ``.json``
    (``encoder.pth.json``), so that exports that share a stem in one folder
    (``encoder.pth``, ``encoder.safetensors``) keep a description each."""
    output = Path(output)
    return output.with_name(output.name + ".json")


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _write(out: Path, writer: Callable[[Path], None], info: dict[str, Any]) -> dict[str, Any]:
    """``writer(tmp)`` writes the output under a temporary name beside ``out``; it is
    hashed and renamed into place, then the description goes beside it (atomically)."""
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise DataError(f"output={out}: cannot create its folder ({first_line(exc)})") from exc
    tmp = out.parent / f".{out.stem}.{os.getpid()}-{uuid.uuid4().hex[:8]}.tmp{out.suffix}"
    try:
        writer(tmp)
        info = {**info, "file": out.name, "bytes": tmp.stat().st_size,
                "sha256": _sha256(tmp)}
        os.chmod(tmp, file_mode())  # temporary files are private; outputs are not
        os.replace(tmp, out)
    except OSError as exc:
        remove_quietly(tmp)  # first: the free space is then as it was
        raise write_failure(out, exc, "cannot write here", shown=f"output={out}") from exc
    finally:
        remove_quietly(tmp)
    ordered = {"format": info.pop("format"), "file": info.pop("file"),
               "sha256": info.pop("sha256"), **info}
    atomic_write_text(description_path(out), json.dumps(ordered, indent=1) + "\n")
    log.info("wrote %s and %s", out, description_path(out).name)
    return ordered


def _require_package(fmt: str, *modules: str) -> None:
    missing = [m for m in modules if importlib.util.find_spec(m) is None]
    if missing:
        raise ConfigError(f"format={fmt} needs the package(s) {', '.join(missing)}: "
                          f"pip install {' '.join(missing)} (or pip install 'sssi[export]')")


def _versions() -> dict[str, str]:
    return {"sssi_version": sssi.__version__, "torch_version": torch.__version__}


def export_encoder(ckpt: str | Path, output: str | Path, format: str = "state_dict"
                   ) -> dict[str, Any]:
    """Write the encoder of ``ckpt`` to ``output`` (``state_dict``: ``torch.save`` of a
    plain dict; ``safetensors``) and ``output.json``; return the description."""
    if format not in ENCODER_FORMATS:
        raise ConfigError(f"format={format!r}: an encoder exports as one of "
                          f"{list(ENCODER_FORMATS)}")
    out = _check_output(output, ckpt)
    is_safetensors = out.suffix.lower() == ".safetensors"
    if (format == "safetensors") != is_safetensors:
        raise ConfigError(f"output={out}: format={format} " + (
            "writes a .safetensors file (backbone.weights= recognises it by that suffix)"
            if format == "safetensors" else
            "writes a torch.save file; for safetensors use format=safetensors"))
    if format == "safetensors":
        _require_package(format, "safetensors")
    state, info = encoder_state(ckpt)

    if format == "safetensors":
        from safetensors.torch import save_file

        meta = {"format": "pt", "architecture": info["architecture"],
                "bands": ",".join(info["bands"] or []), "sssi_version": sssi.__version__}

        def writer(tmp: Path) -> None:
            save_file(state, str(tmp), metadata=meta)
    else:
        def writer(tmp: Path) -> None:
            with open(tmp, "wb") as fh:  # a file object: the archive is not named after tmp
                torch_save(state, fh)

    return _write(out, writer, {"format": format, **info, **_versions()})


# -------------------------------------------------------------------- whole segmenter
def _dynamic_shapes(multiple: int) -> tuple[dict[int, Any]]:
    Dim = torch.export.Dim
    top = MAX_SIDE // multiple
    return ({0: Dim("batch", min=1, max=1024),
             2: multiple * Dim("h", min=2, max=top),
             3: multiple * Dim("w", min=2, max=top)},)


def export_program(model: nn.Module, in_channels: int, multiple: int,
                   size: Sequence[int] = (256, 256)) -> torch.export.ExportedProgram:
    """``torch.export`` of an image model (B, C, H, W) -> (B, K, H, W) with dynamic
    batch, height and width; heights and widths are multiples of ``multiple`` (the
    encoder's largest reduction), at least twice it."""
    h, w = (int(s) for s in size)
    for side in (h, w):
        if side % multiple or side < 2 * multiple or side > MAX_SIDE:
            raise ConfigError(f"size={[h, w]}: the example size must be multiples of "
                              f"{multiple} (the encoder's reduction) between {2 * multiple} "
                              f"and {MAX_SIDE}")
    example = torch.randn(2, in_channels, h, w)  # batch 2: 1 would be specialised
    with torch.no_grad():
        return torch.export.export(model.eval(), (example,),
                                   dynamic_shapes=_dynamic_shapes(multiple))


def export_segmenter(ckpt: str | Path, output: str | Path, format: str = "torch_export",
                     size: Sequence[int] = (256, 256), opset: int | None = None
                     ) -> dict[str, Any]:
    """Write the whole segmenter of a segmentation checkpoint for deployment
    (``torch_export``: a ``.pt2`` of :func:`torch.export.save`; ``onnx``) and
    ``output.json``; return the description. Inputs are normalised images (the
    normalisation is recorded, not in the graph)."""
    if format not in SEGMENTER_FORMATS:
        raise ConfigError(f"format={format!r}: a segmenter exports as one of "
                          f"{list(SEGMENTER_FORMATS)}")
    out = _check_output(output, ckpt)
    if format == "onnx":
        _require_package(format, "onnx", "onnxscript")
    path, ck, kind = read_checkpoint(ckpt)
    if kind != "segmentation":
        raise ConfigError(f"format={format}: ckpt={path} is a {kind} checkpoint; a whole "
                          "segmenter exports from a segmentation checkpoint (fine-tune "
                          "first), its encoder with format=state_dict")
    from sssi.inference import load_segmenter

    loaded = load_segmenter(path)
    model = loaded.model.cpu().eval()
    encoder = model.encoder
    multiple = int(max(encoder.reductions))
    program = export_program(model, int(encoder.in_channels), multiple, size)
    options = backbone_options(ck["hyper_parameters"]["backbone"])
    name = str(options.pop("name"))
    info = {
        "format": format,
        "model": "sssi.models.heads.Segmenter",
        **_encoder_description(name, options, encoder),
        "head": ck["hyper_parameters"].get("head"),
        "num_classes": loaded.num_classes,
        "classes": list(loaded.class_names),
        "bands": list(loaded.band_names), "mean": loaded.mean, "std": loaded.std,
        "normalisation": NORMALISATION, "input_scale": loaded.input_scale,
        "input": {"name": "image", "dtype": "float32",
                  "shape": ["batch", int(encoder.in_channels), "height", "width"],
                  "height_width_multiple_of": multiple, "min_side": 2 * multiple,
                  "max_side": MAX_SIDE},
        "output": {"name": "logits", "dtype": "float32",
                   "shape": ["batch", loaded.num_classes, "height", "width"]},
        "example_size": [int(s) for s in size],
        "opset": None,
        "source": _source(path, ck, kind),
        **_versions(),
    }
    if info["input_scale"] != 1.0:
        log.warning("%s was trained on imagery resampled by %g: resample inputs by that "
                    "factor before the model (recorded as input_scale)", path,
                    info["input_scale"])

    if format == "torch_export":
        def writer(tmp: Path) -> None:
            with open(tmp, "wb") as fh:
                torch.export.save(program, fh)
    else:
        import onnx

        def writer(tmp: Path) -> None:
            onnx_program = torch.onnx.export(
                program, f=None, input_names=["image"], output_names=["logits"],
                opset_version=opset, dynamo=True, external_data=False, verbose=False)
            onnx_program.save(str(tmp), external_data=False)
            onnx.checker.check_model(str(tmp))
            info["opset"] = next((o.version for o in onnx.load(str(tmp)).opset_import
                                  if o.domain in ("", "ai.onnx")), None)

    return _write(out, writer, info)


# ------------------------------------------------------------------------------ entry
def _size(value: Any) -> list[int]:
    items = list(value) if isinstance(value, (ListConfig, list, tuple)) else [value, value]
    try:
        size = [int(v) for v in items]
    except (TypeError, ValueError) as exc:
        raise ConfigError(f"size={value!r}: expected [height, width] in pixels") from exc
    if len(size) != 2:
        raise ConfigError(f"size={items}: expected [height, width] in pixels")
    return size


def run(cfg: DictConfig) -> dict[str, Any]:
    """Export ``cfg.ckpt`` to ``cfg.output`` in ``cfg.format``; return the description."""
    for key in ("ckpt", "output"):
        if OmegaConf.is_missing(cfg, key) or cfg.get(key) in (None, ""):
            raise ConfigError(f"{key}: missing; give it on the command line as {key}=...")
    fmt = str(cfg.get("format", "state_dict"))
    if fmt in ENCODER_FORMATS:
        return export_encoder(cfg.ckpt, cfg.output, fmt)
    if fmt in SEGMENTER_FORMATS:
        opset = cfg.get("opset")
        return export_segmenter(cfg.ckpt, cfg.output, fmt, _size(cfg.get("size", 256)),
                                opset=int(opset) if opset is not None else None)
    raise ConfigError(f"format={fmt!r}: expected one of {list(FORMATS)}")


@hydra.main(version_base="1.3", config_path=CONFIG_DIR, config_name="export")
def main(cfg: DictConfig) -> None:
    info = run_or_exit(run, cfg)
    print(f"{cfg.output}: {info['format']} of {info['architecture']} "
          f"({info['source']['kind']} checkpoint), described in "
          f"{description_path(cfg.output)}")


if __name__ == "__main__":
    main()
