"""Evidence and its bounds, estimated: the intractable half of the VAE, in numbers.

For any model program (the stock VAE, a subclass, your own), from its per-particle terms
(``terms.py``: the same numbers the objectives are written over). Per datapoint x, in nats:

* ELBO(x) = E_q[log p(x|z)] - KL(q(z|x) || p(z))       (reconstruction term minus KL to the prior;
  the KL in closed form where a formula exists for the guide/prior pair, else by Monte Carlo);
* log p(x) ~= log (1/K) sum_k p(x|z_k) p(z_k) / q(z_k|x),  z_k ~ q(z|x)   (importance sampling,
  Burda et al. 2016: a lower bound in expectation that tightens to log p(x) as K grows);
* gap(x) = log p(x) - ELBO(x), an estimate of KL(q(z|x) || p(z|x)), the term the ELBO drops;
* active units: latent coordinates u whose posterior mean moves with the data,
  Var_x(E_q[z_u]) > 0.01 (Burda et al. 2016);
* bits/dim = -log p(x) / (D log 2) for D pixels.

All estimates run under a seed of their own (``torch.random.fork_rng``), so the same seed gives the
same numbers and evaluation never disturbs the training random stream. Memory is bounded by
``chunk_pairs`` (datapoint, sample) pairs at a time, whatever K and the dataset size: the importance
weights are reduced chunk by chunk with a streaming log-sum-exp. Left unset, the chunk suits the
device (:func:`chunk_pairs_for`).

Evaluating a whole dataset (batches, a resumable store, exact values where a method exists) is
``evaluation.py``'s, over these estimates.
"""

from __future__ import annotations

import math
import warnings
from typing import Iterator

import torch

from .numerics import seeded
from .distributions import enumerate_states
from .labels import Estimates
from .objectives import EnumeratedELBO
from .programs import Program, as_program, checked_program
from .terms import POSTERIOR_MEAN_SAMPLES, Terms, posterior_mean  # noqa: F401  (re-exported)

ACTIVE_UNIT_THRESHOLD = 0.01
CPU_CHUNK_BYTES = 12 * 2**20
ACCELERATOR_CHUNK_PAIRS = 16384
#: the most states of y the enumerated evaluation sums over
ENUMERATED_EVIDENCE_MAX_STATES = 4096


def _parameter(module: torch.nn.Module) -> torch.Tensor:
    p = next(module.parameters(), None)
    return p if p is not None else torch.zeros(())


def widest_activation(program) -> int:
    """Numbers per latent draw in the widest layer output of p(x|z), from one probe pass of one
    draw and one datapoint (in eval mode, so that layers such as batch norm accept the single draw;
    the modes are restored). For the stock VAE the decoder's layers and the likelihood's own
    networks (an autoregressive likelihood's); for another program every module that the model's
    run and log p(x|z) reach."""
    program = as_program(program)
    widths = [1]

    def record(module, inputs, output) -> None:
        if torch.is_tensor(output):
            widths.append(output.numel())

    vae = program.vae if program.direct else None
    modules = [vae.decoder, vae.likelihood] if vae is not None else [program.module]
    modes = [m.training for m in modules]
    hooks = [m.register_forward_hook(record) for module in modules for m in module.modules()]
    try:
        for module in modules:
            module.eval()
        with torch.no_grad(), torch.random.fork_rng():
            weight = _parameter(modules[0])
            if vae is not None:
                head = vae.decoder(torch.zeros(1, vae.latent_dim, device=weight.device, dtype=weight.dtype))
                if any(True for _ in vae.likelihood.children()):  # layers of its own (an autoregressive likelihood's)
                    vae.likelihood(head).log_prob(torch.zeros(1, *vae.data_shape, device=weight.device, dtype=weight.dtype))
            else:
                site = program.probing(1)._observed_site(program._placeholder(1))
                site["fn"].log_prob(site["value"])  # the value the site observed (a program may reshape x)
    finally:
        for module, mode in zip(modules, modes):
            module.train(mode)
        for hook in hooks:
            hook.remove()
    return max(widths)


def chunk_pairs_for(program, device: torch.device, chunk_pairs: int | None = None) -> int:
    """``chunk_pairs`` if given, else the default for ``program`` on ``device``: on the CPU as many
    (datapoint, sample) pairs as keep p(x|z)'s widest activation (:func:`widest_activation`) near
    12 MiB (between 64 and 16384 pairs), on an accelerator 16384.

    On the CPU glibc serves an allocation above its mmap threshold (adaptive, at most 32 MiB) with
    fresh pages, returned when it is freed, so a tensor that large is page-faulted in anew every
    chunk and never stays in cache: 16384 pairs of a 784-pixel decoder output are 51 MiB. Measured
    in ``benchmarks/eval_chunks.py`` (the widest activation is a proxy: several tensors of about its
    size are alive at once). An accelerator wants large chunks to fill it.
    """
    if chunk_pairs is not None:
        return chunk_pairs
    if torch.device(device).type != "cpu":
        return ACCELERATOR_CHUNK_PAIRS
    program = as_program(program)
    per_pair = widest_activation(program) * _parameter(program.module).element_size()
    return max(64, min(ACCELERATOR_CHUNK_PAIRS, CPU_CHUNK_BYTES // per_pair))


def analytic_kl_available(program) -> bool:
    """Whether KL(q(z|x) || p(z)) has a closed form at every latent site of the program."""
    program = as_program(program)
    with torch.no_grad(), torch.random.fork_rng():
        x = program._placeholder(1)
        with program.probing(1).source.given(x) as at_x:
            return at_x.draw(1).kl()[1]


@torch.no_grad()
def elbo_terms(program, x: torch.Tensor, num_samples: int = 1, posterior_means: bool = True) -> dict[str, torch.Tensor]:
    """Per-datapoint reconstruction E_q[log p(x|z)], KL(q||p(z)) and ELBO, with ``num_samples`` z's
    (the KL in closed form where every latent site has one, else by Monte Carlo), and
    (``posterior_means``, where the latent is one continuous vector) E_q[z], which a guide without
    a closed-form mean pays for in draws."""
    return _elbo_terms(checked_program(program, x), x, num_samples, posterior_means)


def _elbo_terms(program: Program, x: torch.Tensor, num_samples: int, posterior_means: bool) -> dict[str, torch.Tensor]:
    with program.source.given(x) as at_x:
        terms = at_x.draw(num_samples)
        reconstruction = terms.log_likelihood.mean(0)
        kl, analytic = terms.kl()
        kl = kl.mean(0)
        single = len(terms.latents) == 1  # several sites: each KL given the draws of the sites before it
        out = {"reconstruction": reconstruction, "kl": kl, "elbo": reconstruction - kl,
               "kl_analytic": torch.tensor(analytic and single), "kl_per_site": torch.tensor(analytic and not single)}
        if posterior_means and program.latent_dim is not None:
            (out["posterior_mean"],) = at_x.means().values()
    return out


def chunked_draws(program: Program, at_x, x: torch.Tensor, samples: int, chunk_pairs: int | None) -> Iterator[Terms]:
    """The terms of K = ``samples`` draws z ~ q(z|x) (``at_x``: the program's terms at x), in chunks
    of at most ``chunk_pairs // batch`` draws (unset: the device's default, :func:`chunk_pairs_for`),
    so that memory does not grow with K: what every streamed estimate here and in ``exact.py`` reads."""
    per_chunk = max(1, chunk_pairs_for(program, x.device, chunk_pairs) // x.shape[0])
    done = 0
    while done < samples:
        terms = at_x.draw(min(per_chunk, samples - done))
        done += terms.particles
        yield terms


def _streamed_log_sums(program: Program, x: torch.Tensor, num_samples: int, chunk_pairs: int | None, squares: bool):
    """log sum_k w_k (and log sum_k w_k^2 if ``squares``) over K = num_samples draws, chunk by chunk."""
    total = torch.full(x.shape[:1], -math.inf, device=x.device)
    total_sq = total.clone() if squares else None
    with program.source.given(x) as at_x:  # q(z|x) and p(z) built once, x's own work done once (stock VAE)
        for terms in chunked_draws(program, at_x, x, num_samples, chunk_pairs):
            log_w = terms.log_weights
            total = torch.logaddexp(total, log_w.logsumexp(0))
            if squares:
                total_sq = torch.logaddexp(total_sq, (2 * log_w).logsumexp(0))
    return total, total_sq


@torch.no_grad()
def log_evidence(program, x: torch.Tensor, num_samples: int = 1000, chunk_pairs: int | None = None) -> torch.Tensor:
    """Importance-sampled log p(x) per datapoint with K = ``num_samples`` draws from q(z|x):
    log (1/K) sum_k w_k, w_k = p(x|z_k) p(z_k) / q(z_k|x) (the program's terms' log-weights).

    The K weights are drawn in chunks of at most ``chunk_pairs // batch`` samples (``chunk_pairs``
    unset: the device's default, :func:`chunk_pairs_for`) and combined by a streaming log-sum-exp,
    so memory does not grow with K.
    """
    total, _ = _streamed_log_sums(checked_program(program, x), x, num_samples, chunk_pairs, squares=False)
    return total - math.log(num_samples)


@torch.no_grad()
def log_evidence_diagnostics(program, x: torch.Tensor, num_samples: int = 1000,
                             chunk_pairs: int | None = None) -> dict[str, torch.Tensor]:
    """log p(x) as in :func:`log_evidence`, with, per datapoint, its standard error and the
    effective sample size of the importance weights.

    With normalized weights v_k = w_k / sum_j w_j: ESS = 1 / sum_k v_k^2, and by the delta method
    Var(log p_hat) ~= Var(w) / (K E[w]^2), estimated as (K sum_k v_k^2 - 1) / K. (The estimator's
    bias, about -Var/2, is of the same order; both shrink like 1/K.)
    """
    program = checked_program(program, x)
    total, total_sq = _streamed_log_sums(program, x, num_samples, chunk_pairs, squares=True)
    sum_sq_normalized = (total_sq - 2 * total).exp()
    return {
        "log_px": total - math.log(num_samples),
        "stderr": ((num_samples * sum_sq_normalized - 1).clamp_min(0) / num_samples).sqrt(),
        "ess": 1.0 / sum_sq_normalized,
    }


@torch.no_grad()
def evidence_terms(program, x: torch.Tensor, num_samples: int = 1000, chunk_pairs: int | None = None,
                   posterior_means: bool = True) -> dict[str, torch.Tensor]:
    """Per datapoint, from one pass of K = ``num_samples`` draws z_k ~ q(z|x) (in chunks: memory does
    not grow with K):

    * the ELBO and its two terms averaged over the K draws, ELBO_k = log p(x|z_k) - KL_k (the KL in
      closed form where every latent site has one, else the draw's log q(z_k|x) - log p(z_k)), with
      the standard error of that mean, ``elbo_stderr`` = sd_k(ELBO_k) / sqrt(K);
    * log p(x) by importance sampling from the same draws, log (1/K) sum_k w_k, with its standard
      error ``log_px_stderr`` (delta method, as :func:`log_evidence_diagnostics`);
    * (``posterior_means``, one continuous latent vector) E_q[z].

    The gap log p(x) - ELBO is then a difference of two estimates from the same draws, each with
    its standard error; with Monte-Carlo KL it is >= 0 for every datapoint (Jensen's inequality on
    the K draws), as KL(q(z|x) || p(z|x)) is."""
    return _evidence_terms(checked_program(program, x), x, num_samples, chunk_pairs, posterior_means)


def _evidence_terms(program: Program, x: torch.Tensor, num_samples: int, chunk_pairs: int | None,
                    posterior_means: bool) -> dict[str, torch.Tensor]:
    total = torch.full(x.shape[:1], -math.inf, device=x.device)
    total_sq = total.clone()
    sums = torch.zeros(3, x.shape[0], dtype=torch.float64, device=x.device)  # sum_k recon_k, KL_k, ELBO_k^2
    analytic, single = True, True
    with program.source.given(x) as at_x:
        for terms in chunked_draws(program, at_x, x, num_samples, chunk_pairs):
            log_w = terms.log_weights
            total = torch.logaddexp(total, log_w.logsumexp(0))
            total_sq = torch.logaddexp(total_sq, (2 * log_w).logsumexp(0))
            kl, closed = terms.kl()
            analytic, single = analytic and closed, len(terms.latents) == 1
            recon, kl = terms.log_likelihood.double(), kl.double().expand_as(terms.log_likelihood)
            sums += torch.stack([recon.sum(0), kl.sum(0), ((recon - kl) ** 2).sum(0)])
        out = {}
        if posterior_means and program.latent_dim is not None:
            (out["posterior_mean"],) = at_x.means().values()
    k = num_samples
    reconstruction, kl = sums[0] / k, sums[1] / k
    elbo = reconstruction - kl
    variance = ((sums[2] / k - elbo**2) * k / max(k - 1, 1)).clamp_min(0)
    sum_sq_normalized = (total_sq - 2 * total).exp()
    out |= {"reconstruction": reconstruction.float(), "kl": kl.float(), "elbo": elbo.float(),
            "elbo_stderr": (variance / k).sqrt().float(), "log_px": total - math.log(k),
            "log_px_stderr": ((k * sum_sq_normalized - 1).clamp_min(0) / k).sqrt(),
            "kl_analytic": torch.tensor(analytic and single), "kl_per_site": torch.tensor(analytic and not single)}
    return out


@torch.no_grad()
def enumerated_elbo_terms(program, x: torch.Tensor) -> dict[str, torch.Tensor]:
    """Per-datapoint ELBO with the guide's first latent site y summed over its every state (the
    objective ``enumerate``'s bound; later sites drawn once given each state):
    ELBO(x) = sum_y q(y|x) E_q(z|x,y)[log p(x|y, z) + log p(y, z) - log q(y, z|x)]; its
    reconstruction sum_y q(y|x) E_q[log p(x|y, z)] and KL = reconstruction - ELBO (KL(q(y, z|x) ||
    p(y, z))). What a semi-supervised program's evaluation reports: exact in y."""
    program = checked_program(program, x)
    objective = EnumeratedELBO(max_states=ENUMERATED_EVIDENCE_MAX_STATES)
    terms = objective.terms(program.source, x)
    weight = terms.latents[terms.enumerated].log_q.exp()  # (S, B): q(y_s|x)
    reconstruction = (weight * terms.log_likelihood).sum(0)
    elbo = (weight * (terms.log_likelihood + terms.log_prior - terms.log_q)).sum(0)
    return {"reconstruction": reconstruction, "kl": reconstruction - elbo, "elbo": elbo,
            "kl_analytic": torch.tensor(False), "kl_per_site": torch.tensor(False)}


@torch.no_grad()
def enumerated_log_evidence(program, x: torch.Tensor, num_samples: int = 1000,
                            chunk_pairs: int | None = None) -> torch.Tensor:
    """log p(x) per datapoint with the guide's first latent site y summed exactly over its states
    and the later sites z importance-sampled given each, K = ``num_samples`` draws per state:
    log p(x) = log sum_y p(y) p(x|y),  p(x|y) ~ (1/K) sum_k p(x|y, z_k) p(z_k|y) / q(z_k|x, y)
    (a semi-supervised program's y: no variance from the classes). Costs S * K decoder passes per
    datapoint, in chunks of at most ``chunk_pairs`` (datapoint, draw) pairs."""
    return _enumerated_log_sums(checked_program(program, x), x, num_samples, chunk_pairs, squares=False)[0]


@torch.no_grad()
def enumerated_log_evidence_diagnostics(program, x: torch.Tensor, num_samples: int = 1000,
                                        chunk_pairs: int | None = None) -> dict[str, torch.Tensor]:
    """log p(x) as in :func:`enumerated_log_evidence`, with its standard error per datapoint: the
    classes' estimates p_hat(x, y) = (1/K) sum_k w_{y,k} are independent, so Var p_hat(x) =
    sum_y Var(w_y) / K, and by the delta method s.e.(log p_hat(x)) ~= sqrt(Var p_hat(x)) / p_hat(x)
    (one class: :func:`log_evidence_diagnostics`'s)."""
    log_px, sums = _enumerated_log_sums(checked_program(program, x), x, num_samples, chunk_pairs, squares=True)
    total, total_sq = sums
    k = math.log(num_samples)
    ratio = (total - k - log_px).exp()  # p_hat(x, y) / p_hat(x), (S, B)
    second = (total_sq - k - 2 * log_px).exp()  # E_k[w_y^2] / p_hat(x)^2
    return {"log_px": log_px, "stderr": ((second - ratio**2).clamp_min(0).sum(0) / num_samples).sqrt()}


def _enumerated_log_sums(program: Program, x: torch.Tensor, num_samples: int, chunk_pairs: int | None,
                         squares: bool) -> tuple[torch.Tensor, tuple | None]:
    """log p_hat(x) with the first site summed over its states, and (``squares``) per state the
    log sums over the K draws of w and of w^2, each (S, B)."""
    with program.source.given(x) as at_x:
        name, q = at_x.first()
        states = EnumeratedELBO(max_states=ENUMERATED_EVIDENCE_MAX_STATES).listed_states(name, q)
        count, batch = states.shape[0], x.shape[0]
        per_chunk = max(1, chunk_pairs_for(program, x.device, chunk_pairs) // (batch * count))
        total = torch.full((count, batch), -math.inf, device=x.device)
        total_sq = total.clone() if squares else None
        done = 0
        while done < num_samples:
            k = min(per_chunk, num_samples - done)
            y = states.repeat(k, *([1] * (states.dim() - 1)))  # (k S, *event): the states, k times over
            terms = at_x.at({name: y.unsqueeze(1).expand(k * count, batch, *states.shape[1:])})
            log_w = (terms.log_weights + terms.latents[name].log_q).view(k, count, batch)  # log p(x, y_s, z) - log q(z|x, y_s)
            total = torch.logaddexp(total, log_w.logsumexp(0))
            if squares:
                total_sq = torch.logaddexp(total_sq, (2 * log_w).logsumexp(0))
            done += k
    return (total - math.log(num_samples)).logsumexp(0), ((total, total_sq) if squares else None)


@torch.no_grad()
def label_predictions(program, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(argmax_y q(y|x), q(y|x) per class (batch, C)) of a semi-supervised program: its classifier."""
    program = as_program(program, tuple(x.shape[1:]))
    q = program.label_posterior(x)
    states = enumerate_states(q)  # (C, C): class c one-hot, in class order
    log_q = q.log_prob(states.unsqueeze(1).expand(states.shape[0], x.shape[0], *states.shape[1:]))  # (C, B)
    return log_q.argmax(0), log_q.exp().T


#: the estimators the label policies score with (labels.Estimates), each checking its batch first
ESTIMATES = Estimates(
    elbo_terms=elbo_terms, log_evidence=log_evidence, log_evidence_diagnostics=log_evidence_diagnostics,
    evidence_terms=evidence_terms,
    summed_elbo_terms=enumerated_elbo_terms, summed_log_evidence=enumerated_log_evidence,
    summed_log_evidence_diagnostics=enumerated_log_evidence_diagnostics, predictions=label_predictions)


def active_units(posterior_means: torch.Tensor, threshold: float = ACTIVE_UNIT_THRESHOLD) -> int:
    """Number of latent coordinates with Var_x(E_q[z_u | x]) > threshold (Burda et al. 2016)."""
    return int((posterior_means.var(dim=0) > threshold).sum().item())


def code_usage(posterior_means: torch.Tensor, groups: int, classes: int) -> dict:
    """How a categorical latent of M one-hot groups of K classes uses its codes, from E_q[z|x] =
    q(z_g = k | x) over a dataset ((N, M*K)): per group, ``classes_used``, the classes that are
    argmax_k q(z_g = k|x) for at least one datapoint, and ``perplexity``, exp H(mean_x q(z_g|x)) (K
    when the data spread evenly over the classes, 1 when every datapoint takes the same one)."""
    q = posterior_means.double().unflatten(-1, (groups, classes))  # (N, M, K)
    used = [int(q[:, g].argmax(-1).unique().numel()) for g in range(groups)]
    aggregate = q.mean(0).clamp_min(1e-300)  # (M, K)
    perplexity = (-(aggregate * aggregate.log()).sum(-1)).exp()
    return {"groups": groups, "classes": classes, "classes_used": used, "perplexity": perplexity.tolist()}


def bits_per_dim(log_px: torch.Tensor, num_pixels: int) -> torch.Tensor:
    """-log p(x) / (D log 2): nats per datapoint as bits per pixel."""
    return -log_px / (num_pixels * math.log(2.0))


# ---------------------------------------------------------------------------------------------
# Gradient estimators: variance and signal-to-noise ratio at fixed parameters


def gradient_statistics(program, objective, x: torch.Tensor, draws: int = 100, seed: int = 0,
                        reference: dict[str, torch.Tensor] | None = None) -> dict[str, dict]:
    """Draw ``draws`` independent gradient estimates of the objective (per datapoint, on the fixed
    batch x, at the current parameters) and summarize each parameter group
    (``Program.parameter_groups``: the inference network and the generative model) by

    * ``variance``: the trace of the covariance of the gradient estimator, sum_i Var(g_i);
    * ``snr``: the mean over coordinates of |E[g_i]| / std(g_i) (Rainforth et al. 2018);
    * ``norm_snr``: |E[g]| / sqrt(trace Cov), the same for the whole group at once.

    With ``reference`` (per group, the flattened true gradient: :func:`exact_gradient`), also

    * ``bias``: |E[g] - g_true|, the distance of the estimator's mean from the truth, and
      ``bias_stderr`` = sqrt(trace Cov / draws), the size that distance has from noise alone (an
      unbiased estimator's ``bias`` is about that); ``relative_bias`` = bias / |g_true|;
    * ``mse``: E|g - g_true|^2 = bias^2 + variance, and ``true_snr`` = |g_true| / sqrt(trace Cov).

    Moments are accumulated in float64, one draw at a time, so memory does not grow with draws.
    Runs under its own seed; the parameters, and any state of the estimator (``Objective.measuring``:
    a running baseline), are not changed.
    """
    program = checked_program(program, x)
    module = program.module
    groups = program.parameter_groups()
    sums = {g: [torch.zeros_like(p, dtype=torch.float64) for p in ps] for g, ps in groups.items()}
    squares = {g: [torch.zeros_like(p, dtype=torch.float64) for p in ps] for g, ps in groups.items()}
    with seeded(seed, x.device), objective.measuring():
        for _ in range(draws):
            module.zero_grad(set_to_none=True)
            surrogate, _ = objective.step(program.source, x)
            (-surrogate / x.shape[0]).backward()  # the gradient of the objective per datapoint
            for g, ps in groups.items():
                for s, q, p in zip(sums[g], squares[g], ps):
                    if p.grad is not None:
                        grad = p.grad.double()
                        s += grad
                        q += grad * grad
    module.zero_grad(set_to_none=True)
    return {g: _gradient_summary(sums[g], squares[g], draws, None if reference is None else reference[g])
            for g in groups if sums[g]}


def _gradient_summary(sums: list[torch.Tensor], squares: list[torch.Tensor], draws: int,
                      truth: torch.Tensor | None) -> dict:
    """One parameter group's variance, SNRs (and, against ``truth``, bias and MSE) from the sums of
    ``draws`` gradient draws and of their squares (see :func:`gradient_statistics`)."""
    mean = torch.cat([s.flatten() for s in sums]) / draws
    var = (torch.cat([q.flatten() for q in squares]) / draws - mean**2) * draws / max(draws - 1, 1)
    var = var.clamp_min(0.0)
    moving = var > 0
    out = {
        "variance": var.sum().item(),
        "snr": (mean[moving].abs() / var[moving].sqrt()).mean().item() if moving.any() else float("nan"),
        "norm_snr": (mean.norm() / var.sum().sqrt()).item() if var.sum() > 0 else float("inf"),
        "mean_norm": mean.norm().item(),
        "coordinates": mean.numel(),
    }
    if truth is not None:
        truth = truth.double().to(mean.device)
        bias = (mean - truth).norm().item()
        out.update(bias=bias, bias_stderr=math.sqrt(var.sum().item() / draws),
                   relative_bias=bias / max(truth.norm().item(), 1e-300), mse=bias**2 + var.sum().item(),
                   true_snr=(truth.norm() / var.sum().sqrt()).item() if var.sum() > 0 else float("inf"))
    return out


def exact_gradient(program, x: torch.Tensor, max_states: int = 4096) -> dict[str, torch.Tensor]:
    """The ELBO's true gradient per datapoint on batch x, per parameter group (flattened, float64):
    the gradient of the ELBO summed exactly over every state of the program's one discrete latent
    (objective ``enumerate``), what :func:`gradient_statistics` measures an estimator against."""
    program = checked_program(program, x)
    module = program.module
    module.zero_grad(set_to_none=True)
    surrogate, _ = EnumeratedELBO(max_states=max_states).step(program.source, x)
    (-surrogate / x.shape[0]).backward()
    out = {g: torch.cat([(p.grad if p.grad is not None else torch.zeros_like(p)).double().flatten() for p in ps])
           for g, ps in program.parameter_groups().items() if ps}
    module.zero_grad(set_to_none=True)
    return out


# Moved to evaluation.py: importing them from here still works, with a DeprecationWarning.
_MOVED_TO_EVALUATION = ("Evaluation", "EvaluationStore", "evaluate", "batch_seed", "fingerprint")


def __getattr__(name: str):
    if name in _MOVED_TO_EVALUATION:
        warnings.warn(f"pyro_vae.metrics.{name} is now pyro_vae.evaluation.{name}", DeprecationWarning, stacklevel=2)
        from . import evaluation  # (a deprecation path: the one import upward, by name only)

        return getattr(evaluation, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
