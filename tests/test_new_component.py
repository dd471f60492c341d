"""CONTRIBUTING's promise, checked: a new component is one class and one test.

A likelihood, a prior and an objective are written here as a contributor would write them (each one
small class, registered by name), registered for the length of one test, and put through the
shared suites every stock component runs (``suites.py``): every combination trains, the direct
terms equal the traced program's, a run trains, evaluates and draws its pictures from a config, the
registry lists them and the generated reference documents them. None of the suites names them:
each reads what it needs from the component (the likelihood's data from its own ``example``).
"""

from __future__ import annotations

import contextlib
import importlib.util
import json
import math
from pathlib import Path

import pyro.distributions as dist
import pytest
import torch
import torch.nn.functional as F

from pyro_vae import Trainer, finish_run, load_run
from pyro_vae.config import LIKELIHOODS, NETWORKS, OBJECTIVES, PRIORS, Config
from pyro_vae.errors import DataError
from pyro_vae.likelihoods import Likelihood
from pyro_vae.objectives import Objective
from pyro_vae.priors import Prior

from conftest import tiny_vae
from suites import assert_same_step, assert_trains, example_splits, train_steps

ROOT = Path(__file__).resolve().parents[1]


class PoissonPixels(Likelihood):
    """p(x_i|z) = Poisson(x_i; softplus(f(z)_i)): each pixel a count (a throwaway likelihood of this test).

    Options:
        scale: the rate of a pixel of grey level 1 in the examples.
    """

    discrete = True

    def __init__(self, *, scale: float = 5.0) -> None:
        super().__init__()
        self.scale = scale

    def forward(self, head: torch.Tensor) -> dist.TorchDistribution:
        (rate,) = self.split_head(head)
        return dist.Poisson(F.softplus(rate) + 1e-6).to_event(len(self.event_shape))

    def example(self, grey: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        return torch.poisson(self.scale * grey, generator=generator)

    def check_data(self, x: torch.Tensor, split: str) -> None:
        if not bool(((x >= 0) & (x == x.round())).all()):
            raise DataError(f"the {split} data is not counts (non-negative integers).")

    def observable(self, x: torch.Tensor) -> bool:
        return bool(((x >= 0) & (x == x.round())).all())

    def refuse_observed(self, x: torch.Tensor, where: str) -> None:
        self.check_data(x, where)


class ScaledNormalPrior(Prior):
    """p(z) = N(0, s^2 I) (a throwaway prior of this test).

    Options:
        scale: s.
    """

    def __init__(self, *, scale: float = 2.0) -> None:
        super().__init__()
        self.scale = scale

    def forward(self) -> dist.TorchDistribution:
        return dist.Normal(torch.zeros(self.latent_dim), self.scale).to_event(1)


class AverageWeightELBO(Objective):
    """ELBO = E_q[log w], w = p(x, z) / q(z|x): the average log-weight over the particles (a throwaway objective).

    Options:
        num_particles: samples z ~ q(z|x) per datapoint.
    """

    def __init__(self, *, num_particles: int = 1) -> None:
        super().__init__(num_particles=num_particles)

    def surrogate(self, terms, kl_weight=1.0):
        loss = -terms.log_weights.mean(0).sum()
        return loss, loss.detach()


@contextlib.contextmanager
def registered(*entries):
    """Each (registry, name, class) registered inside the block, and removed after it."""
    done = []
    try:
        for registry, name, cls in entries:
            registry.register(name)(cls)
            done.append((registry, name))
        yield
    finally:
        for registry, name in reversed(done):
            registry.unregister(name)


NEW = ((LIKELIHOODS, "poisson-test", PoissonPixels), (PRIORS, "scaled-normal-test", ScaledNormalPrior),
       (OBJECTIVES, "average-weight-test", AverageWeightELBO))


def test_a_likelihood_prior_and_objective_written_here_pass_the_shared_suites(grey_splits, tmp_path):
    with registered(*NEW):
        counts = example_splits("poisson-test", grey_splits)  # the likelihood's own data contract
        assert bool((counts.train == counts.train.round()).all()) and counts.train.max() > 1
        for prior in [*PRIORS.names()[:2], "scaled-normal-test"]:  # every combination with the new ones trains
            if PRIORS.get(prior).discrete_latent:
                continue
            for objective in ("elbo", "average-weight-test"):
                vae = tiny_vae(prior={"name": prior}, likelihood="poisson-test")
                assert_trains(train_steps(vae, OBJECTIVES.build(objective), counts, steps=40))
        for network in NETWORKS.names():
            spec = {"name": "conv", "channels": [4], "hidden": 16} if network == "conv" else {"name": network}
            assert_trains(train_steps(tiny_vae(likelihood="poisson-test", network=spec), OBJECTIVES.build("elbo"),
                                      counts, steps=40))
        for objective in ("elbo", "iwae", "average-weight-test"):  # one source of truth: direct = traced
            vae = tiny_vae(likelihood="poisson-test", prior="scaled-normal-test")
            assert_same_step(vae, OBJECTIVES.build(objective), counts.train[:16])
        # average-weight-test is the ELBO written another way: the same loss as "elbo" at one particle
        vae = tiny_vae(likelihood="poisson-test")
        from pyro_vae.terms import DirectSource

        torch.manual_seed(3)
        ours = OBJECTIVES.build("average-weight-test").step(DirectSource(vae), counts.train[:16])[1]
        torch.manual_seed(3)
        stock = OBJECTIVES.build("elbo").step(DirectSource(vae), counts.train[:16])[1]
        torch.testing.assert_close(ours, stock)

        config = Config.from_dict({
            "data": {"name": "synthetic", "n_train": 64, "n_test": 16, "side": 6},
            "model": {"latent_dim": 2, "network": {"name": "mlp", "hidden": [16]}, "likelihood": "poisson-test",
                      "prior": {"name": "scaled-normal-test", "scale": 1.5}},
            "train": {"epochs": 2, "batch_size": 32, "objective": "average-weight-test"},
            "eval": {"samples": 10, "train_subset": 16}})
        Trainer(config, tmp_path / "run", splits=counts, progress=False, log=lambda s: None).fit()
        result = finish_run(load_run(tmp_path / "run", splits=counts), log=lambda s: None)
        summary = json.loads((tmp_path / "run" / "evaluation.json").read_text())
        assert math.isfinite(summary["log_px"]["mean"]) and summary["bits_per_dim_is_discrete"]
        assert result.log_px.mean() >= result.elbo.mean() - 1.0
        assert (tmp_path / "run" / "samples.png").is_file()

        for registry, name, _ in NEW:  # listed and documented like every stock component
            assert name in registry.describe()
        page = _docs_build().components_page()
        assert "poisson-test" in page and "scaled-normal-test" in page and "average-weight-test" in page
    assert "poisson-test" not in LIKELIHOODS.names()  # removed again: the committed reference stays current


def test_a_name_registered_twice_is_refused_and_an_unknown_one_cannot_be_removed():
    with registered((LIKELIHOODS, "poisson-test", PoissonPixels)):
        with pytest.raises(ValueError, match="registered twice"):
            LIKELIHOODS.register("poisson-test")(PoissonPixels)
    with pytest.raises(KeyError, match="not registered"):
        LIKELIHOODS.unregister("poisson-test")


def _docs_build():
    spec = importlib.util.spec_from_file_location("docs_build", ROOT / "docs" / "build.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module
