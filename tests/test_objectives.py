"""The direct engine computes the same loss and gradients as Pyro's traced objectives.

Speed must never change the maths: for every objective, prior and likelihood, one step through
``objective.loss_and_grads(vae.model, vae.guide, x)`` and one through ``objective.vae_loss(vae, x)``
from the same seed give the same loss and the same gradient for every parameter.
"""

from __future__ import annotations

import warnings

import pyro
import pytest
import torch

from pyro_vae.config import OBJECTIVES, PRIORS

from conftest import tiny_vae

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
]
LIKELIHOODS = [
    {"name": "bernoulli"},
    {"name": "continuous-bernoulli"},
    {"name": "gaussian", "scale": 0.3, "learn_scale": "per-pixel"},
    {"name": "laplace", "scale": 0.3, "learn_scale": "global"},
    {"name": "pixelcnn-bernoulli", "channels": 4, "kernel": 3},
]


def gradients(vae, objective, x, engine: str, seed: int = 7) -> tuple[float, dict[str, torch.Tensor]]:
    vae.zero_grad(set_to_none=True)
    pyro.clear_param_store()
    torch.manual_seed(seed)
    with pyro.validation_enabled(False), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        if engine == "pyro":
            loss = objective.loss_and_grads(vae.model, vae.guide, x)
        else:
            surrogate, value = objective.vae_loss(vae, x)
            surrogate.backward()
            loss = value.item()
    grads = {n: p.grad.clone() for n, p in vae.named_parameters() if p.grad is not None}
    return loss, grads


def assert_same_step(vae, objective, x) -> None:
    """Both engines' loss and gradients agree, computed in float64: in float32 the two orders of
    summation differ by rounding that an importance-weighted objective can amplify past any fixed
    tolerance (Renyi with alpha < 0 weights by w^(1 - alpha)); in float64 the maths must agree to
    about 1e-12, so a real difference cannot hide below the tolerance."""
    default = torch.get_default_dtype()
    torch.set_default_dtype(torch.float64)
    try:
        vae, x = vae.double(), x.double()
        pyro_loss, pyro_grads = gradients(vae, objective, x, "pyro")
        direct_loss, direct_grads = gradients(vae, objective, x, "direct")
    finally:
        torch.set_default_dtype(default)
    assert direct_loss == pytest.approx(pyro_loss, rel=1e-10, abs=1e-9)
    assert pyro_grads.keys() == direct_grads.keys() == {n for n, _ in vae.named_parameters()}
    for name, g in pyro_grads.items():  # relative to the gradient's norm
        error = (direct_grads[name] - g).norm() / g.norm().clamp_min(1e-12)
        assert error < 1e-9, (name, error.item())


@pytest.mark.parametrize("spec", OBJECTIVE_SPECS, ids=lambda s: "-".join(map(str, s.values())))
@pytest.mark.parametrize("prior", PRIORS.names())
def test_direct_engine_equals_pyro_for_every_objective_and_prior(spec, prior, grey_splits):
    vae = tiny_vae(prior=prior, likelihood={"name": "bernoulli"})
    assert_same_step(vae, OBJECTIVES.build(spec), grey_splits.train[:16].bernoulli())


@pytest.mark.parametrize("likelihood", LIKELIHOODS, ids=lambda s: s["name"])
@pytest.mark.parametrize("objective", ["elbo", "elbo-analytic-kl", "iwae", "stl", "dreg"])
def test_direct_engine_equals_pyro_for_every_likelihood(likelihood, objective, grey_splits):
    vae = tiny_vae(likelihood=likelihood)
    assert_same_step(vae, OBJECTIVES.build(objective), grey_splits.train[:16])


@pytest.mark.parametrize("objective", ["elbo", "elbo-analytic-kl", "stl"])
def test_direct_engine_honours_the_kl_weight_like_pyro(objective, grey_splits):
    vae = tiny_vae(prior="mixture")
    vae.kl_weight = 0.25
    assert_same_step(vae, OBJECTIVES.build(objective), grey_splits.train[:16].bernoulli())


@pytest.mark.parametrize("objective", ["elbo", "iwae", "stl", "dreg"])
def test_direct_engine_equals_pyro_with_the_iaf_guide(objective, grey_splits):
    torch.manual_seed(0)
    vae = tiny_vae(guide={"name": "iaf", "steps": 2, "hidden": 8, "context": 4})
    spec = {"name": objective, "num_particles": 3} if objective in ("iwae", "dreg") else objective
    assert_same_step(vae, OBJECTIVES.build(spec), grey_splits.train[:16].bernoulli())
