"""The VAE: the generative story p(z) p(x|z) and the amortized posterior q(z|x), as Pyro code.

    model:  z ~ p(z)                      prior, tractable
            x ~ p(x|z) = lik(decoder(z))  likelihood, tractable
    guide:  z ~ q(z|x) = N(mu(x), sigma(x)^2),   z = mu + sigma * eps   (reparameterized)

SVI maximizes ELBO = E_q[log p(x|z)] - KL(q(z|x) || p(z)) = log p(x) - KL(q(z|x) || p(z|x)).
log p(x) and p(z|x) are intractable; ``metrics.py`` estimates them. Nothing else lives here: the
trainer, evaluator and pictures run this program (``terms.py`` computes its terms straight from
the three distributions below only while ``model`` and ``guide`` are these, not overridden).
"""

from __future__ import annotations

from typing import Any

import pyro
import torch
from torch import nn

from .config import GUIDES, LIKELIHOODS, NETWORKS, PRIORS, require
from .data.checks import check_batch, require_finite


class VAE(nn.Module):
    """A VAE whose prior, likelihood, guide family and networks are declared by name or object.

    ``VAE(prior=MixturePrior(components=10))``, ``VAE(prior="mixture")`` and
    ``VAE(prior={"name": "mixture", "components": 10})`` go through the same registry.
    """

    def __init__(
        self,
        *,
        data_shape: tuple[int, ...] = (1, 28, 28),
        latent_dim: int = 50,
        prior: Any = "standard-normal",
        likelihood: Any = "bernoulli",
        guide: Any = "diagonal-gaussian",
        network: Any = "mlp",
    ) -> None:
        super().__init__()
        require(isinstance(latent_dim, int) and not isinstance(latent_dim, bool) and latent_dim >= 1,
                f"latent_dim must be a whole number >= 1, got {latent_dim!r}.")
        require(isinstance(data_shape, (tuple, list)) and len(data_shape) >= 1 and
                all(isinstance(d, int) and not isinstance(d, bool) and d >= 1 for d in data_shape),
                f"data_shape must be the shape of one datapoint, whole numbers >= 1 such as (1, 28, 28) or (64,), "
                f"got {data_shape!r}.")
        self.data_shape = tuple(data_shape)
        self.latent_dim = latent_dim
        self.prior = PRIORS.build(prior, "model.prior").setup(latent_dim)
        self.likelihood = LIKELIHOODS.build(likelihood, "model.likelihood").setup(self.data_shape)
        self.network = NETWORKS.build(network, "model.network")
        self.encoder = self.network.encoder(self.data_shape)
        self.posterior = GUIDES.build(guide, "model.guide").setup(self.encoder.out_features, latent_dim)
        self.decoder = self.network.decoder(latent_dim, self.likelihood.head_shape)
        self.prior.attach(self)  # e.g. the VampPrior calls the guide's encoder

    # The three tractable distributions.
    def p_z(self):
        """p(z), the prior."""
        return self.prior()

    def p_x_given_z(self, z: torch.Tensor):
        """p(x|z), the likelihood: a distribution over whole images, event shape ``data_shape``."""
        return self.likelihood(self.decoder(z))

    def q_z_given_x(self, x: torch.Tensor):
        """q(z|x), the amortized approximate posterior."""
        return self.posterior(self.encoder(x))

    # The Pyro program.
    def model(self, x: torch.Tensor) -> None:
        """p(z) p(x|z) for a batch x of shape (batch, *data_shape) that p(x|z) can score (refused otherwise)."""
        self.likelihood.check_observed(x, like=self.decoder)
        pyro.module("decoder", self.decoder)
        pyro.module("prior", self.prior)
        pyro.module("likelihood", self.likelihood)
        with pyro.plate("data", x.shape[0]):
            z = pyro.sample("z", self.p_z())
            pyro.sample("x", self.p_x_given_z(z), obs=x)

    def guide(self, x: torch.Tensor) -> None:
        """q(z|x) for a batch x of shape (batch, *data_shape), finite (refused otherwise)."""
        check_batch(x, self.data_shape, like=self.encoder)
        require_finite(x)
        pyro.module("encoder", self.encoder)
        pyro.module("posterior", self.posterior)
        with pyro.plate("data", x.shape[0]):
            pyro.sample("z", self.q_z_given_x(x))

    def spec(self) -> dict[str, Any]:
        """The ``[model]`` table that rebuilds this VAE."""
        return {
            "latent_dim": self.latent_dim,
            "prior": self.prior.spec(),
            "likelihood": self.likelihood.spec(),
            "guide": self.posterior.spec(),
            "network": self.network.spec(),
        }
