"""An scVI-class model of single-cell counts (Lopez et al. 2018), as a library program (``"scvi"``).

    z ~ N(0, I)                                  the cell's state, latent_dim of it
    l = sum_i x_i              (library = "observed": the cell's own total, scVI's default), or
    log l ~ N(mu_l, sigma_l^2) (library = "latent": mu_l, sigma_l the mean and standard deviation of
                                the training cells' log totals, recorded before training)
    x_i | z, l ~ NB(l rho_i(z), theta_i)  (or ZINB, Poisson: any registered count likelihood)
    rho(z) = softmax(f(z))      the decoder's proportions over genes

    q(z|x) = N(m(h), diag s(h)^2), q(log l|x) = N(m_l(h), s_l(h)^2), h = encoder(log1p(x))

Every term is the registered likelihood's (its dispersion per gene, per gene and label, or per cell
and gene): the program only decides where the library size comes from. With library = "observed"
the log-likelihood is log p(x | z, l = sum_i x_i), conditional on the total (as scVI reports it);
with library = "latent" log p(x) is a true log-mass over x, l integrated out by importance sampling
with z. ``model.program = "scvi"``; the same without a latent library is the stock VAE with a count
likelihood and ``network.input = "log1p"`` (``examples/configs/scvi.toml``).

``"scvi-batch"`` (:class:`BatchSingleCellVAE`) takes a batch covariate as its label y (``model(x, y)``:
a conditional program; ``data.label_column`` names the batch column), given to the encoder and the
decoder one-hot, as scVI's batch correction does.
"""

from __future__ import annotations

from typing import Any, Literal

import pyro
import pyro.distributions as pdist
import torch
import torch.nn.functional as F
from torch import nn

from .config import LIKELIHOODS, NETWORKS, require
from .data.checks import check_batch, require_finite
from .data.storage import row_totals
from .likelihoods import LikelihoodDataContract
from .networks import ConditionalGaussian

DEFAULT_NETWORK = {"name": "mlp", "hidden": [128], "activation": "relu", "input": "log1p"}


class SingleCellVAE(LikelihoodDataContract, nn.Module):
    """z ~ N(0, I); log l ~ N(mu_l, sigma_l^2) or l = sum_i x_i; x | z, l ~ count likelihood(l softmax(f(z))); q(z|x) q(log l|x) from log1p(x): scVI.

    Options:
        latent_dim: the dimension of z (scVI's default 10).
        library: "observed": l = the cell's total (log p(x | z, l), conditional on it); "latent": log l ~ N(mu_l, sigma_l^2) fitted to the training cells' log totals, with q(log l|x) (a true log-mass over x).
        likelihood: the count likelihood p(x|z, l), a registered one (name or table): negative-binomial, zero-inflated-negative-binomial or poisson.
        network: the encoder and decoder bodies (name or table); by default one hidden layer of 128, ReLU, the encoder reading log1p(x).
    """

    def __init__(self, *, data_shape: tuple[int, ...] = (2000,), latent_dim: int = 10,
                 library: Literal["observed", "latent"] = "observed", likelihood: Any = "negative-binomial",
                 network: Any = None) -> None:
        super().__init__()
        require(latent_dim >= 1, f"latent_dim must be >= 1, got {latent_dim}.")
        require(library in ("observed", "latent"), f"library must be \"observed\" or \"latent\", got {library!r}.")
        self.data_shape, self.latent_dim, self.library = tuple(data_shape), latent_dim, library
        self.likelihood = LIKELIHOODS.build(likelihood, "model.likelihood").setup(self.data_shape)
        require(hasattr(self.likelihood, "counts") and getattr(self.likelihood, "library", None) == "observed",
                f"model program scvi takes a count likelihood with a library size (negative-binomial, "
                f"zero-inflated-negative-binomial or poisson, with its library option \"observed\": the program "
                f"decides where l comes from), got {self.likelihood.spec()}.")
        self.network = NETWORKS.build(network if network is not None else dict(DEFAULT_NETWORK), "model.network")
        self.encoder = self.network.encoder(self.data_shape)
        self.decoder = self.network.decoder(latent_dim + self.covariates, self.likelihood.head_shape)
        self.q_z = ConditionalGaussian(self.encoder.out_features + self.covariates, latent_dim, [], "softplus")
        if library == "latent":
            self.q_library = ConditionalGaussian(self.encoder.out_features + self.covariates, 1, [], "softplus")
        self.register_buffer("library_loc", torch.tensor(0.0))  # mu_l, sigma_l: set by fit_to_data
        self.register_buffer("library_scale", torch.tensor(1.0))

    covariates = 0  #: the width of the one-hot covariate beside z and h (the batch program's)
    fit_takes_rows = True  #: fit_to_data reads row totals alone: sparse rows come as they are held

    def spec(self) -> dict[str, Any]:
        """The options that rebuild this program (the ``[model]`` table's, beside ``program``)."""
        return {"latent_dim": self.latent_dim, "library": self.library, "likelihood": self.likelihood.spec(),
                "network": self.network.spec()}

    def fit_to_data(self, x: torch.Tensor, generator: torch.Generator) -> None:
        """Before training: the likelihood's library size for pictures, and the prior of log l, the mean
        and standard deviation of the training cells' log totals (cells of total 0 left out)."""
        super().fit_to_data(x, generator)
        totals = row_totals(x)  # (of rows on disk too, read a chunk at a time)
        logs = totals[totals > 0].double().log()
        if len(logs) > 1:
            self.library_loc.fill_(logs.mean().item())
            self.library_scale.fill_(max(logs.std().item(), 1e-3))

    # -- the program ------------------------------------------------------------------------------

    def _with(self, t: torch.Tensor, c: torch.Tensor | None) -> torch.Tensor:
        """[t, c] along the last dimension, c broadcast over t's leading dimensions (none: t)."""
        if c is None:
            return t
        shape = torch.broadcast_shapes(t.shape[:-1], c.shape[:-1])
        return torch.cat([t.expand(*shape, t.shape[-1]), c.expand(*shape, c.shape[-1])], -1)

    def _model(self, x: torch.Tensor, c: torch.Tensor | None) -> None:
        self.likelihood.check_observed(x, like=self.decoder)
        with pyro.plate("data", x.shape[0]):
            z = pyro.sample("z", pdist.Normal(x.new_zeros(self.latent_dim), 1.0).to_event(1))
            head = self.decoder(self._with(z, c))
            library = None
            if self.library == "latent":
                log_l = pyro.sample("log_library", pdist.Normal(self.library_loc.expand(1),
                                                                self.library_scale.expand(1)).to_event(1))
                library = log_l.squeeze(-1).exp()
            pyro.sample("x", self.likelihood(head, library=library), obs=x)

    def _guide(self, x: torch.Tensor, c: torch.Tensor | None) -> None:
        check_batch(x, self.data_shape, like=self.encoder)
        require_finite(x)
        with pyro.plate("data", x.shape[0]):
            h = self._with(self.encoder(x), c)
            loc, scale = self.q_z(h)
            pyro.sample("z", pdist.Normal(loc, scale).to_event(1))
            if self.library == "latent":
                loc, scale = self.q_library(h)
                pyro.sample("log_library", pdist.Normal(loc, scale).to_event(1))

    def model(self, x: torch.Tensor) -> None:
        """p(z) p(l) p(x|z, l) (p(l) only with library = "latent")."""
        self._model(x, None)

    def guide(self, x: torch.Tensor) -> None:
        """q(z|x) q(log l|x) (q(log l|x) only with library = "latent")."""
        self._guide(x, None)


class BatchSingleCellVAE(SingleCellVAE):
    """scVI with a batch covariate y (the cell's batch, 0..C-1): p(x|z, l, y), q(z|x, y), y one-hot beside z and h.

    Options:
        num_classes: C, the number of batches (the values of the label y, 0..C-1).
        latent_dim: the dimension of z (scVI's default 10).
        library: "observed" or "latent", as for model program "scvi".
        likelihood: the count likelihood p(x|z, l, y), a registered one (name or table).
        network: the encoder and decoder bodies (name or table).
    """

    def __init__(self, *, data_shape: tuple[int, ...] = (2000,), num_classes: int = 2, latent_dim: int = 10,
                 library: Literal["observed", "latent"] = "observed", likelihood: Any = "negative-binomial",
                 network: Any = None) -> None:
        require(num_classes >= 2, f"num_classes must be >= 2 (the batches), got {num_classes}.")
        self.num_classes = num_classes
        self.covariates = num_classes
        super().__init__(data_shape=data_shape, latent_dim=latent_dim, library=library, likelihood=likelihood,
                         network=network)

    def spec(self) -> dict[str, Any]:
        return {"num_classes": self.num_classes, **super().spec()}

    def _one_hot(self, y: torch.Tensor) -> torch.Tensor:
        return F.one_hot(y, self.num_classes).to(self.q_z.loc.weight.dtype)

    def model(self, x: torch.Tensor, y: torch.Tensor) -> None:
        """p(z) p(l) p(x|z, l, y)."""
        self._model(x, self._one_hot(y))

    def guide(self, x: torch.Tensor, y: torch.Tensor) -> None:
        """q(z|x, y) q(log l|x, y)."""
        self._guide(x, self._one_hot(y))

