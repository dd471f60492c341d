"""Completing an image from part of it: a conditional VAE of the hidden pixels given the visible ones.

Pyro's CVAE task (``examples/cvae``, Sohn et al. 2015): of a 28x28 digit, 1, 2 or 3 quadrants are
shown (``visible``: 1, the bottom-left; 2, the left half; 3, all but the bottom-right, as Pyro's
example masks them) and the program models the rest:

    model:  z ~ p(z|x_v) = N(m_p(x_v), diag s_p(x_v)^2)        a prior network of the visible pixels
            x_h | z ~ prod_{i hidden} Bern(x_i; sigmoid(decoder(z)_i))
    guide:  z ~ q(z|x) = N(m_q(x), diag s_q(x)^2)               a recognition network of the whole image

The observed site "x" is the whole image with its visible pixels masked out of the likelihood
(``poutine``-style ``Distribution.mask``): log p(x|z) sums over the hidden pixels only, so the
library's ELBO is a bound on log p(x_h | x_v) and its importance-sampled log p(x) estimates
log p(x_h | x_v) itself: the conditional log-likelihood (Pyro's example reports -ELBO). Pixels are
binarized by the ``bernoulli`` likelihood's data contract (``binarize``). The network bodies come
from the menu (``network``); the prior network is an encoder body of its own.
"""

from __future__ import annotations

from typing import Any

import pyro
import pyro.distributions as pdist
import torch
from torch import nn

from .config import LIKELIHOODS, NETWORKS, require
from .data.checks import check_batch, require_finite
from .likelihoods import LikelihoodDataContract
from .networks import ConditionalGaussian

#: the quadrants shown for each ``visible`` (rows, columns halves: (top|bottom, left|right)), as Pyro's example
VISIBLE = {1: ("bottom-left",), 2: ("top-left", "bottom-left"), 3: ("top-left", "top-right", "bottom-left")}


def visible_mask(data_shape: tuple[int, ...], visible: int) -> torch.Tensor:
    """A boolean (C, H, W) mask, True on the shown quadrants."""
    _, h, w = data_shape
    mask = torch.zeros(data_shape, dtype=torch.bool)
    for name in VISIBLE[visible]:
        rows = slice(h // 2, h) if name.startswith("bottom") else slice(0, h // 2)
        cols = slice(w // 2, w) if name.endswith("right") else slice(0, w // 2)
        mask[:, rows, cols] = True
    return mask


class QuadrantCVAE(LikelihoodDataContract, nn.Module):
    """z ~ p(z|x_visible); x_hidden | z ~ Bernoulli(decoder(z)); q(z|x): a conditional VAE completing an image from some of its quadrants.

    Options:
        visible: the quadrants shown: 1 (bottom-left), 2 (left half) or 3 (all but the bottom-right).
        latent_dim: the dimension of z.
        binarize: how the bernoulli likelihood binarizes grey pixels (dynamic, static or none).
        network: the recognition, prior and decoder bodies, any registered network (name or table).
    """

    def __init__(self, *, data_shape: tuple[int, ...] = (1, 28, 28), visible: int = 1, latent_dim: int = 16,
                 binarize: str = "dynamic", network: Any = "mlp") -> None:
        super().__init__()
        require(visible in VISIBLE, f"visible must be 1, 2 or 3 quadrants, got {visible}.")
        require(latent_dim >= 1, f"latent_dim must be >= 1, got {latent_dim}.")
        require(len(data_shape) == 3, f"the quadrant task is for images (C, H, W), got data of shape {tuple(data_shape)}.")
        self.data_shape, self.visible, self.latent_dim, self.binarize = tuple(data_shape), visible, latent_dim, binarize
        self.likelihood = LIKELIHOODS.build({"name": "bernoulli", "binarize": binarize}, "model.binarize") \
            .setup(self.data_shape)
        self.network = NETWORKS.build(network, "model.network")
        self.encoder = self.network.encoder(self.data_shape)  # q(z|x): the whole image
        self.prior_encoder = self.network.encoder(self.data_shape)  # p(z|x_v): the visible pixels, the rest 0
        self.decoder = self.network.decoder(latent_dim, self.likelihood.head_shape)
        self.q_z = ConditionalGaussian(self.encoder.out_features, latent_dim, [], "softplus")
        self.p_z = ConditionalGaussian(self.prior_encoder.out_features, latent_dim, [], "softplus")
        self.register_buffer("shown", visible_mask(self.data_shape, visible))

    def spec(self) -> dict[str, Any]:
        """The options that rebuild this program (the ``[model]`` table's, beside ``program``)."""
        return {"visible": self.visible, "latent_dim": self.latent_dim, "binarize": self.binarize,
                "network": self.network.spec()}

    def visible_part(self, x: torch.Tensor) -> torch.Tensor:
        """x with its hidden pixels set to 0 (what the prior network reads)."""
        return x * self.shown

    def p_z_given_visible(self, x: torch.Tensor) -> pdist.Distribution:
        loc, scale = self.p_z(self.prior_encoder(self.visible_part(x)))
        return pdist.Normal(loc, scale).to_event(1)

    def p_hidden_given_z(self, z: torch.Tensor) -> pdist.Distribution:
        """prod over the hidden pixels of Bern(sigmoid(decoder(z))): an image distribution whose shown
        pixels are masked out of log p."""
        (logits,) = self.likelihood.split_head(self.decoder(z))
        return pdist.Bernoulli(logits=logits).mask(~self.shown).to_event(len(self.data_shape))

    def model(self, x: torch.Tensor) -> None:
        pyro.module("quadrant_cvae", self)
        with pyro.plate("data", x.shape[0]):
            z = pyro.sample("z", self.p_z_given_visible(x))
            pyro.sample("x", self.p_hidden_given_z(z), obs=x)

    def guide(self, x: torch.Tensor) -> None:
        check_batch(x, self.data_shape, like=self.encoder)
        require_finite(x)
        pyro.module("quadrant_cvae", self)
        with pyro.plate("data", x.shape[0]):
            loc, scale = self.q_z(self.encoder(x))
            pyro.sample("z", pdist.Normal(loc, scale).to_event(1))

    @torch.no_grad()
    def complete(self, x: torch.Tensor, draws: int = 1) -> torch.Tensor:
        """``draws`` completions of each image (draws, B, C, H, W): the shown pixels as given, the hidden
        ones E[x_h | z] at z ~ p(z|x_v)."""
        z = self.p_z_given_visible(x).sample((draws,))
        (logits,) = self.likelihood.split_head(self.decoder(z))
        return torch.where(self.shown, x, torch.sigmoid(logits))

    def network_bodies(self) -> list[nn.Module]:
        return [self.encoder, self.prior_encoder, self.decoder]
