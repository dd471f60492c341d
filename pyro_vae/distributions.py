"""The custom distributions that priors, guides and likelihoods return, and their registered KLs.

Each is a ``pyro.distributions.TorchDistribution`` (or a thin ``Independent``) with the event shape
its component declares: a latent vector ``(latent_dim,)`` for priors and guides, the image
``(C, H, W)`` for likelihoods; ``log_prob`` sums over the event (nats per datapoint). What makes
them custom is always one of three things: a closed form torch does not register (the diagonal
Normal's KL to N(0, I)), noise drawn so that data-parallel training gives every datapoint the draws
of one process (``numerics.standard_normal``), or an image likelihood whose ``log_prob`` is cheaper
or exact where the generic one is not (Bernoulli with logits, discretized logistic mixtures,
autoregressive pixels). Nothing here holds parameters: networks (``networks.py``) produce the
arguments and components (``priors.py``, ``guides.py``, ``likelihoods.py``) choose the family.
"""

from __future__ import annotations

import math
from typing import Callable

import pyro.distributions as dist
import torch
from torch.distributions import constraints, register_kl
from torch.nn import functional as F

from .config import require
from .numerics import standard_normal


LOG_2PI = math.log(2 * math.pi)


def diagonal_gaussian_parameters(q) -> tuple[torch.Tensor, torch.Tensor] | None:
    """(loc, scale) if q is a Gaussian with diagonal covariance over its last dimension, else None."""
    base = getattr(q, "base_dist", None)
    if isinstance(base, torch.distributions.Normal) and getattr(q, "reinterpreted_batch_ndims", 0) == 1:
        return base.loc, base.scale
    return None


def inverse_softplus(y: torch.Tensor | float) -> torch.Tensor:
    """x with softplus(x) = y (y > 0): lets a trainable scale start at a chosen value."""
    y = torch.as_tensor(y, dtype=torch.get_default_dtype())
    return y + torch.log(-torch.expm1(-y))


class DiagonalGaussianMixture(dist.TorchDistribution):
    """sum_k pi_k N(z; mu_k, diag sigma_k^2) over the last dimension.

    log_prob expands the squares, -1/2 (z - mu)^2 / sigma^2 = -1/2 (z^2 / sigma^2 - 2 z mu / sigma^2
    + mu^2 / sigma^2), so the (points x components) table is two matrix products and memory holds
    no (points x components x D) tensor: what makes a 500-component VampPrior affordable when
    log p(z) is evaluated for thousands of importance samples.
    """

    arg_constraints = {"logits": constraints.real, "locs": constraints.real, "scales": constraints.positive}
    support = constraints.independent(constraints.real, 1)
    has_rsample = False

    def __init__(self, logits: torch.Tensor, locs: torch.Tensor, scales: torch.Tensor,
                 batch_shape: torch.Size = torch.Size(), validate_args: bool | None = None) -> None:
        self.logits, self.locs, self.scales = logits, locs, scales
        super().__init__(torch.Size(batch_shape), locs.shape[-1:], validate_args=validate_args)

    def expand(self, batch_shape, _instance=None) -> "DiagonalGaussianMixture":
        new = self._get_checked_instance(DiagonalGaussianMixture, _instance)
        new.logits, new.locs, new.scales = self.logits, self.locs, self.scales
        super(DiagonalGaussianMixture, new).__init__(torch.Size(batch_shape), self.event_shape, validate_args=False)
        new._validate_args = self._validate_args
        return new

    def component_log_probs(self, z: torch.Tensor) -> torch.Tensor:
        """log N(z; mu_k, diag sigma_k^2) for every component: shape (*z.shape[:-1], K)."""
        precision = self.scales.pow(-2)  # (K, D)
        quadratic = z.pow(2) @ precision.T - 2 * z @ (self.locs * precision).T + (self.locs.pow(2) * precision).sum(-1)
        return -0.5 * quadratic - self.scales.log().sum(-1) - 0.5 * z.shape[-1] * LOG_2PI

    def log_prob(self, z: torch.Tensor) -> torch.Tensor:
        if self._validate_args:
            self._validate_sample(z)
        return torch.logsumexp(self.component_log_probs(z) + torch.log_softmax(self.logits, -1), -1)

    def sample(self, sample_shape: torch.Size = torch.Size()) -> torch.Tensor:
        shape = self._extended_shape(sample_shape)
        with torch.no_grad():
            k = torch.distributions.Categorical(logits=self.logits).sample(shape[:-1])
            return self.locs[k] + self.scales[k] * torch.randn(shape, dtype=self.locs.dtype, device=self.locs.device)

    @property
    def mean(self) -> torch.Tensor:
        return (torch.softmax(self.logits, -1)[:, None] * self.locs).sum(0).expand(self._extended_shape())


class StandardNormal(dist.Independent):
    """N(0, I) over the last dimension; log_prob = -|z|^2 / 2 - (D/2) log 2 pi, without the
    (z - 0) / 1 arithmetic of a general Normal (same value, fewer operations per step)."""

    def log_prob(self, value: torch.Tensor) -> torch.Tensor:
        if self._validate_args:
            self._validate_sample(value)
        return -0.5 * value.pow(2).sum(-1) - 0.5 * value.shape[-1] * LOG_2PI


class UniformMixture(dist.TorchDistribution):
    """(1/K) sum_k q_k(z) for a distribution q with batch shape (K,): log_prob evaluates every q_k at
    every z (z expanded against the K components explicitly, which flows need)."""

    arg_constraints = {}
    has_rsample = False

    def __init__(self, components, batch_shape: torch.Size = torch.Size(), validate_args: bool | None = None) -> None:
        self.component_distribution = components
        super().__init__(torch.Size(batch_shape), components.event_shape, validate_args=validate_args)

    @property
    def support(self):
        return self.component_distribution.support

    def expand(self, batch_shape, _instance=None) -> "UniformMixture":
        new = self._get_checked_instance(UniformMixture, _instance)
        new.component_distribution = self.component_distribution
        super(UniformMixture, new).__init__(torch.Size(batch_shape), self.event_shape, validate_args=False)
        return new

    def log_prob(self, z: torch.Tensor) -> torch.Tensor:
        k = self.component_distribution.batch_shape[-1]
        expanded = z.unsqueeze(-2).expand(*z.shape[:-1], k, z.shape[-1])
        return torch.logsumexp(self.component_distribution.log_prob(expanded), -1) - math.log(k)

    def sample(self, sample_shape: torch.Size = torch.Size()) -> torch.Tensor:
        shape = self._extended_shape(sample_shape)
        with torch.no_grad():
            draws = self.component_distribution.sample(shape[:-1])  # (*shape[:-1], K, D)
            pick = torch.randint(0, draws.shape[-2], shape[:-1], device=draws.device)
            return draws.gather(-2, pick[..., None, None].expand(*shape[:-1], 1, shape[-1])).squeeze(-2)


def split_latent(latent_dim: int, top_dim: int | None) -> tuple[int, int]:
    """(dim z_2, dim z_1) of a two-layer latent z = (z_2, z_1): ``top_dim`` (None: half the latent
    dimension, rounded up) and the rest; both layers need at least one coordinate."""
    require(latent_dim >= 2, f"two stochastic layers need latent_dim >= 2 (one coordinate each), got {latent_dim}.")
    top = math.ceil(latent_dim / 2) if top_dim is None else top_dim
    require(1 <= top < latent_dim,
            f"top_dim must be in [1, latent_dim - 1] = [1, {latent_dim - 1}] (z_1 gets the rest), got {top}.")
    return top, latent_dim - top


def leading_marginal(q, dim: int) -> dist.TorchDistribution | None:
    """q's marginal over the first ``dim`` coordinates of z where it is a diagonal Gaussian in closed
    form (a diagonal Gaussian's slice; the top layer of a two-layer latent), else None (e.g. an IAF)."""
    own = getattr(q, "leading_marginal", None)
    if own is not None:
        return own(dim)
    diagonal = diagonal_gaussian_parameters(q)
    if diagonal is None:
        return None
    if dim == q.event_shape[-1]:
        return q
    loc, scale = diagonal
    return dist.Normal(loc[..., :dim], scale[..., :dim]).to_event(1)


class TwoLayerLatent(dist.TorchDistribution):
    """A density over z = (z_2, z_1), z_2 ~ ``top`` and z_1 | z_2 ~ ``conditional(z_2)``:
    log p(z) = log top(z_2) + log conditional(z_2)(z_1), drawn top layer first (ancestral sampling).

    The hierarchical prior's p(z_2) p(z_1|z_2) and the hierarchical guide's q(z_2|x) q(z_1|x, z_2)
    are both this. ``conditional`` maps z_2 of shape (*sample, *batch, dim z_2) to a distribution
    over z_1 with that batch shape. Reparameterized when both layers are (z_1 = mu(z_2) + sigma(z_2)
    eps_1 carries the gradient of z_2 along). There is no closed form for the mean or for a KL.
    """

    arg_constraints: dict = {}
    support = constraints.independent(constraints.real, 1)

    def __init__(self, top: dist.TorchDistribution, conditional: Callable[[torch.Tensor], dist.TorchDistribution],
                 bottom_dim: int, validate_args: bool | None = None) -> None:
        self.top, self.conditional, self.top_dim = top, conditional, top.event_shape[-1]
        super().__init__(top.batch_shape, torch.Size([self.top_dim + bottom_dim]), validate_args=validate_args)

    @property
    def has_rsample(self) -> bool:
        return self.top.has_rsample

    def split(self, z: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(z_2, z_1): the first ``top_dim`` coordinates of z and the rest."""
        return z[..., : self.top_dim], z[..., self.top_dim:]

    def log_prob(self, z: torch.Tensor) -> torch.Tensor:
        if self._validate_args:
            self._validate_sample(z)
        z_2, z_1 = self.split(z)
        return self.top.log_prob(z_2) + self.conditional(z_2).log_prob(z_1)

    def rsample(self, sample_shape: torch.Size = torch.Size()) -> torch.Tensor:
        z_2 = self.top.rsample(sample_shape)
        return torch.cat([z_2, self.conditional(z_2).rsample()], -1)

    def sample(self, sample_shape: torch.Size = torch.Size()) -> torch.Tensor:
        with torch.no_grad():
            z_2 = self.top.sample(sample_shape)
            return torch.cat([z_2, self.conditional(z_2).sample()], -1)

    def rsample_and_log_prob(self, sample_shape: torch.Size = torch.Size()) -> tuple[torch.Tensor, torch.Tensor]:
        """z and log p(z) together, each layer's log-density from its own noise where it offers that."""
        z_2, log_top = rsample_and_log_prob(self.top, sample_shape)
        z_1, log_bottom = rsample_and_log_prob(self.conditional(z_2), torch.Size())
        return torch.cat([z_2, z_1], -1), log_top + log_bottom

    def leading_marginal(self, dim: int) -> dist.TorchDistribution | None:
        return leading_marginal(self.top, dim) if dim <= self.top_dim else None


def rsample_and_log_prob(d, sample_shape: torch.Size) -> tuple[torch.Tensor, torch.Tensor]:
    """z = d.rsample(sample_shape) and log d(z): fused where the distribution offers it (log q from
    the reparameterization noise), else rsample then log_prob (the same value and gradient)."""
    if hasattr(d, "rsample_and_log_prob"):
        return d.rsample_and_log_prob(sample_shape)
    z = d.rsample(sample_shape)
    return z, d.log_prob(z)


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


def normal_of_one_shape(loc: torch.Tensor, scale: torch.Tensor) -> dist.Normal:
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


class BernoulliImage(dist.TorchDistribution):
    """Independent Bernoulli pixels over the rightmost ``event_dim`` dimensions, from logits.

    The same distribution as ``Bernoulli(logits=logits).to_event(event_dim)``, in one object:
    log_prob = -(binary cross-entropy summed over the event), negated after the sum. (Fewer objects
    and full-image passes per step than the composed form; ``tests/test_likelihoods.py`` checks
    that both agree.)
    """

    arg_constraints = {"logits": constraints.real}
    has_rsample = False

    def __init__(self, logits: torch.Tensor, event_dim: int, validate_args: bool | None = None) -> None:
        self.logits = logits
        cut = logits.dim() - event_dim
        super().__init__(logits.shape[:cut], logits.shape[cut:], validate_args=validate_args)

    @constraints.dependent_property
    def support(self):
        return constraints.independent(constraints.boolean, len(self.event_shape))

    def expand(self, batch_shape, _instance=None) -> "BernoulliImage":
        new = self._get_checked_instance(BernoulliImage, _instance)
        batch_shape = torch.Size(batch_shape)
        new.logits = self.logits.expand(batch_shape + self.event_shape)
        super(BernoulliImage, new).__init__(batch_shape, self.event_shape, validate_args=False)
        new._validate_args = self._validate_args
        return new

    @property
    def mean(self) -> torch.Tensor:
        return torch.sigmoid(self.logits)

    @property
    def variance(self) -> torch.Tensor:
        p = torch.sigmoid(self.logits)
        return p * (1 - p)

    def sample(self, sample_shape: torch.Size = torch.Size()) -> torch.Tensor:
        with torch.no_grad():
            return torch.bernoulli(torch.sigmoid(self.logits).expand(self._extended_shape(sample_shape)))

    def log_prob(self, value: torch.Tensor) -> torch.Tensor:
        if self._validate_args:
            self._validate_sample(value)
        logits = self.logits
        if logits.shape != value.shape:
            logits, value = torch.broadcast_tensors(logits, value)
        bce = F.binary_cross_entropy_with_logits(logits, value, reduction="none")
        return -bce.sum(tuple(range(-len(self.event_shape), 0)))

    def log_prob_sum(self, value: torch.Tensor) -> torch.Tensor:
        """``log_prob(value).sum()`` (over the batch too), with the sum fused into the cross-entropy."""
        if self._validate_args:
            self._validate_sample(value)
        logits = self.logits
        if logits.shape != value.shape:
            logits, value = torch.broadcast_tensors(logits, value)
        return -F.binary_cross_entropy_with_logits(logits, value, reduction="sum")


class AutoregressiveBernoulliImage(dist.TorchDistribution):
    """Binary pixels in raster order: p(x|z) = prod_i Bern(x_i; sigmoid(l_i)), l_i = logit(x_<i, z).

    ``context`` is the decoder's head (*batch, P, 1, H, W); ``net`` is the likelihood module that
    turns (pixels before i, context at i) into l_i (:class:`PixelCNNBernoulliLikelihood`).
    ``log_prob`` computes every l_i in one pass (the pixels before i are observed); ``sample``
    draws pixel by pixel. The mean E[x|z] has no closed form, so there is no ``mean``.
    """

    arg_constraints = {}
    has_rsample = False

    def __init__(self, context: torch.Tensor, net: torch.nn.Module, validate_args: bool | None = None) -> None:
        self.context, self.net = context, net
        super().__init__(context.shape[:-4], context.shape[-3:], validate_args=validate_args)

    @constraints.dependent_property
    def support(self):
        return constraints.independent(constraints.boolean, 3)

    def expand(self, batch_shape, _instance=None):
        new = self._get_checked_instance(AutoregressiveBernoulliImage, _instance)
        batch_shape = torch.Size(batch_shape)
        new.context, new.net = self.context.expand(batch_shape + self.context.shape[-4:]), self.net
        super(AutoregressiveBernoulliImage, new).__init__(batch_shape, self.event_shape, validate_args=False)
        new._validate_args = self._validate_args
        return new

    def logits(self, value: torch.Tensor) -> torch.Tensor:
        """l_i for every pixel of ``value`` (*vbatch, 1, H, W): shape (*broadcast batch, H, W)."""
        return self.net.logits(self.net.pixel_part(value), self.net.context_part(self.context))

    def log_prob(self, value: torch.Tensor) -> torch.Tensor:
        if self._validate_args:
            self._validate_sample(value)
        logits = self.logits(value)
        target = value.squeeze(-3).expand_as(logits)
        return -F.binary_cross_entropy_with_logits(logits, target, reduction="none").sum((-2, -1))

    def sample(self, sample_shape: torch.Size = torch.Size()) -> torch.Tensor:
        """x_1, x_2, ... in raster order, each drawn given those before it (H * W passes over a band
        of ``rows_seen + 1`` rows: the causal stack reaches no further up)."""
        with torch.no_grad():
            shape = self._extended_shape(sample_shape)
            context = self.net.context_part(self.context.expand(torch.Size(sample_shape) + self.context.shape))
            x = torch.zeros(shape, dtype=self.context.dtype, device=self.context.device)
            height, width = shape[-2:]
            reach = self.net.stack.rows_seen
            for i in range(height):
                top = max(0, i - reach)
                for j in range(width):
                    band = self.net.pixel_part(x[..., top : i + 1, :])
                    logit = self.net.logits(band[..., -1:, j : j + 1, :], context[..., i : i + 1, j : j + 1, :])
                    u = torch.rand(logit.shape, dtype=x.dtype, device=x.device)
                    x[..., 0, i : i + 1, j : j + 1] = (u < torch.sigmoid(logit)).to(x.dtype)
            return x


def _log1mexp(d: torch.Tensor) -> torch.Tensor:
    """log(1 - exp(d)) for d < 0, accurate near 0 and far from it (Maechler 2012)."""
    return torch.where(d > -math.log(2), torch.log(-torch.expm1(d)), torch.log1p(-torch.exp(d)))


class DiscretizedLogisticMixtureImage(dist.TorchDistribution):
    """Per pixel, a mixture of K logistics discretized to the 256 levels of 8-bit data (PixelCNN++).

    A level k is y = 2k/255 - 1 in [-1, 1]; its bin is [y - 1/255, y + 1/255], except that the
    first and last bins extend to -inf and +inf, so the 256 probabilities sum to one. With F the
    logistic CDF, P(k) = sum_j pi_j [F((y + 1/255 - mu_j)/s_j) - F((y - 1/255 - mu_j)/s_j)], computed
    as log sigma(a) + log sigma(-b) + log(1 - exp(b - a)) (stable in both tails).
    ``params`` is (*batch, 3K, *event): K mixture logits, K locations, K log-scales.
    """

    arg_constraints = {}
    has_rsample = False

    def __init__(self, params: torch.Tensor, components: int, event_dim: int, min_log_scale: float = -7.0,
                 validate_args: bool | None = None) -> None:
        self.components, self.min_log_scale = components, min_log_scale
        k_dim = params.dim() - event_dim - 1
        self.logit_weights, self.locs, raw_log_scales = params.split(components, dim=k_dim)
        self.log_scales = min_log_scale + F.softplus(raw_log_scales - min_log_scale)
        super().__init__(params.shape[:k_dim], params.shape[k_dim + 1 :], validate_args=validate_args)

    @constraints.dependent_property
    def support(self):
        return constraints.independent(constraints.real, len(self.event_shape))

    def expand(self, batch_shape, _instance=None):
        new = self._get_checked_instance(DiscretizedLogisticMixtureImage, _instance)
        batch_shape = torch.Size(batch_shape)
        shape = batch_shape + (self.components,) + self.event_shape
        new.components, new.min_log_scale = self.components, self.min_log_scale
        new.logit_weights = self.logit_weights.expand(shape)
        new.locs = self.locs.expand(shape)
        new.log_scales = self.log_scales.expand(shape)
        super(DiscretizedLogisticMixtureImage, new).__init__(batch_shape, self.event_shape, validate_args=False)
        new._validate_args = self._validate_args
        return new

    def _k_dim(self) -> int:
        return -1 - len(self.event_shape)

    def level_log_probs(self, x: torch.Tensor) -> torch.Tensor:
        """log P(x) per pixel (summed over nothing): x in [0, 1] on the 8-bit levels."""
        y = (2 * x - 1).unsqueeze(self._k_dim())
        centred = y - self.locs
        inv_scale = torch.exp(-self.log_scales)
        upper = inv_scale * (centred + 1 / 255)
        lower = inv_scale * (centred - 1 / 255)
        middle = F.logsigmoid(upper) + F.logsigmoid(-lower) + _log1mexp(lower - upper)
        log_p = torch.where(y < -0.999, F.logsigmoid(upper), torch.where(y > 0.999, F.logsigmoid(-lower), middle))
        weights = torch.log_softmax(self.logit_weights, self._k_dim())
        return torch.logsumexp(weights + log_p, self._k_dim())

    def log_prob(self, value: torch.Tensor) -> torch.Tensor:
        return self.level_log_probs(value).sum(tuple(range(-len(self.event_shape), 0)))

    @property
    def mean(self) -> torch.Tensor:
        """sum_j pi_j mu_j mapped back to [0, 1] and kept there: the mixture's location (for pictures)."""
        weights = torch.softmax(self.logit_weights, self._k_dim())
        y = (weights * self.locs).sum(self._k_dim())
        return ((y + 1) / 2).clamp(0, 1)

    def sample(self, sample_shape: torch.Size = torch.Size()) -> torch.Tensor:
        with torch.no_grad():
            shape = torch.Size(sample_shape) + self.locs.shape
            gumbel = -torch.log(-torch.log(torch.rand(shape, device=self.locs.device).clamp_min(1e-12)))
            pick = (self.logit_weights + gumbel).argmax(self._k_dim(), keepdim=True)
            loc = self.locs.expand(shape).gather(self._k_dim(), pick).squeeze(self._k_dim())
            log_scale = self.log_scales.expand(shape).gather(self._k_dim(), pick).squeeze(self._k_dim())
            u = torch.rand(loc.shape, device=loc.device).clamp(1e-6, 1 - 1e-6)
            y = loc + torch.exp(log_scale) * (torch.log(u) - torch.log1p(-u))
            # the edge bins are open: everything below the first level's bin is level 0, above the last is 255
            return ((y + 1) / 2 * 255).round().clamp(0, 255) / 255


class CategoricalImage(dist.TorchDistribution):
    """Per pixel, a 256-way categorical over the 8-bit levels; ``logits`` is (*batch, 256, *event)."""

    arg_constraints = {}
    has_rsample = False

    def __init__(self, logits: torch.Tensor, event_dim: int, validate_args: bool | None = None) -> None:
        self.logits = logits
        cut = logits.dim() - event_dim - 1
        super().__init__(logits.shape[:cut], logits.shape[cut + 1 :], validate_args=validate_args)

    @constraints.dependent_property
    def support(self):
        return constraints.independent(constraints.real, len(self.event_shape))

    def expand(self, batch_shape, _instance=None):
        new = self._get_checked_instance(CategoricalImage, _instance)
        batch_shape = torch.Size(batch_shape)
        new.logits = self.logits.expand(batch_shape + (256,) + self.event_shape)
        super(CategoricalImage, new).__init__(batch_shape, self.event_shape, validate_args=False)
        new._validate_args = self._validate_args
        return new

    def _level_dim(self) -> int:
        return -1 - len(self.event_shape)

    def log_prob(self, value: torch.Tensor) -> torch.Tensor:
        d = self._level_dim()
        levels = (value * 255).round().long().unsqueeze(d)
        log_p = torch.log_softmax(self.logits, d)
        batch = torch.broadcast_shapes(log_p.shape[:d], levels.shape[:d])  # (a value's batch may broadcast)
        log_p = log_p.expand(*batch, 256, *self.event_shape)
        levels = levels.expand(*batch, 1, *self.event_shape)
        return log_p.gather(self._level_dim(), levels).squeeze(self._level_dim()).sum(
            tuple(range(-len(self.event_shape), 0)))

    @property
    def mean(self) -> torch.Tensor:
        levels = torch.arange(256, dtype=self.logits.dtype, device=self.logits.device) / 255
        levels = levels.reshape((256,) + (1,) * len(self.event_shape))
        return (torch.softmax(self.logits, self._level_dim()) * levels).sum(self._level_dim())

    def sample(self, sample_shape: torch.Size = torch.Size()) -> torch.Tensor:
        with torch.no_grad():
            logits = self.logits.movedim(self._level_dim(), -1)
            k = torch.distributions.Categorical(logits=logits).sample(sample_shape)
            return k.to(self.logits.dtype) / 255


class ShiftedImage(dist.Independent):
    """An image distribution whose log_prob is shifted by a constant: a change of units, e.g. the
    log-Jacobian of squeezing the data, or -D log 256 for uniformly dequantized 8-bit data."""

    def __init__(self, base, event_dim: int, shift: float) -> None:
        super().__init__(base, event_dim)
        self.shift = shift

    def expand(self, batch_shape, _instance=None):
        new = self._get_checked_instance(ShiftedImage, _instance)
        new = super().expand(batch_shape, new)
        new.shift = self.shift
        return new

    def log_prob(self, value: torch.Tensor) -> torch.Tensor:
        return super().log_prob(value) + self.shift


# ---------------------------------------------------------------------------------------------
# Discrete latents: one-hot groups and binary units


class _OneHotGroupsSupport(constraints.Constraint):
    """Vectors of M one-hot groups of K, flattened (event (M*K,))."""

    is_discrete = True
    event_dim = 1

    def __init__(self, groups: int, classes: int) -> None:
        self.groups, self.classes = groups, classes
        super().__init__()

    def check(self, value: torch.Tensor) -> torch.Tensor:
        v = value.unflatten(-1, (self.groups, self.classes))
        return (((v == 0) | (v == 1)).all(-1) & (v.sum(-1) == 1)).all(-1)


def _gumbel(shape: torch.Size, like: torch.Tensor) -> torch.Tensor:
    """Gumbel(0, 1) noise -log(-log u), u ~ U(0, 1) (clamped off 0)."""
    u = torch.rand(shape, dtype=like.dtype, device=like.device)
    return -torch.log(-torch.log(u.clamp_min(torch.finfo(u.dtype).tiny)))


class OneHotGroups(dist.TorchDistribution):
    """M independent categorical groups of K classes, each one-hot, flattened to event (M*K,):
    q(z) = prod_g Cat(z_g | softmax(logits_g)), ``logits`` of shape (*batch, M, K).

    ``sample`` draws each group's class (no ``rsample``: a discrete latent has no path derivative);
    ``enumerate_states`` lists every one of the K^M joint states; ``relaxed_rsample`` draws the
    Gumbel-softmax (Concrete) relaxation at a temperature, or its straight-through version."""

    arg_constraints = {"logits": constraints.real}
    has_rsample = False

    def __init__(self, logits: torch.Tensor, validate_args: bool | None = None) -> None:
        self.logits = logits - logits.logsumexp(-1, keepdim=True)  # normalized: log q(z_g = k)
        self.groups, self.classes = logits.shape[-2:]
        super().__init__(logits.shape[:-2], torch.Size([self.groups * self.classes]), validate_args=validate_args)

    @constraints.dependent_property(is_discrete=True, event_dim=1)
    def support(self):
        return _OneHotGroupsSupport(self.groups, self.classes)

    @property
    def probs(self) -> torch.Tensor:
        return self.logits.exp()

    @property
    def mean(self) -> torch.Tensor:
        return self.probs.flatten(-2)

    @property
    def variance(self) -> torch.Tensor:
        p = self.probs
        return (p * (1 - p)).flatten(-2)

    def expand(self, batch_shape, _instance=None):
        return OneHotGroups(self.logits.expand(*batch_shape, self.groups, self.classes))

    def sample(self, sample_shape: torch.Size = torch.Size()) -> torch.Tensor:
        """argmax_k (log q_gk + G_gk), G Gumbel(0, 1) noise (the Gumbel-max trick: an exact draw),
        from uniforms of shape sample_shape + logits' shape (so an expanded q draws alike)."""
        with torch.no_grad():
            index = (self.logits + _gumbel(torch.Size(sample_shape) + self.logits.shape, self.logits)).argmax(-1)
            return F.one_hot(index, self.classes).to(self.logits.dtype).flatten(-2)

    def log_prob(self, value: torch.Tensor) -> torch.Tensor:
        if self._validate_args:
            self._validate_sample(value)
        return (value.unflatten(-1, (self.groups, self.classes)) * self.logits).sum((-1, -2))

    def entropy(self) -> torch.Tensor:
        return -(self.probs * self.logits).sum((-1, -2))

    def enumerate_states(self) -> torch.Tensor:
        """Every joint state, (K^M, M*K): group g's class is digit g of the state index in base K."""
        index = torch.arange(self.classes ** self.groups, device=self.logits.device)
        digits = torch.stack([(index // self.classes ** g) % self.classes for g in reversed(range(self.groups))], -1)
        return F.one_hot(digits, self.classes).to(self.logits.dtype).flatten(-2)

    def relaxed_rsample(self, sample_shape: torch.Size, temperature: float, hard: bool = False) -> torch.Tensor:
        """y_g = softmax((logits_g + G) / temperature), G Gumbel(0, 1) noise (Jang et al. 2017, Maddison
        et al. 2017), flattened; ``hard``: the one-hot argmax forward, the relaxed gradient backward
        (straight-through Gumbel)."""
        gumbel = _gumbel(torch.Size(sample_shape) + self.logits.shape, self.logits)
        y = torch.softmax((self.logits + gumbel) / temperature, -1)
        if hard:
            y = F.one_hot(y.argmax(-1), self.classes).to(y.dtype) - y.detach() + y
        return y.flatten(-2)


@register_kl(OneHotGroups, OneHotGroups)
def _kl_one_hot_groups(q: OneHotGroups, p: OneHotGroups) -> torch.Tensor:
    """sum_g sum_k q_gk (log q_gk - log p_gk)."""
    return (q.probs * (q.logits - p.logits)).sum((-1, -2))


class BernoulliUnits(dist.TorchDistribution):
    """D independent binary units, event (D,): q(z) = prod_u Bern(z_u | sigmoid(logits_u)).

    As :class:`OneHotGroups`: ``sample`` (no ``rsample``), ``enumerate_states`` (the 2^D binary
    vectors), ``relaxed_rsample`` (the binary Concrete relaxation, or straight-through)."""

    arg_constraints = {"logits": constraints.real}
    support = constraints.independent(constraints.boolean, 1)
    has_rsample = False

    def __init__(self, logits: torch.Tensor, validate_args: bool | None = None) -> None:
        self.logits = logits
        super().__init__(logits.shape[:-1], logits.shape[-1:], validate_args=validate_args)

    @property
    def probs(self) -> torch.Tensor:
        return torch.sigmoid(self.logits)

    @property
    def mean(self) -> torch.Tensor:
        return self.probs

    @property
    def variance(self) -> torch.Tensor:
        p = self.probs
        return p * (1 - p)

    def expand(self, batch_shape, _instance=None):
        return BernoulliUnits(self.logits.expand(*batch_shape, self.logits.shape[-1]))

    def sample(self, sample_shape: torch.Size = torch.Size()) -> torch.Tensor:
        with torch.no_grad():
            return torch.bernoulli(self.probs.expand(torch.Size(sample_shape) + self.logits.shape))

    def log_prob(self, value: torch.Tensor) -> torch.Tensor:
        if self._validate_args:
            self._validate_sample(value)
        logits, value = torch.broadcast_tensors(self.logits, value)
        return -F.binary_cross_entropy_with_logits(logits, value, reduction="none").sum(-1)

    def entropy(self) -> torch.Tensor:
        p = self.probs
        return F.binary_cross_entropy_with_logits(self.logits, p, reduction="none").sum(-1)

    def enumerate_states(self) -> torch.Tensor:
        """Every state, (2^D, D): unit u is bit u of the state index (the first unit the most significant)."""
        units = self.logits.shape[-1]
        index = torch.arange(2 ** units, device=self.logits.device)
        return torch.stack([(index >> (units - 1 - u)) & 1 for u in range(units)], -1).to(self.logits.dtype)

    def relaxed_rsample(self, sample_shape: torch.Size, temperature: float, hard: bool = False) -> torch.Tensor:
        """y = sigmoid((logits + log u - log(1 - u)) / temperature), u ~ U(0, 1) (the binary Concrete,
        Maddison et al. 2017); ``hard``: the rounded value forward, the relaxed gradient backward."""
        shape = torch.Size(sample_shape) + self.logits.shape
        u = torch.rand(shape, dtype=self.logits.dtype, device=self.logits.device).clamp(1e-6, 1 - 1e-6)
        y = torch.sigmoid((self.logits + torch.log(u) - torch.log1p(-u)) / temperature)
        if hard:
            y = (y > 0.5).to(y.dtype) - y.detach() + y
        return y


@register_kl(BernoulliUnits, BernoulliUnits)
def _kl_bernoulli_units(q: BernoulliUnits, p: BernoulliUnits) -> torch.Tensor:
    """sum_u q_u (log q_u - log p_u) + (1 - q_u) (log (1 - q_u) - log (1 - p_u)), in log-sigmoids."""
    on, off = F.logsigmoid(q.logits), F.logsigmoid(-q.logits)
    return (q.probs * (on - F.logsigmoid(p.logits)) + (1 - q.probs) * (off - F.logsigmoid(-p.logits))).sum(-1)


def _discrete_base(q):
    """(kind, logits) of a latent distribution whose states can be listed: one-hot groups (logits
    (*batch, M, K)), binary units (logits (*batch, D)), or Pyro's/torch's own OneHotCategorical and
    Bernoulli reinterpreted over one event dimension (a user's guide); else (None, None)."""
    if isinstance(q, OneHotGroups):
        return "groups", q.logits
    if isinstance(q, BernoulliUnits):
        return "units", q.logits
    if isinstance(q, torch.distributions.OneHotCategorical):
        return "groups", q.logits.unsqueeze(-2)
    if isinstance(q, torch.distributions.Independent) and q.reinterpreted_batch_ndims == 1 \
            and isinstance(q.base_dist, torch.distributions.Bernoulli):
        return "units", q.base_dist.logits
    return None, None


def enumerable(q) -> bool:
    """Whether a latent distribution's every state can be listed (:func:`enumerate_states`)."""
    return _discrete_base(q)[0] is not None


def one_hot_groups(q) -> tuple[int, int] | None:
    """(M, K) when q's latent is M one-hot groups of K classes, else None."""
    kind, logits = _discrete_base(q)
    return (logits.shape[-2], logits.shape[-1]) if kind == "groups" else None


def state_count(q) -> int:
    """How many joint states the latent of ``q`` has (K^M for M one-hot groups of K, 2^D for D binary units)."""
    kind, logits = _discrete_base(q)
    return logits.shape[-1] ** logits.shape[-2] if kind == "groups" else 2 ** logits.shape[-1]


def enumerate_states(q) -> torch.Tensor:
    """Every state of q's event, (states, *event_shape), in the order of ``OneHotGroups`` /
    ``BernoulliUnits.enumerate_states``."""
    kind, logits = _discrete_base(q)
    if kind == "groups":
        return OneHotGroups(logits.detach()[(0,) * (logits.dim() - 2)]).enumerate_states().view(-1, *q.event_shape)
    return BernoulliUnits(logits.detach()[(0,) * (logits.dim() - 1)]).enumerate_states()


def relaxed_sample(q, sample_shape: torch.Size, temperature: float, hard: bool = False) -> torch.Tensor:
    """A reparameterized relaxation of a draw from discrete q (Gumbel-softmax for one-hot groups,
    the binary Concrete for binary units; straight-through with ``hard``), shaped as q's samples."""
    kind, logits = _discrete_base(q)
    family = OneHotGroups(logits) if kind == "groups" else BernoulliUnits(logits)
    y = family.relaxed_rsample(sample_shape, temperature, hard)
    return y.view(*y.shape[:-1], *q.event_shape)


# ---------------------------------------------------------------------------------------------
# Count data: negative binomial (scVI's mean / inverse-dispersion form), its zero-inflated
# mixture, multinomial rows with their own totals, and the Dirichlet's Laplace approximation


def _stirling_correction(z: torch.Tensor) -> torch.Tensor:
    """delta(z) = lgamma(z) - [(z - 1/2) log z - z + (1/2) log 2 pi], the remainder of Stirling's
    formula (z > 0; Abramowitz & Stegun 6.1.41).

    For z >= 10 the asymptotic series 1/(12 z) - 1/(360 z^3) + 1/(1260 z^5) - 1/(1680 z^7) (error
    below 1/(1188 z^9) < 1e-12), which stays accurate where lgamma(z) is huge (1.7e9 at z = 1e8) and a
    difference of two lgammas would cancel; below 10 the definition itself (terms of size < 30). Each
    branch is evaluated on its own side of 10 only, so neither produces an infinity whose gradient
    would leak through ``torch.where`` as NaN.
    """
    large = z.clamp_min(10.0)
    inv, inv_sq = large.reciprocal(), large.pow(-2)
    series = inv * (1 / 12 - inv_sq * (1 / 360 - inv_sq * (1 / 1260 - inv_sq / 1680)))
    small = z.clamp_max(10.0)
    direct = torch.lgamma(small) - (small - 0.5) * small.log() + small - 0.5 * LOG_2PI
    return torch.where(z >= 10.0, series, direct)


def _negative_binomial_log_prob(x: torch.Tensor, mu: torch.Tensor, theta: torch.Tensor) -> torch.Tensor:
    """log NB(x; mu, theta) elementwise (no sum), in a form without cancellation at huge theta.

    The definition, lgamma(x + theta) - lgamma(theta) - lgamma(x + 1) + theta log(theta / (theta + mu))
    + x log(mu / (theta + mu)), with each lgamma written as Stirling's formula plus its remainder
    delta (:func:`_stirling_correction`) and the logarithms of ratios near 1 as log1p, is exactly

        (x + theta - 1/2) log1p(x / theta) - (x + theta) log1p(mu / theta) + x log mu - x
        - lgamma(x + 1) + delta(x + theta) - delta(theta).

    As theta -> inf it tends to the Poisson log-mass x log mu - mu - lgamma(x + 1) term by term
    (difference ((x - mu)^2 - x) / (2 theta) + O(1/theta^2)); the lgamma form instead subtracts two
    numbers of size 1.7e9 at theta = 1e8 (error ~1e2 in float32, ~1e-6 in float64). At x = 0 it is
    exactly -theta log1p(mu / theta) (every x term is 0 times something finite).
    """
    return x * mu.log() - (x + theta) * torch.log1p(mu / theta) + _counted_terms(x, theta)


def _counted_terms(x: torch.Tensor, theta: torch.Tensor) -> torch.Tensor:
    """(x + theta - 1/2) log1p(x / theta) - x - lgamma(x + 1) + delta(x + theta) - delta(theta), the part of
    the NB log-mass that is exactly 0 at x = 0 (each term is 0 there, delta(theta) - delta(theta)
    included): computed only where x > 0 when most entries are zeros (97% of PBMC 3k's; the lgamma and
    Stirling terms are most of a step's cost), over every entry otherwise."""
    x, theta = torch.broadcast_tensors(x, theta)

    def terms(x: torch.Tensor, theta: torch.Tensor) -> torch.Tensor:
        return ((x + theta - 0.5) * torch.log1p(x / theta) - x - torch.lgamma(x + 1)
                + _stirling_correction(x + theta) - _stirling_correction(theta))

    counted = x != 0
    if 2 * int(counted.sum()) > x.numel():
        return terms(x, theta)
    where = counted.nonzero(as_tuple=True)
    part = terms(x[where], theta[where])
    return torch.zeros(x.shape, dtype=part.dtype, device=part.device).index_put(where, part)


def _softplus(z: torch.Tensor) -> torch.Tensor:
    """log(1 + e^z) = max(z, 0) + log1p(e^-|z|) (``logaddexp(z, 0)``), to full precision for every z.
    ``F.softplus`` returns z itself above z = 20, dropping log1p(e^-z) ~ 2e-9: nothing in float32,
    a million ulps in float64. The gradient is sigmoid(z), also at z = 0."""
    return torch.logaddexp(z, torch.zeros_like(z))


class NegativeBinomial(dist.TorchDistribution):
    """Counts x in {0, 1, 2, ...} with mean mu > 0 and inverse dispersion theta > 0 (scVI's
    parametrization: Lopez et al. 2018, "Deep generative modeling for single-cell transcriptomics";
    scvi-tools ``NegativeBinomial(mu, theta)``):

        p(x) = Gamma(x + theta) / (Gamma(theta) x!) (theta / (theta + mu))^theta (mu / (theta + mu))^x,
        E[x] = mu,  Var[x] = mu + mu^2 / theta.

    It is the Gamma-Poisson mixture lambda ~ Gamma(shape theta, rate theta / mu), x ~ Poisson(lambda)
    (how ``sample`` draws; no ``rsample``: counts have no path derivative), and SciPy's
    ``nbinom(n=theta, p=theta / (theta + mu))``. theta -> inf is the Poisson(mu) limit.

    ``log_prob`` is elementwise (event shape (), batch shape the broadcast of mu and theta); use
    ``.to_event(1)`` for nats per datapoint over a vector of features. It is computed in the form of
    :func:`_negative_binomial_log_prob`, stable for mu down to 1e-8, theta up to 1e8 (float32 too)
    and x from 0 to 1e5. No value is clamped (the clamps inside delta only keep each of its two branches
    on its own side of z = 10).
    """

    arg_constraints = {"mu": constraints.positive, "theta": constraints.positive}
    support = constraints.nonnegative_integer
    has_rsample = False

    def __init__(self, mu: torch.Tensor | float, theta: torch.Tensor | float,
                 validate_args: bool | None = None) -> None:
        self.mu, self.theta = torch.distributions.utils.broadcast_all(mu, theta)
        super().__init__(self.mu.shape, torch.Size(), validate_args=validate_args)

    def expand(self, batch_shape, _instance=None) -> "NegativeBinomial":
        new = self._get_checked_instance(NegativeBinomial, _instance)
        batch_shape = torch.Size(batch_shape)
        new.mu, new.theta = self.mu.expand(batch_shape), self.theta.expand(batch_shape)
        super(NegativeBinomial, new).__init__(batch_shape, torch.Size(), validate_args=False)
        new._validate_args = self._validate_args
        return new

    @property
    def mean(self) -> torch.Tensor:
        return self.mu

    @property
    def variance(self) -> torch.Tensor:
        """mu + mu^2 / theta."""
        return self.mu + self.mu.pow(2) / self.theta

    def log_prob(self, value: torch.Tensor) -> torch.Tensor:
        if self._validate_args:
            self._validate_sample(value)
        return _negative_binomial_log_prob(value, self.mu, self.theta)

    def sample(self, sample_shape: torch.Size = torch.Size()) -> torch.Tensor:
        """lambda ~ Gamma(theta, rate theta / mu), then x ~ Poisson(lambda): an exact draw."""
        with torch.no_grad():
            shape = self._extended_shape(sample_shape)
            rate = torch.distributions.Gamma(self.theta.expand(shape), (self.theta / self.mu).expand(shape)).sample()
            return torch.poisson(rate)


class ZeroInflatedNegativeBinomial(dist.TorchDistribution):
    """With probability pi = sigmoid(zi_logits) a structural zero, else NB(mu, theta)
    (:class:`NegativeBinomial`; scVI's ZINB, Lopez et al. 2018; scvi-tools
    ``ZeroInflatedNegativeBinomial(mu, theta, zi_logits)``):

        p(0) = pi + (1 - pi) NB(0; mu, theta),   p(x) = (1 - pi) NB(x; mu, theta) for x > 0,
        E[x] = (1 - pi) mu,   Var[x] = (1 - pi) mu (1 + mu / theta + pi mu)

    (from E[x^2] = (1 - pi)(mu + mu^2 / theta + mu^2)). In the logits l, log pi = -softplus(-l) and
    log(1 - pi) = -softplus(l), so

        log p(0) = softplus(log NB(0) - l) - softplus(-l),   log p(x) = -softplus(l) + log NB(x),

    with log NB(0) = -theta log1p(mu / theta): finite for every l, mu and theta (no clamp), and
    softplus(z) = logaddexp(z, 0) in full precision (:func:`_softplus`).
    Elementwise, like :class:`NegativeBinomial`; ``sample`` draws the NB and zeroes it with
    probability pi.
    """

    arg_constraints = {"mu": constraints.positive, "theta": constraints.positive, "zi_logits": constraints.real}
    support = constraints.nonnegative_integer
    has_rsample = False

    def __init__(self, mu: torch.Tensor | float, theta: torch.Tensor | float, zi_logits: torch.Tensor | float,
                 validate_args: bool | None = None) -> None:
        self.mu, self.theta, self.zi_logits = torch.distributions.utils.broadcast_all(mu, theta, zi_logits)
        super().__init__(self.mu.shape, torch.Size(), validate_args=validate_args)

    def expand(self, batch_shape, _instance=None) -> "ZeroInflatedNegativeBinomial":
        new = self._get_checked_instance(ZeroInflatedNegativeBinomial, _instance)
        batch_shape = torch.Size(batch_shape)
        new.mu, new.theta = self.mu.expand(batch_shape), self.theta.expand(batch_shape)
        new.zi_logits = self.zi_logits.expand(batch_shape)
        super(ZeroInflatedNegativeBinomial, new).__init__(batch_shape, torch.Size(), validate_args=False)
        new._validate_args = self._validate_args
        return new

    @property
    def zi_probs(self) -> torch.Tensor:
        """pi = sigmoid(zi_logits), the probability of a structural zero."""
        return torch.sigmoid(self.zi_logits)

    @property
    def mean(self) -> torch.Tensor:
        """(1 - pi) mu."""
        return torch.sigmoid(-self.zi_logits) * self.mu

    @property
    def variance(self) -> torch.Tensor:
        """(1 - pi) mu (1 + mu / theta + pi mu)."""
        pi = self.zi_probs
        return torch.sigmoid(-self.zi_logits) * self.mu * (1 + self.mu / self.theta + pi * self.mu)

    def log_prob(self, value: torch.Tensor) -> torch.Tensor:
        if self._validate_args:
            self._validate_sample(value)
        logits = self.zi_logits
        log_nb_zero = -self.theta * torch.log1p(self.mu / self.theta)
        log_p_zero = _softplus(log_nb_zero - logits) - _softplus(-logits)
        log_p_positive = -_softplus(logits) + _negative_binomial_log_prob(value, self.mu, self.theta)
        return torch.where(value == 0, log_p_zero, log_p_positive)

    def sample(self, sample_shape: torch.Size = torch.Size()) -> torch.Tensor:
        """x ~ NB(mu, theta) (Gamma-Poisson), kept with probability 1 - pi, else 0."""
        with torch.no_grad():
            shape = self._extended_shape(sample_shape)
            counts = NegativeBinomial(self.mu, self.theta).sample(sample_shape)
            kept = torch.bernoulli(torch.sigmoid(-self.zi_logits).expand(shape))
            return counts * kept


class _CountVectors(constraints.Constraint):
    """Vectors of nonnegative integers over the last dimension, each summing to its row's total
    (any total where ``total_count`` is None)."""

    is_discrete = True
    event_dim = 1

    def __init__(self, total_count: torch.Tensor | None) -> None:
        self.total_count = total_count
        super().__init__()

    def check(self, value: torch.Tensor) -> torch.Tensor:
        counts = ((value >= 0) & (value % 1 == 0)).all(-1)
        if self.total_count is None:
            return counts
        return counts & (value.sum(-1) == self.total_count)


class MultinomialRows(dist.TorchDistribution):
    """A multinomial over the last dimension whose total is each row's own, event shape (D,):

        log p(x) = lgamma(n + 1) - sum_i lgamma(x_i + 1) + sum_i x_i log p_i,   n = sum_i x_i,

    with n read from the value itself (a document's length, a cell's library size), so one batch holds
    rows of different totals; Pyro's ProdLDA tutorial instead gives ``Multinomial`` one total_count
    for the whole batch. log p = log_softmax(logits) (stable for logits of any size), or
    log(probs / sum probs); a term with x_i = 0 is 0 even where p_i = 0.

    ``total_count`` (a tensor broadcasting to the batch shape; None allowed) is needed only for
    ``sample``, ``mean`` = n p and ``variance`` = n p (1 - p); given with validation on, a value whose
    row sum differs from it is refused. ``sample`` is exact and loop-free: each row draws max(n)
    categorical items and counts its first n of them (memory rows x max(n)).
    """

    has_rsample = False

    def __init__(self, logits: torch.Tensor | None = None, probs: torch.Tensor | None = None,
                 total_count: torch.Tensor | float | None = None, validate_args: bool | None = None) -> None:
        require((logits is None) != (probs is None), "MultinomialRows takes exactly one of logits and probs.")
        if logits is not None:
            self.logits = torch.log_softmax(logits, -1)
        else:
            self.logits = torch.log(probs / probs.sum(-1, keepdim=True))
        batch_shape = self.logits.shape[:-1]
        if total_count is not None:
            total_count = torch.as_tensor(total_count, dtype=self.logits.dtype, device=self.logits.device)
            batch_shape = torch.broadcast_shapes(batch_shape, total_count.shape)
        self.total_count = total_count
        super().__init__(batch_shape, self.logits.shape[-1:], validate_args=validate_args)

    @property
    def arg_constraints(self) -> dict:
        if self.total_count is None:
            return {"logits": constraints.real_vector}
        return {"logits": constraints.real_vector, "total_count": constraints.nonnegative_integer}

    @constraints.dependent_property(is_discrete=True, event_dim=1)
    def support(self):
        return _CountVectors(self.total_count)

    @property
    def probs(self) -> torch.Tensor:
        return self.logits.exp()

    def _require_total_count(self, what: str) -> torch.Tensor:
        require(self.total_count is not None,
                f"MultinomialRows.{what} needs each row's total: pass total_count (a tensor of the batch shape).")
        return self.total_count

    @property
    def mean(self) -> torch.Tensor:
        """n p."""
        return self._require_total_count("mean").unsqueeze(-1) * self.probs

    @property
    def variance(self) -> torch.Tensor:
        """n p (1 - p)."""
        p = self.probs
        return self._require_total_count("variance").unsqueeze(-1) * p * (1 - p)

    def expand(self, batch_shape, _instance=None) -> "MultinomialRows":
        new = self._get_checked_instance(MultinomialRows, _instance)
        batch_shape = torch.Size(batch_shape)
        new.logits = self.logits.expand(batch_shape + self.event_shape)
        new.total_count = None if self.total_count is None else self.total_count.expand(batch_shape)
        super(MultinomialRows, new).__init__(batch_shape, self.event_shape, validate_args=False)
        new._validate_args = self._validate_args
        return new

    def log_prob(self, value: torch.Tensor) -> torch.Tensor:
        if self._validate_args:
            self._validate_sample(value)
        log_p = self.logits
        if log_p.shape != value.shape:
            log_p, value = torch.broadcast_tensors(log_p, value)
        log_p = log_p.masked_fill((value == 0) & (log_p == -math.inf), 0.0)  # 0 log 0 = 0
        n = value.sum(-1)
        return torch.lgamma(n + 1) - torch.lgamma(value + 1).sum(-1) + (value * log_p).sum(-1)

    def sample(self, sample_shape: torch.Size = torch.Size()) -> torch.Tensor:
        """Per row, max(n) draws of a categorical(p), of which the first n are counted: the first n of
        i.i.d. draws are a Multinomial(n, p) draw, whatever the later ones are."""
        with torch.no_grad():
            shape = self._extended_shape(sample_shape)
            dimension = shape[-1]
            totals = self._require_total_count("sample").expand(shape[:-1]).reshape(-1).long()
            probs = self.probs.expand(shape).reshape(-1, dimension)
            counts = torch.zeros(probs.shape, dtype=self.logits.dtype, device=self.logits.device)
            most = int(totals.max()) if totals.numel() else 0
            if most > 0:
                items = torch.multinomial(probs, most, replacement=True)  # (rows, max n)
                counted = torch.arange(most, device=totals.device) < totals[:, None]
                counts.scatter_add_(1, items, counted.to(counts.dtype))
            return counts.reshape(shape)


def dirichlet_laplace_approximation(alpha: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(loc, scale) of the logistic normal that approximates Dirichlet(alpha) in the softmax basis
    (the Laplace approximation: MacKay 1998, "Choice of basis for Laplace approximation"; Hennig et
    al. 2012; ProdLDA's prior, Srivastava & Sutton 2017, eq. 3): over the last dimension, K = len(alpha),

        loc_k = log alpha_k - (1/K) sum_j log alpha_j,
        scale_k^2 = (1/alpha_k)(1 - 2/K) + (1/K^2) sum_j 1/alpha_j,

    so that softmax(loc + scale * eps), eps ~ N(0, I), stands in for a Dirichlet draw. Needs K >= 2
    (at K = 1 the variance is 0) and alpha > 0; leading dimensions are batch.
    """
    k = alpha.shape[-1]
    require(k >= 2, f"the Laplace approximation of a Dirichlet needs K >= 2 components, got {k}.")
    log_alpha = alpha.log()
    loc = log_alpha - log_alpha.mean(-1, keepdim=True)
    inverse = alpha.reciprocal()
    variance = inverse * (1 - 2 / k) + inverse.sum(-1, keepdim=True) / k**2
    return loc, variance.sqrt()


# ---------------------------------------------------------------------------------------------
# The count likelihoods' distributions over a whole datapoint (an event of any shape: a count
# vector (D,), an image of counts (C, H, W)), whose rates are proportions times a library size

#: Added to every rate mu of :class:`LibraryScaled` (and of the count likelihoods' library = "none").
#: It keeps log mu finite where softmax(logits)_i underflows to 0 (logits 104 apart in float32) or
#: softplus does; the floored model is still a normalized distribution, of mean mu + 1e-8. At a zero
#: count each family's log p(0) has d log p(0) / d mu in [-1, 0] (Poisson -mu; NB -theta log1p(mu /
#: theta), slope -theta / (theta + mu); the ZINB's zero mixes the NB's with a constant), so the floor
#: lowers it by at most 1e-8 nats a feature: at most D x 1e-8 nats a datapoint (3e-4 for 30,000 genes).
#: Where x > 0 it matters only where mu is itself near 1e-8, a count the model held all but impossible.
COUNT_RATE_FLOOR = 1e-8


def _event_sum(t: torch.Tensor, event_dims: int) -> torch.Tensor:
    return t.sum(tuple(range(-event_dims, 0))) if event_dims else t


def _per_row(t: torch.Tensor, event_dims: int) -> torch.Tensor:
    """A tensor of the batch shape, with event_dims trailing dimensions of size 1 to scale an event."""
    return t.reshape(t.shape + (1,) * event_dims)


def _library_for(library: torch.Tensor | None, what: str) -> torch.Tensor:
    """The library size that draws and means use; refused where it is missing or NaN (not yet recorded)."""
    require(library is not None and not bool(torch.isnan(library).any()),
            f"{what} needs the library size l (the total count of a datapoint to draw at), and it is "
            f"{'missing' if library is None else 'not recorded yet (NaN)'}: a count likelihood records it, the "
            f"median row total of the training set, with likelihood.fit_to_data(x_train) (the Trainer calls it "
            f"before training; a checkpoint keeps it).")
    return library


class LibraryScaled(dist.TorchDistribution):
    """Independent counts over the whole event, x_i ~ family(mu_i, *params_i), with rates

        mu_i = l p_i + 1e-8,   p = softmax(logits) over all of the event's features,

    l the library size (``COUNT_RATE_FLOOR``: the 1e-8). ``log_prob(x)`` reads l = sum_i x_i from the
    value itself, the datapoint's observed total (scVI's default), and so is log p(x | l = sum_i x_i):
    for each fixed l, p(. | l) is a normalized distribution over x, but across x the l plugged in
    changes, so the number is a log-probability conditional on the total, not a mass over x. ``sample``,
    ``mean`` and ``variance`` use ``library`` (a tensor broadcasting to the batch shape: the count
    likelihoods give the training set's median total).

    ``family(mu, *params)`` builds elementwise counts (``pyro.distributions.Poisson``,
    :class:`NegativeBinomial`, :class:`ZeroInflatedNegativeBinomial`); ``params`` broadcast against
    ``logits`` (*batch, *event). A row whose total is 0 has mu = 0 for every feature, where each of these
    families is the point mass at 0: its log p is exactly 0 (``torch.where`` picks 0; the floored
    branch it discards is finite, so no NaN reaches a gradient).
    """

    arg_constraints = {}
    has_rsample = False

    def __init__(self, family: Callable, logits: torch.Tensor, params: tuple[torch.Tensor, ...] = (),
                 library: torch.Tensor | None = None, event_dims: int = 1,
                 validate_args: bool | None = None) -> None:
        self.family, self.params, self.library, self.event_dims = family, tuple(params), library, event_dims
        self.proportions = torch.softmax(logits.flatten(-event_dims), -1).reshape(logits.shape)
        shape = torch.broadcast_shapes(logits.shape, *(p.shape for p in self.params))
        batch_shape, event_shape = shape[:len(shape) - event_dims], shape[len(shape) - event_dims:]
        if library is not None:
            batch_shape = torch.broadcast_shapes(batch_shape, library.shape)
        super().__init__(batch_shape, event_shape, validate_args=validate_args)

    @property
    def support(self):
        return constraints.independent(constraints.nonnegative_integer, self.event_dims)

    def expand(self, batch_shape, _instance=None) -> "LibraryScaled":
        new = self._get_checked_instance(LibraryScaled, _instance)
        batch_shape = torch.Size(batch_shape)
        new.family, new.event_dims = self.family, self.event_dims
        new.proportions = self.proportions.expand(batch_shape + self.event_shape)
        new.params = tuple(p.expand(batch_shape + self.event_shape) for p in self.params)
        new.library = None if self.library is None else self.library.expand(batch_shape)
        super(LibraryScaled, new).__init__(batch_shape, self.event_shape, validate_args=False)
        new._validate_args = self._validate_args
        return new

    def log_prob(self, value: torch.Tensor) -> torch.Tensor:
        if self._validate_args:
            self._validate_sample(value)
        total = _event_sum(value, self.event_dims)
        mu = _per_row(total, self.event_dims) * self.proportions + COUNT_RATE_FLOOR
        log_p = _event_sum(self.family(mu, *self.params).log_prob(value), self.event_dims)
        return torch.where(total == 0, 0.0, log_p)  # l = 0: the point mass at x = 0

    def _at_library(self, what: str) -> dist.TorchDistribution:
        library = _library_for(self.library, f"LibraryScaled.{what}")
        return self.family(_per_row(library, self.event_dims) * self.proportions + COUNT_RATE_FLOOR, *self.params)

    @property
    def mean(self) -> torch.Tensor:
        """E[x] at the library size l: l p + 1e-8 (Poisson, NB), (1 - pi)(l p + 1e-8) (ZINB)."""
        return self._at_library("mean").mean.expand(self.batch_shape + self.event_shape)

    @property
    def variance(self) -> torch.Tensor:
        return self._at_library("variance").variance.expand(self.batch_shape + self.event_shape)

    def sample(self, sample_shape: torch.Size = torch.Size()) -> torch.Tensor:
        with torch.no_grad():
            drawn = self._at_library("sample").sample(sample_shape)
            return drawn.expand(self._extended_shape(sample_shape))


class MultinomialEvent(dist.TorchDistribution):
    """x ~ Multinomial(n = sum_i x_i, softmax(logits)) over all of a datapoint's features (an event of
    any shape, flattened): :class:`MultinomialRows`, each row's total its own, read from the value, so
    ``log_prob`` is log p(x | n = sum_i x_i), a mass over the compositions of that n (exactly 0 for a
    row of total 0). ``sample`` and ``mean`` (n p) use ``library`` as n (rounded to a whole number)."""

    arg_constraints = {}
    has_rsample = False

    def __init__(self, logits: torch.Tensor, library: torch.Tensor | None = None, event_dims: int = 1,
                 validate_args: bool | None = None) -> None:
        self.rows = MultinomialRows(logits=logits.flatten(-event_dims), validate_args=False)
        self.library, self.event_dims = library, event_dims
        batch_shape = logits.shape[:logits.dim() - event_dims]
        if library is not None:
            batch_shape = torch.broadcast_shapes(batch_shape, library.shape)
        super().__init__(batch_shape, logits.shape[logits.dim() - event_dims:], validate_args=validate_args)

    @property
    def support(self):
        return constraints.independent(constraints.nonnegative_integer, self.event_dims)

    def expand(self, batch_shape, _instance=None) -> "MultinomialEvent":
        new = self._get_checked_instance(MultinomialEvent, _instance)
        batch_shape = torch.Size(batch_shape)
        new.rows = self.rows.expand(batch_shape)
        new.library, new.event_dims = None if self.library is None else self.library.expand(batch_shape), self.event_dims
        super(MultinomialEvent, new).__init__(batch_shape, self.event_shape, validate_args=False)
        new._validate_args = self._validate_args
        return new

    @property
    def probs(self) -> torch.Tensor:
        return self.rows.probs.reshape(self.rows.batch_shape + self.event_shape)

    def log_prob(self, value: torch.Tensor) -> torch.Tensor:
        if self._validate_args:
            self._validate_sample(value)
        return self.rows.log_prob(value.flatten(-self.event_dims))

    def _at_library(self, what: str) -> MultinomialRows:
        library = _library_for(self.library, f"MultinomialEvent.{what}").round()
        return MultinomialRows(logits=self.rows.logits, total_count=library, validate_args=False)

    def _unflatten(self, t: torch.Tensor) -> torch.Tensor:
        return t.reshape(t.shape[:-1] + self.event_shape)

    @property
    def mean(self) -> torch.Tensor:
        """n p, n the library size."""
        return self._unflatten(self._at_library("mean").mean).expand(self.batch_shape + self.event_shape)

    @property
    def variance(self) -> torch.Tensor:
        return self._unflatten(self._at_library("variance").variance).expand(self.batch_shape + self.event_shape)

    def sample(self, sample_shape: torch.Size = torch.Size()) -> torch.Tensor:
        with torch.no_grad():
            return self._unflatten(self._at_library("sample").sample(sample_shape))
