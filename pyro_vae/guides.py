"""Guide families q(z|x): encoder features in, a reparameterizable distribution over z out.

A guide owns the head that reads the encoder's features (``setup(feature_dim, latent_dim)``) and
returns a distribution with ``has_rsample`` true and event shape ``(latent_dim,)``, so that
``z = rsample()`` carries gradients back into the encoder (the reparameterization trick).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from pyro import distributions as dist
from torch import nn

from torch.distributions import register_kl
from torch.distributions.utils import _standard_normal

from .config import GUIDES, Component
from .priors import StandardNormal

LOG_2PI = math.log(2 * math.pi)


class DiagonalNormal(dist.Independent):
    """N(loc, diag scale^2) over the last dimension, reparameterized: z = loc + scale * eps.

    ``rsample_and_log_prob`` returns z together with log q(z), computed from the noise eps as
    sum(-eps^2/2 - log scale) - (D/2) log 2 pi: the same value and total gradient as
    ``log_prob(z)``, in fewer operations. ``log_prob`` itself is the general formula, so that
    path-derivative estimators (STL, DReG) can differentiate log q with respect to z.
    """

    def log_prob_detached(self, z: torch.Tensor) -> torch.Tensor:
        """log q(z) with the parameters cut from the graph: the value of ``log_prob(z)``, with
        gradient only through z (the path derivative used by STL and DReG)."""
        base = self.base_dist
        loc, scale = base.loc.detach(), base.scale.detach()
        return (-0.5 * ((z - loc) / scale).pow(2) - scale.log()).sum(-1) - 0.5 * z.shape[-1] * LOG_2PI

    def rsample_and_log_prob(self, sample_shape: torch.Size = torch.Size()) -> tuple[torch.Tensor, torch.Tensor]:
        base = self.base_dist
        eps = _standard_normal(base._extended_shape(sample_shape), dtype=base.loc.dtype, device=base.loc.device)
        log_q = (-0.5 * eps.pow(2) - base.scale.log()).sum(-1) - 0.5 * eps.shape[-1] * LOG_2PI
        return base.loc + eps * base.scale, log_q


@register_kl(DiagonalNormal, StandardNormal)
def _kl_diagonal_normal_standard_normal(q: DiagonalNormal, p: StandardNormal) -> torch.Tensor:
    """KL(N(mu, diag sigma^2) || N(0, I)) = sum_i (sigma_i^2 + mu_i^2 - 1) / 2 - log sigma_i."""
    loc, scale = q.base_dist.loc, q.base_dist.scale
    kl = 0.5 * (scale.pow(2) + loc.pow(2) - 1).sum(-1) - scale.log().sum(-1)
    if p.batch_shape == q.batch_shape or not p.batch_shape:
        return kl
    return kl.expand(torch.broadcast_shapes(q.batch_shape, p.batch_shape))


class Guide(Component, nn.Module):
    """Base class: ``setup(feature_dim, latent_dim)`` builds the head, ``forward(features)`` is q(z|x)."""

    def __init__(self) -> None:
        nn.Module.__init__(self)

    def setup(self, feature_dim: int, latent_dim: int) -> "Guide":  # pragma: no cover - abstract
        raise NotImplementedError

    def forward(self, features: torch.Tensor) -> dist.TorchDistribution:  # pragma: no cover
        raise NotImplementedError


@GUIDES.register("diagonal-gaussian")
class DiagonalGaussianGuide(Guide):
    """q(z|x) = N(mu(x), diag sigma(x)^2), sigma = softplus(.) > 0; z = mu + sigma * eps, eps ~ N(0, I)."""

    def __init__(self) -> None:
        super().__init__()

    def setup(self, feature_dim: int, latent_dim: int) -> "DiagonalGaussianGuide":
        self.loc = nn.Linear(feature_dim, latent_dim)
        self.raw_scale = nn.Linear(feature_dim, latent_dim)
        return self

    def forward(self, features: torch.Tensor) -> dist.TorchDistribution:
        return DiagonalNormal(dist.Normal(self.loc(features), F.softplus(self.raw_scale(features))), 1)
