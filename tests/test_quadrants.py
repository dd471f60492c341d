"""The quadrant CVAE (model.program = "quadrant-cvae"): p(x_hidden | x_visible) checked by quadrature."""

from __future__ import annotations

import math

import pytest
import torch

from pyro_vae import Config, Trainer, load_run
from pyro_vae.quadrants import QuadrantCVAE, visible_mask
from pyro_vae.errors import ConfigError
from pyro_vae.evaluation import evaluate
from pyro_vae.metrics import log_evidence
from pyro_vae.programs import as_program

NET = {"name": "mlp", "hidden": [16]}


def test_the_quadrants_shown_are_pyros():
    """1: the bottom-left quadrant; 2: the left half; 3: all but the bottom-right (Pyro's examples/cvae)."""
    rows = {v: visible_mask((1, 4, 4), v)[0].int().tolist() for v in (1, 2, 3)}
    assert rows[1] == [[0, 0, 0, 0], [0, 0, 0, 0], [1, 1, 0, 0], [1, 1, 0, 0]]
    assert rows[2] == [[1, 1, 0, 0]] * 4
    assert rows[3] == [[1, 1, 1, 1], [1, 1, 1, 1], [1, 1, 0, 0], [1, 1, 0, 0]]
    with pytest.raises(ConfigError, match="visible must be 1, 2 or 3"):
        QuadrantCVAE(data_shape=(1, 4, 4), visible=4, network=NET)


def test_log_evidence_is_the_conditional_likelihood_of_the_hidden_pixels():
    """A 1-D z: log p(x_h | x_v) = log int p(z|x_v) prod_hidden Bern(x_i) dz by a fine grid, against
    the importance-sampled estimate; the shown pixels enter only through the prior network."""
    torch.manual_seed(0)
    module = QuadrantCVAE(data_shape=(1, 2, 2), visible=1, latent_dim=1, network=NET)
    x = torch.tensor([[[[1.0, 0.0], [1.0, 1.0]]], [[[0.0, 1.0], [0.0, 0.0]]]])
    grid = torch.linspace(-10, 10, 8001)
    with torch.no_grad():
        exact = []
        for i in range(2):
            xi = x[i : i + 1]
            log_prior = module.p_z_given_visible(xi).log_prob(grid[:, None])  # (G,)
            log_lik = module.p_hidden_given_z(grid[:, None]).log_prob(xi.expand(len(grid), 1, 2, 2))
            exact.append(torch.logsumexp(log_prior + log_lik, 0) + (grid[1] - grid[0]).log())
        exact = torch.stack(exact)
        estimate = log_evidence(as_program(module), x, 20000)
        # the shown pixel (bottom-left) is not scored: flipping it changes p(x_h|x_v) only through p(z|x_v)
        flipped = x.clone()
        flipped[:, :, 1, 0] = 1 - flipped[:, :, 1, 0]
        lik = module.p_hidden_given_z(torch.zeros(2, 1))
    assert torch.allclose(estimate, exact, atol=0.02), (estimate, exact)
    assert torch.allclose(lik.log_prob(x), lik.log_prob(flipped))
    assert exact.max() < 0 and exact.min() > -3 * math.log(2) - 10  # three hidden binary pixels


def test_a_quadrant_run_trains_evaluates_and_completes(tmp_path):
    config = Config.from_dict({
        "data": {"name": "synthetic", "n_train": 64, "n_test": 16, "side": 6, "binary": True},
        "model": {"program": "quadrant-cvae", "visible": 2, "latent_dim": 2, "network": NET},
        "train": {"epochs": 2, "batch_size": 32, "lr": 1e-2}, "eval": {"samples": 10, "train_subset": 16}})
    Trainer(config, tmp_path, progress=False, log=lambda line: None).fit()
    run = load_run(tmp_path, trust_code=False)  # a library program
    x = run.data.prepared_test
    result = evaluate(run.program, x, samples=10)
    assert result.elbo.mean() <= result.log_px.mean() + 0.5 and result.log_px.mean() > -18 * math.log(2) - 5
    completions = run.program.module.complete(x, 3)
    shown = visible_mask((1, 6, 6), 2)
    assert completions.shape == (3, *x.shape)
    assert torch.equal(completions[:, :, shown], x[:, shown].expand(3, *x[:, shown].shape))


def test_a_run_folder_that_recorded_the_old_module_path_still_names_the_program():
    from pyro_vae.config import Config, library_program

    config = Config.from_dict({"model": {"program": "pyro_vae.completion:QuadrantCVAE"}})
    assert config.model.program == "pyro_vae.quadrants:QuadrantCVAE" and library_program(config.model.program)
