"""Training objectives: each registered name is a ``pyro.infer.ELBO`` subclass with typed options.

Each objective's maths is written once, in :meth:`Objective.surrogate`, over the per-particle terms
of ``terms.py`` (log p(x|z_k), log p(z_k), log q(z_k|x), the draws z_k, closed-form KLs and log q
at fixed guide parameters). The terms come from whichever source computes the program: Pyro
traces of any model/guide pair, or the stock VAE's distributions directly where the program is
provably that one (``terms.source_for``). So an objective is

* a ``pyro.infer.ELBO`` a Pyro user hands to ``pyro.infer.SVI`` as it is: ``loss_and_grads(model,
  guide, x)`` traces the pair (``terms.TraceSource``) and backpropagates the surrogate;
* and what the trainer, ``compare`` and the gradient statistics call, on the program's own source.

Losses are summed over the datapoints of a batch (Pyro's convention); the library divides by the
batch size when it reports nats per datapoint. K > 1 particles are vectorized (one batched pass
over a particle plate outside every plate of the program).

Every objective here differentiates through z (pathwise gradients), so each refuses a latent site
whose guide distribution is not reparameterized, naming it.

``supports_kl_weight`` says whether the objective honours a KL weight beta (KL warm-up): the ELBO
becomes E_q[log p(x|z)] - beta KL(q||p), beta multiplying exactly the latent sites' terms
log p(z) - log q(z|x) (the same as scaling the latent sites with ``poutine.scale`` in model and
guide). In an importance-weighted bound the KL is not a separate term, so those objectives refuse
warm-up.
"""

from __future__ import annotations

from typing import ClassVar

import torch
from pyro.infer import ELBO

from .config import OBJECTIVES, Component, require
from .errors import ConfigError, ProgramError
from .terms import Terms, TraceSource, family, log_mean_exp


class Objective(Component, ELBO):
    """Base class of registered objectives: the maths in :meth:`surrogate`, over :class:`~pyro_vae.terms.Terms`."""

    supports_kl_weight: ClassVar[bool] = False
    #: True when the KL(q||p) term is computed in closed form where a formula exists.
    analytic_kl: ClassVar[bool] = False
    #: Guide families (registry names) the estimator is defined for; None: any reparameterized guide.
    guide_families: ClassVar[tuple[str, ...] | None] = None
    #: False when the surrogate's gradient is not the gradient of the reported value (STL, DReG):
    #: ``differentiable_loss`` then refuses, since no single tensor has both.
    gradient_of_value: ClassVar[bool] = True

    def __init__(self, *, num_particles: int = 1) -> None:
        require(num_particles >= 1, f"num_particles must be >= 1, got {num_particles}.")
        ELBO.__init__(self, num_particles=num_particles, vectorize_particles=num_particles > 1)
        self._traced: tuple[tuple, TraceSource] | None = None

    def check_guide(self, guide_name: str) -> None:
        """Refuse a guide family this estimator does not support, naming the ones it does."""
        if self.guide_families is not None and guide_name not in self.guide_families:
            raise ConfigError(
                f"objective '{self.name}' supports the guide families {', '.join(self.guide_families)}, "
                f"not '{guide_name}': its gradient differentiates log q(z|x) through z, which those "
                f"families are written (and tested) for. Choose one of them, or another objective."
            )

    # -- the maths -------------------------------------------------------------------------------

    def surrogate(self, terms: Terms, kl_weight: float = 1.0) -> tuple[torch.Tensor, torch.Tensor]:
        """(surrogate, loss) for one batch's terms: ``surrogate.backward()`` gives this objective's
        gradient; ``loss`` (detached) is minus the objective, summed over the batch, in nats.
        ``kl_weight`` is beta of KL warm-up (objectives with ``supports_kl_weight`` only)."""
        raise NotImplementedError  # pragma: no cover

    def terms(self, source, x: torch.Tensor, *args, **kwargs) -> Terms:
        """The terms this objective needs at batch x: ``num_particles`` draws z ~ q(z|x)."""
        terms = source.draw(x, self.num_particles, *args, **kwargs)
        if terms.non_reparameterized:
            site = terms.non_reparameterized[0]
            raise ProgramError(
                f"objective '{self.name}' differentiates through z, but the guide's site '{site}' "
                f"({family(terms.latents[site].q)}) is not reparameterized (it has no rsample). Every pyro-vae objective "
                f"is pathwise; for such a site use a score-function or enumeration estimator of Pyro's "
                f"(pyro.infer.TraceGraph_ELBO, TraceEnum_ELBO) with pyro.infer.SVI, or make the site "
                f"reparameterized.")
        return terms

    def step(self, source, x: torch.Tensor, kl_weight: float = 1.0) -> tuple[torch.Tensor, torch.Tensor]:
        """(surrogate, loss) of one step on batch x from a program's terms source."""
        return self.surrogate(self.terms(source, x), kl_weight)

    # -- Pyro's ELBO interface -----------------------------------------------------------------

    def _get_trace(self, model, guide, args, kwargs):  # abstract in pyro.infer.ELBO; the terms replace it
        raise NotImplementedError("pyro-vae objectives read their traces through terms.TraceSource")

    def _source(self, model, guide) -> TraceSource:
        """The trace source of this model/guide pair (kept for the next call: its plate nesting is guessed once)."""
        if self._traced is None or self._traced[0] != (model, guide):
            self._traced = ((model, guide), TraceSource(model, guide))
        return self._traced[1]

    def loss(self, model, guide, *args, **kwargs) -> float:
        """Minus the objective, summed over the batch, in nats (no gradients)."""
        with torch.no_grad():
            return self.surrogate(self.terms(self._source(model, guide), *args, **kwargs))[1].item()

    def loss_and_grads(self, model, guide, *args, **kwargs) -> float:
        """The loss, with this objective's gradient accumulated into every parameter it reaches
        (what ``pyro.infer.SVI.step`` calls)."""
        surrogate, loss = self.surrogate(self.terms(self._source(model, guide), *args, **kwargs))
        if surrogate.requires_grad:
            surrogate.backward(retain_graph=self.retain_graph)
        return loss.item()

    def differentiable_loss(self, model, guide, *args, **kwargs) -> torch.Tensor:
        """The loss as a differentiable tensor (objectives whose gradient is that of their value)."""
        if not self.gradient_of_value:
            raise NotImplementedError(
                f"objective '{self.name}' has a gradient that is not the gradient of its value (it holds "
                f"the guide's parameters fixed inside log q): use loss_and_grads, which applies it.")
        return self.surrogate(self.terms(self._source(model, guide), *args, **kwargs))[0]


def _mean_over_particles(total: torch.Tensor, particles: int) -> tuple[torch.Tensor, torch.Tensor]:
    loss = -total if particles == 1 else -total / particles
    return loss, loss.detach()


def _kl_weighted(kl_weight: float, term: torch.Tensor) -> torch.Tensor:
    return term if kl_weight == 1.0 else kl_weight * term


@OBJECTIVES.register("elbo")
class MonteCarloELBO(Objective):
    """ELBO = E_q[log p(x|z) + log p(z) - log q(z|x)], all by Monte Carlo (the maths of Pyro's Trace_ELBO).

    Options:
        num_particles: samples z ~ q(z|x) per datapoint; their average is the estimate.
    """

    supports_kl_weight = True

    def __init__(self, *, num_particles: int = 1) -> None:
        super().__init__(num_particles=num_particles)

    def surrogate(self, terms, kl_weight=1.0):
        log_ratio = (terms.log_prior - terms.log_q).sum()  # log p(z) - log q(z|x): minus the KL, one draw
        return _mean_over_particles(terms.total_log_likelihood() + _kl_weighted(kl_weight, log_ratio), terms.particles)


@OBJECTIVES.register("elbo-analytic-kl")
class AnalyticKLELBO(Objective):
    """ELBO = E_q[log p(x|z)] - KL(q(z|x)||p(z)), the KL in closed form where one exists (the maths of Pyro's TraceMeanField_ELBO).

    Per latent site: KL(q || p) in closed form where a formula is registered for the pair, else
    that site's Monte-Carlo term log q(z|x) - log p(z) (e.g. a mixture prior); the trainer warns
    when that happens. The closed form is computed once per datapoint and counted once per
    particle, as Pyro does.

    Options:
        num_particles: samples z ~ q(z|x) per datapoint for the reconstruction term.
    """

    supports_kl_weight = True
    analytic_kl = True

    def __init__(self, *, num_particles: int = 1) -> None:
        super().__init__(num_particles=num_particles)

    def surrogate(self, terms, kl_weight=1.0):
        kl, _ = terms.kl()
        return _mean_over_particles(terms.total_log_likelihood() - _kl_weighted(kl_weight, kl.sum()), terms.particles)


def renyi_bound(log_w: torch.Tensor, alpha: float) -> torch.Tensor:
    """(1/(1-alpha)) log (1/K) sum_k w_k^(1-alpha) per datapoint, for log w of shape (K, B).

    Its gradient (autograd through the log-sum-exp) is the self-normalized one Pyro's RenyiELBO
    uses for reparameterized guides: sum_k softmax_k((1-alpha) log w) grad log w_k."""
    if log_w.shape[0] == 1:
        return log_w[0]
    return log_mean_exp((1.0 - alpha) * log_w) / (1.0 - alpha)


@OBJECTIVES.register("iwae")
class IWAEBound(Objective):
    """IWAE bound L_K = E[log (1/K) sum_k p(x, z_k) / q(z_k|x)] (Burda et al. 2016; Pyro's RenyiELBO with alpha = 0).

    Options:
        num_particles: K, the number of importance samples per datapoint (K = 1 is the ELBO).
    """

    def __init__(self, *, num_particles: int = 10) -> None:
        super().__init__(num_particles=num_particles)

    def surrogate(self, terms, kl_weight=1.0):
        loss = -renyi_bound(terms.log_weights, 0.0).sum()
        return loss, loss.detach()


@OBJECTIVES.register("renyi")
class RenyiBound(Objective):
    """Renyi bound L_alpha = E[log (1/K) sum_k w_k^(1-alpha)] / (1 - alpha), w = p(x, z)/q(z|x) (Li & Turner 2016).

    Options:
        alpha: the order; alpha = 0 is the IWAE bound, alpha -> 1 the ELBO (use "elbo" for alpha = 1).
        num_particles: K, samples per datapoint.
    """

    def __init__(self, *, alpha: float = 0.5, num_particles: int = 10) -> None:
        require(alpha != 1.0, "alpha = 1 is the ELBO itself: use objective \"elbo\" instead.")
        super().__init__(num_particles=num_particles)
        self.alpha = alpha

    def surrogate(self, terms, kl_weight=1.0):
        loss = -renyi_bound(terms.log_weights, self.alpha).sum()
        return loss, loss.detach()


@OBJECTIVES.register("stl")
class StickingTheLandingELBO(Objective):
    """ELBO with the path-derivative ("sticking the landing") gradient: the score term of log q removed (Roeder et al. 2017).

    The value is the ELBO. The gradient treats log q(z|x) as if the guide's parameters were
    constants while z = mu + sigma * eps keeps its path (log q at fixed parameters, ``terms``). At
    the exact posterior this gradient is zero for every draw (zero variance). Needs a
    reparameterized guide whose log-density is differentiable in z: of the registered families,
    diagonal-gaussian, iaf or hierarchical (for iaf, log q at the stopped sample inverts the flow:
    D sequential passes per step).

    Options:
        num_particles: samples z ~ q(z|x) per datapoint; their average is the estimate.
    """

    supports_kl_weight = True
    guide_families = ("diagonal-gaussian", "iaf", "hierarchical")
    gradient_of_value = False

    def __init__(self, *, num_particles: int = 1) -> None:
        super().__init__(num_particles=num_particles)

    def surrogate(self, terms, kl_weight=1.0):
        log_ratio = (terms.log_prior - terms.log_q_fixed_parameters()).sum()
        return _mean_over_particles(terms.total_log_likelihood() + _kl_weighted(kl_weight, log_ratio), terms.particles)


@OBJECTIVES.register("dreg")
class DReGIWAE(Objective):
    """IWAE bound with the doubly-reparameterized gradient (Tucker et al. 2018): unbiased, and its guide SNR grows with K.

    Value: the IWAE bound L_K. Model parameters get the usual IWAE gradient sum_k w_k grad log w_k
    (w = normalized importance weights); guide parameters get sum_k w_k^2 (d log w_k / d z_k)
    (d z_k / d phi), the path derivative with log q evaluated at stopped parameters. Implemented
    with one backward pass: the surrogate sum_k stop(w_k) [log p(x, z_k) - log q(z_k) at fixed
    parameters] and a hook that multiplies the gradient reaching each z_k by w_k. Needs a
    reparameterized guide whose log-density is differentiable in z: of the registered families,
    diagonal-gaussian, iaf or hierarchical.

    Options:
        num_particles: K, the number of importance samples per datapoint (K = 1 gives the STL gradient of the ELBO).
    """

    guide_families = ("diagonal-gaussian", "iaf", "hierarchical")
    gradient_of_value = False

    def __init__(self, *, num_particles: int = 10) -> None:
        super().__init__(num_particles=num_particles)

    def surrogate(self, terms, kl_weight=1.0):
        log_w = terms.log_likelihood + terms.log_prior - terms.log_q_fixed_parameters()  # guide gradient along z only
        weights = torch.softmax(log_w.detach(), 0)  # normalized importance weights, (K, B)
        if terms.particles > 1:  # the second w_k of w_k^2: scale what reaches z_k (the guide's path) by w_k
            for site in terms.latents.values():
                if site.value.requires_grad:
                    site.value.register_hook(lambda grad, w=site.broadcast(weights): grad * w)
        value = -log_mean_exp(log_w.detach()).sum()
        return -(weights * log_w).sum(), value
