"""Priors p(z): exact log-densities, normalization, trainability."""

from __future__ import annotations

import math

import pytest
import torch

from pyro_vae.priors import LearnedGaussianPrior, MixturePrior, StandardNormalPrior


def grid_2d(half_width: float = 8.0, n: int = 401):
    axis = torch.linspace(-half_width, half_width, n, dtype=torch.float64)
    zz = torch.stack(torch.meshgrid(axis, axis, indexing="ij"), -1).reshape(-1, 2)
    return zz, (axis[1] - axis[0]).item() ** 2


def test_standard_normal_is_n_0_i():
    prior = StandardNormalPrior().setup(3)
    z = torch.randn(5, 3)
    expected = -0.5 * (z**2).sum(-1) - 1.5 * math.log(2 * math.pi)
    torch.testing.assert_close(prior().log_prob(z), expected)
    assert list(prior.parameters()) == []
    assert prior().event_shape == (3,) and prior().batch_shape == ()


def test_learned_gaussian_starts_at_n_0_i_and_trains():
    prior = LearnedGaussianPrior().setup(3)
    z = torch.randn(5, 3)
    torch.testing.assert_close(prior().log_prob(z), StandardNormalPrior().setup(3)().log_prob(z))
    prior().log_prob(z).sum().backward()
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in prior.parameters())


def test_mixture_log_density_is_the_log_sum_of_components():
    prior = MixturePrior(components=3).setup(2)
    with torch.no_grad():
        prior.logits.copy_(torch.tensor([0.0, 1.0, -1.0]))
    z = torch.randn(7, 2)
    weights = torch.softmax(prior.logits, 0)
    scales = torch.nn.functional.softplus(prior.raw_scales)
    comps = torch.distributions.Normal(prior.locs, scales).log_prob(z[:, None, :]).sum(-1)  # (7, K)
    expected = torch.logsumexp(comps + weights.log(), -1)
    torch.testing.assert_close(prior().log_prob(z), expected)


@pytest.mark.parametrize("prior", [StandardNormalPrior(), LearnedGaussianPrior(init_scale=0.7),
                                   MixturePrior(components=4, init_spread=2.0)])
def test_prior_density_integrates_to_one_in_2d(prior):
    prior.setup(2)
    zz, cell = grid_2d()
    with torch.no_grad():
        mass = prior().log_prob(zz.float()).double().exp().sum().item() * cell
    assert mass == pytest.approx(1.0, abs=1e-3)


def test_priors_sample_with_the_right_shape():
    for prior in (StandardNormalPrior(), LearnedGaussianPrior(), MixturePrior(components=5)):
        assert prior.setup(4)().sample((6,)).shape == (6, 4)
