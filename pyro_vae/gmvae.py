"""The Gaussian-mixture VAE (GMVAE): the mixture component y is a latent site, summed out exactly.

    model:  y ~ Cat(pi)                                   pi uniform (or learned)
            z | y ~ N(mu_y, diag sigma_y^2)                one learned Gaussian per component
            x | z ~ lik(decoder(z))                        likelihood, as the stock VAE's
    guide:  y ~ q(y|x) = Cat(softmax(g(h(x))))             h(x) the encoder's features
            z ~ q(z|x, y) = N(m(h(x), y), diag s(h(x), y)^2),   z = m + s * eps

The stock VAE with the ``mixture`` prior has the same p(x) (p(z) = sum_y pi_y N(mu_y, sigma_y^2))
but sums y inside p(z) and has one Gaussian q(z|x); here y has its own posterior q(y|x) (a
clustering of the data) and q(z|x, y) one Gaussian per component, and the objective ``enumerate``
sums the ELBO over the K values of y exactly, drawing z given each:

    ELBO(x) = sum_y q(y|x) E_q(z|x,y)[log p(x|z) + log p(z|y) + log pi_y - log q(z|x, y) - log q(y|x)]

(``score-function`` samples y instead.) Built from the library's components: any likelihood and
network of the menu; ``model.program = "gmvae"``.
"""

from __future__ import annotations

from typing import Any

import pyro
import pyro.distributions as pdist
import torch
import torch.nn.functional as F
from torch import nn

from .config import LIKELIHOODS, NETWORKS, require
from .data.checks import check_batch, require_finite
from .distributions import OneHotGroups
from .likelihoods import LikelihoodDataContract
from .networks import ConditionalGaussian


class GaussianMixtureVAE(LikelihoodDataContract, nn.Module):
    """y ~ Cat(pi); z | y ~ N(mu_y, diag sigma_y^2); x | z ~ likelihood(decoder(z)); q(y|x) q(z|x, y).

    Options:
        components: K, the mixture components (the values of y).
        latent_dim: the dimension of z.
        learned_weights: false keeps pi uniform; true learns it (softmax of logits, starting uniform).
        likelihood: p(x|z), any registered likelihood (name or table).
        network: the encoder and decoder bodies, any registered network (name or table).
    """

    def __init__(self, *, data_shape: tuple[int, ...] = (1, 28, 28), components: int = 10, latent_dim: int = 16,
                 learned_weights: bool = False, likelihood: Any = "bernoulli", network: Any = "mlp") -> None:
        super().__init__()
        require(components >= 2, f"components must be >= 2, got {components}.")
        require(latent_dim >= 1, f"latent_dim must be >= 1, got {latent_dim}.")
        self.data_shape, self.components, self.latent_dim = tuple(data_shape), components, latent_dim
        self.learned_weights = learned_weights
        self.likelihood = LIKELIHOODS.build(likelihood, "model.likelihood").setup(self.data_shape)
        self.network = NETWORKS.build(network, "model.network")
        self.encoder = self.network.encoder(self.data_shape)
        self.decoder = self.network.decoder(latent_dim, self.likelihood.head_shape)
        features = self.encoder.out_features
        self.q_y_logits = nn.Linear(features, components)
        self.q_z = ConditionalGaussian(features + components, latent_dim, [], "softplus")
        logits = torch.zeros(1, components)
        if learned_weights:
            self.weight_logits = nn.Parameter(logits)
        else:
            self.register_buffer("weight_logits", logits)
        # component means spread out at the start (else every component is the same and stays so)
        self.component_loc = nn.Parameter(torch.randn(components, latent_dim, generator=torch.Generator().manual_seed(0)))
        self.component_raw_scale = nn.Parameter(torch.zeros(components, latent_dim))

    def spec(self) -> dict[str, Any]:
        """The options that rebuild this program (the ``[model]`` table's, beside ``program``)."""
        return {"components": self.components, "latent_dim": self.latent_dim, "learned_weights": self.learned_weights,
                "likelihood": self.likelihood.spec(), "network": self.network.spec()}

    # The tractable distributions.
    def p_y(self) -> OneHotGroups:
        """p(y) = Cat(pi), y one-hot (one group of K classes)."""
        return OneHotGroups(self.weight_logits)

    def p_z_given_y(self, y: torch.Tensor) -> pdist.Distribution:
        """p(z|y) = N(mu_y, diag sigma_y^2): y (one-hot, or any weights over the components) picks them."""
        return pdist.Normal(y @ self.component_loc, F.softplus(y @ self.component_raw_scale) + 1e-4).to_event(1)

    def p_x_given_z(self, z: torch.Tensor):
        return self.likelihood(self.decoder(z))

    def q_y_given_x(self, features: torch.Tensor) -> OneHotGroups:
        return OneHotGroups(self.q_y_logits(features).unsqueeze(-2))

    def q_z_given_x_y(self, features: torch.Tensor, y: torch.Tensor) -> pdist.Distribution:
        features = features.expand(*y.shape[:-1], features.shape[-1])  # (a state or particle dimension in y)
        loc, scale = self.q_z(torch.cat([features, y], -1))
        return pdist.Normal(loc, scale).to_event(1)

    # The Pyro program.
    def model(self, x: torch.Tensor) -> None:
        self.likelihood.check_observed(x, like=self.decoder)
        pyro.module("gmvae", self)
        with pyro.plate("data", x.shape[0]):
            y = pyro.sample("y", self.p_y().expand([x.shape[0]]))
            z = pyro.sample("z", self.p_z_given_y(y))
            pyro.sample("x", self.p_x_given_z(z), obs=x)

    def guide(self, x: torch.Tensor) -> None:
        check_batch(x, self.data_shape, like=self.encoder)
        require_finite(x)
        pyro.module("gmvae", self)
        with pyro.plate("data", x.shape[0]):
            features = self.encoder(x)
            y = pyro.sample("y", self.q_y_given_x(features))
            pyro.sample("z", self.q_z_given_x_y(features, y))
