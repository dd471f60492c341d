"""One source of truth per bound: each objective's maths is written once, over the program's terms.

* The two sources of terms agree: for every objective, prior, likelihood and guide, one step through
  ``objective.loss_and_grads(vae.model, vae.guide, x)`` (Pyro's API: the program traced) and one
  through ``objective.step(DirectSource(vae), x)`` (the stock VAE's distributions, untraced) from
  the same seed give the same loss and the same gradient for every parameter.
* The maths is Pyro's: on the traced program, ``elbo`` equals ``pyro.infer.Trace_ELBO``,
  ``elbo-analytic-kl`` equals ``TraceMeanField_ELBO`` and ``iwae``/``renyi`` equal the vectorized
  ``RenyiELBO``, loss and gradients, an implementation we share nothing with.
"""

from __future__ import annotations


import pyro
import pyro.distributions as dist
import pyro.poutine as poutine
import pytest
import torch
from pyro.infer import RenyiELBO, Trace_ELBO, TraceMeanField_ELBO

from pyro_vae import ProgramError
from pyro_vae.config import OBJECTIVES, PRIORS

from conftest import tiny_vae
from suites import (assert_same_gradients, assert_same_step, direct_step, gradients, guide_for,  # noqa: F401
                    in_float64, refusal)

OBJECTIVE_SPECS = [
    {"name": "elbo"},
    {"name": "elbo", "num_particles": 3},
    {"name": "elbo-analytic-kl"},
    {"name": "elbo-analytic-kl", "num_particles": 3},
    {"name": "iwae", "num_particles": 4},
    {"name": "iwae", "num_particles": 1},
    {"name": "renyi", "alpha": 0.5, "num_particles": 4},
    {"name": "renyi", "alpha": -1.0, "num_particles": 2},
    {"name": "stl"},
    {"name": "stl", "num_particles": 3},
    {"name": "dreg", "num_particles": 4},
    {"name": "dreg", "num_particles": 1},
    {"name": "beta", "beta": 4.0},
    {"name": "beta-tc", "dataset_size": 1000},
    {"name": "beta-tc", "estimator": "weighted", "dataset_size": 1000, "num_particles": 2},
    {"name": "factor", "gamma": 5.0, "hidden": 8},
]
LIKELIHOODS = [
    {"name": "bernoulli"},
    {"name": "continuous-bernoulli"},
    {"name": "gaussian", "scale": 0.3, "learn_scale": "per-pixel"},
    {"name": "laplace", "scale": 0.3, "learn_scale": "global"},
    {"name": "pixelcnn-bernoulli", "channels": 4, "kernel": 3},
]


@pytest.mark.parametrize("spec", OBJECTIVE_SPECS, ids=lambda s: "-".join(map(str, s.values())))
@pytest.mark.parametrize("prior", [n for n in PRIORS.names() if not PRIORS.get(n).discrete_latent])
def test_direct_terms_equal_traced_ones_for_every_objective_and_prior(spec, prior, grey_splits):
    guide = guide_for(prior)  # a guide of the prior's latent space
    refused = refusal(OBJECTIVES.build(spec), guide)
    if refused:  # a run refuses this objective with this guide (check_guide, naming it): nothing to train
        assert f"not '{guide}'" in refused
        return
    vae = tiny_vae(prior=prior, likelihood={"name": "bernoulli"}, guide=guide)
    assert_same_step(vae, OBJECTIVES.build(spec), grey_splits.train[:16].bernoulli())


@pytest.mark.parametrize("likelihood", LIKELIHOODS, ids=lambda s: s["name"])
@pytest.mark.parametrize("objective", ["elbo", "elbo-analytic-kl", "iwae", "stl", "dreg"])
def test_direct_terms_equal_traced_ones_for_every_likelihood(likelihood, objective, grey_splits):
    vae = tiny_vae(likelihood=likelihood)  # the data as the likelihood observes it (Bernoulli: binarized)
    assert_same_step(vae, OBJECTIVES.build(objective), vae.likelihood.prepare_eval_set(grey_splits.train[:16]))


@pytest.mark.parametrize("objective", ["elbo", "iwae", "stl", "dreg"])
def test_direct_terms_equal_traced_ones_with_the_iaf_guide(objective, grey_splits):
    torch.manual_seed(0)
    vae = tiny_vae(guide={"name": "iaf", "steps": 2, "hidden": 8, "context": 4})
    spec = {"name": objective, "num_particles": 3} if objective in ("iwae", "dreg") else objective
    assert_same_step(vae, OBJECTIVES.build(spec), grey_splits.train[:16].bernoulli())


PYRO_REFERENCES = [
    ({"name": "elbo"}, lambda: Trace_ELBO()),
    ({"name": "elbo", "num_particles": 3}, lambda: Trace_ELBO(num_particles=3, vectorize_particles=True, max_plate_nesting=1)),
    ({"name": "elbo-analytic-kl"}, lambda: TraceMeanField_ELBO()),
    ({"name": "elbo-analytic-kl", "num_particles": 3},
     lambda: TraceMeanField_ELBO(num_particles=3, vectorize_particles=True, max_plate_nesting=1)),
    ({"name": "iwae", "num_particles": 4}, lambda: RenyiELBO(alpha=0.0, num_particles=4, vectorize_particles=True, max_plate_nesting=1)),
    ({"name": "renyi", "alpha": 0.5, "num_particles": 4},
     lambda: RenyiELBO(alpha=0.5, num_particles=4, vectorize_particles=True, max_plate_nesting=1)),
]


@pytest.mark.parametrize("spec,reference", PYRO_REFERENCES, ids=lambda s: "-".join(map(str, s.values()))
                         if isinstance(s, dict) else "")
@pytest.mark.parametrize("prior", ["standard-normal", "mixture", "hierarchical"])
def test_each_objective_is_the_maths_of_pyros_own_elbo(spec, reference, prior, binary_splits):
    """Independent of everything in pyro-vae but the program: our objective and Pyro's on the same
    traced model and guide, same seed: the same loss and gradients (the mixture prior takes
    TraceMeanField_ELBO's Monte-Carlo fallback; the hierarchical one a KL with no closed form)."""
    vae = tiny_vae(prior=prior)
    x = binary_splits.train[:12]

    def check():
        model, xd = vae.double(), x.double()
        ours = gradients(model, lambda: OBJECTIVES.build(spec).loss_and_grads(model.model, model.guide, xd))
        pyros = gradients(model, lambda: reference().loss_and_grads(model.model, model.guide, xd))
        assert_same_gradients(ours, pyros, {n for n, _ in model.named_parameters()})

    in_float64(check)


class LatentScaled(torch.nn.Module):
    """The stock program with its latent site scaled by beta in model and guide (poutine.scale)."""

    def __init__(self, vae, beta: float) -> None:
        super().__init__()
        self.vae, self.beta = vae, beta

    def model(self, x):
        pyro.module("vae", self.vae)  # (Pyro's ELBOs backpropagate only into registered parameters)
        with pyro.plate("data", x.shape[0]):
            with poutine.scale(scale=self.beta):
                z = pyro.sample("z", self.vae.p_z())
            pyro.sample("x", self.vae.p_x_given_z(z), obs=x)

    def guide(self, x):
        pyro.module("vae", self.vae)
        with pyro.plate("data", x.shape[0]), poutine.scale(scale=self.beta):
            pyro.sample("z", self.vae.q_z_given_x(x))


@pytest.mark.parametrize("objective", ["elbo", "elbo-analytic-kl", "stl"])
def test_the_kl_weight_is_pyros_scaled_latent_site(objective, binary_splits):
    """beta of KL warm-up multiplies exactly the latent sites' terms: the same loss and gradients as
    Pyro's Trace_ELBO (or TraceMeanField_ELBO) on the program with z scaled by beta."""
    vae = tiny_vae(prior="mixture" if objective != "elbo-analytic-kl" else "standard-normal")
    x, beta = binary_splits.train[:12], 0.25
    reference = {"elbo": Trace_ELBO, "elbo-analytic-kl": TraceMeanField_ELBO, "stl": Trace_ELBO}[objective]

    def check():
        model, xd = vae.double(), x.double()
        scaled = LatentScaled(model, beta)
        ours = gradients(model, direct_step(model, OBJECTIVES.build(objective), xd, kl_weight=beta))
        pyros = gradients(model, lambda: reference().loss_and_grads(scaled.model, scaled.guide, xd))
        if objective == "stl":  # the same value, another gradient: compare the loss only
            assert ours[0] == pytest.approx(pyros[0], rel=1e-10)
        else:
            assert_same_gradients(ours, pyros, {n for n, _ in model.named_parameters()})

    in_float64(check)


def test_differentiable_loss_is_the_loss_where_the_gradient_is_the_values(binary_splits):
    vae, x = tiny_vae(), binary_splits.train[:8]
    torch.manual_seed(1)
    tensor = OBJECTIVES.build("elbo").differentiable_loss(vae.model, vae.guide, x)
    torch.manual_seed(1)
    assert tensor.item() == pytest.approx(OBJECTIVES.build("elbo").loss(vae.model, vae.guide, x))
    for name in ("stl", "dreg"):
        with pytest.raises(NotImplementedError, match="not the gradient of its value"):
            OBJECTIVES.build(name).differentiable_loss(vae.model, vae.guide, x)


def test_a_latent_site_that_is_not_reparameterized_is_refused_by_name(binary_splits):
    class Discrete(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.logits = torch.nn.Parameter(torch.zeros(3))
            self.decode = torch.nn.Linear(3, 36)

        def model(self, x):
            with pyro.plate("data", x.shape[0]):
                c = pyro.sample("c", dist.OneHotCategorical(logits=torch.zeros(3)))
                pyro.sample("x", dist.Bernoulli(logits=self.decode(c).reshape(-1, 1, 6, 6)).to_event(3), obs=x)

        def guide(self, x):
            with pyro.plate("data", x.shape[0]):
                pyro.sample("c", dist.OneHotCategorical(logits=self.logits))

    program = Discrete()
    with pytest.raises(ProgramError, match="guide's site 'c' \\(OneHotCategorical\\) is not reparameterized") as e:
        OBJECTIVES.build("elbo").loss(program.model, program.guide, binary_splits.train[:4])
    assert "TraceGraph_ELBO" in str(e.value)
