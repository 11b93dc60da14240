"""The converged frozen-encoder probe (sssi.probe): its parts on toy tensors, and the
command end to end on the synthetic tiles."""

from __future__ import annotations

import json

import pytest
import torch
from torch import nn

from sssi.data.palettes import IGNORE_INDEX
from sssi.errors import ConfigError
from sssi.models import build_backbone
from sssi.probe import (
    choose_weight_decay,
    fit_logistic,
    layer_index,
    reestimate_batchnorm,
    sample_labelled,
)
from tests.helpers import run_module


def test_layer_names_index_the_encoders_feature_list():
    assert layer_index("layer3", 5) == 3 and layer_index("layer4", 5) == 4
    assert layer_index(-1, 5) == 4
    with pytest.raises(ConfigError, match="layer5"):
        layer_index("layer5", 5)
    with pytest.raises(ConfigError, match="stage3"):
        layer_index("stage3", 5)


def test_batchnorm_statistics_become_those_of_the_given_images():
    torch.manual_seed(0)
    net = nn.Sequential(nn.Conv2d(3, 4, 1, bias=False), nn.BatchNorm2d(4))
    net[1].running_mean.fill_(100.0)  # as if pretrained on other images
    images = [torch.randn(8, 3, 6, 6) * 2 + 5 for _ in range(3)]
    assert reestimate_batchnorm(net, images) == 24
    assert not net.training and net[1].momentum == 0.1  # restored
    with torch.no_grad():
        feats = torch.cat([net[0](x) for x in images])
    # the cumulative average of the per-batch means is the mean over all images
    torch.testing.assert_close(net[1].running_mean, feats.mean((0, 2, 3)), rtol=1e-4,
                               atol=1e-4)
    out = net(images[0])  # eval mode now normalises with them: about zero mean
    assert out.mean().abs() < 0.5


def test_labelled_pixels_are_sampled_at_their_centres_and_never_ignored():
    label = torch.full((2, 8, 8), IGNORE_INDEX)
    label[0, 2, 5] = 1
    label[1, 4:, :] = 3
    # a feature map at the label's resolution whose channel 0 is the row, 1 the column
    rows, cols = torch.meshgrid(torch.arange(8.0), torch.arange(8.0), indexing="ij")
    feature = torch.stack([rows, cols]).expand(2, 2, 8, 8)
    g = torch.Generator().manual_seed(0)
    (x,), y, crop = sample_labelled([feature], label, per_crop=5, generator=g)
    assert y.tolist()[0] == 1 and (y[1:] == 3).all() and len(y) == 6
    assert crop.tolist() == [0, 1, 1, 1, 1, 1]
    assert x[0].tolist() == [2.0, 5.0]  # exact at pixel centres
    assert (x[1:, 0] >= 4).all()  # only labelled rows


def test_logistic_fit_converges_and_beats_chance_on_separable_features():
    torch.manual_seed(0)
    centres = torch.randn(3, 16) * 3
    y = torch.randint(0, 3, (600,))
    x = centres[y] + torch.randn(600, 16)
    probe = fit_logistic(x, y, 3, weight_decay=1e-3, max_iter=200)
    assert probe.grad_norm < 1e-3 and probe.iterations > 0
    assert (probe.predict(x).argmax(1) == y).float().mean() > 0.95
    # the map form gives the same logits as the per-pixel form
    maps = x[:4].T.reshape(1, 16, 2, 2)
    torch.testing.assert_close(probe.logits(maps)[0].reshape(3, 4).T, probe.predict(x[:4]))


def test_weight_decay_is_chosen_on_held_out_crops():
    torch.manual_seed(1)
    y = torch.randint(0, 2, (400,))
    x = torch.randn(400, 64)  # pure noise: only a strong penalty generalises
    x[:, 0] += y * 0.5
    groups = torch.arange(400) // 10
    chosen, losses = choose_weight_decay(x, y, groups, 2, [1e-5, 1.0])
    assert set(losses) == {1e-5, 1.0} and chosen == 1.0
    assert choose_weight_decay(x, y, groups, 2, [0.1]) == (0.1, {})


@pytest.mark.slow
def test_probe_command_scores_layer3_and_layer4(synthetic_root, tmp_path):
    run = tmp_path / "probe"
    common = ["+debug=tiny", f"data.root={synthetic_root}", "data.synthetic.tiles=4",
              "data.num_workers=0",
              "probe.crops=8", "probe.max_iter=50"]
    proc = run_module("sssi.probe", [*common, "task.init=null", "probe.test=true",
                                      f"hydra.run.dir={run}"], cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    result = json.loads((run / "probe.json").read_text())
    assert set(result["layers"]) == {"layer3", "layer4"}
    assert result["init_source"] == "random" and result["batchnorm_images"] == 8
    for layer in result["layers"].values():
        assert 0.0 <= layer["mIoU"] <= 1.0 and layer["iterations"] >= 1
        assert 0.0 <= layer["test"]["mIoU"] <= 1.0 and layer["test"]["per_class_IoU"]
    bad = run_module("sssi.probe", [*common, "probe.layers=[layer9]",
                                    f"hydra.run.dir={tmp_path / 'bad'}"], cwd=tmp_path)
    assert bad.returncode == 1 and "probe.layers" in bad.stderr.strip().splitlines()[-1]
    assert not (tmp_path / "bad" / "probe.json").exists()


def test_probe_layers_exist_on_every_resnet():
    encoder = build_backbone("resnet18", output_stride=16)
    assert len(encoder.out_channels) == 5 and encoder.out_channels[layer_index("layer3", 5)] == 256


def test_probe_features_under_bf16_autocast_are_float32_and_close():
    from sssi.probe import _autocast

    encoder = build_backbone("resnet18", output_stride=16).eval()
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        plain = encoder(x)
        assert _autocast(encoder, None) is encoder
        half = _autocast(encoder, torch.bfloat16)(x)
    assert [f.dtype for f in half] == [torch.float32] * len(plain)
    for a, b in zip(plain, half, strict=True):
        assert a.shape == b.shape
        assert (a - b).abs().mean() < 0.05 * a.abs().mean() + 1e-3
