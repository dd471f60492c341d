"""Priors p(z): tractable by construction, declared by name.

A prior is a module whose ``forward()`` returns a Pyro distribution over z with event shape
``(latent_dim,)`` and empty batch shape; the model's data plate broadcasts it over datapoints.
Its parameters (if any) are trained with everything else.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from pyro import distributions as dist
from torch import nn

from .config import PRIORS, Component, require

LOG_2PI = math.log(2 * math.pi)


def inverse_softplus(y: torch.Tensor | float) -> torch.Tensor:
    """x with softplus(x) = y (y > 0): lets a trainable scale start at a chosen value."""
    y = torch.as_tensor(y, dtype=torch.get_default_dtype())
    return y + torch.log(-torch.expm1(-y))


class Prior(Component, nn.Module):
    """Base class: ``setup(latent_dim)`` allocates parameters, ``forward()`` returns p(z)."""

    def __init__(self) -> None:
        nn.Module.__init__(self)
        self.latent_dim = 0

    def setup(self, latent_dim: int) -> "Prior":
        self.latent_dim = latent_dim
        return self

    def forward(self) -> dist.TorchDistribution:  # pragma: no cover - abstract
        raise NotImplementedError


class StandardNormal(dist.Independent):
    """N(0, I) over the last dimension; log_prob = -|z|^2 / 2 - (D/2) log 2 pi, without the
    (z - 0) / 1 arithmetic of a general Normal (same value, fewer operations per step)."""

    def log_prob(self, value: torch.Tensor) -> torch.Tensor:
        if self._validate_args:
            self._validate_sample(value)
        return -0.5 * value.pow(2).sum(-1) - 0.5 * value.shape[-1] * LOG_2PI


@PRIORS.register("standard-normal")
class StandardNormalPrior(Prior):
    """p(z) = N(0, I), fixed by fiat (the seeds' choice); no parameters."""

    def __init__(self) -> None:
        super().__init__()

    def setup(self, latent_dim: int) -> "StandardNormalPrior":
        super().setup(latent_dim)
        self.register_buffer("loc", torch.zeros(latent_dim))
        self.register_buffer("scale", torch.ones(latent_dim))
        self._distribution: tuple | None = None
        return self

    def _apply(self, fn, *args, **kwargs):  # .to(device) etc.: the buffers change, rebuild
        self._distribution = None
        return super()._apply(fn, *args, **kwargs)

    def forward(self) -> dist.TorchDistribution:
        # Nothing here is trained, so one distribution object serves every step (per validation mode).
        validate = torch.distributions.Distribution._validate_args
        if self._distribution is None or self._distribution[0] != validate:
            self._distribution = (validate, StandardNormal(dist.Normal(self.loc, self.scale), 1))
        return self._distribution[1]


@PRIORS.register("learned-gaussian")
class LearnedGaussianPrior(Prior):
    """p(z) = N(m, diag s^2) with trainable m (initially 0) and s = softplus(r) (initially 1).

    Options:
        init_scale: the scale s every coordinate starts at.
    """

    def __init__(self, *, init_scale: float = 1.0) -> None:
        super().__init__()
        require(init_scale > 0, f"init_scale must be > 0, got {init_scale}.")
        self.init_scale = init_scale

    def setup(self, latent_dim: int) -> "LearnedGaussianPrior":
        super().setup(latent_dim)
        self.loc = nn.Parameter(torch.zeros(latent_dim))
        self.raw_scale = nn.Parameter(inverse_softplus(self.init_scale).expand(latent_dim).clone())
        return self

    def forward(self) -> dist.TorchDistribution:
        return dist.Normal(self.loc, F.softplus(self.raw_scale)).to_event(1)


@PRIORS.register("mixture")
class MixturePrior(Prior):
    """p(z) = sum_k pi_k N(m_k, diag s_k^2), a K-component diagonal-Gaussian mixture; pi, m, s trainable.

    Means start at m_k ~ N(0, init_spread^2 I) (drawn from the run's seed), scales at init_scale,
    weights uniform.

    Options:
        components: number of mixture components K.
        init_spread: standard deviation of the random initial component means.
        init_scale: initial scale s of every component and coordinate.
    """

    def __init__(self, *, components: int = 10, init_spread: float = 1.0, init_scale: float = 1.0) -> None:
        super().__init__()
        require(components >= 1, f"components must be >= 1, got {components}.")
        require(init_spread >= 0, f"init_spread must be >= 0, got {init_spread}.")
        require(init_scale > 0, f"init_scale must be > 0, got {init_scale}.")
        self.components = components
        self.init_spread = init_spread
        self.init_scale = init_scale

    def setup(self, latent_dim: int) -> "MixturePrior":
        super().setup(latent_dim)
        k = self.components
        self.logits = nn.Parameter(torch.zeros(k))
        self.locs = nn.Parameter(self.init_spread * torch.randn(k, latent_dim))
        self.raw_scales = nn.Parameter(inverse_softplus(self.init_scale).expand(k, latent_dim).clone())
        return self

    def forward(self) -> dist.TorchDistribution:
        components = dist.Normal(self.locs, F.softplus(self.raw_scales)).to_event(1)
        return dist.MixtureSameFamily(dist.Categorical(logits=self.logits), components)
