"""Evidence estimates checked against closed forms: Gaussian KLs and probabilistic PCA."""

from __future__ import annotations

import json
import math

import pytest
import torch
from pyro import distributions as dist

from pyro_vae import VAE, AnalyticKLELBO, evaluation, metrics
from pyro_vae.errors import RunDirError
from pyro_vae.evaluation import EvaluationStore, evaluate
from pyro_vae.metrics import (ACCELERATOR_CHUNK_PAIRS, CPU_CHUNK_BYTES, active_units, chunk_pairs_for,
                              elbo_terms, log_evidence, widest_activation)
from pyro_vae.priors import inverse_softplus

from conftest import log_weights, tiny_vae

# ---------------------------------------------------------------------------------------------
# Probabilistic PCA: x = W z + b + s * noise, z ~ N(0, I). Then p(x) = N(b, W W^T + s^2 I) and
# p(z|x) = N(M^-1 W^T (x - b), s^2 M^-1) with M = W^T W + s^2 I: both in closed form.

D, L, S = 6, 2, 0.5


def ppca_vae(posterior_shift: float = 0.0, posterior_scale_factor: float = 1.0) -> tuple[VAE, torch.Tensor, torch.Tensor]:
    """A linear-Gaussian VAE whose guide is the exact posterior (optionally shifted / widened).

    W has orthogonal columns, so the exact posterior is diagonal and the guide family contains it.
    """
    g = torch.Generator().manual_seed(3)
    q_mat, _ = torch.linalg.qr(torch.randn(D, L, generator=g))
    d = torch.tensor([2.0, 0.8])
    w = q_mat * d  # (D, L), orthogonal columns with norms d
    b = torch.randn(D, generator=g)
    vae = VAE(data_shape=(1, 1, D), latent_dim=L, network={"name": "mlp", "hidden": []},
              likelihood={"name": "gaussian", "scale": S})
    post_var = S**2 / (d**2 + S**2)
    gain = (d / (d**2 + S**2))[:, None] * q_mat.T  # (L, D): posterior mean = gain (x - b)
    with torch.no_grad():
        vae.decoder.body[0].weight.copy_(w)
        vae.decoder.body[0].bias.copy_(b)
        vae.posterior.loc.weight.copy_(gain)
        vae.posterior.loc.bias.copy_(-gain @ b + posterior_shift)
        vae.posterior.raw_scale.weight.zero_()
        vae.posterior.raw_scale.bias.copy_(inverse_softplus(post_var.sqrt() * posterior_scale_factor))
    return vae, w, b


def ppca_data(w, b, n: int = 64) -> torch.Tensor:
    g = torch.Generator().manual_seed(4)
    z = torch.randn(n, L, generator=g)
    return (z @ w.T + b + S * torch.randn(n, D, generator=g)).reshape(n, 1, 1, D)


def exact_log_evidence(w, b, x) -> torch.Tensor:
    cov = w @ w.T + S**2 * torch.eye(D)
    return dist.MultivariateNormal(b, covariance_matrix=cov).log_prob(x.reshape(-1, D))


def test_importance_weights_equal_the_evidence_when_q_is_the_exact_posterior():
    vae, w, b = ppca_vae()
    x = ppca_data(w, b)
    exact = exact_log_evidence(w, b, x)
    for k in (1, 7):
        torch.testing.assert_close(log_evidence(vae, x, k), exact, atol=2e-4, rtol=0)
    # ... and then the gap log p(x) - ELBO, i.e. KL(q || p(z|x)), is zero.
    terms = elbo_terms(vae, x, num_samples=2000)
    assert (exact - terms["elbo"]).abs().max().item() < 0.1


def test_importance_sampled_evidence_converges_to_the_closed_form():
    vae, w, b = ppca_vae(posterior_shift=0.2, posterior_scale_factor=1.3)  # a deliberately imperfect q
    x = ppca_data(w, b)
    exact = exact_log_evidence(w, b, x)
    errors = {}
    for k in (1, 10, 100, 1000, 5000):
        torch.manual_seed(0)
        errors[k] = (log_evidence(vae, x, k, chunk_pairs=4096) - exact).abs().mean().item()
    assert errors[1] > errors[10] > errors[100] > errors[1000] > errors[5000]
    assert errors[1] > 0.3  # one sample is the ELBO-like estimate: far off
    assert errors[5000] < 0.02  # the stated tolerance at K = 5000 (nats per datapoint)


def test_chunking_over_samples_keeps_memory_bounded_and_the_estimate_unchanged():
    vae, w, b = ppca_vae(posterior_shift=0.2, posterior_scale_factor=1.3)
    x = ppca_data(w, b, n=8)
    exact = exact_log_evidence(w, b, x)
    small = log_evidence(vae, x, 5000, chunk_pairs=64)  # 8 samples per chunk: 625 chunks
    large = log_evidence(vae, x, 5000, chunk_pairs=10**6)  # one chunk
    assert (small - exact).abs().max().item() < 0.05
    assert (large - exact).abs().max().item() < 0.05


def test_the_default_chunk_suits_the_decoder_and_the_device_and_an_explicit_one_wins():
    # an MLP decoder 3 -> 40 -> 784 logits: its widest output, 784 floats of 4 bytes a draw
    mlp = VAE(data_shape=(1, 28, 28), latent_dim=3, network={"name": "mlp", "hidden": [40]})
    assert widest_activation(mlp) == 784
    assert chunk_pairs_for(mlp, torch.device("cpu")) == CPU_CHUNK_BYTES // (4 * 784) == 4012
    # a conv decoder 3 -> 16 -> (16, 7, 7) -> (8, 14, 14) -> (1, 28, 28): the 8 x 14 x 14 maps are the widest
    conv = VAE(data_shape=(1, 28, 28), latent_dim=3, network={"name": "conv", "channels": [8, 16], "hidden": 16})
    assert widest_activation(conv) == 8 * 14 * 14 == 1568
    assert chunk_pairs_for(conv, torch.device("cpu")) == CPU_CHUNK_BYTES // (4 * 1568) == 2006
    tiny = VAE(data_shape=(1, 2, 2), latent_dim=2, network={"name": "mlp", "hidden": [4]})
    assert chunk_pairs_for(tiny, torch.device("cpu")) == ACCELERATOR_CHUNK_PAIRS  # capped
    assert chunk_pairs_for(mlp, torch.device("cuda")) == ACCELERATOR_CHUNK_PAIRS == 16384  # no GPU needed to ask
    assert chunk_pairs_for(mlp, torch.device("cpu"), 100) == 100
    vae, w, b = ppca_vae(posterior_shift=0.2, posterior_scale_factor=1.3)
    x = ppca_data(w, b, n=8)
    estimates = []
    for chunk in (None, chunk_pairs_for(vae, x.device)):  # unset is the default: the same draws, the same numbers
        torch.manual_seed(3)
        estimates.append(log_evidence(vae, x, 1000, chunk_pairs=chunk))
    assert torch.equal(*estimates)


def test_the_chunk_counts_an_autoregressive_likelihoods_own_layers_and_its_cache_changes_no_number():
    # pixelcnn-bernoulli, 16 channels: its gated layer's input, 28 x 28 x 2 x 16 per draw, outgrows the decoder's 4 x 784 head
    vae = VAE(data_shape=(1, 28, 28), latent_dim=3, network={"name": "mlp", "hidden": [40]},
              likelihood={"name": "pixelcnn-bernoulli", "channels": 16, "context": 4})
    assert widest_activation(vae) == 28 * 28 * 2 * 16 == 25088
    assert chunk_pairs_for(vae, torch.device("cpu")) == CPU_CHUNK_BYTES // (4 * 25088) == 125
    x = torch.bernoulli(torch.full((3, 1, 28, 28), 0.3))
    torch.manual_seed(5)
    streamed = log_evidence(vae, x, 40, chunk_pairs=30)  # 10 draws a chunk, the pixel features computed once
    torch.manual_seed(5)
    with torch.no_grad():
        log_w = torch.cat([log_weights(vae, x, 10) for _ in range(4)])  # no cache: recomputed each time
    torch.testing.assert_close(streamed, log_w.logsumexp(0) - math.log(40))


def test_log_evidence_builds_the_prior_once_and_its_numbers_are_those_of_a_prior_built_per_chunk(monkeypatch):
    # a VampPrior encodes its pseudo-inputs to build p(z): once per estimate, not once per chunk
    vae = VAE(data_shape=(1, 4, 4), latent_dim=3, network={"name": "mlp", "hidden": [8]},
              prior={"name": "vamp", "components": 5})
    x = torch.bernoulli(torch.full((3, 1, 4, 4), 0.4))
    torch.manual_seed(2)
    with torch.no_grad():
        per_chunk = torch.cat([log_weights(vae, x, 10) for _ in range(4)])  # p(z) rebuilt each time
    built = []
    forward = type(vae.prior).forward
    monkeypatch.setattr(type(vae.prior), "forward", lambda self: built.append(1) or forward(self))
    torch.manual_seed(2)
    streamed = log_evidence(vae, x, 40, chunk_pairs=30)  # 10 draws a chunk, 4 chunks
    assert len(built) == 1
    torch.testing.assert_close(streamed, per_chunk.logsumexp(0) - math.log(40))


def test_the_chunk_probe_takes_a_decoder_with_batch_norm_in_training_and_leaves_it_so():
    vae = VAE(data_shape=(1, 2, 2), latent_dim=2, network={"name": "mlp", "hidden": [4]})
    vae.decoder = torch.nn.Sequential(torch.nn.Linear(2, 24), torch.nn.BatchNorm1d(24), torch.nn.Linear(24, 4))
    vae.train()
    assert widest_activation(vae) == 24  # one draw: batch norm would refuse it in training mode
    assert vae.decoder.training and vae.decoder[1].training
    assert vae.decoder[1].num_batches_tracked.item() == 0  # the probe changed no running statistics


def test_closed_form_gaussian_kl_matches_the_formula_and_monte_carlo():
    mu, sigma = torch.tensor([[0.5, -1.0, 0.0]]), torch.tensor([[0.3, 1.5, 1.0]])
    q = dist.Normal(mu, sigma).to_event(1)
    p = dist.Normal(torch.zeros(3), torch.ones(3)).to_event(1)
    formula = 0.5 * (sigma**2 + mu**2 - 1 - 2 * sigma.log()).sum(-1)
    z = q.rsample((200_000,))
    closed = torch.distributions.kl_divergence(q, p)
    torch.testing.assert_close(closed, formula)
    samples = q.log_prob(z) - p.log_prob(z)
    stderr = samples.std(0) / math.sqrt(z.shape[0])
    assert ((samples.mean(0) - formula).abs() < 4 * stderr).all()


def test_the_registered_diagonal_gaussian_kl_to_n01_is_the_closed_form():
    from pyro_vae.guides import DiagonalNormal
    from pyro_vae.priors import StandardNormal

    mu, sigma = torch.randn(4, 3), torch.rand(4, 3) + 0.2
    q = DiagonalNormal(dist.Normal(mu, sigma), 1)
    p = StandardNormal(dist.Normal(torch.zeros(3), torch.ones(3)), 1)
    formula = 0.5 * (sigma**2 + mu**2 - 1 - 2 * sigma.log()).sum(-1)
    reference = torch.distributions.kl_divergence(torch.distributions.Normal(mu, sigma),
                                                  torch.distributions.Normal(0.0, 1.0)).sum(-1)
    torch.testing.assert_close(torch.distributions.kl_divergence(q, p), formula)
    torch.testing.assert_close(formula, reference)
    assert torch.distributions.kl_divergence(q, p.expand((4,))).shape == (4,)


def test_elbo_analytic_kl_uses_the_closed_form_kl():
    vae = tiny_vae()
    x = torch.rand(5, 1, 6, 6).bernoulli()
    torch.manual_seed(11)
    loss = AnalyticKLELBO().loss(vae.model, vae.guide, x)
    torch.manual_seed(11)
    with torch.no_grad():
        q = vae.q_z_given_x(x)
        z = q.rsample()
        recon = vae.p_x_given_z(z).log_prob(x)
        mu, sigma = q.base_dist.loc, q.base_dist.scale
        kl = 0.5 * (sigma**2 + mu**2 - 1 - 2 * sigma.log()).sum(-1)
    assert loss == pytest.approx(-(recon - kl).sum().item(), rel=1e-5)


def test_mixture_prior_kl_falls_back_to_monte_carlo():
    vae = tiny_vae(prior={"name": "mixture", "components": 3})
    x = torch.rand(20, 1, 6, 6).bernoulli()
    terms = elbo_terms(vae, x)
    assert not bool(terms["kl_analytic"])
    assert torch.isfinite(terms["kl"]).all()
    result = evaluate(vae, x, batch_size=7)  # several batches, each with a Monte-Carlo KL
    assert not result.kl_analytic and result.kl.shape == (20,)


def test_active_units_count_posterior_means_that_vary_with_the_data():
    means = torch.randn(5000, 4) * torch.tensor([1.0, 0.5, 0.03, 0.0])
    assert active_units(means) == 2


def test_evaluation_is_reproducible_and_leaves_the_training_random_stream_alone(binary_splits):
    vae = tiny_vae()
    x = binary_splits.test
    state = torch.get_rng_state()
    a = evaluate(vae, x, samples=20, seed=5, batch_size=7)
    b = evaluate(vae, x, samples=20, seed=5, batch_size=7)
    c = evaluate(vae, x, samples=20, seed=6, batch_size=7)
    assert torch.equal(torch.get_rng_state(), state)
    assert torch.equal(a.log_px, b.log_px) and torch.equal(a.elbo, b.elbo)
    assert not torch.equal(a.log_px, c.log_px)
    summary = a.summary()
    assert summary["datapoints"] == x.shape[0] and summary["importance_samples"] == 20
    assert summary["gap"]["mean"] == pytest.approx(summary["log_px"]["mean"] - summary["elbo"]["mean"], abs=1e-4)
    assert summary["bits_per_dim"]["mean"] == pytest.approx(-summary["log_px"]["mean"] / (36 * math.log(2)), rel=1e-5)
    assert "log p(x)" in a.table() and "active units" in a.table()


def test_an_interrupted_evaluation_resumes_from_its_store_with_the_same_numbers(binary_splits, tmp_path, monkeypatch):
    vae, x = tiny_vae(), binary_splits.test  # 32 datapoints: 5 batches of 7
    whole = evaluate(vae, x, samples=20, seed=5, batch_size=7)
    scored, real = [], metrics.evidence_terms

    def killed_in_the_third_batch(*args, **kwargs):
        if len(scored) == 2:
            raise KeyboardInterrupt
        scored.append(1)
        return real(*args, **kwargs)

    monkeypatch.setattr(evaluation, "evidence_terms", killed_in_the_third_batch)
    store = tmp_path / "batches"
    with pytest.raises(KeyboardInterrupt):
        evaluate(vae, x, samples=20, seed=5, batch_size=7, store=store)
    held = json.loads((store / EvaluationStore.KEY).read_text())
    assert {k: held[k] for k in ("samples", "seed", "batch_size", "datapoints")} == \
        {"samples": 20, "seed": 5, "batch_size": 7, "datapoints": 32}
    assert EvaluationStore.count(store) == 2  # the two finished batches, no half-written third
    scored.clear()
    monkeypatch.setattr(evaluation, "evidence_terms", lambda *a, **k: scored.append(1) or real(*a, **k))
    resumed = evaluate(vae, x, samples=20, seed=5, batch_size=7, store=store)
    assert len(scored) == 3  # only the batches not yet done
    for name in ("log_px", "elbo", "reconstruction", "kl", "posterior_mean"):
        assert torch.equal(getattr(resumed, name), getattr(whole, name)), name
    scored.clear()
    again = evaluate(vae, x, samples=20, seed=5, batch_size=7, store=store)
    assert not scored and torch.equal(again.log_px, whole.log_px)


def test_a_store_of_another_evaluation_is_refused_not_mixed_in(binary_splits, tmp_path):
    vae, x = tiny_vae(), binary_splits.test
    store = tmp_path / "batches"
    evaluate(vae, x, samples=4, seed=5, batch_size=7, store=store)
    with pytest.raises(RunDirError, match=r"differs in seed\)\. Remove that folder"):
        evaluate(vae, x, samples=4, seed=6, batch_size=7, store=store)
    with pytest.raises(RunDirError, match=r"differs in data"):
        evaluate(vae, 1 - x, samples=4, seed=5, batch_size=7, store=store)
    with torch.no_grad():
        next(vae.parameters())[0].add_(1e-3)
    with pytest.raises(RunDirError, match=r"differs in model"):
        evaluate(vae, x, samples=4, seed=5, batch_size=7, store=store)


def test_the_fingerprint_reads_expanded_and_strided_tensors_by_value():
    base = torch.tensor([1.5])
    one = torch.tensor(1.5).expand(1)  # stride 0 and one element: "contiguous" to torch, and refused by view
    assert evaluation.fingerprint([("t", one)]) == evaluation.fingerprint([("t", base)])
    assert evaluation.fingerprint([("t", base.expand(3))]) == evaluation.fingerprint([("t", torch.full((3,), 1.5))])
    grid = torch.arange(6.0).view(2, 3)
    assert evaluation.fingerprint([("t", grid.t())]) == evaluation.fingerprint([("t", grid.t().contiguous())])
    assert evaluation.fingerprint([("t", grid)]) != evaluation.fingerprint([("t", grid.t().contiguous().view(2, 3))])


def test_per_datapoint_values_are_written_one_row_each(binary_splits, tmp_path):
    result = evaluate(tiny_vae(), binary_splits.test, samples=4, batch_size=7)
    result.write_csv(tmp_path / "v.csv")
    rows = (tmp_path / "v.csv").read_text().splitlines()
    assert rows[0] == ("index,elbo_nats,reconstruction_nats,kl_nats,log_px_nats,gap_nats,elbo_stderr_nats,"
                       "log_px_stderr_nats,gap_stderr_nats") and len(rows) == 33
    values = torch.tensor([[float(v) for v in row.split(",")] for row in rows[1:]])
    assert torch.equal(values[:, 0], torch.arange(32.0))
    assert torch.allclose(values[:, 4], result.log_px, atol=1e-5) and torch.allclose(values[:, 1], result.elbo, atol=1e-5)


def test_the_evaluation_elbo_is_a_mean_over_the_importance_draws_with_its_standard_error(binary_splits, tmp_path):
    """issue: a one-draw ELBO made the per-datapoint gap negative for a quarter of the datapoints.
    Averaged over the K draws that estimate log p(x), with Monte-Carlo KL the gap is >= 0 for every
    datapoint (Jensen on the same draws); with a closed-form KL none is below zero beyond 2 s.e."""
    from pyro_vae.evaluation import EvaluationSettings

    vae = tiny_vae(prior={"name": "mixture", "components": 3})  # no closed-form KL: Monte Carlo
    x = binary_splits.test
    ev = evaluate(vae, x, samples=50, seed=3)
    assert ev.elbo_draws == 50 and ev.kl_analytic is False
    assert (ev.gap >= -1e-4).all()  # log (1/K) sum w_k >= (1/K) sum log w_k, datapoint by datapoint
    torch.testing.assert_close(ev.elbo, ev.reconstruction - ev.kl)
    stock = tiny_vae()
    closed = evaluate(stock, x, samples=50, seed=3)
    summary = closed.summary()
    assert summary["elbo_draws"] == 50 and summary["gap_below_zero"]["beyond_two_stderr"] == 0
    assert (closed.elbo_stderr > 0).all() and (closed.log_px_stderr >= 0).all()
    many = evaluate(stock, x, samples=800, seed=3)  # the ELBO's standard error shrinks like 1/sqrt(K)
    ratio = (many.elbo_stderr / closed.elbo_stderr).median().item()
    assert 0.15 < ratio < 0.4, ratio  # sqrt(50 / 800) = 0.25
    closed.write_csv(tmp_path / "e.csv")
    header = (tmp_path / "e.csv").read_text().splitlines()[0].split(",")
    assert {"elbo_stderr_nats", "log_px_stderr_nats", "gap_stderr_nats"} <= set(header)
    one = evaluate(stock, x, EvaluationSettings(samples=0, elbo_samples=1))  # the per-epoch scores: named so
    assert one.elbo_draws == 1 and "[one draw]" in one.table()
