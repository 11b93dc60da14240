"""Mask policies: shapes, ratios, determinism under a generator, statistics, validation."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from torch import Tensor

from sssi.errors import ConfigError
from sssi.game.masking import (
    CenterHole,
    MaskPolicy,
    RandomBlocks,
    RandomPatches,
    border_cell_grid,
    cell_border_stats,
    count_holes,
    mask_stats,
)
from tests.helpers import CONF

CONF_DIR = CONF / "mask_policy"
RATIOS = (0.1, 0.25, 0.5)
CUDA = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")


def images(batch: int = 4, height: int = 64, width: int = 64, device: str = "cpu") -> Tensor:
    return torch.zeros(batch, 3, height, width, device=device)


def gen(seed: int, device: str = "cpu") -> torch.Generator:
    return torch.Generator(device=device).manual_seed(seed)


def erased_pixels(masks: Tensor) -> Tensor:
    return masks.sum(dim=(1, 2, 3))


POLICIES = [
    pytest.param(lambda: RandomBlocks(0.25, 16), id="blocks"),
    pytest.param(lambda: RandomPatches(0.25, 16), id="patches"),
    pytest.param(lambda: CenterHole(0.25), id="center"),
]


# --- contract shared by all policies -----------------------------------------------------


@pytest.mark.parametrize("make", POLICIES)
@pytest.mark.parametrize("size", [(64, 64), (48, 80), (37, 53)])
def test_shape_dtype_device_values(make, size: tuple[int, int]) -> None:
    policy = make()
    assert isinstance(policy, MaskPolicy) and policy.ratio == 0.25
    x = images(3, *size).to(torch.float64)  # the masks' dtype does not follow the images
    masks = policy(x, generator=gen(0))
    assert masks.shape == (3, 1, *size)
    assert masks.dtype == torch.float32 and masks.device == x.device
    assert set(masks.unique().tolist()) <= {0.0, 1.0}
    assert (erased_pixels(masks) > 0).all()
    assert list(policy.parameters()) == []


@pytest.mark.parametrize("make", POLICIES)
def test_default_generator_is_global_rng(make) -> None:
    policy = make()
    torch.manual_seed(3)
    a = policy(images())
    torch.manual_seed(3)
    b = policy(images())
    assert torch.equal(a, b)


@pytest.mark.parametrize("make", POLICIES)
def test_generator_leaves_global_rng_alone(make) -> None:
    state = torch.get_rng_state()
    make()(images(), generator=gen(1))
    assert torch.equal(torch.get_rng_state(), state)


# --- random blocks -------------------------------------------------------------------------


@pytest.mark.parametrize("ratio", RATIOS)
def test_blocks_reach_ratio_within_one_block(ratio: float) -> None:
    size, block = 96, 16
    masks = RandomBlocks(ratio, block)(images(64, size, size), generator=gen(0))
    need = math.ceil(ratio * size * size)
    erased = erased_pixels(masks)
    assert (erased >= need).all()
    assert (erased < need + block * block).all()


def test_blocks_paper_warmup() -> None:
    """16x16 blocks on 128x128 crops at 25 %: at least 16 blocks' worth, not grid-aligned."""
    masks = RandomBlocks(0.25, 16)(images(32, 128, 128), generator=gen(1))
    stats = mask_stats(masks)
    assert 0.25 <= stats["ratio"] < 0.25 + 256 / 128**2
    # Block edges fall at any pixel, not only on the 16-pixel grid.
    row_starts = (masks[:, 0, 1:, :] > masks[:, 0, :-1, :]).nonzero()[:, 1] + 1
    assert (row_starts % 16 != 0).any()


def test_blocks_are_square_blocks() -> None:
    """With a ratio below one block, each mask is a single block_size x block_size square."""
    masks = RandomBlocks(0.01, 8)(images(16, 64, 64), generator=gen(2))
    for mask in masks[:, 0]:
        rows, cols = mask.nonzero(as_tuple=True)
        assert mask.sum() == 64
        assert rows.max() - rows.min() == 7 and cols.max() - cols.min() == 7


def test_blocks_larger_than_image_are_clipped() -> None:
    masks = RandomBlocks(0.5, 64)(images(2, 16, 24), generator=gen(0))
    assert masks.shape == (2, 1, 16, 24)
    assert torch.equal(masks, torch.ones_like(masks))  # one clipped block covers all


def test_blocks_high_ratio_terminates() -> None:
    masks = RandomBlocks(0.9, 8)(images(4, 32, 32), generator=gen(0))
    assert (erased_pixels(masks) >= math.ceil(0.9 * 32 * 32)).all()


# --- random patches ------------------------------------------------------------------------


@pytest.mark.parametrize("ratio", RATIOS)
def test_patches_exact_count(ratio: float) -> None:
    size, patch = 128, 16
    masks = RandomPatches(ratio, patch)(images(32, size, size), generator=gen(0))
    n_cells = (size // patch) ** 2
    k = round(ratio * n_cells)
    assert (erased_pixels(masks) == k * patch * patch).all()
    # Each cell is all-erased or all-visible: the grid is aligned to patch_size.
    cells = F.avg_pool2d(masks, patch)
    assert set(cells.unique().tolist()) <= {0.0, 1.0}
    assert (cells.sum(dim=(1, 2, 3)) == k).all()
    if ratio == 0.25:
        assert (masks.mean(dim=(1, 2, 3)) == 0.25).all()


def test_patches_partial_edge_cells() -> None:
    """Non-multiples: the grid gets a cropped last row/column; still k cells per image."""
    height, width, patch = 40, 56, 16  # 3 x 4 cells, the last row/column partial
    masks = RandomPatches(0.25, patch)(images(64, height, width), generator=gen(0))
    padded = F.pad(masks, (0, 64 - width, 0, 48 - height), value=-1.0)
    cells = F.max_pool2d(padded, patch)
    assert (cells.sum(dim=(1, 2, 3)) == count_holes(0.25, 12)).all()
    # The partial edge cells are drawn too, not only the full interior ones.
    assert masks[:, :, 32:, :].sum() > 0 and masks[:, :, :, 48:].sum() > 0
    assert abs(float(masks.mean()) - 0.25) < 0.05


# --- centre hole -----------------------------------------------------------------------------


@pytest.mark.parametrize("size", [(64, 64), (64, 96), (50, 50)])
@pytest.mark.parametrize("ratio", RATIOS)
def test_center_area_and_position(size: tuple[int, int], ratio: float) -> None:
    height, width = size
    masks = CenterHole(ratio)(images(2, height, width))
    mask = masks[0, 0]
    rows, cols = mask.nonzero(as_tuple=True)
    hole_h = int(rows.max() - rows.min() + 1)
    hole_w = int(cols.max() - cols.min() + 1)
    assert mask.sum() == hole_h * hole_w  # one filled rectangle
    assert abs(hole_h * hole_w - ratio * height * width) <= hole_h / 2
    assert abs(int(rows.min()) - (height - int(rows.max()) - 1)) <= 1  # centred
    assert abs(int(cols.min()) - (width - int(cols.max()) - 1)) <= 1
    assert abs(hole_h / hole_w - height / width) < 0.1  # the image's aspect
    assert torch.equal(masks[0], masks[1])


def test_center_exact_quarter() -> None:
    masks = CenterHole(0.25)(images(1, 64, 64))
    assert masks.sum() == 32 * 32
    assert masks[0, 0, 16:48, 16:48].all()


def test_center_is_deterministic() -> None:
    policy = CenterHole(0.3)
    assert torch.equal(policy(images(), gen(0)), policy(images(), gen(1)))


# --- randomness ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "policy", [RandomBlocks(0.25, 16), RandomPatches(0.25, 16)], ids=["blocks", "patches"]
)
def test_generator_determinism(policy: MaskPolicy) -> None:
    a = policy(images(8), generator=gen(7))
    b = policy(images(8), generator=gen(7))
    c = policy(images(8), generator=gen(8))
    assert torch.equal(a, b)
    assert not torch.equal(a, c)
    # Masks differ from image to image within a batch.
    flat = a.flatten(1)
    assert all(not torch.equal(flat[i], flat[j]) for i in range(8) for j in range(i))


@CUDA
@pytest.mark.parametrize(
    "policy", [RandomBlocks(0.25, 16), RandomPatches(0.25, 16)], ids=["blocks", "patches"]
)
def test_cpu_generator_gives_same_masks_on_gpu(policy: MaskPolicy) -> None:
    on_gpu = policy(images(device="cuda"), generator=gen(5))
    assert on_gpu.device.type == "cuda"
    assert torch.equal(on_gpu.cpu(), policy(images(), generator=gen(5)))
    on_gpu_gen = policy(images(device="cuda"), generator=gen(5, "cuda"))
    assert on_gpu_gen.device.type == "cuda"


# --- statistics ------------------------------------------------------------------------------


def test_stats_on_hand_built_masks() -> None:
    masks = torch.zeros(2, 1, 16, 16)
    masks[0, :, :4, :4] = 1.0  # one hole, in the top-left cell of the 4x4 grid
    masks[1, :, :8, :] = 1.0  # the top half: 8 of the 16 cells
    stats = mask_stats(masks)
    assert set(stats) == {"ratio", "ratio_std", "entropy", "coverage"}
    assert all(v.ndim == 0 and v.dtype == torch.float32 for v in stats.values())
    assert stats["ratio"].item() == pytest.approx((16 / 256 + 0.5) / 2)
    assert stats["ratio_std"].item() == pytest.approx((0.5 - 16 / 256) / 2)
    assert stats["entropy"].item() == 0.0
    assert stats["coverage"].item() == pytest.approx((1 / 16 + 8 / 16) / 2)


def test_stats_soft_and_spread_masks() -> None:
    half = mask_stats(torch.full((3, 1, 8, 8), 0.5))
    assert half["entropy"].item() == pytest.approx(math.log(2))
    assert half["ratio_std"].item() == 0.0
    grid = torch.zeros(1, 1, 32, 32)
    grid[..., 3::8, 5::8] = 1.0  # one pixel in each of the 16 coarse cells
    assert mask_stats(grid)["coverage"].item() == 1.0
    assert mask_stats(torch.zeros(1, 1, 32, 32))["coverage"].item() == 0.0


def test_stats_of_policies() -> None:
    stats = mask_stats(RandomPatches(0.25, 16)(images(16, 128, 128), generator=gen(0)))
    assert stats["ratio"].item() == 0.25 and stats["ratio_std"].item() == 0.0
    assert stats["coverage"].item() > 0.5
    assert mask_stats(CenterHole(0.25)(images(2)))["coverage"].item() == 0.25


def test_border_cell_grid() -> None:
    assert border_cell_grid(4, 5).int().tolist() == [
        [1, 1, 1, 1, 1], [1, 0, 0, 0, 1], [1, 0, 0, 0, 1], [1, 1, 1, 1, 1]]
    assert border_cell_grid(6, 6, 2)[2:4, 2:4].logical_not().all()
    assert border_cell_grid(6, 6, 2).sum() == 32
    assert not border_cell_grid(3, 3, 0).any()
    assert border_cell_grid(2, 7).all()


def test_border_stats_on_hand_made_masks() -> None:
    """The edge shortcut shows as a large ratio, the inside as a small one, 1 = none."""
    edge = torch.zeros(4, 1, 8, 8)
    edge[:, :, 0, :] = 1.0  # the top row: 8 of the 28 ring cells, no inner cell
    stats = cell_border_stats(edge)
    assert set(stats) == {"border_freq", "inner_freq", "border_ratio"}
    assert all(v.ndim == 0 and v.dtype == torch.float32 for v in stats.values())
    assert stats["border_freq"].item() == pytest.approx(8 / 28)
    assert stats["inner_freq"].item() == 0.0
    assert stats["border_ratio"].item() > 1e4 and math.isfinite(stats["border_ratio"].item())
    inner = torch.zeros(4, 1, 8, 8)
    inner[:, :, 3:5, 3:5] = 1.0
    assert cell_border_stats(inner)["border_ratio"].item() < 1e-4
    mixed = torch.zeros(2, 1, 8, 8)
    mixed[0, :, 0, :2] = 1.0  # 2 ring cells
    mixed[1, :, 4, 4] = 1.0  # 1 inner cell
    stats = cell_border_stats(mixed)
    assert stats["border_freq"].item() == pytest.approx(1 / 28)
    assert stats["inner_freq"].item() == pytest.approx(0.5 / 36)
    assert stats["border_ratio"].item() == pytest.approx(36 / 14, rel=1e-4)
    # a frequency grid (h, w) gives the same numbers as the masks it averages
    frequency = mixed.mean(dim=(0, 1))
    assert all(torch.allclose(cell_border_stats(frequency)[k], v) for k, v in stats.items())
    # pixel masks with the cell size: pooled to cells first
    pixels = mixed.repeat_interleave(16, dim=2).repeat_interleave(16, dim=3)
    assert torch.allclose(cell_border_stats(pixels, cell_size=16)["border_ratio"],
                          stats["border_ratio"])


def test_border_stats_degenerate_grids_stay_finite() -> None:
    empty = cell_border_stats(torch.zeros(2, 1, 8, 8))  # no hole at all
    assert empty["border_ratio"].item() == 1.0 and empty["inner_freq"].item() == 0.0
    thin = torch.zeros(2, 1, 2, 6)
    thin[:, :, 0, 0] = 1.0  # every cell is a ring cell: no contrast to measure
    stats = cell_border_stats(thin)
    assert stats["border_ratio"].item() == 1.0
    assert stats["inner_freq"].item() == stats["border_freq"].item() == pytest.approx(1 / 12)


def test_border_stats_of_uniform_random_cells_is_one() -> None:
    masks = RandomPatches(0.25, 16)(images(512, 128, 128), generator=gen(0))
    stats = cell_border_stats(masks, cell_size=16)
    assert stats["border_freq"].item() == pytest.approx(0.25, abs=0.01)
    assert stats["inner_freq"].item() == pytest.approx(0.25, abs=0.01)
    assert stats["border_ratio"].item() == pytest.approx(1.0, abs=0.05)


# --- validation and configs --------------------------------------------------------------------


@pytest.mark.parametrize("ratio", [0, 1, 1.5, -0.1, float("nan"), True, "0.25", None])
@pytest.mark.parametrize("cls", [RandomBlocks, RandomPatches, CenterHole])
def test_bad_ratio(cls, ratio) -> None:
    with pytest.raises(ConfigError, match=r"mask_policy\.random\.ratio="):
        cls(ratio=ratio)


@pytest.mark.parametrize("size", [0, -16, 2.5, False, float("inf")])
def test_bad_sizes(size) -> None:
    with pytest.raises(ConfigError, match=r"mask_policy\.random\.block_size="):
        RandomBlocks(0.25, block_size=size)
    with pytest.raises(ConfigError, match=r"mask_policy\.random\.patch_size="):
        RandomPatches(0.25, patch_size=size)


def test_message_names_value() -> None:
    with pytest.raises(ConfigError, match=r"^mask_policy\.random\.ratio=1\.5: expected"):
        RandomBlocks(ratio=1.5)


def test_bad_image_shape() -> None:
    with pytest.raises(ValueError, match="B, C, H, W"):
        RandomBlocks()(torch.zeros(3, 64, 64))


@pytest.mark.parametrize(
    ("name", "cls", "params"),
    [
        ("random_blocks", RandomBlocks, {"ratio": 0.25, "block_size": 16}),
        ("random_patches", RandomPatches, {"ratio": 0.25, "patch_size": 16}),
        ("center", CenterHole, {"ratio": 0.25}),
    ],
)
def test_configs_instantiate(name: str, cls: type, params: dict[str, float]) -> None:
    """A baseline's node: the random holes, and the instructor switched off."""
    hydra_utils = pytest.importorskip("hydra.utils")
    from omegaconf import OmegaConf

    node = OmegaConf.load(CONF_DIR / f"{name}.yaml")
    policy = hydra_utils.instantiate(node.random)
    assert type(policy) is cls
    assert all(getattr(policy, key) == value for key, value in params.items())
    assert node.instructor.enabled is False


def test_instructor_config() -> None:
    """The game's node: random 16 px blocks for the warm-up and validation, and every
    instructor setting; the instructor's ratio follows the random holes' ratio."""
    hydra_utils = pytest.importorskip("hydra.utils")
    from sssi.game.config import check_mask_policy
    from sssi.game.instructor import Instructor
    from tests.helpers import compose_train

    node = compose_train(["mask_policy=instructor"]).mask_policy
    settings = check_mask_policy(node)["instructor"]
    instructor = Instructor(hydra_utils.instantiate(settings["backbone"]), **settings["network"])
    assert instructor.ratio == 0.25 and instructor.latent_dim == 100
    assert instructor.border_cells == 0  # off by default: the paper's policy
    assert instructor.cell_size == 16
    assert settings["reward"] == "raw" and settings["kl_weight"] == 1e-6
    assert settings["alpha_train"] == 1.0
    assert settings["optimizer"]["lr"] == 1e-5 and settings["random"] is None
    random = hydra_utils.instantiate(node.random)
    assert type(random) is RandomBlocks and (random.ratio, random.block_size) == (0.25, 16)
    half = compose_train(["mask_policy=instructor", "mask_policy.random.ratio=0.5"]).mask_policy
    assert half.instructor.network.ratio == 0.5  # one knob for both
