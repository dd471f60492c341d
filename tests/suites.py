"""The shared test suites every registered component runs through, as functions of a component's
spec, so that the parametrized tests (test_training.py, test_objectives.py) and a component
registered inside a test (test_new_component.py) run the very same checks.

The data each likelihood is trained on comes from the likelihood's own data contract
(``Likelihood.example``: binary pixels, 8-bit levels, counts, ... made from grey values), never
from a list of names here: a new likelihood is tested by its class alone.
"""

from __future__ import annotations

import math
import warnings

import pyro
import pytest
import torch

from pyro_vae.config import GUIDES, LIKELIHOODS, PRIORS
from pyro_vae.data import DataSplits
from pyro_vae.errors import ConfigError
from pyro_vae.terms import DirectSource
from pyro_vae.training import svi_step


def example_splits(likelihood, grey: DataSplits) -> DataSplits:
    """``grey`` (values in [0, 1]) as data of the likelihood's contract (``Likelihood.example``)."""
    lik = LIKELIHOODS.build(likelihood)
    g = torch.Generator().manual_seed(0)
    return DataSplits(f"{grey.name} for {lik.name}", lik.example(grey.train, g), grey.train_labels,
                      lik.example(grey.test, g), grey.test_labels)


def guide_for(prior, latent_dim: int = 2) -> str:
    """The first registered guide over the prior's latent space (``latent_space()``, compared at
    ``latent_dim``): the diagonal Gaussian for a prior over real vectors, the dirichlet guide for one
    over the simplex. The suites pair each prior with it (a guide of another space is refused)."""
    space = PRIORS.build(prior).setup(latent_dim).latent_space()
    for name in GUIDES.names():
        guide = GUIDES.build(name)
        if not guide.discrete_latent and guide.setup(4, latent_dim).latent_space() == space:
            return name
    raise LookupError(f"no registered continuous guide is over {space}, the latent space of prior {prior!r}")


def refusal(objective, guide) -> str | None:
    """Why ``objective`` refuses the guide family ``guide`` in a run (``check_guide``), or None."""
    try:
        objective.check_guide(guide if isinstance(guide, str) else guide["name"])
    except ConfigError as e:
        return str(e)
    return None


def train_steps(vae, objective, splits, steps: int = 60, lr: float = 1e-2) -> list[float]:
    """Run the library's SVI step on 32-image batches; return per-datapoint losses."""
    lik = vae.likelihood
    lik.check_data(splits.train, "train")
    x_all = lik.prepare_train_set(splits.train)
    objective.attach(vae)  # (as the trainer does: an estimator's own parameters, and beta-tc's N)
    objective.set_dataset_size(x_all.shape[0])
    own = objective.module()
    optimizer = torch.optim.Adam(vae.parameters() if own is None else [*vae.parameters(), *own.parameters()], lr=lr)
    g = torch.Generator().manual_seed(0)
    losses = []
    for i in range(steps):
        x = lik.prepare_batch(x_all[(i % 4) * 32 : (i % 4 + 1) * 32], g)
        losses.append(svi_step(vae, objective, optimizer, x) / x.shape[0])
    return losses


def assert_trains(losses: list[float]) -> None:
    assert all(math.isfinite(v) for v in losses), losses
    first, last = sum(losses[:10]) / 10, sum(losses[-10:]) / 10
    assert last < first, (first, last)


def gradients(vae, step, seed: int = 7) -> tuple[float, dict[str, torch.Tensor]]:
    """(loss, gradients) of one call ``step()`` that backpropagates and returns the loss."""
    vae.zero_grad(set_to_none=True)
    pyro.clear_param_store()
    torch.manual_seed(seed)
    with pyro.validation_enabled(False), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        loss = step()
    return loss, {n: p.grad.clone() for n, p in vae.named_parameters() if p.grad is not None}


def direct_step(vae, objective, x, kl_weight: float = 1.0):
    def step():
        surrogate, value = objective.step(DirectSource(vae), x, kl_weight)
        surrogate.backward()
        return value.item()

    return step


def assert_same_gradients(a: tuple, b: tuple, names: set[str]) -> None:
    (loss_a, grads_a), (loss_b, grads_b) = a, b
    assert loss_a == pytest.approx(loss_b, rel=1e-10, abs=1e-9)
    assert grads_a.keys() == grads_b.keys() == names
    for name, g in grads_b.items():  # relative to the gradient's norm
        error = (grads_a[name] - g).norm() / g.norm().clamp_min(1e-12)
        assert error < 1e-9, (name, error.item())


def in_float64(check):
    """Run ``check`` with float64 as the default: in float32 two orders of summation differ by
    rounding that an importance-weighted objective can amplify past any fixed tolerance (Renyi with
    alpha < 0 weights by w^(1 - alpha)); in float64 the maths must agree to about 1e-12, so a real
    difference cannot hide below the tolerance."""
    default = torch.get_default_dtype()
    torch.set_default_dtype(torch.float64)
    try:
        check()
    finally:
        torch.set_default_dtype(default)


def assert_same_step(vae, objective, x) -> None:
    """Pyro's API (the program traced) and the direct terms give the same loss and gradients."""
    def check():
        model, xd = vae.double(), x.double()
        traced = gradients(model, lambda: objective.loss_and_grads(model.model, model.guide, xd))
        direct = gradients(model, direct_step(model, objective, xd))
        assert_same_gradients(direct, traced, {n for n, _ in model.named_parameters()})

    in_float64(check)
