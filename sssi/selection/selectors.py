"""Selectors: which candidate regions to label first, one small class each.

A selector scores batches of region images (standardised, resized to one window side)
and turns the scores, or the regions' pooled encoder features, into an order (label
first). Configs pick one (``conf/selector/*.yaml``, ``_target_``); the command
``python -m sssi.select`` feeds it. Networks come from a pretext checkpoint
(:func:`sssi.checkpoints.load_pretext`) and run in eval mode without gradients.

========================  ==============================================  ============
selector                  score (higher = label first)                    needs
========================  ==============================================  ============
``random``                none: the seeded permutation training uses      nothing
``texture``               gradient energy (mean Sobel magnitude)          nothing
``instructor``            the game's instructor score, mean over cells    game ckpt
``inpainter_error``       the inpainter's hole error on random holes      pretext ckpt
``diversity``             k-centre greedy over pooled encoder features    an encoder
``typical``               TypiClust: densest region of each cluster       an encoder
========================  ==============================================  ============
"""

from __future__ import annotations

from pathlib import Path
from typing import ClassVar

import numpy as np
import torch
from kornia.filters import spatial_gradient
from torch import Tensor, nn

from sssi.data.splits import seeded_order
from sssi.errors import ConfigError
from sssi.selection.ordering import by_score, k_center_greedy, normalise, typical_order


class Selector:
    """One score per region and an order of the regions.

    Class attributes tell the command what to compute: ``reads_images`` (False: the
    order needs no pixels), ``needs_features`` (pooled encoder features of every region
    go to :meth:`order`). ``data_state``: the band statistics and zoom of the checkpoint
    a selector's networks were trained with (the regions are standardised with them);
    None where the data's own apply."""

    name: ClassVar[str] = "selector"
    reads_images: ClassVar[bool] = True
    needs_features: ClassVar[bool] = False
    data_state: dict | None = None

    def input_multiple(self) -> int:
        """Window sides must be a multiple of this (the networks' reduction)."""
        return 1

    def to(self, device: torch.device) -> Selector:
        return self

    def score(self, images: Tensor, index: Tensor) -> Tensor:
        """``(B,)`` float scores of the standardised region images ``(B, C, S, S)``;
        ``index``: the regions' positions in the partition (for per-region draws)."""
        return torch.zeros(images.shape[0])

    def order(self, scores: np.ndarray, features: np.ndarray | None, picks: int
              ) -> tuple[np.ndarray, np.ndarray | None]:
        """``(order, clusters)``: every region's index, label first, and a cluster label
        per region where the selector made clusters (else None). ``picks``: the number
        of regions the budget (``select.fraction``) takes, for selectors whose order
        depends on it."""
        return by_score(scores), None


class RandomSelector(Selector):
    """Today's choice: the permutation of ``data.split_seed`` (the same regions as
    training without ``data.label_regions``)."""

    name = "random"
    reads_images = False

    def __init__(self, seed: int = 0) -> None:
        self.seed = int(seed)

    def order(self, scores, features, picks):
        return seeded_order(len(scores), self.seed), None


class TextureSelector(Selector):
    """Gradient energy: busy regions (buildings, roads, edges between covers) first; a
    baseline that learns nothing."""

    name = "texture"

    def score(self, images: Tensor, index: Tensor) -> Tensor:
        with torch.autocast(images.device.type, enabled=False):  # the same at any precision
            grad = spatial_gradient(images.float(), mode="sobel")  # (B, C, 2, H, W)
        return grad.square().sum(2).sqrt().mean((1, 2, 3)).cpu()


class _PretextSelector(Selector):
    """A selector that runs a network of a pretext checkpoint's game."""

    def __init__(self, checkpoint: str | Path | None, key: str = "select.checkpoint") -> None:
        if not checkpoint:
            raise ConfigError(f"{key}=null: selector={self.name} needs the .ckpt of a pretext "
                              "run (select.checkpoint=PATH)")
        from sssi.checkpoints import load_pretext

        self.checkpoint = str(checkpoint)
        self.game, self.data_state = load_pretext(checkpoint, key=key)

    def input_multiple(self) -> int:
        return self.game.input_multiple()

    def to(self, device: torch.device) -> Selector:
        self.game.to(device)
        return self


class InstructorSelector(_PretextSelector):
    """The instructor's score of each cell (how hard the game found it to restore),
    averaged over the region: the regions the game would erase first."""

    name = "instructor"

    def __init__(self, checkpoint: str | Path | None) -> None:
        super().__init__(checkpoint)
        if self.game.instructor is None:
            raise ConfigError(f"select.checkpoint={checkpoint}: this pretext run has no "
                              "instructor (random holes only); use selector=inpainter_error "
                              "or the checkpoint of a game (+experiment=..._pretrain)")

    def input_multiple(self) -> int:
        return self.game.instructor.cell_size

    @torch.no_grad()
    def score(self, images: Tensor, index: Tensor) -> Tensor:
        instructor = self.game.instructor.eval()
        return instructor(images).scores.float().mean((1, 2, 3)).cpu()


class InpainterErrorSelector(_PretextSelector):
    """The inpainter's mean error in random holes (the game's own random policy), over
    ``draws`` hole patterns per region, each drawn from the region's own seed so that a
    region's score does not depend on the batch it came in."""

    name = "inpainter_error"

    def __init__(self, checkpoint: str | Path | None, draws: int = 2, seed: int = 0) -> None:
        super().__init__(checkpoint)
        if isinstance(draws, bool) or not isinstance(draws, int) or draws < 1:
            raise ConfigError(f"selector.draws={draws!r}: expected an integer >= 1")
        self.draws, self.seed = draws, int(seed)

    @torch.no_grad()
    def score(self, images: Tensor, index: Tensor) -> Tensor:
        game = self.game.eval()
        total = torch.zeros(images.shape[0])
        for draw in range(self.draws):
            masks = torch.cat([
                game.random_policy(images[i:i + 1], generator=torch.Generator(
                    images.device).manual_seed(hash((self.seed, int(index[i]), draw)) % 2**62))
                for i in range(images.shape[0])])
            restored = game.restore(images * (1.0 - masks))
            err = game.criterion.error_map(restored, images)  # (B, 1, H, W), float32
            total += ((err * masks).flatten(1).sum(1) /
                      masks.flatten(1).sum(1).clamp_min(1)).cpu()
        return total / self.draws


class DiversitySelector(Selector):
    """Coverage of the feature space: k-centre greedy over the regions' pooled encoder
    features (unit length), so that the budget spreads over what the images show."""

    name = "diversity"
    needs_features = True

    def order(self, scores, features, picks):
        assert features is not None
        return k_center_greedy(normalise(features), picks), None


class TypicalSelector(Selector):
    """TypiClust: k-means on the pooled features with as many clusters as the budget
    has regions (or ``clusters``), the largest first, each giving its densest region."""

    name = "typical"
    needs_features = True

    def __init__(self, clusters: int | None = None, neighbours: int = 20, seed: int = 0
                 ) -> None:
        if clusters is not None and (isinstance(clusters, bool) or not isinstance(clusters, int)
                                     or clusters < 1):
            raise ConfigError(f"selector.clusters={clusters!r}: expected an integer >= 1 or "
                              "null (as many as the budget's regions)")
        self.clusters, self.neighbours, self.seed = clusters, int(neighbours), int(seed)

    def order(self, scores, features, picks):
        assert features is not None
        order, labels, _ = typical_order(normalise(features), self.clusters or picks,
                                         self.neighbours, self.seed)
        return order, labels


class FeatureEncoder(nn.Module):
    """Pooled features of an encoder's deepest map: ``(B, C)`` per batch of images."""

    def __init__(self, encoder: nn.Module) -> None:
        super().__init__()
        self.encoder = encoder.eval()

    def input_multiple(self) -> int:
        return int(getattr(self.encoder, "reductions", [1])[-1])

    @torch.no_grad()
    def forward(self, images: Tensor) -> Tensor:
        return self.encoder(images)[-1].float().mean((2, 3))
