"""Two stochastic layers: the hierarchical prior p(z_2) p(z_1|z_2) and guide q(z_2|x) q(z_1|x, z_2).

Checked on the numbers that define them: both densities integrate to one and their samples follow
them, the VampPrior top is the guide's q(z_2|u_k) averaged over pseudo-inputs, both terms sources give
the same step, DReG stays unbiased through the two layers, and importance sampling converges to
the quadrature log p(x) of a two-layer model.
"""

from __future__ import annotations

import math

import pytest
import torch

from pyro_vae import VAE, ConfigError, Config
from pyro_vae.config import OBJECTIVES, PRIORS
from pyro_vae.exact import grid_evidence
from pyro_vae.metrics import log_evidence

from conftest import log_weights
from test_estimators import assert_dreg_unbiased
from suites import assert_same_step
from test_priors import grid_2d


def two_layer_vae(top="standard-normal", latent_dim: int = 2, seed: int = 0, guide=None, **prior) -> VAE:
    """A small VAE with both layers' conditionals bent away from their initial values, so that z_1
    depends visibly on z_2 in the prior and in the guide."""
    torch.manual_seed(seed)
    vae = VAE(data_shape=(1, 4, 4), latent_dim=latent_dim, network={"name": "mlp", "hidden": [8]},
              prior={"name": "hierarchical", "top": top, "hidden": [8], **prior},
              guide=guide or {"name": "hierarchical", "hidden": [8]})
    with torch.no_grad():
        for p in vae.prior.conditional.parameters():
            p.add_(0.5 * torch.randn_like(p))
        for p in getattr(vae.posterior, "conditional", torch.nn.Linear(1, 1)).parameters():
            p.add_(0.5 * torch.randn_like(p))
    return vae


def grid_moments(log_prob, half_width: float = 12.0, n: int = 481):
    """Mass, mean and covariance of exp(log_prob) on a 2-D grid (the density's own numbers)."""
    zz, cell = grid_2d(half_width, n)
    with torch.no_grad():
        w = log_prob(zz.float()).double().exp() * cell
    mass = w.sum()
    mean = (w[:, None] * zz).sum(0) / mass
    centred = zz - mean
    cov = (w[:, None, None] * centred[:, :, None] * centred[:, None, :]).sum(0) / mass
    return mass.item(), mean, cov


@pytest.mark.parametrize("which", ["guide", "prior"])
def test_both_two_layer_densities_integrate_to_one_and_their_samples_follow_them(which):
    vae = two_layer_vae()
    x = torch.rand(1, 1, 4, 4)
    d = vae.q_z_given_x(x) if which == "guide" else vae.p_z()
    log_prob = (lambda z: d.log_prob(z[:, None]).squeeze(1)) if d.batch_shape else d.log_prob
    mass, mean, cov = grid_moments(log_prob)
    assert mass == pytest.approx(1.0, abs=2e-3)
    assert abs(cov[0, 1]) / (cov[0, 0] * cov[1, 1]).sqrt() > 0.1  # z_1 does lean on z_2
    n = 200_000
    torch.manual_seed(1)
    z = d.sample((n,)).reshape(n, 2).double()
    assert ((z.mean(0) - mean).abs() < 4 * (cov.diagonal() / n).sqrt()).all()
    sample_cov = torch.cov(z.T)
    # the sampling s.e. of a covariance entry is about sqrt((s_ii s_jj + s_ij^2) / n)
    se = ((cov.diagonal()[:, None] * cov.diagonal()[None, :] + cov**2) / n).sqrt()
    assert ((sample_cov - cov).abs() < 5 * se).all()


def test_the_guide_draws_are_reparameterized_through_both_layers_and_log_q_from_the_noise_is_exact():
    vae = two_layer_vae(latent_dim=5, top_dim=2, guide={"name": "hierarchical", "top_dim": 2, "hidden": [8]})
    x = torch.rand(3, 1, 4, 4)
    q = vae.q_z_given_x(x)
    assert q.event_shape == (5,) and q.batch_shape == (3,)
    torch.manual_seed(0)
    z, log_q = q.rsample_and_log_prob(torch.Size([4]))
    torch.manual_seed(0)
    torch.testing.assert_close(q.rsample(torch.Size([4])), z)
    torch.testing.assert_close(log_q, q.log_prob(z), rtol=1e-5, atol=1e-5)
    (z[..., 2:].sum() + log_q.sum()).backward()  # z_1 alone must reach the top layer's head too
    for name in ("loc", "raw_scale"):
        assert getattr(vae.posterior, name).weight.grad.abs().sum() > 0
    assert vae.posterior.conditional.loc.weight.grad.abs().sum() > 0
    assert vae.encoder.body[0].weight.grad.abs().sum() > 0


@pytest.mark.parametrize("guide", ["hierarchical", "diagonal-gaussian"])
def test_a_vamp_top_is_the_guides_q_z2_averaged_over_the_pseudo_inputs(guide):
    vae = two_layer_vae(top={"name": "vamp", "components": 5}, latent_dim=3, top_dim=2,
                        guide={"name": guide, "top_dim": 2, "hidden": [8]} if guide == "hierarchical" else guide)
    z = torch.randn(7, 3)
    with torch.no_grad():
        q = vae.q_z_given_x(vae.prior.top_prior.pseudo_inputs())
        if guide == "hierarchical":
            log_q2 = q.top.log_prob(z[:, None, :2])  # (7, 5): q(z_2|u_k) for every z and k
        else:
            log_q2 = torch.distributions.Normal(q.base_dist.loc[:, :2], q.base_dist.scale[:, :2]).log_prob(
                z[:, None, :2]).sum(-1)
        loc, scale = vae.prior.conditional(z[:, :2])
        expected = (torch.logsumexp(log_q2, 1) - math.log(5)
                    + torch.distributions.Normal(loc, scale).log_prob(z[:, 2:]).sum(-1))
        torch.testing.assert_close(vae.p_z().log_prob(z), expected, rtol=1e-5, atol=1e-5)


def test_configuration_mistakes_are_refused_with_the_fix_named():
    with pytest.raises(ConfigError, match="needs q\\(z_2\\|x\\).*Use the hierarchical guide"):
        two_layer_vae(top={"name": "vamp", "components": 3}, guide={"name": "iaf", "hidden": 8, "context": 2})
    with pytest.raises(ConfigError, match="cannot itself be hierarchical"):
        PRIORS.build({"name": "hierarchical", "top": "hierarchical"})
    with pytest.raises(ConfigError, match="unknown prior 'vampp' \\(at model.prior.top\\).*Did you mean 'vamp'"):
        PRIORS.build({"name": "hierarchical", "top": "vampp"})
    with pytest.raises(ConfigError, match="top_dim must be in \\[1, latent_dim - 1\\] = \\[1, 2\\]"):
        two_layer_vae(latent_dim=3, top_dim=3)
    with pytest.raises(ConfigError, match="need latent_dim >= 2"):
        VAE(latent_dim=1, guide="hierarchical")


def test_the_nested_top_table_round_trips_through_a_run_config(tmp_path):
    raw = {"model": {"latent_dim": 4, "guide": "hierarchical",
                     "prior": {"name": "hierarchical", "top_dim": 3, "top": {"name": "vamp", "components": 6}}}}
    config = Config.from_dict(raw)
    prior = config.model.prior
    assert prior["top"] == {"name": "vamp", "components": 6, "init": "data"} and prior["hidden"] == [256]
    config.save(tmp_path / "config.toml")
    assert "[model.prior.top]" in (tmp_path / "config.toml").read_text()
    assert Config.load(tmp_path / "config.toml").model.prior == prior


@pytest.mark.parametrize("spec", [{"name": "elbo"}, {"name": "iwae", "num_particles": 3},
                                  {"name": "renyi", "alpha": 0.5, "num_particles": 3}, {"name": "stl"},
                                  {"name": "dreg", "num_particles": 3}], ids=lambda s: s["name"])
def test_direct_terms_equal_traced_ones_through_both_layers(spec):
    vae = two_layer_vae(top={"name": "vamp", "components": 4}, latent_dim=3)
    torch.manual_seed(3)
    assert_same_step(vae, OBJECTIVES.build(spec), torch.rand(8, 1, 4, 4).bernoulli())


def test_dreg_is_unbiased_through_both_layers():
    """z_1's draw depends on z_2: DReG must weight the path through both layers once."""
    vae = two_layer_vae(latent_dim=3)
    assert_dreg_unbiased(vae, torch.rand(4, 1, 4, 4).bernoulli())


def test_importance_sampling_agrees_with_the_quadrature_of_a_two_layer_model():
    """log (1/K) sum_k w_k against the quadrature log p(x), within the estimate's own standard error
    (delta method: sd(w) / (mean(w) sqrt(K))): the untrained guide is far from p(z|x), so the error
    is judged against what K = 5000 weights can resolve, not a fixed tolerance."""
    vae = two_layer_vae(top={"name": "vamp", "components": 4})
    torch.manual_seed(1)
    with torch.no_grad():
        x = vae.p_x_given_z(vae.p_z().sample((4,))).sample()
        exact = grid_evidence(vae, x)
        assert exact.log_px_error.max() < 1e-3
        torch.manual_seed(0)
        log_w = log_weights(vae, x, 5000).double()  # (K, batch)
    k = log_w.shape[0]
    estimate = torch.logsumexp(log_w, 0) - math.log(k)
    w = (log_w - log_w.max(0).values).exp()
    stderr = w.std(0) / (w.mean(0) * math.sqrt(k))
    assert ((estimate - exact.log_px).abs() < 4 * stderr + 1e-3).all()
    assert (stderr < 0.2).all()  # ... and that error is small enough for the check to mean something
    library = log_evidence(vae, x, 5000).double()  # the library's chunked estimator, other draws
    assert ((library - exact.log_px).abs() < 4 * stderr + 1e-3).all()
