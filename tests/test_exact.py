"""Where the intractable becomes tractable: closed forms, quadrature, and our estimators against them."""

from __future__ import annotations

import math

import pyro
import pytest
import torch
from torch.distributions import MultivariateNormal

from pyro_vae import VAE, Trainer, load_run
from pyro_vae.cli import main
from pyro_vae.config import OBJECTIVES
from pyro_vae.exact import LinearGaussian, decomposition, exact_evidence, grid_evidence, linear_gaussian_evidence
from pyro_vae.evaluation import evaluate
from pyro_vae.metrics import log_evidence
from pyro_vae.priors import inverse_softplus
from pyro_vae.training import svi_step

from conftest import tiny_config


def linear_vae(latent: int = 2, pixels: int = 5, seed: int = 0) -> VAE:
    """A linear-Gaussian VAE with non-trivial prior, noise and guide parameters."""
    torch.manual_seed(seed)
    vae = VAE(data_shape=(1, 1, pixels), latent_dim=latent, network={"name": "mlp", "hidden": []},
              prior="learned-gaussian", likelihood={"name": "gaussian", "scale": 0.4, "learn_scale": "per-pixel"})
    with torch.no_grad():
        vae.prior.loc.copy_(torch.randn(latent) * 0.3)
        vae.prior.raw_scale.copy_(inverse_softplus(torch.rand(latent) + 0.5))
        vae.likelihood.raw_scale.add_(torch.randn_like(vae.likelihood.raw_scale) * 0.3)
        vae.decoder.body[0].weight.mul_(3.0)
    return vae


def sample_data(vae: VAE, n: int, seed: int = 1) -> torch.Tensor:
    torch.manual_seed(seed)
    with torch.no_grad():
        return vae.p_x_given_z(vae.p_z().sample((n,))).sample()


def test_linear_gaussian_closed_forms_agree_with_each_other_and_with_bayes_rule():
    vae = linear_vae()
    x = sample_data(vae, 6)
    model = LinearGaussian.of(vae)
    flat = x.flatten(1)
    dense_cov = model.w @ torch.diag(model.s**2) @ model.w.T + torch.diag(model.psi)
    dense = MultivariateNormal(model.w @ model.m + model.b, covariance_matrix=dense_cov)
    torch.testing.assert_close(model.marginal().log_prob(flat), dense.log_prob(flat), rtol=1e-5, atol=1e-5)
    # Bayes' rule on a grid point: log p(z|x) = log p(x|z) + log p(z) - log p(x)
    z = torch.randn(6, 2)
    with torch.no_grad():
        joint = vae.p_x_given_z(z).log_prob(x) + vae.p_z().log_prob(z)
    torch.testing.assert_close(model.posterior(flat).log_prob(z), joint - dense.log_prob(flat), rtol=1e-4, atol=1e-4)
    # the identity log p(x) = ELBO + KL(q || p(z|x)), each side in closed form
    ev = linear_gaussian_evidence(vae, x)
    torch.testing.assert_close(ev.log_px - ev.elbo, ev.kl_q_posterior, rtol=1e-4, atol=1e-4)
    assert (ev.kl_q_posterior > 0).all()


def test_closed_form_elbo_matches_the_monte_carlo_elbo():
    vae = linear_vae()
    x = sample_data(vae, 4)
    exact = linear_gaussian_evidence(vae, x).elbo
    torch.manual_seed(0)
    mc = evaluate(vae, x, batch_size=4)  # one sample: its mean over many repeats is the ELBO
    draws = torch.stack([evaluate(vae, x, seed=s).elbo for s in range(400)])
    stderr = draws.std(0) / math.sqrt(400)
    assert ((draws.mean(0) - exact.float()).abs() < 4 * stderr + 1e-4).all()
    assert mc.exact is None  # exact values only when asked for


def test_grid_quadrature_matches_the_closed_form_in_two_dimensions():
    vae = linear_vae()
    x = sample_data(vae, 3)
    closed = linear_gaussian_evidence(vae, x)
    grid = grid_evidence(vae, x)
    assert (grid.log_px_error <= 1e-3).all()
    torch.testing.assert_close(grid.log_px.float(), closed.log_px, atol=2e-3, rtol=0)
    torch.testing.assert_close(grid.kl_q_posterior.float(), closed.kl_q_posterior, atol=2e-3, rtol=0)
    torch.testing.assert_close(grid.elbo.float(), closed.elbo, atol=2e-3, rtol=0)


def guide_near_the_posterior(vae: VAE, inflate: float) -> None:
    """Set the linear guide to the exact posterior mean and its marginal scales times ``inflate``
    (the posterior is correlated, a diagonal q cannot match it: q is close, not exact)."""
    model = LinearGaussian.of(vae)
    precision = torch.diag(model.s**-2) + (model.w.T / model.psi) @ model.w
    cov = torch.linalg.inv(precision)
    gain = cov @ (model.w.T / model.psi)  # posterior mean = gain x + offset
    offset = cov @ (model.m / model.s**2) - gain @ model.b
    with torch.no_grad():
        vae.posterior.loc.weight.copy_(gain)
        vae.posterior.loc.bias.copy_(offset)
        vae.posterior.raw_scale.weight.zero_()
        vae.posterior.raw_scale.bias.copy_(inverse_softplus(inflate * cov.diagonal().sqrt()))


def test_importance_sampling_converges_to_the_closed_form_on_a_linear_gaussian_model():
    vae = linear_vae(latent=3, pixels=8)
    guide_near_the_posterior(vae, inflate=1.3)
    x = sample_data(vae, 32)
    exact = linear_gaussian_evidence(vae, x).log_px
    errors = {}
    for k in (1, 10, 100, 1000, 5000):
        torch.manual_seed(0)
        errors[k] = (log_evidence(vae, x, k) - exact).abs().mean().item()
    assert errors[1] > errors[10] > errors[100] > errors[1000] > errors[5000]
    assert errors[5000] < 0.02


@pytest.fixture(scope="module")
def trained_2d(tmp_path_factory):
    """A 2-D latent VAE trained briefly on 8x8 synthetic images (grey levels, dynamically binarized)."""
    config = tiny_config(data={"side": 8, "n_train": 256, "n_test": 32},
                         model={"network": {"name": "mlp", "hidden": [32]}},
                         train={"epochs": 30, "batch_size": 32, "lr": 1e-2},
                         eval={"samples": 200, "exact_points": 8})
    run_dir = tmp_path_factory.mktemp("exact") / "run"
    Trainer(config, run_dir, progress=False, log=lambda s: None).fit()
    return load_run(run_dir)


def test_importance_sampling_converges_to_the_quadrature_on_a_trained_2d_model(trained_2d):
    vae, x = trained_2d.model, trained_2d.data.prepared_test[:8]
    exact = grid_evidence(vae, x)
    assert exact.log_px_error.max() < 1e-3
    errors = {}
    for k in (1, 10, 100, 1000, 5000):
        torch.manual_seed(0)
        errors[k] = (log_evidence(vae, x, k).double() - exact.log_px).abs().mean().item()
    assert errors[1] > errors[10] > errors[100] > errors[1000] > errors[5000]
    assert errors[5000] < 0.05 and errors[5000] < errors[1] / 10  # the stated tolerance at K = 5000


def test_exact_kl_to_the_posterior_is_log_px_minus_the_elbo(trained_2d):
    vae, x = trained_2d.model, trained_2d.data.prepared_test[:4]
    rows, exact = decomposition(vae, x, samples=20000, seed=0)
    for row in rows:
        gap = row["exact"]["log_px"] - row["elbo_mc"][0]  # quadrature log p(x) - Monte-Carlo ELBO
        assert abs(row["exact"]["kl_posterior"] - gap) < 4 * row["elbo_mc"][1] + 1e-3
        assert row["exact"]["kl_posterior"] > 0


def test_a_linear_vae_reaches_the_probabilistic_pca_maximum_likelihood():
    """Tipping & Bishop: with x = W z + b + s eps, the ML solution is closed form; a linear VAE with a
    diagonal-Gaussian guide trained to convergence attains it (its ELBO is tight at that optimum)."""
    torch.manual_seed(0)
    n, d, latent = 400, 6, 2
    w_true = torch.randn(d, latent) * torch.tensor([2.0, 1.0])
    data = (torch.randn(n, latent) @ w_true.T + 0.3 * torch.randn(n, d) + 1.0).reshape(n, 1, 1, d)
    flat = data.flatten(1)
    centred = flat - flat.mean(0)
    eigenvalues = torch.linalg.eigvalsh(centred.T @ centred / n).flip(0)
    noise = eigenvalues[latent:].mean()
    # max log-likelihood per datapoint: -1/2 [d log 2 pi + sum_{j<=L} log l_j + (d-L) log s^2 + d]
    optimum = -0.5 * (d * math.log(2 * math.pi) + eigenvalues[:latent].log().sum() + (d - latent) * noise.log() + d)
    vae = VAE(data_shape=(1, 1, d), latent_dim=latent, network={"name": "mlp", "hidden": []},
              likelihood={"name": "gaussian", "scale": 1.0, "learn_scale": "global", "min_scale": 0.0})
    optimizer = torch.optim.Adam(vae.parameters(), lr=0.02)
    objective = OBJECTIVES.build("elbo-analytic-kl")
    with pyro.validation_enabled(False):
        for step in range(3000):
            if step == 2000:
                for group in optimizer.param_groups:
                    group["lr"] = 0.002
            svi_step(vae, objective, optimizer, data)
    achieved = LinearGaussian.of(vae).marginal().log_prob(flat).mean().item()
    assert achieved <= optimum.item() + 1e-3  # nothing beats the maximum likelihood
    assert optimum.item() - achieved < 0.01


def test_evaluate_adds_exact_values_for_2d_models(trained_2d, capsys):
    assert main(["evaluate", str(trained_2d.run_dir), "--samples", "100", "--exact-points", "5"]) == 0
    out = capsys.readouterr().out
    assert "exact, by quadrature on an adaptive 2-D grid, on 5 datapoints" in out
    assert "KL(q(z|x) || p(z|x))  [exact]" in out and "importance sampled - exact log p(x), K=100" in out


def test_explain_prints_the_decomposition_and_draws_the_posterior(trained_2d, capsys):
    assert main(["explain", str(trained_2d.run_dir), "--index", "3", "--index", "7", "--samples", "500"]) == 0
    out = capsys.readouterr().out
    assert "test datapoint 3" in out and "test datapoint 7" in out
    for term in ("log p(x)", "= ELBO", "+ KL(q(z|x) || p(z|x))", "= E_q[log p(x|z)]", "- KL(q(z|x) || p(z))"):
        assert term in out
    assert "exact: quadrature" in out
    assert (trained_2d.run_dir / "posterior.png").is_file()
    assert main(["explain", str(trained_2d.run_dir), "--index", "999"]) == 2
    assert "out of range" in capsys.readouterr().err


def test_explain_estimates_every_term_when_nothing_is_exact(tmp_path, capsys):
    config = tiny_config(model={"latent_dim": 3}, train={"epochs": 1})
    Trainer(config, tmp_path / "run", progress=False, log=lambda s: None).fit()
    assert main(["explain", str(tmp_path / "run"), "--index", "0", "--samples", "200"]) == 0
    out = capsys.readouterr().out
    assert "importance sampled, K = 200" in out and "estimated as log p(x) - ELBO" in out
    assert not (tmp_path / "run" / "posterior.png").exists()
    assert "no posterior picture: p(z|x) is drawn, by quadrature, only for one 2-D latent site" in out
    assert "latents are z (3,)" in out  # why none is drawn, said without being asked
    assert exact_evidence(load_run(tmp_path / "run").model, torch.zeros(1, 1, 6, 6)) is None


def test_importance_sampling_converges_to_the_quadrature_under_an_autoregressive_likelihood():
    torch.manual_seed(0)
    vae = VAE(data_shape=(1, 6, 6), latent_dim=2, network={"name": "mlp", "hidden": [16]},
              likelihood={"name": "pixelcnn-bernoulli", "channels": 4, "kernel": 3})
    x = sample_data(vae, 4)  # drawn pixel by pixel from the model itself
    exact = grid_evidence(vae, x)  # quadrature over z, the causal stack's features of x computed once
    assert exact.log_px_error.max() < 1e-3
    errors = {}
    for k in (3, 5000):
        torch.manual_seed(0)
        errors[k] = (log_evidence(vae, x, k).double() - exact.log_px).abs().mean().item()
    assert errors[5000] < 0.05 and errors[5000] < errors[3]
