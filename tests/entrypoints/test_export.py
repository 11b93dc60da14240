"""``python -m sssi.export``: the encoder of a pretext or segmentation checkpoint as a
torchvision-style state dict (+ ``.json`` description), and the whole segmenter for
deployment (torch.export, ONNX).

The reference key lists ``tests/assets/torchvision_resnet{18,50}_keys.txt`` were generated
once from torchvision 0.28.0's ``resnet18().state_dict()`` / ``resnet50().state_dict()``
(key, shape, in order; ``num_batches_tracked`` included, as torchvision writes them);
torchvision itself does not run with the CPU torch here. Checkpoints are rebuilt from
the old-format skeletons (``tests.helpers.legacy_checkpoint``), resnet18, so every
export stays small.
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
from pathlib import Path

import pytest
import torch
from hydra import compose, initialize_config_dir

from sssi.checkpoints import data_state, init_encoder
from sssi.cli import CONFIG_DIR, run_or_exit
from sssi.errors import ConfigError
from sssi.export import (
    _require_package,
    description_path,
    encoder_state,
    export_encoder,
    export_segmenter,
    run,
    torchvision_state_dict,
)
from sssi.inference import load_segmenter
from sssi.models import build_backbone
from tests.helpers import ASSETS, legacy_checkpoint, run_module

DATA = ASSETS


def reference(name: str) -> dict[str, tuple[int, ...]]:
    """torchvision's ``name().state_dict()`` keys and shapes, in order."""
    out = {}
    for line in (DATA / f"torchvision_{name}_keys.txt").read_text().splitlines():
        if line and not line.startswith("#"):
            key, shape = line.split("\t")
            out[key] = tuple(json.loads(shape))
    return out


def without_fc(ref: dict[str, tuple[int, ...]]) -> dict[str, tuple[int, ...]]:
    return {k: v for k, v in ref.items() if not k.startswith("fc.")}


def shapes(state) -> dict[str, tuple[int, ...]]:
    return {k: tuple(v.shape) for k, v in state.items()}


@pytest.fixture(scope="module")
def ckpts(tmp_path_factory):
    """A pretext checkpoint inside a run folder with a Hydra config that records a
    commit, and a bare segmentation checkpoint."""
    root = tmp_path_factory.mktemp("export")
    pretext = legacy_checkpoint("pretext", root / "run" / "checkpoints" / "last.ckpt")
    (root / "run" / ".hydra").mkdir()
    (root / "run" / ".hydra" / "config.yaml").write_text(
        "task_name: pretrain\ngit_commit: 0123abc\ndata:\n  root: ${paths.data_dir}/x\n")
    segment = legacy_checkpoint("segment", root / "segment.ckpt", seed=1)
    return pretext, segment


def same_outputs(a, b, size=(2, 3, 64, 64)) -> bool:
    x = torch.randn(*size, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        return all(torch.equal(p, q) for p, q in zip(a.eval()(x), b.eval()(x), strict=True))


# --------------------------------------------------------------------------- key names
def test_reference_lists_are_torchvision_resnets():
    r18, r50 = reference("resnet18"), reference("resnet50")
    assert (len(r18), len(r50)) == (122, 320)
    assert list(r18)[-2:] == ["fc.weight", "fc.bias"] and r50["fc.weight"] == (1000, 2048)
    assert r18["layer1.0.bn1.num_batches_tracked"] == ()


@pytest.mark.parametrize(("name", "ref"), [("resnet18", "resnet18"), ("resnet50", "resnet50"),
                                           ("drn_a_50", "resnet50")])
def test_sssi_resnet_keys_are_torchvision_keys_minus_fc(name, ref):
    state = torchvision_state_dict(build_backbone(name).state_dict())
    assert list(shapes(state).items()) == list(without_fc(reference(ref)).items())


def test_a_key_that_is_not_torchvision_is_refused():
    state = build_backbone("resnet18").state_dict()
    state["layer1.0.extra.weight"] = torch.zeros(1)
    with pytest.raises(ConfigError, match=r"layer1\.0\.extra\.weight"):
        torchvision_state_dict(state, "ckpt=x")


# ------------------------------------------------------------------------------ encoder
def test_pretext_encoder_exports_and_round_trips(ckpts, tmp_path):
    pretext, _ = ckpts
    out = tmp_path / "enc" / "encoder.pth"
    info = export_encoder(pretext, out)
    state = torch.load(out, map_location="cpu", weights_only=True)
    assert type(state) is dict and shapes(state) == without_fc(reference("resnet18"))

    desc = json.loads(description_path(out).read_text())
    assert desc == info
    assert desc["sha256"] == hashlib.sha256(out.read_bytes()).hexdigest()
    assert desc["format"] == "state_dict" and desc["file"] == "encoder.pth"
    assert desc["architecture"] == "resnet18" and desc["in_channels"] == 3
    assert desc["output_stride"] == 32 and desc["stem_pool"] is True
    assert desc["dilation"] == {f"layer{i}": [1, 1] for i in range(1, 5)}
    assert desc["torchvision"]["model"] == "resnet18" and desc["torchvision"]["same_network"]
    ck = torch.load(pretext, weights_only=True)
    assert desc["bands"] == ["R", "G", "B"]
    assert desc["mean"] == pytest.approx(data_state(ck)["mean"])
    assert desc["std"] == pytest.approx(data_state(ck)["std"])
    src = desc["source"]
    assert src["kind"] == "pretext" and src["checkpoint"] == str(pretext.resolve())
    assert src["config"]["task_name"] == "pretrain" and src["commit"] == "0123abc"
    assert src["config"]["data"]["root"] == "${paths.data_dir}/x"  # as written
    assert desc["sssi_version"] and not list(out.parent.glob(".*tmp*"))

    # round trip: backbone.weights=encoder.pth gives the checkpoint's encoder
    reference_encoder = build_backbone("resnet18")
    assert init_encoder(reference_encoder, pretext) == "pretext"
    assert same_outputs(build_backbone("resnet18", weights=out), reference_encoder)


def test_segmentation_encoder_as_safetensors(ckpts, tmp_path):
    pytest.importorskip("safetensors")
    _, segment = ckpts
    state, info = encoder_state(segment)
    assert info["source"]["kind"] == "segmentation" and info["source"]["commit"] is None
    assert info["source"]["config"] is None and info["source"]["run_dir"] is None

    out = tmp_path / "encoder.safetensors"
    desc = export_encoder(segment, out, "safetensors")
    assert desc["tensors"] == len(state) == 120
    from safetensors.torch import load_file

    loaded = load_file(str(out))
    assert shapes(loaded) == without_fc(reference("resnet18"))
    assert all(torch.equal(loaded[k], v) for k, v in state.items())
    encoder = build_backbone("resnet18", weights=out)  # the loader reads .safetensors
    assert same_outputs(encoder, load_segmenter(segment).model.encoder)
    assert init_encoder(build_backbone("resnet18"), out) == "state_dict"


# ------------------------------------------------------------------------ segmenter
def test_torch_export_segmenter_matches_checkpoint(ckpts, tmp_path):
    _, segment = ckpts
    out = tmp_path / "segmenter.pt2"
    desc = export_segmenter(segment, out, size=(64, 64))
    assert desc["classes"][0] == "impervious_surfaces" and desc["num_classes"] == 6
    assert desc["input"]["height_width_multiple_of"] == 32 and desc["bands"] == ["R", "G", "B"]
    assert json.loads(description_path(out).read_text())["sha256"] == \
        hashlib.sha256(out.read_bytes()).hexdigest()
    model = torch.export.load(out).module()
    reference_model = load_segmenter(segment).model
    for size in ((1, 3, 64, 64), (2, 3, 96, 128)):
        x = torch.randn(*size)
        with torch.no_grad():
            expected = reference_model(x)
            got = model(x)
        assert got.shape == (size[0], 6, *size[2:])
        torch.testing.assert_close(got, expected, atol=1e-5, rtol=0)


@pytest.mark.filterwarnings("ignore::FutureWarning")  # onnxscript's use of torch's pytree
def test_onnx_segmenter(ckpts, tmp_path):
    pytest.importorskip("onnx")
    pytest.importorskip("onnxscript")
    _, segment = ckpts
    out = tmp_path / "segmenter.onnx"
    desc = export_segmenter(segment, out, "onnx", size=(64, 64))
    import onnx

    onnx.checker.check_model(str(out))
    assert desc["opset"] and desc["input"]["name"] == "image"
    if importlib.util.find_spec("onnxruntime") is None:
        pytest.skip("onnxruntime is not installed: the ONNX model was only checked")
    import onnxruntime as ort

    session = ort.InferenceSession(str(out), providers=["CPUExecutionProvider"])
    reference_model = load_segmenter(segment).model
    for size in ((1, 3, 64, 64), (2, 3, 96, 128)):
        x = torch.randn(*size)
        (got,) = session.run(None, {"image": x.numpy()})
        with torch.no_grad():
            expected = reference_model(x)
        torch.testing.assert_close(torch.from_numpy(got), expected, atol=1e-4, rtol=0)


# ---------------------------------------------------------------------------- errors
def export_cfg(*overrides: str):
    with initialize_config_dir(config_dir=CONFIG_DIR, version_base="1.3"):
        return compose("export", overrides=list(overrides))


def error_line(capsys, cfg) -> str:
    with pytest.raises(SystemExit) as exit_info:
        run_or_exit(run, cfg)
    assert exit_info.value.code == 1
    (line,) = capsys.readouterr().err.strip().splitlines()
    assert line.startswith("error: ")
    return line


def test_config_path_and_bad_inputs(ckpts, tmp_path, capsys):
    pretext, _ = ckpts
    desc = run(export_cfg(f"ckpt={pretext}", f"output={tmp_path / 'e.pth'}"))
    assert desc["source"]["kind"] == "pretext" and (tmp_path / "e.pth.json").is_file()

    junk = tmp_path / "junk.ckpt"
    junk.write_text("not a checkpoint")
    assert str(junk) in error_line(capsys, export_cfg(f"ckpt={junk}", "output=x.pth"))
    plain = tmp_path / "plain.pth"
    torch.save({"conv1.weight": torch.zeros(1)}, plain)
    line = error_line(capsys, export_cfg(f"ckpt={plain}", "output=x.pth"))
    assert str(plain) in line and "state_dict" in line
    line = error_line(capsys, export_cfg(f"ckpt={pretext}", f"output={tmp_path / 'm.pt2'}",
                                         "format=torch_export"))
    assert "format=torch_export" in line and str(pretext) in line and "pretext" in line
    line = error_line(capsys, export_cfg(f"ckpt={pretext}", "output=x.pth", "format=tflite"))
    assert "format='tflite'" in line
    line = error_line(capsys, export_cfg(f"ckpt={pretext}", f"output={tmp_path / 'e.pth'}",
                                         "format=safetensors"))
    assert "output=" in line and ".safetensors" in line
    assert "ckpt" in error_line(capsys, export_cfg("output=x.pth"))
    with pytest.raises(ConfigError, match="pip install no_such_module_here"):
        _require_package("onnx", "no_such_module_here")
    assert not (Path.cwd() / "x.pth").exists()


def test_cli_missing_checkpoint_is_one_error_line(tmp_path):
    missing = tmp_path / "nope" / "last.ckpt"
    proc = run_module("sssi.export", [f"ckpt={missing}", "output=encoder.pth"], cwd=tmp_path)
    assert proc.returncode == 1, proc.stderr
    last = proc.stderr.strip().splitlines()[-1]
    assert last.startswith("error: ") and str(missing) in last and "not found" in last
    assert not (tmp_path / "encoder.pth").exists()


def test_exports_sharing_a_stem_keep_a_description_each(ckpts, tmp_path):
    """``encoder.pth`` then ``encoder.pt`` in one folder: the second no longer replaces
    the first one's description (``encoder.json`` before)."""
    pretext, _ = ckpts
    first = run(export_cfg(f"ckpt={pretext}", f"output={tmp_path / 'encoder.pth'}"))
    second = run(export_cfg(f"ckpt={pretext}", f"output={tmp_path / 'encoder.pt'}"))
    for name, desc in (("encoder.pth", first), ("encoder.pt", second)):
        on_disk = json.loads((tmp_path / f"{name}.json").read_text())
        assert on_disk["sha256"] == desc["sha256"] == \
            hashlib.sha256((tmp_path / name).read_bytes()).hexdigest()
