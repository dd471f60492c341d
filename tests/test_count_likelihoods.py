"""The count likelihoods (poisson, negative-binomial, zero-inflated-negative-binomial, multinomial):
log p(x|z) against SciPy's formulas, the observed library size mu = (sum_i x_i) softmax(f(z)), rows
of total 0, masses that sum to 1 where they can be enumerated, the data contract's refusals, the
dispersion table per group, the recorded library size, the shared suites, and theta recovered from
simulated NB counts."""

from __future__ import annotations

import itertools
import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from scipy import optimize, stats
from scipy.special import expit, softmax

from pyro_vae import Trainer, load_run
from pyro_vae.config import LIKELIHOODS, OBJECTIVES, Config
from pyro_vae.distributions import COUNT_RATE_FLOOR, NegativeBinomial
from pyro_vae.errors import ConfigError, DataError
from pyro_vae.likelihoods import THETA_FLOOR
from pyro_vae.training import svi_step

from conftest import tiny_vae
from suites import assert_same_step, assert_trains, example_splits, train_steps

COUNT_LIKELIHOODS = ["poisson", "negative-binomial", "zero-inflated-negative-binomial", "multinomial"]


def built(spec, shape) -> torch.nn.Module:
    return LIKELIHOODS.build(spec).setup(shape).double()


def counts_with_a_zero_row(shape, generator_seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(generator_seed)
    x = torch.poisson(torch.rand((4, *shape), generator=g, dtype=torch.float64) * 6, generator=g)
    x[2] = 0  # a row of total 0
    return x


def head_for(lik, rows: int, seed: int = 1) -> torch.Tensor:
    return torch.randn((rows, *lik.head_shape), generator=torch.Generator().manual_seed(seed), dtype=torch.float64)


def set_theta(lik, theta: np.ndarray) -> None:
    """The learned theta = exp(r) + 1e-6 set to ``theta``: r = log(theta - 1e-6) (in float64)."""
    y = np.asarray(theta, dtype=np.float64) - THETA_FLOOR
    with torch.no_grad():
        lik.log_dispersion.copy_(torch.as_tensor(np.log(y)))


def rates(lik, logits: np.ndarray, x: np.ndarray) -> np.ndarray:
    """mu per the library option: (sum_i x_i) softmax over all of the datapoint's features, or softplus;
    + 1e-8, except in a row of total 0, where mu = 0 (SciPy's Poisson and NB are then the point mass at 0)."""
    rows = logits.shape[0]
    if lik.library == "observed":
        total = x.reshape(rows, -1).sum(1).reshape((rows,) + (1,) * (x.ndim - 1))
        p = softmax(logits.reshape(rows, -1), axis=1).reshape(logits.shape)
        return np.where(total > 0, total * p + COUNT_RATE_FLOOR, 0.0)
    return np.logaddexp(logits, 0) + COUNT_RATE_FLOOR


def per_row(log_p: np.ndarray) -> np.ndarray:
    return log_p.reshape(log_p.shape[0], -1).sum(1)


# ---------------------------------------------------------------------------------------------
# log p(x|z) against SciPy, the observed library size and rows of total 0


@pytest.mark.parametrize("shape", [(5,), (2, 2, 3)], ids=["vector", "image"])
@pytest.mark.parametrize("library", ["observed", "none"])
def test_poisson_log_prob_is_scipys_with_the_rates_of_the_library_option(library, shape):
    lik = built({"name": "poisson", "library": library}, shape)
    x, head = counts_with_a_zero_row(shape), head_for(lik, 4)
    mu = rates(lik, head[:, 0].numpy(), x.numpy())
    expected = per_row(stats.poisson.logpmf(x.numpy(), mu))
    got = lik(head).log_prob(x).detach()
    np.testing.assert_allclose(got.numpy(), expected, rtol=1e-12, atol=1e-12)
    if library == "observed":
        assert got[2].item() == 0.0  # total 0: mu = 0, the point mass at 0


def test_poisson_at_the_observed_total_is_the_multinomial_plus_a_term_free_of_z():
    # a Poisson vector given its total n is Multinomial(n, p): log Pois(x; n p) = log Mult(x; n, p) + log Pois(n; n)
    lik, mult = built("poisson", (6,)), built("multinomial", (6,))
    x, head = counts_with_a_zero_row((6,)), head_for(lik, 4)
    n = x.sum(1).numpy()
    # the 1e-8 floor moves each feature's log p by at most 1e-8 (x = 0) or x 1e-8 / mu (x > 0)
    np.testing.assert_allclose(lik(head).log_prob(x).numpy(),
                               mult(head).log_prob(x).numpy() + stats.poisson.logpmf(n, n), atol=1e-6)


@pytest.mark.parametrize("shape", [(5,), (2, 2, 3)], ids=["vector", "image"])
@pytest.mark.parametrize("library", ["observed", "none"])
@pytest.mark.parametrize("dispersion", ["feature", "datapoint-feature"])
def test_negative_binomial_log_prob_is_scipys_nbinom(dispersion, library, shape):
    lik = built({"name": "negative-binomial", "library": library, "dispersion": dispersion}, shape)
    x, head = counts_with_a_zero_row(shape), head_for(lik, 4)
    if dispersion == "feature":
        theta = np.linspace(0.3, 40.0, math.prod(shape)).reshape(shape)
        set_theta(lik, theta)
    else:
        theta = np.logaddexp(head[:, 1].numpy(), 0) + THETA_FLOOR
        assert lik.params_per_pixel == 2
    mu = rates(lik, head[:, 0].numpy(), x.numpy())
    expected = per_row(stats.nbinom.logpmf(x.numpy(), n=theta, p=theta / (theta + mu)))
    got = lik(head).log_prob(x).detach()
    np.testing.assert_allclose(got.numpy(), expected, rtol=1e-10, atol=1e-10)
    if library == "observed":
        assert got[2].item() == 0.0


@pytest.mark.parametrize("library", ["observed", "none"])
@pytest.mark.parametrize("dispersion", ["feature", "datapoint-feature"])
def test_zero_inflated_negative_binomial_log_prob_is_the_mixture_written_from_its_definition(dispersion, library):
    lik = built({"name": "zero-inflated-negative-binomial", "library": library, "dispersion": dispersion}, (7,))
    x, head = counts_with_a_zero_row((7,)), head_for(lik, 4)
    assert lik.params_per_pixel == (3 if dispersion == "datapoint-feature" else 2)
    if dispersion == "feature":
        theta = np.linspace(0.5, 20.0, 7)
        set_theta(lik, theta)
    else:
        theta = np.logaddexp(head[:, 2].numpy(), 0) + THETA_FLOOR
    mu = rates(lik, head[:, 0].numpy(), x.numpy())
    pi = expit(head[:, 1].numpy())  # the head's second channel: the zero-inflation logits
    nb = stats.nbinom(n=theta, p=theta / (theta + mu))
    xs = x.numpy()
    # p(0) = pi + (1 - pi) NB(0);  p(x) = (1 - pi) NB(x) for x > 0
    log_p = np.where(xs == 0, np.log(pi + (1 - pi) * nb.pmf(0)), np.log1p(-pi) + nb.logpmf(xs))
    got = lik(head).log_prob(x).detach()
    np.testing.assert_allclose(got.numpy(), log_p.sum(1), rtol=1e-10, atol=1e-10)
    if library == "observed":
        assert got[2].item() == 0.0


@pytest.mark.parametrize("shape", [(5,), (2, 3)], ids=["vector", "image"])
def test_multinomial_log_prob_is_scipys_with_each_rows_own_total(shape):
    lik = built("multinomial", shape)
    x, head = counts_with_a_zero_row(shape), head_for(lik, 4)
    rows = x.reshape(4, -1).numpy()
    p = softmax(head[:, 0].reshape(4, -1).numpy(), axis=1)
    assert len(set(rows.sum(1))) > 2  # the rows' totals differ: each is its own n
    expected = [stats.multinomial.logpmf(r, n=r.sum(), p=q) if r.sum() else 0.0 for r, q in zip(rows, p)]
    got = lik(head).log_prob(x).detach()
    np.testing.assert_allclose(got.numpy(), expected, rtol=1e-12, atol=1e-12)
    assert got[2].item() == 0.0


def test_a_zero_row_scores_zero_with_finite_gradients_in_float32():
    for name in COUNT_LIKELIHOODS:
        lik = LIKELIHOODS.build(name).setup((4,))
        head = torch.full((2, *lik.head_shape), -30.0, requires_grad=True)  # rates far below the floor
        x = torch.tensor([[0.0, 0, 0, 0], [3, 0, 1, 0]])
        log_p = lik(head).log_prob(x)
        assert log_p[0].item() == 0.0 and torch.isfinite(log_p).all(), name
        log_p.sum().backward()
        assert torch.isfinite(head.grad).all(), name
        assert (head.grad[0] == 0).all(), name  # the zero row's score, 0, does not depend on z


# ---------------------------------------------------------------------------------------------
# masses that sum to 1, where the support can be enumerated


def test_the_multinomial_sums_to_one_over_every_composition_of_each_total():
    lik = built("multinomial", (3,))
    head = head_for(lik, 1)
    for n in (0, 1, 4):
        compositions = torch.tensor([c for c in itertools.product(range(n + 1), repeat=3) if sum(c) == n],
                                    dtype=torch.float64)
        assert len(compositions) == math.comb(n + 2, 2)
        assert lik(head).log_prob(compositions).exp().sum().item() == pytest.approx(1.0, abs=1e-13)


def _tail_bound(mu: np.ndarray, theta: np.ndarray | None, top: int) -> float:
    """sum over features of P(x_i > top): past top each mass falls by at least a ratio q < 1 a step, so
    P(x > top) <= p(top) q / (1 - q). Poisson: p(x+1)/p(x) = mu/(x+1) <= mu/(top+1). NB: (x+theta)/(x+1)
    mu/(theta+mu) <= max((top+theta)/(top+1), 1) mu/(theta+mu). The ZINB's tail is (1 - pi) times the NB's."""
    if theta is None:
        q, at_top = mu / (top + 1), stats.poisson.pmf(top, mu)
    else:
        q = np.maximum((top + theta) / (top + 1), 1) * mu / (theta + mu)
        at_top = stats.nbinom.pmf(top, n=theta, p=theta / (theta + mu))
    assert (q < 1).all()
    return float((at_top * q / (1 - q)).sum())


@pytest.mark.parametrize("name", ["poisson", "negative-binomial", "zero-inflated-negative-binomial"])
def test_with_library_none_the_mass_over_every_count_up_to_a_bound_is_one_less_a_provably_negligible_tail(name):
    top = 60
    lik = built({"name": name, "library": "none"}, (2,))
    head = head_for(lik, 1) * 0.5  # rates softplus(.) in about (0.4, 1.3)
    theta = None
    if name != "poisson":
        theta = np.array([2.0, 5.0])
        set_theta(lik, theta)
    grid = torch.tensor(list(itertools.product(range(top + 1), repeat=2)), dtype=torch.float64)
    total = lik(head).log_prob(grid).exp().sum().item()
    mu = np.logaddexp(head[0, 0].numpy(), 0) + COUNT_RATE_FLOOR
    tail = _tail_bound(mu, theta, top)
    assert tail < 1e-15
    assert total == pytest.approx(1.0, abs=1e-13 + tail)


# ---------------------------------------------------------------------------------------------
# the data contract


@pytest.mark.parametrize("name", COUNT_LIKELIHOODS)
def test_counts_are_taken_and_anything_else_is_refused_with_the_fix_named(name):
    vae = tiny_vae(data_shape=(4,), likelihood=name)
    lik = vae.likelihood
    assert lik.discrete and lik.placeholder == 0.0
    good = torch.tensor([[0.0, 3, 1, 12], [5, 0, 0, 2]])
    lik.check_data(good, "train")
    assert lik.observable(good)
    for bad, phrase in ((torch.tensor([[0.0, -2, 1, 1]]), "negative values"),
                        (torch.tensor([[0.0, 0.5, 1.25, 3]]), "looks normalized or log-transformed"),
                        (torch.tensor([[0.0, float("nan"), 1, 1]]), "NaN or infinite"),
                        (torch.tensor([[0.0, float("inf"), 1, 1]]), "NaN or infinite")):
        with pytest.raises(DataError, match=phrase):
            lik.check_data(bad, "train")
        assert not lik.observable(bad)
        with pytest.raises(DataError, match=phrase):  # the Python boundary of the model
            vae.model(bad)
    with pytest.raises(DataError, match=r'layers\["counts"\] with data.layer = "counts"'):
        lik.check_data(torch.log1p(good), "train")


@pytest.mark.parametrize("name", COUNT_LIKELIHOODS)
def test_the_examples_the_shared_suites_train_on_are_counts(name, grey_splits):
    counts = example_splits(name, grey_splits)
    LIKELIHOODS.build(name).check_data(counts.train, "train")
    assert counts.train.max() > 10 and counts.train.shape == grey_splits.train.shape


# ---------------------------------------------------------------------------------------------
# dispersion per (group, feature)


def test_a_dispersion_per_group_needs_groups_and_a_program_passing_them():
    with pytest.raises(ConfigError, match="set groups"):
        LIKELIHOODS.build({"name": "negative-binomial", "dispersion": "feature-label"})
    with pytest.raises(ConfigError, match="set groups"):
        LIKELIHOODS.build({"name": "negative-binomial", "dispersion": "feature-label", "groups": 1})
    with pytest.raises(ConfigError, match="is for dispersion"):
        LIKELIHOODS.build({"name": "zero-inflated-negative-binomial", "groups": 3})
    vae = tiny_vae(data_shape=(4,), likelihood={"name": "negative-binomial", "dispersion": "feature-label", "groups": 3})
    assert vae.likelihood.log_dispersion.shape == (3, 4)
    with pytest.raises(ConfigError, match="needs a program passing labels"):
        vae.model(torch.ones(2, 4))  # the stock VAE passes no group
    head = head_for(vae.likelihood, 2).float()
    with pytest.raises(ConfigError, match="integer tensor"):
        vae.likelihood(head, group=torch.tensor([0.0, 1.0]))
    with pytest.raises(ConfigError, match=r"in 0\.\.2"):
        vae.likelihood(head, group=torch.tensor([0, 3]))


@pytest.mark.parametrize("name", ["negative-binomial", "zero-inflated-negative-binomial"])
def test_each_datapoint_reads_its_own_groups_row_of_the_dispersion_table(name):
    lik = built({"name": name, "dispersion": "feature-label", "groups": 3, "init_dispersion": 2.0}, (5,))
    assert torch.allclose(lik.log_dispersion.exp() + THETA_FLOOR, torch.tensor(2.0, dtype=torch.float64))
    table = np.array([[0.5] * 5, [3.0] * 5, np.linspace(1, 50, 5)])
    set_theta(lik, table)
    x, head = counts_with_a_zero_row((5,)), head_for(lik, 4)
    group = torch.tensor([2, 0, 1, 2])
    got = lik(head, group=group).log_prob(x)
    one = built({"name": name, "init_dispersion": 2.0}, (5,))  # the per-feature likelihood, given each row's theta
    for i, g in enumerate(group.tolist()):
        set_theta(one, table[g])
        assert got[i].item() == pytest.approx(one(head[i:i + 1]).log_prob(x[i:i + 1]).item(), abs=1e-12)
    assert not torch.allclose(got, lik(head, group=torch.zeros(4, dtype=torch.long)).log_prob(x))


# ---------------------------------------------------------------------------------------------
# the library size draws and pictures use


@pytest.mark.parametrize("name", COUNT_LIKELIHOODS)
def test_fit_to_data_records_the_median_total_at_which_mean_and_sample_draw(name):
    lik = built(name, (4,))
    head = head_for(lik, 2)
    with pytest.raises(ConfigError, match=r"fit_to_data\(x_train\)"):
        lik.mean(head)
    with pytest.raises(ConfigError, match=r"fit_to_data\(x_train\)"):
        lik(head).sample()
    lik.fit_to_data(torch.tensor([[1.0, 0, 2, 0], [4, 3, 2, 1], [0, 0, 0, 0], [2, 2, 1, 2], [5, 5, 5, 5]]))
    assert lik.library_size.item() == 7.0  # totals 3, 10, 0, 7, 20
    lik.fit_to_data(torch.tensor([[1.0, 0, 2, 0], [4, 3, 2, 1], [0, 0, 0, 0], [2, 2, 1, 2]]))
    assert lik.library_size.item() == 3.0  # totals 3, 10, 0, 7: the lower median, an observed total
    p = torch.softmax(head[:, 0], -1)
    expected = 3.0 * p + (0 if name == "multinomial" else COUNT_RATE_FLOOR)
    if name == "zero-inflated-negative-binomial":
        expected = torch.sigmoid(-head[:, 1]) * expected  # E[x] = (1 - pi) mu
    torch.testing.assert_close(lik.mean(head), expected, rtol=1e-12, atol=1e-14)
    draws = lik(head).sample((20000,))
    assert draws.shape == (20000, 2, 4) and (draws == draws.round()).all() and (draws >= 0).all()
    if name == "multinomial":
        assert (draws.sum(-1) == 3).all()
    error = (draws.mean(0) - expected).abs() / (lik(head).variance / 20000).sqrt()
    assert error.max() < 5  # within 5 standard errors


def test_with_library_none_the_mean_is_the_rates_whatever_the_library_size():
    lik = built({"name": "negative-binomial", "library": "none"}, (4,))
    head = head_for(lik, 2)
    torch.testing.assert_close(lik.mean(head), F.softplus(head[:, 0]) + COUNT_RATE_FLOOR)


def test_the_trainer_records_the_library_size_and_the_checkpoint_keeps_it(grey_splits, tmp_path):
    counts = example_splits("negative-binomial", grey_splits)
    config = Config.from_dict({
        "data": {"name": "synthetic", "n_train": 128, "n_test": 32, "side": 6},
        "model": {"latent_dim": 2, "network": {"name": "mlp", "hidden": [16]}, "likelihood": "negative-binomial"},
        "train": {"epochs": 1, "batch_size": 32}, "eval": {"samples": 5, "train_subset": 16}})
    trainer = Trainer(config, tmp_path / "run", splits=counts, progress=False, log=lambda s: None).fit()
    recorded = trainer.program.vae.likelihood.library_size
    assert recorded.item() == trainer.data.train.flatten(1).sum(1).median().item() > 0
    assert load_run(tmp_path / "run", splits=counts).model.likelihood.library_size.item() == recorded.item()


# ---------------------------------------------------------------------------------------------
# the shared suites, over the options the parametrized suites (defaults only) do not reach

VARIANTS = [
    {"name": "poisson", "library": "none"},
    {"name": "negative-binomial", "dispersion": "datapoint-feature"},
    {"name": "negative-binomial", "library": "none"},
    {"name": "zero-inflated-negative-binomial", "library": "none", "dispersion": "datapoint-feature"},
    {"name": "multinomial"},
]


@pytest.mark.parametrize("spec", VARIANTS, ids=lambda s: "-".join(map(str, s.values())))
def test_each_variant_trains_and_its_direct_terms_equal_the_traced_programs(spec, grey_splits):
    counts = example_splits(spec, grey_splits)
    assert_trains(train_steps(tiny_vae(likelihood=spec), OBJECTIVES.build("elbo"), counts, steps=40))
    for objective in ("elbo", {"name": "iwae", "num_particles": 3}):
        assert_same_step(tiny_vae(likelihood=spec), OBJECTIVES.build(objective), counts.train[:16])


# ---------------------------------------------------------------------------------------------
# recovery: theta from counts simulated from a known NB


def _nb_theta_mle(x: np.ndarray) -> float:
    """The maximum-likelihood theta of NB counts x (mu at its ML value, the mean of x), by SciPy."""
    m = x.mean()

    def minus_log_likelihood(log_theta: float) -> float:
        theta = math.exp(log_theta)
        return -stats.nbinom.logpmf(x, n=theta, p=theta / (theta + m)).sum()

    return math.exp(optimize.minimize_scalar(minus_log_likelihood, bounds=(-5, 8), method="bounded").x)


def test_a_tiny_vae_recovers_the_inverse_dispersion_of_simulated_nb_counts():
    """x_ij ~ NB(mu_j, theta = 4), mu = 2, 7.4, ..., 40 (8 features), 1000 datapoints, no latent
    structure; a tiny VAE (latent 2, MLP [16]) with negative-binomial (library "none", dispersion
    "feature"), 800 full-batch ELBO steps. Every feature's theta comes out within 1.5x of the truth and
    within 1.2x of the maximum-likelihood theta of the same draws (seen, seeds 0-4: 0.87x to 1.22x of
    the truth; 0.87x to 1.0x of the ML estimate, the lowest at the largest means, where the latent takes
    up a little of the Gamma mixing). It starts overdispersed (theta = 1, below the truth): started
    near Poisson (theta = 10) the latent takes up more of that mixing first, and theta comes out up
    to 1.8x too large after as many steps."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # tiny tensors: one thread is several times faster than two
    try:
        mu, theta = torch.linspace(2, 40, 8), 4.0
        x = NegativeBinomial(mu, torch.tensor(theta)).sample((1000,))
        vae = tiny_vae(data_shape=(8,), likelihood={"name": "negative-binomial", "library": "none",
                                                    "dispersion": "feature", "init_dispersion": 1.0})
        optimizer = torch.optim.Adam(vae.parameters(), lr=0.1)
        elbo = OBJECTIVES.build("elbo")
        for _ in range(800):
            svi_step(vae, elbo, optimizer, x)
    finally:
        torch.set_num_threads(threads)
    recovered = (vae.likelihood.log_dispersion.detach().exp() + THETA_FLOOR).double()
    assert ((recovered / theta < 1.5) & (recovered / theta > 1 / 1.5)).all(), recovered
    mle = torch.tensor([_nb_theta_mle(x[:, j].numpy()) for j in range(8)], dtype=torch.float64)
    assert ((recovered / mle < 1.2) & (recovered / mle > 1 / 1.2)).all(), (recovered, mle)
    means = vae.likelihood.mean(vae.decoder(torch.zeros(1, 2))).squeeze(0).detach()
    assert ((means / mu - 1).abs() < 0.15).all(), means  # the means too, from the decoder at z = 0


@pytest.mark.parametrize("name", ["negative-binomial", "zero-inflated-negative-binomial"])
def test_a_checkpoint_of_the_softplus_dispersion_loads_with_the_same_theta(name):
    """Runs written before the log-dispersion stored r with theta = softplus(r) + 1e-6: loading one gives
    log_dispersion = log softplus(r), the same theta to rounding."""
    lik = built({"name": name}, (5,))
    raw = torch.tensor([-3.0, -0.5, 0.0, 2.0, 10.0], dtype=lik.log_dispersion.dtype)
    head = torch.nn.Module()
    head.likelihood = lik
    old = {f"likelihood.{k}": v for k, v in lik.state_dict().items() if k != "log_dispersion"}
    head.load_state_dict({**old, "likelihood.raw_dispersion": raw})
    assert torch.allclose(lik.theta([], None), F.softplus(raw) + THETA_FLOOR, rtol=1e-12, atol=0)
    assert "likelihood.log_dispersion" in head.state_dict() and "likelihood.raw_dispersion" not in head.state_dict()


def test_the_log_dispersion_travels_by_factors_where_softplus_crawled():
    """Adam moves a parameter by about lr a step whatever its gradient's size: under theta = exp(r) + 1e-6,
    100 steps of lr 0.05 from theta 10 towards the data's theta 0.5 reach it (a factor 20: e^3 in r);
    the softplus parametrization (linear above 1) would have moved theta by at most 100 x 0.05 = 5."""
    torch.manual_seed(0)
    mu, theta = torch.full((4,), 20.0), 0.5
    x = NegativeBinomial(mu, torch.tensor(theta)).sample((2000,)).double()
    lik = built({"name": "negative-binomial", "library": "none", "init_dispersion": 10.0}, (4,))
    # softplus(head) = mu: the rates as given, only theta learned
    head = torch.full((len(x), *lik.head_shape), math.log(math.expm1(20.0)), dtype=torch.float64)
    optimizer = torch.optim.Adam(lik.parameters(), lr=0.05)
    for _ in range(100):
        optimizer.zero_grad()
        (-lik(head).log_prob(x).mean()).backward()
        optimizer.step()
    reached = lik.theta([], None).detach()
    assert ((reached / theta > 1 / 1.3) & (reached / theta < 1.3)).all(), reached
