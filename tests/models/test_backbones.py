"""Backbone registry and ResNet encoders: shapes, torchvision key names, weight loading."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest
import torch
from torch import Tensor, nn

from sssi.errors import ConfigError
from sssi.models import (
    Encoder,
    adapt_input_conv,
    build_backbone,
    list_backbones,
    register,
    registry,
)
from sssi.models.resnet import ResNet
from tests.helpers import CONF

CONF_DIR = CONF / "backbone"
SIZE = 64

# torchvision's ResNet definitions: block type and blocks per stage.
TORCHVISION_RESNETS: dict[str, tuple[str, tuple[int, int, int, int]]] = {
    "resnet18": ("basic", (2, 2, 2, 2)),
    "resnet34": ("basic", (3, 4, 6, 3)),
    "resnet50": ("bottleneck", (3, 4, 6, 3)),
    "resnet101": ("bottleneck", (3, 4, 23, 3)),
}
# len(torchvision.models.resnetXX().state_dict()), fc included.
TORCHVISION_KEY_COUNTS = {"resnet18": 122, "resnet34": 218, "resnet50": 320, "resnet101": 626}


def _bn(prefix: str, channels: int) -> dict[str, tuple[int, ...]]:
    shapes: dict[str, tuple[int, ...]] = {
        f"{prefix}.{name}": (channels,)
        for name in ("weight", "bias", "running_mean", "running_var")
    }
    shapes[f"{prefix}.num_batches_tracked"] = ()
    return shapes


def torchvision_shapes(arch: str, in_channels: int = 3) -> dict[str, tuple[int, ...]]:
    """Key -> shape of torchvision's ``resnetXX().state_dict()``, written from its rules.

    Independent of sssi's code on purpose: the stem is conv1/bn1; stage i (planes 64 * 2**i)
    holds blocks named ``layer{i+1}.{b}``; a BasicBlock has conv1/bn1/conv2/bn2 (3x3), a
    Bottleneck conv1 (1x1), conv2 (3x3), conv3 (1x1, x4 channels) with bn1..bn3; the first
    block of a stage gets ``downsample.0`` (1x1 conv) and ``downsample.1`` (BN) when the
    stride or channel count changes; the classifier is ``fc`` with 1000 classes.
    """
    kind, layers = TORCHVISION_RESNETS[arch]
    expansion = 1 if kind == "basic" else 4
    shapes: dict[str, tuple[int, ...]] = {"conv1.weight": (64, in_channels, 7, 7)}
    shapes.update(_bn("bn1", 64))
    inplanes = 64
    for stage, blocks in enumerate(layers):
        planes = 64 * 2**stage
        width = planes * expansion
        for b in range(blocks):
            p = f"layer{stage + 1}.{b}"
            cin = inplanes if b == 0 else width
            if kind == "basic":
                shapes[f"{p}.conv1.weight"] = (planes, cin, 3, 3)
                shapes.update(_bn(f"{p}.bn1", planes))
                shapes[f"{p}.conv2.weight"] = (planes, planes, 3, 3)
                shapes.update(_bn(f"{p}.bn2", planes))
            else:
                shapes[f"{p}.conv1.weight"] = (planes, cin, 1, 1)
                shapes.update(_bn(f"{p}.bn1", planes))
                shapes[f"{p}.conv2.weight"] = (planes, planes, 3, 3)
                shapes.update(_bn(f"{p}.bn2", planes))
                shapes[f"{p}.conv3.weight"] = (width, planes, 1, 1)
                shapes.update(_bn(f"{p}.bn3", width))
            if b == 0 and (stage > 0 or inplanes != width):
                shapes[f"{p}.downsample.0.weight"] = (width, inplanes, 1, 1)
                shapes.update(_bn(f"{p}.downsample.1", width))
        inplanes = width
    shapes["fc.weight"] = (1000, inplanes)
    shapes["fc.bias"] = (1000,)
    return shapes


def random_state_dict(shapes: dict[str, tuple[int, ...]], seed: int = 0) -> dict[str, Tensor]:
    gen = torch.Generator().manual_seed(seed)
    state = {}
    for key, shape in shapes.items():
        if key.endswith("num_batches_tracked"):
            state[key] = torch.randint(1, 10_000, (), generator=gen, dtype=torch.long)
        elif key.endswith("running_var"):
            state[key] = torch.rand(shape, generator=gen) + 0.5
        else:
            state[key] = torch.randn(shape, generator=gen)
    return state


def save(state: dict[str, Tensor], path: Path) -> Path:
    torch.save(state, path)
    return path


@pytest.fixture(scope="module")
def _rgb_resnet18_file(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict]:
    state = random_state_dict(torchvision_shapes("resnet18"))
    return save(state, tmp_path_factory.mktemp("weights") / "resnet18-imagenet.pth"), state


@pytest.fixture
def rgb_resnet18_file(_rgb_resnet18_file: tuple[Path, dict]) -> tuple[Path, dict[str, Tensor]]:
    """A torchvision-style RGB ResNet-18 file (written once) and a copy of its tensors."""
    path, state = _rgb_resnet18_file
    return path, dict(state)


@pytest.fixture
def isolated_registry(monkeypatch: pytest.MonkeyPatch) -> dict:
    """A copy of the registry, so test builders do not leak into other tests."""
    copy = dict(registry._REGISTRY)
    monkeypatch.setattr(registry, "_REGISTRY", copy)
    return copy


def feature_shapes(model: nn.Module, in_channels: int, size: int = SIZE) -> list[tuple]:
    device = next(model.parameters()).device
    with torch.no_grad():
        feats = model.eval()(torch.randn(1, in_channels, size, size, device=device))
    return [tuple(f.shape) for f in feats]


def build_on_meta(name: str, **kwargs: object) -> Encoder:
    """Build without allocating or computing: for tests of shapes and structure only.

    Meta tensors run every shape rule of the real kernels, so feature sizes are exact,
    at a fraction of the cost of 44M-parameter CPU models on a 2-core CI runner.
    """
    with torch.device("meta"):
        return build_backbone(name, **kwargs)


# --- registry -------------------------------------------------------------------------


class _Toy(Encoder):
    def __init__(self, in_channels: int, width: int) -> None:
        super().__init__()
        self.in_channels = in_channels
        self.conv = nn.Conv2d(in_channels, width, 3, stride=2, padding=1)
        self.out_channels = [width]
        self.reductions = [2]

    def forward(self, x: Tensor) -> list[Tensor]:
        return [self.conv(x)]


def test_registry_round_trip(isolated_registry: dict) -> None:
    @register("toy_test_net")
    def toy(in_channels: int = 3, width: int = 8) -> _Toy:
        return _Toy(in_channels, width)

    assert "toy_test_net" in list_backbones()
    model = build_backbone("toy_test_net", in_channels=5, width=6)
    assert isinstance(model, _Toy)
    assert feature_shapes(model, 5, 16) == [(1, 6, 8, 8)]
    # Registering the same function again is harmless; a different one is an error.
    register("toy_test_net")(toy)
    with pytest.raises(ValueError, match="toy_test_net"):
        register("toy_test_net")(lambda in_channels=3: _Toy(in_channels, 4))


def test_builtin_names_registered() -> None:
    assert {"resnet18", "resnet34", "resnet50", "resnet101", "drn_a_50"} <= set(list_backbones())
    assert list_backbones() == sorted(list_backbones())


def test_unknown_name_lists_known_names() -> None:
    with pytest.raises(ConfigError, match="resnet5O") as info:
        build_backbone("resnet5O")
    for name in ("resnet18", "resnet50", "drn_a_50"):
        assert name in str(info.value)


def test_unknown_option_is_config_error() -> None:
    with pytest.raises(ConfigError, match="outputstride"):
        build_backbone("resnet18", outputstride=16)


def test_builder_breaking_contract_is_caught(isolated_registry: dict) -> None:
    @register("not_an_encoder")
    def bad(in_channels: int = 3) -> nn.Module:
        return nn.Conv2d(in_channels, 4, 1)

    with pytest.raises(TypeError, match="out_channels"):
        build_backbone("not_an_encoder")


# --- shapes ---------------------------------------------------------------------------

RESNETS = ["resnet18", "resnet34", "resnet50", "resnet101"]


@pytest.mark.parametrize("name", RESNETS)
@pytest.mark.parametrize("output_stride", [32, 16, 8])
@pytest.mark.parametrize("stem_pool", [True, False])
def test_declared_shapes_match_features(name: str, output_stride: int, stem_pool: bool) -> None:
    model = build_on_meta(name, output_stride=output_stride, stem_pool=stem_pool)
    expected = {32: [2, 4, 8, 16, 32], 16: [2, 4, 8, 16, 16], 8: [2, 4, 8, 8, 8]}[output_stride]
    if not stem_pool:  # everything after the stem halves
        expected = [expected[0]] + [r // 2 for r in expected[1:]]
    assert model.reductions == expected
    assert model.output_stride == model.reductions[-1]
    width = 64 if TORCHVISION_RESNETS[name][0] == "basic" else 256
    assert model.out_channels == [64, width, 2 * width, 4 * width, 8 * width]
    shapes = feature_shapes(model, 3)
    assert [s[1] for s in shapes] == model.out_channels
    assert [(s[2], s[3]) for s in shapes] == [(SIZE // r, SIZE // r) for r in model.reductions]


def test_documented_examples() -> None:
    assert build_on_meta("resnet50").reductions == [2, 4, 8, 16, 32]
    assert build_on_meta("resnet50", output_stride=8).reductions == [2, 4, 8, 8, 8]
    instructor = build_backbone("resnet18", stem_pool=False)
    assert instructor.reductions == [2, 2, 4, 8, 16]
    drn = build_backbone("drn_a_50")
    assert drn.reductions == [2, 4, 8, 8, 8]
    assert drn.out_channels == [64, 256, 512, 1024, 2048]
    assert feature_shapes(drn, 3)[-1] == (1, 2048, SIZE // 8, SIZE // 8)
    model = build_backbone("resnet50", in_channels=4, dilated=True)
    assert model.reductions == [2, 4, 8, 8, 8]
    assert feature_shapes(model, 4)[-1] == (1, 2048, SIZE // 8, SIZE // 8)


@pytest.mark.parametrize("in_channels", [1, 3, 4, 5])
def test_any_band_count(in_channels: int) -> None:
    model = build_backbone("resnet18", in_channels=in_channels)
    assert model.in_channels == in_channels
    assert model.conv1.weight.shape == (64, in_channels, 7, 7)
    assert feature_shapes(model, in_channels)[-1] == (1, 512, 2, 2)


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"output_stride": 4}, "output_stride"),
        ({"dilated": True, "output_stride": 16}, "dilated"),
        ({"in_channels": 0}, "in_channels"),
        ({"entry_dilation": "two"}, "entry_dilation"),
    ],
)
def test_bad_options(kwargs: dict, match: str) -> None:
    with pytest.raises(ConfigError, match=match):
        build_backbone("resnet18", **kwargs)


def test_drn_a_50_rejects_other_strides() -> None:
    with pytest.raises(ConfigError, match="drn_a_50"):
        build_backbone("drn_a_50", output_stride=32)


# --- dilation -------------------------------------------------------------------------


def _param_shapes(model: nn.Module) -> dict[str, tuple[int, ...]]:
    return {k: tuple(v.shape) for k, v in model.state_dict().items()}


@pytest.mark.parametrize("name", ["resnet18", "resnet50"])
def test_dilation_keeps_parameter_shapes(name: str) -> None:
    reference = _param_shapes(build_on_meta(name))
    for output_stride in (16, 8):
        assert _param_shapes(build_on_meta(name, output_stride=output_stride)) == reference
    assert _param_shapes(build_on_meta(name, stem_pool=False)) == reference
    if name == "resnet50":
        assert _param_shapes(build_on_meta("drn_a_50")) == reference


def _dilations(model: ResNet, conv: str) -> dict[str, int]:
    out = {}
    for name, module in model.named_modules():
        if name.endswith(conv) and name.startswith(("layer3", "layer4")):
            assert isinstance(module, nn.Conv2d)
            assert module.padding[0] == module.dilation[0]
            out[name.removesuffix(f".{conv}")] = module.dilation[0]
    return out


def test_dilation_layout() -> None:
    # torchvision's replace_stride_with_dilation: a dilated stage's first block keeps the
    # previous stage's dilation.
    tv = _dilations(build_on_meta("resnet50", output_stride=8), "conv2")
    assert tv["layer3.0"] == 1 and tv["layer3.1"] == 2 and tv["layer3.5"] == 2
    assert tv["layer4.0"] == 2 and tv["layer4.1"] == 4 and tv["layer4.2"] == 4
    os16 = _dilations(build_on_meta("resnet50", output_stride=16), "conv2")
    assert set(os16.values()) == {1, 2} and os16["layer4.0"] == 1 and os16["layer4.1"] == 2
    # The authors' DRN-A: the first block of every dilated stage is undilated.
    drn = _dilations(build_on_meta("drn_a_50"), "conv2")
    assert drn["layer3.0"] == 1 and drn["layer3.1"] == 2
    assert drn["layer4.0"] == 1 and drn["layer4.1"] == 4
    drn_tv = _dilations(build_on_meta("drn_a_50", entry_dilation="previous"), "conv2")
    assert drn_tv == tv
    # BasicBlock accepts dilation too (torchvision refuses it), on both 3x3 convs.
    r18 = build_on_meta("resnet18", output_stride=8)
    assert _dilations(r18, "conv1")["layer4.1"] == 4 and _dilations(r18, "conv2")["layer4.1"] == 4


# --- torchvision names and weight loading ---------------------------------------------


@pytest.mark.parametrize("name", RESNETS)
def test_state_dict_names_match_torchvision(name: str) -> None:
    expected = torchvision_shapes(name, in_channels=4)
    assert len(expected) == TORCHVISION_KEY_COUNTS[name]
    del expected["fc.weight"], expected["fc.bias"]
    assert _param_shapes(build_on_meta(name, in_channels=4)) == expected


@pytest.mark.parametrize(
    ("name", "arch", "options"),
    [("resnet18", "resnet18", {"output_stride": 8}), ("drn_a_50", "resnet50", {})],
)
def test_load_torchvision_state_dict(
    name: str, arch: str, options: dict, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    state = random_state_dict(torchvision_shapes(arch), seed=1)
    path = save(state, tmp_path / f"{arch}.pth")
    with caplog.at_level(logging.INFO, logger="sssi.models.registry"):
        model = build_backbone(name, weights=str(path), **options)
    loaded = model.state_dict()
    assert set(loaded) == set(state) - {"fc.weight", "fc.bias"}
    for key, value in loaded.items():
        assert torch.equal(value, state[key]), key
    assert "fc.weight" in caplog.text  # the dropped classifier is reported, not hidden


def test_old_file_without_batch_counters_loads(
    rgb_resnet18_file: tuple[Path, dict[str, Tensor]], tmp_path: Path
) -> None:
    _, state = rgb_resnet18_file
    old = {k: v for k, v in state.items() if not k.endswith("num_batches_tracked")}
    model = build_backbone("resnet18", weights=save(old, tmp_path / "old.pth"))
    assert torch.equal(model.layer1[0].bn1.running_var, state["layer1.0.bn1.running_var"])


@pytest.mark.parametrize("in_channels", [1, 3, 4, 5])
def test_rgb_weights_adapt_to_band_count(
    in_channels: int, rgb_resnet18_file: tuple[Path, dict[str, Tensor]]
) -> None:
    path, state = rgb_resnet18_file
    model = build_backbone("resnet18", in_channels=in_channels, weights=path)
    rgb = state["conv1.weight"]
    got = model.conv1.weight.detach()
    assert got.shape == (64, in_channels, 7, 7)
    scale = 3 / in_channels
    keep = min(in_channels, 3)
    torch.testing.assert_close(got[:, :keep], rgb[:, :keep] * scale)
    for band in range(3, in_channels):
        torch.testing.assert_close(got[:, band], rgb.mean(dim=1) * scale)
    # Everything past the stem is untouched.
    assert torch.equal(model.layer2[0].downsample[0].weight, state["layer2.0.downsample.0.weight"])


def test_adapt_input_conv_values() -> None:
    weight = torch.arange(2 * 3 * 1 * 1, dtype=torch.float32).reshape(2, 3, 1, 1)
    out = adapt_input_conv(weight, 4)
    expected = torch.tensor([[0.0, 1.0, 2.0, 1.0], [3.0, 4.0, 5.0, 4.0]]) * 0.75
    torch.testing.assert_close(out[..., 0, 0], expected)
    # Constant input of 1 in every band: the adapted filter's response equals the
    # original filter's response to a 3-band input of 1, keeping activation scale.
    torch.testing.assert_close(out.sum(dim=1), weight.sum(dim=1))


def test_missing_key_names_key_and_file(
    rgb_resnet18_file: tuple[Path, dict[str, Tensor]], tmp_path: Path
) -> None:
    _, state = rgb_resnet18_file
    del state["layer3.1.bn2.running_var"]
    path = save(state, tmp_path / "missing.pth")
    with pytest.raises(ConfigError) as info:
        build_backbone("resnet18", weights=path)
    message = str(info.value)
    assert "layer3.1.bn2.running_var" in message and str(path) in message
    assert "missing" in message


def test_wrong_shape_names_key_and_file(
    rgb_resnet18_file: tuple[Path, dict[str, Tensor]], tmp_path: Path
) -> None:
    _, state = rgb_resnet18_file
    state["layer2.0.downsample.0.weight"] = torch.zeros(128, 32, 1, 1)
    path = save(state, tmp_path / "shape.pth")
    with pytest.raises(ConfigError) as info:
        build_backbone("resnet18", weights=path)
    message = str(info.value)
    assert "layer2.0.downsample.0.weight" in message and str(path) in message
    assert "(128, 32, 1, 1)" in message and "(128, 64, 1, 1)" in message


def test_unexpected_key_is_not_ignored(
    rgb_resnet18_file: tuple[Path, dict[str, Tensor]], tmp_path: Path
) -> None:
    _, state = rgb_resnet18_file
    state["layer5.0.conv1.weight"] = torch.zeros(1)
    path = save(state, tmp_path / "extra.pth")
    with pytest.raises(ConfigError, match=r"unexpected keys: layer5\.0\.conv1\.weight"):
        build_backbone("resnet18", weights=path)


def test_wrong_architecture_file(rgb_resnet18_file: tuple[Path, dict[str, Tensor]]) -> None:
    path, _ = rgb_resnet18_file
    with pytest.raises(ConfigError, match=r"do not fit backbone 'resnet34'.*layer1\.2\.conv1"):
        build_backbone("resnet34", weights=path)


def test_four_band_file_into_three_band_model(tmp_path: Path) -> None:
    state = random_state_dict(torchvision_shapes("resnet18", in_channels=4))
    path = save(state, tmp_path / "rgbir.pth")
    model = build_backbone("resnet18", in_channels=4, weights=path)  # same bands: as is
    assert torch.equal(model.conv1.weight, state["conv1.weight"])
    with pytest.raises(ConfigError, match=r"conv1\.weight: file \(64, 4, 7, 7\)"):
        build_backbone("resnet18", in_channels=3, weights=path)


def test_unreadable_files(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"not found: .*nope\.pth"):
        build_backbone("resnet18", weights=tmp_path / "nope.pth")
    garbage = tmp_path / "garbage.pth"
    garbage.write_bytes(b"not a checkpoint at all")
    with pytest.raises(ConfigError, match=r"garbage\.pth"):
        build_backbone("resnet18", weights=garbage)
    tensor_file = save(torch.zeros(3), tmp_path / "tensor.pth")  # type: ignore[arg-type]
    with pytest.raises(ConfigError, match=r"tensor\.pth.*not a state dict"):
        build_backbone("resnet18", weights=tensor_file)
    with pytest.raises(ConfigError, match="empty"):
        build_backbone("resnet18", weights="")


# --- runtime modes --------------------------------------------------------------------


@torch.no_grad()
def test_zero_init_residual() -> None:
    model = build_backbone("resnet50", zero_init_residual=True)
    assert all(float(block.bn3.weight.abs().sum()) == 0 for block in model.layer2)
    assert float(model.layer2[0].bn2.weight.sum()) > 0
    r18 = build_backbone("resnet18", zero_init_residual=True)
    assert float(r18.layer1[0].bn2.weight.abs().sum()) == 0


def test_channels_last_bf16_autocast_and_backward() -> None:
    model = build_backbone("resnet18", in_channels=4, stem_pool=False).to(
        memory_format=torch.channels_last
    )
    x = torch.randn(2, 4, 32, 32).to(memory_format=torch.channels_last)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        feats = model(x)
    assert [f.dtype for f in feats] == [torch.bfloat16] * 5
    assert all(torch.isfinite(f.float()).all() for f in feats)
    loss = sum(f.float().mean() for f in feats)
    loss.backward()
    assert model.conv1.weight.grad is not None
    assert torch.isfinite(model.conv1.weight.grad).all()
    # fp32 eager in channels_last matches contiguous memory layout.
    model.eval()
    with torch.no_grad():
        a = model(x)[-1]
        b = model(x.contiguous())[-1]
    torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-4)


# --- Hydra configs --------------------------------------------------------------------


@pytest.mark.parametrize(
    ("config", "reductions"),
    [
        ("resnet18", [2, 4, 8, 16, 32]),
        ("resnet34", [2, 4, 8, 16, 32]),
        ("resnet50", [2, 4, 8, 16, 32]),
        ("drn_a_50", [2, 4, 8, 8, 8]),
    ],
)
def test_hydra_config_instantiates(config: str, reductions: list[int]) -> None:
    hydra_utils = pytest.importorskip("hydra.utils")
    from omegaconf import OmegaConf

    cfg = OmegaConf.create(
        {"data": {"in_channels": 5}, "backbone": OmegaConf.load(CONF_DIR / f"{config}.yaml")}
    )
    with torch.device("meta"):
        model = hydra_utils.instantiate(cfg.backbone)
    assert isinstance(model, ResNet)
    assert model.in_channels == 5 and model.reductions == reductions
