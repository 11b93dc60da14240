"""The instructor: a network that learns which cells of an image are hardest to inpaint.

It scores every cell of its encoder's deepest feature map (16x16 pixels for a ResNet-18
without the stem max-pool) through a per-location VAE latent, and erases the top-k
cells, k = ``ratio`` of them. While it trains, a soft mask ``sigmoid(alpha * (score -
t))`` lets the inpainter's error reach the scores; when it instructs, the mask is hard.
With ``border_cells > 0`` the cells near the crop's edge are never chosen, so every
hole has context around it and the instructor cannot win by erasing the edge, where any
inpainter has the least context (a shortcut it learns otherwise).

Unlike the authors' code, the hard mask erases exactly k cells even when scores tie,
the instructor never reseeds a global RNG (randomness comes from an optional
``torch.Generator``), and everything follows the input's device.
"""

from __future__ import annotations

from typing import NamedTuple

import torch
from torch import Tensor, nn

from sssi.errors import ConfigError
from sssi.game.masking import border_cell_grid, check_ratio, count_holes, sample_normal
from sssi.models.registry import Encoder

__all__ = ["Instructor", "InstructorOutput"]


class InstructorOutput(NamedTuple):
    """What :meth:`Instructor.forward` returns."""

    #: One saliency score per cell, ``(B, 1, h, w)``; high = erase.
    scores: Tensor
    #: Posterior mean of the latent, ``(B, latent_dim, h, w)``.
    mu: Tensor
    #: Posterior log-variance of the latent, ``(B, latent_dim, h, w)``.
    logvar: Tensor
    #: KL(q(z | x) || N(0, I)) of one cell's latent vector (summed over latent_dim),
    #: averaged over images and cells; a float32 scalar.
    kl: Tensor


class Instructor(nn.Module):
    """Encoder -> per-cell VAE latent -> one score per cell -> top-k hole mask.

    Args:
        encoder: a registry encoder; its deepest feature map defines the cells (the
            paper: ``build_backbone("resnet18", stem_pool=False)``, reduction 16).
        latent_dim: channels of the latent ``z`` at each cell (the paper: 100).
        ratio: fraction of cells erased, ``k = count_holes(ratio, h * w)`` per image.
        border_cells: cells within this many cells of the grid's edge are never erased
            (0: any cell may be). k is still counted over all ``h * w`` cells, so the
            erased pixel fraction is unchanged, but it is clamped to the number of
            candidate cells minus one (one candidate stays visible, as
            :func:`~sssi.game.masking.count_holes` keeps one cell visible, and the soft
            mask's threshold needs the (k+1)-th candidate); a grid with fewer than two
            candidates raises :class:`ConfigError`.

    In training mode ``z = mu + eps * exp(logvar / 2)`` with ``eps`` from the optional
    generator (else the global RNG); in eval mode ``z = mu``, so the masks are a
    deterministic function of the images.
    """

    def __init__(self, encoder: Encoder, latent_dim: int = 100, ratio: float = 0.25,
                 border_cells: int = 0) -> None:
        super().__init__()
        if isinstance(latent_dim, bool) or not isinstance(latent_dim, int) or latent_dim < 1:
            raise ConfigError(f"mask_policy.instructor.network.latent_dim={latent_dim!r}: "
                              "expected a positive integer")
        if isinstance(border_cells, bool) or not isinstance(border_cells, int) or border_cells < 0:
            raise ConfigError(f"mask_policy.instructor.network.border_cells={border_cells!r}: "
                              "expected an integer >= 0 (cells next to the crop's edge that "
                              "are never erased)")
        self.ratio = check_ratio(ratio, "mask_policy.instructor.network.ratio")
        self.border_cells = border_cells
        self.latent_dim = latent_dim
        self.encoder = encoder
        self.cell_size = int(encoder.reductions[-1])
        width = int(encoder.out_channels[-1])
        self.to_mu = nn.Conv2d(width, latent_dim, 1)
        self.to_logvar = nn.Conv2d(width, latent_dim, 1)
        self.to_score = nn.Conv2d(latent_dim, 1, 1)

    def extra_repr(self) -> str:
        return (f"latent_dim={self.latent_dim}, ratio={self.ratio}, cell_size={self.cell_size}, "
                f"border_cells={self.border_cells}")

    # ------------------------------------------------------------------------ network

    def forward(self, images: Tensor, generator: torch.Generator | None = None) -> InstructorOutput:
        """Score every cell of ``images`` ``(B, C, H, W)``; see :class:`InstructorOutput`."""
        features = self.encoder(images)[-1]
        mu = self.to_mu(features)
        logvar = self.to_logvar(features)
        if self.training:
            eps = sample_normal(tuple(mu.shape), mu.device, generator).to(mu.dtype)
            z = mu + eps * torch.exp(0.5 * logvar)
        else:
            z = mu
        scores = self.to_score(z)
        # Closed form per element, in float32 so that autocast cannot overflow exp().
        mu32, logvar32 = mu.float(), logvar.float()
        kl_map = 0.5 * (mu32.square() + logvar32.exp() - 1.0 - logvar32)
        kl = kl_map.sum(dim=1).mean()
        return InstructorOutput(scores=scores, mu=mu, logvar=logvar, kl=kl)

    # -------------------------------------------------------------------------- masks

    def holes_per_image(self, n_cells: int) -> int:
        """k, the number of cells erased out of ``n_cells`` (at least 2 cells needed)."""
        if n_cells < 2:
            raise ValueError(
                f"instructor: the score map has {n_cells} cell(s); an image must span at "
                f"least 2 cells of {self.cell_size}x{self.cell_size} pixels"
            )
        return count_holes(self.ratio, n_cells)

    def _candidates(self, scores: Tensor) -> tuple[int, Tensor | None]:
        """k for ``scores``' grid and the bool ``(h, w)`` grid of cells that may be erased
        (None: all may). Shapes only, no host sync."""
        h, w = scores.shape[-2:]
        k = self.holes_per_image(h * w)
        b = self.border_cells
        if b == 0:
            return k, None
        n = max(h - 2 * b, 0) * max(w - 2 * b, 0)
        if n < 2:
            raise ConfigError(
                f"mask_policy.instructor.network.border_cells={b}: the instructor's {h}x{w} "
                f"cell grid ({self.cell_size} px cells) keeps {n} candidate cell(s) once {b} "
                "ring(s) of edge cells are excluded; at least 2 are needed: lower "
                "mask_policy.instructor.network.border_cells or use larger crops")
        return min(k, n - 1), ~border_cell_grid(h, w, b, device=scores.device)

    def soft_mask(self, scores: Tensor, alpha: float = 1.0) -> Tensor:
        """``sigmoid(alpha * (scores - t))`` per cell, ``(B, 1, h, w)``, differentiable.

        ``t`` is each image's midpoint between its k-th and (k+1)-th largest score, so
        (without ties) exactly k cells lie above 0.5. ``t`` is detached: the gradient
        reaches the scores only through their distance to the threshold. With
        ``border_cells`` the excluded cells neither set ``t`` nor get any mask (0, no
        gradient).
        """
        batch = scores.shape[0]
        k, candidates = self._candidates(scores)
        flat = scores.detach()
        if candidates is not None:
            flat = flat.masked_fill(~candidates, float("-inf"))
        top = flat.reshape(batch, -1).topk(k + 1, dim=1).values
        threshold = 0.5 * (top[:, k - 1] + top[:, k])
        soft = torch.sigmoid(alpha * (scores - threshold.view(batch, 1, 1, 1)))
        return soft if candidates is None else soft * candidates

    @torch.no_grad()
    def hard_mask(self, scores: Tensor) -> Tensor:
        """Exactly k cells per image set to 1 (the top-k scores), float ``(B, 1, h, w)``.

        topk indices + scatter rather than ``scores >= kth``: ties can then never erase
        an extra cell. With ``border_cells`` only candidate cells are ranked.
        """
        batch = scores.shape[0]
        k, candidates = self._candidates(scores)
        if candidates is not None:
            scores = scores.masked_fill(~candidates, float("-inf"))
        flat = scores.reshape(batch, -1)
        cells = torch.zeros(flat.shape, dtype=torch.float32, device=scores.device)
        cells.scatter_(1, flat.topk(k, dim=1).indices, 1.0)
        return cells.view(scores.shape)

    @staticmethod
    def upsample(cell_mask: Tensor, size: tuple[int, int] | torch.Size) -> Tensor:
        """Nearest-neighbour cell mask ``(B, 1, h, w)`` -> pixel mask ``(B, 1, H, W)``.

        When ``size`` is a multiple of the cell grid each cell becomes an exact block
        (repeat, no float index arithmetic); otherwise ``F.interpolate(mode="nearest")``.
        """
        height, width = int(size[0]), int(size[1])
        h, w = cell_mask.shape[-2:]
        if height % h == 0 and width % w == 0:
            return cell_mask.repeat_interleave(height // h, dim=-2).repeat_interleave(
                width // w, dim=-1
            )
        return nn.functional.interpolate(cell_mask, size=(height, width), mode="nearest")

    def masks(
        self,
        images: Tensor,
        hard: bool = True,
        alpha: float = 100.0,
        generator: torch.Generator | None = None,
    ) -> Tensor:
        """Pixel masks ``(B, 1, H, W)`` for ``images``: forward, hard or soft mask, upsample.

        Hard masks are computed without an autograd graph (the frozen instructor only
        instructs); soft masks keep the graph so a loss can train the instructor.
        """
        size = images.shape[-2:]
        if hard:
            with torch.no_grad():
                scores = self(images, generator=generator).scores
                return self.upsample(self.hard_mask(scores), size)
        scores = self(images, generator=generator).scores
        return self.upsample(self.soft_mask(scores, alpha=alpha), size)
