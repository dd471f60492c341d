"""Guide families q(z|x): encoder features in, a reparameterizable distribution over z out.

A guide owns the head that reads the encoder's features (``setup(feature_dim, latent_dim)``) and
returns a distribution with ``has_rsample`` true and event shape ``(latent_dim,)``, so that
``z = rsample()`` carries gradients back into the encoder (the reparameterization trick).
"""

from __future__ import annotations

from typing import ClassVar

import torch
import torch.nn.functional as F
from pyro import distributions as dist
from torch import nn


from .config import GUIDES, Component, require
from .distributions import BernoulliUnits, DiagonalNormal, OneHotGroups, TwoLayerLatent, normal_of_one_shape, split_latent
from .networks import Activation, ConditionalGaussian


class Guide(Component, nn.Module):
    """Base class: ``setup(feature_dim, latent_dim)`` builds the head, ``forward(features)`` is q(z|x)."""

    #: True for a latent without a reparameterized path (categorical, Bernoulli): trained by the
    #: objectives with ``discrete_latents``, paired with a prior or guide of the same space.
    discrete_latent: ClassVar[bool] = False

    def __init__(self) -> None:
        nn.Module.__init__(self)

    def _diagonal_normal(self, loc: torch.Tensor, scale: torch.Tensor) -> DiagonalNormal:
        return DiagonalNormal(normal_of_one_shape(loc, scale), 1)

    def setup(self, feature_dim: int, latent_dim: int) -> "Guide":  # pragma: no cover - abstract
        raise NotImplementedError

    def latent_space(self) -> str:
        """What z is, in words (the prior checks it is its own): real vectors here."""
        return "real vectors"

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


# ---------------------------------------------------------------------------------------------
# Discrete latents


@GUIDES.register("categorical")
class CategoricalGuide(Guide):
    """q(z|x) = prod_g Cat(z_g | softmax(W_g h(x) + b_g)): M groups of K one-hot classes, factorized, amortized.

    Not reparameterized (no rsample): train it with an estimator for discrete latents
    (``enumerate``, ``score-function``, ``gumbel-softmax``); the pathwise ones refuse it.

    Options:
        classes: K, the classes of each group (as the categorical prior's).
    """

    discrete_latent = True

    def __init__(self, *, classes: int = 10) -> None:
        super().__init__()
        require(classes >= 2, f"classes must be >= 2, got {classes}.")
        self.classes = classes

    def setup(self, feature_dim: int, latent_dim: int) -> "CategoricalGuide":
        require(latent_dim % self.classes == 0,
                f"the categorical guide needs latent_dim = groups x classes: {latent_dim} is not a multiple of "
                f"classes = {self.classes}.")
        self.groups = latent_dim // self.classes
        self.logits = nn.Linear(feature_dim, latent_dim)
        return self

    def latent_space(self) -> str:
        return f"{self.groups} one-hot groups of {self.classes} classes"

    def forward(self, features: torch.Tensor) -> dist.TorchDistribution:
        return OneHotGroups(self.logits(features).unflatten(-1, (self.groups, self.classes)))


@GUIDES.register("bernoulli")
class BernoulliGuide(Guide):
    """q(z|x) = prod_u Bern(z_u | sigmoid(W_u h(x) + b_u)): binary units, factorized, amortized (no rsample)."""

    discrete_latent = True

    def __init__(self) -> None:
        super().__init__()

    def setup(self, feature_dim: int, latent_dim: int) -> "BernoulliGuide":
        self.logits = nn.Linear(feature_dim, latent_dim)
        return self

    def latent_space(self) -> str:
        return "binary vectors"

    def forward(self, features: torch.Tensor) -> dist.TorchDistribution:
        return BernoulliUnits(self.logits(features))


# ---------------------------------------------------------------------------------------------
# Topic proportions on the simplex


@GUIDES.register("dirichlet")
class DirichletGuide(Guide):
    """q(theta|x) = Dir(theta; a(x)), a = softplus(W h(x) + b) + a_min: topic proportions on the simplex, reparameterized implicitly (torch's Dirichlet.rsample).

    theta = rsample() carries gradients to a by implicit reparameterization (Figurnov et al. 2018;
    torch's Dirichlet.rsample): d theta / d a = -(dF/da) / (dF/dtheta) for the gamma CDFs F that
    generate it, no inverse CDF needed. a_min (``min_concentration``) floors every concentration: as
    a_k -> 0 a draw puts all but the tiniest mass on one topic and its gradients grow without bound.
    The KL to the dirichlet prior is torch's registered closed form of two Dirichlets. The latent is
    the simplex: the VAE pairs it with a prior over the simplex (dirichlet) only.

    Options:
        min_concentration: a_min, the floor added to every concentration (a_k > a_min).
    """

    def __init__(self, *, min_concentration: float = 1e-3) -> None:
        super().__init__()
        require(min_concentration > 0, f"min_concentration must be > 0, got {min_concentration}.")
        self.min_concentration = min_concentration

    def setup(self, feature_dim: int, latent_dim: int) -> "DirichletGuide":
        require(latent_dim >= 2, f"the dirichlet guide is over K = latent_dim topic proportions and needs K >= 2, "
                                 f"got latent_dim = {latent_dim}.")
        self.raw_concentration = nn.Linear(feature_dim, latent_dim)
        return self

    def latent_space(self) -> str:
        return "the simplex"

    def concentration(self, features: torch.Tensor) -> torch.Tensor:
        """a(x) = softplus(W h(x) + b) + a_min."""
        return F.softplus(self.raw_concentration(features)) + self.min_concentration

    def forward(self, features: torch.Tensor) -> dist.TorchDistribution:
        return dist.Dirichlet(self.concentration(features))
