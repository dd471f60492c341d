"""The parts of a topic model (ProdLDA: Srivastava & Sutton 2017) and what it is scored by.

The logistic-normal prior against its formula, the KLs against Monte Carlo, the dirichlet guide's
pathwise gradients against d/da E[theta], the topic network's shapes and batch norm, the input
transforms, the scores of topics.py on hand-computed examples, the latent-space refusals, and a tiny
topic VAE that finds three planted topics. A multinomial over each document's own total is written
here as a test-local likelihood (a few lines over ``distributions.MultinomialRows``), so nothing
here depends on a registered one.
"""

from __future__ import annotations

import math

import numpy as np
import pyro
import pytest
import scipy.sparse as sp
import torch
from torch.distributions import kl_divergence

from pyro_vae import VAE
from pyro_vae.config import GUIDES, LIKELIHOODS, NETWORKS, OBJECTIVES, PRIORS, read_toml
from pyro_vae.distributions import MultinomialRows, inverse_softplus
from pyro_vae.errors import ConfigError, DataError
from pyro_vae.likelihoods import Likelihood
from pyro_vae.topics import coherence, perplexity, top_words, topic_words_table, unigram_log_probability
from pyro_vae.training import svi_step

from conftest import tiny_vae
from suites import assert_same_step, assert_trains, example_splits, train_steps


class WordCounts(Likelihood):
    """p(x|z) = Mult(x; N = sum_i x_i, softmax(head)): a document's counts given its own length (a test-local multinomial)."""

    discrete = True

    def __init__(self) -> None:
        super().__init__()

    def forward(self, head: torch.Tensor):
        (logits,) = self.split_head(head)
        return MultinomialRows(logits=logits).to_event(len(self.event_shape) - 1)

    def example(self, grey: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        return torch.poisson(5.0 * grey, generator=generator)

    def mean(self, head: torch.Tensor) -> torch.Tensor:
        """The word probabilities (E[x|z] / N, for the pictures: no document length is given here)."""
        return self(head).probs if len(self.event_shape) == 1 else self(head).base_dist.probs


@pytest.fixture(scope="module")
def word_counts():
    LIKELIHOODS.register("word-counts-test")(WordCounts)
    try:
        yield "word-counts-test"
    finally:
        LIKELIHOODS.unregister("word-counts-test")


def monte_carlo(values: torch.Tensor) -> tuple[float, float]:
    """(mean, standard error) of i.i.d. draws."""
    return values.mean().item(), (values.std() / math.sqrt(values.numel())).item()


# ---------------------------------------------------------------------------------------------
# priors and guide


@pytest.mark.parametrize("k", [2, 5, 50])
@pytest.mark.parametrize("alpha", [0.1, 1.0, 3.0])
def test_the_logistic_normal_prior_is_the_laplace_approximation_of_the_symmetric_dirichlet(k, alpha):
    """mu_k = log alpha_k - mean_j log alpha_j and sigma_k^2 = (1/alpha_k)(1 - 2/K) + sum_j (1/alpha_j) / K^2,
    written out per coordinate; at alpha_k = alpha: mu = 0, sigma^2 = (1 - 1/K) / alpha (0.98 at alpha 1, K 50)."""
    p = PRIORS.build({"name": "logistic-normal", "alpha": alpha}).setup(k)()
    loc, scale = p.base_dist.loc.double(), p.base_dist.scale.double()
    a = [alpha] * k
    for i in range(k):
        assert loc[i].item() == pytest.approx(math.log(a[i]) - sum(math.log(v) for v in a) / k, abs=1e-7)
        assert scale[i].item() ** 2 == pytest.approx((1 / a[i]) * (1 - 2 / k) + sum(1 / v for v in a) / k**2, rel=1e-6)
        assert scale[i].item() ** 2 == pytest.approx((1 - 1 / k) / alpha, rel=1e-6)
    assert p.event_shape == (k,) and p.batch_shape == ()
    assert list(PRIORS.build("logistic-normal").setup(k).parameters()) == []  # fixed by the Dirichlet


def test_the_priors_refuse_a_non_positive_alpha_and_fewer_than_two_topics():
    for name in ("logistic-normal", "dirichlet"):
        with pytest.raises(ConfigError, match="alpha .* must be > 0"):
            PRIORS.build({"name": name, "alpha": 0.0})
        with pytest.raises(ConfigError, match="needs K >= 2"):
            PRIORS.build(name).setup(1)
    with pytest.raises(ConfigError, match="needs K >= 2"):
        GUIDES.build("dirichlet").setup(4, 1)


def test_the_kl_of_a_diagonal_gaussian_guide_to_the_logistic_normal_is_the_closed_form_of_two_normals():
    """kl_divergence (torch's registered KL of Independent Normals) = sum_k log(sigma_k/s_k) +
    (s_k^2 + (m_k - mu_k)^2) / (2 sigma_k^2) - 1/2, and the Monte Carlo mean of log q(z) - log p(z)
    over 200,000 draws agrees within 5 standard errors."""
    torch.manual_seed(1)
    prior = PRIORS.build({"name": "logistic-normal", "alpha": 0.5}).setup(4).double()
    guide = GUIDES.build("diagonal-gaussian").setup(3, 4).double()
    q, p = guide(torch.randn(2, 3, dtype=torch.float64)), prior()
    kl = kl_divergence(q, p)
    m, s, mu, sigma = q.base_dist.loc, q.base_dist.scale, p.base_dist.loc, p.base_dist.scale
    formula = (torch.log(sigma / s) + (s**2 + (m - mu) ** 2) / (2 * sigma**2) - 0.5).sum(-1)
    torch.testing.assert_close(kl, formula)
    with torch.no_grad():
        z = q.rsample((200_000,))
        draws = q.log_prob(z) - p.log_prob(z)
    for d in range(2):
        mean, se = monte_carlo(draws[:, d])
        assert abs(mean - kl[d].item()) < 5 * se, (mean, kl[d].item(), se)


def test_the_kl_of_two_dirichlets_is_the_closed_form_and_the_monte_carlo_mean():
    """KL(Dir(a) || Dir(alpha 1)) = lgamma(a_0) - sum lgamma(a_k) - lgamma(K alpha) + K lgamma(alpha)
    + sum (a_k - alpha)(psi(a_k) - psi(a_0)), torch's registered KL, against 200,000 draws."""
    torch.manual_seed(2)
    prior = PRIORS.build({"name": "dirichlet", "alpha": 0.7}).setup(3).double()
    guide = GUIDES.build("dirichlet").setup(2, 3).double()
    q, p = guide(torch.randn(2, 2, dtype=torch.float64)), prior()
    assert q.event_shape == p.event_shape == (3,) and q.batch_shape == (2,)
    a, alpha, k = q.concentration, 0.7, 3
    a0 = a.sum(-1, keepdim=True)
    formula = (torch.lgamma(a0[..., 0]) - torch.lgamma(a).sum(-1) - math.lgamma(k * alpha) + k * math.lgamma(alpha)
               + ((a - alpha) * (torch.digamma(a) - torch.digamma(a0))).sum(-1))
    kl = kl_divergence(q, p)
    torch.testing.assert_close(kl, formula)
    with torch.no_grad():
        theta = q.rsample((200_000,))
        draws = q.log_prob(theta) - p.log_prob(theta)
    for d in range(2):
        mean, se = monte_carlo(draws[:, d])
        assert abs(mean - kl[d].item()) < 5 * se, (mean, kl[d].item(), se)


def test_the_dirichlet_guide_s_pathwise_gradient_is_d_da_of_the_mean():
    """theta = rsample() (implicit reparameterization): the average over N draws of d theta_k / d a_j
    estimates d E[theta_k] / d a_j = (delta_jk a_0 - a_k) / a_0^2; through the guide's head a_j =
    softplus(b_j) + a_min, so d / d b_j multiplies by sigmoid(b_j). Within 5 standard errors (from 40
    batches of the 20,000 draws)."""
    torch.manual_seed(3)
    a = torch.tensor([0.5, 2.0, 4.0], dtype=torch.float64)
    guide = GUIDES.build({"name": "dirichlet", "min_concentration": 1e-3}).setup(1, 3).double()
    with torch.no_grad():
        guide.raw_concentration.weight.zero_()
        guide.raw_concentration.bias.copy_(inverse_softplus(a - 1e-3))
    q = guide(torch.zeros(1, 1, dtype=torch.float64))
    torch.testing.assert_close(q.concentration[0], a)
    n, batch = 20_000, 500
    theta = q.rsample((n,))[:, 0]  # (n, 3)
    a0 = a.sum()
    for k in range(3):
        # the average over the draws of d theta_k^(i) / d b
        per_draw = torch.autograd.grad(theta[:, k].sum(), guide.raw_concentration.bias, retain_graph=True)[0] / n
        expected = ((torch.arange(3) == k).double() * a0 - a[k]) / a0**2 * torch.sigmoid(guide.raw_concentration.bias)
        # standard error from 40 batches of 500 draws
        batches = torch.stack([torch.autograd.grad(theta[i:i + batch, k].mean(), guide.raw_concentration.bias,
                                                   retain_graph=True)[0] for i in range(0, n, batch)])
        se = batches.std(0) / math.sqrt(batches.shape[0])
        assert (per_draw.detach() - expected.detach()).abs().le(5 * se + 1e-9).all(), (k, per_draw, expected, se)


# ---------------------------------------------------------------------------------------------
# the topic network


def test_the_topic_decoder_reads_softmax_proportions_and_emits_the_likelihood_head():
    network = NETWORKS.build({"name": "topic", "hidden": [8], "dropout": 0.0})
    encoder, decoder = network.encoder((12,)), network.decoder(3, (1, 12))
    assert encoder(torch.rand(5, 12)).shape == (5, 8) and encoder.out_features == 8
    z = torch.randn(4, 5, 3)  # (particles, datapoints, K)
    theta = decoder.proportions(z)
    torch.testing.assert_close(theta.sum(-1), torch.ones(4, 5))
    assert decoder(z).shape == (4, 5, 1, 12)
    words = decoder.topic_words()
    assert words.shape == (3, 12) and torch.equal(words, decoder.topics.weight.t())
    assert decoder.topics.bias is None
    simplex = NETWORKS.build({"name": "topic", "latent": "simplex", "dropout": 0.0}).decoder(3, (1, 12))
    point = torch.tensor([[0.2, 0.3, 0.5]])
    assert torch.equal(simplex.proportions(point), point)  # read as is
    # without batch norm, at theta = e_k the multinomial's word probabilities are topic k's softmax(W_k)
    plain = NETWORKS.build({"name": "topic", "batch_norm": False, "latent": "simplex", "dropout": 0.0}).decoder(3, (1, 12))
    head = plain(torch.eye(3))[:, 0]
    torch.testing.assert_close(torch.softmax(head, -1), torch.softmax(plain.topic_words(), -1))


def test_the_decoder_s_batch_norm_uses_the_batch_in_training_and_its_running_averages_in_evaluation():
    """Training: (y - batch mean) / sqrt(batch variance + 1e-5), per head entry, y = W theta; the running
    averages move by 0.1 toward the batch's mean and unbiased variance. Evaluation, and a batch of one
    row: (y - running mean) / sqrt(running variance + 1e-5). No affine parameters."""
    decoder = NETWORKS.build({"name": "topic", "dropout": 0.0}).decoder(3, (1, 7))
    assert [n for n, _ in decoder.named_parameters()] == ["topics.weight"]
    z = torch.randn(6, 3)
    y = decoder.topics(torch.softmax(z, -1)).detach()
    out = decoder(z)[:, 0]
    expected = (y - y.mean(0)) / torch.sqrt(y.var(0, unbiased=False) + 1e-5)
    torch.testing.assert_close(out, expected)
    running_mean, running_var = 0.1 * y.mean(0), 0.9 + 0.1 * y.var(0, unbiased=True)
    torch.testing.assert_close(decoder.norm.running_mean, running_mean)
    torch.testing.assert_close(decoder.norm.running_var, running_var)
    decoder.eval()
    one = decoder(z[:1])[:, 0]
    torch.testing.assert_close(one, (y[:1] - running_mean) / torch.sqrt(running_var + 1e-5))
    # one row in training (the library's probes run one placeholder datapoint): the running averages, unchanged
    decoder.train()
    torch.testing.assert_close(decoder(z[:1])[:, 0], one)
    torch.testing.assert_close(decoder.norm.running_mean, running_mean)


def test_dropout_acts_in_training_only():
    network = NETWORKS.build({"name": "topic", "hidden": [16], "dropout": 0.5})
    encoder, decoder = network.encoder((12,)), network.decoder(3, (1, 12))
    x, z = torch.rand(8, 12), torch.randn(8, 3)
    assert not torch.equal(encoder(x), encoder(x))
    encoder.eval(), decoder.eval()
    assert torch.equal(encoder(x), encoder(x)) and torch.equal(decoder(z), decoder(z))


@pytest.mark.parametrize("network", ["mlp", "topic"])
def test_the_input_option_says_what_the_encoder_reads(network):
    """identity: x (the very tensor, so existing runs are unchanged bit for bit); log1p: log(1 + x);
    proportions: x / its row total (a row of zeros reads as zeros). The transforms refuse x < 0."""
    from pyro_vae.networks import read_input

    x = torch.tensor([[0.0, 1.0, 3.0], [0.0, 0.0, 0.0]])
    assert read_input(x, "identity", network) is x
    torch.testing.assert_close(read_input(x, "log1p", network), torch.log1p(x))
    torch.testing.assert_close(read_input(x, "proportions", network), torch.tensor([[0.0, 0.25, 0.75], [0.0, 0.0, 0.0]]))
    for mode in ("log1p", "proportions"):
        encoder = NETWORKS.build({"name": network, "hidden": [4], "input": mode}).encoder((3,))
        assert torch.isfinite(encoder(x)).all()
        with pytest.raises(DataError, match=f"input = \"{mode}\".*down to -0.5.*input = \"identity\""):
            encoder(torch.tensor([[1.0, -0.5, 2.0]]))
    # the default reads x itself: the same features as a body given x directly
    torch.manual_seed(0)
    encoder = NETWORKS.build({"name": network, "hidden": [4]}).encoder((3,))
    assert encoder.input == "identity" and NETWORKS.build(network).options()["input"] == "identity"


@pytest.mark.parametrize("likelihood", LIKELIHOODS.names())
def test_every_likelihood_trains_with_the_topic_network(likelihood, grey_splits):
    """The shared network suite (tests/test_training.py builds an mlp for every network but conv): the
    topic network under every registered likelihood, with a real latent, trains 40 steps."""
    splits = example_splits(likelihood, grey_splits)
    vae = tiny_vae(likelihood=likelihood, network={"name": "topic", "hidden": [16]})
    assert_trains(train_steps(vae, OBJECTIVES.build("elbo"), splits, steps=40))


@pytest.mark.parametrize("objective", ["elbo", "elbo-analytic-kl", "iwae"])
def test_a_dirichlet_topic_vae_trains_and_its_direct_terms_are_the_traced_ones(objective, grey_splits, word_counts):
    counts = example_splits(word_counts, grey_splits)
    spec = {"prior": "dirichlet", "guide": "dirichlet", "likelihood": word_counts,
            "network": {"name": "topic", "hidden": [16], "latent": "simplex"}}
    options = {"num_particles": 3} if objective == "iwae" else {}
    assert_trains(train_steps(tiny_vae(**spec), OBJECTIVES.build({"name": objective, **options}), counts, steps=40))
    assert_same_step(tiny_vae(**spec), OBJECTIVES.build({"name": objective, **options}), counts.train[:16])


# ---------------------------------------------------------------------------------------------
# latent spaces


@pytest.mark.parametrize("prior,guide,network,refused", [
    ("dirichlet", "diagonal-gaussian", "mlp",
     "the prior 'dirichlet' is over the simplex and the guide 'diagonal-gaussian' over real vectors.*dirichlet with dirichlet"),
    ("logistic-normal", "dirichlet", "mlp",
     "the prior 'logistic-normal' is over real vectors and the guide 'dirichlet' over the simplex"),
    ("dirichlet", "dirichlet", {"name": "topic"},
     ("the prior 'dirichlet' is over the simplex and the network 'topic' decodes z as real vectors: "
      "set model.network.latent = \"simplex\"")),
    ("logistic-normal", "diagonal-gaussian", {"name": "topic", "latent": "simplex"},
     "network 'topic' decodes z as the simplex: set model.network.latent = \"softmax\""),
    ("standard-normal", "diagonal-gaussian", {"name": "topic", "latent": "simplex"},
     "the prior 'standard-normal' is over real vectors and the network"),
])
def test_a_prior_of_another_latent_space_than_the_guide_or_the_decoder_is_refused_with_the_fix(prior, guide, network,
                                                                                                refused):
    with pytest.raises(ConfigError, match=refused):
        VAE(data_shape=(12,), latent_dim=3, prior=prior, guide=guide, network=network, likelihood="gaussian")


def test_the_pairs_of_one_latent_space_build():
    for prior, guide, latent in [("logistic-normal", "diagonal-gaussian", "softmax"), ("standard-normal", "iaf", "softmax"),
                                 ("dirichlet", "dirichlet", "simplex")]:
        VAE(data_shape=(12,), latent_dim=3, prior=prior, guide=guide, likelihood="gaussian",
            network={"name": "topic", "latent": latent})
    VAE(data_shape=(12,), latent_dim=3, prior="dirichlet", guide="dirichlet", likelihood="gaussian")  # an mlp reads any z


# ---------------------------------------------------------------------------------------------
# scores


def test_top_words_ranks_by_weight_and_breaks_ties_by_index():
    weights = torch.tensor([[0.1, 0.5, 0.5, -1.0, 0.5],
                            [3.0, 2.0, 1.0, 0.0, -1.0]])
    assert top_words(weights, 3).tolist() == [[1, 2, 4], [0, 1, 2]]
    assert top_words(weights.numpy(), 5).tolist() == [[1, 2, 4, 0, 3], [0, 1, 2, 3, 4]]
    assert topic_words_table(weights, ["a", "b", "c", "d", "e"], 2) == ["0: b c", "1: a b"]
    with pytest.raises(ConfigError, match="n must be in"):
        top_words(weights, 6)
    with pytest.raises(ConfigError, match="vocabulary has 4 words"):
        topic_words_table(weights, ["a", "b", "c", "d"], 2)


def test_coherence_is_the_npmi_of_each_topic_s_top_words_over_the_reference_documents():
    """Four documents. Words 0 and 1 are in documents {0, 1} both: NPMI = log(1/2 / (1/2 1/2)) / -log(1/2) = 1.
    Word 2 in {0, 1}, word 3 in {1, 2, 3}: p = 1/2, 3/4, together 1/4: log((1/4) / (3/8)) / -log(1/4)
    = log(2/3) / log 4. Word 4 in {2, 3} never meets word 0: -1 (0 with never_together = 0)."""
    reference = np.array([[1, 2, 1, 0, 0],
                          [1, 1, 3, 1, 0],
                          [0, 0, 0, 1, 2],
                          [0, 0, 0, 2, 1]])
    weights = torch.zeros(3, 5)
    weights[0, [0, 1]] = torch.tensor([2.0, 1.0])
    weights[1, [2, 3]] = torch.tensor([2.0, 1.0])
    weights[2, [0, 4]] = torch.tensor([2.0, 1.0])
    result = coherence(weights, reference, n=2)
    expected = [1.0, math.log(2 / 3) / math.log(4), -1.0]
    assert result["per_topic"] == pytest.approx(expected)
    assert result["npmi"] == pytest.approx(sum(expected) / 3)
    assert result["top_words"] == [[0, 1], [2, 3], [0, 4]] and result["documents"] == 4
    assert coherence(weights, sp.csr_matrix(reference), n=2, never_together=0.0)["per_topic"][2] == 0.0


def test_perplexity_of_the_unigram_model_is_exp_of_its_entropy():
    """Training words (3, 1, 1) over V = 3, add-one smoothed: p = (4, 2, 2) / 8 = (1/2, 1/4, 1/4). Test
    documents (2, 0, 1) and (0, 1, 0) hold the words in exactly those proportions, so the perplexity
    exp(-sum_i n_i log p_i / N) = exp(H(p)) = exp(1.5 log 2) = 2^1.5. log p(x_d) includes the
    multinomial coefficient (log 3 for the first document, 0 for the second), which perplexity removes."""
    train = np.array([[2, 1, 0], [1, 0, 1]])
    test = np.array([[2, 0, 1], [0, 1, 0]])
    log_px = unigram_log_probability(train, test)
    p = np.array([0.5, 0.25, 0.25])
    expected = [math.log(3) + 2 * math.log(p[0]) + math.log(p[2]), math.log(p[1])]
    np.testing.assert_allclose(log_px.numpy(), expected, rtol=1e-12)
    assert perplexity(log_px, test) == pytest.approx(2**1.5, rel=1e-12)
    # sparse and torch inputs give the same numbers
    sparse = unigram_log_probability(sp.csr_matrix(train), sp.csr_matrix(test))
    np.testing.assert_allclose(sparse.numpy(), expected, rtol=1e-12)
    assert perplexity(log_px, sp.csr_matrix(test)) == pytest.approx(2**1.5, rel=1e-12)
    assert perplexity(log_px.float(), torch.tensor(test)) == pytest.approx(2**1.5, rel=1e-6)
    # a model giving every word 1/V scores V
    uniform = torch.tensor([math.log(3) + 3 * math.log(1 / 3), math.log(1 / 3)], dtype=torch.float64)
    assert perplexity(uniform, test) == pytest.approx(3.0, rel=1e-12)


# ---------------------------------------------------------------------------------------------
# a tiny topic model


def planted_corpus(documents: int = 600, words: int = 40, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """K = 3 planted topics over V = 12 words, topic k uniform over words 4k..4k+3; each document's
    proportions theta ~ Dir(0.3 1_3), then 40 words ~ Mult(40, theta beta). Returns (counts, beta)."""
    torch.manual_seed(seed)  # (torch's Dirichlet draws from the global generator)
    g = torch.Generator().manual_seed(seed)
    beta = torch.zeros(3, 12)
    for k in range(3):
        beta[k, 4 * k:4 * k + 4] = 0.25
    theta = torch.distributions.Dirichlet(torch.full((3,), 0.3)).sample((documents,))
    probs = theta @ beta
    counts = torch.stack([torch.bincount(torch.multinomial(row, words, replacement=True, generator=g), minlength=12)
                          for row in probs]).float()
    return counts, beta


def train_topic_vae(vae, counts: torch.Tensor, steps: int, lr: float, batch: int = 100) -> None:
    optimizer = torch.optim.Adam(vae.parameters(), lr=lr)
    objective = OBJECTIVES.build("elbo-analytic-kl")
    g = torch.Generator().manual_seed(0)
    order = torch.randperm(counts.shape[0], generator=g)
    for step in range(steps):
        i = (step * batch) % counts.shape[0]
        if i == 0:
            order = torch.randperm(counts.shape[0], generator=g)  # shuffled every epoch
        svi_step(vae, objective, optimizer, counts[order[i:i + batch]])


@pytest.mark.parametrize("prior,guide,latent", [("logistic-normal", "diagonal-gaussian", "softmax"),
                                                ("dirichlet", "dirichlet", "simplex")])
def test_a_tiny_topic_vae_finds_the_three_planted_topics(prior, guide, latent, word_counts):
    """Criterion: the four top words of each learned topic (``top_words`` of ``decoder.topic_words()``)
    are one planted topic's four words, and the three learned topics are the three planted ones."""
    torch.manual_seed(0)
    pyro.set_rng_seed(0)
    counts, _ = planted_corpus()
    vae = VAE(data_shape=(12,), latent_dim=3, prior=prior, guide=guide, likelihood=word_counts,
              network={"name": "topic", "hidden": [32], "latent": latent})
    train_topic_vae(vae, counts, steps=200, lr=1e-2)
    found = [frozenset(row) for row in top_words(vae.decoder.topic_words(), 4).tolist()]
    planted = {frozenset(range(4 * k, 4 * k + 4)) for k in range(3)}
    assert set(found) == planted, found


def test_the_prodlda_example_config_trains_and_evaluates_a_run(tmp_path, word_counts):
    """examples/configs/prodlda.toml as written, but for its likelihood (the test-local multinomial
    here), its data (the planted corpus) and length (2 epochs): every other key is valid, the run
    trains, and its test set is scored (importance-sampled log p(x), the decoder in evaluation mode)."""
    from pathlib import Path

    from pyro_vae import Config, Trainer, load_run
    from pyro_vae.data import DataSplits
    from pyro_vae.evaluation import EvaluationSettings, evaluate

    raw = read_toml(Path(__file__).resolve().parents[1] / "examples" / "configs" / "prodlda.toml")
    assert raw["model"]["likelihood"] == "multinomial" and raw["model"]["latent_dim"] == 50
    raw["model"]["likelihood"] = word_counts
    raw["data"] = {"name": "synthetic"}  # the splits are given below
    raw["train"].update(epochs=2, batch_size=100)
    raw["eval"] = {"samples": 5, "train_subset": 50}
    counts, _ = planted_corpus(documents=300)
    splits = DataSplits("planted topics", counts[:200], None, counts[200:], None)
    config = Config.from_dict(raw)
    Trainer(config, tmp_path / "run", splits=splits, progress=False, log=lambda s: None).fit()
    run = load_run(tmp_path / "run", splits=splits)
    result = evaluate(run.program, run.data.test, EvaluationSettings.of(config, 5))  # (the pictures left out)
    assert torch.isfinite(result.log_px).all() and result.log_px.mean() >= result.elbo.mean() - 1.0
    assert run.model.decoder.topic_words().shape == (50, 12)
