"""Count-data distributions: the negative binomial (scVI's mean / inverse-dispersion form), its
zero-inflated mixture, multinomial rows with their own totals, and the Dirichlet's Laplace
approximation. Every number asserted is derived independently: SciPy, mpmath at 50 digits from the
definition, a closed form, or Monte Carlo within standard errors computed here."""

from __future__ import annotations

import itertools
import math

import mpmath
import numpy as np
import pyro
import pyro.poutine as poutine
import pytest
import torch
from scipy import special, stats

from pyro_vae import ConfigError
from pyro_vae.distributions import (
    MultinomialRows,
    NegativeBinomial,
    ZeroInflatedNegativeBinomial,
    dirichlet_laplace_approximation,
)

EPS64 = float(np.finfo(np.float64).eps)
MUS = [1e-8, 1e-3, 0.5, 7.0, 1e3, 1e5]
THETAS = [1e-3, 0.3, 2.0, 50.0, 1e4, 1e8]
XS = [0, 1, 2, 5, 17, 100, 1e3, 1e5]


def grid(*axes):
    """Every combination of the axes, one float64 array per axis."""
    mesh = np.meshgrid(*[np.asarray(a, dtype=np.float64) for a in axes], indexing="ij")
    return [m.ravel() for m in mesh]


def t64(a) -> torch.Tensor:
    return torch.as_tensor(a, dtype=torch.float64)


def nb_log_prob_50_digits(x: float, mu: float, theta: float) -> float:
    """log NB(x; mu, theta) from its definition, in 50-digit arithmetic (mpmath)."""
    with mpmath.workdps(50):
        x, mu, theta = mpmath.mpf(x), mpmath.mpf(mu), mpmath.mpf(theta)
        value = (mpmath.loggamma(x + theta) - mpmath.loggamma(theta) - mpmath.loggamma(x + 1)
                 + theta * (mpmath.log(theta) - mpmath.log(theta + mu)) + x * (mpmath.log(mu) - mpmath.log(theta + mu)))
        return float(value)


def float64_rounding_bound(x, mu, theta):
    """64 eps times the sum of the magnitudes of the terms the package adds up
    ((x + theta - 1/2) log1p(x/theta), (x + theta) log1p(mu/theta), x log mu, x, lgamma(x + 1), the
    Stirling remainders, each < 1): the rounding error of that sum in float64."""
    magnitudes = (np.abs((x + theta - 0.5) * np.log1p(x / theta)) + np.abs((x + theta) * np.log1p(mu / theta))
                  + np.abs(x * np.log(mu)) + x + special.gammaln(x + 1) + 2)
    return 64 * EPS64 * magnitudes


def scipy_nbinom_logpmf(x, mu, theta):
    """SciPy's log NB(x; n=theta, p=theta / (theta + mu)) and a bound on its float64 error.

    SciPy adds gammaln(x + theta) - gammaln(x + 1) - gammaln(theta) + theta log p + x log(1 - p): its
    rounding error is eps times those magnitudes, plus x times the error of log(1 - p) from p rounded
    to float64 (relative error eps theta / mu in 1 - p). Where the bound passes 1e-6 SciPy is no
    reference (theta / mu >= 1e10 with x > 0, or lgamma(1e8) ~ 1.7e9 against a small log-mass); those
    points are checked against the definition at 50 digits instead."""
    p = theta / (theta + mu)
    value = stats.nbinom.logpmf(x, n=theta, p=p)
    error = (8 * EPS64 * (special.gammaln(x + theta) + np.abs(special.gammaln(theta)) + special.gammaln(x + 1)
                          + np.abs(theta * np.log(p)) + np.abs(x * np.log1p(-p)))
             + 2 * x * EPS64 * theta / mu)
    return value, error


# ---------------------------------------------------------------------------------------------
# NegativeBinomial: log-mass


def test_negative_binomial_matches_scipy_nbinom_over_the_grid_including_the_extremes():
    mu, theta, x = grid(MUS, THETAS, XS)  # 288 points: mu 1e-8 .. 1e5, theta 1e-3 .. 1e8, x 0 .. 1e5
    ours = NegativeBinomial(t64(mu), t64(theta)).log_prob(t64(x)).numpy()
    reference, scipy_error = scipy_nbinom_logpmf(x, mu, theta)
    usable = scipy_error < 1e-6 * (1 + np.abs(reference))
    assert usable.sum() >= 250
    assert usable[(mu == 1e-8) & (theta <= 50)].all() and usable[(theta == 1e8) & (mu == 1e5)].all()
    assert usable[x == 1e5].sum() >= 30
    tolerance = scipy_error + float64_rounding_bound(x, mu, theta)
    np.testing.assert_array_less(np.abs(ours - reference)[usable], tolerance[usable])


def test_negative_binomial_matches_the_definition_at_50_digits_everywhere_on_the_grid():
    mu, theta, x = grid(MUS, THETAS, XS)
    ours = NegativeBinomial(t64(mu), t64(theta)).log_prob(t64(x)).numpy()
    reference = np.array([nb_log_prob_50_digits(*point) for point in zip(x, mu, theta)])
    np.testing.assert_array_less(np.abs(ours - reference), float64_rounding_bound(x, mu, theta))


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_negative_binomial_at_theta_1e8_is_the_poisson_limit(dtype):
    """log NB(x) - log Poisson(x; mu) = sum_{k<x} log(1 + k/theta) - theta log1p(mu/theta) + mu
    - x log1p(mu/theta) = ((x - mu)^2 - x) / (2 theta) + R, with |R| <= (x + mu + 1)^3 / theta^2 (each
    expansion's next term is at most cubic in x and mu over theta^2). At theta = 1e8 the difference is
    below 1e-4 for these points, while lgamma(x + theta) - lgamma(theta) alone would be off by ~1e2 in float32."""
    theta = 1e8
    mu, x = grid([1e-8, 0.3, 5.0, 40.0], [0, 1, 4, 30, 80])
    ours = NegativeBinomial(torch.as_tensor(mu, dtype=dtype), theta).log_prob(torch.as_tensor(x, dtype=dtype))
    poisson = stats.poisson.logpmf(x, mu)
    predicted = ((x - mu) ** 2 - x) / (2 * theta)
    remainder = (x + mu + 1) ** 3 / theta**2
    if dtype == torch.float64:
        rounding = float64_rounding_bound(x, mu, theta)
    else:  # float32: each term rounded at relative 6e-8; (x + theta) itself is rounded to a multiple of 8
        eps32 = float(np.finfo(np.float32).eps)
        rounding = 64 * eps32 * (np.abs(x * np.log(mu)) + x + mu + special.gammaln(x + 1) + 1) + 8 * (x + mu) / theta
    np.testing.assert_array_less(np.abs(ours.double().numpy() - poisson - predicted), remainder + rounding)


def nb_tail_bound(mu: float, theta: float, a: int) -> float:
    """A bound on P(X >= a), X ~ NB(mu, theta), by Chernoff: P(X >= a) <= G(s) / s^a for every
    1 < s < 1 + theta / mu, with G(s) = E[s^X] = (theta / (theta - mu (s - 1)))^theta the generating
    function; the least over a grid of s is still a bound."""
    u = np.logspace(-14, math.log10(0.999), 2000)  # s - 1 = u theta / mu
    s = 1 + u * theta / mu
    return float(np.exp(np.min(-theta * np.log1p(-u) - a * np.log(s))))


def mass_cut(mu: float, theta: float, tail: float = 1e-9) -> int:
    """An X_max with P(X > X_max) <= tail (:func:`nb_tail_bound`)."""
    cut = math.ceil(mu)
    while nb_tail_bound(mu, theta, cut + 1) > tail:
        cut = math.ceil(1.25 * cut) + 1
    return cut


def test_negative_binomial_mass_sums_to_one():
    """Summed over 0..X_max with a Chernoff bound of 1e-9 on the mass beyond."""
    for mu, theta in [(1e-8, 1e8), (0.5, 0.1), (10.0, 0.1), (3.0, 2.0), (50.0, 1e4), (7.0, 1e8), (1e3, 0.5)]:
        x = torch.arange(mass_cut(mu, theta) + 1, dtype=torch.float64)
        total = NegativeBinomial(t64(mu), t64(theta)).log_prob(x).exp().sum().item()
        assert total == pytest.approx(1.0, abs=1e-6), (mu, theta)


def test_negative_binomial_refuses_values_and_parameters_outside_its_support():
    nb = NegativeBinomial(t64([2.0]), t64([3.0]), validate_args=True)
    for bad in (1.5, -1.0):
        with pytest.raises(ValueError):
            nb.log_prob(t64([bad]))
    nb.log_prob(t64([4.0]))
    with pytest.raises(ValueError):
        NegativeBinomial(t64([0.0]), t64([3.0]), validate_args=True)
    with pytest.raises(ValueError):
        NegativeBinomial(t64([1.0]), t64([-3.0]), validate_args=True)


# ---------------------------------------------------------------------------------------------
# ZeroInflatedNegativeBinomial


def zinb_log_prob_from_definition(x, mu, theta, logits):
    """log(pi [x = 0] + (1 - pi) NB(x)), pi = sigmoid(logits), with SciPy's nbinom; and the error
    bound of that NB (:func:`scipy_nbinom_logpmf`)."""
    log_pi, log_not_pi = np.log(special.expit(logits)), np.log(special.expit(-logits))
    log_nb, error = scipy_nbinom_logpmf(x, mu, theta)
    return np.where(x == 0, np.logaddexp(log_pi, log_not_pi + log_nb), log_not_pi + log_nb), error


def test_zero_inflated_negative_binomial_matches_the_mixture_written_from_its_definition():
    mu, theta, x, logits = grid([1e-8, 0.5, 7.0, 1e3], [1e-3, 2.0, 50.0, 1e4], [0, 1, 3, 40, 1e3],
                                [-30.0, -2.0, 0.0, 1.5, 30.0])
    ours = ZeroInflatedNegativeBinomial(t64(mu), t64(theta), t64(logits)).log_prob(t64(x)).numpy()
    reference, scipy_error = zinb_log_prob_from_definition(x, mu, theta, logits)
    usable = scipy_error < 1e-6 * (1 + np.abs(reference))
    assert np.array_equal(usable, ~((mu == 1e-8) & (theta == 1e4) & (x > 0)))  # 380 of 400 points
    tolerance = scipy_error + float64_rounding_bound(x, mu, theta) + 8 * EPS64 * (np.abs(logits) + np.abs(reference))
    np.testing.assert_array_less(np.abs(ours - reference)[usable], tolerance[usable])


def test_zero_inflated_negative_binomial_mass_sums_to_one():
    """Beyond X_max the ZINB has (1 - pi) times the NB's mass: below the NB's Chernoff bound, 1e-9."""
    for mu, theta, logit in [(0.5, 0.1, -1.0), (10.0, 0.5, 2.0), (3.0, 2.0, -30.0), (40.0, 1e4, 30.0)]:
        zinb = ZeroInflatedNegativeBinomial(t64(mu), t64(theta), t64(logit))
        x = torch.arange(mass_cut(mu, theta) + 1, dtype=torch.float64)
        assert zinb.log_prob(x).exp().sum().item() == pytest.approx(1.0, abs=1e-6), (mu, theta, logit)


def test_zero_inflated_mean_and_variance_are_the_exact_moments_of_its_mass():
    """(1 - pi) mu and (1 - pi) mu (1 + mu / theta + pi mu) against sum x p(x) and sum x^2 p(x) - mean^2."""
    zinb = ZeroInflatedNegativeBinomial(t64(6.0), t64(1.5), t64(-0.4))
    # p(x) <= G(s) s^-x for every x (G the generating function, s = 1.2 < 1 + theta / mu), and with
    # r = 1/s, sum_{x >= a} x^2 r^x <= a^2 r^a (1 + r) / (1 - r)^3: the moments beyond x = 3000 that the
    # sums leave out are below e^-400
    s, a = 1.2, 3001
    log_g = -1.5 * math.log1p(-6.0 * (s - 1) / 1.5)
    assert log_g + 2 * math.log(a) - a * math.log(s) + math.log((1 + 1 / s) / (1 - 1 / s) ** 3) < -400
    x = torch.arange(3001, dtype=torch.float64)
    p = zinb.log_prob(x).exp()
    mean = (x * p).sum()
    variance = (x.pow(2) * p).sum() - mean**2
    pi = 1 / (1 + math.exp(0.4))
    assert mean.item() == pytest.approx((1 - pi) * 6.0, rel=1e-12)
    assert variance.item() == pytest.approx((1 - pi) * 6.0 * (1 + 6.0 / 1.5 + pi * 6.0), rel=1e-10)
    assert zinb.mean.item() == pytest.approx((1 - pi) * 6.0, rel=1e-14)
    assert zinb.variance.item() == pytest.approx(variance.item(), rel=1e-10)


# ---------------------------------------------------------------------------------------------
# Sampling: mean and variance within standard errors


def assert_moments_within_standard_errors(draws: torch.Tensor, mean: float, variance: float) -> None:
    """Sample mean within 5 standard errors sqrt(var / N); sample variance within 5 of its own,
    sqrt((m4 - s^4) / N), with m4 the sample's fourth central moment."""
    draws = draws.double()
    n = draws.numel()
    sample_mean = draws.mean().item()
    centred = draws - sample_mean
    sample_variance = centred.pow(2).mean().item()
    fourth = centred.pow(4).mean().item()
    assert abs(sample_mean - mean) < 5 * math.sqrt(variance / n)
    assert abs(sample_variance - variance) < 5 * math.sqrt((fourth - sample_variance**2) / n)


def test_negative_binomial_draws_have_its_mean_and_variance():
    nb = NegativeBinomial(torch.tensor(3.0), torch.tensor(0.7))
    draws = nb.sample((200_000,))
    assert draws.shape == (200_000,) and (draws >= 0).all() and (draws == draws.round()).all()
    assert_moments_within_standard_errors(draws, 3.0, 3.0 + 9.0 / 0.7)
    assert nb.mean.item() == pytest.approx(3.0) and nb.variance.item() == pytest.approx(3.0 + 9.0 / 0.7)


def test_zero_inflated_negative_binomial_draws_have_its_mean_variance_and_zero_mass():
    mu, theta, logit = 4.0, 2.0, -0.3
    zinb = ZeroInflatedNegativeBinomial(torch.tensor(mu), torch.tensor(theta), torch.tensor(logit))
    draws = zinb.sample((200_000,))
    pi = 1 / (1 + math.exp(-logit))
    assert_moments_within_standard_errors(draws, (1 - pi) * mu, (1 - pi) * mu * (1 + mu / theta + pi * mu))
    p_zero = pi + (1 - pi) * (theta / (theta + mu)) ** theta
    zeros = (draws == 0).double().mean().item()
    assert abs(zeros - p_zero) < 5 * math.sqrt(p_zero * (1 - p_zero) / 200_000)


# ---------------------------------------------------------------------------------------------
# MultinomialRows


def test_multinomial_rows_match_scipy_with_a_different_total_in_every_row():
    logits = torch.tensor([[0.3, -1.0, 2.0, 0.0], [40.0, -40.0, 0.0, 1.0], [0.0, 0.0, 0.0, 0.0],
                           [-3.0, 1.0, 0.5, 0.5], [1.0, 2.0, 3.0, 4.0]], dtype=torch.float64)
    x = torch.tensor([[3.0, 0.0, 9.0, 1.0], [12.0, 0.0, 2.0, 0.0], [0.0, 0.0, 0.0, 0.0],
                      [1.0, 1.0, 1.0, 1.0], [20.0, 1.0, 300.0, 77.0]], dtype=torch.float64)
    ours = MultinomialRows(logits=logits).log_prob(x)
    p = special.softmax(logits.numpy(), axis=-1)
    reference = [stats.multinomial.logpmf(row, n=row.sum(), p=p_row) for row, p_row in zip(x.numpy(), p)]
    assert sorted(x.sum(-1).tolist()) == [0.0, 4.0, 13.0, 14.0, 398.0]
    np.testing.assert_allclose(ours.numpy(), reference, rtol=1e-12, atol=1e-12)
    # with the same totals passed (and validation on) the values are the same; probs give them too
    same = MultinomialRows(probs=torch.tensor(p), total_count=x.sum(-1), validate_args=True).log_prob(x)
    np.testing.assert_allclose(same.numpy(), reference, rtol=1e-12, atol=1e-12)


def test_multinomial_rows_sum_to_one_over_every_composition():
    n, dimension = 4, 3
    compositions = torch.tensor([c for c in itertools.product(range(n + 1), repeat=dimension) if sum(c) == n],
                                dtype=torch.float64)
    assert len(compositions) == math.comb(n + dimension - 1, dimension - 1)  # 15
    rows = MultinomialRows(logits=torch.tensor([0.4, -1.2, 2.0], dtype=torch.float64))
    assert rows.log_prob(compositions).exp().sum().item() == pytest.approx(1.0, abs=1e-12)


def test_multinomial_rows_handles_a_zero_probability_where_the_count_is_zero():
    rows = MultinomialRows(probs=torch.tensor([0.5, 0.0, 0.5], dtype=torch.float64))
    assert rows.log_prob(torch.tensor([1.0, 0.0, 1.0], dtype=torch.float64)).item() == pytest.approx(math.log(0.5))
    assert rows.log_prob(torch.tensor([1.0, 1.0, 0.0], dtype=torch.float64)).item() == -math.inf


def test_multinomial_rows_refuses_a_row_whose_total_differs_from_total_count():
    rows = MultinomialRows(logits=torch.zeros(2, 3), total_count=torch.tensor([4.0, 2.0]), validate_args=True)
    rows.log_prob(torch.tensor([[1.0, 1.0, 2.0], [0.0, 2.0, 0.0]]))
    with pytest.raises(ValueError):
        rows.log_prob(torch.tensor([[1.0, 1.0, 2.0], [0.0, 3.0, 0.0]]))
    with pytest.raises(ValueError):
        rows.log_prob(torch.tensor([[1.0, 1.5, 1.5], [0.0, 2.0, 0.0]]))
    with pytest.raises(ConfigError):
        MultinomialRows(logits=torch.zeros(3)).sample()
    with pytest.raises(ConfigError):
        MultinomialRows(logits=torch.zeros(3), probs=torch.ones(3))


def test_multinomial_rows_samples_sum_to_their_own_totals_with_mean_n_p():
    logits = torch.tensor([[0.0, 1.0, -1.0, 2.0, 0.5]]).expand(4, 5)
    totals = torch.tensor([0.0, 1.0, 7.0, 50.0])
    rows = MultinomialRows(logits=logits, total_count=totals)
    draws = rows.sample((10_000,))
    assert draws.shape == (10_000, 4, 5)
    assert torch.equal(draws.sum(-1), totals.expand(10_000, 4))
    assert (draws >= 0).all() and (draws == draws.round()).all()
    mean, variance = rows.mean.double(), rows.variance.double()
    torch.testing.assert_close(mean, totals[:, None].double() * torch.softmax(logits.double(), -1))
    error = (draws.double().mean(0) - mean).abs()
    assert (error <= 5 * (variance / 10_000).sqrt() + 1e-12).all()


# ---------------------------------------------------------------------------------------------
# Gradients


def test_negative_binomial_gradients_match_their_closed_forms():
    """d/dmu = x/mu - (x + theta)/(theta + mu); d/dtheta = psi(x + theta) - psi(theta)
    + log(theta / (theta + mu)) + (mu - x)/(theta + mu)."""
    mu, theta, x = grid([0.01, 0.5, 7.0, 300.0], [0.05, 1.0, 20.0, 500.0], [0, 1, 6, 250])
    mu_t, theta_t = t64(mu).requires_grad_(), t64(theta).requires_grad_()
    NegativeBinomial(mu_t, theta_t).log_prob(t64(x)).sum().backward()
    d_mu = x / mu - (x + theta) / (theta + mu)
    d_theta = special.digamma(x + theta) - special.digamma(theta) + np.log(theta / (theta + mu)) + (mu - x) / (theta + mu)
    np.testing.assert_allclose(mu_t.grad.numpy(), d_mu, rtol=1e-10, atol=1e-12)
    np.testing.assert_allclose(theta_t.grad.numpy(), d_theta, rtol=1e-8, atol=1e-12)


EXTREMES = grid([1e-8, 1.0, 1e5], [1e-3, 1.0, 1e8], [0, 3, 1e5])


def assert_gradient_matches_central_differences(f, inputs: list[torch.Tensor], rounding: torch.Tensor,
                                                step: float = 1e-5) -> None:
    """f maps inputs of shape (N,) or (N, D) to N outputs, output n depending on row n only; each
    column of each input is stepped for all rows at once (in float64), so each row's derivative is
    (f(a + h) - f(a - h)) / 2h. Its error is at most rounding / h (f's own float64 rounding, given per
    row) plus the O(h^2) truncation, bounded by the change from step h to 2h (Richardson: 3x the error)."""
    for k, a in enumerate(inputs):
        leaf = a.detach().clone().requires_grad_()
        (gradient,) = torch.autograd.grad(f(*inputs[:k], leaf, *inputs[k + 1:]).sum(), leaf)
        columns = [None] if a.dim() == 1 else range(a.shape[-1])
        for column in columns:
            def difference(h):
                shift = torch.zeros_like(a)
                if column is None:
                    shift += h
                else:
                    shift[:, column] = h
                up = f(*inputs[:k], a + shift, *inputs[k + 1:])
                down = f(*inputs[:k], a - shift, *inputs[k + 1:])
                return (up - down) / (2 * h)
            numerical, coarse = difference(step), difference(2 * step)
            analytical = gradient if column is None else gradient[:, column]
            tolerance = rounding / step + (coarse - numerical).abs() + 1e-9 * numerical.abs()
            assert torch.isfinite(analytical).all()
            assert ((analytical - numerical).abs() <= tolerance).all(), (k, column, analytical, numerical, tolerance)


def test_count_log_prob_gradients_match_finite_differences_at_the_extremes():
    """mu and theta are stepped through their logarithms: a step in mu = 1e-8 would leave the support,
    one in theta = 1e8 would change nothing representable; d/d log mu = mu d/d mu. Every mu, theta
    and x of 1e-8 / 1e-3 .. 1e5 / 1e8 and 0 .. 1e5 together, and zi_logits -30, 0, 30."""
    mu, theta, x = EXTREMES
    log_mu, log_theta, counts = t64(np.log(mu)), t64(np.log(theta)), t64(x)
    logits = t64(np.resize([-30.0, 0.0, 30.0], len(x)))
    rounding = t64(float64_rounding_bound(x, mu, theta))
    assert rounding.max().item() < 1e-7  # so the tolerance rounding / h stays below 1e-2 where |gradient| ~ 1e5

    def nb(log_mu, log_theta):
        return NegativeBinomial(log_mu.exp(), log_theta.exp()).log_prob(counts)

    def zinb(log_mu, log_theta, logits):
        return ZeroInflatedNegativeBinomial(log_mu.exp(), log_theta.exp(), logits).log_prob(counts)

    assert_gradient_matches_central_differences(nb, [log_mu, log_theta], rounding)
    assert_gradient_matches_central_differences(zinb, [log_mu, log_theta, logits], rounding + 64 * EPS64 * 30)

    row_counts = t64([[3.0, 0.0, 5.0], [0.0, 0.0, 0.0], [1e4, 2.0, 0.0], [7.0, 7.0, 7.0]])
    row_logits = t64([[50.0, -50.0, 0.0], [0.3, 0.2, 0.1], [-40.0, 0.0, 40.0], [1e3, -1e3, 0.0]])
    # terms lgamma(n + 1), lgamma(x_i + 1), x_i log p_i: at most 1e4 * 80 + lgamma(1e4 + 1) < 1e6 per row
    row_rounding = 64 * EPS64 * (row_counts.sum(-1) * 2e3 + torch.lgamma(row_counts.sum(-1) + 1) + 1)
    assert_gradient_matches_central_differences(lambda lg: MultinomialRows(logits=lg).log_prob(row_counts),
                                                [row_logits], row_rounding)
    assert torch.autograd.gradcheck(lambda lg: MultinomialRows(logits=lg).log_prob(row_counts[:2]),
                                    (row_logits[:2].clone().requires_grad_(),))


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_count_log_prob_gradients_are_finite_at_the_extremes(dtype):
    mu, theta, x = (torch.as_tensor(a, dtype=dtype) for a in EXTREMES)
    mu.requires_grad_(), theta.requires_grad_()
    logits = torch.as_tensor(np.resize([-30.0, 0.0, 30.0], len(x)), dtype=dtype).requires_grad_()
    log_p = NegativeBinomial(mu, theta).log_prob(x) + ZeroInflatedNegativeBinomial(mu, theta, logits).log_prob(x)
    assert torch.isfinite(log_p).all()
    log_p.sum().backward()
    for grad in (mu.grad, theta.grad, logits.grad):
        assert torch.isfinite(grad).all()
    row_logits = torch.tensor([[80.0, -80.0, 0.0]], dtype=dtype, requires_grad=True)
    MultinomialRows(logits=row_logits).log_prob(torch.tensor([[1e5, 3.0, 0.0]], dtype=dtype)).backward()
    assert torch.isfinite(row_logits.grad).all()


# ---------------------------------------------------------------------------------------------
# Shapes: particles, to_event, expand, Pyro plates


def nb_rows_by_scipy(x: torch.Tensor, mu: torch.Tensor, theta: torch.Tensor) -> np.ndarray:
    x, mu, theta = np.broadcast_arrays(x.numpy(), mu.detach().numpy(), theta.detach().numpy())
    return stats.nbinom.logpmf(x, n=theta, p=theta / (theta + mu)).sum(-1)


def test_particles_and_to_event_give_log_prob_per_particle_and_datapoint():
    particles, batch, features = 3, 4, 5
    mu = torch.rand(particles, batch, features, dtype=torch.float64) * 5 + 0.1
    theta = torch.rand(features, dtype=torch.float64) + 0.5
    logits = torch.randn(particles, batch, features, dtype=torch.float64)
    x = torch.poisson(torch.full((batch, features), 2.0, dtype=torch.float64))

    nb = NegativeBinomial(mu, theta).to_event(1)
    assert nb.batch_shape == (particles, batch) and nb.event_shape == (features,)
    log_p = nb.log_prob(x)
    assert log_p.shape == (particles, batch)
    np.testing.assert_allclose(log_p.numpy(), nb_rows_by_scipy(x, mu, theta), rtol=1e-12)

    zinb = ZeroInflatedNegativeBinomial(mu, theta, logits).to_event(1)
    expected = zinb_log_prob_from_definition(x.numpy(), mu.numpy(), theta.numpy(), logits.numpy())[0].sum(-1)
    np.testing.assert_allclose(zinb.log_prob(x).numpy(), expected, rtol=1e-12)

    rows = MultinomialRows(logits=logits)
    assert rows.batch_shape == (particles, batch) and rows.event_shape == (features,)
    assert rows.log_prob(x).shape == (particles, batch)
    torch.testing.assert_close(rows.log_prob(x)[1], MultinomialRows(logits=logits[1]).log_prob(x))


def test_expand_broadcasts_parameters_to_a_batch():
    mu = t64([1.0, 2.0, 3.0])
    x = t64([[0.0, 1.0, 5.0], [2.0, 2.0, 2.0]])
    expanded = NegativeBinomial(mu, 0.5).expand((2, 3))
    assert expanded.batch_shape == (2, 3) and expanded.mu.shape == (2, 3)
    torch.testing.assert_close(expanded.log_prob(x), NegativeBinomial(mu, 0.5).log_prob(x))
    zinb = ZeroInflatedNegativeBinomial(mu, 0.5, 0.2).expand((2, 3))
    assert zinb.zi_logits.shape == (2, 3) and zinb.sample().shape == (2, 3)
    rows = MultinomialRows(logits=mu, total_count=t64(6.0)).expand((4, 2))
    assert rows.batch_shape == (4, 2) and rows.total_count.shape == (4, 2)
    assert rows.log_prob(x).shape == (4, 2) and rows.sample((5,)).sum(-1).eq(6).all()


def test_observed_sites_under_plates_trace_to_the_hand_sum():
    particles, batch, features = 2, 6, 4
    mu = torch.rand(particles, 1, features, dtype=torch.float64) * 3 + 0.2  # broadcast over the datapoints
    theta = t64([0.5, 1.0, 2.0, 40.0])
    logits = torch.randn(particles, batch, features, dtype=torch.float64)
    x = torch.poisson(torch.full((batch, features), 1.5, dtype=torch.float64))

    def program(x):
        with pyro.plate("particles", particles, dim=-2), pyro.plate("cells", batch, dim=-1):
            pyro.sample("nb", NegativeBinomial(mu, theta).to_event(1), obs=x)
            pyro.sample("zinb", ZeroInflatedNegativeBinomial(mu, theta, logits).to_event(1), obs=x)
            pyro.sample("rows", MultinomialRows(logits=logits, total_count=x.sum(-1)), obs=x)

    trace = poutine.trace(program).get_trace(x)
    trace.compute_log_prob()
    assert trace.nodes["nb"]["log_prob"].shape == (particles, batch)
    nb = nb_rows_by_scipy(x, mu, theta).sum()
    zinb = zinb_log_prob_from_definition(x.numpy(), mu.numpy(), theta.numpy(), logits.numpy())[0].sum()
    p = special.softmax(logits.numpy(), axis=-1)
    rows = sum(stats.multinomial.logpmf(x[i].numpy(), n=x[i].sum().item(), p=p[k, i])
               for k in range(particles) for i in range(batch))
    assert trace.log_prob_sum().item() == pytest.approx(nb + zinb + rows, rel=1e-12)


# ---------------------------------------------------------------------------------------------
# The Dirichlet's Laplace approximation


def test_dirichlet_laplace_approximation_on_a_hand_computed_example():
    """alpha = (1, 2, 4): mean log alpha = log 2, so loc = (-log 2, 0, log 2); sum 1/alpha = 7/4 and
    var_k = 1/(3 alpha_k) + 7/36 = (19, 13, 10) / 36."""
    loc, scale = dirichlet_laplace_approximation(t64([1.0, 2.0, 4.0]))
    torch.testing.assert_close(loc, t64([-math.log(2), 0.0, math.log(2)]))
    torch.testing.assert_close(scale, t64([19.0, 13.0, 10.0]).div(36).sqrt())


def test_dirichlet_laplace_approximation_of_a_symmetric_dirichlet():
    """alpha_k = a for all K: loc = 0 and var = (1/a)(1 - 2/K) + (1/K^2)(K/a) = (1/a)(1 - 1/K)."""
    loc, scale = dirichlet_laplace_approximation(torch.full((2, 5), 0.3, dtype=torch.float64))
    assert loc.shape == scale.shape == (2, 5)
    torch.testing.assert_close(loc, torch.zeros(2, 5, dtype=torch.float64))
    torch.testing.assert_close(scale, torch.full((2, 5), math.sqrt((1 / 0.3) * (1 - 1 / 5)), dtype=torch.float64))
    with pytest.raises(ConfigError):
        dirichlet_laplace_approximation(t64([2.0]))


def test_dirichlet_rsample_gradients_agree_with_the_derivative_of_its_mean():
    """d E[theta_1] / d alpha_j = ([j = 1] alpha_0 - alpha_1) / alpha_0^2, E[theta_1] = alpha_1 / alpha_0:
    the mean of 200k per-draw pathwise gradients (torch's implicit reparameterization), within 5 of its
    standard errors. Each draw has its own copy of alpha, so one backward gives every draw's gradient."""
    draws = 200_000
    alpha = t64([2.0, 3.0, 5.0])
    copies = alpha.expand(draws, 3).clone().requires_grad_()
    torch.distributions.Dirichlet(copies).rsample()[:, 0].sum().backward()
    per_draw = copies.grad
    estimate, standard_error = per_draw.mean(0), per_draw.std(0) / math.sqrt(draws)
    alpha_0 = alpha.sum()
    exact = (torch.tensor([1.0, 0.0, 0.0], dtype=torch.float64) * alpha_0 - alpha[0]) / alpha_0**2  # (0.08, -0.02, -0.02)
    assert ((estimate - exact).abs() < 5 * standard_error).all()
    assert (standard_error < 0.05 * exact.abs()).all()  # enough draws that the check has teeth


def test_the_nb_log_mass_over_mostly_zero_counts_computes_its_x_terms_only_where_x_is_not_zero():
    """The part of log NB that vanishes at x = 0 is computed on the non-zero entries alone when most are
    zeros: the same values and gradients (mu and theta) as over every entry, to float64 rounding."""
    from pyro_vae import distributions as d

    g = torch.Generator().manual_seed(0)
    x = torch.poisson(torch.rand(64, 300, generator=g, dtype=torch.float64) * 0.1, generator=g)
    assert (x == 0).double().mean() > 0.9
    mu = (torch.rand(64, 300, generator=g, dtype=torch.float64) * 5 + 1e-3).requires_grad_()
    theta = (torch.rand(300, generator=g, dtype=torch.float64) * 20 + 0.05).requires_grad_()
    sparse = d._negative_binomial_log_prob(x, mu, theta)
    gs = torch.autograd.grad(sparse.sum(), (mu, theta))
    dense = (x * mu.log() - (x + theta) * torch.log1p(mu / theta) + (x + theta - 0.5) * torch.log1p(x / theta) - x
             - torch.lgamma(x + 1) + d._stirling_correction(x + theta) - d._stirling_correction(theta))
    gd = torch.autograd.grad(dense.sum(), (mu, theta))
    assert torch.allclose(sparse, dense, rtol=0, atol=1e-10)
    assert all(torch.allclose(a, b, rtol=1e-10, atol=1e-10) for a, b in zip(gs, gd))
    expected = torch.tensor(stats.nbinom.logpmf(x.numpy(), theta.detach().numpy(), (theta / (theta + mu)).detach().numpy()))
    assert torch.allclose(sparse.detach(), expected, rtol=0, atol=1e-8)
