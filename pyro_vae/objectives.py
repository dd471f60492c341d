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
from pyro.infer import RenyiELBO, Trace_ELBO, TraceMeanField_ELBO
from torch.distributions import kl_divergence

from .config import OBJECTIVES, Component, require

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

    def vae_loss(self, vae: "VAE", x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(surrogate, loss) for batch x: ``surrogate.backward()`` gives this objective's gradient;
        ``loss`` (detached) is minus the objective, summed over the batch, in nats."""
        raise NotImplementedError  # pragma: no cover

    def particles(self, vae: "VAE", x: torch.Tensor):
        """q(z|x) and z ~ q: shape (batch, D) for one particle, (K, batch, D) for K vectorized ones."""
        q = vae.q_z_given_x(x)
        k = self.num_particles  # type: ignore[attr-defined]
        return q, (q.rsample() if k == 1 else q.rsample((k,)))


def _mean_over_particles(total: torch.Tensor, objective) -> tuple[torch.Tensor, torch.Tensor]:
    loss = -total if objective.num_particles == 1 else -total / objective.num_particles
    return loss, loss.detach()


def _kl_weighted(kl_weight: float, term: torch.Tensor) -> torch.Tensor:
    return term if kl_weight == 1.0 else kl_weight * term


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
        q, z = self.particles(vae, x)
        log_ratio = vae.p_z().log_prob(z) - q.log_prob(z)  # log p(z) - log q(z|x): minus the KL, one draw
        return _mean_over_particles((vae.p_x_given_z(z).log_prob(x) + _kl_weighted(vae.kl_weight, log_ratio)).sum(), self)


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
        q, z = self.particles(vae, x)
        reconstruction = vae.p_x_given_z(z).log_prob(x).sum()
        prior = vae.p_z()
        try:  # closed form, computed once per datapoint and counted once per particle, as Pyro does
            minus_kl = -kl_divergence(q, prior).sum() * self.num_particles
        except NotImplementedError:  # Pyro's fallback: the Monte-Carlo estimate log p(z) - log q(z|x)
            minus_kl = (prior.log_prob(z) - q.log_prob(z)).sum()
        return _mean_over_particles(reconstruction + _kl_weighted(vae.kl_weight, minus_kl), self)


def _renyi_loss(objective, vae, x, alpha: float):
    """-(1/(1-alpha)) log (1/K) sum_k w_k^(1-alpha), summed over the batch; its gradient is the
    self-normalized one Pyro's RenyiELBO uses: sum_k softmax_k((1-alpha) log w) grad log w_k."""
    q, z = objective.particles(vae, x)
    log_w = vae.p_x_given_z(z).log_prob(x) + vae.p_z().log_prob(z) - q.log_prob(z)
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
