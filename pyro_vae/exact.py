"""Exact evidence and exact posteriors, in the cases where the intractable becomes tractable.

In general log p(x) = log \\int p(x|z) p(z) dz and p(z|x) = p(x|z) p(z) / p(x) have no closed form;
``metrics.py`` estimates them. Two cases are exact, and we use them to check those estimates:

* **Linear-Gaussian models**: decoder x = W z + b (the ``mlp`` network with ``hidden = []``),
  Gaussian likelihood with diagonal noise covariance Psi (a fixed, global or per-pixel scale), and a
  Gaussian prior N(m, diag s^2) (``standard-normal`` or ``learned-gaussian``). Then

      p(x)   = N(x; W m + b, W diag(s^2) W^T + Psi)
      p(z|x) = N(mu, Sigma),  Sigma = (diag(s^-2) + W^T Psi^-1 W)^-1,  mu = Sigma (W^T Psi^-1 (x - b) + m / s^2)

  and, for a diagonal-Gaussian q, the ELBO and KL(q(z|x) || p(z|x)) are closed forms too.

* **Any model program with one 2-D latent site**: log p(x, z) is evaluated on a grid of z and normalized
  numerically: log p(x) = log sum_ij p(x, z_ij) h_1 h_2 (midpoint rule) and p(z|x) on the grid.
  The grid adapts to each x: a coarse pass over the prior's and the guide's high-mass regions finds
  where p(x, z) lives; a fine grid over that box resolves both q(z|x) and the posterior (cells of
  at most a quarter of their standard deviations). The quadrature reports its own error estimate,
  the change between the fine grid and one of half its resolution; the resolution doubles while
  that change exceeds ``tolerance``.

Everything is in nats per datapoint. The grid reads log p(x|z), log p(z) and log q(z|x) at the
grid points from the program's terms (``terms.py``), so it serves any program, stock or not.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch
from torch.distributions import LowRankMultivariateNormal, MultivariateNormal, kl_divergence

from .distributions import diagonal_gaussian_parameters, enumerate_states
from .guides import DiagonalGaussianGuide
from .likelihoods import GaussianLikelihood
from .metrics import chunk_pairs_for, chunked_draws, log_evidence_diagnostics
from .networks import MLPNetwork
from .numerics import seeded
from .priors import LearnedGaussianPrior, StandardNormalPrior
from .programs import Program, as_program, checked_program


@dataclass
class ExactEvidence:
    """Exact (or quadrature) values per datapoint, with the method and its error estimate."""

    method: str
    log_px: torch.Tensor
    elbo: torch.Tensor
    kl_q_posterior: torch.Tensor
    log_px_error: torch.Tensor  # 0 for closed forms; the quadrature's own error estimate otherwise
    grids: list = field(default_factory=list)  # 2-D: one PosteriorGrid per datapoint, for pictures

    @property
    def n(self) -> int:
        return self.log_px.shape[0]

    @classmethod
    def concat(cls, parts: list["ExactEvidence"]) -> "ExactEvidence":
        """One result from several (of the same method), in order."""
        cat = lambda name: torch.cat([getattr(p, name).cpu().double() for p in parts])  # noqa: E731
        return cls(parts[0].method, cat("log_px"), cat("elbo"), cat("kl_q_posterior"), cat("log_px_error"),
                   [g for p in parts for g in p.grids])


# ---------------------------------------------------------------------------------------------
# Linear-Gaussian models


@dataclass
class LinearGaussian:
    """x = W z + b + noise, noise ~ N(0, diag psi), z ~ N(m, diag s^2): all in closed form."""

    w: torch.Tensor  # (D, L)
    b: torch.Tensor  # (D,)
    psi: torch.Tensor  # (D,) noise variances
    m: torch.Tensor  # (L,)
    s: torch.Tensor  # (L,) prior scales

    @classmethod
    def of(cls, program) -> "LinearGaussian | None":
        """The closed-form model of a stock VAE program if it is linear-Gaussian, else None (any
        other program: its structure is code, not something to read closed forms off)."""
        program = as_program(program)
        if not program.direct:
            return None
        vae = program.vae
        if not (isinstance(vae.network, MLPNetwork) and vae.network.hidden == []):
            return None
        if not isinstance(vae.likelihood, GaussianLikelihood):
            return None
        if not isinstance(vae.prior, (StandardNormalPrior, LearnedGaussianPrior)):
            return None
        (layer,) = vae.decoder.body
        d = math.prod(vae.data_shape)
        with torch.no_grad():
            psi = vae.likelihood.pixel_scale().expand(vae.data_shape).reshape(d) ** 2
            prior = vae.p_z().base_dist
            m = prior.loc.expand(vae.latent_dim)
            s = prior.scale.expand(vae.latent_dim)
            return cls(layer.weight.detach(), layer.bias.detach(), psi.detach(), m.detach(), s.detach())

    def marginal(self) -> LowRankMultivariateNormal:
        """p(x) = N(W m + b, (W diag s)(W diag s)^T + diag psi)."""
        return LowRankMultivariateNormal(self.w @ self.m + self.b, self.w * self.s, self.psi)

    def posterior(self, x: torch.Tensor) -> MultivariateNormal:
        """p(z|x) for flattened x (batch, D)."""
        precision = torch.diag(self.s**-2) + (self.w.T / self.psi) @ self.w
        cov = torch.linalg.inv(precision)
        cov = 0.5 * (cov + cov.T)
        mean = ((x - self.b) / self.psi @ self.w + self.m / self.s**2) @ cov
        return MultivariateNormal(mean, covariance_matrix=cov.expand(x.shape[0], -1, -1))

    def elbo(self, x: torch.Tensor, loc: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
        """ELBO for q = N(loc, diag scale^2): E_q log N(x; W z + b, Psi) - KL(q || p(z)), in closed form."""
        mean_x = loc @ self.w.T + self.b
        expected = (-0.5 * ((x - mean_x) ** 2 + (scale**2) @ (self.w**2).T) / self.psi
                    - 0.5 * torch.log(2 * math.pi * self.psi)).sum(-1)
        kl_prior = (torch.log(self.s / scale) + (scale**2 + (loc - self.m) ** 2) / (2 * self.s**2) - 0.5).sum(-1)
        return expected - kl_prior


@torch.no_grad()
def linear_gaussian_evidence(program, x: torch.Tensor) -> ExactEvidence | None:
    model = LinearGaussian.of(program)
    if model is None:
        return None
    flat = x.flatten(1)
    log_px = model.marginal().log_prob(flat)
    q = as_program(program).vae.q_z_given_x(x)
    diag = diagonal_gaussian_parameters(q)
    if diag is None:  # another guide family: the ELBO by quadrature over samples is not exact; say so
        return None
    loc, scale = diag
    q_mvn = MultivariateNormal(loc, scale_tril=torch.diag_embed(scale))
    kl = kl_divergence(q_mvn, model.posterior(flat))
    return ExactEvidence("closed form (linear-Gaussian)", log_px, model.elbo(flat, loc, scale), kl,
                         torch.zeros_like(log_px))


# ---------------------------------------------------------------------------------------------
# 2-D latents: adaptive grid quadrature


@dataclass
class PosteriorGrid:
    """log p(x, z) of one datapoint on a regular 2-D grid, and what follows from it."""

    axes: tuple[torch.Tensor, torch.Tensor]  # cell midpoints along z_1 and z_2
    log_joint: torch.Tensor  # (n1, n2)
    log_q: torch.Tensor  # (n1, n2)
    log_px: float
    error: float

    @property
    def log_posterior(self) -> torch.Tensor:
        return self.log_joint - self.log_px

    @property
    def cell(self) -> float:
        return float((self.axes[0][1] - self.axes[0][0]) * (self.axes[1][1] - self.axes[1][0]))


def _grid(box: torch.Tensor, n: tuple[int, int]) -> tuple[tuple[torch.Tensor, torch.Tensor], torch.Tensor]:
    """Midpoints of an n1 x n2 grid over box (2, 2) = [[lo1, hi1], [lo2, hi2]], and the points (n1*n2, 2)."""
    axes = tuple(lo + (hi - lo) * (torch.arange(k, dtype=box.dtype, device=box.device) + 0.5) / k
                 for (lo, hi), k in zip(box, n))
    points = torch.stack(torch.meshgrid(*axes, indexing="ij"), -1).reshape(-1, 2)
    return axes, points


def _latent_site(program: Program) -> str:
    """The name of the program's one 2-D latent site (grid quadrature needs exactly that)."""
    if program.latent_dim != 2 or program.discrete_latents:
        raise ValueError(f"grid quadrature needs one 2-D latent site; this program's latents are {program.latent_shapes}")
    (name,) = program.latent_shapes
    return name


def _grid_terms(at_x, name: str, points: torch.Tensor, chunk: int) -> tuple[torch.Tensor, torch.Tensor]:
    """log p(x|z) + log p(z) and log q(z|x) for one datapoint at points (P, 2), chunk by chunk: each (P,)."""
    joint, log_q = [], []
    for start in range(0, points.shape[0], chunk):
        z = points[start : start + chunk].unsqueeze(1)  # (p, 1, 2): grid points as a particle dimension
        terms = at_x.at({name: z})
        joint.append((terms.log_likelihood + terms.log_prior)[:, 0])
        log_q.append(terms.log_q[:, 0])
    return torch.cat(joint), torch.cat(log_q)


def _quadrature(at_x, name, box, n, chunk) -> PosteriorGrid:
    axes, points = _grid(box, n)
    log_joint, log_q = _grid_terms(at_x, name, points, chunk)
    cell = float((box[0, 1] - box[0, 0]) * (box[1, 1] - box[1, 0])) / (n[0] * n[1])
    log_px = (torch.logsumexp(log_joint, 0) + math.log(cell)).item()
    return PosteriorGrid(axes, log_joint.reshape(n), log_q.reshape(n), log_px, float("nan"))


def _prior_box(program: Program, name: str) -> torch.Tensor:
    z = program.prior_draws(20000)[name].reshape(-1, 2).cpu()
    lo, hi = torch.quantile(z, 1e-4, dim=0), torch.quantile(z, 1 - 1e-4, dim=0)
    pad = 0.1 * (hi - lo)
    return torch.stack([lo - pad, hi + pad], 1)


@torch.no_grad()
def grid_posterior(program, x: torch.Tensor, *, tolerance: float = 1e-3, max_points: int = 512,
                   chunk_pairs: int | None = None) -> PosteriorGrid:
    """Adaptive quadrature of p(x, z) over z in R^2 for one datapoint x of shape (1, *data_shape).

    The only random draws (the prior's extent, and q's mean and spread for guides without closed
    forms) come from a fixed seed under ``fork_rng``: the result is a function of the model and x."""
    program = checked_program(program, x)
    name = _latent_site(program)
    chunk_pairs = chunk_pairs_for(program, x.device, chunk_pairs)
    device = x.device
    with program.source.given(x) as at_x:
        with seeded(0, x.device):
            q = at_x.draw(1).latents[name].q
            try:
                q_mean, q_sd = q.mean.reshape(-1, 2)[0], q.stddev.reshape(-1, 2)[0]
            except NotImplementedError:  # a guide without closed-form moments: estimate them
                z = at_x.draw(4000).latents[name].value.reshape(4000, 2)
                q_mean, q_sd = z.mean(0), z.std(0)
            prior_box = _prior_box(program, name).to(device)
        q_box = torch.stack([q_mean - 8 * q_sd, q_mean + 8 * q_sd], 1)
        coarse_box = torch.stack([torch.minimum(q_box[:, 0], prior_box[:, 0]),
                                  torch.maximum(q_box[:, 1], prior_box[:, 1])], 1)
        # coarse pass: where does p(x, z) have mass?
        axes, points = _grid(coarse_box, (96, 96))
        log_joint, _ = _grid_terms(at_x, name, points, chunk_pairs)
        keep = points[log_joint > log_joint.max() - 30.0]
        step = (coarse_box[:, 1] - coarse_box[:, 0]) / 96
        mass_box = torch.stack([keep.min(0).values - 2 * step, keep.max(0).values + 2 * step], 1)
        weights = torch.softmax(log_joint, 0)
        post_sd = ((weights[:, None] * (points - (weights[:, None] * points).sum(0)) ** 2).sum(0)).sqrt()
        fine_q_box = torch.stack([q_mean - 7 * q_sd, q_mean + 7 * q_sd], 1)
        box = torch.stack([torch.minimum(mass_box[:, 0], fine_q_box[:, 0]),
                           torch.maximum(mass_box[:, 1], fine_q_box[:, 1])], 1)
        # fine grid: cells of at most a quarter of q's and the (coarsely resolved) posterior's sd
        width = box[:, 1] - box[:, 0]
        target = torch.minimum(q_sd, torch.maximum(post_sd, step / 4)) / 4
        n = [int(min(max_points, max(32, math.ceil(w / t)))) for w, t in zip(width.tolist(), target.tolist())]
        n = [k + k % 2 for k in n]
        while True:
            fine = _quadrature(at_x, name, box, (n[0], n[1]), chunk_pairs)
            half = _quadrature(at_x, name, box, (n[0] // 2, n[1] // 2), chunk_pairs)
            fine.error = abs(fine.log_px - half.log_px)
            if fine.error <= tolerance or max(n) >= max_points:
                return fine
            n = [min(max_points, 2 * k) for k in n]


@torch.no_grad()
def grid_evidence(program, x: torch.Tensor, **options) -> ExactEvidence:
    """Quadrature log p(x), ELBO and KL(q(z|x) || p(z|x)) for every datapoint of x (one 2-D latent site)."""
    program = checked_program(program, x)
    log_px, elbo, kl, err, grids = [], [], [], [], []
    for i in range(x.shape[0]):
        g = grid_posterior(program, x[i : i + 1], **options)
        q_mass = (g.log_q.exp() * g.cell)
        # E_q[log p(x, z) - log q(z|x)] on the grid (q renormalized to the grid's cells)
        elbo_i = (q_mass * (g.log_joint - g.log_q)).sum() / q_mass.sum()
        log_px.append(g.log_px)
        elbo.append(elbo_i.item())
        kl.append(g.log_px - elbo_i.item())
        err.append(g.error)
        grids.append(g)
    t = lambda v: torch.tensor(v, dtype=torch.float64)  # noqa: E731
    return ExactEvidence("quadrature on an adaptive 2-D grid", t(log_px), t(elbo), t(kl), t(err), grids)


def closed_form_available(program) -> bool:
    """A linear-Gaussian stock VAE with a diagonal-Gaussian guide: everything in closed form."""

    program = as_program(program)
    return LinearGaussian.of(program) is not None and isinstance(program.vae.posterior, DiagonalGaussianGuide)


def exact_evidence(program, x: torch.Tensor, **grid_options) -> ExactEvidence | None:
    """Exact values where a method exists: closed form for linear-Gaussian models, quadrature for
    one 2-D latent site; None otherwise."""
    program = checked_program(program, x)
    result = linear_gaussian_evidence(program, x)
    if result is not None:
        return result
    if program.discrete_latents:
        return enumeration_evidence(program, x, chunk_pairs=grid_options.get("chunk_pairs"))
    if program.latent_dim == 2:
        return grid_evidence(program, x, **grid_options)
    return None


# ---------------------------------------------------------------------------------------------
# Discrete latents, every state enumerated

#: the most latent states the exact values enumerate (each costs one decoder pass per datapoint)
ENUMERATION_MAX_STATES = 4096


def enumerable_site(program) -> tuple[str, int] | None:
    """(name, number of states) of the program's latent when it is one discrete site whose every
    state can be listed (``distributions.enumerable``: one-hot groups, binary units), else None."""
    program = as_program(program)
    states = program.enumerable_states
    if len(program.latent_shapes) != 1 or not states:
        return None
    ((name, count),) = states.items()
    return name, count


def enumeration_available(program, max_states: int = ENUMERATION_MAX_STATES) -> bool:
    """Whether the program's latent is one discrete site of at most ``max_states`` states: its
    exact values (and the ELBO's exact gradient) are sums over every state."""
    site = enumerable_site(program)
    return site is not None and site[1] <= max_states


@torch.no_grad()
def enumeration_evidence(program, x: torch.Tensor, *, max_states: int = ENUMERATION_MAX_STATES,
                         chunk_pairs: int | None = None) -> ExactEvidence | None:
    """Exact log p(x) = log sum_z p(x|z) p(z), ELBO = sum_z q(z|x) [log p(x, z) - log q(z|x)] and
    KL(q(z|x) || p(z|x)) = log p(x) - ELBO for every datapoint, summing over every state of one
    discrete latent site (at most ``max_states`` of them; None beyond, or for another latent)."""
    program = checked_program(program, x)
    if not enumeration_available(program, max_states):
        return None
    name, _ = enumerable_site(program)
    joint, log_q = [], []
    with program.source.given(x) as at_x:
        (q,) = at_x.posteriors().values()
        states = enumerate_states(q)
        per_chunk = max(1, chunk_pairs_for(program, x.device, chunk_pairs) // x.shape[0])
        for start in range(0, states.shape[0], per_chunk):
            z = states[start : start + per_chunk, None, :].expand(-1, x.shape[0], -1)
            terms = at_x.at({name: z})
            joint.append(terms.log_likelihood + terms.log_prior)
            log_q.append(terms.log_q)
    joint, log_q = torch.cat(joint).double(), torch.cat(log_q).double()
    log_px = torch.logsumexp(joint, 0)
    elbo = (log_q.exp() * (joint - log_q)).sum(0)
    return ExactEvidence("enumeration of every latent state", log_px.cpu(), elbo.cpu(), (log_px - elbo).cpu(),
                         torch.zeros_like(log_px).cpu())


# ---------------------------------------------------------------------------------------------
# The decomposition log p(x) = ELBO + KL(q || p(z|x)), ELBO = E_q[log p(x|z)] - KL(q || p(z))


def _moments(chunks: list[torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
    """Mean over samples (dim 0) and its standard error."""
    v = torch.cat(chunks).double()
    return v.mean(0), v.std(0) / math.sqrt(v.shape[0])


@torch.no_grad()
def monte_carlo_terms(program, x: torch.Tensor, samples: int, chunk_pairs: int | None = None) -> dict:
    """E_q[log p(x|z)], KL(q(z|x) || p(z)) and the ELBO per datapoint from ``samples`` draws z ~ q,
    each as (mean, standard error); the KL in closed form (standard error 0) where every latent
    site has one."""
    program = checked_program(program, x)
    recon, ratio, closed = [], [], None
    with program.source.given(x) as at_x:
        for terms in chunked_draws(program, at_x, x, samples, chunk_pairs):
            recon.append(terms.log_likelihood)
            ratio.append(terms.log_q - terms.log_prior)
            kl, analytic = terms.kl()
            closed = kl[0] if analytic and len(terms.latents) == 1 else None  # (several sites: per draw)
    recon_mean, recon_se = _moments(recon)
    if closed is not None:
        kl_mean, kl_se, kl_how = closed.double(), torch.zeros(x.shape[0], dtype=torch.float64), "closed form"
        elbo_mean, elbo_se = recon_mean - kl_mean, recon_se
    else:
        kl_mean, kl_se = _moments(ratio)
        kl_how = "Monte Carlo"
        elbo_mean, elbo_se = _moments([r - k for r, k in zip(recon, ratio)])
    return {"reconstruction": (recon_mean, recon_se), "kl_prior": (kl_mean, kl_se), "kl_how": kl_how,
            "elbo": (elbo_mean, elbo_se)}


@torch.no_grad()
def decomposition(program, x: torch.Tensor, *, samples: int = 5000, seed: int = 0, chunk_pairs: int | None = None,
                  **grid_options) -> tuple[list[dict], ExactEvidence | None]:
    """Every term of log p(x) = ELBO + KL(q||p(z|x)) and ELBO = E_q[log p(x|z)] - KL(q||p(z)) for
    each datapoint of x: exact where a method exists, otherwise estimated with a standard error."""
    program = checked_program(program, x)
    chunk_pairs = chunk_pairs_for(program, x.device, chunk_pairs)  # resolved once for the three estimates
    with seeded(seed, x.device):
        importance = log_evidence_diagnostics(program, x, samples, chunk_pairs)
        mc = monte_carlo_terms(program, x, samples, chunk_pairs)
    exact = exact_evidence(program, x, chunk_pairs=chunk_pairs, **grid_options) if \
        program.latent_dim == 2 or program.discrete_latents else \
        linear_gaussian_evidence(program, x)
    rows = []
    for i in range(x.shape[0]):
        row = {
            "importance": {"log_px": importance["log_px"][i].item(), "stderr": importance["stderr"][i].item(),
                           "ess": importance["ess"][i].item(), "samples": samples},
            "reconstruction": [v[i].item() for v in mc["reconstruction"]],
            "kl_prior": [v[i].item() for v in mc["kl_prior"]],
            "kl_prior_how": mc["kl_how"],
            "elbo_mc": [v[i].item() for v in mc["elbo"]],
        }
        if exact is not None:
            row["exact"] = {"method": exact.method, "log_px": exact.log_px[i].item(),
                            "error": exact.log_px_error[i].item(), "elbo": exact.elbo[i].item(),
                            "kl_posterior": exact.kl_q_posterior[i].item()}
        rows.append(row)
    return rows, exact


def format_decomposition(row: dict, title: str) -> str:
    """One datapoint's decomposition as aligned text (nats)."""
    imp, ex = row["importance"], row.get("exact")
    lines = [title]

    def line(label: str, value: float, note: str, se: float | None = None) -> None:
        error = f" ± {se:.3f}" if se is not None else ""
        lines.append(f"  {label:<34} {value:>11.3f}{error:<10} {note}")

    if ex:
        line("log p(x)", ex["log_px"], f"exact: {ex['method']}" + (
            f" (quadrature error ~{ex['error']:.1e})" if ex["error"] else ""))
        line("  importance sampled", imp["log_px"], f"K = {imp['samples']}, ESS {imp['ess']:.0f}", imp["stderr"])
        line("= ELBO", ex["elbo"], "exact")
        line("+ KL(q(z|x) || p(z|x))", ex["kl_posterior"], "exact (the term the ELBO leaves out)")
    else:
        line("log p(x)", imp["log_px"], f"importance sampled, K = {imp['samples']}, ESS {imp['ess']:.0f}", imp["stderr"])
        line("= ELBO", row["elbo_mc"][0], f"Monte Carlo, {imp['samples']} samples", row["elbo_mc"][1])
        gap_se = math.hypot(imp["stderr"], row["elbo_mc"][1])
        line("+ KL(q(z|x) || p(z|x))", imp["log_px"] - row["elbo_mc"][0], "estimated as log p(x) - ELBO", gap_se)
    line("ELBO", row["elbo_mc"][0], f"Monte Carlo, {imp['samples']} samples" + (
        f"; exact {ex['elbo']:.3f}" if ex else ""), row["elbo_mc"][1])
    line("= E_q[log p(x|z)]", row["reconstruction"][0], "Monte Carlo", row["reconstruction"][1])
    kl_se = row["kl_prior"][1] if row["kl_prior_how"] != "closed form" else None
    line("- KL(q(z|x) || p(z))", row["kl_prior"][0], row["kl_prior_how"], kl_se)
    return "\n".join(lines)
