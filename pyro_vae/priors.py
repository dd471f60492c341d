"""Priors p(z): tractable by construction, declared by name.

A prior is a module whose ``forward()`` returns a Pyro distribution over z with event shape
``(latent_dim,)`` and empty batch shape; the model's data plate broadcasts it over datapoints.
Its parameters (if any) are trained with everything else.
"""

from __future__ import annotations

import functools
import types
from typing import Any, ClassVar, Literal

import torch
import torch.nn.functional as F
from pyro import distributions as dist
from torch import nn

from .config import PRIORS, Component, require
from .distributions import (LOG_2PI, BernoulliUnits, DiagonalGaussianMixture, OneHotGroups,  # noqa: F401
                            StandardNormal, TwoLayerLatent, UniformMixture, diagonal_gaussian_parameters,
                            dirichlet_laplace_approximation, inverse_softplus, leading_marginal,
                            rsample_and_log_prob, split_latent)  # (LOG_2PI, rsample_and_log_prob: importable here as before)
from .errors import ConfigError
from .networks import Activation, ConditionalGaussian


class Prior(Component, nn.Module):
    """Base class: ``setup(latent_dim)`` allocates parameters, ``forward()`` returns p(z).

    A prior that needs the rest of the model (the VampPrior calls the guide's encoder) receives the
    VAE in ``attach(vae)``, once its networks exist; one that learns from the training data (its
    range, initial pseudo-inputs) receives the prepared training set in ``fit_to_data(x, generator)``
    before training starts.
    """

    #: True for a latent without a reparameterized path (categorical, Bernoulli): trained by the
    #: objectives with ``discrete_latents``, paired with a prior or guide of the same space.
    discrete_latent: ClassVar[bool] = False

    def __init__(self) -> None:
        nn.Module.__init__(self)
        self.latent_dim = 0

    def setup(self, latent_dim: int) -> "Prior":
        self.latent_dim = latent_dim
        return self

    def attach(self, vae) -> None:
        """Called by the VAE once its encoder, guide and decoder exist (a subclass calls this first):
        refuses a guide whose latent space is not the prior's (a Gaussian q under a categorical p(z)
        would have no density ratio to speak of), and a network that declares the space its decoder
        reads (``latent_space()``, e.g. the topic network's) other than the prior's."""
        space = getattr(vae.posterior, "latent_space", None)
        if space is not None and space() != self.latent_space():
            raise ConfigError(
                f"the prior '{self.name}' is over {self.latent_space()} and the guide '{vae.posterior.name}' over "
                f"{space()}: q(z|x) and p(z) must share one latent space. Pair a discrete prior with its guide "
                f"(categorical with categorical, the same classes; bernoulli with bernoulli), a prior over the "
                f"simplex with a guide over it (dirichlet with dirichlet), one over real vectors with a guide over "
                f"real vectors (diagonal-gaussian, iaf, hierarchical).")
        network = getattr(vae, "network", None)
        decoded = getattr(network, "latent_space", None)
        if decoded is not None and decoded() != self.latent_space():
            fix = getattr(network, "latent_space_fix", lambda space: "choose a prior over what it reads.")
            raise ConfigError(
                f"the prior '{self.name}' is over {self.latent_space()} and the network '{network.name}' decodes z "
                f"as {decoded()}: {fix(self.latent_space())}")

    def latent_space(self) -> str:
        """What z is, in words (compared with the guide's): real vectors here."""
        return "real vectors"

    def fit_to_data(self, x: torch.Tensor, generator: torch.Generator) -> None:
        """Called by the trainer with the prepared training set before the first step."""

    def forward(self) -> dist.TorchDistribution:  # pragma: no cover - abstract
        raise NotImplementedError


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
        return DiagonalGaussianMixture(self.logits, self.locs, F.softplus(self.raw_scales))


@PRIORS.register("vamp")
class VampPrior(Prior):
    """p(z) = (1/K) sum_k q(z | u_k): the guide's own posterior at K learnable pseudo-inputs u_k (Tomczak & Welling 2018).

    The pseudo-inputs live in the data's range: u = lo + (hi - lo) sigmoid(eta), with [lo, hi] the
    range of the prepared training data ([0, 1] until the trainer sets it). With init = "data" they
    start as K random training images (squeezed into [lo + 0.01 (hi - lo), hi - 0.01 (hi - lo)] so
    that eta is finite); with "random", at uniform noise. The prior calls the same encoder and guide
    head as q(z|x), so training moves both. With the diagonal-gaussian guide it is a
    DiagonalGaussianMixture (two matrix products per evaluation); with other guide families (iaf)
    a uniform mixture of their distributions, whose log-density inverts the flow for every (z,
    pseudo-input) pair: exact, but slow.

    Options:
        components: K, the number of pseudo-inputs.
        init: "data" starts the pseudo-inputs at random training images, "random" at uniform noise in the data range.
    """

    def __init__(self, *, components: int = 500, init: Literal["data", "random"] = "data") -> None:
        super().__init__()
        require(components >= 1, f"components must be >= 1, got {components}.")
        self.components = components
        self.init = init
        self._model: tuple = ()  # (encoder, posterior), held without registering them twice

    def attach(self, vae) -> None:
        super().attach(vae)
        self._model = (vae.encoder, vae.posterior)
        self.register_buffer("low", torch.zeros(()))
        self.register_buffer("high", torch.ones(()))
        u = torch.rand(self.components, *vae.data_shape)  # uniform noise in (0, 1) until data arrives
        self.raw_inputs = nn.Parameter(torch.logit(u.clamp(0.01, 0.99)))

    def fit_to_data(self, x: torch.Tensor, generator: torch.Generator) -> None:
        if not torch.is_tensor(x):  # rows on disk or held sparse: the range and inputs of 4096 rows spread over them
            x = x[torch.linspace(0, len(x) - 1, min(len(x), 4096)).round().long().unique()].float()
        with torch.no_grad():
            self.low.copy_(x.min())
            self.high.copy_(torch.maximum(x.max(), x.min() + 1e-6))
            if self.init == "data":
                pick = torch.randint(0, x.shape[0], (self.components,), generator=generator, device=x.device)
                unit = ((x[pick] - self.low) / (self.high - self.low)).clamp(0.01, 0.99)
                self.raw_inputs.copy_(torch.logit(unit))

    def pseudo_inputs(self) -> torch.Tensor:
        """u_k = lo + (hi - lo) sigmoid(eta_k), shape (K, *data_shape)."""
        return self.low + (self.high - self.low) * torch.sigmoid(self.raw_inputs)

    def forward(self) -> dist.TorchDistribution:
        encoder, posterior = self._model
        q = posterior(encoder(self.pseudo_inputs()))  # batch (K,), event (D,)
        diagonal = diagonal_gaussian_parameters(q)
        if diagonal is not None:
            loc, scale = diagonal
            return DiagonalGaussianMixture(torch.zeros(self.components, device=loc.device), loc, scale)
        return UniformMixture(q)


class _BoundedScaleNet(nn.Module):
    """A coupling layer's network: (mean, log-scale) with the log-scale bounded smoothly to (-b, b)."""

    def __init__(self, net: nn.Module, bound: float) -> None:
        super().__init__()
        self.net, self.bound = net, bound

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        mean, raw = self.net(x)
        return mean, self.bound * torch.tanh(raw / self.bound)


@PRIORS.register("flow")
class FlowPrior(Prior):
    """p(z) = N(0, I) pushed through `depth` coupling layers (affine or spline) with permutations; exact log-density.

    Each layer keeps half of z and transforms the other half elementwise, with parameters computed
    from the kept half: affine (RealNVP; log-scales bounded smoothly to (-3, 3) by a tanh) or
    rational-quadratic spline (Durkan et al. 2019; 8 bins on [-3, 3], identity outside). Both are
    invertible in one pass, so sampling (forward) and log p(z) (inverse, plus the log-determinant)
    are both cheap. A fixed random permutation (from the run's seed) follows every layer. Every
    layer starts as the identity, so training starts from N(0, I). Needs a latent of at least 2
    dimensions. Cost, measured at batch 128 with a 40-D latent, depth 4, width 64 (log p(z) and its
    gradient): about 4 ms for affine, 28 ms for spline (Pyro's spline is many small operations).

    Options:
        depth: number of coupling layers.
        hidden: width of the hidden layer of each coupling network.
        kind: "affine" (RealNVP) or "spline" (neural spline coupling).
    """

    def __init__(self, *, depth: int = 4, hidden: int = 64, kind: Literal["affine", "spline"] = "affine") -> None:
        super().__init__()
        require(depth >= 1, f"depth must be >= 1, got {depth}.")
        require(hidden >= 1, f"hidden must be >= 1, got {hidden}.")
        self.depth, self.hidden, self.kind = depth, hidden, kind

    def setup(self, latent_dim: int) -> "FlowPrior":
        require(latent_dim >= 2, f"the flow prior's coupling layers need latent_dim >= 2, got {latent_dim}.")
        super().setup(latent_dim)
        from pyro.distributions.transforms import AffineCoupling, SplineCoupling
        from pyro.nn import DenseNN

        self.register_buffer("loc", torch.zeros(latent_dim))
        self.register_buffer("scale", torch.ones(latent_dim))
        split = latent_dim // 2
        rest = latent_dim - split
        layers = []
        bins = 8
        # every layer starts as the identity map (the prior starts as N(0, I)); training bends it
        unit_slope = inverse_softplus(1.0 - 1e-3).item()  # Pyro's spline slopes are 1e-3 + softplus(.)
        for _ in range(self.depth):
            if self.kind == "affine":
                dense = DenseNN(split, [self.hidden], param_dims=[rest, rest])
                layers.append(AffineCoupling(split, _BoundedScaleNet(dense, bound=3.0),
                                             log_scale_min_clip=-3.0, log_scale_max_clip=3.0))
                bias = torch.zeros(2 * rest)
            else:
                dense = DenseNN(split, [self.hidden], param_dims=[rest * bins, rest * bins, rest * (bins - 1)])
                layer = SplineCoupling(latent_dim, split, dense, count_bins=bins, bound=3.0, order="quadratic")
                with torch.no_grad():
                    layer.lower_spline.unnormalized_widths.zero_()
                    layer.lower_spline.unnormalized_heights.zero_()
                    layer.lower_spline.unnormalized_derivatives.fill_(unit_slope)
                layers.append(layer)
                bias = torch.cat([torch.zeros(2 * rest * bins), torch.full((rest * (bins - 1),), unit_slope)])
            with torch.no_grad():
                dense.layers[-1].weight.zero_()
                dense.layers[-1].bias.copy_(bias)
        self.layers = nn.ModuleList(layers)
        for i in range(self.depth):
            self.register_buffer(f"permutation_{i}", torch.randperm(latent_dim))
        return self

    def forward(self) -> dist.TorchDistribution:
        from pyro.distributions.transforms import Permute

        transforms = []
        for i, layer in enumerate(self.layers):
            transforms += [layer, Permute(getattr(self, f"permutation_{i}"))]
        return dist.TransformedDistribution(StandardNormal(dist.Normal(self.loc, self.scale), 1), transforms)


@PRIORS.register("hierarchical")
class HierarchicalPrior(Prior):
    """p(z) = p(z_2) p(z_1|z_2), z = (z_2, z_1): two stochastic layers, p(z_1|z_2) = N(mu(z_2), diag sigma(z_2)^2) (Tomczak & Welling 2018's HVAE).

    z's first ``top_dim`` coordinates are z_2, the rest z_1; the decoder reads both, p(x|z_1, z_2).
    Any other prior can be the top one. A ``vamp`` top is (1/K) sum_k q(z_2|u_k), the guide's own
    marginal over z_2 at the pseudo-inputs: the hierarchical guide has it (its q(z_2|x), with the same
    ``top_dim`` or a larger one) and so does the diagonal-gaussian guide (its first coordinates); an
    IAF guide has none and is refused. log p(z) is exact; the KL to it has no closed form, so
    training and evaluation use Monte Carlo.

    Options:
        top: the top layer's prior p(z_2): a prior's name or table (any prior but hierarchical).
        top_dim: dimension of z_2; unset: half the latent dimension, rounded up (the hierarchical guide's default too).
        hidden: widths of the hidden layers of the network for p(z_1|z_2).
        activation: their activation.
    """

    def __init__(self, *, top: Any = "standard-normal", top_dim: int | None = None, hidden: list[int] = [256],
                 activation: Activation = "gated") -> None:
        super().__init__()
        self.top_prior = PRIORS.build(top, "model.prior.top")
        require(not isinstance(self.top_prior, HierarchicalPrior),
                "the top prior of a hierarchical prior cannot itself be hierarchical (two stochastic layers only).")
        require(all(h >= 1 for h in hidden), f"hidden widths must be >= 1, got {hidden}.")
        self.top, self.top_dim, self.hidden, self.activation = self.top_prior.spec(), top_dim, hidden, activation

    def setup(self, latent_dim: int) -> "HierarchicalPrior":
        top, bottom = split_latent(latent_dim, self.top_dim)
        super().setup(latent_dim)
        self.top_prior.setup(top)
        self.conditional = ConditionalGaussian(top, bottom, self.hidden, self.activation)
        self.dims = (top, bottom)
        return self

    def attach(self, vae) -> None:
        super().attach(vae)
        top = self.dims[0]
        # the top prior sees a model whose posterior is q(z_2|x) (what a VampPrior calls)
        view = types.SimpleNamespace(encoder=vae.encoder, data_shape=vae.data_shape,
                                     posterior=functools.partial(_top_posterior, vae.posterior, top))
        self.top_prior.attach(view)
        if isinstance(self.top_prior, VampPrior):
            with torch.no_grad():
                view.posterior(vae.encoder(torch.zeros(1, *vae.data_shape)))  # refuses a guide without q(z_2|x)

    def fit_to_data(self, x: torch.Tensor, generator: torch.Generator) -> None:
        self.top_prior.fit_to_data(x, generator)

    def forward(self) -> TwoLayerLatent:
        def conditional(z_2: torch.Tensor) -> dist.TorchDistribution:
            loc, scale = self.conditional(z_2)
            return dist.Normal(loc, scale).to_event(1)

        return TwoLayerLatent(self.top_prior(), conditional, self.dims[1])


def _top_posterior(posterior: nn.Module, top: int, features: torch.Tensor) -> dist.TorchDistribution:
    """q(z_2|x) from the guide: its marginal over z's first ``top`` coordinates."""
    q = leading_marginal(posterior(features), top)
    if q is None:
        raise ConfigError(
            f"the hierarchical prior's vamp top needs q(z_2|x), the guide's marginal over z's first {top} "
            f"coordinates, in closed form; guide '{posterior.name}' has none. Use the hierarchical guide "
            f"(model.guide = \"hierarchical\", with top_dim >= {top}) or the diagonal-gaussian guide, or "
            f"another top prior (model.prior.top)."
        )
    return q


# ---------------------------------------------------------------------------------------------
# Discrete latents


@PRIORS.register("categorical")
class CategoricalPrior(Prior):
    """p(z) = prod_g Cat(z_g | pi_g): M = latent_dim / K groups of K one-hot classes, uniform pi (or learned).

    z is the M one-hot vectors side by side (latent_dim = M * K numbers, what the decoder reads).
    Pair it with the ``categorical`` guide and an estimator for discrete latents (``enumerate``,
    ``score-function``, ``gumbel-softmax``).

    Options:
        classes: K, the classes of each group; latent_dim must be a multiple of it (M = latent_dim / K groups).
        learned: false keeps pi uniform (1/K each, no parameters); true learns each group's pi (softmax of logits, starting uniform).
    """

    discrete_latent = True

    def __init__(self, *, classes: int = 10, learned: bool = False) -> None:
        super().__init__()
        require(classes >= 2, f"classes must be >= 2, got {classes}.")
        self.classes, self.learned = classes, learned

    def setup(self, latent_dim: int) -> "CategoricalPrior":
        super().setup(latent_dim)
        require(latent_dim % self.classes == 0,
                f"the categorical prior needs latent_dim = groups x classes: {latent_dim} is not a multiple of "
                f"classes = {self.classes}.")
        logits = torch.zeros(latent_dim // self.classes, self.classes)
        if self.learned:
            self.logits = nn.Parameter(logits)
        else:
            self.register_buffer("logits", logits)
        return self

    def latent_space(self) -> str:
        return f"{self.latent_dim // self.classes} one-hot groups of {self.classes} classes"

    def forward(self) -> dist.TorchDistribution:
        return OneHotGroups(self.logits)


@PRIORS.register("bernoulli")
class BernoulliPrior(Prior):
    """p(z) = prod_u Bern(z_u | rho_u): latent_dim binary units, rho = 1/2 (or learned).

    Pair it with the ``bernoulli`` guide and an estimator for discrete latents.

    Options:
        learned: false keeps rho = 1/2 (no parameters); true learns each unit's rho (sigmoid of a logit, starting at 1/2).
    """

    discrete_latent = True

    def __init__(self, *, learned: bool = False) -> None:
        super().__init__()
        self.learned = learned

    def setup(self, latent_dim: int) -> "BernoulliPrior":
        super().setup(latent_dim)
        if self.learned:
            self.logits = nn.Parameter(torch.zeros(latent_dim))
        else:
            self.register_buffer("logits", torch.zeros(latent_dim))
        return self

    def latent_space(self) -> str:
        return "binary vectors"

    def forward(self) -> dist.TorchDistribution:
        return BernoulliUnits(self.logits)


# ---------------------------------------------------------------------------------------------
# Topic proportions: a point of the simplex, directly or through a softmax


@PRIORS.register("logistic-normal")
class LogisticNormalPrior(Prior):
    """p(z) = N(mu, diag sigma^2), the Laplace approximation (softmax basis) of a symmetric Dirichlet(alpha) over K = latent_dim topics; theta = softmax(z) (ProdLDA's prior).

    z are log topic weights; a decoder that reads topic proportions takes theta = softmax(z) (the
    topic network with latent = "softmax" does). The general formula
    (``distributions.dirichlet_laplace_approximation``, Srivastava & Sutton 2017 eq. 3),

        mu_k = log alpha_k - (1/K) sum_j log alpha_j,
        sigma_k^2 = (1/alpha_k)(1 - 2/K) + (1/K^2) sum_j 1/alpha_j,

    at alpha_k = alpha for every k is mu = 0 and sigma_k^2 = (1/alpha)(1 - 1/K): at alpha = 1 and
    K = 50, sigma^2 = 0.98. Fixed, not trained. Its KL to a diagonal-Gaussian guide is the closed form
    of two diagonal Normals (torch's registered KL of Independent Normals),
    sum_k log(sigma_k / s_k) + (s_k^2 + (m_k - mu_k)^2) / (2 sigma_k^2) - 1/2, for q = N(m, diag s^2).

    Options:
        alpha: the symmetric Dirichlet's concentration (ProdLDA's authors: 1.0); smaller: sparser topic proportions.
    """

    def __init__(self, *, alpha: float = 1.0) -> None:
        super().__init__()
        require(alpha > 0, f"alpha (the Dirichlet's concentration) must be > 0, got {alpha}.")
        self.alpha = alpha

    def setup(self, latent_dim: int) -> "LogisticNormalPrior":
        require(latent_dim >= 2, f"the logistic-normal prior is over K = latent_dim topics and needs K >= 2 (one "
                                 f"topic's proportion is always 1), got latent_dim = {latent_dim}.")
        super().setup(latent_dim)
        loc, scale = dirichlet_laplace_approximation(torch.full((latent_dim,), float(self.alpha), dtype=torch.float64))
        self.register_buffer("loc", loc.to(torch.get_default_dtype()))
        self.register_buffer("scale", scale.to(torch.get_default_dtype()))
        return self

    def forward(self) -> dist.TorchDistribution:
        return dist.Normal(self.loc, self.scale).to_event(1)


@PRIORS.register("dirichlet")
class DirichletPrior(Prior):
    """p(theta) = Dir(theta; alpha 1_K) on the simplex, K = latent_dim: topic proportions drawn directly (pair it with the dirichlet guide).

    log p(theta) = log Gamma(K alpha) - K log Gamma(alpha) + (alpha - 1) sum_k log theta_k. Its KL
    to the dirichlet guide's Dir(a) is torch's registered closed form,
    log Gamma(a_0) - sum_k log Gamma(a_k) - log Gamma(K alpha) + K log Gamma(alpha)
    + sum_k (a_k - alpha)(psi(a_k) - psi(a_0)), a_0 = sum_k a_k. A decoder reading theta takes it as
    it is (the topic network with latent = "simplex").

    Options:
        alpha: the symmetric concentration (1: uniform over the simplex; below 1: sparse proportions).
    """

    def __init__(self, *, alpha: float = 1.0) -> None:
        super().__init__()
        require(alpha > 0, f"alpha (the Dirichlet's concentration) must be > 0, got {alpha}.")
        self.alpha = alpha

    def setup(self, latent_dim: int) -> "DirichletPrior":
        require(latent_dim >= 2, f"the dirichlet prior is over K = latent_dim topic proportions and needs K >= 2, "
                                 f"got latent_dim = {latent_dim}.")
        super().setup(latent_dim)
        self.register_buffer("concentration", torch.full((latent_dim,), float(self.alpha)))
        return self

    def latent_space(self) -> str:
        return "the simplex"

    def forward(self) -> dist.TorchDistribution:
        return dist.Dirichlet(self.concentration)
