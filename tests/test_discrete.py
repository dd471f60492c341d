"""Discrete latents: one-hot groups and binary units, and the estimators made for them (enumeration,
score functions with baselines, Gumbel-softmax relaxations), checked against sums over every state."""

from __future__ import annotations

import itertools
import math

import pyro
import pyro.distributions as pdist
import pytest
import torch
from torch import nn
from torch.distributions import kl_divergence

from pyro_vae import Config, Trainer, load_run
from pyro_vae.compare import parse_objectives
from pyro_vae.config import OBJECTIVES
from pyro_vae.distributions import BernoulliUnits, OneHotGroups, enumerate_states, relaxed_sample, state_count
from pyro_vae.errors import ConfigError, ProgramError
from pyro_vae.evaluation import evaluate
from pyro_vae.exact import enumeration_evidence
from pyro_vae.metrics import code_usage, exact_gradient, gradient_statistics
from pyro_vae.programs import as_program
from pyro_vae.runs import CHECKPOINT, load_checkpoint

from conftest import TracedVAE, tiny_config, tiny_vae

CATEGORICAL = {"prior": {"name": "categorical", "classes": 3}, "guide": {"name": "categorical", "classes": 3}}
BERNOULLI = {"prior": {"name": "bernoulli", "learned": True}, "guide": {"name": "bernoulli"}}


def discrete_vae(kind=CATEGORICAL, latent_dim=6, cls=None, **kwargs):
    if cls is None:
        return tiny_vae(latent_dim=latent_dim, **kind, **kwargs)
    return cls(data_shape=(1, 6, 6), latent_dim=latent_dim, network={"name": "mlp", "hidden": [16]}, **kind, **kwargs)


def binary_batch(n=5):
    return torch.bernoulli(torch.full((n, 1, 6, 6), 0.3))


# -- the distributions ------------------------------------------------------------------------


def test_one_hot_groups_states_probabilities_and_kl():
    q = OneHotGroups(torch.randn(4, 2, 3))
    p = OneHotGroups(torch.randn(2, 3))
    states = q.enumerate_states()
    assert states.shape == (9, 6) and state_count(q) == 9
    assert len({tuple(s.tolist()) for s in states}) == 9  # every joint state once
    assert torch.equal(states.view(9, 2, 3).sum(-1), torch.ones(9, 2))  # one class per group
    log_q = q.log_prob(states[:, None])  # (9, 4)
    assert torch.allclose(log_q.logsumexp(0), torch.zeros(4), atol=1e-6)
    by_hand = (log_q.exp() * (log_q - p.log_prob(states[:, None]))).sum(0)
    assert torch.allclose(kl_divergence(q, p), by_hand, atol=1e-5)
    assert torch.allclose(q.entropy(), -(log_q.exp() * log_q).sum(0), atol=1e-5)
    draws = q.sample((20000,))
    assert torch.allclose(draws.mean(0), q.mean, atol=0.02)


def test_bernoulli_units_states_probabilities_and_kl():
    q, p = BernoulliUnits(torch.randn(4, 3)), BernoulliUnits(torch.randn(3))
    states = q.enumerate_states()
    assert states.shape == (8, 3) and state_count(q) == 8
    assert {tuple(s.tolist()) for s in states} == set(itertools.product([0.0, 1.0], repeat=3))
    log_q = q.log_prob(states[:, None])
    assert torch.allclose(log_q.logsumexp(0), torch.zeros(4), atol=1e-6)
    by_hand = (log_q.exp() * (log_q - p.log_prob(states[:, None]))).sum(0)
    assert torch.allclose(kl_divergence(q, p), by_hand, atol=1e-5)


def test_pyro_families_enumerate_like_ours():
    """A user's guide with Pyro's OneHotCategorical or Bernoulli(...).to_event(1) lists the same states."""
    logits = torch.randn(4, 5)
    assert torch.equal(enumerate_states(pdist.OneHotCategorical(logits=logits)), torch.eye(5))
    bern = pdist.Bernoulli(logits=torch.randn(4, 3)).to_event(1)
    assert torch.equal(enumerate_states(bern), BernoulliUnits(torch.zeros(3)).enumerate_states())


def test_relaxed_draws():
    q = OneHotGroups(torch.randn(7, 2, 4))
    y = relaxed_sample(q, torch.Size([3]), temperature=0.5)
    assert y.shape == (3, 7, 8) and torch.allclose(y.view(3, 7, 2, 4).sum(-1), torch.ones(3, 7, 2))
    hard = relaxed_sample(q, torch.Size([3]), temperature=0.5, hard=True)
    assert q.support.check(hard).all()  # the straight-through forward value is a one-hot state
    # as the temperature falls the relaxation concentrates on the vertices, distributed as q
    cold = relaxed_sample(q, torch.Size([20000]), temperature=0.01)
    assert torch.allclose(cold.mean(0), q.mean, atol=0.02)
    b = BernoulliUnits(torch.randn(5))
    units = relaxed_sample(b, torch.Size([20000]), temperature=0.01)
    assert torch.allclose(units.mean(0), b.probs, atol=0.02)
    # y is inside (0.01, 0.99) only when |logit + logistic noise| < tau log 99 = 0.046: at most
    # 0.092 x the logistic density's peak 1/4 = 2.3% of draws
    assert ((units < 0.01) | (units > 0.99)).float().mean() > 0.97


# -- exact values ---------------------------------------------------------------------------


@pytest.mark.parametrize("kind", [CATEGORICAL, BERNOULLI], ids=["categorical", "bernoulli"])
def test_enumeration_evidence_is_the_sum_over_states(kind):
    vae = discrete_vae(kind, latent_dim=6 if kind is CATEGORICAL else 4)
    x = binary_batch()
    ev = enumeration_evidence(as_program(vae), x)
    q, prior = vae.q_z_given_x(x), vae.p_z()
    log_joint, log_q = [], []
    for z in enumerate_states(q):  # one state at a time, by hand
        zb = z.expand(x.shape[0], -1)
        log_joint.append(vae.p_x_given_z(zb).log_prob(x) + prior.log_prob(zb))
        log_q.append(q.log_prob(zb))
    log_joint, log_q = torch.stack(log_joint).double(), torch.stack(log_q).double()
    assert torch.allclose(ev.log_px, log_joint.logsumexp(0), atol=1e-4)
    assert torch.allclose(ev.elbo, (log_q.exp() * (log_joint - log_q)).sum(0), atol=1e-4)
    assert (ev.kl_q_posterior > -1e-6).all() and torch.allclose(ev.elbo + ev.kl_q_posterior, ev.log_px)


@pytest.mark.parametrize("cls", [None, TracedVAE], ids=["direct", "traced"])
def test_enumerated_elbo_is_the_hand_written_sum(cls):
    vae = discrete_vae(cls=cls)
    x = binary_batch()
    objective = OBJECTIVES.build({"name": "enumerate"})
    _, loss = objective.step(as_program(vae).source, x)
    exact = enumeration_evidence(as_program(vae), x)
    assert loss.item() == pytest.approx(-exact.elbo.sum().item(), rel=1e-5)
    # the same through raw pyro.infer.SVI (the objective is a pyro.infer.ELBO)
    assert objective.loss(vae.model, vae.guide, x) == pytest.approx(loss.item(), rel=1e-5)


def test_enumerate_agrees_with_pyro_trace_enum_elbo():
    """Pyro's TraceEnum_ELBO, the guide's site enumerated in parallel, computes the same exact ELBO."""
    torch.manual_seed(1)
    decoder, encoder = nn.Linear(4, 9), nn.Linear(9, 4)

    def model(x):
        pyro.module("decoder", decoder)
        with pyro.plate("data", x.shape[0]):
            z = pyro.sample("z", pdist.OneHotCategorical(logits=torch.zeros(x.shape[0], 4)))
            pyro.sample("x", pdist.Bernoulli(logits=decoder(z)).to_event(1), obs=x)

    @pyro.infer.config_enumerate
    def guide(x):
        pyro.module("encoder", encoder)
        with pyro.plate("data", x.shape[0]):
            pyro.sample("z", pdist.OneHotCategorical(logits=encoder(x)))

    x = torch.bernoulli(torch.full((6, 9), 0.4))
    ours = OBJECTIVES.build({"name": "enumerate"}).loss(model, guide, x)
    pyros = pyro.infer.TraceEnum_ELBO(max_plate_nesting=1).loss(model, guide, x)
    assert ours == pytest.approx(pyros, rel=1e-5)


# -- estimators against the exact gradient --------------------------------------------------


@pytest.mark.parametrize("baseline,particles", [("none", 1), ("average", 1), ("leave-one-out", 3)])
def test_score_function_gradient_is_unbiased(baseline, particles):
    """The mean of many score-function gradients is the exactly enumerated gradient, within its
    standard error (a chi-square check over the coordinates would be stricter; a norm bound of 4
    standard errors fails for a bias of a few percent of the gradient)."""
    torch.manual_seed(0)
    program = as_program(discrete_vae())
    x = binary_batch(4)
    truth = exact_gradient(program, x)
    spec = {"name": "score-function", "baseline": baseline, "num_particles": particles}
    stats = gradient_statistics(program, OBJECTIVES.build(spec), x, draws=400, reference=truth)
    for group, s in stats.items():
        assert s["bias"] < 4 * s["bias_stderr"], (group, s)


def test_baselines_lower_the_variance():
    program = as_program(discrete_vae())
    x = binary_batch(4)
    variance = {b: gradient_statistics(program, OBJECTIVES.build({"name": "score-function", "baseline": b,
                                                                  "num_particles": 3}), x, draws=200)
                ["encoder"]["variance"] for b in ("none", "average", "leave-one-out")}
    assert variance["average"] < variance["none"] and variance["leave-one-out"] < variance["none"]


def test_measuring_leaves_the_running_baseline_alone():
    program = as_program(discrete_vae())
    objective = OBJECTIVES.build({"name": "score-function", "baseline": "average"})
    objective.step(program.source, binary_batch())
    before = objective.state_dict()
    gradient_statistics(program, objective, binary_batch(), draws=5)
    assert objective.state_dict() == before and math.isfinite(before["average"])


def test_relaxations_are_biased_and_the_bias_is_measured():
    """Gumbel-softmax's gradient is not the ELBO's: at a warm temperature its mean is many
    standard errors from the exact gradient (what compare reports)."""
    program = as_program(discrete_vae())
    x = binary_batch(4)
    truth = exact_gradient(program, x)
    stats = gradient_statistics(program, OBJECTIVES.build({"name": "gumbel-softmax", "temperature": 2.0}), x,
                                draws=200, reference=truth)
    assert stats["encoder"]["bias"] > 4 * stats["encoder"]["bias_stderr"]


def test_temperature_anneals_geometrically():
    objective = OBJECTIVES.build({"name": "gumbel-softmax", "temperature": 1.0, "final_temperature": 0.25,
                                  "anneal_epochs": 2})
    for epoch, expected in [(0, 1.0), (1, 0.5), (2, 0.25), (5, 0.25)]:
        objective.at_epoch(epoch)
        assert objective.current_temperature == pytest.approx(expected)


def test_straight_through_loss_is_a_monte_carlo_elbo():
    """The straight-through forward pass decodes a one-hot draw: its loss is log p(x|z) at that
    draw minus the closed-form KL, a draw of the ELBO (mean over many: the exact ELBO)."""
    program = as_program(discrete_vae())
    x = binary_batch(3)
    objective = OBJECTIVES.build({"name": "straight-through-gumbel", "num_particles": 4000})
    with torch.no_grad():
        _, loss = objective.step(program.source, x)
    exact = enumeration_evidence(program, x)
    assert loss.item() == pytest.approx(-exact.elbo.sum().item(), rel=0.01)


# -- bad input --------------------------------------------------------------------------------


def test_refusals_name_the_fix():
    with pytest.raises(ConfigError, match="enumerate, score-function"):
        OBJECTIVES.build({"name": "elbo"}).check_guide("categorical")
    with pytest.raises(ConfigError, match="one latent space"):
        tiny_vae(latent_dim=6, prior={"name": "categorical", "classes": 3})  # a Gaussian guide
    with pytest.raises(ConfigError, match="multiple of"):
        tiny_vae(latent_dim=5, **CATEGORICAL)
    with pytest.raises(ConfigError, match="temperature must be > 0"):
        OBJECTIVES.build({"name": "gumbel-softmax", "temperature": 0.0})
    with pytest.raises(ConfigError, match="annealing lowers"):
        OBJECTIVES.build({"name": "gumbel-softmax", "temperature": 0.5, "final_temperature": 1.0})
    with pytest.raises(ConfigError, match="leave-one-out baseline needs num_particles >= 2"):
        OBJECTIVES.build({"name": "score-function", "baseline": "leave-one-out"})
    with pytest.raises(ConfigError, match="baseline must be one of none, average, leave-one-out, neural"):
        OBJECTIVES.build({"name": "score-function", "baseline": "learned"})
    program = as_program(discrete_vae(latent_dim=9))  # 3 groups of 3: 27 states
    with pytest.raises(ProgramError, match="27 states, more than max_states = 8"):
        OBJECTIVES.build({"name": "enumerate", "max_states": 8}).step(program.source, binary_batch())
    for pathwise in ("elbo", "elbo-analytic-kl", "iwae", "stl"):  # a pathwise objective meets the draw
        with pytest.raises(ProgramError, match="not reparameterized.*enumerate, score-function"):
            OBJECTIVES.build(pathwise).step(as_program(discrete_vae(cls=TracedVAE)).source, binary_batch())
    gaussian = as_program(tiny_vae())
    with pytest.raises(ProgramError, match="one-hot groups or binary units"):
        OBJECTIVES.build({"name": "enumerate"}).step(gaussian.source, binary_batch())


def test_compare_objective_options():
    specs = parse_objectives("enumerate,score-function(baseline=none; decay=0.5):4,gumbel-softmax", 2)
    assert specs == [{"name": "enumerate"},
                     {"name": "score-function", "baseline": "none", "decay": 0.5, "num_particles": 4},
                     {"name": "gumbel-softmax", "num_particles": 2}]
    with pytest.raises(ConfigError, match="takes no number of samples"):
        parse_objectives("enumerate:4", 2)
    with pytest.raises(ConfigError, match="key=value"):
        parse_objectives("score-function(baseline)", 2)


# -- through the trainer ----------------------------------------------------------------------


def discrete_config(objective: dict, **train) -> Config:
    base = tiny_config().to_dict()
    base["data"] = {**base["data"], "binary": True}
    base["model"] = {**base["model"], "latent_dim": 6, **CATEGORICAL}
    base["train"] = {**base["train"], "objective": objective, **train}
    base["eval"] = {**base["eval"], "samples": 20}
    return Config.from_dict(base)


def test_a_run_trains_evaluates_exactly_and_resumes_its_baseline(tmp_path):
    config = discrete_config({"name": "score-function", "baseline": "average"}, epochs=1)
    Trainer(config, tmp_path, progress=False, log=lambda line: None).fit()
    state = load_checkpoint(tmp_path / CHECKPOINT)
    assert math.isfinite(state["objective"]["average"])
    resumed = Trainer(Config.from_dict({**config.to_dict(), "train": {**config.to_dict()["train"], "epochs": 2}}),
                      tmp_path, progress=False, log=lambda line: None)
    resumed._build()
    resumed._restore(state)
    assert resumed.objective.state_dict() == state["objective"]
    run = load_run(tmp_path)
    result = evaluate(run.program, run.data.prepared_test, samples=20, exact_points=1)  # closed form: every datapoint
    summary = result.summary()
    assert summary["exact"]["method"] == "enumeration of every latent state"
    assert summary["exact"]["datapoints"] == run.data.prepared_test.shape[0]  # every datapoint: the sum is exact
    usage = summary["code_usage"]
    assert usage["groups"] == 2 and usage["classes"] == 3 and all(1 <= u <= 3 for u in usage["classes_used"])
    assert "classes used per group" in result.table()


@pytest.mark.parametrize("objective", [{"name": "enumerate"}, {"name": "gumbel-softmax", "temperature": 1.0,
                                                               "final_temperature": 0.5, "anneal_epochs": 1}])
def test_the_trainer_drives_each_estimator(tmp_path, objective):
    trainer = Trainer(discrete_config(objective), tmp_path, progress=False, log=lambda line: None).fit()
    assert all(math.isfinite(m["test"]["elbo"]) for m in trainer.history)
    if objective["name"] == "gumbel-softmax":
        assert trainer.objective.current_temperature == pytest.approx(0.5)  # annealed by the trainer's steps


def test_code_usage_counts_classes():
    means = torch.tensor([[1.0, 0, 0, 0, 1, 0], [0, 1, 0, 0, 1, 0], [1, 0, 0, 0, 1, 0]])  # 2 groups of 3
    usage = code_usage(means, 2, 3)
    assert usage["classes_used"] == [2, 1]
    assert usage["perplexity"][0] == pytest.approx(math.exp(-(2 / 3 * math.log(2 / 3) + 1 / 3 * math.log(1 / 3))))
    assert usage["perplexity"][1] == pytest.approx(1.0)


DISCRETE_SPECS = [{"name": "enumerate"}, {"name": "score-function", "baseline": "none"}, {"name": "vimco", "num_particles": 3},
                  {"name": "score-function", "baseline": "average", "num_particles": 2},
                  {"name": "score-function", "baseline": "leave-one-out", "num_particles": 3},
                  {"name": "score-function", "baseline": "neural", "hidden": 8},
                  {"name": "gumbel-softmax", "temperature": 0.7}, {"name": "straight-through-gumbel", "num_particles": 2}]
DISCRETE_LATENTS = [(CATEGORICAL, 6), ({**BERNOULLI, "prior": {"name": "bernoulli"}}, 4), (BERNOULLI, 4)]


@pytest.mark.parametrize("spec", DISCRETE_SPECS, ids=lambda s: "-".join(map(str, s.values())))
@pytest.mark.parametrize("kind,latent_dim", DISCRETE_LATENTS, ids=["categorical", "bernoulli", "bernoulli-learned"])
def test_every_discrete_estimator_trains_each_discrete_latent(spec, kind, latent_dim, binary_splits):
    from suites import assert_trains, train_steps

    vae = discrete_vae(kind, latent_dim=latent_dim, likelihood={"name": "bernoulli", "binarize": "none"})
    assert_trains(train_steps(vae, OBJECTIVES.build(spec), binary_splits, steps=40))


@pytest.mark.parametrize("spec", DISCRETE_SPECS, ids=lambda s: "-".join(map(str, s.values())))
@pytest.mark.parametrize("kind,latent_dim", DISCRETE_LATENTS[::2], ids=["categorical", "bernoulli-learned"])
def test_direct_terms_equal_traced_ones_for_discrete_latents(spec, kind, latent_dim):
    """The stock VAE's direct terms and its Pyro program traced give the same loss and gradients
    (the same draws from the same seed) for every estimator of discrete latents."""
    from suites import assert_same_step

    objective = OBJECTIVES.build(spec)
    with objective.measuring():  # (a running baseline's state would differ between the two calls)
        assert_same_step(discrete_vae(kind, latent_dim=latent_dim), objective, binary_batch(8))


# -- the GMVAE: a discrete site summed out, a Gaussian one drawn given it ----------------------


def gmvae(**options):
    from pyro_vae.gmvae import GaussianMixtureVAE

    return GaussianMixtureVAE(data_shape=(1, 6, 6), components=3, latent_dim=2, network={"name": "mlp", "hidden": [16]},
                              **options)


def test_gmvae_enumerated_elbo_agrees_with_the_sampled_one():
    """enumerate (y summed, z drawn per state) and score-function (y and z drawn) are unbiased
    estimates of the same ELBO: their means over many draws agree within standard errors."""
    program = as_program(gmvae(learned_weights=True))
    x = binary_batch(6)
    assert program.latent_shapes == {"y": (3,), "z": (2,)} and program.discrete_latents
    with torch.no_grad():
        enumerated = torch.tensor([OBJECTIVES.build("enumerate").step(program.source, x)[1].item() for _ in range(300)])
        sampled = torch.tensor([OBJECTIVES.build({"name": "score-function", "num_particles": 1})
                                .step(program.source, x)[1].item() for _ in range(300)])
    se = math.sqrt(enumerated.var() / 300 + sampled.var() / 300)
    assert abs(enumerated.mean() - sampled.mean()) < 4 * se
    assert enumerated.std() < sampled.std()  # one z per datapoint either way: summing y out leaves only z's noise
    # the relaxation relaxes y and draws z given the relaxed y: a gradient reaches q(y|x) through the decoder's path
    surrogate, loss = OBJECTIVES.build("gumbel-softmax").step(program.source, x)
    surrogate.backward()
    assert torch.isfinite(loss) and program.module.q_y_logits.weight.grad.abs().sum() > 0


def test_gmvae_by_name_trains_and_loads_without_trust_code(tmp_path):
    raw = discrete_config({"name": "enumerate"}).to_dict()
    raw["model"] = {"program": "gmvae", "components": 3, "latent_dim": 2, "network": {"name": "mlp", "hidden": [16]}}
    trainer = Trainer(Config.from_dict(raw), tmp_path, progress=False, log=lambda line: None).fit()
    assert all(math.isfinite(m["test"]["elbo"]) for m in trainer.history)
    run = load_run(tmp_path, trust_code=False)  # library code, not a user's: no --trust-code needed
    assert type(run.program.module).__name__ == "GaussianMixtureVAE" and run.program.module.components == 3
    assert math.isfinite(evaluate(run.program, run.data.prepared_test, samples=5).summary()["log_px"]["mean"])


@pytest.mark.parametrize("likelihood", [n for n in ("bernoulli", "continuous-bernoulli", "gaussian", "laplace",
                                                    "discretized-logistic", "categorical", "beta")])
def test_enumeration_decodes_each_state_once_with_the_same_numbers(likelihood, grey_splits, eight_bit_splits):
    """The direct terms at states shared by every datapoint decode each state once and broadcast
    p(x|z) over the datapoints: the same log-likelihoods as decoding every (state, datapoint) pair."""
    from pyro_vae.terms import DirectSource

    vae = discrete_vae(likelihood={"name": likelihood})
    splits = eight_bit_splits if likelihood in ("discretized-logistic", "categorical", "beta") else grey_splits
    x = vae.likelihood.prepare_eval_set(splits.test[:5])
    states = enumerate_states(vae.q_z_given_x(x))
    shared = states.unsqueeze(1).expand(states.shape[0], x.shape[0], -1)
    with torch.no_grad(), DirectSource(vae).given(x) as at_x:
        once, every = at_x.at({"z": shared}).log_likelihood, at_x.at({"z": shared.contiguous()}).log_likelihood
    assert once.shape == (9, 5) and torch.allclose(once, every, rtol=1e-5, atol=1e-4)


def exact_iwae2_gradient(program, x: torch.Tensor) -> dict[str, torch.Tensor]:
    """The gradient of the IWAE bound with K = 2, per datapoint, summed exactly over every pair of
    states: E = sum_{s,t} q_s q_t log((w_s + w_t) / 2)."""
    module = program.module
    module.zero_grad(set_to_none=True)
    vae = program.module
    q, prior = vae.q_z_given_x(x), vae.p_z()
    states = enumerate_states(q)
    z = states.unsqueeze(1).expand(-1, x.shape[0], -1)
    log_q = q.log_prob(z)  # (S, B)
    log_w = vae.p_x_given_z(z).log_prob(x) + prior.log_prob(z) - log_q
    pair = torch.logaddexp(log_w[:, None], log_w[None]) - math.log(2)  # (S, S, B)
    bound = (log_q.exp()[:, None] * log_q.exp()[None] * pair).sum((0, 1))
    (bound.sum() / x.shape[0]).backward()
    out = {g: torch.cat([(p.grad if p.grad is not None else torch.zeros_like(p)).double().flatten() for p in ps])
           for g, ps in program.parameter_groups().items() if ps}
    module.zero_grad(set_to_none=True)
    return out


def test_vimco_gradient_is_the_iwae_bounds():
    """VIMCO's mean gradient over many draws is the exact gradient of the K = 2 IWAE bound (every
    pair of states summed), within its standard error; its value is that bound's estimate."""
    torch.manual_seed(0)
    program = as_program(discrete_vae())
    x = binary_batch(4)
    truth = exact_iwae2_gradient(program, x)
    stats = gradient_statistics(program, OBJECTIVES.build({"name": "vimco", "num_particles": 2}), x, draws=400,
                                reference=truth)
    for group, s in stats.items():
        assert s["bias"] < 4 * s["bias_stderr"], (group, s)
    with pytest.raises(ConfigError, match="vimco needs num_particles >= 2"):
        OBJECTIVES.build({"name": "vimco", "num_particles": 1})


def test_a_program_of_two_sites_encodes_each(tmp_path):
    """encode(x, site=...) and encode_sites(x) for the GMVAE: q(y|x)'s class probabilities and
    q(z|x, y)'s mean and scale; the CLI's encode writes both sites' columns."""
    from pyro_vae.cli import main

    raw = discrete_config({"name": "enumerate"}, epochs=1).to_dict()
    raw["model"] = {"program": "gmvae", "components": 3, "latent_dim": 2, "network": {"name": "mlp", "hidden": [16]}}
    Trainer(Config.from_dict(raw), tmp_path / "run", progress=False, log=lambda line: None).fit()
    run = load_run(tmp_path / "run")
    x = run.data.prepared_test[:5]
    probs, _ = run.encode(x, site="y")
    assert probs.shape == (5, 3) and torch.allclose(probs.sum(-1), torch.ones(5))
    sites = run.encode_sites(x)
    assert list(sites) == ["y", "z"] and sites["z"][0].shape == sites["z"][1].shape == (5, 2)
    with pytest.raises(ProgramError, match="2 latent sites \\(y, z\\): name one"):
        run.encode(x)
    assert main(["encode", str(tmp_path / "run"), "--out", str(tmp_path / "codes.npz"), "--samples", "3",
                 "--no-progress"]) == 0
    import numpy as np

    table = np.load(tmp_path / "codes.npz")
    assert {"mean_y", "scale_y", "mean_z", "scale_z", "elbo", "log_px"} <= set(table.files)
    assert main(["encode", str(tmp_path / "run"), "--out", str(tmp_path / "codes.csv"), "--samples", "3",
                 "--no-progress"]) == 0
    header = (tmp_path / "codes.csv").read_text().splitlines()[0].split(",")
    assert header[-10:] == ["mean_y_0", "mean_y_1", "mean_y_2", "scale_y_0", "scale_y_1", "scale_y_2",
                            "mean_z_0", "mean_z_1", "scale_z_0", "scale_z_1"]


def test_the_neural_baseline_is_unbiased_trains_and_is_checkpointed(tmp_path):
    """b(x) a network: the gradient stays unbiased (mean = exact within its s.e.); the trainer steps
    b's parameters with the model's (its squared error to f falls) and checkpoints them; with raw
    pyro.infer.SVI they are in Pyro's parameter store and SVI steps them."""
    torch.manual_seed(0)
    program = as_program(discrete_vae())
    x = binary_batch(4)
    objective = OBJECTIVES.build({"name": "score-function", "baseline": "neural", "hidden": 8})
    objective.attach(program)
    truth = exact_gradient(program, x)
    stats = gradient_statistics(program, objective, x, draws=300, reference=truth)
    for group, s in stats.items():
        assert s["bias"] < 4 * s["bias_stderr"], (group, s)

    config = discrete_config({"name": "score-function", "baseline": "neural", "hidden": 8}, epochs=2)
    trainer = Trainer(config, tmp_path, progress=False, log=lambda line: None)
    trainer._build()
    net = trainer.objective.module()
    before = [p.detach().clone() for p in net.parameters()]
    trainer = Trainer(config, tmp_path, progress=False, log=lambda line: None).fit(overwrite=True)
    after = list(trainer.objective.module().parameters())
    assert any(not torch.equal(a, b) for a, b in zip(before, after))  # stepped by the trainer's optimizer
    state = load_checkpoint(tmp_path / CHECKPOINT)
    for name, value in trainer.objective.module().state_dict().items():
        assert torch.equal(state["objective"]["network"][name], value)

    vae = discrete_vae()
    svi_objective = OBJECTIVES.build({"name": "score-function", "baseline": "neural", "hidden": 8})
    svi = pyro.infer.SVI(vae.model, vae.guide, pyro.optim.Adam({"lr": 1e-2}), svi_objective)
    svi.step(binary_batch(8))
    first = [p.detach().clone() for p in svi_objective.module().parameters()]
    svi.step(binary_batch(8))
    assert "score_function_baseline$$$1.weight" in pyro.get_param_store().keys()
    assert any(not torch.equal(a, b) for a, b in zip(first, svi_objective.module().parameters()))


def test_interpolate_and_traverse_a_program_of_two_sites(tmp_path):
    """The GMVAE's pictures: interpolation is refused (its site y is discrete: the points between
    two codes are no code) naming traverse; traverse sweeps the named site's coordinates with the
    other held at the datapoint's posterior mean, and switches y's class."""
    from PIL import Image

    from pyro_vae.cli import main

    raw = discrete_config({"name": "enumerate"}, epochs=1).to_dict()
    raw["model"] = {"program": "gmvae", "components": 3, "latent_dim": 2, "network": {"name": "mlp", "hidden": [16]}}
    Trainer(Config.from_dict(raw), tmp_path / "run", progress=False, log=lambda line: None).fit()
    assert main(["interpolate", str(tmp_path / "run"), "--pairs", "0:1", "--steps", "4",
                 "--out", str(tmp_path / "i.png")]) == 2
    assert not (tmp_path / "i.png").exists()
    assert main(["traverse", str(tmp_path / "run"), "--site", "z", "--steps", "5", "--out", str(tmp_path / "t.png")]) == 0
    assert main(["traverse", str(tmp_path / "run"), "--site", "y", "--out", str(tmp_path / "y.png")]) == 0
    for name in ("t.png", "y.png"):
        assert Image.open(tmp_path / name).size[0] > 100
    assert main(["traverse", str(tmp_path / "run"), "--out", str(tmp_path / "u.png")]) == 2  # which site?
