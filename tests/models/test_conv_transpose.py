"""The matrix-product transposed convolution: PyTorch's results, gradients and state dict."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from sssi.models import conv_transpose
from sssi.models.conv_transpose import GEMM_MIN_IN_CHANNELS, ConvTranspose2d, conv_transpose2d_gemm

FORMATS = [torch.contiguous_format, torch.channels_last]


def rel_err(a: torch.Tensor, b: torch.Tensor) -> float:
    a, b = a.detach().float(), b.detach().float()
    return float((a - b).abs().max() / b.abs().max())


# (in, out, kernel, stride, padding, input height, input width)
GEOMETRIES = [
    (6, 5, 4, 2, 1, 5, 7),   # the decoder's stride-2 layers, non-square input
    (6, 5, 3, 1, 1, 6, 4),   # its stride-1 layers
    (4, 3, 2, 2, 0, 3, 3),   # no overlap between taps
    (3, 2, 5, 3, 2, 4, 5),   # kernel larger than the stride, odd everything
]


@pytest.mark.parametrize("fmt", FORMATS)
@pytest.mark.parametrize("geometry", GEOMETRIES)
def test_gemm_matches_conv_transpose_and_its_gradients(geometry, fmt) -> None:
    c_in, c_out, k, s, p, h, w = geometry
    g = torch.Generator().manual_seed(0)
    x = torch.randn(2, c_in, h, w, generator=g).to(memory_format=fmt).requires_grad_(True)
    weight = torch.randn(c_in, c_out, k, k, generator=g).requires_grad_(True)
    bias = torch.randn(c_out, generator=g).requires_grad_(True)

    want = F.conv_transpose2d(x, weight, bias, stride=s, padding=p)
    got = conv_transpose2d_gemm(x, weight, bias, stride=(s, s), padding=(p, p))
    assert got.shape == want.shape and got.dtype == want.dtype
    assert rel_err(got, want) < 1e-5

    grad = torch.randn(want.shape, generator=g)
    wants = torch.autograd.grad(want, (x, weight, bias), grad)
    gots = torch.autograd.grad(got, (x, weight, bias), grad)
    for name, a, b in zip(("input", "weight", "bias"), gots, wants, strict=True):
        assert a.shape == b.shape, name
        assert rel_err(a, b) < 1e-5, name


def test_gemm_under_bf16_autocast_computes_in_bf16_and_returns_float_gradients() -> None:
    g = torch.Generator().manual_seed(1)
    x = torch.randn(2, 8, 4, 4, generator=g).requires_grad_(True)
    weight = torch.randn(8, 3, 4, 4, generator=g).requires_grad_(True)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        want = F.conv_transpose2d(x, weight, stride=2, padding=1)
        got = conv_transpose2d_gemm(x, weight, stride=(2, 2), padding=(1, 1))
    assert got.dtype == want.dtype == torch.bfloat16  # as autocast runs a convolution
    assert rel_err(got, want) < 2e-2
    gx, gw = torch.autograd.grad(got.float().sum(), (x, weight))
    assert gx.dtype == gw.dtype == torch.float32
    ref = torch.autograd.grad(F.conv_transpose2d(x, weight, stride=2, padding=1).sum(),
                              (x, weight))
    assert rel_err(gx, ref[0]) < 2e-2 and rel_err(gw, ref[1]) < 2e-2


def test_the_layer_takes_the_product_only_for_wide_plain_cpu_layers(monkeypatch) -> None:
    calls: list[int] = []
    real = conv_transpose.conv_transpose2d_gemm

    def spy(x, *args, **kwargs):
        calls.append(x.shape[1])
        return real(x, *args, **kwargs)

    monkeypatch.setattr(conv_transpose, "conv_transpose2d_gemm", spy)
    wide = GEMM_MIN_IN_CHANNELS
    x = torch.randn(1, wide, 2, 2)
    ConvTranspose2d(wide, 2, 4, stride=2, padding=1)(x)
    assert calls == [wide]
    for layer, inp in [
        (ConvTranspose2d(wide // 2, 2, 4, stride=2, padding=1), x[:, : wide // 2]),  # narrow
        (ConvTranspose2d(wide, 2, 4, stride=2, padding=1, groups=2), x),
        (ConvTranspose2d(wide, 2, 3, stride=2, padding=1, output_padding=1), x),
        (ConvTranspose2d(wide, 2, 3, padding=1, dilation=2), x),
    ]:
        layer(inp)
    assert calls == [wide]


def test_the_layer_keeps_torchs_parameters_and_results() -> None:
    torch.manual_seed(0)
    ours = ConvTranspose2d(GEMM_MIN_IN_CHANNELS, 3, 4, stride=2, padding=1, bias=True)
    theirs = nn.ConvTranspose2d(GEMM_MIN_IN_CHANNELS, 3, 4, stride=2, padding=1, bias=True)
    assert list(ours.state_dict()) == list(theirs.state_dict())
    ours.load_state_dict(theirs.state_dict())  # checkpoints load either way
    x = torch.randn(2, GEMM_MIN_IN_CHANNELS, 3, 2)
    assert rel_err(ours(x), theirs(x)) < 1e-5
    # an explicit output size goes to torch's kernel, which honours it
    assert ours(x, output_size=[7, 5]).shape[-2:] == (7, 5)


def test_the_papers_inpainter_takes_the_product_for_its_first_decoder_layer_only() -> None:
    from sssi.game.inpainter import Inpainter
    from sssi.models import build_backbone

    net = Inpainter(build_backbone("drn_a_50", in_channels=3, output_stride=8),
                    out_channels=3, output="tanh")
    x = torch.zeros(1, 2048, 2, 2)
    layers = [m for m in net.decoder if isinstance(m, nn.ConvTranspose2d)]
    assert all(isinstance(m, ConvTranspose2d) for m in layers)
    assert [m.takes_product(x[:, : m.in_channels]) for m in layers] == [True] + [False] * 4
    assert not layers[0].takes_product(x.to("meta"))  # other devices keep torch's kernel
