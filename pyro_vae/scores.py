"""Task metrics with definitions: how disentangled a representation is, how coherent a topic is.

Disentanglement metrics score an encoder against known, discrete factors of variation:

* :func:`mig` - the Mutual Information Gap (Chen et al. 2018);
* :func:`dci` - disentanglement, completeness and informativeness (Eastwood & Williams 2018);
* :func:`sap` - the Separated Attribute Predictability score (Kumar et al. 2018);
* :func:`factorvae_score` - the majority-vote score of Kim & Mnih (2018);
* :func:`with_stderr` - a metric's value and its bootstrap standard error.

Topic coherence: :func:`npmi`, the normalized pointwise mutual information of each topic's top
words over a reference corpus of documents.

Inputs of the first three: ``latents`` (N, L) floats, the encoder's posterior means over N
datapoints, and ``factors`` (N, F) integer factor indices, as numpy arrays or torch tensors. The
factors' values are only labels: each factor's distinct values are relabelled 0..K-1. Every result
is a dict of plain Python numbers and lists (JSON-serializable) holding the score and the parts it
was computed from.

The common conventions follow Locatello et al. (2019) and their disentanglement_lib; where these
metrics differ from it, the metric's docstring says where and why. Nothing here uses scikit-learn:
the classifiers are written out in numpy and torch (float64, on the CPU), so that a score does
not drift with another library's version.

Determinism and batch order. Each score is a function of the datapoints as a set: before any
seeded split or resample the datapoints are put in a canonical order (:func:`_canonical_order`),
so permuting the rows of ``latents`` and ``factors`` together changes no score, bit for bit. That
order is also invariant, up to floating rounding, under what the metrics are invariant to by
definition (permuting the latent coordinates, rescaling each by a nonzero factor of either sign,
shifting it), so the seeded train/test split is the same split after such a transform, and the
score is the same.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable, NamedTuple

import numpy as np
import torch

from .errors import ConfigError, DataError

#: the smallest global standard deviation of a latent coordinate that the FactorVAE score keeps
#: (``prune_dims.threshold`` of disentanglement_lib's study configuration; its code's default is 0)
FACTORVAE_MIN_STD = 0.05
#: rows per call of the ``represent`` callable of :func:`factorvae_score` (at least one vote)
REPRESENT_ROWS = 1024


# ----------------------------------------------------------------------------------------------
# inputs


def _numpy(x, name: str) -> np.ndarray:
    """``x`` (numpy array, torch tensor or nested sequence) as a numpy array, floats as float64."""
    if torch.is_tensor(x):
        if x.layout != torch.strided:
            raise DataError(f"{name} is a sparse torch tensor; pass a dense one ({name}.to_dense()).")
        x = x.detach().cpu()
        x = x.to(torch.float64) if (x.is_floating_point() or x.is_complex()) else x
        return x.numpy()
    try:
        return np.asarray(x)
    except (TypeError, ValueError) as e:
        raise DataError(f"{name} could not be read as an array ({e}); pass a numpy array or a torch tensor.") from e


def _checked_latents(latents, name: str = "latents") -> np.ndarray:
    z = _numpy(latents, name)
    if z.ndim != 2:
        raise DataError(f"{name} must be a 2-D array (N datapoints, L latent coordinates); got shape "
                        f"{tuple(z.shape)}. A single coordinate is {name}.reshape(-1, 1).")
    if z.dtype == bool or not np.issubdtype(z.dtype, np.number) or np.issubdtype(z.dtype, np.complexfloating):
        raise DataError(f"{name} must hold real numbers; got dtype {z.dtype}.")
    z = z.astype(np.float64)
    if z.shape[1] < 1:
        raise DataError(f"{name} has no latent coordinates (shape {tuple(z.shape)}).")
    bad = ~np.isfinite(z)
    if bad.any():
        rows = np.flatnonzero(bad.any(axis=1))
        raise DataError(f"{name} holds {int(bad.sum())} NaN or infinite values, in {rows.size} of {z.shape[0]} "
                        f"datapoints (the first at row {int(rows[0])}); an encoder that returns them has "
                        "diverged, or the data has gaps.")
    return z


def _checked_factors(factors, n: int | None = None) -> tuple[np.ndarray, list[int]]:
    """Factor indices relabelled 0..K_k-1 per factor (the values are only labels), and each K_k."""
    v = _numpy(factors, "factors")
    if v.ndim != 2:
        raise DataError(f"factors must be a 2-D array (N datapoints, F factors); got shape {tuple(v.shape)}. "
                        "A single factor is factors.reshape(-1, 1).")
    if v.dtype == bool:
        v = v.astype(np.int64)
    if not np.issubdtype(v.dtype, np.integer):
        raise DataError(f"factors must be integer factor indices (discrete factors of variation); got dtype "
                        f"{v.dtype}. Index each factor's values (np.unique(column, return_inverse=True)), or cast "
                        "whole numbers with factors.astype(int).")
    if v.shape[1] < 1:
        raise DataError(f"factors has no columns (shape {tuple(v.shape)}).")
    if n is not None and v.shape[0] != n:
        raise DataError(f"latents has {n} datapoints and factors {v.shape[0]}: they must be the same datapoints, "
                        "row for row.")
    codes = np.empty(v.shape, dtype=np.int64)
    sizes = []
    for k in range(v.shape[1]):
        values, codes[:, k] = np.unique(v[:, k], return_inverse=True)
        sizes.append(int(values.size))
    return codes, sizes


def _checked_pair(latents, factors, least: int = 2) -> tuple[np.ndarray, np.ndarray, list[int]]:
    z = _checked_latents(latents)
    v, sizes = _checked_factors(factors, z.shape[0])
    if z.shape[0] < least:
        raise DataError(f"this metric needs at least {least} datapoints; got {z.shape[0]}.")
    return z, v, sizes


def _canonical_order(z: np.ndarray, v: np.ndarray) -> np.ndarray:
    """A permutation of the datapoints that depends only on them as a set.

    Primary key: s_i = sum_j |z_ij - m_j| / r_j with m_j and r_j the midrange and the range of
    coordinate j (min and max are exact whatever the order; the terms are summed in sorted order),
    which does not change when the coordinates are permuted, rescaled (either sign) or shifted.
    Ties (exact duplicates in s) are broken by the factor indices, then by the latents."""
    lo, hi = z.min(axis=0), z.max(axis=0)
    span = np.where(hi > lo, hi - lo, 1.0)
    terms = np.sort(np.abs((z - (lo + hi) / 2) / span), axis=1)
    key = terms.sum(axis=1)
    keys = [z[:, j] for j in range(z.shape[1] - 1, -1, -1)] + [v[:, k] for k in range(v.shape[1] - 1, -1, -1)]
    return np.lexsort((*keys, key))


def _split(n: int, test_fraction: float, seed: int) -> np.ndarray:
    """A boolean test mask over n datapoints (in canonical order): round(n * test_fraction) of them,
    chosen by ``numpy.random.default_rng(seed)``."""
    n_test = min(max(int(round(n * test_fraction)), 1), n - 2)
    mask = np.zeros(n, dtype=bool)
    mask[np.random.default_rng(seed).permutation(n)[:n_test]] = True
    return mask


def _ordered_split(z: np.ndarray, v: np.ndarray, test_fraction: float,
                   seed: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The datapoints in canonical order (:func:`_canonical_order`) and the seeded test mask over them."""
    order = _canonical_order(z, v)
    z, v = z[order], v[order]
    return z, v, _split(z.shape[0], test_fraction, seed)


def _check_fraction(test_fraction) -> float:
    if not isinstance(test_fraction, (int, float)) or not 0 < test_fraction < 1:
        raise ConfigError(f"test_fraction must be a number in (0, 1); got {test_fraction!r}.")
    return float(test_fraction)


def _check_int(value, name: str, least: int) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < least:
        raise ConfigError(f"{name} must be an integer >= {least}; got {value!r}.")
    return int(value)


def _normalized_entropy(p: np.ndarray, base: int) -> np.ndarray:
    """Entropy of each row of ``p`` (rows sum to 1) in log base ``base``, with 0 log 0 = 0; 0 when
    base <= 1 (a distribution over one outcome has no uncertainty)."""
    if base <= 1:
        return np.zeros(p.shape[0])
    with np.errstate(divide="ignore", invalid="ignore"):
        terms = np.where(p > 0, -p * np.log(np.where(p > 0, p, 1.0)), 0.0)
    return terms.sum(axis=1) / math.log(base)


# ----------------------------------------------------------------------------------------------
# MIG


def _discretize(z: np.ndarray, bins: int) -> np.ndarray:
    """Each coordinate into ``bins`` equal-width bins over its range [min, max]: bin
    floor((z - min) / (max - min) * bins), the maximum in the last bin, a constant coordinate in
    bin 0 (disentanglement_lib's np.histogram / np.digitize rule)."""
    lo, hi = z.min(axis=0), z.max(axis=0)
    span = hi - lo
    scaled = np.where(span > 0, (z - lo) / np.where(span > 0, span, 1.0) * bins, 0.0)
    return np.clip(np.floor(scaled), 0, bins - 1).astype(np.int64)


def _mutual_information(a: np.ndarray, ka: int, b: np.ndarray, kb: int) -> float:
    """Plug-in I(a; b) in nats from the joint counts of two label arrays:
    sum_ab (n_ab / n) log(n_ab n / (n_a n_b)). The ratio is formed from integer-valued floats,
    so independent counts (n_ab n = n_a n_b) give exactly 0."""
    n = a.size
    joint = np.bincount(a * kb + b, minlength=ka * kb).reshape(ka, kb).astype(np.float64)
    na, nb = joint.sum(axis=1), joint.sum(axis=0)
    rows, cols = np.nonzero(joint)
    nab = joint[rows, cols]
    value = float(np.sum(nab / n * np.log(nab * n / (na[rows] * nb[cols]))))
    return max(value, 0.0)


def mig(latents, factors, bins: int = 20) -> dict:
    """Mutual Information Gap (Chen et al. 2018, "Isolating Sources of Disentanglement in VAEs").

    MIG = (1/F') sum_k (I_(1)k - I_(2)k) / H(v_k), where I_(1)k >= I_(2)k are the largest and the
    second largest of I(z_j; v_k) over the latent coordinates j, and the mean runs over the F'
    factors that take more than one value.

    Estimation (disentanglement_lib's, Locatello et al. 2019):

    * each latent coordinate is discretized into ``bins`` equal-width bins over its observed range
      (the maximum in the last bin; a constant coordinate in one bin);
    * I(z_j; v_k) is the plug-in mutual information of the joint counts of (bin, factor value),
      in nats; H(v_k) the plug-in entropy of the factor's counts, in nats. (The plug-in MI of
      independent variables is biased upward by about (bins - 1)(K_k - 1) / (2N) nats.)
    * a factor with a single value (H = 0) is excluded from the mean and listed in
      ``excluded_factors`` (disentanglement_lib divides by 0 there);
    * with one latent coordinate there is no second-best code: the gap is I_(1)k / H(v_k).

    Returns ``mig``, ``per_factor`` (each factor's normalized gap, None where excluded),
    ``mutual_information`` (the L x F matrix, nats), ``entropy`` (per factor, nats),
    ``excluded_factors`` and ``bins``.
    """
    bins = _check_int(bins, "bins", 2)
    z, v, sizes = _checked_pair(latents, factors)
    codes = _discretize(z, bins)
    n_latents, n_factors = z.shape[1], v.shape[1]
    mi = np.zeros((n_latents, n_factors))
    for j in range(n_latents):
        for k in range(n_factors):
            mi[j, k] = _mutual_information(codes[:, j], bins, v[:, k], sizes[k])
    entropy = [_mutual_information(v[:, k], sizes[k], v[:, k], sizes[k]) for k in range(n_factors)]
    excluded = [k for k in range(n_factors) if sizes[k] < 2]
    if len(excluded) == n_factors:
        raise DataError("every factor takes a single value in these datapoints, so no factor has any information "
                        "for a latent to capture (H(v_k) = 0); MIG needs a factor that varies.")
    per_factor: list[float | None] = []
    for k in range(n_factors):
        if k in excluded:
            per_factor.append(None)
            continue
        top = np.sort(mi[:, k])[::-1]
        second = top[1] if n_latents > 1 else 0.0
        per_factor.append(float((top[0] - second) / entropy[k]))
    kept = [g for g in per_factor if g is not None]
    return {
        "mig": float(np.mean(kept)),
        "per_factor": per_factor,
        "mutual_information": mi.tolist(),
        "entropy": [float(h) for h in entropy],
        "excluded_factors": excluded,
        "bins": bins,
    }


# ----------------------------------------------------------------------------------------------
# DCI


def _fit_logistic(x: np.ndarray, y: np.ndarray, n_classes: int, l2: float,
                  max_iter: int) -> tuple[np.ndarray, np.ndarray, bool]:
    """Multinomial logistic regression, minimizing mean cross-entropy + (l2 / 2) ||W||^2 (the
    intercepts unpenalized) by L-BFGS with a strong-Wolfe line search in float64, from zeros.
    Returns W (classes x inputs), b, and whether the gradient fell under tolerance.

    It runs on one CPU thread whatever ``torch.get_num_threads()`` says (restored after): the
    problems are small, so threads only cost (badly so on a busy machine), and the result then does
    not depend on the thread count."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        return _fit_logistic_here(x, y, n_classes, l2, max_iter)
    finally:
        torch.set_num_threads(threads)


def _fit_logistic_here(x: np.ndarray, y: np.ndarray, n_classes: int, l2: float,
                       max_iter: int) -> tuple[np.ndarray, np.ndarray, bool]:
    xt = torch.as_tensor(x, dtype=torch.float64)
    yt = torch.as_tensor(y, dtype=torch.int64)
    weight = torch.zeros(n_classes, x.shape[1], dtype=torch.float64, requires_grad=True)
    bias = torch.zeros(n_classes, dtype=torch.float64, requires_grad=True)
    optimizer = torch.optim.LBFGS([weight, bias], lr=1.0, max_iter=max_iter, max_eval=2 * max_iter,
                                  tolerance_grad=1e-9, tolerance_change=1e-15, history_size=20,
                                  line_search_fn="strong_wolfe")

    def loss_fn() -> torch.Tensor:
        return torch.nn.functional.cross_entropy(xt @ weight.T + bias, yt) + 0.5 * l2 * (weight * weight).sum()

    def closure() -> torch.Tensor:
        optimizer.zero_grad()
        loss = loss_fn()
        loss.backward()
        return loss

    optimizer.step(closure)
    optimizer.zero_grad()
    loss_fn().backward()
    gradient = max(float(weight.grad.abs().max()), float(bias.grad.abs().max()))
    return weight.detach().numpy().copy(), bias.detach().numpy().copy(), gradient <= 1e-6


def _dci_settings(test_fraction, seed, l2, max_iter) -> tuple[float, int, float, int]:
    """DCI's settings checked: test_fraction, seed, l2 (as a float) and max_iter."""
    test_fraction = _check_fraction(test_fraction)
    seed = _check_int(seed, "seed", 0)
    max_iter = _check_int(max_iter, "max_iter", 1)
    if not isinstance(l2, (int, float)) or not l2 > 0:
        raise ConfigError(f"l2 must be a positive number (the L2 penalty on the weights); got {l2!r}.")
    return test_fraction, seed, float(l2), max_iter


class _FactorFits(NamedTuple):
    """DCI's predictors of the factors: per factor, None where the factor is excluded."""

    importance: np.ndarray  # R, L x F (a column of zeros for an excluded factor)
    accuracy_train: list[float | None]
    accuracy_test: list[float | None]
    converged: list[bool | None]
    excluded: list[int]  # the factors with a single value


def _standardized(z_train: np.ndarray, z_test: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Both splits standardized by the training split's mean and standard deviation (a constant coordinate: 0)."""
    mean = z_train.mean(axis=0)
    std = z_train.std(axis=0)
    std = np.where(std > 0, std, 1.0)
    return (z_train - mean) / std, (z_test - mean) / std


def _fit_factor(x_train: np.ndarray, y_train: np.ndarray, x_test: np.ndarray, y_test: np.ndarray, l2: float,
                max_iter: int) -> tuple[np.ndarray | None, float, float, bool]:
    """One factor's classifier: the codes' importance (None: none matters), train and test accuracy, convergence."""
    classes, y_fit = np.unique(y_train, return_inverse=True)
    if classes.size == 1:  # nothing to separate: always that class, no code matters
        pred_train = np.full(y_train.shape, classes[0])
        pred_test = np.full(y_test.shape, classes[0])
        importance, converged = None, True
    else:
        w, b, converged = _fit_logistic(x_train, y_fit, classes.size, l2, max_iter)
        importance = np.abs(w).mean(axis=0)
        pred_train = classes[np.argmax(x_train @ w.T + b, axis=1)]
        pred_test = classes[np.argmax(x_test @ w.T + b, axis=1)]
    return importance, float(np.mean(pred_train == y_train)), float(np.mean(pred_test == y_test)), converged


def _fit_factors(z: np.ndarray, v: np.ndarray, sizes: list[int], test: np.ndarray, l2: float,
                 max_iter: int) -> _FactorFits:
    """The classifier of each factor that varies, fitted on the standardized training split."""
    x_train, x_test = _standardized(z[~test], z[test])
    n_latents, n_factors = z.shape[1], v.shape[1]
    excluded = [k for k in range(n_factors) if sizes[k] < 2]
    if len(excluded) == n_factors:
        raise DataError("every factor takes a single value in these datapoints; DCI needs a factor that varies.")
    fits = _FactorFits(np.zeros((n_latents, n_factors)), [None] * n_factors, [None] * n_factors,
                       [None] * n_factors, excluded)
    for k in range(n_factors):
        if k in excluded:
            continue
        importance, fits.accuracy_train[k], fits.accuracy_test[k], fits.converged[k] = _fit_factor(
            x_train, v[~test, k], x_test, v[test, k], l2, max_iter)
        if importance is not None:
            fits.importance[:, k] = importance
    return fits


def _entropy_weighted(r: np.ndarray) -> tuple[float, float, np.ndarray, np.ndarray, np.ndarray]:
    """D, C, per-code D, per-factor C and the code weights rho from R's scored columns (all 0 if R is)."""
    n_latents, n_kept = r.shape
    total = r.sum()
    if not total > 0:
        return 0.0, 0.0, np.zeros(n_latents), np.zeros(n_kept), np.zeros(n_latents)
    code_sum, factor_sum = r.sum(axis=1), r.sum(axis=0)
    p_code = np.where(code_sum[:, None] > 0, r / np.where(code_sum > 0, code_sum, 1.0)[:, None], 0.0)
    p_factor = np.where(factor_sum[None, :] > 0, r / np.where(factor_sum > 0, factor_sum, 1.0)[None, :], 0.0)
    d_code = np.where(code_sum > 0, 1.0 - _normalized_entropy(p_code, n_kept), 0.0)
    c_factor = np.where(factor_sum > 0, 1.0 - _normalized_entropy(p_factor.T, n_latents), 0.0)
    rho, rho_factor = code_sum / total, factor_sum / total
    return float(rho @ d_code), float(rho_factor @ c_factor), d_code, c_factor, rho


def _dci_result(fits: _FactorFits, test: np.ndarray, test_fraction: float, seed: int, l2: float) -> dict:
    """DCI's result: the entropy-weighted scores of the importance matrix, the accuracies and the settings."""
    n_factors = fits.importance.shape[1]
    kept = [k for k in range(n_factors) if k not in fits.excluded]
    disentanglement, completeness, d_code, c_factor, rho = _entropy_weighted(fits.importance[:, kept])
    completeness_per_factor: list[float | None] = [None] * n_factors
    for i, k in enumerate(kept):
        completeness_per_factor[k] = float(c_factor[i])
    return {
        "disentanglement": disentanglement,
        "completeness": completeness,
        "informativeness": float(np.mean([fits.accuracy_test[k] for k in kept])),
        "informativeness_train": float(np.mean([fits.accuracy_train[k] for k in kept])),
        "accuracy_test": fits.accuracy_test,
        "accuracy_train": fits.accuracy_train,
        "disentanglement_per_code": [float(d) for d in d_code],
        "completeness_per_factor": completeness_per_factor,
        "code_weight": [float(x) for x in rho],
        "importance": fits.importance.tolist(),
        "excluded_factors": fits.excluded,
        "converged": fits.converged,
        "test_fraction": test_fraction,
        "seed": seed,
        "l2": l2,
        "n_train": int((~test).sum()),
        "n_test": int(test.sum()),
    }


def dci(latents, factors, test_fraction: float = 0.25, seed: int = 0, l2: float = 0.001, max_iter: int = 500) -> dict:
    """Disentanglement, completeness and informativeness (Eastwood & Williams 2018, "A Framework
    for the Quantitative Evaluation of Disentangled Representations").

    From an importance matrix R (L x F), R_jk >= 0 the importance of code z_j for predicting v_k:

    * disentanglement D = sum_j rho_j (1 - H_F(P_j.)), P_jk = R_jk / sum_k R_jk,
      rho_j = sum_k R_jk / sum_jk R_jk, H_F the entropy in log base F;
    * completeness C = sum_k rho'_k (1 - H_L(P~_.k)), P~_jk = R_jk / sum_j R_jk,
      rho'_k = sum_j R_jk / sum_jk R_jk, in log base L;
    * informativeness I = the mean over factors of the held-out accuracy of the predictor of v_k.

    Estimation:

    * split: round(N * ``test_fraction``) datapoints, drawn by ``seed`` (from the canonical order,
      so the split does not depend on batch order), are held out; the rest fit;
    * predictor of each factor: multinomial logistic regression on the latents standardized by the
      training split's mean and standard deviation (a constant coordinate stays 0), L2-penalized,
      loss = mean cross-entropy + (``l2`` / 2) ||W||^2, intercepts unpenalized, fitted by L-BFGS
      in float64 from zeros on one thread (deterministic). The default l2 = 1e-3 is scikit-learn's
      C = 1 at 1,000 training points; it is fixed per datapoint, so that the estimand (the
      population's penalized optimum) does not drift with N. Why this predictor: a linear
      classifier's weights on standardized inputs are a definite, scale-free importance; it is
      invariant to permuting, rescaling and shifting the codes (the standardization absorbs scale
      and shift, |W| absorbs sign); the L2 penalty makes the optimum unique (and the class weights
      sum to 0) even on separable data; and it runs in torch without scikit-learn. Only the
      classes present in the training split are fitted; a held-out datapoint of another class
      counts as an error;
    * importance R_jk = the mean over the fitted classes c of |W_kcj|;
    * a factor with a single value is excluded (its column of R is 0), listed in
      ``excluded_factors``, and F counts the others; with F = 1 (or L = 1) the entropy in base 1
      is taken as 0, so D (or C) is 1 wherever there is any importance; if R is all 0, D = C = 0.

    Where this differs from disentanglement_lib: it uses scikit-learn's GradientBoostingClassifier
    with impurity-based feature importances on separately sampled training and test sets, and adds
    1e-11 to R before the entropies. Boosted trees' impurity importances depend on the library's
    version and on its random state, and measure nonlinear use of a code; the regularized linear
    model here is deterministic, needs nothing beyond torch, and is closer to Eastwood & Williams'
    Lasso (they also report a random forest). Scores from the two are not interchangeable.

    Returns ``disentanglement``, ``completeness``, ``informativeness`` (test accuracy, mean over
    factors), ``informativeness_train``, per-factor ``accuracy_test`` / ``accuracy_train`` and
    ``completeness_per_factor`` (None where excluded), ``disentanglement_per_code``,
    ``code_weight`` (rho), ``importance`` (R as L rows of F), ``excluded_factors``, ``converged``
    (per factor: the L-BFGS gradient fell under 1e-6), and the settings.
    """
    test_fraction, seed, l2, max_iter = _dci_settings(test_fraction, seed, l2, max_iter)
    z, v, sizes = _checked_pair(latents, factors, least=4)
    z, v, test = _ordered_split(z, v, test_fraction, seed)
    fits = _fit_factors(z, v, sizes, test, l2, max_iter)
    return _dci_result(fits, test, test_fraction, seed, l2)


# ----------------------------------------------------------------------------------------------
# SAP


def _nearest_mean_predictions(z_train: np.ndarray, y_train: np.ndarray, z_test: np.ndarray,
                              n_classes: int) -> np.ndarray:
    """Class-conditional Gaussians with a shared variance and equal class priors, per column of z:
    the decision rule is the nearest class mean, fitted on the training split (classes absent from
    it are never predicted; ties go to the lower class index). Returns (n_test, L) predictions."""
    counts = np.bincount(y_train, minlength=n_classes)
    present = np.flatnonzero(counts)
    predictions = np.empty(z_test.shape, dtype=np.int64)
    for j in range(z_train.shape[1]):
        means = np.bincount(y_train, weights=z_train[:, j], minlength=n_classes)[present] / counts[present]
        predictions[:, j] = present[np.argmin(np.abs(z_test[:, j, None] - means[None, :]), axis=1)]
    return predictions


def _adjusted_balanced_accuracy(y: np.ndarray, prediction: np.ndarray) -> float | None:
    """Balanced accuracy (the mean over the classes present in y of their recall), rescaled so that
    chance (1/K) is 0 and perfect is 1: max(0, (bacc - 1/K) / (1 - 1/K)). None if y has one class."""
    classes = np.unique(y)
    if classes.size < 2:
        return None
    recall = [np.mean(prediction[y == c] == c) for c in classes]
    chance = 1.0 / classes.size
    return float(max((np.mean(recall) - chance) / (1.0 - chance), 0.0))


def _sap_scores(z: np.ndarray, v: np.ndarray, sizes: list[int],
                test: np.ndarray) -> tuple[list[list[float | None]], list[float | None], list[int]]:
    """SAP's score matrix S (None in unscored columns), each factor's gap S_(1)k - S_(2)k, the factors not scored."""
    n_latents, n_factors = z.shape[1], v.shape[1]
    scores: list[list[float | None]] = [[None] * n_factors for _ in range(n_latents)]
    per_factor: list[float | None] = [None] * n_factors
    excluded = []
    for k in range(n_factors):
        y_test = v[test, k]
        if sizes[k] < 2 or np.unique(y_test).size < 2:
            excluded.append(k)
            continue
        predictions = _nearest_mean_predictions(z[~test], v[~test, k], z[test], sizes[k])
        column = [_adjusted_balanced_accuracy(y_test, predictions[:, j]) for j in range(n_latents)]
        for j in range(n_latents):
            scores[j][k] = column[j]
        ranked = sorted(column, reverse=True)
        per_factor[k] = float(ranked[0] - (ranked[1] if n_latents > 1 else 0.0))
    return scores, per_factor, excluded


def sap(latents, factors, test_fraction: float = 0.25, seed: int = 0) -> dict:
    """Separated Attribute Predictability (Kumar et al. 2018, "Variational Inference of
    Disentangled Latent Concepts from Unlabeled Observations").

    A score matrix S (L x F): S_jk = how well the latent coordinate z_j ALONE predicts the factor
    v_k on held-out datapoints; SAP = (1/F') sum_k (S_(1)k - S_(2)k), the mean over the F' scored
    factors of the gap between the largest and the second largest score in column k.

    Estimation:

    * split: round(N * ``test_fraction``) datapoints, drawn by ``seed`` from the canonical order,
      are held out; the classifiers are fitted on the rest;
    * classifier: a 1-D nearest-class-mean classifier, i.e. class-conditional Gaussians with a
      shared variance and equal class priors (1-D linear discriminant analysis with uniform
      priors; the shared variance then cancels), fitted on the training split. Why: like
      disentanglement_lib's linear SVM it splits the line into intervals ordered by the class
      means (a linear notion of predictability), it has a closed form (deterministic, no solver,
      no scikit-learn), and it is invariant to rescaling (either sign) and shifting z_j;
    * score: chance-adjusted balanced accuracy on the test split, (bacc - 1/K) / (1 - 1/K), with
      bacc the mean recall over the K classes present in the test split: 0 for a coordinate that
      carries no information (in expectation), 1 for perfect prediction, whatever the number and
      balance of the factor's values; a score below chance (sampling noise: a classifier no better
      than guessing) is clipped to 0, so S is in [0, 1] and SAP's maximum is 1 (as with Kumar et
      al.'s R^2 for continuous factors);
    * a factor with a single value, or a single value in the test split, is not scored (listed in
      ``excluded_factors``); with one latent coordinate the gap is S_(1)k.

    Where this differs from disentanglement_lib: it trains scikit-learn's LinearSVC(C=0.01,
    class_weight="balanced") per (j, k) on separately sampled sets and scores plain accuracy. Plain
    accuracy makes the best achievable gap 1 - (the majority class rate), which differs between
    factors and datasets; the chance-adjusted balanced accuracy puts every factor on [0, 1].

    Returns ``sap``, ``per_factor`` (the gaps, None where excluded), ``score_matrix`` (S, L rows of
    F, None in excluded columns), ``excluded_factors`` and the settings.
    """
    test_fraction = _check_fraction(test_fraction)
    seed = _check_int(seed, "seed", 0)
    z, v, sizes = _checked_pair(latents, factors, least=4)
    z, v, test = _ordered_split(z, v, test_fraction, seed)
    scores, per_factor, excluded = _sap_scores(z, v, sizes, test)
    kept = [g for g in per_factor if g is not None]
    if not kept:
        raise DataError("no factor takes two values in the test split, so SAP scores none; pass more datapoints "
                        "(or factors that vary).")
    return {
        "sap": float(np.mean(kept)),
        "per_factor": per_factor,
        "score_matrix": scores,
        "excluded_factors": excluded,
        "test_fraction": test_fraction,
        "seed": seed,
        "n_train": int((~test).sum()),
        "n_test": int(test.sum()),
    }


# ----------------------------------------------------------------------------------------------
# FactorVAE score


def _represent(represent: Callable, rows: np.ndarray, width: int | None, step: int = REPRESENT_ROWS) -> np.ndarray:
    """``represent`` over ``rows`` in calls of at most ``step`` rows, its output checked."""
    parts = []
    for start in range(0, rows.shape[0], step):
        block = rows[start:start + step]
        out = represent(block.copy())
        try:
            z = _checked_latents(out, "represent(factors)")
        except DataError as e:
            raise DataError(f"{e} (represent must return one row of latents per row of factors it is given.)") from None
        if z.shape[0] != block.shape[0]:
            raise DataError(f"represent returned {z.shape[0]} rows of latents for {block.shape[0]} rows of factors; "
                            "it must return one row per row.")
        if width is not None and z.shape[1] != width:
            raise DataError(f"represent returned {z.shape[1]} latent coordinates where it returned {width} before.")
        width = z.shape[1]
        parts.append(z)
    return np.concatenate(parts)


def _factorvae_settings(represent, seed, batch_size, train_votes, eval_votes, variance_samples,
                        min_std) -> tuple[int, int, int, int, int]:
    """The FactorVAE score's settings checked: seed, batch_size, train_votes, eval_votes, variance_samples."""
    seed = _check_int(seed, "seed", 0)
    batch_size = _check_int(batch_size, "batch_size", 2)
    train_votes = _check_int(train_votes, "train_votes", 1)
    eval_votes = _check_int(eval_votes, "eval_votes", 1)
    variance_samples = _check_int(variance_samples, "variance_samples", 2)
    if not callable(represent):
        raise ConfigError("represent must be a callable: factors (B, F) integer array -> latents (B, L).")
    if not isinstance(min_std, (int, float)) or not min_std >= 0:
        raise ConfigError(f"min_std must be a number >= 0; got {min_std!r}.")
    return seed, batch_size, train_votes, eval_votes, variance_samples


def _checked_factor_sizes(factor_sizes) -> np.ndarray:
    """``factor_sizes`` as an int64 array of positive sizes, at least one of them 2 or more."""
    sizes = np.asarray(factor_sizes)
    if sizes.ndim != 1 or sizes.size < 1 or not np.issubdtype(sizes.dtype, np.integer) or (sizes < 1).any():
        raise ConfigError("factor_sizes must be a list of positive integers (values per factor); "
                          f"got {factor_sizes!r}.")
    sizes = sizes.astype(np.int64)
    if not (sizes >= 2).any():
        raise ConfigError("every factor has a single value; the FactorVAE score needs a factor that varies.")
    return sizes


def _factor_sampler(sizes: np.ndarray, sample_factors: Callable | None,
                    rng: np.random.Generator) -> Callable[[int], np.ndarray]:
    """``draw(n)``: n rows of factor indices, uniform per factor, or by ``sample_factors(n, rng)`` (checked)."""
    n_factors = sizes.size

    def draw(n: int) -> np.ndarray:
        if sample_factors is None:
            return np.stack([rng.integers(0, size, n) for size in sizes], axis=1).astype(np.int64)
        rows = _numpy(sample_factors(n, rng), "sample_factors(n, rng)")
        if rows.shape != (n, n_factors) or not np.issubdtype(rows.dtype, np.integer):
            raise DataError(f"sample_factors(n, rng) must return an ({n}, {n_factors}) integer array; got shape "
                            f"{tuple(rows.shape)}, dtype {rows.dtype}.")
        if (rows < 0).any() or (rows >= sizes).any():
            raise DataError("sample_factors(n, rng) returned a factor index outside 0..factor_sizes[k]-1.")
        return rows.astype(np.int64)

    return draw


def _factorvae_record(global_std: np.ndarray, active: np.ndarray, sizes: np.ndarray, min_std: float, seed: int,
                      batch_size: int) -> dict:
    """The part of the FactorVAE result that records the global scale and the settings."""
    return {
        "global_std": [float(s) for s in global_std],
        "active": [bool(a) for a in active],
        "excluded_factors": [int(k) for k in np.flatnonzero(sizes < 2)],
        "min_std": float(min_std),
        "seed": seed,
        "batch_size": batch_size,
    }


@dataclass
class _Voter:
    """FactorVAE votes: a batch with one factor fixed votes for its kept coordinate of least normalized variance."""

    represent: Callable
    draw: Callable[[int], np.ndarray]
    rng: np.random.Generator
    varying: np.ndarray  # the factors a vote may fix (two values or more)
    kept: np.ndarray  # the coordinates kept
    variance: np.ndarray  # their global variances s_j^2
    batch_size: int
    width: int  # L, every coordinate
    n_factors: int

    def table(self, count: int) -> np.ndarray:
        """``count`` votes as an L x F table of counts, represented in blocks of whole votes."""
        table = np.zeros((self.width, self.n_factors), dtype=np.int64)
        per_call = max(1, REPRESENT_ROWS // self.batch_size)
        done = 0
        while done < count:
            block = min(per_call, count - done)
            for k, j in zip(*self.votes(block)):
                table[j, k] += 1
            done += block
        return table

    def votes(self, block: int) -> tuple[np.ndarray, np.ndarray]:
        """``block`` votes in one call of ``represent``: the factors fixed and the coordinates voted for."""
        fixed = self.varying[self.rng.integers(0, self.varying.size, block)]
        rows = []
        for k in fixed:
            batch = self.draw(self.batch_size)
            batch[:, k] = batch[0, k]
            rows.append(batch)
        z = _represent(self.represent, np.concatenate(rows), self.width, block * self.batch_size)
        z = z.reshape(block, self.batch_size, self.width)
        local = z[:, :, self.kept].var(axis=1, ddof=1) / self.variance
        return fixed, self.kept[np.argmin(local, axis=1)]


def _no_votes(width: int, n_factors: int, record: dict) -> dict:
    """The FactorVAE result where every coordinate is dropped: a score of 0 and no votes."""
    empty = [[0] * n_factors for _ in range(width)]
    return {"score": 0.0, "train_accuracy": 0.0, "votes_train": empty, "votes_eval": empty,
            "classifier": [None] * width, **record}


def _vote_result(votes_train: np.ndarray, votes_eval: np.ndarray, active: np.ndarray, record: dict) -> dict:
    """The majority-vote classifier of the training votes, its accuracy on both tables, and the record."""
    width = active.size
    classifier = np.argmax(votes_train, axis=1)
    rows = np.arange(width)
    return {
        "score": float(votes_eval[rows, classifier].sum() / votes_eval.sum()),
        "train_accuracy": float(votes_train[rows, classifier].sum() / votes_train.sum()),
        "votes_train": votes_train.tolist(),
        "votes_eval": votes_eval.tolist(),
        "classifier": [int(classifier[j]) if active[j] else None for j in range(width)],
        **record,
    }


def factorvae_score(represent: Callable, factor_sizes, seed: int = 0, batch_size: int = 64,
                    train_votes: int = 800, eval_votes: int = 400, variance_samples: int = 5000,
                    sample_factors: Callable | None = None, min_std: float = FACTORVAE_MIN_STD) -> dict:
    """The FactorVAE disentanglement score (Kim & Mnih 2018, "Disentangling by Factorising"): the
    accuracy of a majority-vote classifier that names the fixed factor from the latent coordinate
    whose normalized variance is smallest.

    Procedure (disentanglement_lib's, Locatello et al. 2019):

    * all randomness comes from ``numpy.random.default_rng(seed)``; factors are drawn uniformly and
      independently per factor (value in 0..factor_sizes[k]-1), or by ``sample_factors(n, rng)``
      if given (it must return an (n, F) integer array);
    * global scale: ``represent`` on ``variance_samples`` drawn factors; s_j = the standard
      deviation (ddof=1) of coordinate j. Coordinates with s_j < ``min_std`` (default 0.05, in
      latent units, disentanglement_lib's study setting: for a VAE with a standard normal prior, a
      posterior mean that moves this little has collapsed to the prior), and any with s_j = 0, are
      dropped; if all are, the score is 0;
    * one vote: draw k uniformly among the factors with at least two values, draw ``batch_size``
      factor rows, set column k of every row to the first row's value, represent them, and vote
      (k, argmin over kept j of Var_batch(z_j) / s_j^2) (variance with ddof=1; ties to the lower j);
    * ``train_votes`` votes, then ``eval_votes`` votes, in that order; the classifier maps each
      coordinate j to argmax_k votes_train[j, k] (ties, and coordinates with no training votes, to
      the lower k); score = the fraction of the evaluation votes it names correctly.

    ``represent`` receives integer factor arrays (B, F) and returns the latents (B, L) of data
    generated from those factors (the caller renders and encodes); it is called on blocks of whole
    votes of at most max(batch_size, 1024) rows.

    Where this differs from disentanglement_lib: its study used 10,000 training and 5,000
    evaluation votes with 10,000 variance samples (ours are smaller, for speed; pass theirs to
    compare); it draws with a legacy ``RandomState``, so the same seed gives other draws; it
    records the votes of a pruned run at the index among the kept coordinates (a relabelling that
    leaves its score unchanged), here at the coordinate's own index; and it chooses the fixed
    factor among all factors, here among those with two values or more (a constant factor cannot
    be told apart; they are listed in ``excluded_factors``).

    Invariances: permuting the coordinates permutes the vote table's rows and leaves the score;
    rescaling (either sign) and shifting a coordinate leaves every vote, provided no coordinate
    crosses ``min_std``.

    Returns ``score`` (evaluation accuracy), ``train_accuracy``, ``votes_train`` / ``votes_eval``
    (L rows of F counts), ``classifier`` (per coordinate its factor, None for dropped ones),
    ``active`` (per coordinate, kept or not), ``global_std``, ``excluded_factors`` and the settings.
    """
    seed, batch_size, train_votes, eval_votes, variance_samples = _factorvae_settings(
        represent, seed, batch_size, train_votes, eval_votes, variance_samples, min_std)
    sizes = _checked_factor_sizes(factor_sizes)
    rng = np.random.default_rng(seed)
    draw = _factor_sampler(sizes, sample_factors, rng)
    global_std = _represent(represent, draw(variance_samples), None).std(axis=0, ddof=1)
    active = (global_std >= min_std) & (global_std > 0)
    record = _factorvae_record(global_std, active, sizes, min_std, seed, batch_size)
    kept = np.flatnonzero(active)
    if kept.size == 0:
        return _no_votes(active.size, sizes.size, record)
    voter = _Voter(represent, draw, rng, np.flatnonzero(sizes >= 2), kept, global_std[kept] ** 2, batch_size,
                   active.size, sizes.size)
    return _vote_result(voter.table(train_votes), voter.table(eval_votes), active, record)


# ----------------------------------------------------------------------------------------------
# bootstrap standard errors

_HEADLINES = {"mig": ("mig",), "dci": ("disentanglement", "completeness", "informativeness"), "sap": ("sap",)}


def with_stderr(metric, latents, factors, resamples: int = 20, seed: int = 0, **options) -> dict:
    """A metric's value on the datapoints and its bootstrap standard error.

    ``metric`` is :func:`mig`, :func:`dci` or :func:`sap` (or its name); ``options`` are passed to
    it (``seed`` here seeds the resampling: DCI's and SAP's train/test splits keep their default
    seed, 0). The datapoints are put in the canonical order (so batch order does not matter), then
    ``resamples`` bootstrap resamples of N datapoints drawn with replacement by
    ``numpy.random.default_rng(seed)`` are scored; the standard error of each headline score is the
    standard deviation (ddof=1) of its resampled values. For DCI and SAP a datapoint drawn twice
    may land on both sides of the train/test split, which makes the resampled held-out scores
    slightly optimistic; the value reported is the metric on the original datapoints.

    Returns ``metric`` (its name), ``value`` and ``stderr`` (dicts over the headline scores: "mig";
    "disentanglement", "completeness", "informativeness"; "sap"), ``bootstrap`` (each headline's
    resampled values), ``result`` (the metric's full output on the datapoints), ``resamples``,
    ``seed``.
    """
    functions = {"mig": mig, "dci": dci, "sap": sap}
    name = metric if isinstance(metric, str) else next((k for k, f in functions.items() if f is metric), None)
    if name not in functions:
        raise ConfigError(f"with_stderr takes mig, dci or sap (the metrics over latents and factors); got {metric!r}.")
    resamples = _check_int(resamples, "resamples", 2)
    seed = _check_int(seed, "seed", 0)
    z, v, _ = _checked_pair(latents, factors)
    order = _canonical_order(z, v)
    z, v = z[order], v[order]
    function = functions[name]
    result = function(z, v, **options)
    rng = np.random.default_rng(seed)
    boot: dict[str, list[float]] = {key: [] for key in _HEADLINES[name]}
    for _ in range(resamples):
        index = np.sort(rng.integers(0, z.shape[0], z.shape[0]))
        resampled = function(z[index], v[index], **options)
        for key in boot:
            boot[key].append(resampled[key])
    return {
        "metric": name,
        "value": {key: result[key] for key in boot},
        "stderr": {key: float(np.std(values, ddof=1)) for key, values in boot.items()},
        "bootstrap": boot,
        "result": result,
        "resamples": resamples,
        "seed": seed,
    }


# ----------------------------------------------------------------------------------------------
# NPMI


def _presence(reference, columns: np.ndarray):
    """The document-presence matrix (count > 0, as float64) of the reference's ``columns``: a
    scipy sparse CSC matrix for a scipy sparse input (found by its ``tocsc`` method, so scipy is not
    imported here), else a dense numpy array. Only these columns are read and checked."""
    if hasattr(reference, "tocsc") and not torch.is_tensor(reference):
        sub = reference.tocsc()[:, columns].tocsc()
        data = np.asarray(sub.data)
        if not np.issubdtype(data.dtype, np.number) or data.dtype == bool:
            sub = sub.astype(np.float64)
            data = np.asarray(sub.data)
        if not np.isfinite(data).all() or (data < 0).any():
            raise DataError("reference holds negative, NaN or infinite counts; it must be a document-term count matrix.")
        sub = sub.astype(np.float64)
        sub.data = (np.asarray(sub.data) > 0).astype(np.float64)
        sub.eliminate_zeros()
        return sub
    if torch.is_tensor(reference):
        index = torch.as_tensor(columns, dtype=torch.int64)
        if reference.layout != torch.strided:
            sub = reference.detach().cpu().to_sparse_coo().coalesce().index_select(1, index).to_dense()
        else:
            sub = reference.detach().cpu().index_select(1, index)
        counts = sub.to(torch.float64).numpy()
    else:
        counts = np.asarray(reference)
        if counts.dtype == bool:
            counts = counts.astype(np.float64)
        if not np.issubdtype(counts.dtype, np.number):
            raise DataError(f"reference must hold counts; got dtype {counts.dtype}.")
        counts = counts[:, columns].astype(np.float64)
    if not np.isfinite(counts).all() or (counts < 0).any():
        raise DataError("reference holds negative, NaN or infinite counts; it must be a document-term count matrix.")
    return (counts > 0).astype(np.float64)


def _checked_top_words(top_words) -> np.ndarray:
    """``top_words`` as an int64 (T, n) array, T >= 1, n >= 2."""
    words = _numpy(top_words, "top_words")
    if words.ndim != 2 or words.shape[0] < 1 or words.shape[1] < 2:
        raise DataError(f"top_words must be a 2-D array (T topics, n >= 2 top words); got shape {tuple(words.shape)}.")
    if not np.issubdtype(words.dtype, np.integer):
        raise DataError(f"top_words must hold integer word ids (columns of the reference); got dtype {words.dtype}.")
    return words.astype(np.int64)


def _reference_shape(reference) -> tuple[int, int]:
    """The reference's number of documents (at least one) and its vocabulary size."""
    shape = getattr(reference, "shape", None)
    if shape is None or len(shape) != 2:
        raise DataError(f"reference must be a 2-D (documents, vocabulary) count matrix; got shape {shape}.")
    n_docs, vocabulary = int(shape[0]), int(shape[1])
    if n_docs < 1:
        raise DataError("reference has no documents.")
    return n_docs, vocabulary


def _check_word_ids(words: np.ndarray, vocabulary: int) -> None:
    """Refuse word ids outside the vocabulary, and a topic that repeats a word."""
    if (words < 0).any() or (words >= vocabulary).any():
        raise DataError(f"top_words holds word ids outside 0..{vocabulary - 1} (the reference's vocabulary).")
    for t, row in enumerate(words):
        if np.unique(row).size != row.size:
            raise DataError(f"topic {t} repeats a word among its top words ({row.tolist()}); they must be distinct.")


def _pair_npmi(sub, doc_freq: np.ndarray, upper: tuple[np.ndarray, np.ndarray], n_docs: int,
               never_together: float) -> np.ndarray:
    """NPMI of one topic's word pairs (in ``upper``'s order) from their presence columns and document frequencies."""
    co = sub.T @ sub
    co = np.asarray(co.toarray() if hasattr(co, "toarray") else co, dtype=np.float64)
    c_ij = co[upper]
    c_i, c_j = doc_freq[upper[0]], doc_freq[upper[1]]
    values = np.full(c_ij.shape, float(never_together))
    both = c_ij > 0
    every = both & (c_ij == n_docs)
    middle = both & ~every
    values[every] = 1.0
    values[middle] = (np.log(c_ij[middle] * n_docs / (c_i[middle] * c_j[middle]))
                      / np.log(n_docs / c_ij[middle]))
    return values


def npmi(top_words, reference, never_together: float = -1.0) -> dict:
    """Topic coherence: the mean normalized pointwise mutual information of each topic's top words
    over a reference corpus (Bouma 2009; as topic coherence, Lau et al. 2014).

    With D documents and document co-occurrence, p(w) = (documents containing w) / D and
    p(w_i, w_j) = (documents containing both) / D; then

        NPMI(w_i, w_j) = log(p_ij / (p_i p_j)) / (-log p_ij)      (in [-1, 1], any log base)

    with two conventions at the ends: where p_ij = 0 (never together, including a word that is in
    no document) NPMI = ``never_together``, by default -1, its limit as p_ij -> 0; where p_ij = 1
    (both in every document) NPMI = 1, its value for words always together. A topic's coherence is
    the mean over its n(n-1)/2 pairs; the score is the mean over topics.

    The -1 differs from two widely used scripts, which score a pair that never co-occurs as 0: the
    ``calc_assoc`` of Lau et al.'s topic_interpretability toolkit (which also counts sliding windows
    rather than documents by default) and ``compute_npmi_at_n`` of Card et al.'s scholar (document
    co-occurrence, as here); pass ``never_together=0.0`` to reproduce their numbers.

    ``top_words``: (T, n) integer word ids, n >= 2 distinct ids per topic (each topic's top words).
    ``reference``: a (D, V) document-term count matrix: numpy, torch (dense or sparse) or scipy
    sparse (recognized by its ``tocsc`` method); only the columns of the topics' words are read,
    binarized (count > 0), and each topic's n x n co-occurrence counts computed from them.

    Returns ``npmi``, ``per_topic``, ``per_pair`` (each topic's pair values in the order
    (0,1), (0,2), ..., (n-2,n-1)), ``missing_words`` (ids in no reference document),
    ``documents`` (D) and ``never_together``.
    """
    if not isinstance(never_together, (int, float)) or not -1 <= never_together <= 1:
        raise ConfigError(f"never_together must be a number in [-1, 1]; got {never_together!r}.")
    words = _checked_top_words(top_words)
    n_docs, vocabulary = _reference_shape(reference)
    _check_word_ids(words, vocabulary)
    columns = np.unique(words)
    presence = _presence(reference, columns)
    doc_freq = np.asarray(presence.sum(axis=0), dtype=np.float64).reshape(-1)
    position = np.searchsorted(columns, words)
    upper = np.triu_indices(words.shape[1], 1)
    per_topic, per_pair = [], []
    for t in range(words.shape[0]):
        values = _pair_npmi(presence[:, position[t]], doc_freq[position[t]], upper, n_docs, never_together)
        per_pair.append([float(x) for x in values])
        per_topic.append(float(values.mean()))
    return {
        "npmi": float(np.mean(per_topic)),
        "per_topic": per_topic,
        "per_pair": per_pair,
        "missing_words": [int(w) for w in columns[doc_freq == 0]],
        "documents": n_docs,
        "never_together": float(never_together),
    }
