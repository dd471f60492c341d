"""Labels in the generative story: the conditional VAE and the semi-supervised M2 (Kingma et al. 2014).

Conditional VAE (``model.program = "cvae"``), y a class label given with every datapoint:

    model:  z ~ p(z)  (or p(z|y) = N(mu_y, diag sigma_y^2), ``prior_given_label``)
            x | z, y ~ lik(decoder(z, y))
    guide:  z ~ q(z|x, y) = N(m(h(x), y), diag s(h(x), y)^2),   z = m + s * eps

    ELBO(x|y) = E_q[log p(x|z, y)] - KL(q(z|x, y) || p(z|y)) <= log p(x|y)

Semi-supervised M2 (``model.program = "m2"``), y a class known for some datapoints only:

    model:  y ~ Cat(pi)  (pi uniform)              observed where the label is given
            z ~ N(0, I)
            x | y, z ~ lik(decoder(z, y))
    guide:  y ~ q(y|x) = Cat(softmax(g(h(x))))    only where the label is not given
            z ~ q(z|x, y) = N(m(h(x), y), diag s(h(x), y)^2)

A labelled datapoint's bound is ELBO(x, y) = E_q(z|x,y)[log p(x|y, z) + log p(y) + log p(z) -
log q(z|x, y)] <= log p(x, y); an unlabelled one's, with y a latent, is summed over the classes by
the objective ``enumerate`` (Pyro's TraceEnum_ELBO with the site enumerated in parallel), sampled
(``score-function``) or relaxed (``gumbel-softmax``). q(y|x) is the classifier, trained on labelled
data by the objective's ``classifier_weight`` alpha (Kingma et al.'s alpha log q(y|x)).

Both are built from the library's components: any likelihood and network of the menu, the CVAE's
p(z) any registered prior. y reaches the decoder and q(z|x, y) as a one-hot vector concatenated
to z and to the encoder's features h(x).
"""

from __future__ import annotations

from typing import Any

import pyro
import pyro.distributions as pdist
import torch
import torch.nn.functional as F
from torch import nn

from .config import LIKELIHOODS, NETWORKS, PRIORS, require
from .data.checks import check_batch, require_finite
from .distributions import OneHotGroups
from .likelihoods import LikelihoodDataContract
from .networks import ConditionalGaussian


def _beside(z: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """[z, y] along the last dimension, y broadcast over z's leading (particle, state) dimensions."""
    shape = torch.broadcast_shapes(z.shape[:-1], y.shape[:-1])
    return torch.cat([z.expand(*shape, z.shape[-1]), y.expand(*shape, y.shape[-1])], -1)


class _LabelledVAE(LikelihoodDataContract, nn.Module):
    """What the two programs share: the likelihood and networks, p(x|z, y) and q(z|x, y)."""

    def __init__(self, data_shape, num_classes: int, latent_dim: int, likelihood: Any, network: Any) -> None:
        super().__init__()
        require(num_classes >= 2, f"num_classes must be >= 2, got {num_classes}.")
        require(latent_dim >= 1, f"latent_dim must be >= 1, got {latent_dim}.")
        self.data_shape, self.num_classes, self.latent_dim = tuple(data_shape), num_classes, latent_dim
        self.likelihood = LIKELIHOODS.build(likelihood, "model.likelihood").setup(self.data_shape)
        self.network = NETWORKS.build(network, "model.network")
        self.encoder = self.network.encoder(self.data_shape)
        self.decoder = self.network.decoder(latent_dim + num_classes, self.likelihood.head_shape)
        self.q_z = ConditionalGaussian(self.encoder.out_features + num_classes, latent_dim, [], "softplus")

    def one_hot(self, y: torch.Tensor) -> torch.Tensor:
        """Integer labels (batch,) as one-hot rows (batch, C) in the parameters' dtype."""
        return F.one_hot(y, self.num_classes).to(self.q_z.loc.weight.dtype)

    def p_x_given_z_y(self, z: torch.Tensor, y: torch.Tensor):
        """p(x|z, y) = lik(decoder([z, y])), y one-hot."""
        return self.likelihood(self.decoder(_beside(z, y)))

    def q_z_given_x_y(self, features: torch.Tensor, y: torch.Tensor) -> pdist.Distribution:
        """q(z|x, y) = N(m(h, y), diag s(h, y)^2), h = encoder(x), y one-hot (or any weights over classes)."""
        loc, scale = self.q_z(_beside(features, y))
        return pdist.Normal(loc, scale).to_event(1)

    def _features(self, x: torch.Tensor) -> torch.Tensor:
        check_batch(x, self.data_shape, like=self.encoder)
        require_finite(x)
        return self.encoder(x)


class ConditionalVAE(_LabelledVAE):
    """z ~ p(z) (or p(z|y)); x | z, y ~ likelihood(decoder(z, y)); q(z|x, y): a VAE of x given its label y.

    Options:
        num_classes: C, the values of the label y (0..C-1).
        latent_dim: the dimension of z.
        prior: p(z), any registered prior (name or table), when prior_given_label is false.
        prior_given_label: true: p(z|y) = N(mu_y, diag sigma_y^2), one learned Gaussian per class (the prior option unused).
        likelihood: p(x|z, y), any registered likelihood (name or table).
        network: the encoder and decoder bodies, any registered network (name or table).
    """

    def __init__(self, *, data_shape: tuple[int, ...] = (1, 28, 28), num_classes: int = 10, latent_dim: int = 16,
                 prior: Any = "standard-normal", prior_given_label: bool = False, likelihood: Any = "bernoulli",
                 network: Any = "mlp") -> None:
        super().__init__(data_shape, num_classes, latent_dim, likelihood, network)
        self.prior_given_label = prior_given_label
        self.prior = PRIORS.build(prior, "model.prior").setup(latent_dim)
        if prior_given_label:
            self.label_loc = nn.Parameter(torch.zeros(num_classes, latent_dim))
            self.label_raw_scale = nn.Parameter(torch.full((num_classes, latent_dim), 0.5413))  # softplus = 1

    def spec(self) -> dict[str, Any]:
        """The options that rebuild this program (the ``[model]`` table's, beside ``program``)."""
        return {"num_classes": self.num_classes, "latent_dim": self.latent_dim, "prior": self.prior.spec(),
                "prior_given_label": self.prior_given_label, "likelihood": self.likelihood.spec(),
                "network": self.network.spec()}

    def p_z_given_y(self, y: torch.Tensor):
        """p(z|y): the prior itself, or N(mu_y, diag sigma_y^2) with ``prior_given_label``."""
        if not self.prior_given_label:
            return self.prior()
        return pdist.Normal(y @ self.label_loc, F.softplus(y @ self.label_raw_scale)).to_event(1)

    def model(self, x: torch.Tensor, y: torch.Tensor) -> None:
        self.likelihood.check_observed(x, like=self.decoder)
        pyro.module("cvae", self)
        y = self.one_hot(y)
        with pyro.plate("data", x.shape[0]):
            z = pyro.sample("z", self.p_z_given_y(y))
            pyro.sample("x", self.p_x_given_z_y(z, y), obs=x)

    def guide(self, x: torch.Tensor, y: torch.Tensor) -> None:
        pyro.module("cvae", self)
        features = self._features(x)
        with pyro.plate("data", x.shape[0]):
            pyro.sample("z", self.q_z_given_x_y(features, self.one_hot(y)))


class SemiSupervisedVAE(_LabelledVAE):
    """y ~ Cat(pi); z ~ N(0, I); x | y, z ~ likelihood(decoder(z, y)); q(y|x) q(z|x, y): Kingma et al.'s M2, y observed where labelled.

    Options:
        num_classes: C, the values of the label y (0..C-1).
        latent_dim: the dimension of z.
        likelihood: p(x|y, z), any registered likelihood (name or table).
        network: the encoder and decoder bodies, any registered network (name or table).
    """

    def __init__(self, *, data_shape: tuple[int, ...] = (1, 28, 28), num_classes: int = 10, latent_dim: int = 16,
                 likelihood: Any = "bernoulli", network: Any = "mlp") -> None:
        super().__init__(data_shape, num_classes, latent_dim, likelihood, network)
        self.q_y_logits = nn.Linear(self.encoder.out_features, num_classes)
        self.register_buffer("class_logits", torch.zeros(1, num_classes))  # pi uniform

    def spec(self) -> dict[str, Any]:
        """The options that rebuild this program (the ``[model]`` table's, beside ``program``)."""
        return {"num_classes": self.num_classes, "latent_dim": self.latent_dim, "likelihood": self.likelihood.spec(),
                "network": self.network.spec()}

    def p_y(self) -> OneHotGroups:
        """p(y) = Cat(pi), one-hot (one group of C classes)."""
        return OneHotGroups(self.class_logits)

    def p_z(self) -> pdist.Distribution:
        loc = self.class_logits.new_zeros(self.latent_dim)
        return pdist.Normal(loc, torch.ones_like(loc)).to_event(1)

    def q_y_given_features(self, features: torch.Tensor) -> OneHotGroups:
        return OneHotGroups(self.q_y_logits(features).unsqueeze(-2))

    def label_posterior(self, x: torch.Tensor) -> OneHotGroups:
        """q(y|x), the classifier (what accuracy and the classifier term read)."""
        return self.q_y_given_features(self._features(x))

    def model(self, x: torch.Tensor, y: torch.Tensor | None = None) -> None:
        self.likelihood.check_observed(x, like=self.decoder)
        pyro.module("m2", self)
        with pyro.plate("data", x.shape[0]):
            y = pyro.sample("y", self.p_y().expand([x.shape[0]]), obs=None if y is None else self.one_hot(y))
            z = pyro.sample("z", self.p_z())
            pyro.sample("x", self.p_x_given_z_y(z, y), obs=x)

    def guide(self, x: torch.Tensor, y: torch.Tensor | None = None) -> None:
        pyro.module("m2", self)
        features = self._features(x)
        with pyro.plate("data", x.shape[0]):
            if y is None:
                y = pyro.sample("y", self.q_y_given_features(features))
            else:
                y = self.one_hot(y)
            pyro.sample("z", self.q_z_given_x_y(features, y))
