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
