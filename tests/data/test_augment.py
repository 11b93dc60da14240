"""Augmentation on the device: the same distribution as the CPU pipeline it replaced
(albumentations in the workers), joint on image and label, a pure function of the
sample, and what the datamodule hands the task."""

from __future__ import annotations

import albumentations as A
import numpy as np
import pytest
import torch

from sssi.data import ISPRS, build_layout
from sssi.data.augment import (
    PARAMS,
    Augment,
    BatchNormalizer,
    augment_batch,
    value_range,
)
from sssi.data.datasets import RandomWindowDataset, Region, TileReader
from sssi.data.stats import band_stats

N = 400  # samples per path


def _cpu_pipeline(brightness_contrast: float, noise: float) -> A.Compose:
    """The workers' albumentations pipeline of sssi before augmentation moved to the
    device (flips, rot90, brightness/contrast 0.15, noise 1-4 % of the range).

    Each step gets its own seed. sssi used to reseed the whole ``Compose`` per sample,
    which under albumentations 2 gives every step the same random stream: both flips
    then fired together (a 180-degree turn), so training never saw a mirrored window.
    The device path draws each parameter independently."""
    steps = [A.HorizontalFlip(p=0.5), A.VerticalFlip(p=0.5), A.RandomRotate90(p=1.0)]
    if brightness_contrast > 0:
        steps.append(A.RandomBrightnessContrast(brightness_limit=0.15, contrast_limit=0.15,
                                                p=brightness_contrast))
    if noise > 0:
        steps.append(A.GaussNoise(std_range=(0.01, 0.04), p=noise))
    pipeline = A.Compose(steps)  # reseeds its steps from fresh entropy: seed them after
    for i, step in enumerate(steps):
        step.set_random_seed(100 + i)
    return pipeline


def _dihedral(label: np.ndarray, raw: np.ndarray) -> int | None:
    """Which of the 8 flips/rotations maps ``raw`` to ``label`` (None: ambiguous)."""
    found = [k for k in range(8)
             if np.array_equal(np.rot90(raw[:, ::-1] if k >= 4 else raw, k % 4), label)]
    return found[0] if len(found) == 1 else None


@pytest.fixture(scope="module")
def windows(synthetic_root):
    """N raw training windows (image, label) of the synthetic Potsdam and its stats."""
    tiles = build_layout("potsdam", synthetic_root).tiles("train", labels=True)
    regions = [Region(i, 0, 0, 256, 256) for i in range(len(tiles))]
    plain = RandomWindowDataset(TileReader(tiles, ISPRS), regions, 64, N, with_labels=True,
                                seed=3)
    samples = [plain[i] for i in range(N)]
    mean, std = band_stats(tiles)
    return tiles, regions, samples, mean, std


@pytest.mark.parametrize("photometric", [0.0, 0.5])
def test_device_augmentation_matches_the_cpu_pipeline_in_distribution(windows, photometric):
    tiles, regions, samples, mean, std = windows
    normalize = BatchNormalizer(mean, std)
    # the CPU pipeline: per-sample albumentations on the raw window, then normalisation
    cpu = _cpu_pipeline(photometric, photometric)
    old_images, old_kinds, old_labels = [], [], []
    for s in samples:
        image = s["image"].numpy().transpose(1, 2, 0)
        out = cpu(image=image, mask=s["label"].numpy())
        old_images.append(normalize(torch.from_numpy(out["image"].transpose(2, 0, 1).copy())))
        old_labels.append(out["mask"])
        old_kinds.append(_dihedral(out["mask"], s["label"].numpy()))
    # the device path: parameters drawn by the dataset, applied per batch
    aug = Augment(brightness_contrast=photometric, noise=photometric)
    ds = RandomWindowDataset(TileReader(tiles, ISPRS), regions, 64, N, with_labels=True,
                             augment=aug, seed=3)
    drawn = [ds[i] for i in range(N)]
    assert all(torch.equal(d["image"], s["image"]) for d, s in zip(drawn, samples, strict=True))
    image = torch.stack([d["image"] for d in drawn])
    label = torch.stack([d["label"] for d in drawn])
    params = torch.stack([d["augment"] for d in drawn])
    new, new_label = augment_batch(image, label, params, value_range(image.dtype))
    new = normalize(new)
    new_kinds = [_dihedral(y.numpy(), s["label"].numpy())
                 for y, s in zip(new_label, samples, strict=True)]

    old = torch.stack(old_images)
    for band in range(3):  # per-band statistics after normalisation
        a, b = old[:, band], new[:, band]
        assert abs(a.mean() - b.mean()) < 0.05, (band, a.mean(), b.mean())
        assert abs(a.std() / b.std() - 1) < 0.05, (band, a.std(), b.std())
    # labels: the same pixels, moved
    old_hist = np.bincount(np.stack(old_labels).ravel(), minlength=256)
    assert np.array_equal(old_hist, np.bincount(new_label.numpy().ravel(), minlength=256))
    # the 8 flips/rotations are equally frequent on both paths
    for kinds in (old_kinds, new_kinds):
        known = [k for k in kinds if k is not None]  # symmetric windows are ambiguous
        assert len(known) > 0.7 * N
        freq = np.bincount(known, minlength=8) / len(known)
        assert np.all(np.abs(freq - 1 / 8) < 0.06), freq
    if photometric:  # about half the samples were jittered, by up to ~15 %
        moved = (new - normalize(augment_batch(image, label, _geometric_only(params),
                                               255.0)[0])).abs().mean(dim=(1, 2, 3))
        share = (moved > 1e-3).float().mean().item()
        assert 0.6 < share < 0.85  # P(contrast or noise) = 1 - 0.5 * 0.5


def _geometric_only(params: torch.Tensor) -> torch.Tensor:
    out = params.clone()
    out[:, PARAMS.index("contrast"):] = 0
    return out


def test_image_and_label_move_together_and_the_parameters_are_read_as_written():
    image = torch.arange(2 * 3 * 4 * 4, dtype=torch.uint8).view(2, 3, 4, 4)
    label = image[:, 0].clone()
    params = torch.zeros(2, len(PARAMS), dtype=torch.float64)
    params[0, PARAMS.index("hflip")] = 1
    params[1, PARAMS.index("rot90")] = 3
    x, y = augment_batch(image, label, params, value_range(torch.uint8))
    assert x.dtype == torch.float32 and y.dtype == torch.uint8
    assert torch.equal(x[0], image[0].flip(-1).float())
    assert torch.equal(x[1], torch.rot90(image[1], 3, (-2, -1)).float())
    assert torch.equal(y, x[:, 0].to(torch.uint8))  # the label followed its image
    bright = torch.zeros(1, len(PARAMS), dtype=torch.float64)
    bright[0, PARAMS.index("brightness")] = 0.1
    out, _ = augment_batch(torch.full((1, 1, 2, 2), 250, dtype=torch.uint8), None, bright, 255.0)
    assert torch.allclose(out, torch.full_like(out, 255.0))  # + 25.5, clipped to the range


def test_parameters_are_a_function_of_seed_and_index_only(windows):
    tiles, regions, *_ = windows
    aug = Augment(brightness_contrast=0.5, noise=0.5)

    def params(seed):
        ds = RandomWindowDataset(TileReader(tiles, ISPRS), regions, 64, 50, with_labels=True,
                                 augment=aug, seed=seed)
        return torch.stack([ds[i]["augment"] for i in range(50)])

    a = params(0)
    assert torch.equal(a, params(0)) and not torch.equal(a, params(1))
    image = torch.randint(0, 256, (50, 3, 8, 8), dtype=torch.uint8)
    first = augment_batch(image, None, a, 255.0)[0]
    assert torch.equal(first, augment_batch(image, None, a, 255.0)[0])  # noise included
    off = Augment(hflip=False, vflip=False, rot90=False)
    assert not off.active and Augment().active
    assert off.draw(np.random.default_rng(0).random((20, Augment.DRAWS))).sum() == 0


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_the_device_path_gives_the_cpu_result_on_cuda():
    image = torch.randint(0, 256, (8, 3, 16, 16), dtype=torch.uint8)
    label = torch.randint(0, 6, (8, 16, 16), dtype=torch.uint8)
    u = np.random.default_rng(0).random((8, Augment.DRAWS))
    params = torch.from_numpy(Augment(brightness_contrast=1.0).draw(u))
    cpu = augment_batch(image, label, params, 255.0)
    gpu = augment_batch(image.cuda(), label.cuda(), params.cuda(), 255.0)
    assert torch.allclose(cpu[0], gpu[0].cpu(), atol=1e-3) and torch.equal(cpu[1], gpu[1].cpu())
