"""Guide families q(z|x): encoder features in, a reparameterizable distribution over z out.

A guide owns the head that reads the encoder's features (``setup(feature_dim, latent_dim)``) and
returns a distribution with ``has_rsample`` true and event shape ``(latent_dim,)``, so that
``z = rsample()`` carries gradients back into the encoder (the reparameterization trick).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from pyro import distributions as dist
from torch import nn

from .config import GUIDES, Component


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
        return dist.Normal(self.loc(features), F.softplus(self.raw_scale(features))).to_event(1)
