"""Disentangling objectives (beta, beta-tc, factor), the KL's decomposition and its minibatch estimators,
and the one call that scores a run's latents against its factors (the metrics themselves: test_scores.py)."""

from __future__ import annotations

import itertools
import json
import math

import numpy as np
import pytest
import torch

from pyro_vae import ConfigError, DataError
from pyro_vae.config import OBJECTIVES, Config
from pyro_vae.disentanglement import (decomposed_kl, disentanglement_scores, kl_decomposition, log_weight_matrix)
from pyro_vae.programs import as_program
from pyro_vae.runs import CHECKPOINT, CONFIG, load_checkpoint, read_metrics
from pyro_vae.terms import DirectSource
from pyro_vae.training import Trainer

from conftest import tiny_config, tiny_vae
from suites import direct_step, gradients

QUIET = dict(progress=False, log=lambda s: None)


def _gaussian_case(n: int = 5, d: int = 2, seed: int = 0):
    """A tiny dataset's q(z|x_n) = N(loc_n, diag scale_n^2) and one draw z_n from each, float64."""
    g = torch.Generator().manual_seed(seed)
    loc = torch.randn(n, d, generator=g, dtype=torch.float64)
    scale = 0.5 + torch.rand(n, d, generator=g, dtype=torch.float64)
    z = loc + scale * torch.randn(n, d, generator=g, dtype=torch.float64)
    return loc, scale, z


def _q(loc, scale):
    return torch.distributions.Independent(torch.distributions.Normal(loc, scale), 1)


def _exact_log_qz(loc, scale, z):
    """log q(z_i) = log (1/N) sum_n q(z_i|x_n) and sum_d log q(z_id), summed exhaustively over the dataset."""
    per_pair = torch.distributions.Normal(loc, scale).log_prob(z.unsqueeze(1))  # (i, n, D)
    n = loc.shape[0]
    return (torch.logsumexp(per_pair.sum(-1), 1) - math.log(n),
            (torch.logsumexp(per_pair, 1) - math.log(n)).sum(-1))


def _parts(loc, scale, z, batch, n, estimator):
    """decomposed_kl on the datapoints ``batch`` of a dataset of n; (log q^(z_i), sum_d log q^(z_id)) per member."""
    q = _q(loc[batch], scale[batch])
    p = _q(torch.zeros_like(loc[batch]), torch.ones_like(scale[batch]))
    log_q, log_p = q.log_prob(z[batch]).unsqueeze(0), p.log_prob(z[batch]).unsqueeze(0)
    parts = decomposed_kl(q, z[batch], log_q, log_p, n, estimator)
    total = parts["mutual_information"] + parts["total_correlation"] + parts["dimension_wise_kl"]
    assert torch.allclose(total, log_q - log_p, rtol=0, atol=1e-12)  # the parts telescope, any estimator
    log_qz = log_q - parts["mutual_information"]
    return log_qz[0], log_qz[0] - parts["total_correlation"][0]


def test_stratified_estimate_of_q_z_is_unbiased_over_every_batch_and_exact_on_the_whole_set():
    loc, scale, z = _gaussian_case()
    n, b = 5, 3
    exact_joint, exact_marginals = _exact_log_qz(loc, scale, z)
    # every batch of b distinct datapoints (uniform without replacement), in every position: E[q^(z_i)] = q(z_i)
    sums, counts = torch.zeros(n, dtype=torch.float64), torch.zeros(n)
    for batch in itertools.permutations(range(n), b):
        joint, _ = _parts(loc, scale, z, list(batch), n, "stratified")
        sums[list(batch)] += joint.exp()
        counts[list(batch)] += 1
    assert torch.allclose((sums / counts).log(), exact_joint, rtol=0, atol=1e-12)
    joint, marginals = _parts(loc, scale, z, list(range(n)), n, "stratified")  # B = N: exact
    assert torch.allclose(joint, exact_joint, atol=1e-12) and torch.allclose(marginals, exact_marginals, atol=1e-12)


def test_weighted_estimate_sits_log_n_low_and_its_total_correlation_d_minus_1_log_n_high_on_the_whole_set():
    loc, scale, z = _gaussian_case(n=6, d=3, seed=1)
    n, d = 6, 3
    exact_joint, exact_marginals = _exact_log_qz(loc, scale, z)
    joint, marginals = _parts(loc, scale, z, list(range(n)), n, "weighted")
    assert torch.allclose(joint, exact_joint - math.log(n), atol=1e-12)
    assert torch.allclose(joint - marginals, exact_joint - exact_marginals + (d - 1) * math.log(n), atol=1e-12)


def test_log_weight_matrix_rows_sum_to_one_stratified_and_to_one_over_n_weighted():
    assert torch.allclose(log_weight_matrix(4, 10, "stratified", torch.float64).exp().sum(1),
                          torch.ones(4, dtype=torch.float64))
    assert torch.allclose(log_weight_matrix(4, 10, "weighted", torch.float64).exp().sum(1),
                          torch.full((4,), 0.1, dtype=torch.float64))
    with pytest.raises(ConfigError, match="dataset_size must be >= the batch size"):
        log_weight_matrix(8, 4)


def test_beta_one_is_the_elbo_and_beta_four_weighs_the_kl_four_times():
    torch.manual_seed(0)
    vae = tiny_vae()
    x = torch.rand(16, 1, 6, 6).bernoulli()
    names = {n for n, _ in vae.named_parameters()}
    elbo = gradients(vae, direct_step(vae, OBJECTIVES.build("elbo"), x))
    beta = gradients(vae, direct_step(vae, OBJECTIVES.build({"name": "beta", "beta": 1.0}), x))
    assert elbo[0] == beta[0] and set(beta[1]) <= names
    for name, g in elbo[1].items():
        assert torch.equal(g, beta[1][name]), name
    torch.manual_seed(7)
    terms = DirectSource(vae).draw(x, 1)
    expected = -(terms.log_likelihood - 4.0 * (terms.log_q - terms.log_prior)).sum()
    torch.manual_seed(7)
    assert OBJECTIVES.build({"name": "beta", "beta": 4.0}).step(DirectSource(vae), x)[1].item() == pytest.approx(
        expected.item(), rel=1e-6)


def test_beta_tc_with_unit_weights_is_the_elbo_and_its_tc_weight_moves_the_loss():
    torch.manual_seed(0)
    vae = tiny_vae()
    x = torch.rand(16, 1, 6, 6).bernoulli()
    unit = OBJECTIVES.build({"name": "beta-tc", "tc_weight": 1.0, "dataset_size": 100})
    elbo = gradients(vae, direct_step(vae, OBJECTIVES.build("elbo"), x))
    tc = gradients(vae, direct_step(vae, unit, x))
    assert tc[0] == pytest.approx(elbo[0], rel=1e-5)
    for name, g in elbo[1].items():
        assert torch.allclose(g, tc[1][name], rtol=1e-4, atol=1e-5), name
    torch.manual_seed(7)
    parts = unit.parts(DirectSource(vae).draw(x, 1))
    torch.manual_seed(7)
    six = OBJECTIVES.build({"name": "beta-tc", "tc_weight": 6.0, "dataset_size": 100}).step(DirectSource(vae), x)[1]
    assert six.item() == pytest.approx(elbo[0] + 5.0 * parts["total_correlation"].sum().item(), rel=1e-5)


@pytest.mark.parametrize("spec, message", [
    ({"name": "beta", "beta": 0.0}, "beta must be > 0"),
    ({"name": "beta", "beta": -1.0}, "beta must be > 0"),
    ({"name": "beta-tc", "tc_weight": 0.0}, "tc_weight must be > 0"),
    ({"name": "beta-tc", "estimator": "exact"}, "estimator must be one of stratified, weighted"),
])
def test_bad_weights_are_refused_naming_the_fix(spec, message):
    with pytest.raises(ConfigError, match=message):
        OBJECTIVES.build(spec)


def test_beta_tc_without_the_dataset_size_and_factor_on_one_latent_are_refused():
    vae = tiny_vae()
    x = torch.rand(8, 1, 6, 6).bernoulli()
    with pytest.raises(ConfigError, match="train.objective.dataset_size"):
        OBJECTIVES.build("beta-tc").step(DirectSource(vae), x)
    with pytest.raises(ConfigError, match="model.latent_dim >= 2"):
        OBJECTIVES.build("factor").attach(tiny_vae(latent_dim=1))
    with pytest.raises(ConfigError, match="not 'iaf'"):
        OBJECTIVES.build("beta-tc").check_guide("iaf")


def test_the_decomposition_over_a_set_sums_to_its_kl_and_its_mi_is_at_most_log_m():
    torch.manual_seed(0)
    vae = tiny_vae(latent_dim=3)
    x = torch.rand(40, 1, 6, 6).bernoulli()
    parts = kl_decomposition(as_program(vae), x, seed=1, batch_size=16)
    total = parts["mutual_information"] + parts["total_correlation"] + parts["dimension_wise_kl"]
    assert total == pytest.approx(parts["kl"], abs=1e-4)
    assert parts["mutual_information"] <= math.log(40) + 1e-6 and parts["datapoints"] == 40
    again = kl_decomposition(as_program(vae), x, seed=1, batch_size=7)  # batching changes nothing (but rounding)
    assert again == pytest.approx(parts, abs=1e-6)


def test_factor_vae_trains_its_discriminator_reports_the_decomposition_and_resumes_bit_identically(tmp_path):
    config = tiny_config(train={"epochs": 2, "objective": {"name": "factor", "gamma": 5.0, "hidden": 8}})
    Trainer(config, tmp_path / "whole", **QUIET).fit()
    Trainer(config, tmp_path / "parts", **QUIET).fit(stop_after=1)
    Trainer(Config.load(tmp_path / "parts" / CONFIG), tmp_path / "parts", **QUIET).fit(resume=True)
    whole, parts = load_checkpoint(tmp_path / "whole" / CHECKPOINT), load_checkpoint(tmp_path / "parts" / CHECKPOINT)
    initial = OBJECTIVES.build({"name": "factor", "hidden": 8}).discriminator(2).state_dict()
    network = whole["objective"]["network"]
    assert any(not torch.equal(network[k], initial[k]) for k in initial)  # the discriminator was stepped
    for name, tensor in network.items():
        assert torch.equal(tensor, parts["objective"]["network"][name]), name
    for name, tensor in whole["model"].items():
        assert torch.equal(tensor, parts["model"][name]), name
    assert str(whole["optimizer"]["state"]) == str(parts["optimizer"]["state"])  # Adam's moments, D's included
    line = read_metrics(tmp_path / "whole")[-1]["test"]["decomposition"]
    assert line["mutual_information"] + line["total_correlation"] + line["dimension_wise_kl"] == pytest.approx(
        line["kl"], abs=1e-3)


def test_beta_tc_trains_in_a_run_with_n_from_the_trainer(tmp_path):
    config = tiny_config(train={"epochs": 1, "objective": {"name": "beta-tc", "estimator": "weighted"}})
    trainer = Trainer(config, tmp_path / "run", **QUIET).fit()
    assert trainer.objective._n == 128 and math.isfinite(trainer.history[-1]["objective"])
    assert "decomposition" in trainer.history[-1]["test"]


def test_scores_of_identity_means_are_at_the_maximum_and_bad_input_is_refused():
    rng = np.random.default_rng(0)
    factors = np.stack([rng.integers(0, 5, 600), rng.integers(0, 4, 600)], 1)
    means = factors + 0.01 * rng.standard_normal(factors.shape)
    out = disentanglement_scores(means, factors, resamples=3)
    assert out["mig"] > 0.95 and out["sap"] > 0.95 and out["dci_disentanglement"] > 0.9
    assert out["mig_stderr"] >= 0 and out["points"] == 600 and out["factorvae"] is None
    mixed = disentanglement_scores(means @ np.array([[1.0, 1.0], [-1.0, 1.0]]), factors, resamples=3)
    assert mixed["mig"] < out["mig"] and mixed["dci_disentanglement"] < out["dci_disentanglement"]
    continuous = disentanglement_scores(means, factors + rng.random(factors.shape) * 0.5, resamples=2)
    assert "binned into 20 equal-width bins" in continuous["factor_binning"]
    with pytest.raises(DataError, match="pass factors"):
        disentanglement_scores(means)


def test_evaluate_disentanglement_scores_a_dsprites_run_and_refuses_data_without_factors(tmp_path, capsys):
    from pyro_vae.cli import main

    common = ["--set", "model.latent_dim=3", "--set", "model.network.hidden=[16]", "--set", "train.epochs=1",
              "--set", "train.batch_size=32", "--set", "eval.samples=4", "--no-progress"]
    run = tmp_path / "sprites"
    assert main(["train", "--set", "data=dsprites", "--set", "data.n_train=64", "--set", "data.n_test=60",
                 "--set", "train.objective=beta-tc", *common, "--out", str(run)]) == 0
    assert main(["evaluate", str(run), "--samples", "2", "--disentanglement", "--points", "60", "--resamples", "2",
                 "--no-progress"]) == 0
    assert "MIG" in capsys.readouterr().out
    parts = json.loads((run / "evaluation.json").read_text())["kl_decomposition"]  # training's own evaluation
    assert parts["mutual_information"] + parts["total_correlation"] + parts["dimension_wise_kl"] == pytest.approx(
        parts["kl"], abs=1e-4)
    report = json.loads((run / "evaluation-K2-seed0.json").read_text())["disentanglement"]
    for key in ("mig", "sap", "dci_disentanglement", "dci_completeness", "dci_informativeness", "factorvae"):
        assert 0 <= report[key] <= 1 and report[key + "_stderr"] >= 0, key
    assert report["points"] == 60 and report["decomposition"]["datapoints"] == 60
    plain = tmp_path / "plain"
    assert main(["train", "--set", "data=synthetic", "--set", "data.n_train=64", "--set", "data.n_test=20",
                 "--set", "data.side=6", *common, "--out", str(plain)]) == 0
    assert main(["evaluate", str(plain), "--samples", "2", "--disentanglement", "--no-progress"]) != 0
    assert "no known factors of variation" in capsys.readouterr().err


def test_beta_with_a_flow_guide_trains_and_says_why_its_kl_is_not_decomposed(tmp_path):
    config = tiny_config(train={"epochs": 1, "objective": {"name": "beta", "beta": 2.0}},
                         model={"guide": {"name": "iaf", "hidden": 8, "context": 4}})
    trainer = Trainer(config, tmp_path / "run", **QUIET).fit()
    assert "diagonal-gaussian" in trainer.history[-1]["test"]["decomposition"]["not_computed"]


def test_raw_pyro_svi_steps_the_factor_vae_discriminator_from_the_first_step():
    import pyro
    from pyro.infer import SVI
    from pyro.optim import Adam

    pyro.clear_param_store()
    torch.manual_seed(0)
    vae = tiny_vae(latent_dim=3)
    objective = OBJECTIVES.build({"name": "factor", "hidden": 8})
    svi = SVI(vae.model, vae.guide, Adam({"lr": 1e-2}), objective)
    x = torch.rand(16, 1, 6, 6).bernoulli()
    assert math.isfinite(svi.step(x))
    initial = OBJECTIVES.build({"name": "factor", "hidden": 8}).discriminator(3).state_dict()
    stepped = objective.module().state_dict()
    assert all(not torch.equal(stepped[k], initial[k]) for k in initial)


def test_a_traversal_changes_one_coordinate_of_the_input_s_posterior_mean_per_row():
    """Row d, column j is the decoded posterior mean of x with z_d set to the j-th of 9 values evenly spaced
    between the 2% and 98% quantiles of coordinate d's posterior means over the reference inputs."""
    from pyro_vae import plots

    vae = tiny_vae(latent_dim=3)
    x = torch.rand(32, 1, 6, 6, generator=torch.Generator().manual_seed(0))
    program = as_program(vae, tuple(x.shape[1:]))
    images = plots.traversals(program, x[:1], x)
    assert images.shape == (3 * plots.TRAVERSAL_STEPS, *x.shape[1:])
    with torch.no_grad():
        z = program.posterior_means(x[:1])["z"]
        spread = program.posterior_means(x)["z"]
        d, j = 1, 6
        value = torch.quantile(spread[:, d].double(), 0.02) + j / 8 * (torch.quantile(spread[:, d].double(), 0.98)
                                                                       - torch.quantile(spread[:, d].double(), 0.02))
        z = z.clone()
        z[0, d] = value.to(z.dtype)
        expected = program.decode({"z": z})
    assert torch.allclose(images[d * plots.TRAVERSAL_STEPS + j], expected[0], atol=1e-6)
    assert not torch.allclose(images[0], images[plots.TRAVERSAL_STEPS - 1])  # (the first coordinate does move)


def test_traversals_refuse_a_discrete_latent():
    from pyro_vae import plots

    vae = tiny_vae(latent_dim=4, prior={"name": "categorical", "classes": 2}, guide={"name": "categorical", "classes": 2})
    x = torch.rand(8, 1, 6, 6, generator=torch.Generator().manual_seed(0))
    with pytest.raises(ValueError, match="one continuous latent vector"):
        plots.traversals(as_program(vae, tuple(x.shape[1:])), x[:1], x)
