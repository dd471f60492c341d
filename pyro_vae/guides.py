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

from torch.distributions import register_kl

from .config import GUIDES, Component, require
from .networks import Activation, ConditionalGaussian
from .numerics import standard_normal
from .priors import LOG_2PI, StandardNormal, TwoLayerLatent, split_latent


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

    def noise(self, sample_shape: torch.Size = torch.Size()) -> torch.Tensor:
        """eps ~ N(0, I) shaped like a sample (the datapoints are dimension -2); in data-parallel
        training the whole global batch's noise, this process's rows kept (``numerics.sharded_noise``)."""
        base = self.base_dist
        return standard_normal(base._extended_shape(sample_shape), -2, base.loc.dtype, base.loc.device)

    def rsample(self, sample_shape: torch.Size = torch.Size()) -> torch.Tensor:
        base = self.base_dist
        return base.loc + self.noise(sample_shape) * base.scale

    def rsample_with_noise(self, sample_shape: torch.Size = torch.Size()) -> tuple[torch.Tensor, torch.Tensor]:
        """z = loc + scale * eps and the noise eps it was drawn from."""
        base = self.base_dist
        eps = self.noise(sample_shape)
        return base.loc + eps * base.scale, eps

    def log_prob_of_noise(self, eps: torch.Tensor) -> torch.Tensor:
        """log q(loc + scale * eps) from eps: sum(-eps^2/2 - log scale) - (D/2) log 2 pi."""
        return (-0.5 * eps.pow(2) - self.base_dist.scale.log()).sum(-1) - 0.5 * eps.shape[-1] * LOG_2PI

    def rsample_and_log_prob(self, sample_shape: torch.Size = torch.Size()) -> tuple[torch.Tensor, torch.Tensor]:
        z, eps = self.rsample_with_noise(sample_shape)
        return z, self.log_prob_of_noise(eps)


def _normal(loc: torch.Tensor, scale: torch.Tensor) -> dist.Normal:
    """Normal(loc, scale); for a loc and scale of one shape without ``broadcast_all``'s expanded views
    of them (each a node of the autograd graph, on every step)."""
    if loc.shape != scale.shape:
        return dist.Normal(loc, scale)
    normal = dist.Normal.__new__(dist.Normal)
    normal.loc, normal.scale = loc, scale
    torch.distributions.Distribution.__init__(normal, loc.shape)  # (validates the arguments where that is on)
    return normal


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

    def _diagonal_normal(self, loc: torch.Tensor, scale: torch.Tensor) -> DiagonalNormal:
        return DiagonalNormal(_normal(loc, scale), 1)

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
        return self._diagonal_normal(self.loc(features), F.softplus(self.raw_scale(features)))


@GUIDES.register("iaf")
class IAFGuide(Guide):
    """q(z|x): the diagonal Gaussian N(mu(x), sigma(x)^2) refined by T inverse autoregressive flow steps conditioned on h(x) (Kingma et al. 2016).

    z_0 = mu + sigma * eps; then, per step t, z_t = s_t * z_{t-1} + (1 - s_t) * m_t with
    (m_t, logit s_t) = MADE([z_{t-1}, h(x)]) autoregressive in z (each coordinate sees only those
    before it, in a random order per step) and s_t = sigmoid(logit + 2) (the numerically stable
    form). log q(z_T|x) = log N(z_0; mu, sigma) - sum_t sum_i log s_{t,i}: exact, and cheap for the
    sample just drawn (evaluating it at another z inverts the flow, D sequential passes). There is
    no closed-form KL to any prior: ``elbo-analytic-kl`` says so and uses Monte Carlo.

    Options:
        steps: T, the number of IAF steps.
        hidden: width of the MADE hidden layer of each step (at least the latent dimension).
        context: dimension of the context h(x) read from the encoder's features.
    """

    def __init__(self, *, steps: int = 2, hidden: int = 128, context: int = 32) -> None:
        super().__init__()
        require(steps >= 1, f"steps must be >= 1, got {steps}.")
        require(context >= 1, f"context must be >= 1, got {context}.")
        self.steps, self.hidden, self.context = steps, hidden, context

    def setup(self, feature_dim: int, latent_dim: int) -> "IAFGuide":
        from pyro.distributions.transforms import ConditionalAffineAutoregressive
        from pyro.nn import ConditionalAutoRegressiveNN

        require(self.hidden >= latent_dim,
                f"hidden ({self.hidden}) must be at least the latent dimension ({latent_dim}) for MADE's masks.")
        self.loc = nn.Linear(feature_dim, latent_dim)
        self.raw_scale = nn.Linear(feature_dim, latent_dim)
        self.to_context = nn.Linear(feature_dim, self.context)
        self.flows = nn.ModuleList(
            ConditionalAffineAutoregressive(
                ConditionalAutoRegressiveNN(latent_dim, self.context, [self.hidden]), stable=True)
            for _ in range(self.steps)
        )
        return self

    def forward(self, features: torch.Tensor) -> dist.TorchDistribution:
        base = self._diagonal_normal(self.loc(features), F.softplus(self.raw_scale(features)))
        context = self.to_context(features)
        return dist.TransformedDistribution(base, [flow.condition(context) for flow in self.flows])


@GUIDES.register("hierarchical")
class HierarchicalGuide(Guide):
    """q(z|x) = q(z_2|x) q(z_1|x, z_2), z = (z_2, z_1): a diagonal Gaussian over z_2 from the encoder's features h, then one over z_1 from [h, z_2] (Tomczak & Welling 2018's HVAE).

    z_2 = mu_2(h) + sigma_2(h) eps_2, then z_1 = mu_1(h, z_2) + sigma_1(h, z_2) eps_1:
    reparameterized through both layers, and log q(z|x) = log N(z_2; mu_2, sigma_2^2) + log N(z_1;
    mu_1, sigma_1^2), exact. The posterior of the hierarchical prior's two layers; with any other
    prior it is a richer guide over one z. No closed-form mean or KL: both are Monte Carlo.

    Options:
        top_dim: dimension of z_2 (z's first coordinates); unset: half the latent dimension, rounded up (the hierarchical prior's default too).
        hidden: widths of the hidden layers of the network for q(z_1|x, z_2).
        activation: their activation.
    """

    def __init__(self, *, top_dim: int | None = None, hidden: list[int] = [256], activation: Activation = "gated") -> None:
        super().__init__()
        require(all(h >= 1 for h in hidden), f"hidden widths must be >= 1, got {hidden}.")
        self.top_dim, self.hidden, self.activation = top_dim, hidden, activation

    def setup(self, feature_dim: int, latent_dim: int) -> "HierarchicalGuide":
        top, bottom = split_latent(latent_dim, self.top_dim)
        self.loc = nn.Linear(feature_dim, top)
        self.raw_scale = nn.Linear(feature_dim, top)
        self.conditional = ConditionalGaussian(feature_dim + top, bottom, self.hidden, self.activation)
        self.bottom_dim = bottom
        return self

    def forward(self, features: torch.Tensor) -> TwoLayerLatent:
        def conditional(z_2: torch.Tensor) -> DiagonalNormal:
            h = features.expand(*z_2.shape[:-1], features.shape[-1])  # particles share x's features
            return self._diagonal_normal(*self.conditional(torch.cat([h, z_2], -1)))

        return TwoLayerLatent(self._diagonal_normal(self.loc(features), F.softplus(self.raw_scale(features))),
                              conditional, self.bottom_dim)
