"""Training objectives: each registered name is a ``pyro.infer.ELBO`` subclass with typed options.

Every objective here is an ELBO object a Pyro user can hand to ``pyro.infer.SVI`` as it is. Losses
are summed over the datapoints of a batch (Pyro's convention); the library divides by the batch
size when it reports nats per datapoint. Particles are vectorized (one batched pass), which needs
``max_plate_nesting = 1``: the model's only plate is the data plate.

``supports_kl_weight`` says whether the objective honours a KL weight beta applied by scaling the
latent site ``z`` in both model and guide (``poutine.scale``): for the ELBO that scales exactly the
KL term, E_q[log p(x|z)] - beta KL(q||p). In an importance-weighted bound the KL is not a separate
term, so scaling would change the bound into something else; those objectives refuse warm-up.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, ClassVar

import torch
from pyro.distributions.util import scale_and_mask
from pyro.infer import ELBO, RenyiELBO, Trace_ELBO, TraceMeanField_ELBO
from pyro.infer.enum import get_importance_trace
from pyro.infer.util import get_dependent_plate_dims, torch_sum
from torch.distributions import kl_divergence

from .config import OBJECTIVES, Component, require
from .errors import ConfigError
from .priors import rsample_and_log_prob

if TYPE_CHECKING:  # pragma: no cover
    from .vae import VAE


class Objective(Component):
    """Mixin for registered objectives.

    Besides Pyro's ``loss_and_grads(model, guide, x)``, every objective has a direct form,
    :meth:`vae_loss`, computed straight from the VAE's three distributions p(z), p(x|z) and
    q(z|x) without Pyro's effect handlers. It draws the same random numbers in the same order as
    the Pyro path and has the same value and gradients (``tests/test_objectives.py`` checks both,
    for every objective, prior and likelihood); it exists only because tracing costs time.
    """

    supports_kl_weight: ClassVar[bool] = False
    #: True when the KL(q||p) term is computed in closed form where a formula exists.
    analytic_kl: ClassVar[bool] = False
    #: Guide families (registry names) the estimator is defined for; None: any reparameterized guide.
    guide_families: ClassVar[tuple[str, ...] | None] = None

    def check_guide(self, guide_name: str) -> None:
        """Refuse a guide family this estimator does not support, naming the ones it does."""
        if self.guide_families is not None and guide_name not in self.guide_families:
            raise ConfigError(
                f"objective '{self.name}' supports the guide families {', '.join(self.guide_families)}, "
                f"not '{guide_name}': its gradient differentiates log q(z|x) through z, which those "
                f"families are written (and tested) for. Choose one of them, or another objective."
            )

    def vae_loss(self, vae: "VAE", x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(surrogate, loss) for batch x: ``surrogate.backward()`` gives this objective's gradient;
        ``loss`` (detached) is minus the objective, summed over the batch, in nats."""
        raise NotImplementedError  # pragma: no cover

    def particles(self, vae: "VAE", x: torch.Tensor):
        """q(z|x), z ~ q and log q(z|x): z has shape (batch, D) for one particle, (K, batch, D) for K
        vectorized ones. Draws exactly what Pyro's (vectorized) guide would, in the same order."""
        q = vae.q_z_given_x(x)
        shape = particle_shape(self.num_particles)  # type: ignore[attr-defined]
        z, log_q = rsample_and_log_prob(q, shape)
        return q, z, log_q


def log_prob_sum(distribution, value: torch.Tensor) -> torch.Tensor:
    """sum of log_prob(value) over every batch dimension (fused where the distribution offers it)."""
    fused = getattr(distribution, "log_prob_sum", None)
    return fused(value) if fused is not None else distribution.log_prob(value).sum()


def _mean_over_particles(total: torch.Tensor, objective) -> tuple[torch.Tensor, torch.Tensor]:
    loss = -total if objective.num_particles == 1 else -total / objective.num_particles
    return loss, loss.detach()


def _kl_weighted(kl_weight: float, term: torch.Tensor) -> torch.Tensor:
    return term if kl_weight == 1.0 else kl_weight * term


def particle_shape(num_particles: int) -> torch.Size:
    """The sample shape Pyro's guide draws: none for one particle, (K,) for K vectorized ones."""
    return torch.Size() if num_particles == 1 else torch.Size([num_particles])


def _particle_options(num_particles: int) -> dict:
    require(num_particles >= 1, f"num_particles must be >= 1, got {num_particles}.")
    return dict(num_particles=num_particles, vectorize_particles=num_particles > 1, max_plate_nesting=1)


@OBJECTIVES.register("elbo")
class MonteCarloELBO(Trace_ELBO, Objective):
    """ELBO = E_q[log p(x|z) + log p(z) - log q(z|x)], all by Monte Carlo (Pyro's Trace_ELBO).

    Options:
        num_particles: samples z ~ q(z|x) per datapoint; their average is the estimate.
    """

    supports_kl_weight = True

    def __init__(self, *, num_particles: int = 1) -> None:
        super().__init__(**_particle_options(num_particles))

    def vae_loss(self, vae, x):
        q, z, log_q = self.particles(vae, x)
        log_ratio = (vae.p_z().log_prob(z) - log_q).sum()  # log p(z) - log q(z|x): minus the KL, one draw
        return _mean_over_particles(log_prob_sum(vae.p_x_given_z(z), x) + _kl_weighted(vae.kl_weight, log_ratio), self)


@OBJECTIVES.register("elbo-analytic-kl")
class AnalyticKLELBO(TraceMeanField_ELBO, Objective):
    """ELBO = E_q[log p(x|z)] - KL(q(z|x)||p(z)), the KL in closed form where one exists (TraceMeanField_ELBO).

    Where no closed form exists for the chosen guide and prior (e.g. a mixture prior) Pyro falls back
    to a Monte-Carlo KL; the trainer warns when that happens.

    Options:
        num_particles: samples z ~ q(z|x) per datapoint for the reconstruction term.
    """

    supports_kl_weight = True
    analytic_kl = True

    def __init__(self, *, num_particles: int = 1) -> None:
        super().__init__(**_particle_options(num_particles))

    def vae_loss(self, vae, x):
        q = vae.q_z_given_x(x)
        z = q.rsample(particle_shape(self.num_particles))
        reconstruction = log_prob_sum(vae.p_x_given_z(z), x)
        prior = vae.p_z()
        try:  # closed form, computed once per datapoint and counted once per particle, as Pyro does
            minus_kl = -kl_divergence(q, prior).sum()
            if self.num_particles > 1:
                minus_kl = minus_kl * self.num_particles
        except NotImplementedError:  # Pyro's fallback: the Monte-Carlo estimate log p(z) - log q(z|x)
            minus_kl = (prior.log_prob(z) - q.log_prob(z)).sum()
        return _mean_over_particles(reconstruction + _kl_weighted(vae.kl_weight, minus_kl), self)


def _renyi_loss(objective, vae, x, alpha: float):
    """-(1/(1-alpha)) log (1/K) sum_k w_k^(1-alpha), summed over the batch; its gradient is the
    self-normalized one Pyro's RenyiELBO uses: sum_k softmax_k((1-alpha) log w) grad log w_k."""
    q, z, log_q = objective.particles(vae, x)
    log_w = vae.p_x_given_z(z).log_prob(x) + vae.p_z().log_prob(z) - log_q
    if objective.num_particles == 1:
        bound = log_w
    else:
        bound = (torch.logsumexp((1.0 - alpha) * log_w, 0) - math.log(objective.num_particles)) / (1.0 - alpha)
    loss = -bound.sum()
    return loss, loss.detach()


@OBJECTIVES.register("iwae")
class IWAEBound(RenyiELBO, Objective):
    """IWAE bound L_K = E[log (1/K) sum_k p(x, z_k) / q(z_k|x)] (Burda et al. 2016; RenyiELBO with alpha = 0).

    Options:
        num_particles: K, the number of importance samples per datapoint (K = 1 is the ELBO).
    """

    def __init__(self, *, num_particles: int = 10) -> None:
        super().__init__(alpha=0.0, **_particle_options(num_particles))

    def vae_loss(self, vae, x):
        return _renyi_loss(self, vae, x, 0.0)


@OBJECTIVES.register("renyi")
class RenyiBound(RenyiELBO, Objective):
    """Renyi bound L_alpha = E[log (1/K) sum_k w_k^(1-alpha)] / (1 - alpha), w = p(x, z)/q(z|x) (Li & Turner 2016).

    Options:
        alpha: the order; alpha = 0 is the IWAE bound, alpha -> 1 the ELBO (use "elbo" for alpha = 1).
        num_particles: K, samples per datapoint.
    """

    def __init__(self, *, alpha: float = 0.5, num_particles: int = 10) -> None:
        require(alpha != 1.0, "alpha = 1 is the ELBO itself: use objective \"elbo\" instead.")
        super().__init__(alpha=alpha, **_particle_options(num_particles))

    def vae_loss(self, vae, x):
        return _renyi_loss(self, vae, x, self.alpha)


def _require_reparameterized(site: dict, who: str) -> None:
    if not site["fn"].has_rsample:
        raise NotImplementedError(
            f"{who} needs a reparameterized guide, but guide site '{site['name']}' "
            f"({type(site['fn']).__name__}) has no rsample."
        )


def log_q_path(q, z: torch.Tensor) -> torch.Tensor:
    """log q(z|x) with the guide's parameters held constant: the value of log q(z), with gradient
    only along z's reparameterized path. Uses ``q.log_prob_detached`` where the family provides it
    (one evaluation), else log q(z) - log q(stop(z)) + stop(log q(z)) (two)."""
    if hasattr(q, "log_prob_detached"):
        return q.log_prob_detached(z)
    log_q = q.log_prob(_alias(z))
    return log_q - q.log_prob(z.detach()) + log_q.detach()


def _alias(z: torch.Tensor) -> torch.Tensor:
    """z as a new tensor object: a flow then inverts z instead of reusing the noise it cached when it
    drew z, so the gradient of log q(z) flows back through z itself (which DReG's hook relies on)."""
    return z.view_as(z)


def _score_term(site: dict) -> torch.Tensor:
    """log q(z) at z held fixed: its gradient is the score function d/dphi log q(z; phi)."""
    return scale_and_mask(site["fn"].log_prob(site["value"].detach()), site["scale"], site["mask"])


@OBJECTIVES.register("stl")
class StickingTheLandingELBO(Trace_ELBO, Objective):
    """ELBO with the path-derivative ("sticking the landing") gradient: the score term of log q removed (Roeder et al. 2017).

    The value is the ELBO. The gradient treats log q(z|x) as if the guide's parameters were
    constants while z = mu + sigma * eps keeps its path: the surrogate subtracts
    log q(z) - log q(stop(z)), whose parameter gradient is exactly the path derivative. At the
    exact posterior this gradient is zero for every draw (zero variance). Needs a reparameterized
    guide whose log-density is differentiable in z: diagonal-gaussian, iaf or hierarchical (for
    iaf, log q at the stopped sample inverts the flow: D sequential passes per step).

    Options:
        num_particles: samples z ~ q(z|x) per datapoint; their average is the estimate.
    """

    supports_kl_weight = True
    guide_families = ("diagonal-gaussian", "iaf", "hierarchical")

    def __init__(self, *, num_particles: int = 1) -> None:
        super().__init__(**_particle_options(num_particles))

    def _differentiable_loss_particle(self, model_trace, guide_trace):
        elbo, surrogate = 0.0, 0.0
        for site in model_trace.nodes.values():
            if site["type"] == "sample":
                elbo = elbo + site["log_prob_sum"].item()
                surrogate = surrogate + site["log_prob_sum"]
        for site in guide_trace.nodes.values():
            if site["type"] == "sample":
                _require_reparameterized(site, "objective 'stl'")
                elbo = elbo - site["log_prob_sum"].item()
                surrogate = surrogate - (site["log_prob_sum"] - _score_term(site).sum())
        return -elbo, -surrogate

    def vae_loss(self, vae, x):
        q = vae.q_z_given_x(x)
        z = q.rsample(particle_shape(self.num_particles))
        log_q = log_q_path(q, z)  # the value of log q(z|x); its gradient is the path derivative only
        log_ratio = (vae.p_z().log_prob(z) - log_q).sum()
        return _mean_over_particles(log_prob_sum(vae.p_x_given_z(z), x) + _kl_weighted(vae.kl_weight, log_ratio), self)


@OBJECTIVES.register("dreg")
class DReGIWAE(ELBO, Objective):
    """IWAE bound with the doubly-reparameterized gradient (Tucker et al. 2018): unbiased, and its guide SNR grows with K.

    Value: the IWAE bound L_K. Model parameters get the usual IWAE gradient sum_k w_k grad log w_k
    (w = normalized importance weights); guide parameters get sum_k w_k^2 (d log w_k / d z_k)
    (d z_k / d phi), the path derivative with log q evaluated at stopped parameters. Implemented
    with one backward pass: the surrogate sum_k stop(w_k) [log p(x, z_k) - log q(z_k) +
    log q(stop(z_k))] and a hook that multiplies the gradient reaching each z_k by w_k. Needs a
    reparameterized guide whose log-density is differentiable in z: diagonal-gaussian, iaf or
    hierarchical.

    Options:
        num_particles: K, the number of importance samples per datapoint (K = 1 gives the STL gradient of the ELBO).
    """

    guide_families = ("diagonal-gaussian", "iaf", "hierarchical")

    def __init__(self, *, num_particles: int = 10) -> None:
        require(num_particles >= 1, f"num_particles must be >= 1, got {num_particles}.")
        # always vectorized (also K = 1), so every term has its particle dimension first
        super().__init__(num_particles=num_particles, vectorize_particles=True, max_plate_nesting=1)

    def _get_trace(self, model, guide, args, kwargs):
        return get_importance_trace("flat", self.max_plate_nesting, model, guide, args, kwargs)

    def _terms(self, model, guide, args, kwargs):
        """log p(x, z_k), log q(z_k|x), log q(stop(z_k)|x), each (K, batch), and the z sites."""
        model_trace, guide_trace = next(self._get_traces(model, guide, args, kwargs))
        sum_dims = get_dependent_plate_dims(model_trace.nodes.values())
        log_p = sum(torch_sum(s["log_prob"], sum_dims) for s in model_trace.nodes.values() if s["type"] == "sample")
        log_q, log_q_fixed, zs = 0.0, 0.0, []
        for site in guide_trace.nodes.values():
            if site["type"] == "sample":
                _require_reparameterized(site, "objective 'dreg'")
                # log q evaluated afresh at z (not Pyro's value, which a flow computes from its cache),
                # so that its gradient reaches the guide through z, where the hook weights it
                site_log_q = scale_and_mask(site["fn"].log_prob(_alias(site["value"])), site["scale"], site["mask"])
                log_q = log_q + torch_sum(site_log_q, sum_dims)
                log_q_fixed = log_q_fixed + torch_sum(_score_term(site), sum_dims)
                zs.append(site["value"])
        if self.num_particles == 1:  # Pyro adds no particle plate for one particle: add the dimension
            log_p, log_q, log_q_fixed = log_p.unsqueeze(0), log_q.unsqueeze(0), log_q_fixed.unsqueeze(0)
        return log_p, log_q, log_q_fixed, zs

    def _bound(self, log_w: torch.Tensor) -> torch.Tensor:
        return torch.logsumexp(log_w, 0) - math.log(self.num_particles)

    @torch.no_grad()
    def loss(self, model, guide, *args, **kwargs):
        log_p, log_q, _, _ = self._terms(model, guide, args, kwargs)
        return -self._bound(log_p - log_q).sum().item()

    def loss_and_grads(self, model, guide, *args, **kwargs):
        log_p, log_q, log_q_fixed, zs = self._terms(model, guide, args, kwargs)
        log_q_path_only = log_q - log_q_fixed + log_q_fixed.detach()  # value log q; guide gradient along z only
        surrogate, value = _dreg_surrogate(log_p - log_q_path_only, zs, self)
        surrogate.backward()
        return value.item()

    def vae_loss(self, vae, x):
        q = vae.q_z_given_x(x)
        z = q.rsample((self.num_particles,))
        log_w = vae.p_x_given_z(z).log_prob(x) + vae.p_z().log_prob(z) - log_q_path(q, z)
        return _dreg_surrogate(log_w, [z], self)


def _dreg_surrogate(log_w: torch.Tensor, zs, objective: DReGIWAE) -> tuple[torch.Tensor, torch.Tensor]:
    """log_w (K, batch): log importance weights whose guide gradient is the path derivative only."""
    weights = torch.softmax(log_w.detach(), 0)  # normalized importance weights
    for z in zs:  # the second w_k of w_k^2: scale what reaches z_k (the guide's path) by w_k
        if z.requires_grad and objective.num_particles > 1:  # (one particle: w = 1)
            shape = weights.shape + (1,) * (z.dim() - weights.dim())
            z.register_hook(lambda grad, w=weights.reshape(shape): grad * w)
    surrogate = -(weights * log_w).sum()
    value = -objective._bound(log_w.detach()).sum()
    return surrogate, value
