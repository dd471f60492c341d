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

The pathwise objectives (``elbo`` to ``dreg``) differentiate through z, so each refuses a latent
site whose guide distribution is not reparameterized, naming it. The estimators for discrete
latents (``discrete_latents = True``: ``enumerate``, ``score-function``, ``vimco``,
``gumbel-softmax``, ``straight-through-gumbel``) take such sites: summing over every state, weighting log q(z|x) by the
sampled bound, or relaxing the draw.

``supports_kl_weight`` says whether the objective honours a KL weight beta (KL warm-up): the ELBO
becomes E_q[log p(x|z)] - beta KL(q||p), beta multiplying exactly the latent sites' terms
log p(z) - log q(z|x) (the same as scaling the latent sites with ``poutine.scale`` in model and
guide). In an importance-weighted bound the KL is not a separate term, so those objectives refuse
warm-up.
"""

from __future__ import annotations

import math
from contextlib import contextmanager
from typing import ClassVar, Iterator

import torch
from pyro.infer import ELBO

from .config import OBJECTIVES, Component, Option, require
from .disentanglement import ESTIMATORS, decomposed_kl
from .distributions import enumerable, enumerate_states, relaxed_sample, state_count
from .errors import ConfigError, ProgramError
from .terms import Terms, TraceSource, family, log_mean_exp

#: the registered guide families whose latent is discrete (no rsample)
DISCRETE_GUIDES = ("categorical", "bernoulli")
#: the estimators for a latent without a reparameterized path, named in the pathwise ones' refusals
DISCRETE_ESTIMATORS = "enumerate, score-function, vimco, gumbel-softmax or straight-through-gumbel"


class Objective(Component, ELBO):
    """Base class of registered objectives: the maths in :meth:`surrogate`, over :class:`~pyro_vae.terms.Terms`.

    Every objective also takes ``classifier_weight`` alpha, read when training a semi-supervised
    program (``programs.label_use``): each labelled batch adds alpha * log q(y|x) (Kingma et al.
    2014's classification term, the classifier q(y|x) learning from labels directly) to the bound
    of (x, y); 0 leaves the bound alone."""

    common_options = (
        Option("classifier_weight", float, 0.0, "alpha: a semi-supervised program's labelled batches add alpha * "
                                                "log q(y|x) (Kingma et al.'s classification term); 0: off."),
    )

    supports_kl_weight: ClassVar[bool] = False
    #: True when the KL(q||p) term is computed in closed form where a formula exists.
    analytic_kl: ClassVar[bool] = False
    #: Guide families (registry names) the estimator is defined for; None: any reparameterized guide.
    guide_families: ClassVar[tuple[str, ...] | None] = None
    #: False when the surrogate's gradient is not the gradient of the reported value (STL, DReG):
    #: ``differentiable_loss`` then refuses, since no single tensor has both.
    gradient_of_value: ClassVar[bool] = True
    #: True for the estimators that take a latent site without rsample (a discrete latent).
    discrete_latents: ClassVar[bool] = False
    #: True for the disentangling objectives: the trainer adds the KL's decomposition (index-code MI,
    #: total correlation, dimension-wise KL; ``disentanglement.kl_decomposition``) to each epoch's test scores.
    reports_decomposition: ClassVar[bool] = False

    def __init__(self, *, num_particles: int = 1) -> None:
        require(num_particles >= 1, f"num_particles must be >= 1, got {num_particles}.")
        ELBO.__init__(self, num_particles=num_particles, vectorize_particles=num_particles > 1)
        self._traced: tuple[tuple, TraceSource] | None = None

    def check_guide(self, guide_name: str) -> None:
        """Refuse a guide family this estimator does not support, naming the ones it does."""
        if not self.discrete_latents and guide_name in DISCRETE_GUIDES:
            raise ConfigError(
                f"objective '{self.name}' differentiates through z, and the '{guide_name}' guide's latent is "
                f"discrete (no path to differentiate): train it with {DISCRETE_ESTIMATORS}.")
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
        if terms.non_reparameterized and not self.discrete_latents:
            site = terms.non_reparameterized[0]
            raise ProgramError(
                f"objective '{self.name}' differentiates through z, but the guide's site '{site}' "
                f"({family(terms.latents[site].q)}) is not reparameterized (it has no rsample). Every pyro-vae objective "
                f"is pathwise; for such a site use {DISCRETE_ESTIMATORS} (or Pyro's TraceGraph_ELBO / "
                f"TraceEnum_ELBO with pyro.infer.SVI), or make the site reparameterized.")
        return terms

    def step(self, source, x: torch.Tensor, kl_weight: float = 1.0) -> tuple[torch.Tensor, torch.Tensor]:
        """(surrogate, loss) of one step on batch x from a program's terms source."""
        return self.surrogate(self.terms(source, x), kl_weight)

    # -- state and schedules (estimators that keep some: a baseline, a temperature) ----------------

    def at_epoch(self, epoch: float) -> None:
        """Called by the trainer before each step with the training progress in epochs (fractional):
        where an estimator's own schedule (a temperature's annealing) is driven. Nothing here."""

    def attach(self, program) -> None:
        """Called by the trainer once the program is built, before the optimizer: where an estimator
        makes parameters of its own (a neural baseline). Nothing here."""

    def set_dataset_size(self, size: int) -> None:
        """Called by the trainer before the first step with N, the number of datapoints its batches are
        drawn from (an epoch's): what an estimator weighing a batch against the dataset reads (beta-tc's
        log q(z)). Nothing here."""

    def module(self) -> "torch.nn.Module | None":
        """The estimator's own trainable parameters, which the trainer's optimizer steps with the
        model's (None: it has none)."""
        return None

    def state_dict(self) -> dict:
        """What the estimator keeps between steps (checkpointed with the run): nothing here."""
        return {}

    def load_state_dict(self, state: dict) -> None:
        """Restore :meth:`state_dict` (on resume)."""

    @contextmanager
    def measuring(self) -> Iterator[None]:
        """Draws of the gradient that must leave the estimator as it was (the gradient statistics):
        an estimator that learns from its steps (a running baseline) does not, inside this."""
        yield

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


# ---------------------------------------------------------------------------------------------
# Estimators for discrete latents


def _listable(objective: Objective, name: str, q) -> None:
    """Refuse, naming it, a latent site whose states cannot be listed (one-hot groups, binary units)."""
    if not enumerable(q):
        raise ProgramError(
            f"objective '{objective.name}' needs a discrete latent of one-hot groups or binary units, and the "
            f"guide's site '{name}' is {family(q)}: use the categorical or bernoulli guide (or Pyro's "
            f"OneHotCategorical / Bernoulli(...).to_event(1) in your own guide; enumerate sums over the guide's "
            f"first latent site), or a pathwise objective.")


def _enumerated_site(objective: Objective, at_x) -> tuple[str, object]:
    """The guide's first latent site (``at_x.first()``), to be summed over or relaxed, refused by
    name when its states cannot be listed (the later sites are checked on the terms: :func:`_pathwise_after`)."""
    name, q = at_x.first()
    _listable(objective, name, q)
    return name, q


def _pathwise_after(objective: Objective, name: str, terms: Terms) -> Terms:
    """``terms`` (site ``name`` given its states), refused by name when a later site is not reparameterized."""
    later = [n for n in terms.non_reparameterized if n != name]
    if later:
        raise ProgramError(
            f"objective '{objective.name}' sums over site '{name}' and draws the later sites given each state, "
            f"pathwise; site(s) {', '.join(later)} are not reparameterized. Use score-function, which takes any "
            f"discrete sites.")
    return terms


def _score_term(terms: Terms, signal: torch.Tensor) -> torch.Tensor:
    """sum of signal * (log q - stop(log q)) over the non-reparameterized sites' draws: zero in value,
    signal * grad log q(z_d|x) in gradient (the score-function term; ``signal`` (K, B), detached)."""
    score = sum(terms.latents[name].log_q for name in terms.non_reparameterized)
    return (signal * (score - score.detach())).sum()


@OBJECTIVES.register("enumerate")
class EnumeratedELBO(Objective):
    """ELBO = sum_y q(y|x) E_q(z|x,y)[log p(x, y, z) - log q(y, z|x)], the first latent site y summed over every state.

    With y the only latent (a categorical or Bernoulli latent) there is no sampling: value and
    gradient are exact, what Pyro's TraceEnum_ELBO computes for a guide site enumerated in parallel.
    Later sites z (e.g. the Gaussian code of a GMVAE, drawn given its mixture component y) are drawn
    once per state and datapoint, pathwise. Each state costs one decoder pass per datapoint, so a
    step costs as much as K^M (one-hot groups) or 2^D (binary units) single-sample steps, and memory
    grows alike: a y of more than ``max_states`` states is refused.

    Options:
        max_states: the most latent states a step may sum over (its cost is that many decoder passes per datapoint).
    """

    supports_kl_weight = True
    discrete_latents = True

    def __init__(self, *, max_states: int = 256) -> None:
        require(max_states >= 2, f"max_states must be >= 2, got {max_states}.")
        super().__init__(num_particles=1)
        self.max_states = max_states

    def check_guide(self, guide_name: str) -> None:
        if guide_name not in DISCRETE_GUIDES:
            raise ConfigError(
                f"objective 'enumerate' sums over the states of a discrete latent; the '{guide_name}' guide's is "
                f"continuous. Use {', '.join(DISCRETE_GUIDES)} (or a program whose first latent site is discrete).")

    def terms(self, source, x: torch.Tensor, *args, **kwargs) -> Terms:
        """The terms at every state y_s (the "particles" are the S states, (S, B) each)."""
        if args or kwargs:
            raise ProgramError(f"objective '{self.name}' passes the batch x alone to the model and guide.")
        with source.given(x) as at_x:
            name, q = _enumerated_site(self, at_x)
            states = self.listed_states(name, q)
            terms = _pathwise_after(self, name, at_x.at(
                {name: states.unsqueeze(1).expand(states.shape[0], x.shape[0], *states.shape[1:])}))
        terms.enumerated = name
        return terms

    def listed_states(self, name: str, q) -> torch.Tensor:
        """Every state of site ``name`` (q its guide distribution), (S, *event); refused beyond max_states."""
        _listable(self, name, q)
        count = state_count(q)
        if count > self.max_states:
            raise ProgramError(
                f"objective 'enumerate': the latent '{name}' has {count} states, more than max_states = "
                f"{self.max_states} (each state is one decoder pass per datapoint). Use a smaller latent, raise "
                f"train.objective.max_states, or sample it: score-function or gumbel-softmax.")
        return enumerate_states(q)

    def surrogate(self, terms, kl_weight=1.0):
        log_q_y = terms.latents[terms.enumerated].log_q  # (S, B): log q(y_s|x), differentiable in the guide
        bound = terms.log_likelihood + _kl_weighted(kl_weight, terms.log_prior - terms.log_q)
        loss = -(log_q_y.exp() * bound).sum()
        return loss, loss.detach()


SCORE_BASELINES = ("none", "average", "leave-one-out", "neural")


@OBJECTIVES.register("score-function")
class ScoreFunctionELBO(Objective):
    """ELBO by Monte Carlo with the score-function (REINFORCE) gradient for sites without a path (Pyro's TraceGraph_ELBO).

    With f = log p(x|z) + log p(z) - log q(z|x) per datapoint and draw, the gradient is
    grad f + (f - b) grad log q(z_d|x), summed over the draws z_d of the non-reparameterized sites
    (pathwise through any reparameterized ones); unbiased for any b that does not depend on z_d.
    Each datapoint's f weights its own log q only (the datapoints are independent: TraceGraph_ELBO's
    plate-wise Rao-Blackwellization). The value is the ELBO's Monte-Carlo estimate.

    Baselines b: ``none``; ``average``, a decaying average of f over past steps (b <- decay b +
    (1 - decay) mean f, starting at the first batch's mean; held in the run's checkpoint);
    ``leave-one-out``, the mean f of the other K - 1 draws of the same datapoint (num_particles >= 2);
    ``neural``, b(x) a network of x (one hidden softplus layer of ``hidden`` units) trained along
    with the model to minimize (f - b(x))^2 (Mnih & Gregor 2014), its parameters in the run's
    checkpoint (with raw ``pyro.infer.SVI`` they live in Pyro's parameter store as
    ``score_function_baseline``).

    Options:
        num_particles: draws z ~ q(z|x) per datapoint; their average is the estimate.
        baseline: none, average, leave-one-out or neural (what is subtracted from f in the score term).
        decay: the average baseline's decay per step (0 <= decay < 1).
        hidden: the neural baseline's hidden units.
    """

    supports_kl_weight = True
    discrete_latents = True

    def __init__(self, *, num_particles: int = 1, baseline: str = "average", decay: float = 0.9,
                 hidden: int = 100) -> None:
        require(baseline in SCORE_BASELINES,
                f"baseline must be one of {', '.join(SCORE_BASELINES)}, got {baseline!r}.")
        require(0.0 <= decay < 1.0, f"decay must be in [0, 1), got {decay}.")
        require(hidden >= 1, f"hidden must be >= 1, got {hidden}.")
        require(baseline != "leave-one-out" or num_particles >= 2,
                "the leave-one-out baseline needs num_particles >= 2 (the other draws of each datapoint).")
        super().__init__(num_particles=num_particles)
        self.baseline, self.decay, self.hidden = baseline, decay, hidden
        self._average: float | None = None
        self._frozen = False
        self._network: torch.nn.Module | None = None
        self._x: torch.Tensor | None = None

    def attach(self, program) -> None:
        if self.baseline == "neural":
            self._net(program.data_shape)

    def module(self) -> torch.nn.Module | None:
        return self._network

    def _net(self, data_shape) -> torch.nn.Module:
        """b(x): flatten -> Linear -> softplus -> Linear(1), made on first use for data of ``data_shape``,
        initialized from a seed of its own (the caller's random stream is not disturbed)."""
        if self._network is None:
            with torch.random.fork_rng(devices=[]):
                torch.manual_seed(0)
                self._network = torch.nn.Sequential(torch.nn.Flatten(-len(data_shape)),
                                                    torch.nn.Linear(math.prod(data_shape), self.hidden),
                                                    torch.nn.Softplus(), torch.nn.Linear(self.hidden, 1))
        return self._network

    def terms(self, source, x: torch.Tensor, *args, **kwargs) -> Terms:
        self._x = x  # (what the neural baseline reads)
        return super().terms(source, x, *args, **kwargs)

    def loss_and_grads(self, model, guide, *args, **kwargs) -> float:
        if self.baseline == "neural":  # raw SVI: the baseline's parameters in Pyro's store, so SVI steps them
            import pyro

            x = args[0]
            pyro.module("score_function_baseline", self._net(tuple(x.shape[1:])).to(x.device))
        return super().loss_and_grads(model, guide, *args, **kwargs)

    def _baseline(self, f: torch.Tensor) -> torch.Tensor | float:
        if self.baseline == "none":
            return 0.0
        if self.baseline == "leave-one-out":
            return (f.sum(0, keepdim=True) - f) / (f.shape[0] - 1)
        mean = f.mean().item()
        if self._average is not None:
            b = self._average
        else:  # no past steps yet: the mean f of the batch's other draws (independent of each draw)
            b = (f.sum() - f) / (f.numel() - 1) if f.numel() > 1 else 0.0
        if not self._frozen and math.isfinite(mean):
            self._average = mean if self._average is None else self.decay * self._average + (1 - self.decay) * mean
        return b

    def surrogate(self, terms, kl_weight=1.0):
        f = terms.log_likelihood + _kl_weighted(kl_weight, terms.log_prior - terms.log_q)  # (K, B)
        total, fit = f.sum(), None
        if terms.non_reparameterized:  # value zero, gradient (f - b) grad log q
            if self.baseline == "neural":
                x = self._x
                b = self._net(tuple(x.shape[1:])).to(x.device)(x).squeeze(-1)  # (B,): b(x), one per datapoint
                fit = (f.detach() - b).pow(2).sum() / terms.particles  # trains b(x) alone (f is detached)
                b = b.detach()
            else:
                b = self._baseline(f.detach())
            total = total + _score_term(terms, f.detach() - b)
        surrogate, loss = _mean_over_particles(total, terms.particles)
        return (surrogate if fit is None else surrogate + fit - fit.detach()), loss

    def state_dict(self) -> dict:
        state = {} if self._average is None else {"average": self._average}
        if self._network is not None:
            state["network"] = self._network.state_dict()
        return state

    def load_state_dict(self, state: dict) -> None:
        self._average = state.get("average")
        if "network" in state:
            self._network.load_state_dict(state["network"])

    @contextmanager
    def measuring(self) -> Iterator[None]:
        frozen, self._frozen = self._frozen, True
        try:
            yield
        finally:
            self._frozen = frozen


@OBJECTIVES.register("vimco")
class VIMCO(Objective):
    """IWAE bound L_K = E[log (1/K) sum_k w_k] with VIMCO's score-function gradient for sites without a path (Mnih & Rezende 2016).

    The gradient: sum_k w~_k grad log w_k (w~ the normalized weights: the IWAE bound's own
    gradient through log p and log q) + sum_k (L - L_-k) grad log q(z_k|x), the learning signal of
    draw k its bound L minus L_-k, the bound with log w_k replaced by the mean of the other K - 1
    (a baseline from the other draws of the same datapoint: unbiased, no parameters). The value is
    L_K. Unbiased for the IWAE bound's gradient (not the ELBO's: a multi-sample bound), for any
    mix of discrete and reparameterized sites (reparameterized ones get their path derivative too).

    Options:
        num_particles: K >= 2, the draws per datapoint (the bound's K and the baseline's pool).
    """

    discrete_latents = True

    def __init__(self, *, num_particles: int = 5) -> None:
        require(num_particles >= 2, f"vimco needs num_particles >= 2 (the other draws are the baseline), "
                                    f"got {num_particles}.")
        super().__init__(num_particles=num_particles)

    def surrogate(self, terms, kl_weight=1.0):
        log_w = terms.log_weights  # (K, B)
        bound = log_mean_exp(log_w)  # (B,)
        loss = -bound.sum()
        if terms.non_reparameterized:
            lw, k = log_w.detach(), log_w.shape[0]
            others = (lw.sum(0, keepdim=True) - lw) / (k - 1)  # the mean of the other draws' log w
            eye = torch.eye(k, dtype=lw.dtype, device=lw.device)[:, :, None]  # (K, K, 1): row j replaces draw j
            held_out = log_mean_exp(lw[None] * (1 - eye) + others[:, None] * eye, 1)  # (K, B): L_-j
            loss = loss - _score_term(terms, bound.detach()[None] - held_out)
        return loss, -bound.sum().detach()


@OBJECTIVES.register("gumbel-softmax")
class GumbelSoftmaxELBO(Objective):
    """Relaxed ELBO E_y[log p(x|y)] - KL(q(z|x) || p(z)), y a Gumbel-softmax (Concrete) relaxation of z ~ q(z|x).

    y_g = softmax((log q_g + G) / tau), G Gumbel noise (Jang et al. 2017; Maddison et al. 2017; the
    binary Concrete for Bernoulli units) is reparameterized, so the decoder's term gets a pathwise
    gradient; the KL is between the discrete q and p, in closed form. The decoder reads y, not a
    one-hot z, while training: the gradient is biased (less as tau -> 0, with more variance), and the
    reported loss is the relaxed objective's, not the ELBO (evaluation scores the ELBO on discrete
    draws). The temperature anneals geometrically from ``temperature`` to ``final_temperature``
    over ``anneal_epochs`` (the trainer drives it like KL warm-up), then stays.

    Options:
        temperature: tau at the start (> 0).
        final_temperature: tau after annealing (0 < final <= temperature); unset: no annealing.
        anneal_epochs: epochs over which tau goes from temperature to final_temperature.
        num_particles: relaxed draws per datapoint.
    """

    supports_kl_weight = True
    discrete_latents = True
    guide_families = DISCRETE_GUIDES
    hard: ClassVar[bool] = False

    def __init__(self, *, temperature: float = 1.0, final_temperature: float | None = None, anneal_epochs: float = 0.0,
                 num_particles: int = 1) -> None:
        final = temperature if final_temperature is None else final_temperature
        require(temperature > 0, f"temperature must be > 0, got {temperature}.")
        require(0 < final <= temperature,
                f"final_temperature must be in (0, temperature = {temperature}], got {final}: annealing lowers tau.")
        require(anneal_epochs >= 0, f"anneal_epochs must be >= 0, got {anneal_epochs}.")
        super().__init__(num_particles=num_particles)
        self.temperature, self.final_temperature, self.anneal_epochs = temperature, final_temperature, anneal_epochs
        self.current_temperature = temperature

    def at_epoch(self, epoch: float) -> None:
        start, final = self.temperature, self.final_temperature or self.temperature
        done = 1.0 if self.anneal_epochs == 0 else min(1.0, epoch / self.anneal_epochs)
        self.current_temperature = start * (final / start) ** done

    def terms(self, source, x: torch.Tensor, *args, **kwargs) -> Terms:
        if args or kwargs:
            raise ProgramError(f"objective '{self.name}' passes the batch x alone to the model and guide.")
        with source.given(x) as at_x:
            name, q = _enumerated_site(self, at_x)  # relaxed; later sites drawn given it
            y = relaxed_sample(q, torch.Size([self.num_particles]), self.current_temperature, self.hard)
            terms = _pathwise_after(self, name, at_x.at({name: y}))
        if terms.latents[name].kl() is None:
            raise ProgramError(
                f"objective '{self.name}' needs KL(q(z|x) || p(z)) in closed form at site '{name}' "
                f"({family(q)} against {family(terms.latents[name].p)}); use score-function or enumerate.")
        return terms

    def surrogate(self, terms, kl_weight=1.0):
        kl, _ = terms.kl()
        return _mean_over_particles(terms.total_log_likelihood() - _kl_weighted(kl_weight, kl.sum()), terms.particles)


@OBJECTIVES.register("straight-through-gumbel")
class StraightThroughGumbelELBO(GumbelSoftmaxELBO):
    """As gumbel-softmax, but the decoder reads the one-hot (rounded) draw, with the relaxed draw's gradient (Jang et al. 2017's ST Gumbel).

    The forward pass is a draw from q itself, so the reported loss is a Monte-Carlo ELBO; the
    gradient is still the relaxation's (biased).

    Options:
        temperature: tau of the relaxation whose gradient is used (> 0).
        final_temperature: tau after annealing (0 < final <= temperature); unset: no annealing.
        anneal_epochs: epochs over which tau goes from temperature to final_temperature.
        num_particles: draws per datapoint.
    """

    hard = True


# ---------------------------------------------------------------------------------------------
# Disentangling objectives: the KL weighted, or decomposed and its total correlation weighted


def _one_site(objective: Objective, terms: Terms):
    if len(terms.latents) != 1:
        raise ProgramError(f"objective '{objective.name}' decomposes the KL of one latent site; this program has "
                           f"{len(terms.latents)} ({', '.join(terms.latents)}). Use objective 'beta' instead.")
    return next(iter(terms.latents.values()))


@OBJECTIVES.register("beta")
class BetaELBO(Objective):
    """beta-VAE: E_q[log p(x|z)] - beta KL(q(z|x)||p(z)), the KL term by Monte Carlo (Higgins et al. 2017).

    beta = 1 is ``elbo`` (the same draws give the same loss and gradients); beta > 1 presses q(z|x)
    toward the prior, trading reconstruction (and log p(x)) for a posterior closer to factorized.
    The reported loss is minus this objective (not the ELBO: evaluation scores the ELBO). KL
    warm-up multiplies beta. ``analytic`` takes the KL in closed form where one is registered
    (``elbo-analytic-kl``'s terms) instead.

    Options:
        beta: the KL's weight (> 0); 1 is the ELBO.
        analytic: the KL in closed form where registered, instead of its one-draw Monte-Carlo term.
        num_particles: samples z ~ q(z|x) per datapoint.
    """

    supports_kl_weight = True
    reports_decomposition: ClassVar[bool] = True

    def __init__(self, *, beta: float = 4.0, analytic: bool = False, num_particles: int = 1) -> None:
        require(beta > 0, f"beta must be > 0, got {beta}: beta = 0 drops the KL (an autoencoder, no bound) and a "
                          f"negative beta rewards moving away from the prior. Use beta = 1 for the ELBO.")
        super().__init__(num_particles=num_particles)
        self.beta, self.analytic = beta, analytic

    def surrogate(self, terms, kl_weight=1.0):
        kl = terms.kl()[0].sum() if self.analytic else (terms.log_q - terms.log_prior).sum()
        weight = self.beta * kl_weight
        return _mean_over_particles(terms.total_log_likelihood() - (kl if weight == 1.0 else weight * kl),
                                    terms.particles)


@OBJECTIVES.register("beta-tc")
class BetaTCELBO(Objective):
    """beta-TC-VAE: E_q[log p(x|z)] - alpha MI - beta TC - gamma dimension-wise KL, the KL decomposed by the aggregate posterior (Chen et al. 2018).

    Per draw z ~ q(z|x_i) the KL term log q(z|x_i) - log p(z) splits into index-code mutual
    information, total correlation and dimension-wise KL (``disentanglement.py``), with log q(z)
    and its marginals estimated from the minibatch: ``stratified`` (minibatch stratified sampling,
    unbiased for q(z)) or ``weighted`` (minibatch weighted sampling, Chen et al.'s training
    estimator; its log q(z) sits about log N low). alpha = beta = gamma = 1 is ``elbo`` exactly (the
    parts telescope). Needs q(z|x) and p(z) with independent coordinates (a diagonal-gaussian guide),
    one latent site, and N, the size of the set the batches are drawn from (the trainer sets it to the
    training set's; with raw ``pyro.infer.SVI`` pass ``dataset_size``). A step costs O(B^2 D) more
    than the ELBO's. KL warm-up multiplies all three weights.

    Options:
        tc_weight: beta, the total correlation's weight (> 0).
        mi_weight: alpha, the index-code mutual information's weight (>= 0).
        dimension_weight: gamma, the dimension-wise KL's weight (>= 0).
        estimator: stratified or weighted (the minibatch estimate of log q(z)).
        dataset_size: N; 0: the training set's size, set by the trainer.
        num_particles: samples z ~ q(z|x) per datapoint.
    """

    supports_kl_weight = True
    guide_families = ("diagonal-gaussian",)
    reports_decomposition: ClassVar[bool] = True

    def __init__(self, *, tc_weight: float = 6.0, mi_weight: float = 1.0, dimension_weight: float = 1.0,
                 estimator: str = "stratified", dataset_size: int = 0, num_particles: int = 1) -> None:
        require(tc_weight > 0, f"tc_weight must be > 0, got {tc_weight}: 1 is the ELBO's weight.")
        require(mi_weight >= 0 and dimension_weight >= 0,
                f"mi_weight and dimension_weight must be >= 0, got {mi_weight} and {dimension_weight}.")
        require(estimator in ESTIMATORS, f"estimator must be one of {', '.join(ESTIMATORS)}, got {estimator!r}.")
        require(dataset_size >= 0, f"dataset_size must be >= 0 (0: the training set's), got {dataset_size}.")
        super().__init__(num_particles=num_particles)
        self.tc_weight, self.mi_weight, self.dimension_weight = tc_weight, mi_weight, dimension_weight
        self.estimator, self.dataset_size = estimator, dataset_size
        self._n = dataset_size or None

    def set_dataset_size(self, size: int) -> None:
        if not self.dataset_size:
            self._n = size

    def parts(self, terms: Terms) -> dict[str, torch.Tensor]:
        """The KL term's three parts per draw, (K, B) each (``disentanglement.decomposed_kl``)."""
        site = _one_site(self, terms)
        batch = site.value.shape[-2]
        if self._n is None:
            raise ConfigError(f"objective '{self.name}' needs N, the size of the dataset the batches are drawn from "
                              f"(its log q(z) weighs the batch by it): set train.objective.dataset_size (the "
                              f"trainer sets it to the training set's).")
        if self._n < batch:
            raise ConfigError(f"objective '{self.name}': dataset_size = {self._n} is smaller than the batch ({batch}); "
                              f"set train.objective.dataset_size to the size of the set the batches come from.")
        return decomposed_kl(site.q, site.value, terms.log_q, terms.log_prior, self._n, self.estimator)

    def surrogate(self, terms, kl_weight=1.0):
        parts = self.parts(terms)
        penalty = (self.mi_weight * parts["mutual_information"] + self.tc_weight * parts["total_correlation"]
                   + self.dimension_weight * parts["dimension_wise_kl"]).sum()
        return _mean_over_particles(terms.total_log_likelihood() - _kl_weighted(kl_weight, penalty), terms.particles)


@OBJECTIVES.register("factor")
class FactorVAEObjective(Objective):
    """FactorVAE: ELBO - gamma TC, the total correlation estimated by a discriminator with the permutation trick (Kim & Mnih 2018).

    A discriminator D(z) (an MLP giving the logit that z came from q(z) rather than from prod_d q(z_d))
    estimates TC = KL(q(z) || prod_d q(z_d)) ~ E_q(z)[logit D(z)] (the density-ratio trick). Per step,
    on the batch's draws z_i ~ q(z|x_i): the VAE's loss is -ELBO + gamma sum_i logit D(z_i), D's
    parameters held fixed in it; D's loss is the cross-entropy of telling the draws (label 1) from the
    same draws with each coordinate permuted across the batch (label 0: a draw from the batch's
    product of marginals), on detached z so that it does not move the VAE. Both are stepped by the
    trainer's one optimizer (D's state, parameters and Adam moments, checkpointed with the run). The
    permutation comes from torch's random stream (a resume restores it). Kim & Mnih permute a second
    batch and give D its own Adam (lr 1e-4, betas 0.5, 0.9); here the same batch and the run's Adam.
    The reported loss is -ELBO + gamma TC^. Needs the stock VAE program with a latent of real vectors
    of size >= 2 (a simplex latent's coordinates sum to 1: they always depend on each other, and a
    permuted draw leaves the simplex).

    Options:
        gamma: the total correlation's weight (>= 0; 0 is the ELBO with a discriminator watching).
        hidden: units in each of the discriminator's hidden layers.
        layers: hidden layers of the discriminator (LeakyReLU 0.2 between).
        num_particles: samples z ~ q(z|x) per datapoint.
    """

    supports_kl_weight = True
    guide_families = ("diagonal-gaussian", "iaf", "hierarchical")
    reports_decomposition: ClassVar[bool] = True

    def __init__(self, *, gamma: float = 10.0, hidden: int = 256, layers: int = 2, num_particles: int = 1) -> None:
        require(gamma >= 0, f"gamma must be >= 0, got {gamma}.")
        require(hidden >= 1 and layers >= 1, f"hidden and layers must be >= 1, got {hidden} and {layers}.")
        super().__init__(num_particles=num_particles)
        self.gamma, self.hidden, self.layers = gamma, hidden, layers
        self._network: torch.nn.Module | None = None

    def attach(self, program) -> None:
        vae = program if hasattr(program, "latent_dim") else getattr(program, "vae", None)  # (a Program or a VAE)
        latent = getattr(vae, "latent_dim", None)
        if latent is None:
            raise ConfigError(f"objective '{self.name}' builds its discriminator for the stock VAE's latent "
                              f"(model.latent_dim); this program is not the stock VAE. Use beta or beta-tc.")
        self.discriminator(latent)

    def discriminator(self, latent_dim: int) -> torch.nn.Module:
        """D: latent_dim -> logit, made once (from a seed of its own: the caller's stream is not disturbed)."""
        require(latent_dim >= 2, f"objective '{self.name}' estimates the total correlation between latent "
                                 f"coordinates, and the latent has {latent_dim}: there is none to measure. Use "
                                 f"model.latent_dim >= 2, or objective 'beta'.")
        if self._network is None:
            with torch.random.fork_rng(devices=[]):
                torch.manual_seed(0)
                sizes = [latent_dim] + [self.hidden] * self.layers
                body = [m for a, b in zip(sizes, sizes[1:]) for m in (torch.nn.Linear(a, b), torch.nn.LeakyReLU(0.2))]
                self._network = torch.nn.Sequential(*body, torch.nn.Linear(sizes[-1], 1))
        return self._network

    def module(self) -> torch.nn.Module | None:
        return self._network

    def loss_and_grads(self, model, guide, *args, **kwargs) -> float:
        """As the base class's, the discriminator's parameters put in Pyro's store first (so that raw
        ``pyro.infer.SVI`` steps them too, from the first step: D is made for the latent's size)."""
        import pyro

        terms = self.terms(self._source(model, guide), *args, **kwargs)
        z = _one_site(self, terms).value
        pyro.module("factorvae_discriminator", self.discriminator(z.shape[-1]).to(z.device))
        surrogate, loss = self.surrogate(terms)
        surrogate.backward(retain_graph=self.retain_graph)
        return loss.item()

    def surrogate(self, terms, kl_weight=1.0):
        site = _one_site(self, terms)
        z = site.value.reshape(-1, site.value.shape[-1])  # (K B, D)
        d = self.discriminator(z.shape[-1]).to(z.device)
        frozen = {k: v.detach() for k, v in d.named_parameters()}
        tc = torch.func.functional_call(d, frozen, (z,)).squeeze(-1)  # logit D(z): D fixed, path through z
        shuffled = torch.gather(z.detach(), 0, torch.argsort(torch.rand(z.shape, device=z.device), dim=0))
        logits_q, logits_perm = d(z.detach()).squeeze(-1), d(shuffled).squeeze(-1)
        fit = (torch.nn.functional.softplus(-logits_q) + torch.nn.functional.softplus(logits_perm)).sum() / terms.particles
        elbo = terms.total_log_likelihood() + _kl_weighted(kl_weight, (terms.log_prior - terms.log_q).sum())
        surrogate, loss = _mean_over_particles(elbo - self.gamma * tc.sum(), terms.particles)
        return surrogate + fit, loss

    def state_dict(self) -> dict:
        return {} if self._network is None else {"network": self._network.state_dict()}

    def load_state_dict(self, state: dict) -> None:
        if "network" in state:
            self._network.load_state_dict(state["network"])
