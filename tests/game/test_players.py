"""The game's two players: inpainter (shapes, paper decoder) and instructor (masks, VAE)."""

from __future__ import annotations

import pytest
import torch
from torch import Tensor, nn

from sssi.errors import ConfigError
from sssi.game.inpainter import Inpainter, decoder_plan
from sssi.game.instructor import Instructor, InstructorOutput
from sssi.game.masking import border_cell_grid, cell_border_stats, mask_stats
from sssi.models import build_backbone

CUDA = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")


def instructor_encoder(in_channels: int = 3):
    """The paper's instructor encoder: ResNet-18 without the stem max-pool (stride 16)."""
    return build_backbone("resnet18", in_channels=in_channels, stem_pool=False)


@pytest.fixture(scope="module")
def instructor() -> Instructor:
    torch.manual_seed(0)
    return Instructor(instructor_encoder(), latent_dim=16, ratio=0.25)


def gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def decoder_layers(model: Inpainter) -> list[tuple[int, int, int]]:
    return [
        (m.in_channels, m.out_channels, m.stride[0])
        for m in model.decoder
        if isinstance(m, nn.ConvTranspose2d)
    ]


# --- inpainter ---------------------------------------------------------------------------------


@pytest.mark.parametrize("bands", [3, 4, 5])
def test_inpainter_resnet18_restores_input_shape(bands: int) -> None:
    model = Inpainter(build_backbone("resnet18", in_channels=bands), out_channels=bands)
    assert model.reduction == 32
    x = torch.randn(2, bands, 64, 96)
    assert model(x).shape == x.shape
    # Five stride-2 layers undo reduction 32; the given five widths are all used.
    assert decoder_layers(model) == [
        (512, 512, 2),
        (512, 256, 2),
        (256, 128, 2),
        (128, 64, 2),
        (64, 32, 2),
    ]


def test_inpainter_drn_matches_paper() -> None:
    """DRN-A-50 (2048 ch, stride 8): 2048->512->256->128 stride 2, ->64->32 stride 1, tanh."""
    model = Inpainter(build_backbone("drn_a_50", in_channels=4), out_channels=4, output="tanh")
    assert model.reduction == 8
    assert decoder_layers(model) == [
        (2048, 512, 2),
        (512, 256, 2),
        (256, 128, 2),
        (128, 64, 1),
        (64, 32, 1),
    ]
    norms = [m for m in model.decoder if isinstance(m, nn.BatchNorm2d)]
    relus = [m for m in model.decoder if isinstance(m, nn.ReLU)]
    assert len(norms) == len(relus) == 5
    assert (model.head.in_channels, model.head.out_channels) == (32, 4)
    assert model.head.kernel_size == (3, 3)
    x = torch.randn(2, 4, 32, 40)
    out = model(x)
    assert out.shape == x.shape
    assert out.abs().max() <= 1.0


def test_inpainter_tanh_bounds_and_linear_unbounded() -> None:
    torch.manual_seed(0)
    x = 50 * torch.randn(2, 3, 64, 64)
    tanh = Inpainter(build_backbone("resnet18"), 3, output="tanh")
    assert tanh(x).abs().max() <= 1.0
    linear = Inpainter(build_backbone("resnet18"), 3, output="linear")
    with torch.no_grad():
        linear.head.bias.fill_(3.0)  # a linear output passes values beyond [-1, 1]
    assert linear(x).abs().max() > 1.0


def test_inpainter_rejects_non_multiple_sizes() -> None:
    model = Inpainter(build_backbone("resnet18"), 3)
    with pytest.raises(ValueError, match="100x64"):
        model(torch.randn(1, 3, 100, 64))


def test_inpainter_exposes_encoder_weights() -> None:
    encoder = build_backbone("resnet18", in_channels=4)
    model = Inpainter(encoder, 4)
    assert model.encoder is encoder
    keys = set(model.encoder.state_dict())
    assert "conv1.weight" in keys and "layer4.1.bn2.running_var" in keys
    assert {k for k in model.state_dict() if k.startswith("encoder.")} == {
        f"encoder.{k}" for k in keys
    }


def test_decoder_plan_extends_channels() -> None:
    assert decoder_plan(64, [256, 128]) == [
        (256, 2),
        (128, 2),
        (128, 2),
        (128, 2),
        (128, 2),
        (128, 2),
    ]
    assert decoder_plan(16, (64, 32, 16, 8, 4, 2)) == [
        (64, 2),
        (32, 2),
        (16, 2),
        (8, 2),
        (4, 1),
        (2, 1),
    ]
    with pytest.raises(ConfigError, match="power of 2"):
        decoder_plan(12, [64])


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"output": "sigmoid"}, "output='sigmoid'"),
        ({"decoder_channels": ()}, "decoder_channels"),
        ({"decoder_channels": (64, 0)}, "decoder_channels"),
        ({"out_channels": 0}, "out_channels"),
    ],
)
def test_inpainter_bad_options(kwargs: dict, match: str) -> None:
    options = {"out_channels": 3, **kwargs}
    with pytest.raises(ConfigError, match=match):
        Inpainter(build_backbone("resnet18"), **options)


# --- instructor: network ----------------------------------------------------------------------


def test_instructor_scores_per_16px_cell(instructor: Instructor) -> None:
    assert instructor.cell_size == 16
    out = instructor.eval()(torch.randn(2, 3, 64, 96))
    assert isinstance(out, InstructorOutput)
    assert out.scores.shape == (2, 1, 4, 6)
    assert out.mu.shape == out.logvar.shape == (2, 16, 4, 6)
    assert out.kl.ndim == 0 and out.kl.dtype == torch.float32


def test_kl_nonnegative_and_zero_at_prior() -> None:
    torch.manual_seed(0)
    model = Instructor(instructor_encoder(), latent_dim=8)
    x = torch.randn(2, 3, 64, 64)
    kl = model.train()(x, generator=gen(0)).kl
    assert kl.item() >= 0.0
    with torch.no_grad():
        for conv in (model.to_mu, model.to_logvar):
            conv.weight.zero_()
            conv.bias.zero_()
    assert model(x, generator=gen(0)).kl.item() == 0.0
    with torch.no_grad():
        model.to_mu.bias.fill_(1.0)  # mu = 1 everywhere: KL = latent_dim * 1/2 per cell
    assert model(x, generator=gen(0)).kl.item() == pytest.approx(8 * 0.5)


def test_eval_mode_is_deterministic(instructor: Instructor) -> None:
    instructor.eval()
    x = torch.randn(2, 3, 64, 64)
    a = instructor(x).scores
    b = instructor(x, generator=gen(1)).scores
    assert torch.equal(a, b)


def test_train_mode_sampling_follows_generator() -> None:
    torch.manual_seed(0)
    model = Instructor(instructor_encoder(), latent_dim=8).train()
    x = torch.randn(2, 3, 64, 64)
    a = model(x, generator=gen(3)).scores
    b = model(x, generator=gen(3)).scores
    c = model(x, generator=gen(4)).scores
    assert torch.equal(a, b)
    assert not torch.equal(a, c)
    state = torch.get_rng_state()
    model(x, generator=gen(3))
    assert torch.equal(torch.get_rng_state(), state)  # no global reseeding or draws


# --- instructor: masks -------------------------------------------------------------------------


@pytest.mark.parametrize("ratio", [0.1, 0.25, 0.5])
def test_hard_mask_exactly_k_even_with_ties(ratio: float) -> None:
    model = Instructor(instructor_encoder(), latent_dim=4, ratio=ratio)
    k = round(ratio * 64)
    tied = torch.zeros(3, 1, 8, 8)  # every score equal
    tied[1, 0, :2] = 1.0  # 16 cells tie at the top
    tied[2] = torch.arange(64.0).view(8, 8) // 4  # ties in groups of four
    hard = model.hard_mask(tied)
    assert hard.shape == tied.shape and hard.dtype == torch.float32
    assert set(hard.unique().tolist()) <= {0.0, 1.0}
    assert (hard.sum(dim=(1, 2, 3)) == k).all()
    assert not hard.requires_grad


def test_hard_mask_takes_top_scores(instructor: Instructor) -> None:
    scores = torch.randn(4, 1, 4, 4)
    hard = instructor.hard_mask(scores)
    flat, holes = scores.flatten(1), hard.flatten(1).bool()
    assert (holes.sum(1) == 4).all()
    assert all(flat[i][holes[i]].min() > flat[i][~holes[i]].max() for i in range(4))


def test_soft_mask_threshold_and_gradient() -> None:
    torch.manual_seed(0)
    model = Instructor(instructor_encoder(), latent_dim=8, ratio=0.25).train()
    x = torch.randn(2, 3, 64, 64)
    out = model(x, generator=gen(0))
    soft = model.soft_mask(out.scores, alpha=1.0)
    assert soft.shape == out.scores.shape
    assert ((soft > 0).all() and (soft < 1).all()).item()
    assert ((soft > 0.5).sum(dim=(1, 2, 3)) == 4).all()  # k = 0.25 * 16 cells
    # As the paper's instructor loss: the error map weighted by the upsampled soft mask.
    error = torch.rand(2, 1, 64, 64)
    loss = 1 - (model.upsample(soft, x.shape[-2:]) * error).mean() + 1e-6 * out.kl
    loss.backward()
    for name in ("to_score.weight", "to_mu.weight", "to_logvar.weight", "encoder.conv1.weight"):
        grad = dict(model.named_parameters())[name].grad
        assert grad is not None and grad.abs().sum() > 0, name


def test_soft_mask_sharpens_with_alpha(instructor: Instructor) -> None:
    scores = torch.randn(2, 1, 4, 4)
    sharp = instructor.soft_mask(scores, alpha=1e4)
    assert torch.equal(sharp.round(), instructor.hard_mask(scores))
    assert mask_stats(sharp)["entropy"] < mask_stats(instructor.soft_mask(scores))["entropy"]


def test_upsample_is_nearest_per_cell(instructor: Instructor) -> None:
    cells = torch.tensor([[[[1.0, 0.0], [0.0, 1.0]]]])
    up = instructor.upsample(cells, (32, 48))
    assert up.shape == (1, 1, 32, 48)
    assert up[0, 0, :16, :24].all() and not up[0, 0, :16, 24:].any()
    assert up[0, 0, 16:, 24:].all() and not up[0, 0, 16:, :24].any()
    assert instructor.upsample(cells, (30, 50)).shape == (1, 1, 30, 50)  # non-multiples


@pytest.mark.parametrize("size", [(64, 64), (128, 128), (64, 128)])
def test_hard_and_soft_masks(instructor: Instructor, size: tuple[int, int]) -> None:
    instructor.eval()
    x = torch.randn(2, 3, *size)
    masks = instructor.masks(x)
    assert masks.shape == (2, 1, *size) and masks.dtype == torch.float32
    assert not masks.requires_grad
    assert (masks.mean(dim=(1, 2, 3)) == instructor.ratio).all()  # exact: sizes divide
    soft = instructor.masks(x, hard=False, alpha=100.0)
    assert soft.requires_grad and soft.shape == masks.shape


def test_masks_follow_the_generator_in_train_mode() -> None:
    torch.manual_seed(0)
    model = Instructor(instructor_encoder(), latent_dim=8).train()
    x = torch.randn(2, 3, 64, 64)
    assert torch.equal(model.masks(x, generator=gen(2)), model.masks(x, generator=gen(2)))
    assert not torch.equal(model.masks(x, generator=gen(2)), model.masks(x, generator=gen(3)))


@pytest.mark.parametrize("tied", [False, True])
def test_border_cells_never_erased_and_still_k(tied: bool) -> None:
    """border_cells=1: the 28 ring cells of an 8x8 grid are never chosen, even when they
    score highest; still exactly k = 16 holes (25 % of all 64 cells) per image."""
    model = Instructor(instructor_encoder(), latent_dim=4, ratio=0.25, border_cells=1)
    ring = border_cell_grid(8, 8)
    scores = torch.zeros(4, 1, 8, 8) if tied else torch.randn(4, 1, 8, 8)
    scores[:, :, ring] += 10.0  # the ring is what a shortcut-taking instructor prefers
    hard = model.hard_mask(scores)
    assert (hard.sum(dim=(1, 2, 3)) == 16).all()
    assert not hard[:, :, ring].any()
    assert cell_border_stats(hard)["border_freq"].item() == 0.0
    scores.requires_grad_(True)
    soft = model.soft_mask(scores, alpha=1.0)
    assert (soft[:, :, ring] == 0).all()
    assert ((soft > 0.5).sum(dim=(1, 2, 3)) <= 16).all()
    if not tied:
        assert ((soft > 0.5).sum(dim=(1, 2, 3)) == 16).all()
        assert torch.equal(model.soft_mask(scores.detach(), alpha=1e4).round(), hard)
    soft.sum().backward()
    assert (scores.grad[:, :, ring] == 0).all() and (scores.grad[:, :, ~ring] != 0).any()
    # the pixel masks keep the erased fraction: 16 full cells of 64
    x = torch.randn(2, 3, 128, 128)
    masks = model.eval().masks(x)
    assert (masks.mean(dim=(1, 2, 3)) == 0.25).all()
    assert not masks[:, :, :16].any() and not masks[:, :, :, -16:].any()


def test_border_cells_clamp_k_and_refuse_grids_without_candidates() -> None:
    model = Instructor(instructor_encoder(), latent_dim=4, ratio=0.25, border_cells=1)
    # 4x4 cells (64 px crops): 4 candidates; k = 4 is clamped to 3 (one stays visible)
    hard = model.hard_mask(torch.randn(3, 1, 4, 4))
    assert (hard.sum(dim=(1, 2, 3)) == 3).all() and not hard[:, :, border_cell_grid(4, 4)].any()
    assert ((model.soft_mask(torch.randn(3, 1, 4, 4)) > 0.5).sum(dim=(1, 2, 3)) == 3).all()
    with pytest.raises(ConfigError, match=r"mask_policy\.instructor\.network\.border_cells=1: "
                                          r".* 3x3 .* 1 candidate"):
        model.hard_mask(torch.zeros(1, 1, 3, 3))
    wide = Instructor(instructor_encoder(), latent_dim=4, border_cells=2)
    with pytest.raises(ConfigError, match=r"mask_policy\.instructor\.network\.border_cells=2"):
        wide.soft_mask(torch.zeros(1, 1, 4, 8))
    assert wide.hard_mask(torch.randn(1, 1, 6, 6)).sum() == 3  # 2x2 candidates: k 9 -> 3


def test_instructor_needs_two_cells(instructor: Instructor) -> None:
    with pytest.raises(ValueError, match="1 cell"):
        instructor.hard_mask(torch.zeros(1, 1, 1, 1))


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"ratio": 1.0}, r"mask_policy\.instructor\.network\.ratio=1\.0"),
        ({"ratio": 0}, r"mask_policy\.instructor\.network\.ratio=0"),
        ({"latent_dim": 0}, r"mask_policy\.instructor\.network\.latent_dim=0"),
        ({"border_cells": -1}, r"mask_policy\.instructor\.network\.border_cells=-1"),
        ({"border_cells": 1.5}, r"mask_policy\.instructor\.network\.border_cells=1\.5"),
    ],
)
def test_instructor_bad_options(kwargs: dict, match: str) -> None:
    with pytest.raises(ConfigError, match=match):
        Instructor(instructor_encoder(), **kwargs)


@CUDA
def test_instructor_follows_device() -> None:
    model = Instructor(instructor_encoder(), latent_dim=8).cuda().train()
    x = torch.randn(2, 3, 64, 64, device="cuda")
    masks = model.masks(x, generator=gen(0))  # a CPU generator is fine
    assert masks.device == x.device
    soft: Tensor = model.masks(x, hard=False, generator=torch.Generator("cuda").manual_seed(0))
    assert soft.device == x.device
