"""Disentanglement, measured: the KL's decomposition by the aggregate posterior, and one call for every score.

**The decomposition** (Hoffman & Johnson 2016; Chen et al. 2018, "Isolating Sources of
Disentanglement in VAEs"). With q(z) = (1/N) sum_n q(z|x_n) the aggregate posterior of N datapoints
and q(z_d) its marginals, the KL term of one datapoint's draw z ~ q(z|x_i) telescopes into

    log q(z|x_i) - log p(z) = [log q(z|x_i) - log q(z)]                      index-code MI
                            + [log q(z) - sum_d log q(z_d)]                  total correlation
                            + [sum_d log q(z_d) - sum_d log p(z_d)]          dimension-wise KL

whose expectations over (i, z) are I_q(x; z), KL(q(z) || prod_d q(z_d)) and sum_d KL(q(z_d) || p(z_d))
(each >= 0), summing to the mean KL(q(z|x) || p(z)). The three parts sum to the Monte-Carlo KL term
exactly, whatever estimate of log q(z) is used. This needs q(z|x) and p(z) factorized over the
coordinates of one latent site (a diagonal Gaussian guide); with a prior whose coordinates are not
independent (a mixture, a flow) the third part is E[log prod_d q(z_d) - log p(z)], no longer a sum
of per-coordinate KLs, and the telescoping still holds.

**log q(z) from a minibatch** (:func:`log_weight_matrix`): a batch of B datapoints drawn uniformly
without replacement from the N of the training set, z_i ~ q(z|x_i), and log q^(z_i) =
logsumexp_j [log w_ij + log q(z_i|x_j)] (the same weights for each marginal q(z_id)):

* ``stratified`` (minibatch stratified sampling, Chen et al.'s appendix): the datapoint's own
  stratum exactly, w_ii = 1/N, and the other B - 1 batch members as a uniform sample of the other
  N - 1 datapoints, w_ij = (N - 1) / (N (B - 1)). Unbiased for q(z_i) (the weights sum to 1; exact
  when B = N). Chen et al.'s code weights the others unequally ((N - B + 1) / (N (B - 1)) on one,
  1 / (B - 1) on the rest; also unbiased): the equal weights here have the smaller variance.
* ``weighted`` (minibatch weighted sampling, Chen et al.'s eq. and code): w_ij = 1 / (N B) for every
  j. Its weights sum to 1/N, not 1: for large B its log q^(z) is about log N below log q(z) (exactly
  log N below when B = N), so the reported total correlation is about (D - 1) log N above the truth
  and the MI below by log N; the gradients are those of the stratified estimator's biased cousin.
  It is offered because it is what the paper trains with; ``stratified`` is the default.

Both are biased for log q(z) itself (the log of an unbiased estimate; Jensen): the bias shrinks as B
grows. :func:`kl_decomposition` evaluates the decomposition over a whole evaluated set instead,
with q(z) its exact aggregate posterior (every datapoint's q(z|x_n), no sampling of n).

**Scores** (:func:`disentanglement_scores`): MIG, DCI, SAP and the FactorVAE score of
``pyro_vae.scores`` (their definitions, estimation choices and validation are there), each with its
bootstrap standard error, on the encoder's posterior means of a stated number of datapoints.
"""

from __future__ import annotations

import math
from typing import Callable

import numpy as np
import torch

from . import scores
from .errors import ConfigError, DataError

#: the minibatch estimators of log q(z) (:func:`log_weight_matrix`)
ESTIMATORS = ("stratified", "weighted")
#: the default number of test datapoints the scores are computed over
SCORE_POINTS = 2000
#: rows of the evaluated set per block of the exhaustive aggregate posterior (memory: rows x N x D)
BLOCK_ROWS = 256


def coordinates(distribution, what: str):
    """The per-coordinate Normal of a diagonal Gaussian over vectors (``Independent(Normal, 1)``: the
    diagonal-gaussian guide's q(z|x)); refused otherwise, naming the fix."""
    import torch.distributions as td

    d = distribution
    while isinstance(d, td.Independent) and d.reinterpreted_batch_ndims == 1 and isinstance(
            d.base_dist, td.Independent):
        d = d.base_dist
    if isinstance(d, td.Independent) and d.reinterpreted_batch_ndims == 1 and len(d.event_shape) == 1 and \
            isinstance(d.base_dist, td.Normal):
        return d.base_dist
    raise ConfigError(
        f"the total-correlation decomposition needs {what} to be a diagonal Gaussian over a vector latent (the "
        f"diagonal-gaussian guide); got {type(distribution).__name__} with event shape "
        f"{tuple(distribution.event_shape)}. Use model.guide = \"diagonal-gaussian\", or objective 'beta'.")


def log_weight_matrix(batch: int, dataset_size: int, estimator: str = "stratified",
                      dtype=torch.float32, device=None) -> torch.Tensor:
    """(B, B) log w_ij of the minibatch estimate log q^(z_i) = logsumexp_j [log w_ij + log q(z_i|x_j)]
    (module docstring): ``stratified`` w_ii = 1/N, w_ij = (N - 1)/(N (B - 1)); ``weighted`` 1/(N B)."""
    if estimator not in ESTIMATORS:
        raise ConfigError(f"estimator must be one of {', '.join(ESTIMATORS)}, got {estimator!r}.")
    if dataset_size < batch:
        raise ConfigError(f"the batch has {batch} datapoints and the dataset {dataset_size}: a batch is drawn from "
                          f"the dataset, so dataset_size must be >= the batch size.")
    n = float(dataset_size)
    if estimator == "weighted":
        return torch.full((batch, batch), -math.log(n * batch), dtype=dtype, device=device)
    other = -math.inf if batch == 1 else math.log((n - 1) / (n * (batch - 1)))
    w = torch.full((batch, batch), other, dtype=dtype, device=device)
    w.diagonal().fill_(-math.log(n))
    return w


def decomposed_kl(q, z: torch.Tensor, log_q: torch.Tensor, log_p: torch.Tensor, dataset_size: int,
                  estimator: str = "stratified") -> dict[str, torch.Tensor]:
    """The three parts of log q(z|x_i) - log p(z) per draw, each (K, B): ``mutual_information``,
    ``total_correlation``, ``dimension_wise_kl`` (module docstring), from one batch.

    ``q``: q(z|x) of the batch (batch shape (B,), event (D,), independent coordinates); ``z``: the
    draws (K, B, D) or (B, D); ``log_q``, ``log_p``: log q(z|x_i) and log p(z) per draw (the terms' own,
    so that the parts sum to them exactly; p(z) any prior: where its coordinates are not independent
    the third part is E[log prod_d q(z_d) - log p(z)]). Costs O(K B^2 D)."""
    q_d = coordinates(q, "q(z|x)")
    z3 = z if z.dim() == 3 else z.unsqueeze(0)
    batch = z3.shape[1]
    # (K, B_i, B_j, D): log q(z_id | x_j); q's parameters (B, D), or (K, B, D) from a traced particle plate
    per_pair = torch.distributions.Normal(q_d.loc.unsqueeze(-3), q_d.scale.unsqueeze(-3)).log_prob(z3.unsqueeze(2))
    log_w = log_weight_matrix(batch, dataset_size, estimator, per_pair.dtype, per_pair.device)
    log_qz = torch.logsumexp(log_w + per_pair.sum(-1), dim=2)  # (K, B)
    log_marginals = torch.logsumexp(log_w.unsqueeze(-1) + per_pair, dim=2).sum(-1)  # (K, B): sum_d log q^(z_d)
    shape = log_q.shape
    log_qz, log_marginals = log_qz.reshape(shape), log_marginals.reshape(shape)
    return {"mutual_information": log_q - log_qz, "total_correlation": log_qz - log_marginals,
            "dimension_wise_kl": log_marginals - log_p}


def _posteriors(program, x: torch.Tensor, batch_size: int):
    """(loc, scale) of the diagonal q(z|x) of every datapoint, and p(z), from the program's one latent site."""
    locs, scales, prior = [], [], None
    for start in range(0, x.shape[0], batch_size):
        with program.source.given(x[start:start + batch_size]) as at_x:
            terms = at_x.draw(1)
        if len(terms.latents) != 1:
            raise ConfigError(f"the KL decomposition takes a program with one latent site; this one has "
                              f"{', '.join(terms.latents)}.")
        site = next(iter(terms.latents.values()))
        q_d = coordinates(site.q, "q(z|x)")
        prior = site.p
        locs.append(q_d.loc.detach().reshape(-1, q_d.loc.shape[-1]))
        scales.append(q_d.scale.detach().reshape(-1, q_d.scale.shape[-1]))
    return torch.cat(locs), torch.cat(scales), prior


@torch.no_grad()
def kl_decomposition(program, x: torch.Tensor, seed: int = 0, batch_size: int = 500) -> dict[str, float]:
    """Index-code MI, total correlation and dimension-wise KL over the evaluated set x (nats per datapoint).

    One draw z_i ~ q(z|x_i) per datapoint (seeded by ``seed``); q(z) = (1/M) sum_n q(z|x_n) the exact
    aggregate posterior of the M datapoints of x (every pair (i, n) summed, in blocks of rows), its
    marginals alike; the parts are the means over i of the module docstring's three terms, and ``kl``
    their sum (the mean Monte-Carlo KL). MI here is at most log M (the estimate of I(x; z) by the
    evaluated set's own aggregate posterior saturates there)."""
    loc, scale, prior = _posteriors(program, x, batch_size)
    loc, scale = loc.double(), scale.double()  # (sums over M^2 pairs: float64)
    g = torch.Generator(device=loc.device).manual_seed(seed)
    z = loc + scale * torch.randn(loc.shape, generator=g, device=loc.device, dtype=loc.dtype)
    q_all = torch.distributions.Normal(loc, scale)
    m = x.shape[0]
    log_q = q_all.log_prob(z).sum(-1)
    log_p = prior.log_prob(z.float()).double()  # (the prior in its own float32)
    log_qz, log_marginals = torch.empty(m, dtype=loc.dtype), torch.empty(m, dtype=loc.dtype)
    for start in range(0, m, BLOCK_ROWS):
        block = z[start:start + BLOCK_ROWS].unsqueeze(1)  # (b, 1, D) against every datapoint's q
        per_pair = q_all.log_prob(block)  # (b, M, D)
        log_qz[start:start + BLOCK_ROWS] = (torch.logsumexp(per_pair.sum(-1), 1) - math.log(m)).cpu()
        log_marginals[start:start + BLOCK_ROWS] = (torch.logsumexp(per_pair, 1) - math.log(m)).sum(-1).cpu()
    log_q, log_p = log_q.cpu(), log_p.cpu()
    parts = {"mutual_information": log_q - log_qz, "total_correlation": log_qz - log_marginals,
             "dimension_wise_kl": log_marginals - log_p}
    out = {k: v.mean().item() for k, v in parts.items()}
    out["kl"] = (log_q - log_p).mean().item()
    out["datapoints"] = m
    return out


def decomposition_or_reason(program, x: torch.Tensor, seed: int = 0, batch_size: int = 500) -> dict:
    """:func:`kl_decomposition`, or ``{"not_computed": why}`` where the program has no such decomposition
    (a guide other than a diagonal Gaussian, several latent sites): what a run reports beside its scores."""
    try:
        return kl_decomposition(program, x, seed=seed, batch_size=batch_size)
    except ConfigError as e:
        return {"not_computed": str(e)}


# ---------------------------------------------------------------------------------------------
# every score at once


def binned_factors(factors, bins: int = 20) -> tuple[np.ndarray, str | None]:
    """Integer factor indices as they are; a real-valued factor column binned by the stated rule:
    ``bins`` equal-width bins over its observed range (bin floor((v - min) / (max - min) * bins), the
    maximum in the last bin: the rule MIG applies to the latents), with a note saying which columns."""
    v = np.asarray(factors.detach().cpu() if torch.is_tensor(factors) else factors)
    if v.ndim != 2:
        raise DataError(f"factors must be a 2-D array (N datapoints, F factors); got shape {tuple(v.shape)}.")
    if np.issubdtype(v.dtype, np.integer) or v.dtype == bool:
        return v.astype(np.int64), None
    if not np.issubdtype(v.dtype, np.floating):
        raise DataError(f"factors must be numbers; got dtype {v.dtype}.")
    if not np.isfinite(v).all():
        raise DataError("factors hold NaN or infinite values; every datapoint needs its factors.")
    whole = (v == np.round(v)).all(axis=0)
    out = np.empty(v.shape, dtype=np.int64)
    binned = []
    for k in range(v.shape[1]):
        if whole[k]:
            out[:, k] = v[:, k].astype(np.int64)
        else:
            out[:, k] = scores._discretize(v[:, k:k + 1], bins)[:, 0]
            binned.append(k)
    note = None if not binned else (f"factor columns {binned} are real-valued: each binned into {bins} equal-width "
                                    f"bins over its observed range")
    return out, note


def _means_and_factors(run_or_means, factors, points: int, seed: int):
    """(means (N, L), factors (N, F), what they are) from a loaded run (its test set) or given means."""
    if hasattr(run_or_means, "encode"):
        run = run_or_means
        data = run.data
        if data is None or data.splits.factors is None:
            name = run.config.data.get("name") if hasattr(run, "config") else "?"
            raise DataError(f"the run's data ({name!r}) has no known factors of variation, and the disentanglement "
                            f"scores compare the latents with them: train on data with factors (data.name = "
                            f"'dsprites'), or pass the means and their factors yourself.")
        x, f = data.test, data.splits.factors["test"]
        if factors is not None:
            raise ConfigError("a run brings its own test factors: pass factors=None with a run.")
        n = min(points, x.shape[0])
        means = torch.cat([run.encode(x[s:s + 500])[0].reshape(min(500, n - s), -1) for s in range(0, n, 500)])
        return means, f[:n], f"posterior means of the first {n} test datapoints"
    if factors is None:
        raise DataError("disentanglement scores compare latents with known factors of variation: pass factors "
                        "(N, F), one row per row of the means (e.g. DataSplits.factors['test']).")
    means = run_or_means
    n = len(means)
    if n > points:
        index = np.sort(np.random.default_rng(seed).choice(n, points, replace=False))
        return means[index], factors[index], f"{points} of {n} given rows drawn by seed {seed}"
    return means, factors, f"the {n} given rows"


def disentanglement_scores(run_or_means, factors=None, *, points: int = SCORE_POINTS, resamples: int = 10,
                           seed: int = 0, factor_bins: int = 20, represent: Callable | None = None,
                           factor_sizes=None, factorvae_options: dict | None = None) -> dict:
    """MIG, DCI (disentanglement, completeness, informativeness), SAP and, where data can be drawn
    from given factors, the FactorVAE score, each with its bootstrap standard error.

    ``run_or_means``: a loaded run (``trained.load_run``: its test set's first ``points`` datapoints,
    encoded to their posterior means, and their factors) or an array (N, L) of posterior means with
    ``factors`` (N, F) (``points`` of them drawn by ``seed`` where N is larger). Real-valued factors are
    binned (:func:`binned_factors`; said in ``factor_binning``). Each of MIG, DCI and SAP is
    ``scores.with_stderr`` over ``resamples`` bootstrap resamples (seeded). The FactorVAE score
    (``scores.factorvae_score``) needs ``represent`` (factor rows -> latents: render and encode) and
    ``factor_sizes``; for a run on the dSprites-like data both are taken from it; its standard error
    is the binomial one of its evaluation votes, sqrt(s (1 - s) / votes); ``factorvae_options`` go to
    ``scores.factorvae_score`` (e.g. fewer votes: ``{"train_votes": 80, "eval_votes": 40}``).

    Returns flat keys (what a table reads): ``mig``, ``dci_disentanglement``, ``dci_completeness``,
    ``dci_informativeness``, ``sap``, ``factorvae`` (None where not computed), each with
    ``<key>_stderr``; and ``points``, ``resamples``, ``seed``, ``inputs`` (what was scored),
    ``factor_binning``, ``mig_bins``."""
    means, f, inputs = _means_and_factors(run_or_means, factors, points, seed)
    f, binning = binned_factors(f, factor_bins)
    out: dict = {"points": int(len(means)), "resamples": resamples, "seed": seed, "inputs": inputs,
                 "factor_binning": binning or "none (integer factor indices)", "mig_bins": 20}
    for metric, keys in (("mig", {"mig": "mig"}), ("sap", {"sap": "sap"}),
                         ("dci", {"disentanglement": "dci_disentanglement", "completeness": "dci_completeness",
                                  "informativeness": "dci_informativeness"})):
        result = scores.with_stderr(metric, means, f, resamples=resamples, seed=seed)
        for key, name in keys.items():
            out[name], out[name + "_stderr"] = result["value"][key], result["stderr"][key]
    represent, factor_sizes = _factorvae_inputs(run_or_means, represent, factor_sizes)
    out["factorvae"] = out["factorvae_stderr"] = None
    if represent is not None:
        fv = scores.factorvae_score(represent, factor_sizes, seed=seed, **(factorvae_options or {}))
        s, votes = fv["score"], int(np.sum(fv["votes_eval"]))
        out["factorvae"], out["factorvae_stderr"] = s, math.sqrt(s * (1 - s) / max(votes, 1))
    return out


def _factorvae_inputs(run_or_means, represent, factor_sizes):
    """represent and factor_sizes for the FactorVAE score: given, or a dSprites-like run's own."""
    if represent is not None:
        if factor_sizes is None:
            raise ConfigError("the FactorVAE score needs factor_sizes (the number of values of each factor) with "
                              "represent.")
        return represent, factor_sizes
    if hasattr(run_or_means, "encode") and run_or_means.config.data.get("name") == "dsprites":
        from .data.dsprites import DSPRITES_SIZES, render

        run = run_or_means

        def encoded(rows: np.ndarray) -> np.ndarray:
            return run.encode(render(torch.as_tensor(rows)).float() / 255.0)[0].reshape(len(rows), -1).cpu().numpy()

        return encoded, DSPRITES_SIZES
    return None, None
