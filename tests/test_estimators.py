"""STL and DReG: the properties that define them, checked in numbers.

* STL: at the exact posterior every draw of its guide gradient is zero (zero variance).
* DReG: its expected guide gradient equals IWAE's (unbiased), its model gradient is IWAE's, and
  its guide-gradient SNR grows with K while IWAE's falls (Rainforth et al. 2018; Tucker et al. 2018).
"""

from __future__ import annotations

import math

import pyro
import pytest
import torch
from pyro.infer import Trace_ELBO

from pyro_vae import ConfigError, ProgramError, Trainer
from pyro_vae.config import GUIDES, OBJECTIVES
from pyro_vae.guides import DiagonalGaussianGuide
from pyro_vae.metrics import gradient_statistics
from pyro_vae.programs import Program

from conftest import tiny_config, tiny_vae
from test_metrics import ppca_data, ppca_vae


def gradient_draws(vae, objective, x, draws: int, seed: int) -> dict[str, torch.Tensor]:
    """(draws, coordinates) gradient estimates of the objective, per parameter group."""
    program = Program(vae)
    groups = program.parameter_groups()
    out = {g: [] for g in groups}
    torch.manual_seed(seed)
    with pyro.validation_enabled(False):
        for _ in range(draws):
            vae.zero_grad(set_to_none=True)
            surrogate, _ = objective.step(program.source, x)
            surrogate.backward()
            for g, ps in groups.items():
                out[g].append(torch.cat([p.grad.flatten() for p in ps]).double())
    return {g: torch.stack(v) for g, v in out.items() if v}


def test_stl_guide_gradient_vanishes_at_the_exact_posterior():
    vae, w, b = ppca_vae()  # q(z|x) = p(z|x) exactly
    x = ppca_data(w, b, n=16)
    stl = gradient_statistics(vae, OBJECTIVES.build("stl"), x, draws=50, seed=0)["encoder"]
    elbo = gradient_statistics(vae, OBJECTIVES.build("elbo"), x, draws=50, seed=0)["encoder"]
    assert stl["variance"] < 1e-8 and stl["mean_norm"] < 1e-4  # every draw is (numerically) zero
    assert elbo["variance"] > 1e-2  # the score term makes the ordinary estimator noisy there


def test_stl_equals_the_elbo_gradient_in_expectation():
    vae, w, b = ppca_vae(posterior_shift=0.3, posterior_scale_factor=1.4)
    x = ppca_data(w, b, n=8)
    stl = gradient_draws(vae, OBJECTIVES.build("stl"), x, 3000, seed=1)["encoder"]
    elbo = gradient_draws(vae, OBJECTIVES.build("elbo"), x, 3000, seed=2)["encoder"]
    z = (stl.mean(0) - elbo.mean(0)) / (stl.var(0) / len(stl) + elbo.var(0) / len(elbo)).sqrt()
    assert z.abs().max() < 4.0 and 0.4 < (z**2).mean() < 2.0


def test_dreg_is_unbiased_for_the_iwae_gradient():
    vae, w, b = ppca_vae(posterior_shift=0.3, posterior_scale_factor=1.4)
    x = ppca_data(w, b, n=8)
    dreg = gradient_draws(vae, OBJECTIVES.build({"name": "dreg", "num_particles": 4}), x, 3000, seed=1)["encoder"]
    iwae = gradient_draws(vae, OBJECTIVES.build({"name": "iwae", "num_particles": 4}), x, 3000, seed=2)["encoder"]
    z = (dreg.mean(0) - iwae.mean(0)) / (dreg.var(0) / len(dreg) + iwae.var(0) / len(iwae)).sqrt()
    assert z.abs().max() < 4.0 and 0.4 < (z**2).mean() < 2.0  # differences are standard-error sized
    assert iwae.mean(0).norm() > 10 * (dreg.var(0).sum() / len(dreg)).sqrt()  # ... and the signal is not


def assert_dreg_unbiased(vae, x, draws: int = 1500) -> None:
    """DReG's mean encoder gradient (K = 3) equals IWAE's: standard-error-sized z-scores."""
    dreg = gradient_draws(vae, OBJECTIVES.build({"name": "dreg", "num_particles": 3}), x, draws, seed=1)["encoder"]
    iwae = gradient_draws(vae, OBJECTIVES.build({"name": "iwae", "num_particles": 3}), x, draws, seed=2)["encoder"]
    z = (dreg.mean(0) - iwae.mean(0)) / (dreg.var(0) / len(dreg) + iwae.var(0) / len(iwae)).sqrt().clamp_min(1e-12)
    moving = iwae.var(0) > 0
    assert z[moving].abs().max() < 4.5 and 0.4 < (z[moving] ** 2).mean() < 2.0


def test_dreg_is_unbiased_with_the_iaf_guide_too():
    """A flow guide caches the noise behind its samples; DReG must still weight the path through z."""
    torch.manual_seed(0)
    vae = tiny_vae(guide={"name": "iaf", "steps": 1, "hidden": 8, "context": 4})
    assert_dreg_unbiased(vae, torch.rand(4, 1, 6, 6).bernoulli())


def test_dreg_model_gradient_is_the_iwae_gradient():
    vae = tiny_vae()
    x = torch.rand(8, 1, 6, 6).bernoulli()
    dreg = gradient_draws(vae, OBJECTIVES.build({"name": "dreg", "num_particles": 5}), x, 3, seed=4)["decoder"]
    iwae = gradient_draws(vae, OBJECTIVES.build({"name": "iwae", "num_particles": 5}), x, 3, seed=4)["decoder"]
    assert ((dreg - iwae).norm(dim=1) / iwae.norm(dim=1)).max() < 1e-5  # same draws: equal up to rounding


def test_dreg_with_one_particle_is_stl():
    vae = tiny_vae()
    x = torch.rand(8, 1, 6, 6).bernoulli()
    dreg = gradient_draws(vae, OBJECTIVES.build({"name": "dreg", "num_particles": 1}), x, 3, seed=4)
    stl = gradient_draws(vae, OBJECTIVES.build("stl"), x, 3, seed=4)
    for group in dreg:
        assert ((dreg[group] - stl[group]).norm(dim=1) / stl[group].norm(dim=1)).max() < 1e-5


def test_guide_snr_falls_with_k_for_iwae_and_rises_for_dreg():
    vae, w, b = ppca_vae(posterior_shift=0.2, posterior_scale_factor=1.3)
    x = ppca_data(w, b, n=16)
    snr = {}
    for name in ("iwae", "dreg"):
        for k in (1, 8, 64):
            objective = OBJECTIVES.build({"name": name, "num_particles": k})
            snr[name, k] = gradient_statistics(vae, objective, x, draws=400, seed=1)["encoder"]["snr"]
    assert snr["iwae", 1] > snr["iwae", 8] > snr["iwae", 64] and snr["iwae", 64] < 0.25 * snr["iwae", 1]
    assert snr["dreg", 64] > snr["dreg", 8] > snr["dreg", 1]


def test_the_pyro_path_refuses_a_guide_without_rsample(binary_splits):
    vae = tiny_vae()
    x = binary_splits.train[:4]

    class NoRsample(pyro.distributions.Normal):
        has_rsample = False

    def plain_guide(x):  # a guide whose z is not reparameterized
        with pyro.plate("data", x.shape[0]):
            pyro.sample("z", NoRsample(torch.zeros(x.shape[0], 2), 1.0).to_event(1))

    for name in ("stl", "dreg"):
        with pytest.raises(ProgramError, match="guide's site 'z' \\(NoRsample\\) is not reparameterized"):
            OBJECTIVES.build(name).loss_and_grads(vae.model, plain_guide, x)


def test_unsupported_guide_families_are_refused(tmp_path):
    @GUIDES.register("test-only-gaussian")
    class OtherGuide(DiagonalGaussianGuide):
        """q(z|x) = the diagonal Gaussian under another name (test only)."""

    try:
        config = tiny_config(model={"guide": "test-only-gaussian"}, train={"objective": "dreg"})
        with pytest.raises(ConfigError, match="supports the guide families diagonal-gaussian, iaf, hierarchical, not 'test-only-gaussian'"):
            Trainer(config, tmp_path / "run", progress=False).fit()
    finally:
        GUIDES._classes.pop("test-only-gaussian")


def test_stl_value_is_the_elbo():
    vae = tiny_vae()
    x = torch.rand(8, 1, 6, 6).bernoulli()
    torch.manual_seed(3)
    stl = OBJECTIVES.build("stl").step(Program(vae).source, x)[1].item()
    torch.manual_seed(3)
    elbo = Trace_ELBO().loss(vae.model, vae.guide, x)
    assert stl == pytest.approx(elbo, rel=1e-5)
    assert math.isfinite(stl)
