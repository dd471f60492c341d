"""The contract with Pyro users: vae.model and vae.guide are plain Pyro programs."""

from __future__ import annotations

import pyro
import pyro.poutine as poutine
import pytest
import torch
from pyro.infer import SVI, RenyiELBO, Trace_ELBO, TraceMeanField_ELBO

from pyro_vae import MixturePrior, MonteCarloELBO
from pyro_vae.terms import DirectSource, source_for

from conftest import tiny_vae


def mean_loss(losses: list[float], k: int = 10) -> float:
    return sum(losses[:k]) / k, sum(losses[-k:]) / k


@pytest.mark.parametrize(
    "elbo",
    [Trace_ELBO(), TraceMeanField_ELBO(), Trace_ELBO(num_particles=4, vectorize_particles=True, max_plate_nesting=1),
     RenyiELBO(alpha=0, num_particles=5, vectorize_particles=True, max_plate_nesting=1), MonteCarloELBO()],
    ids=["Trace_ELBO", "TraceMeanField_ELBO", "Trace_ELBO-vectorized", "RenyiELBO-iwae", "registry-elbo"],
)
def test_model_and_guide_train_with_raw_pyro_svi(binary_splits, elbo):
    vae = tiny_vae(prior=MixturePrior(components=2))
    svi = SVI(vae.model, vae.guide, pyro.optim.Adam({"lr": 1e-2}), elbo)
    x = binary_splits.train
    losses = [svi.step(x[i % 4 * 32 : (i % 4 + 1) * 32]) for i in range(80)]
    first, last = mean_loss(losses)
    assert all(torch.isfinite(torch.tensor(losses)))
    assert last < first
    names = set(pyro.get_param_store().keys())
    assert any(n.startswith("encoder$$$") for n in names) and any(n.startswith("decoder$$$") for n in names)
    assert any(n.startswith("prior$$$") for n in names)  # the mixture's weights, means and scales train too


def test_model_trace_declares_p_z_and_p_x_given_z(binary_splits):
    vae = tiny_vae()
    x = binary_splits.train[:5]
    guide_trace = poutine.trace(vae.guide).get_trace(x)
    model_trace = poutine.trace(poutine.replay(vae.model, trace=guide_trace)).get_trace(x)
    z_site, x_site = model_trace.nodes["z"], model_trace.nodes["x"]
    assert z_site["value"].shape == (5, 2) and not z_site["is_observed"]
    assert x_site["is_observed"] and x_site["fn"].event_shape == (1, 6, 6)
    assert guide_trace.nodes["z"]["fn"].has_rsample


def test_the_direct_terms_score_the_same_model_as_the_pyro_program(binary_splits):
    """log w from the traces of model/guide equals the one the direct source computes from the distributions."""
    vae = tiny_vae(prior=MixturePrior(components=3), likelihood={"name": "bernoulli"})
    x = binary_splits.train[:6]
    torch.manual_seed(3)
    guide_trace = poutine.trace(vae.guide).get_trace(x)
    model_trace = poutine.trace(poutine.replay(vae.model, trace=guide_trace)).get_trace(x)
    z = guide_trace.nodes["z"]["value"]
    from_traces = (
        model_trace.nodes["x"]["fn"].log_prob(x)
        + model_trace.nodes["z"]["fn"].log_prob(z)
        - guide_trace.nodes["z"]["fn"].log_prob(z)
    )
    torch.manual_seed(3)
    source = source_for(vae)
    assert isinstance(source, DirectSource)  # the stock program: its terms straight from the distributions
    from_terms = source.draw(x, 1).log_weights[0]
    torch.testing.assert_close(from_traces, from_terms)


def test_vectorized_particles_pass_through_the_networks(binary_splits):
    vae = tiny_vae()
    x = binary_splits.train[:4]
    elbo = Trace_ELBO(num_particles=3, vectorize_particles=True, max_plate_nesting=1)
    assert torch.isfinite(torch.tensor(elbo.loss(vae.model, vae.guide, x)))
