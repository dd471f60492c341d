"""Per-particle terms: the numbers every bound, estimate and exact check is written over.

For a batch x of B datapoints and K draws z_k ~ q(z|x), a :class:`Terms` holds, per particle and
datapoint (each of shape (K, B), in nats, summed within a datapoint):

    log_likelihood   log p(x|z_k): every observed site of the model (``"x"``, and any other)
    log_prior        log p(z_k):   the model's latent sites
    log_q            log q(z_k|x): the guide's latent sites (the same names)
    z                the draws, by site name

and, per latent site, KL(q || p) in closed form where one is registered, and log q with the guide's
parameters held fixed (value log q(z|x); gradient through z only: the path derivative of STL and
DReG). Site scales and masks (``poutine.scale``, ``poutine.mask``) are applied as Pyro does.

The objectives (``objectives.py``), the evidence estimates (``metrics.py``) and the exact checks
(``exact.py``) are written once, over these terms. Two sources produce them:

* :class:`TraceSource` runs any Pyro ``model``/``guide`` pair under effect handlers: the guide is
  traced (its draws vectorized over a particle plate when K > 1), the model replayed on those
  draws, and each site's log-density read off the traces. This is the definition: it is what the
  program says.
* :class:`DirectSource` calls the stock VAE's p(z), p(x|z) and q(z|x) directly: the same
  distributions in the same order as ``VAE.model``/``VAE.guide``, without tracing. It is used only
  where the program provably is that one (:func:`source_for`: the VAE's own ``model`` and
  ``guide``, not overridden); ``tests/test_objectives.py`` checks the two sources give the same
  loss and gradients for every objective, prior, likelihood and guide.

Both compute some terms the cheaper of two equal ways, never other maths: log q of a Normal draw
from its noise (-eps^2/2 - log sigma, the same function of the parameters), a Bernoulli's
log-likelihood summed inside one cross-entropy, each term only when an objective reads it.

The model program's protocol (a ``pyro.plate("data", ...)`` over datapoints, an observed ``"x"``,
latent sites shared by model and guide) is checked here, on every trace, with errors that name
the site at fault.
"""

from __future__ import annotations

import contextlib
import functools
import math
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Callable, Iterator

import pyro
import pyro.poutine as poutine
import torch
import torch.nn.functional as F
from pyro.distributions.util import scale_and_mask
from pyro.poutine.messenger import Messenger
from pyro.poutine.runtime import NonlocalExit
from pyro.poutine.util import site_is_subsample
from torch.distributions import Bernoulli, Independent, Normal, kl_divergence

from .distributions import LOG_2PI, rsample_and_log_prob
from .errors import ProgramError
from .numerics import standard_normal

DATA_PLATE = "data"
OBSERVED = "x"
PARTICLE_PLATE = "num_particles_vectorized"
POSTERIOR_MEAN_SAMPLES = 64


def log_prob_sum(distribution, value: torch.Tensor) -> torch.Tensor:
    """sum of log_prob(value) over every batch dimension (fused where the distribution offers it)."""
    fused = getattr(distribution, "log_prob_sum", None)
    return fused(value) if fused is not None else distribution.log_prob(value).sum()


def log_q_path(q, z: torch.Tensor) -> torch.Tensor:
    """log q(z) with q's parameters held constant: the value of log q(z), with gradient only along
    z's reparameterized path. Uses ``q.log_prob_detached`` where the family provides it (one
    evaluation), else log q(z) - log q(stop(z)) + stop(log q(z)) (two)."""
    if hasattr(q, "log_prob_detached"):
        return q.log_prob_detached(z)
    base = q
    while isinstance(base, Independent):
        base = base.base_dist
    if type(base) in (Normal, pyro.distributions.Normal):  # a Normal's log-density at detached parameters, once
        loc, scale = base.loc.detach(), base.scale.detach()
        return _summed((-0.5 * ((z - loc) / scale).pow(2) - scale.log()), q.event_shape) \
            - 0.5 * math.prod(q.event_shape) * LOG_2PI
    log_q = q.log_prob(z.view_as(z))  # a new tensor object: a flow inverts z instead of reusing its cached noise
    return log_q - q.log_prob(z.detach()) + log_q.detach()


def family(fn) -> str:
    """The name of a distribution's family, through the wrappers Pyro adds (Independent, expanded)."""
    while isinstance(fn, (Independent, pyro.distributions.ExpandedDistribution)):
        fn = fn.base_dist
    return type(fn).__name__


def _summed(t: torch.Tensor, event_shape: torch.Size) -> torch.Tensor:
    """t summed over its rightmost ``len(event_shape)`` dimensions."""
    return t.sum(list(range(-len(event_shape), 0))) if event_shape else t


def posterior_mean(q, samples: int = POSTERIOR_MEAN_SAMPLES) -> torch.Tensor:
    """E_q[z]: exact where the family has it, else the mean of ``samples`` draws (e.g. an IAF guide)."""
    try:
        return q.mean
    except NotImplementedError:
        with torch.no_grad():
            return q.sample((samples,)).mean(0)


class LatentSite:
    """One latent site: its draws, its guide and model distributions and their log-densities.

    ``log_q`` and ``log_p`` ((K, B)) are computed when first read (an objective that holds the
    guide's parameters fixed never needs log q at its own parameters). ``per_datapoint`` maps a
    tensor shaped like the site's batch (e.g. a KL) to (K, B): the guide site's scale and mask
    applied, every dimension but the particle and data ones summed. ``value_dims``: where the
    particle and data dimensions are in ``value`` (negative indices; particle None without a
    particle dimension)."""

    def __init__(self, name: str, value: torch.Tensor, q, p, log_q: Callable[[], torch.Tensor],
                 log_p: Callable[[], torch.Tensor], per_datapoint: Callable[[torch.Tensor], torch.Tensor],
                 value_dims: tuple[int | None, int] = (None, -2)) -> None:
        self.name, self.value, self.q, self.p = name, value, q, p
        self._log_q, self._log_p = log_q, log_p
        self.per_datapoint, self.value_dims = per_datapoint, value_dims

    @functools.cached_property
    def log_q(self) -> torch.Tensor:
        """log q(z|x) at this site, (K, B)."""
        return self._log_q()

    @functools.cached_property
    def log_p(self) -> torch.Tensor:
        """log p(z) at this site (given the latents before it), (K, B)."""
        return self._log_p()

    def broadcast(self, t: torch.Tensor) -> torch.Tensor:
        """A (K, B) tensor shaped to broadcast against ``value`` (e.g. importance weights against z)."""
        shape = [1] * self.value.dim()
        particle_dim, data_dim = self.value_dims
        if particle_dim is not None:
            shape[particle_dim] = t.shape[0]
        shape[data_dim] = t.shape[1]
        return t.reshape(shape) if particle_dim is not None else t[0].reshape(shape)

    def kl(self) -> torch.Tensor | None:
        """KL(q || p) at this site per particle and datapoint, (K, B), where a closed form is
        registered; None otherwise. (For a site whose p depends on earlier latents, the KL given
        their draws: the per-site term of Pyro's TraceMeanField_ELBO.) Computed once per site."""
        return self._closed_kl

    @functools.cached_property
    def _closed_kl(self) -> torch.Tensor | None:
        try:
            kl = kl_divergence(self.q, self.p)
        except NotImplementedError:
            return None
        return self.per_datapoint(kl)

    def log_q_fixed_parameters(self) -> torch.Tensor:
        """log q(z) (K, B) with the guide's parameters held fixed (:func:`log_q_path`)."""
        return self.per_datapoint(log_q_path(self.q, self.value))


def _total(parts: list[torch.Tensor]) -> torch.Tensor:
    return parts[0] if len(parts) == 1 else functools.reduce(torch.add, parts)


class Terms:
    """The per-particle terms of one program on one batch: see the module docstring.

    ``particles`` is K; every per-datapoint tensor has shape (K, B). ``non_reparameterized`` names
    the latent sites whose guide distribution has no ``rsample`` (objectives that differentiate
    through z refuse them)."""

    def __init__(
        self,
        particles: int,
        latents: dict[str, LatentSite],
        log_likelihood: Callable[[], torch.Tensor],
        total_log_likelihood: Callable[[], torch.Tensor] | None = None,
        non_reparameterized: tuple[str, ...] = (),
    ) -> None:
        self.particles = particles
        self.latents = latents
        self._log_likelihood = log_likelihood
        self._total_log_likelihood = total_log_likelihood
        self.non_reparameterized = non_reparameterized

    @functools.cached_property
    def log_likelihood(self) -> torch.Tensor:
        """log p(x|z_k) per particle and datapoint, (K, B)."""
        return self._log_likelihood()

    def total_log_likelihood(self) -> torch.Tensor:
        """log p(x|z_k) summed over particles and datapoints (fused where the source offers it)."""
        if self._total_log_likelihood is not None and "log_likelihood" not in self.__dict__:
            return self._total_log_likelihood()
        return self.log_likelihood.sum()

    @functools.cached_property
    def log_prior(self) -> torch.Tensor:
        """log p(z_k), (K, B)."""
        return _total([s.log_p for s in self.latents.values()])

    @functools.cached_property
    def log_q(self) -> torch.Tensor:
        """log q(z_k|x), (K, B)."""
        return _total([s.log_q for s in self.latents.values()])

    @property
    def log_weights(self) -> torch.Tensor:
        """log w_k = log p(x|z_k) + log p(z_k) - log q(z_k|x), (K, B): the importance weights."""
        return self.log_likelihood + self.log_prior - self.log_q

    @property
    def z(self) -> dict[str, torch.Tensor]:
        return {name: s.value for name, s in self.latents.items()}

    def kl(self) -> tuple[torch.Tensor, bool]:
        """KL(q(z|x) || p(z)) per particle and datapoint, (K, B), and whether it is all closed form:
        each site's closed form where registered, else its one-draw Monte-Carlo term log q - log p."""
        parts, analytic = [], True
        for site in self.latents.values():
            closed = site.kl()
            analytic = analytic and closed is not None
            parts.append(closed if closed is not None else site.log_q - site.log_p)
        return _total(parts), analytic

    def log_q_fixed_parameters(self) -> torch.Tensor:
        """log q(z_k|x), (K, B), with the guide's parameters held fixed: gradient through z only."""
        return _total([s.log_q_fixed_parameters() for s in self.latents.values()])


# ---------------------------------------------------------------------------------------------
# The stock VAE, directly


def _shared_over_data(z: torch.Tensor | None) -> bool:
    """Whether given points z (P, B, *event) are the same for every datapoint: expanded along the
    data dimension (stride 0), as an enumeration's states are."""
    return z is not None and z.dim() >= 3 and z.shape[1] > 1 and z.stride(1) == 0


class DirectSource:
    """Terms of the stock :class:`~pyro_vae.vae.VAE` from its three distributions, untraced.

    ``VAE.guide`` draws z ~ q(z|x) (K draws: sample shape (K,)); ``VAE.model`` scores z under p(z)
    and x under p(x|z): this computes the same, drawing the same random numbers in the same order,
    with log q(z|x) from the reparameterization noise where the family offers that (the same
    value and gradient as ``log_prob``)."""

    def __init__(self, vae) -> None:
        self.vae = vae

    def draw(self, x: torch.Tensor, particles: int) -> Terms:
        """Terms at K = ``particles`` draws z ~ q(z|x)."""
        return self._terms(self.vae.q_z_given_x(x), self.vae.p_z(), x, particles)

    def _terms(self, q, prior, x: torch.Tensor, particles: int, z: torch.Tensor | None = None) -> Terms:
        vae, batch = self.vae, x.shape[0]
        shape = torch.Size() if particles == 1 else torch.Size([particles])
        drawn = ()  # the sites drawn without a path (a discrete latent)
        if z is None and hasattr(q, "rsample_with_noise"):  # log q from the noise, when it is read
            z, eps = q.rsample_with_noise(shape)
            log_q = functools.partial(q.log_prob_of_noise, eps)
        elif z is None and q.has_rsample:
            z, fused = rsample_and_log_prob(q, shape)
            log_q = lambda: fused  # noqa: E731
        else:
            if z is None:  # a discrete latent: a draw, no path through it
                z, drawn = q.sample(shape), ("z",)
            log_q = functools.partial(q.log_prob, z)
        shared = _shared_over_data(z) and not vae.likelihood.bodies()
        # every datapoint at the same points (the states of an enumeration): the decoder's work once per
        # point, p(x|z) broadcast over the datapoints (the same numbers: the decoder reads z alone)
        p_x = vae.p_x_given_z(z[:, :1] if shared else z)

        def per_datapoint(t: torch.Tensor) -> torch.Tensor:
            return t if t.shape == (particles, batch) else t.expand(particles, batch)

        site = LatentSite("z", z, q, prior, lambda: per_datapoint(log_q()), lambda: per_datapoint(prior.log_prob(z)),
                          per_datapoint, (-3 if z.dim() == 3 else None, -2))
        return Terms(particles, {"z": site}, lambda: per_datapoint(p_x.log_prob(x)),
                     None if shared else lambda: log_prob_sum(p_x, x), non_reparameterized=drawn)

    @contextmanager
    def given(self, x: torch.Tensor) -> Iterator["Given"]:
        """q(z|x) and p(z) built once for many draws at this x (they do not change while no
        parameter does), and the likelihood's work on x alone done once (``observing``)."""
        q, prior = self.vae.q_z_given_x(x), self.vae.p_z()
        with self.vae.likelihood.observing(x):
            yield Given(
                draw=lambda k: self._terms(q, prior, x, k),
                at=lambda z: self._terms(q, prior, x, z["z"].shape[0], z=z["z"]),
                means=lambda: {"z": posterior_mean(q)},
                posteriors=lambda: {"z": q},
                first=lambda: ("z", q),
            )


@dataclass(frozen=True)
class Given:
    """A program's terms at one fixed batch x: ``draw(K)`` at K draws z ~ q(z|x); ``at(z)`` at given
    z ({site: (P, B, *event)}, P points per datapoint; q(z|x) evaluated there); ``means()`` E_q[z]
    per latent site, (B, *event) (exact where the family has it, else from draws);
    ``posteriors()`` q(z|x) per latent site, the guide run without the model (a site that depends on
    an earlier one: at a draw of it); ``first()`` (name, q) of the guide's first latent site alone,
    the guide stopped there (what an enumeration or relaxation of that site needs to list its states)."""

    draw: Callable[[int], Terms]
    at: Callable[[dict[str, torch.Tensor]], Terms]
    means: Callable[[], dict[str, torch.Tensor]]
    posteriors: Callable[[], dict]
    first: Callable[[], tuple[str, object]]


# ---------------------------------------------------------------------------------------------
# Any program, traced


class _NormalDraws(Messenger):
    """Draws the guide's Normal latent sites (a Normal, reinterpreted as an event or not) itself:
    z = loc + scale * eps, exactly what ``Normal.rsample`` computes from the same noise, and keeps
    log q(z) = sum(-eps^2/2 - log scale) - (n/2) log 2 pi from that noise: the same value and total
    gradient as ``log_prob(z)`` (it is the same function of the parameters with eps fixed), in
    fewer operations.

    Under ``numerics.sharded_noise`` (data-parallel training) the noise is drawn for the whole
    global batch and this process keeps its rows, so the value each datapoint gets does not depend
    on the number of processes. (pyro-vae's other guide families do the same inside their
    distributions; a user's other families draw their own noise.)"""

    def __init__(self) -> None:
        super().__init__()
        self.log_q: dict[str, torch.Tensor] = {}

    def _pyro_sample(self, msg) -> None:
        if msg["is_observed"] or msg["value"] is not None or msg["done"] or msg["args"] or msg["kwargs"]:
            return
        fn, base = msg["fn"], msg["fn"]
        while isinstance(base, Independent):
            base = base.base_dist
        frame = _data_frame(msg)
        if type(base) not in (Normal, pyro.distributions.Normal) or not fn.has_rsample or frame is None:
            return
        shape, event = fn.batch_shape + fn.event_shape, len(fn.event_shape)
        eps = standard_normal(shape, frame.dim - event, base.loc.dtype, base.loc.device)
        msg["value"] = base.loc + eps * base.scale
        msg["done"] = True
        self.log_q[msg["name"]] = functools.partial(_normal_log_prob_of_noise, eps, base.scale, fn.event_shape)


def _normal_log_prob_of_noise(eps: torch.Tensor, scale: torch.Tensor, event_shape: torch.Size) -> torch.Tensor:
    """log N(loc + scale * eps; loc, scale) = sum(-eps^2/2 - log scale) - (n/2) log 2 pi over the event."""
    return _summed(-0.5 * eps.pow(2) - scale.log(), event_shape) - 0.5 * math.prod(event_shape) * LOG_2PI


class _Sites(Messenger):
    """Records the sample sites a program visits, by name (``nodes``, as a Pyro trace has them):
    what the terms read off a trace, without building Pyro's trace graph."""

    def __init__(self) -> None:
        super().__init__()
        self.nodes: dict[str, dict] = {}

    def _pyro_post_sample(self, msg) -> None:
        if msg["infer"].get("_do_not_trace"):
            return
        if msg["name"] in self.nodes:
            raise ProgramError(f"the program has two sample sites named '{msg['name']}' (a plate's name is a site "
                               f"too): every site needs a name of its own.")
        self.nodes[msg["name"]] = msg


class _Replay(Messenger):
    """The model's latent sites take the guide's values (Pyro's ``replay``, over recorded sites)."""

    def __init__(self, sites: dict[str, dict]) -> None:
        super().__init__()
        self.sites = sites

    def _pyro_sample(self, msg) -> None:
        site = self.sites.get(msg["name"])
        if site is None or msg["is_observed"] or site_is_subsample(site):
            return
        msg["value"], msg["infer"], msg["done"] = site["value"], site["infer"], True


class _PosteriorMeans(Messenger):
    """Each latent site of the guide takes the value E_q[z] instead of a draw."""

    def _pyro_sample(self, msg) -> None:
        if msg["is_observed"] or msg["value"] is not None or site_is_subsample(msg):
            return
        msg["value"] = posterior_mean(msg["fn"])
        msg["done"] = True


def _data_frame(site):
    for frame in site["cond_indep_stack"]:
        if frame.name == DATA_PLATE:
            return frame
    return None


def _reducer(site, particles: int, particle_dim: int, role: str) -> Callable[[torch.Tensor], torch.Tensor]:
    """A function from a tensor shaped like ``site``'s batch to (K, B): the site's scale and mask
    applied, every dimension but the particle plate's and the data plate's summed."""
    frame = _data_frame(site)
    if frame is None:
        kind = "observed" if site["is_observed"] else "latent"
        hint = ("wrap the model's and the guide's sample statements in `with pyro.plate(\"data\", x.shape[0]):`"
                if site["is_observed"] else
                "global latents are not supported: make it a parameter (nn.Parameter), or sample it inside the plate")
        raise ProgramError(
            f"{kind} site '{site['name']}' in the {role} is outside the data plate `pyro.plate(\"data\", ...)`: "
            f"pyro-vae's bounds and estimates are per datapoint; {hint}.")
    batch, data_dim = frame.size, frame.dim
    keep = (particle_dim, data_dim) if particles > 1 else (data_dim,)
    scale, mask = site["scale"], site["mask"]
    if particles == 1 and data_dim == -1 and mask is None and not torch.is_tensor(scale) and scale == 1.0:
        def plain(t: torch.Tensor) -> torch.Tensor:  # the common case: the data plate alone, unscaled
            return t.unsqueeze(0) if t.dim() == 1 else reduce(t)
    else:
        plain = None

    def reduce(t: torch.Tensor) -> torch.Tensor:
        t = scale_and_mask(t, scale, mask)
        width = max(t.dim(), -min(keep))
        if t.dim() < width:
            t = t.reshape((1,) * (width - t.dim()) + t.shape)
        others = [d for d in range(-width, 0) if d not in keep]
        if others:
            t = t.sum(others)
        if particles == 1:
            t = t.unsqueeze(0)
        return t if t.shape == (particles, batch) else t.expand(particles, batch)

    return plain or reduce


def _bernoulli_logits(fn) -> torch.Tensor | None:
    """The logits of an (Independent of a) Bernoulli given logits, else None."""
    base = fn
    while isinstance(base, Independent):
        base = base.base_dist
    return base.logits if isinstance(base, Bernoulli) and "logits" in base.__dict__ else None


def _log_prob(site) -> torch.Tensor:
    """The site's log_prob(value): for an (Independent of) Bernoulli given logits, the cross-entropy
    summed over the event and negated after the sum (one pass over the pixels fewer than
    Bernoulli.log_prob's elementwise negation); else the distribution's own."""
    fn, value = site["fn"], site["value"]
    logits = _bernoulli_logits(fn)
    if logits is None:
        return fn.log_prob(value)
    logits, target = torch.broadcast_tensors(logits, value)
    bce = F.binary_cross_entropy_with_logits(logits, target, reduction="none")
    return -_summed(bce, fn.event_shape).expand(fn.batch_shape)


def _total_log_prob(site, reduce) -> torch.Tensor:
    """The site's log-probability summed over everything: for an (Independent of) Bernoulli given
    logits, unscaled and unmasked, in one fused call (-BCE summed); else its per-datapoint terms summed."""
    logits = _bernoulli_logits(site["fn"])
    if logits is not None and site["mask"] is None and site["scale"] == 1.0:
        logits, target = torch.broadcast_tensors(logits, site["value"])
        return -F.binary_cross_entropy_with_logits(logits, target, reduction="sum")
    return reduce(_log_prob(site)).sum()


def _composed(reduce, fn, *args) -> Callable[[], torch.Tensor]:
    return lambda: reduce(fn(*args))


def terms_from_traces(model_trace, guide_trace, particles: int, particle_dim: int,
                      conditioned: frozenset[str] = frozenset(), drawn_log_q: dict | None = None) -> Terms:
    """The terms of a guide trace and the model trace replayed on it, the protocol checked.

    Latent sites are the guide's sample sites (``conditioned``: those given values rather than
    drawn); every other sample site of the model must be observed. ``drawn_log_q``: log q of the
    sites whose draws computed it from their noise (``_NormalDraws``)."""
    guide_sites = {}
    for name, site in guide_trace.nodes.items():
        if site["type"] != "sample" or site_is_subsample(site):
            continue
        if site["is_observed"] and name not in conditioned:
            raise ProgramError(
                f"the guide observes site '{name}': a guide declares q(z|x) over latent sites only; "
                f"observe data in the model.")
        guide_sites[name] = site
    observed, reducers = [], []
    for name, site in model_trace.nodes.items():
        if site["type"] != "sample" or name in guide_sites or site_is_subsample(site):
            continue
        if not site["is_observed"]:
            raise ProgramError(
                f"the model samples latent site '{name}' but the guide has no site '{name}': every latent "
                f"of p(z) needs its q(z|x) (guide sites: {', '.join(guide_sites) or 'none'}).")
        observed.append(name)
        reducers.append((site, _reducer(site, particles, particle_dim, "model")))
    if OBSERVED not in observed:
        raise ProgramError(
            f"the model has no observed site \"{OBSERVED}\": declare the data with "
            f"`pyro.sample(\"{OBSERVED}\", p_x_given_z, obs=x)` inside the data plate"
            + (f" (observed sites: {', '.join(observed)})." if observed else "."))
    latents, non_reparameterized = {}, []
    for name, guide_site in guide_sites.items():
        model_site = model_trace.nodes.get(name)
        if model_site is None or model_site["type"] != "sample":
            model_latents = [n for n, s in model_trace.nodes.items()
                             if s["type"] == "sample" and n not in observed and not site_is_subsample(s)]
            raise ProgramError(
                f"the guide samples site '{name}' but the model has no site '{name}': the guide's latent sites "
                f"must be the model's (model latents: {', '.join(model_latents) or 'none'}).")
        value, q, p = guide_site["value"], guide_site["fn"], model_site["fn"]
        per_datapoint = _reducer(guide_site, particles, particle_dim, "guide")
        model_per_datapoint = _reducer(model_site, particles, particle_dim, "model")
        drawn = drawn_log_q.get(name) if drawn_log_q else None
        event = len(q.event_shape)
        dims = (particle_dim - event if particles > 1 else None, _data_frame(guide_site).dim - event)
        latents[name] = LatentSite(
            name, value, q, p,
            _composed(per_datapoint, drawn) if drawn is not None else _composed(per_datapoint, q.log_prob, value),
            _composed(model_per_datapoint, p.log_prob, value), per_datapoint, dims)
        if not q.has_rsample and name not in conditioned:
            non_reparameterized.append(name)
    if not latents:
        raise ProgramError("the guide has no latent site: a model program needs at least one latent z ~ q(z|x).")
    return Terms(particles, latents, lambda: _total([reduce(_log_prob(site)) for site, reduce in reducers]),
                 lambda: _total([_total_log_prob(site, reduce) for site, reduce in reducers]),
                 non_reparameterized=tuple(non_reparameterized))


class TraceSource:
    """Terms of any model/guide pair, read off Pyro traces (see the module docstring).

    ``max_plate_nesting`` (the plates a site may sit in, the data plate included) is guessed from
    one run of the pair the first time it is needed, under a seed of its own (the caller's random
    stream is not disturbed), as Pyro's ELBOs guess it."""

    def __init__(self, model: Callable, guide: Callable, max_plate_nesting: int | None = None) -> None:
        self.model, self.guide = model, guide
        self.max_plate_nesting = max_plate_nesting

    def nesting(self, *args, **kwargs) -> int:
        if self.max_plate_nesting is None:
            with torch.random.fork_rng(), torch.no_grad(), poutine.block():
                guide_trace = poutine.trace(self.guide).get_trace(*args, **kwargs)
                model_trace = poutine.trace(poutine.replay(self.model, trace=guide_trace)).get_trace(*args, **kwargs)
            dims = [frame.dim for trace in (model_trace, guide_trace) for site in trace.nodes.values()
                    if site["type"] == "sample" for frame in site["cond_indep_stack"] if frame.vectorized]
            self.max_plate_nesting = -min(dims) if dims else 0
        return self.max_plate_nesting

    def _traces(self, particles: int, args, kwargs, condition: dict | None = None, means: bool = False):
        particle_dim = -self.nesting(*args, **kwargs) - 1
        guide, model = self.guide, self.model
        if condition is not None:
            guide = poutine.condition(guide, data=condition)
        if means:
            guide = _PosteriorMeans()(guide)
        particle = (lambda: pyro.plate(PARTICLE_PLATE, particles, dim=particle_dim)) if particles > 1 else \
            contextlib.nullcontext
        draws, guide_sites, model_sites = _NormalDraws(), _Sites(), _Sites()
        with guide_sites, draws, particle():
            guide(*args, **kwargs)
        with model_sites, _Replay(guide_sites.nodes), particle():
            model(*args, **kwargs)
        return model_sites, guide_sites, particle_dim, draws.log_q

    def draw(self, x: torch.Tensor, particles: int, *args, **kwargs) -> Terms:
        """Terms at K = ``particles`` draws z ~ q(z|x); extra arguments go to model and guide."""
        model_trace, guide_trace, particle_dim, log_q = self._traces(particles, (x, *args), kwargs)
        return terms_from_traces(model_trace, guide_trace, particles, particle_dim, drawn_log_q=log_q)

    def at(self, x: torch.Tensor, z: dict[str, torch.Tensor]) -> Terms:
        """Terms at given z ({site: (P, B, *event)}): q(z|x), p(z) and p(x|z) evaluated there."""
        points = next(iter(z.values())).shape[0]
        model_trace, guide_trace, particle_dim, _ = self._traces(points, (x,), {}, condition=z if points > 1 else
                                                                 {k: v[0] for k, v in z.items()})
        return terms_from_traces(model_trace, guide_trace, points, particle_dim, frozenset(z))

    def means(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        """E_q[z|x] per latent site (exact where the family has it, else from draws)."""
        _, guide_trace, _, _ = self._traces(1, (x,), {}, means=True)
        return {n: s["value"] for n, s in guide_trace.nodes.items()
                if s["type"] == "sample" and not s["is_observed"] and not site_is_subsample(s)}

    def posteriors(self, x: torch.Tensor) -> dict:
        """q(z|x) per latent site: the guide alone, traced (sites after the first at a draw of those
        before), its draws from a forked random stream (the caller's draws are as without this call)."""
        with poutine.block(), torch.random.fork_rng(devices=[x.device] if x.device.type == "cuda" else []):
            trace = poutine.trace(self.guide).get_trace(x)
        return {n: s["fn"] for n, s in trace.nodes.items()
                if s["type"] == "sample" and not s["is_observed"] and not site_is_subsample(s)}

    def first(self, x: torch.Tensor) -> tuple[str, object]:
        """(name, q) of the guide's first latent site: the guide run up to that site and stopped
        (``poutine.escape``), so nothing after it is computed; the caller's random stream untouched."""
        def latent(msg) -> bool:
            return msg["type"] == "sample" and not msg["is_observed"] and not site_is_subsample(msg)

        with poutine.block(), torch.random.fork_rng(devices=[x.device] if x.device.type == "cuda" else []):
            try:
                poutine.escape(self.guide, escape_fn=latent)(x)
            except NonlocalExit as stop:
                return stop.site["name"], stop.site["fn"]
        raise ProgramError("the guide has no latent site: a model program needs at least one latent z ~ q(z|x).")

    @contextmanager
    def given(self, x: torch.Tensor) -> Iterator[Given]:
        yield Given(draw=lambda k: self.draw(x, k), at=lambda z: self.at(x, z), means=lambda: self.means(x),
                    posteriors=lambda: self.posteriors(x), first=lambda: self.first(x))


def source_for(program):
    """The terms source of a model program: :class:`DirectSource` for the stock VAE whose
    ``model`` and ``guide`` are ``VAE``'s own (a subclass may change its components, not its
    program), :class:`TraceSource` for everything else, a ``VAE`` subclass that overrides either
    included."""
    from .vae import VAE

    if isinstance(program, VAE) and _own(program, "model", VAE) and _own(program, "guide", VAE):
        return DirectSource(program)
    return TraceSource(program.model, program.guide)


def _own(obj, name: str, cls: type) -> bool:
    """Whether ``obj.name`` is ``cls``'s method itself (not overridden by a subclass or the instance)."""
    method = getattr(obj, name)
    return getattr(method, "__func__", None) is getattr(cls, name) and name not in vars(obj)


def log_mean_exp(log_w: torch.Tensor, dim: int = 0) -> torch.Tensor:
    """log (1/K) sum_k exp(log_w_k) along ``dim``."""
    return torch.logsumexp(log_w, dim) - math.log(log_w.shape[dim])
